// Tool calling through the client libraries (issue 20, parts 4-5), against a
// server whose model carries Qwen2.5's template (test_tools_sdk.py starts it):
// openai tools with tool_choice auto / required / named, non-streamed and
// streamed (the SDK's chat.completions.stream() helper reassembles the
// deltas), a role "tool" round trip; LangChain bindTools and
// withStructuredOutput({method: "functionCalling"}); AI SDK generateText with
// tools and toolChoice "required"; openai responses.create with a function
// tool (a forced function_call item, then its function_call_output). Forced calls must come back with arguments
// that ajv validates against the tool's schema; auto on a random-weight model
// only has to be well-formed.
// Env: ORTHOSERVE_URL (http://127.0.0.1:PORT/v1), ORTHOSERVE_MODEL,
// E2E_REQUEST_TIMEOUT_MS. Prints one line per check; exits non-zero on failure.
import OpenAI from "openai";
import { generateText, tool } from "ai";
import { createOpenAI } from "@ai-sdk/openai";
import { ChatOpenAI } from "@langchain/openai";
import { z } from "zod";
import Ajv from "ajv";

const baseURL = process.env.ORTHOSERVE_URL, model = process.env.ORTHOSERVE_MODEL;
const timeout = Number(process.env.E2E_REQUEST_TIMEOUT_MS || 60000);
let passed = 0, failed = 0;
function check(name, cond, info) {
  if (cond) { passed++; console.log("ok   " + name); }
  else { failed++; console.log("FAIL " + name + (info !== undefined ? ": " + JSON.stringify(info).slice(0, 600) : "")); }
}
async function attempt(name, fn) {
  try { await fn(); } catch (e) { failed++; console.log("FAIL " + name + ": " + String(e && e.stack || e).slice(0, 1200)); }
}

// Bounded, so a random model finishes a call well within max_tokens.
const weatherSchema = {
  type: "object", additionalProperties: false, required: ["city", "days"],
  properties: { city: { type: "string", maxLength: 8 }, days: { type: "integer", minimum: 1, maximum: 7 } },
};
const timeSchema = { type: "object", additionalProperties: false, required: ["tz"], properties: { tz: { enum: ["CET", "UTC"] } } };
const tools = [
  { type: "function", function: { name: "get_weather", description: "Weather of a city", parameters: weatherSchema } },
  { type: "function", function: { name: "get_time", description: "Time in a zone", parameters: timeSchema } },
];
const ajv = new Ajv();
const valid = { get_weather: ajv.compile(weatherSchema), get_time: ajv.compile(timeSchema) };
function callOk(c) {
  if (c.type !== "function" || !/^call_[A-Za-z0-9]{24}$/.test(c.id) || !valid[c.function.name]) return false;
  try { return valid[c.function.name](JSON.parse(c.function.arguments)); } catch { return false; }
}
const messages = [{ role: "user", content: "Weather in Paris for 3 days?" }];
const client = new OpenAI({ baseURL, apiKey: "sk-test", maxRetries: 0, timeout });
const base = { model, messages, tools, max_tokens: 400, temperature: 1.3 };
// A forced call with parallel calls on lets a random model write call after
// call until max_tokens: the single-call checks turn parallel calls off.
const one = { ...base, parallel_tool_calls: false };

await attempt("openai required / named", async () => {
  for (const seed of [1, 2, 3]) {
    const r = await client.chat.completions.create({ ...one, seed, tool_choice: "required" });
    const m = r.choices[0].message;
    check(`openai required seed ${seed}`, r.choices[0].finish_reason === "tool_calls" && m.tool_calls?.length === 1 &&
          m.tool_calls.every(callOk) && m.content === null, r.choices[0]);
  }
  const p = await client.chat.completions.create({ ...base, seed: 1, tool_choice: "required" });
  check("openai required, parallel calls", ["tool_calls", "length"].includes(p.choices[0].finish_reason) &&
        p.choices[0].message.tool_calls?.length >= 1 && p.choices[0].message.tool_calls.every(callOk), p.choices[0]);
  const named = { type: "function", function: { name: "get_time" } };
  const r = await client.chat.completions.create({ ...base, seed: 4, tool_choice: named, parallel_tool_calls: false });
  const calls = r.choices[0].message.tool_calls;
  check("openai named + parallel_tool_calls false", calls?.length === 1 && calls[0].function.name === "get_time" &&
        callOk(calls[0]), r.choices[0]);
});

await attempt("openai streamed", async () => {
  for (const tool_choice of ["required", { type: "function", function: { name: "get_weather" } }]) {
    const whole = await client.chat.completions.create({ ...one, seed: 7, tool_choice });
    const stream = client.chat.completions.stream({ ...one, seed: 7, tool_choice, stream_options: { include_usage: true } });
    let argDeltas = 0;
    stream.on("tool_calls.function.arguments.delta", () => { argDeltas++; });
    const fin = await stream.finalChatCompletion();
    const calls = fin.choices[0].message.tool_calls ?? [];
    const want = whole.choices[0].message.tool_calls.map((c) => c.function);
    check(`openai stream() ${JSON.stringify(tool_choice)}`, fin.choices[0].finish_reason === "tool_calls" &&
          calls.length === want.length && calls.every(callOk) && argDeltas >= calls.length &&
          JSON.stringify(calls.map((c) => ({ name: c.function.name, arguments: c.function.arguments }))) === JSON.stringify(want),
          { calls, want });
  }
});

await attempt("openai auto", async () => {
  for (const seed of [1, 2]) {
    const r = await client.chat.completions.create({ ...base, seed, max_tokens: 32 });
    const c = r.choices[0];
    check(`openai auto seed ${seed} well-formed`, ["stop", "length", "tool_calls"].includes(c.finish_reason) &&
          (typeof c.message.content === "string" || c.message.content === null) &&
          (c.message.tool_calls ?? []).every((t) => typeof t.function.arguments === "string"), c);
    const fin = await client.chat.completions.stream({ ...base, seed, max_tokens: 32 }).finalChatCompletion();
    check(`openai auto seed ${seed} stream == whole`, fin.choices[0].message.content === c.message.content, [fin.choices[0], c]);
  }
});

await attempt("openai role tool round trip", async () => {
  const r = await client.chat.completions.create({ ...one, seed: 5, tool_choice: "required" });
  const m = r.choices[0].message;
  const next = [...messages, m, ...m.tool_calls.map((c) => ({ role: "tool", tool_call_id: c.id, content: "21 C, sunny" }))];
  const r2 = await client.chat.completions.create({ ...base, messages: next, seed: 5, max_tokens: 16 });
  check("openai tool round trip", r2.choices.length === 1 && ["stop", "length", "tool_calls"].includes(r2.choices[0].finish_reason), r2.choices[0]);
});

const zWeather = z.object({ city: z.string().max(8), days: z.number().int().min(1).max(7) });
await attempt("langchain", async () => {
  const llm = new ChatOpenAI({ model, apiKey: "sk-test", configuration: { baseURL }, temperature: 1.3, maxTokens: 400,
                               maxRetries: 0, timeout, modelKwargs: { seed: 8 } });
  const bound = llm.bindTools([{ name: "get_weather", description: "Weather of a city", schema: zWeather }],
                              { tool_choice: "get_weather", parallel_tool_calls: false });
  const msg = await bound.invoke(messages);
  check("langchain bindTools named", msg.tool_calls?.length === 1 && msg.tool_calls[0].name === "get_weather" &&
        valid.get_weather(msg.tool_calls[0].args), msg.tool_calls);
  const any = await llm.bindTools(tools, { tool_choice: "any", parallel_tool_calls: false }).invoke(messages);
  check("langchain bindTools any (required)", any.tool_calls?.length >= 1 &&
        any.tool_calls.every((c) => valid[c.name] && valid[c.name](c.args)), any.tool_calls);
  const out = await llm.withStructuredOutput(zWeather, { method: "functionCalling", name: "weather" }).invoke(messages);
  check("langchain withStructuredOutput functionCalling", zWeather.safeParse(out).success && valid.get_weather(out), out);
});

await attempt("ai-sdk", async () => {
  const provider = createOpenAI({ baseURL, apiKey: "sk-test" });
  const r = await generateText({
    model: provider.chat(model), messages, temperature: 1.3, seed: 9, maxOutputTokens: 400, maxRetries: 0,
    tools: { get_weather: tool({ description: "Weather of a city", inputSchema: zWeather }) }, toolChoice: "required",
    providerOptions: { openai: { parallelToolCalls: false } },
  });
  check("ai-sdk generateText toolChoice required", r.toolCalls.length >= 1 && r.toolCalls.every((c) =>
        c.toolName === "get_weather" && valid.get_weather(c.input)) && r.finishReason === "tool-calls",
        { calls: r.toolCalls, finish: r.finishReason });
});

await attempt("openai responses function tool round trip", async () => {
  // The Responses API: a forced call comes back as a function_call item; its
  // function_call_output sent back (with the call, store off) gets an answer.
  const rtools = [{ type: "function", name: "get_weather", description: "Weather of a city",
                    parameters: weatherSchema, strict: true }];
  const input = [{ role: "user", content: "Weather in Paris for 3 days?" }];
  const r = await client.responses.create({ model, input, tools: rtools, tool_choice: "required", store: false,
                                            parallel_tool_calls: false, max_output_tokens: 400, temperature: 1.3,
                                            seed: 2 });
  const calls = r.output.filter((o) => o.type === "function_call");
  const c = calls[0];
  let args = null;
  try { args = JSON.parse(c.arguments); } catch { /* checked below */ }
  check("responses function_call item", r.status === "completed" && calls.length === 1 && c.name === "get_weather" &&
        /^call_/.test(c.call_id) && /^fc_/.test(c.id) && args !== null && valid.get_weather(args), r.output);
  const r2 = await client.responses.create({
    model, store: false, max_output_tokens: 16, temperature: 0, tools: rtools,
    input: [...input, c, { type: "function_call_output", call_id: c.call_id, output: '{"temp_c": 21}' }],
  });
  check("responses function_call_output round trip", r2.object === "response" &&
        ["completed", "incomplete"].includes(r2.status) && Array.isArray(r2.output) && r2.output.length > 0, r2);
});

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
