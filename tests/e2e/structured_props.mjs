// Structured output, the property test: for every schema below (>= 100,
// covering every keyword the compiler enforces) and 10 seeds, a chat
// completion sampled at temperature 1.5 on a random-weight model (whose
// distribution is adversarial) under response_format json_schema must give
// JSON that ajv accepts when finish_reason is "stop", and a prefix of JSON
// text when it is "length". Unconstrained requests run beside the
// constrained ones, so they share batch steps.
// Env: ORTHOSERVE_URL (http://127.0.0.1:PORT/v1), ORTHOSERVE_MODEL,
// E2E_REQUEST_TIMEOUT_MS. Prints a summary; exits non-zero on a failure.
import Ajv2020 from "ajv/dist/2020.js";
import addFormats from "ajv-formats";

const base = process.env.ORTHOSERVE_URL, model = process.env.ORTHOSERVE_MODEL;
const timeoutMs = Number(process.env.E2E_REQUEST_TIMEOUT_MS || 60000);
const SEEDS = 10, CONCURRENCY = 6, MAX_TOKENS = 160;

// ---------------------------------------------------------------- schemas
const S = (o) => o;
const str = (extra = {}) => ({ type: "string", maxLength: 6, ...extra });
const hand = [
  S({ type: "object", properties: { name: str(), age: { type: "integer", minimum: 0, maximum: 120 } }, required: ["name", "age"], additionalProperties: false }),
  S({ type: "boolean" }), S({ type: "null" }), S({ type: "integer" }), S({ type: "number" }), S({ type: "string", maxLength: 4 }),
  S({ type: ["integer", "null"] }), S({ type: ["string", "boolean"], maxLength: 3 }),
  S({ type: "integer", minimum: -50, maximum: 50 }), S({ type: "integer", exclusiveMinimum: 7, exclusiveMaximum: 12 }),
  S({ type: "integer", minimum: 1000 , maximum: 1000000 }), S({ type: "integer", maximum: -3 , minimum: -400}),
  S({ enum: ["red", "green", "blue", 7, null, true] }), S({ const: { a: [1, "x"] } }), S({ type: "string", enum: ["a", "b"] }),
  S({ anyOf: [{ type: "integer", minimum: 0, maximum: 9 }, str({ maxLength: 2 })] }),
  S({ oneOf: [{ type: "boolean" }, { type: "array", items: { type: "integer", maximum: 99, minimum: 0 }, maxItems: 2 }] }),
  S({ oneOf: [{ type: "object", properties: { kind: { const: "a" }, x: { type: "integer", minimum: 0, maximum: 5 } }, required: ["kind", "x"], additionalProperties: false },
              { type: "object", properties: { kind: { const: "b" }, y: { type: "boolean" } }, required: ["kind", "y"], additionalProperties: false }] }),
  S({ allOf: [{ type: "object", properties: { a: { type: "boolean" } }, required: ["a"] }, { properties: { b: { type: "null" } } }] }),
  S({ $defs: { leaf: { type: "integer", minimum: 0, maximum: 3 } }, type: "array", items: { $ref: "#/$defs/leaf" }, maxItems: 4 }),
  S({ definitions: { p: { type: "object", properties: { v: { type: "boolean" } }, required: ["v"], additionalProperties: false } }, $ref: "#/definitions/p" }),
  S({ $defs: { t: { type: "object", properties: { v: { type: "integer", minimum: 0, maximum: 9 }, c: { type: "array", items: { $ref: "#/$defs/t" }, maxItems: 2 } }, required: ["v"], additionalProperties: false } }, $ref: "#/$defs/t" }),
  S({ type: "object", properties: { n: { type: "integer", minimum: 0, maximum: 9 }, next: { anyOf: [{ $ref: "#" }, { type: "null" }] } }, required: ["n", "next"], additionalProperties: false }),
  S({ type: "array", items: { type: "boolean" } }), S({ type: "array", items: { type: "null" }, minItems: 2, maxItems: 3 }),
  S({ type: "array", prefixItems: [{ type: "integer", minimum: 0, maximum: 9 }, { type: "boolean" }], items: false }),
  S({ type: "array", prefixItems: [{ type: "boolean" }], items: { type: "null" }, minItems: 2, maxItems: 4 }),
  S({ type: "array", prefixItems: [{ type: "boolean" }, { type: "null" }], minItems: 1 }),
  S({ type: "string", minLength: 2, maxLength: 5 }), S({ type: "string", minLength: 1, maxLength: 1 }),
  S({ type: "string", pattern: "^[a-z]{2,4}-[0-9]{2}$" }), S({ type: "string", pattern: "^(ab|cd)+x?$" }),
  S({ type: "string", pattern: "^\\d{3}\\.\\w\\s?[^a-z\"]$" }), S({ type: "string", pattern: "q" }),
  S({ type: "string", pattern: "^[\"\\\\]{1,3}$" }), S({ type: "string", pattern: "^(?:x|y){2}(?<z>z)?$" }),
  S({ type: "string", format: "date" }), S({ type: "string", format: "time" }), S({ type: "string", format: "date-time" }),
  S({ type: "string", format: "uuid" }), S({ type: "string", format: "email" }), S({ type: "string", format: "ipv4" }),
  S({ type: "object", properties: { a: { type: "boolean" } }, additionalProperties: { type: "null" } }),
  S({ type: "object", properties: { ab: { type: "boolean" }, ac: { type: "null" } }, additionalProperties: true, maxProperties: undefined }),
  S({ type: "object", additionalProperties: { type: "integer", minimum: 0, maximum: 9 } }),
  S({ type: "object", properties: { a: { type: "boolean" }, b: { type: "null" }, c: { type: "integer", minimum: 1, maximum: 2 } } }),
  S({ type: "object", properties: { a: { type: "boolean" }, b: { type: "null" } }, required: ["b"] }),
  S({ type: "object", properties: { s: { type: "string", maxLength: 3, nullable: true } }, required: ["s"], additionalProperties: false }),
  S({ type: "integer", nullable: true, minimum: 0, maximum: 3 }),
  S({ anyOf: [{ type: "string", format: "uuid" }, { type: "string", format: "ipv4" }], nullable: true }),
  S({ title: "annotated", description: "d", $schema: "https://json-schema.org/draft/2020-12/schema", $comment: "c", examples: [1], default: 2, type: "integer", minimum: 0, maximum: 9, deprecated: false, readOnly: true }),
  S({ type: "object", properties: { "we\"ird key": { type: "boolean" }, "é": { type: "null" } }, required: ["we\"ird key", "é"], additionalProperties: false }),
  S({ type: "array", items: { type: "array", items: { type: "integer", minimum: 0, maximum: 1 }, maxItems: 2 }, maxItems: 2 }),
  S({ type: "number", nullable: true }), S({}), S(true),
];
for (const s of hand) if (s && typeof s === "object") for (const k of Object.keys(s)) if (s[k] === undefined) delete s[k];

// Generated: nested objects of the building blocks, in a fixed pseudo-random order.
function rng(seed) { let x = seed >>> 0; return () => ((x = (x * 1664525 + 1013904223) >>> 0) / 2 ** 32); }
const r = rng(12345);
const pick = (a) => a[Math.floor(r() * a.length)];
const leaves = [
  () => ({ type: "integer", minimum: Math.floor(r() * 20) - 10, maximum: 10 + Math.floor(r() * 200) }),
  () => ({ type: "boolean" }), () => ({ type: "null" }), () => ({ enum: ["x", "y", 3, false] }),
  () => ({ type: "string", maxLength: 1 + Math.floor(r() * 5) }),
  () => ({ type: "string", pattern: pick(["^[A-Z][a-z]{0,3}$", "^[0-9a-f]{4}$", "^(yes|no)$"]) }),
  () => ({ type: "string", format: pick(["date", "uuid", "ipv4", "time"]) }),
  () => ({ const: pick(["k", 1, null, [true]]) }),
  () => ({ type: "array", items: { type: "integer", minimum: 0, maximum: 9 }, maxItems: 1 + Math.floor(r() * 3) }),
  () => ({ anyOf: [{ type: "null" }, { type: "integer", minimum: 0, maximum: 5 }] }),
];
function genObject(depth) {
  const n = 1 + Math.floor(r() * 3), props = {}, req = [];
  for (let i = 0; i < n; i++) {
    const k = "k" + i + pick(["", "_a", "Name"]);
    props[k] = depth > 0 && r() < 0.3 ? genObject(depth - 1) : pick(leaves)();
    if (r() < 0.6) req.push(k);
  }
  const o = { type: "object", properties: props, required: req };
  if (r() < 0.7) o.additionalProperties = false;
  return o;
}
const generated = [];
while (hand.length + generated.length < 110) generated.push(genObject(2));
const schemas = hand.concat(generated);

// ---------------------------------------------------------------- checks
const ajv = new Ajv2020({ strict: false, allErrors: true });
addFormats(ajv);
// ajv knows no OpenAPI "nullable": say it in JSON Schema for the validator.
function forAjv(s) {
  if (Array.isArray(s)) return s.map(forAjv);
  if (!s || typeof s !== "object") return s;
  const o = {};
  for (const [k, v] of Object.entries(s)) o[k] = ["properties", "$defs", "definitions"].includes(k) ? Object.fromEntries(Object.entries(v).map(([a, b]) => [a, forAjv(b)])) : forAjv(v);
  if (o.nullable === true) { delete o.nullable; return { anyOf: [o, { type: "null" }] }; }
  return o;
}

// Whether text is a prefix of some JSON text (a pushdown lexer).
function isJsonPrefix(t) {
  const st = []; let want = "value", i = 0;
  const afterValue = () => { want = st.length ? "sep" : "end"; };
  while (i < t.length) {
    const c = t[i];
    if (want !== "str" && want !== "num" && want !== "lit" && " \t\n\r".includes(c)) { i++; continue; }
    if (want === "value" || want === "valueOrEnd") {
      if (c === "]" && want === "valueOrEnd") { st.pop(); afterValue(); i++; continue; }
      if (c === "{") { st.push("o"); want = "keyOrEnd"; i++; continue; }
      if (c === "[") { st.push("a"); want = "valueOrEnd"; i++; continue; }
      if (c === '"') { want = "str"; st.push("s:v"); i++; continue; }
      if ("-0123456789".includes(c)) { want = "num"; st.push("n" + i); continue; }
      for (const w of ["true", "false", "null"]) if (w[0] === c) { want = "lit"; st.push("l" + w); }
      if (want !== "lit") return false;
      continue;
    }
    if (want === "keyOrEnd" || want === "key") {
      if (c === "}" && want === "keyOrEnd") { st.pop(); afterValue(); i++; continue; }
      if (c !== '"') return false;
      want = "str"; st.push("s:k"); i++; continue;
    }
    if (want === "colon") { if (c !== ":") return false; want = "value"; i++; continue; }
    if (want === "sep") {
      const top = st[st.length - 1];
      if (c === ",") { want = top === "o" ? "key" : "value"; i++; continue; }
      if ((c === "}" && top === "o") || (c === "]" && top === "a")) { st.pop(); afterValue(); i++; continue; }
      return false;
    }
    if (want === "end") return false;
    if (want === "str") {
      if (c === "\\") {
        if (i + 1 >= t.length) return true;
        const e = t[i + 1];
        if ('"\\/bfnrt'.includes(e)) { i += 2; continue; }
        if (e !== "u") return false;
        const h = t.slice(i + 2, i + 6);
        if (!/^[0-9a-fA-F]*$/.test(h)) return false;
        i += 2 + h.length; continue;
      }
      if (c.charCodeAt(0) < 0x20) return false;
      if (c === '"') { const kind = st.pop(); if (kind === "s:k") want = "colon"; else afterValue(); i++; continue; }
      i++; continue;
    }
    if (want === "num") {
      const start = Number(st[st.length - 1].slice(1));
      let j = i; while (j < t.length && "-+.eE0123456789".includes(t[j])) j++;
      const tok = t.slice(start, j);
      const full = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$/.test(tok);
      const partial = /^-?(0|[1-9]\d*)?(\.\d*)?([eE][+-]?\d*)?$/.test(tok) && !/^-?0\d/.test(tok);
      if (j === t.length) return partial;
      if (!full) return false;
      st.pop(); afterValue(); i = j; continue;
    }
    if (want === "lit") {
      const w = st[st.length - 1].slice(1);
      const s2 = t.slice(i, i + w.length);
      if (!w.startsWith(s2)) return false;
      if (s2.length < w.length) return true;
      st.pop(); afterValue(); i += w.length; continue;
    }
  }
  return true;
}

// ---------------------------------------------------------------- runs
async function post(body) {
  const ctl = new AbortController(); const tm = setTimeout(() => ctl.abort(), timeoutMs);
  try {
    const res = await fetch(base + "/chat/completions", { method: "POST", signal: ctl.signal, headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    return { status: res.status, json: await res.json() };
  } finally { clearTimeout(tm); }
}

let stops = 0, lengths = 0, failures = 0, plain = 0;
const jobs = [];
schemas.forEach((schema, si) => { for (let seed = 0; seed < SEEDS; seed++) jobs.push({ schema, si, seed }); });
let next = 0;
async function worker(w) {
  while (next < jobs.length) {
    const { schema, si, seed } = jobs[next++];
    const body = { model, messages: [{ role: "user", content: "Answer in JSON." }], temperature: 1.5, seed, max_tokens: MAX_TOKENS,
                   response_format: { type: "json_schema", json_schema: { name: "s" + si, schema, strict: true } } };
    const [res, side] = await Promise.all([post(body), w === 0 ? post({ model, messages: [{ role: "user", content: "free" }], temperature: 1.5, seed, max_tokens: 24 }) : null]);
    if (side) { if (side.status === 200) plain++; else { failures++; console.log("FAIL unconstrained", side.json); } }
    if (res.status !== 200) { failures++; console.log("FAIL schema " + si + " status " + res.status, JSON.stringify(res.json).slice(0, 300)); continue; }
    const ch = res.json.choices[0], text = ch.message.content;
    if (ch.finish_reason === "stop") {
      stops++;
      let v; try { v = JSON.parse(text); } catch (e) { failures++; console.log("FAIL schema " + si + " seed " + seed + ": not JSON: " + JSON.stringify(text)); continue; }
      const validate = ajv.compile(forAjv(schema));
      if (!validate(v)) { failures++; console.log("FAIL schema " + si + " seed " + seed + ": " + JSON.stringify(text) + " " + JSON.stringify(validate.errors).slice(0, 300)); }
    } else if (ch.finish_reason === "length") {
      lengths++;
      if (!isJsonPrefix(text)) { failures++; console.log("FAIL schema " + si + " seed " + seed + ": not a JSON prefix: " + JSON.stringify(text)); }
    } else { failures++; console.log("FAIL finish_reason " + ch.finish_reason); }
  }
}
// the prefix checker itself
const good = ['{"a": [1, tr', '"ab\\u00', '-0.5e', '[{"x":nu', '{"k"', ''], bad = ['{"a" 1', '01', '[1,]', '{"a":1}}', 'tx', '"\u0001'];
for (const g of good) if (!isJsonPrefix(g)) { failures++; console.log("FAIL prefix checker refuses " + g); }
for (const b of bad) if (isJsonPrefix(b)) { failures++; console.log("FAIL prefix checker accepts " + b); }

await Promise.all(Array.from({ length: CONCURRENCY }, (_, w) => worker(w)));
console.log(`${schemas.length} schemas x ${SEEDS} seeds: ${stops} stop (validated by ajv), ${lengths} length (JSON prefixes), ${plain} unconstrained beside them, ${failures} failures`);
if (schemas.length < 100 || stops < schemas.length) { console.log("FAIL too few schemas or stop outputs"); failures++; }
process.exit(failures ? 1 : 0);
