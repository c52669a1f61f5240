#!/bin/sh
# make_corpus.sh OUTDIR TESTDATA MKSEEDS - generate the fuzzing seed corpora
# (never committed: they are rebuilt from ../shared/testdata on demand).
#
#   OUTDIR/fuzz_gguf/       synthetic GGUFs from mkseeds (tiny models of every
#                           supported weight type, every metadata value type),
#                           plus 4 KiB and 32 KiB prefixes of the real model
#                           and vocabulary files (header + metadata parsing)
#   OUTDIR/fuzz_model/      the tiny synthetic models (they load and run), and
#                           two truncated real models
#   OUTDIR/fuzz_tokenizer/  every case of the vocab .inp suites, one file per
#                           case, prefixed by the harness's flag byte
#                           (vocabulary, add/parse special), plus a few
#                           token-id inputs (in range, clamped, out of range)
#   OUTDIR/fuzz_request/    the request bodies of the end-to-end tests
#                           (tests/e2e/*.py, read by request_seeds.py; needs
#                           python3) and a few more reaching rarer fields
#   OUTDIR/fuzz_gbnf/       GBNF grammars (every construct), some followed by
#                           a NUL and text to feed the matcher
#   OUTDIR/fuzz_schema/     JSON Schemas using every supported keyword and
#                           a few refused ones
#   OUTDIR/fuzz_textbuf/    stop strings + token byte streams in the
#                           harness's layout (fuzz_textbuf.c): splits of
#                           multi-byte characters, invalid bytes, stops
#                           across pushes, overlapping stops, U+FFFD stops
#
#   OUTDIR/fuzz_jinja/      the conformance suite's chat templates, each
#                           behind a flag byte (which variables are passed)
#
# Every file is small (< 128 KiB) so that libFuzzer runs fast on them.
set -eu
if [ $# -ne 3 ]; then
    echo "usage: $0 OUTDIR TESTDATA MKSEEDS" >&2
    exit 2
fi
out=$1 td=$2 mkseeds=$3
here=$(dirname "$0")
export LC_ALL=C

rm -rf "$out.tmp"
mkdir -p "$out.tmp/fuzz_gguf" "$out.tmp/fuzz_model" "$out.tmp/fuzz_tokenizer" "$out.tmp/fuzz_request" \
         "$out.tmp/fuzz_textbuf" "$out.tmp/fuzz_gbnf" "$out.tmp/fuzz_schema" "$out.tmp/seeds"
"$mkseeds" "$out.tmp/seeds" "$td"

# --- fuzz_gguf / fuzz_model -------------------------------------------------
cp "$out.tmp/seeds/model/"*.gguf "$out.tmp/fuzz_gguf/"
cp "$out.tmp/seeds/gguf/"*.gguf "$out.tmp/fuzz_gguf/"
cp "$out.tmp/seeds/model/"*.gguf "$out.tmp/fuzz_model/"
for f in "$td"/models/stories260K.gguf "$td"/models/qwen2tiny-Q8_0.gguf \
         "$td"/models/tiny256-Q4_K_M.gguf "$td"/models/tiny256-tied-F32.gguf \
         "$td"/vocab/ggml-vocab-gpt-2.gguf "$td"/vocab/ggml-vocab-llama-spm.gguf \
         "$td"/vocab/ggml-vocab-bert-bge.gguf; do
    [ -f "$f" ] || continue
    b=$(basename "$f" .gguf)
    head -c 4096 "$f" > "$out.tmp/fuzz_gguf/prefix4k-$b.gguf"
    head -c 32768 "$f" > "$out.tmp/fuzz_gguf/prefix32k-$b.gguf"
done
for f in "$td"/models/stories260K.gguf "$td"/models/qwen2tiny-Q8_0.gguf; do
    [ -f "$f" ] || continue
    head -c 65536 "$f" > "$out.tmp/fuzz_model/prefix64k-$(basename "$f" .gguf).gguf"
done

# --- fuzz_tokenizer ---------------------------------------------------------
# Flag byte: bits 0-1 vocabulary (0 stories260K, 1 llama-spm, 2 gpt-2,
# 3 deepseek-llm), bit 2 add_special, bit 3 parse_special, bit 6
# remove_special; case k gets variant k % 4 of (add, parse).
split_cases() { # FILE VOCAB_INDEX PREFIX
    [ -f "$1" ] || return 0
    awk -v vi="$2" -v dir="$out.tmp/fuzz_tokenizer" -v pre="$3" '
        BEGIN { RS = "\n__ggml_vocab_test__\n" }
        {
            flag = 64 + vi + (NR % 4) * 4
            f = sprintf("%s/%s-%03d", dir, pre, NR)
            printf "%c%s", flag, $0 > f
            close(f)
        }' "$1"
}
split_cases "$td/vocab/stories260K-base.inp" 0 stories-base
split_cases "$td/vocab/extra-stories260K.inp" 0 stories-extra
split_cases "$td/vocab/ggml-vocab-llama-spm.gguf.inp" 1 llama-spm
split_cases "$td/vocab/extra-llama-spm.inp" 1 llama-spm-extra
split_cases "$td/vocab/ggml-vocab-gpt-2.gguf.inp" 2 gpt2
split_cases "$td/vocab/extra-gpt-2.inp" 2 gpt2-extra
split_cases "$td/vocab/ggml-vocab-deepseek-llm.gguf.inp" 3 deepseek-llm
split_cases "$td/vocab/extra-deepseek-llm.inp" 3 deepseek-llm-extra
# Special tokens in text with parse_special on (flag 0x4c = vocab 0 + add + parse).
for vi in 0 1 2 3; do
    printf "\\$(printf '%03o' $((76 + vi)))<s>Hello</s> <|endoftext|><|im_start|>user\\n<unk>" \
        > "$out.tmp/fuzz_tokenizer/special-$vi"
done
# Token ids: mode 2 (0x20, clamped into range) and mode 3 (0x30, raw; the
# last input has an id past every vocabulary and a negative one).
for vi in 0 1 2 3; do
    printf "\\$(printf '%03o' $((32 + vi)))\\001\\000\\000\\000\\002\\000\\000\\000\\003\\001\\000\\000\\377\\377\\000\\000" \
        > "$out.tmp/fuzz_tokenizer/ids-clamped-$vi"
    printf "\\$(printf '%03o' $((48 + 192 * (vi & 1) + vi)))\\001\\000\\000\\000\\015\\000\\000\\000\\041\\000\\000\\000" \
        > "$out.tmp/fuzz_tokenizer/ids-raw-$vi"
done
printf '\063\001\000\000\000\377\377\377\177\377\377\377\377' > "$out.tmp/fuzz_tokenizer/ids-raw-bad"

# --- fuzz_request -----------------------------------------------------------
if command -v python3 >/dev/null 2>&1; then
    python3 "$here/request_seeds.py" "$out.tmp/fuzz_request" "$here/../e2e" >/dev/null
else
    echo "make_corpus.sh: no python3, fuzz_request gets only a minimal seed" >&2
    printf '{"prompt":"Hi","max_tokens":2}' > "$out.tmp/fuzz_request/minimal.json"
fi

# --- fuzz_textbuf -----------------------------------------------------------
# Layout (see fuzz_textbuf.c): flag byte (bits 0-2: stop strings, 3: chat
# framing, 4: echo, 5: include_usage, 6: take only at the end), then per stop
# string a length byte and its bytes, then a count byte and that many push
# sizes (used in turn), then the token bytes.
tb() { # NAME, then printf format and arguments
    n=$1
    shift
    # shellcheck disable=SC2059
    printf "$@" > "$out.tmp/fuzz_textbuf/$n"
}
tb plain '\000\001\003Once upon a time, there was a girl.'
tb utf8-split '\010\003\001\002\001caf\303\251 \346\235\261\344\272\254 \360\237\230\200!'
tb invalid '\000\002\001\003a\377b\300\257c\355\240\200d\364\220\200\200e\346\235'
tb stop-across '\011\012named Lily\003\011\006\001a girl named Lily who'
tb stop-two '\022\001\012\004STOP\002\005\001line one\nline STOP two'
tb stop-overlap '\003\004abcd\001c\002bc\001\003xxabcd'
tb stop-prefix '\002\002ab\003abc\001\001zab abc'
tb stop-fffd '\031\003\357\277\275\001\001ok\377more'
tb stop-utf8 '\001\002\303\251\001\001caf\303\251 au lait'
tb stop-at-start '\001\001O\000Once'
tb echo-usage '\070\000\002\004\002Hello <|im_end|> world'
tb take-at-end '\101\003end\001\002the end is near'

# --- fuzz_toolcall ----------------------------------------------------------
# Layout (see fuzz_toolcall.c): flag byte (bits 0-3 call format: 1 hermes,
# 2 qwen3_coder, 3 llama3, 4 mistral, 5 mistral_args, 6 granite, 7
# functionary, 8 deepseek; 4 thinking, 5 think open, 6 one call), push size,
# the reply.
mkdir -p "$out.tmp/fuzz_toolcall"
tcs() { # NAME, then printf format and arguments
    n=$1
    shift
    # shellcheck disable=SC2059
    printf "$@" > "$out.tmp/fuzz_toolcall/$n"
}
tcs hermes '\001\003Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n<tool_call>\n{"name": "g", "arguments": "{}"}\n</tool_call>'
tcs hermes-bad '\001\002<tool_call>{"name": "f", "arguments": {}}</tool_call><tool_call>{"name": 3}</tool_call> x'
tcs qwen3-think '\021\005<think>\nhm\n</think>\n\nOK <tool_call>{"name": "f", "arguments": {}}</tool_call>'
tcs coder '\002\004<tool_call>\n<function=f>\n<parameter=a>\n1\n</parameter>\n<parameter=b>\ntext\n</parameter>\n</function>\n</tool_call>'
tcs llama3 '\003\001{"name": "f", "parameters": {"x": [1, 2]}} trailing'
tcs mistral '\004\007[TOOL_CALLS][{"name": "f", "arguments": {}, "id": "abcdefghi"}, {"name": "g", "arguments": {"k": null}}]'
tcs mistral-args '\105\002[TOOL_CALLS]f[CALL_ID]x1[ARGS]{"a": "b"}[TOOL_CALLS]g[ARGS]{}'
tcs granite '\026\003<think>a</think><|tool_call|>[{"name": "f", "arguments": {}}]'
tcs functionary '\007\002all\nHello>>>f\n{"x": 1}>>>g\n{"y": 2}>'
tcs deepseek '\050\011why\n</think>\n\n\357\275\234tool\342\226\201calls\342\226\201begin\357\275\234<\357\275\234tool\342\226\201call\342\226\201begin\357\275\234>function<\357\275\234tool\342\226\201sep\357\275\234>f\n```json\n{}\n```'

# --- fuzz_jinja -------------------------------------------------------------
# Flag byte (fuzz_jinja.c: bit 0 add_generation_prompt, 1 tools, 2-3
# enable_thinking), then a real chat template of the conformance suite.
mkdir -p "$out.tmp/fuzz_jinja"
k=0
for f in "$td"/templates/*.jinja; do
    [ -f "$f" ] || continue
    k=$((k + 1))
    flag=$(printf '\\%03o' $((k % 16)))
    { printf "$flag"; cat "$f"; } > "$out.tmp/fuzz_jinja/$(basename "$f" .jinja)"
done
printf '\003{%% for m in messages %%}{{ m.role }}: {{ m.content }}{%% endfor %%}' > "$out.tmp/fuzz_jinja/minimal"

# --- fuzz_gbnf / fuzz_schema ------------------------------------------------
gb() { n=$1; shift; printf "$@" > "$out.tmp/fuzz_gbnf/$n"; } # shellcheck disable=SC2059
gb json 'root ::= obj\nobj ::= "{" ws (str ws ":" ws val ("," ws str ws ":" ws val)*)? "}"\nval ::= obj | str | [0-9]+ | "[" (val ("," val)*)? "]"\nstr ::= "\\"" [^"\\\\]* "\\""\nws ::= [ \\t\\n]{0,3}\n\000{"a": [1,{"b":"c"}]}'
gb classes 'root ::= [a-zA-Z_\\u00e9-\\u00ff\\U0001F600] [^\\x00-\\x1f"]{2,5} . "\\x41\\n"? ("x" | "yz")+ # c\n\000_\303\251ab\360\237\230\200A'
gb alt-lines 'root ::= a\n  | b\na ::= "a" b?\nb ::= "b"{1,3}\n'
gb left-rec 'root ::= root "a" | "b"\n'
gb nested '((((("a")*)+)?){2,4})'
for f in "$here"/regressions/fuzz_gbnf/* "$here"/regressions/fuzz_schema/*; do
    [ -f "$f" ] && cp "$f" "$out.tmp/$(basename "$(dirname "$f")")/seed-$(basename "$f")"
done
sc() { n=$1; shift; printf '%s' "$1" > "$out.tmp/fuzz_schema/$n"; }
sc person '{"type":"object","properties":{"name":{"type":"string","maxLength":8},"age":{"type":"integer","minimum":0,"maximum":120},"tags":{"type":"array","items":{"enum":["a","b"]},"maxItems":3}},"required":["name","age"],"additionalProperties":false}'
sc refs '{"$defs":{"n":{"type":"object","properties":{"v":{"const":1},"k":{"type":"array","items":{"$ref":"#/$defs/n"}}}}},"$ref":"#/$defs/n"}'
sc choices '{"anyOf":[{"type":"string","format":"uuid"},{"type":"integer","exclusiveMinimum":-5}],"nullable":true}'
sc oneof '{"oneOf":[{"type":"object","properties":{"k":{"const":"a"}},"required":["k"]},{"type":"object","properties":{"k":{"const":"b"}},"required":["k"]}]}'
sc allof '{"allOf":[{"type":"object","properties":{"a":{"type":"boolean"}}},{"properties":{"b":{"type":"null"}},"required":["b"]}]}'
sc tuple '{"type":"array","prefixItems":[{"type":"number"},{"type":"string","pattern":"^(a|b\\d)+$"}],"items":{"type":"boolean"},"minItems":1,"maxItems":4}'
sc formats '{"type":"object","properties":{"d":{"type":"string","format":"date-time"},"e":{"type":"string","format":"email"},"i":{"type":"string","format":"ipv4"}},"additionalProperties":{"type":"integer"}}'
sc refused '{"type":"object","properties":{"a":{"type":"string","contentEncoding":"base64"}},"minProperties":1}'

rm -rf "$out.tmp/seeds" "$out"
mv "$out.tmp" "$out"
echo "corpus: $(ls "$out/fuzz_jinja" | wc -l) jinja, $(ls "$out/fuzz_gguf" | wc -l) gguf, $(ls "$out/fuzz_model" | wc -l) model, $(ls "$out/fuzz_tokenizer" | wc -l) tokenizer, $(ls "$out/fuzz_request" | wc -l) request, $(ls "$out/fuzz_textbuf" | wc -l) textbuf, $(ls "$out/fuzz_gbnf" | wc -l) gbnf, $(ls "$out/fuzz_schema" | wc -l) schema, $(ls "$out/fuzz_toolcall" | wc -l) toolcall inputs in $out"
