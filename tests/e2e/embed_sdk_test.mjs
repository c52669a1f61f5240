// Embeddings and several choices through the pinned client libraries against
// a running orthoserve (ORTHOSERVE_URL=http://127.0.0.1:PORT/v1,
// ORTHOSERVE_MODEL=<id>, E2E_REQUEST_TIMEOUT_MS): openai embeddings.create
// (float and base64, dimensions), the AI SDK's embed / embedMany through
// createOpenAI(...).embedding, and openai n: 3 (plain and streamed).
// Prints one line per check and 'N passed, N failed'; exits non-zero on failure.
import OpenAI from "openai";
import { embed, embedMany, cosineSimilarity } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const timeout = Number(process.env.E2E_REQUEST_TIMEOUT_MS || 60000);
const client = new OpenAI({ baseURL: process.env.ORTHOSERVE_URL, apiKey: "sk-test", maxRetries: 0, timeout });
const model = process.env.ORTHOSERVE_MODEL;
let passed = 0, failed = 0;
function check(name, cond, info) {
  if (cond) { passed++; console.log("ok   " + name); }
  else { failed++; console.log("FAIL " + name + (info ? ": " + JSON.stringify(info).slice(0, 400) : "")); }
}
const norm = (v) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));
const maxDiff = (a, b) => a.reduce((m, x, i) => Math.max(m, Math.abs(x - b[i])), 0);

const texts = ["Once upon a time", "The little dog ran home.", "Lily liked the sun."];
const e = await client.embeddings.create({ model, input: texts, encoding_format: "float" });
check("embeddings.create list", e.object === "list" && e.data.length === 3 && e.data.every((d, i) => d.index === i && d.object === "embedding"), e);
check("embeddings normalised", e.data.every((d) => Math.abs(norm(d.embedding) - 1) < 1e-5), e.data.map((d) => norm(d.embedding)));
check("embeddings usage", e.usage.prompt_tokens > 0 && e.usage.total_tokens === e.usage.prompt_tokens, e.usage);
// The SDK's default encoding is base64 (decoded by the SDK): the same vectors.
const eb = await client.embeddings.create({ model, input: texts });
check("embeddings base64 == float", eb.data.every((d, i) => maxDiff(d.embedding, e.data[i].embedding) < 1e-6));
const dim = 16;
const ed = await client.embeddings.create({ model, input: texts[0], dimensions: dim, encoding_format: "float" });
const head = e.data[0].embedding.slice(0, dim), hn = norm(head);
check("embeddings dimensions", ed.data[0].embedding.length === dim && maxDiff(ed.data[0].embedding, head.map((x) => x / hn)) < 1e-5, ed.data[0].embedding);

const provider = createOpenAI({ baseURL: process.env.ORTHOSERVE_URL, apiKey: "sk-test" });
const one = await embed({ model: provider.embedding(model), value: texts[1], maxRetries: 0 });
check("ai embed", one.embedding.length === e.data[1].embedding.length && maxDiff(one.embedding, e.data[1].embedding) < 1e-6, one.usage);
const many = await embedMany({ model: provider.embedding(model), values: texts, maxRetries: 0 });
check("ai embedMany", many.embeddings.length === 3 && many.embeddings.every((v, i) => maxDiff(v, e.data[i].embedding) < 1e-6));
check("ai cosineSimilarity of a text with itself", Math.abs(cosineSimilarity(many.embeddings[0], many.embeddings[0]) - 1) < 1e-5);

const prompt = { model, messages: [{ role: "user", content: "Tell me a story." }], max_tokens: 12, seed: 41, temperature: 0.9 };
const n3 = await client.chat.completions.create({ ...prompt, n: 3 });
check("n: 3 choices", n3.choices.length === 3 && n3.choices.every((c, i) => c.index === i && c.finish_reason), n3.choices);
let same = true;
for (let i = 0; i < 3; i++) {
  const single = await client.chat.completions.create({ ...prompt, seed: 41 + i });
  same &&= single.choices[0].message.content === n3.choices[i].message.content;
  if (i === 0) check("n: 3 usage counts the prompt once", n3.usage.prompt_tokens === single.usage.prompt_tokens, [n3.usage, single.usage]);
}
check("n: 3 choice i == n: 1 with seed + i", same);
const st = await client.chat.completions.create({ ...prompt, n: 3, stream: true });
const streamed = ["", "", ""];
for await (const c of st) for (const ch of c.choices) streamed[ch.index] += ch.delta.content ?? "";
check("n: 3 streamed by index == non-streamed", streamed.every((t, i) => t === n3.choices[i].message.content), streamed);

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
