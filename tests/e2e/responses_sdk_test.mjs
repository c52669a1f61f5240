// The Responses API through the client libraries users call it with: the
// openai SDK's responses.create (plain, streamed with its event iteration,
// the responses.stream helper), responses.parse with zodTextFormat (text.format
// json_schema through the structured-output engine), retrieve / delete, and the Vercel AI SDK's
// generateText / streamText through the default createOpenAI({baseURL})(model)
// factory (which speaks the Responses API). ORTHOSERVE_URL, ORTHOSERVE_MODEL
// as sdk_test.mjs. PHASE=before: also stores a response and prints
// 'PREV <id> <json of its output text>'; PHASE=after (a restarted server on
// the same state_dir) continues it with previous_response_id=PREV_ID.
// Prints one line per check and 'N passed, N failed'; exits non-zero on failure.
import OpenAI from "openai";
import { zodTextFormat } from "openai/helpers/zod";
import { z } from "zod";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const timeout = Number(process.env.E2E_REQUEST_TIMEOUT_MS || 60000);
const client = new OpenAI({ baseURL: process.env.ORTHOSERVE_URL, apiKey: "sk-test", maxRetries: 0, timeout });
const model = process.env.ORTHOSERVE_MODEL;
let passed = 0, failed = 0;
function check(name, cond, info) {
  if (cond) { passed++; console.log("ok   " + name); }
  else { failed++; console.log("FAIL " + name + (info !== undefined ? ": " + JSON.stringify(info).slice(0, 500) : "")); }
}

async function before() {
  const r = await client.responses.create({ model, input: "Once upon a time", max_output_tokens: 16, temperature: 0 });
  check("responses.create object", r.object === "response" && r.id.startsWith("resp_"), r);
  check("responses.create output_text", typeof r.output_text === "string" && r.output_text.length > 0, r.output_text);
  check("responses.create usage", r.usage.output_tokens > 0 &&
        r.usage.total_tokens === r.usage.input_tokens + r.usage.output_tokens, r.usage);
  check("responses.create orthorank", r.orthorank && r.orthorank.sparsity_effective === 0, r.orthorank);
  const chat = await client.chat.completions.create({
    model, messages: [{ role: "user", content: "Once upon a time" }], max_tokens: 16, temperature: 0 });
  check("responses text == chat text", r.output_text === chat.choices[0].message.content,
        { resp: r.output_text, chat: chat.choices[0].message.content });

  const stream = await client.responses.create({ model, input: "Once upon a time", max_output_tokens: 16,
                                                 temperature: 0, stream: true });
  const types = [];
  let deltas = "", final = null, seqOk = true;
  for await (const ev of stream) {
    if (ev.sequence_number !== types.length) seqOk = false;
    types.push(ev.type);
    if (ev.type === "response.output_text.delta") deltas += ev.delta;
    if (ev.type === "response.completed" || ev.type === "response.incomplete") final = ev.response;
  }
  check("stream event order", types[0] === "response.created" && types[1] === "response.in_progress" &&
        types.includes("response.output_text.done") && final !== null, types);
  check("stream sequence numbers", seqOk, types.length);
  check("stream text == non-stream", deltas === r.output_text, { deltas, whole: r.output_text });

  const helper = client.responses.stream({ model, input: "Once upon a time", max_output_tokens: 16, temperature: 0 });
  let helperDeltas = "";
  helper.on("response.output_text.delta", (e) => { helperDeltas += e.delta; });
  const fin = await helper.finalResponse();
  check("responses.stream finalResponse", fin.output_text === r.output_text && helperDeltas === r.output_text,
        { fin: fin.output_text, helperDeltas });

  const got = await client.responses.retrieve(r.id);
  check("responses.retrieve", got.id === r.id && got.output_text === r.output_text, got);

  try {
    await client.responses.create({ model, input: "x", max_output_tokens: 100000000 });
    check("400 raises BadRequestError", false);
  } catch (e) {
    check("400 raises BadRequestError", e instanceof OpenAI.BadRequestError && e.param === "max_output_tokens",
          { name: e.constructor.name, param: e.param });
  }

  const Pet = z.object({ name: z.string().max(8), legs: z.number().int().min(0).max(8), kind: z.enum(["cat", "dog"]) });
  const parsed = [];
  for (const seed of [1, 2, 3]) {
    const p = await client.responses.parse({ model, input: "A pet as JSON:", max_output_tokens: 120, temperature: 1,
                                             seed, text: { format: zodTextFormat(Pet, "pet") } });
    parsed.push({ status: p.status, ok: Pet.safeParse(p.output_parsed).success, text: p.output_text });
  }
  check("responses.parse zodTextFormat", parsed.every((p) => p.status === "completed" && p.ok), parsed);

  const provider = createOpenAI({ baseURL: process.env.ORTHOSERVE_URL, apiKey: "sk-test" });
  const g = await generateText({ model: provider(model), prompt: "Once upon a time", maxOutputTokens: 16,
                                 temperature: 0, maxRetries: 0 });
  check("AI SDK generateText", g.text === r.output_text, { text: g.text, want: r.output_text });
  check("AI SDK generateText usage", g.usage.outputTokens === r.usage.output_tokens &&
        g.usage.inputTokens === r.usage.input_tokens, g.usage);
  check("AI SDK generateText finishReason", ["stop", "length"].includes(g.finishReason), g.finishReason);
  const st = streamText({ model: provider(model), prompt: "Once upon a time", maxOutputTokens: 16, temperature: 0,
                          maxRetries: 0, onError: ({ error }) => console.log("streamText error", error) });
  let stext = "";
  for await (const t of st.textStream) stext += t;
  check("AI SDK streamText", stext === r.output_text, { stext, want: r.output_text });
  const su = await st.usage;
  check("AI SDK streamText usage", su.outputTokens === r.usage.output_tokens, su);

  // A second turn with the first turn's messages: with store on (the default) the AI SDK sends the
  // assistant's text as an item_reference to the stored output item; without, the text itself.
  const msgs = [{ role: "user", content: "Once upon a time" }, ...g.response.messages,
                { role: "user", content: "Then what?" }];
  const t2 = await generateText({ model: provider(model), messages: msgs, maxOutputTokens: 8, temperature: 0,
                                  maxRetries: 0 });
  check("AI SDK second turn sends an item_reference", JSON.stringify(t2.request.body).includes("item_reference"),
        t2.request.body);
  const t2full = await generateText({ model: provider(model), messages: msgs, maxOutputTokens: 8, temperature: 0,
                                      maxRetries: 0, providerOptions: { openai: { store: false } } });
  check("AI SDK item_reference == the text itself", t2.text === t2full.text &&
        t2.usage.inputTokens === t2full.usage.inputTokens, { ref: t2.text, full: t2full.text });

  const first = await client.responses.create({ model, input: "Tom had a red ball.", max_output_tokens: 8,
                                                temperature: 0 });
  console.log("PREV " + first.id + " " + JSON.stringify(first.output_text));
}

async function after() {
  const prev = process.env.PREV_ID;
  const old = await client.responses.retrieve(prev);
  check("retrieve after restart", old.id === prev && old.output_text === JSON.parse(process.env.PREV_TEXT), old);
  const r = await client.responses.create({ model, input: "What did Tom do?", previous_response_id: prev,
                                            max_output_tokens: 8, temperature: 0 });
  check("previous_response_id after restart", r.previous_response_id === prev &&
        r.usage.input_tokens > old.usage.input_tokens + old.usage.output_tokens, r.usage);
  // The same conversation sent in full gives the same answer.
  const full = await client.responses.create({ model, max_output_tokens: 8, temperature: 0, store: false, input: [
    { role: "user", content: "Tom had a red ball." },
    { role: "assistant", content: [{ type: "output_text", text: old.output_text }] },
    { role: "user", content: [{ type: "input_text", text: "What did Tom do?" }] }] });
  check("previous_response_id == the conversation in full", full.output_text === r.output_text &&
        full.usage.input_tokens === r.usage.input_tokens, { full: full.output_text, prev: r.output_text });
  await client.responses.delete(prev);
  try {
    await client.responses.retrieve(prev);
    check("retrieve after delete raises NotFoundError", false);
  } catch (e) {
    check("retrieve after delete raises NotFoundError", e instanceof OpenAI.NotFoundError, e.constructor.name);
  }
}

try {
  if (process.env.PHASE === "after") await after();
  else await before();
} catch (e) {
  failed++;
  console.log("FAIL uncaught: " + (e && e.stack ? e.stack : e));
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
