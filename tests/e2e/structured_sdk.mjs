// Structured output through the client libraries users call it with:
// openai chat.completions.parse + zodResponseFormat (json_schema, strict),
// AI SDK generateObject with createOpenAI(...).chat (json_schema) and with
// createOpenAICompatible (json_object), LangChain withStructuredOutput
// (default: json_schema; method "jsonMode": json_object). Each must return
// an object its zod schema accepts.
// Env: ORTHOSERVE_URL (http://127.0.0.1:PORT/v1), ORTHOSERVE_MODEL,
// E2E_REQUEST_TIMEOUT_MS. Prints one line per check; exits non-zero on failure.
import OpenAI from "openai";
import { zodResponseFormat } from "openai/helpers/zod";
import { generateObject } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { createOpenAICompatible } from "@ai-sdk/openai-compatible";
import { ChatOpenAI } from "@langchain/openai";
import { z } from "zod";

const baseURL = process.env.ORTHOSERVE_URL, model = process.env.ORTHOSERVE_MODEL;
const timeout = Number(process.env.E2E_REQUEST_TIMEOUT_MS || 60000);
let passed = 0, failed = 0;
function check(name, cond, info) {
  if (cond) { passed++; console.log("ok   " + name); }
  else { failed++; console.log("FAIL " + name + (info !== undefined ? ": " + JSON.stringify(info).slice(0, 600) : "")); }
}
async function attempt(name, fn) {
  try { await fn(); } catch (e) {
    failed++;
    console.log("FAIL " + name + ": " + String(e && e.stack || e).slice(0, 1200) +
                (e && e.text !== undefined ? "\n  text: " + JSON.stringify(e.text).slice(0, 800) + " finish: " + e.finishReason : ""));
  }
}

// Bounded everywhere, so a random model finishes the object well within max_tokens.
const Person = z.object({
  name: z.string().max(8),
  age: z.number().int().min(0).max(120),
  color: z.enum(["red", "green", "blue"]),
  tags: z.array(z.string().max(4)).max(2),
  pet: z.object({ kind: z.enum(["cat", "dog"]), legs: z.number().int().min(0).max(4) }).nullable(),
});
const AnyObject = z.record(z.string(), z.unknown());
const messages = [{ role: "system", content: "Reply with JSON." }, { role: "user", content: "Describe a person." }];

await attempt("openai parse", async () => {
  const client = new OpenAI({ baseURL, apiKey: "sk-test", maxRetries: 0, timeout });
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.parse({ model, messages, temperature: 1.5, seed, max_tokens: 400,
                                                    response_format: zodResponseFormat(Person, "person") });
    const m = r.choices[0].message;
    check("openai parse seed " + seed + " (finish " + r.choices[0].finish_reason + ")",
          r.choices[0].finish_reason === "stop" && Person.safeParse(m.parsed).success, m.content);
  }
});

await attempt("ai-sdk createOpenAI().chat", async () => {
  const provider = createOpenAI({ baseURL, apiKey: "sk-test" });
  const { object } = await generateObject({ model: provider.chat(model), schema: Person, messages,
                                             temperature: 1.5, seed: 4, maxOutputTokens: 400, maxRetries: 0 });
  check("ai-sdk openai chat generateObject", Person.safeParse(object).success, object);
});

// json_object does not bound string lengths, and a random model may write one
// string until max_tokens: such a run ends with finish_reason "length" (its
// text a valid prefix), so these try seeds until one finishes; any other
// failure fails the check.
async function firstFinished(name, seeds, fn) {
  for (const seed of seeds) {
    try { return await fn(seed); } catch (e) {
      const len = e && (e.finishReason === "length" || /length/.test(String(e.message)) ||
                        (e.llmOutput === undefined && /Unterminated|Unexpected end/.test(String(e.message))));
      if (!len) throw e;
      console.log("     " + name + ": seed " + seed + " reached max_tokens, next seed");
    }
  }
  throw new Error(name + ": every seed reached max_tokens");
}

await attempt("ai-sdk createOpenAICompatible", async () => {
  const provider = createOpenAICompatible({ name: "orthoserve", baseURL, apiKey: "sk-test" });
  const object = await firstFinished("openai-compatible json_object", [9, 11, 6, 1, 13, 14], async (seed) =>
    (await generateObject({ model: provider(model), schema: AnyObject, messages, temperature: 1.5, seed,
                            maxOutputTokens: 400, maxRetries: 0 })).object);
  check("ai-sdk openai-compatible generateObject (json_object)", AnyObject.safeParse(object).success, object);
  const strict = createOpenAICompatible({ name: "orthoserve", baseURL, apiKey: "sk-test", supportsStructuredOutputs: true });
  const r = await generateObject({ model: strict(model), schema: Person, messages, temperature: 1.5, seed: 5,
                                   maxOutputTokens: 400, maxRetries: 0 });
  check("ai-sdk openai-compatible generateObject (supportsStructuredOutputs: json_schema)", Person.safeParse(r.object).success, r.object);
});

await attempt("langchain default", async () => {
  const llm = new ChatOpenAI({ model, apiKey: "sk-test", configuration: { baseURL }, temperature: 1.5, maxTokens: 400,
                               maxRetries: 0, timeout, modelKwargs: { seed: 6 } });
  const out = await llm.withStructuredOutput(Person, { name: "person" }).invoke(messages);
  check("langchain withStructuredOutput (json_schema)", Person.safeParse(out).success, out);
});

await attempt("langchain jsonMode", async () => {
  const out = await firstFinished("langchain jsonMode", [7, 9, 11, 6, 13, 14], async (seed) => {
    const llm = new ChatOpenAI({ model, apiKey: "sk-test", configuration: { baseURL }, temperature: 1.5, maxTokens: 400,
                                 maxRetries: 0, timeout, modelKwargs: { seed } });
    return await llm.withStructuredOutput(AnyObject, { method: "jsonMode" }).invoke(messages);
  });
  check("langchain withStructuredOutput jsonMode (json_object)", AnyObject.safeParse(out).success, out);
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
