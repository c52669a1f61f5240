// The official OpenAI Node SDK against a running orthoserve
// (ORTHOSERVE_URL=http://127.0.0.1:PORT/v1, ORTHOSERVE_MODEL=<id>; E2E_REQUEST_TIMEOUT_MS
// bounds each request, 60 s unless test_sdk.py scales it for a slow build).
// Prints one line per check and 'N passed, N failed'; exits non-zero on failure.
import OpenAI from "openai";

const client = new OpenAI({ baseURL: process.env.ORTHOSERVE_URL, apiKey: "sk-test", maxRetries: 0,
                            timeout: Number(process.env.E2E_REQUEST_TIMEOUT_MS || 60000) });
const model = process.env.ORTHOSERVE_MODEL;
let passed = 0, failed = 0;
function check(name, cond, info) {
  if (cond) { passed++; console.log("ok   " + name); }
  else { failed++; console.log("FAIL " + name + (info ? ": " + JSON.stringify(info).slice(0, 400) : "")); }
}

const models = await client.models.list();
check("models.list", models.data.length === 1 && models.data[0].id === model, models.data);

const chat = await client.chat.completions.create({
  model, messages: [{ role: "system", content: "You tell stories." }, { role: "user", content: "Once upon a time" }],
  max_tokens: 16, temperature: 0, seed: 3,
});
check("chat object", chat.object === "chat.completion" && chat.id.startsWith("chatcmpl-"), chat);
check("chat message", chat.choices[0].message.role === "assistant" && typeof chat.choices[0].message.content === "string", chat.choices[0]);
check("chat finish_reason", ["stop", "length"].includes(chat.choices[0].finish_reason), chat.choices[0]);
check("chat usage", chat.usage.completion_tokens > 0 && chat.usage.total_tokens === chat.usage.prompt_tokens + chat.usage.completion_tokens, chat.usage);
check("chat orthorank", chat.orthorank && chat.orthorank.sparsity_effective === 0, chat.orthorank);

const stream = await client.chat.completions.create({
  model, messages: [{ role: "system", content: "You tell stories." }, { role: "user", content: "Once upon a time" }],
  max_tokens: 16, temperature: 0, seed: 3, stream: true, stream_options: { include_usage: true },
});
let text = "", role = null, finish = null, usage = null, n = 0;
for await (const c of stream) {
  n++;
  if (c.choices.length) {
    if (c.choices[0].delta.role) role = c.choices[0].delta.role;
    text += c.choices[0].delta.content ?? "";
    if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
  } else if (c.usage) usage = c.usage;
}
check("chat stream role", role === "assistant");
check("chat stream text == non-stream", text === chat.choices[0].message.content, { text, whole: chat.choices[0].message.content });
check("chat stream finish", finish === chat.choices[0].finish_reason, finish);
check("chat stream usage", usage && usage.completion_tokens === chat.usage.completion_tokens, usage);

const comp = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 48, temperature: 0, ignore_eos: true, logprobs: 2 });
check("completion object", comp.object === "text_completion" && comp.id.startsWith("cmpl-"), comp);
check("completion golden", comp.choices[0].text.startsWith(", there was a little girl named Lily."), comp.choices[0].text);
check("completion logprobs", comp.choices[0].logprobs.tokens.length === 48 && comp.choices[0].logprobs.top_logprobs[0] !== null, comp.choices[0].logprobs);

const cs = await client.completions.create({ model, prompt: "Once upon a time", max_tokens: 48, temperature: 0, ignore_eos: true, stream: true });
let ctext = "";
for await (const c of cs) ctext += c.choices[0]?.text ?? "";
check("completion stream == non-stream", ctext === comp.choices[0].text, { ctext });

try {
  await client.chat.completions.create({ model, messages: [{ role: "user", content: "x" }], temperature: 9 });
  check("400 raises BadRequestError", false);
} catch (e) {
  check("400 raises BadRequestError", e instanceof OpenAI.BadRequestError && e.param === "temperature", { status: e.status, param: e.param });
}
try {
  await client.chat.completions.create({ model: "nope", messages: [{ role: "user", content: "x" }] });
  check("404 raises NotFoundError", false);
} catch (e) {
  check("404 raises NotFoundError", e instanceof OpenAI.NotFoundError, { status: e.status });
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
