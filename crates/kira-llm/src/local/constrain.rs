//! Constrained decoding for the local model: an [`Output`] (a JSON schema,
//! or one call of the offered tools) compiled by llguidance against a token
//! trie built from the GGUF's own vocabulary, and per step the set of
//! tokens that keep the answer valid, so a 135M model's answer always
//! parses.
//!
//! Compiling a schema costs milliseconds; the compiled, not yet started
//! matcher is kept per schema and cloned for each call, since an agent
//! asks for the same few schemas all day.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{SimpleVob, TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use serde_json::{Value, json};

use super::tools::tool_call_schema;
use crate::{LlmError, Output, ToolSpec};

/// How many compiled schemas are kept; past this the cache starts over
/// (schemas come from code, so more means a caller builds them per call).
const CACHE_SIZE: usize = 64;

/// llguidance's JSON options for a small model: one space after `:` and
/// `,` (as the prompts show JSON), and no other whitespace, which a small
/// model would otherwise repeat until its tokens run out.
fn compact(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Some(o) = schema.as_object_mut() {
        o.entry("x-guidance").or_insert_with(|| {
            json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            })
        });
    }
    schema
}

/// What a constrained answer is held to: the schema, and per alternative
/// the answer may take (a tool's call, or the one answer of a schema) the
/// text it starts with and the tokens it keeps for closing: from that
/// many tokens before the budget ends, the answer closes what it has open
/// at each step where it can, and the keys still required are forced, so
/// it ends complete within its budget.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub(crate) schema: Value,
    pub(crate) alternatives: Vec<(String, usize)>,
}

impl Plan {
    /// The tokens kept for closing once the answer reads `written`: the
    /// most any alternative still open to it keeps.
    pub(crate) fn reserve(&self, written: &[u8]) -> usize {
        self.alternatives
            .iter()
            .filter(|(prefix, _)| {
                let p = prefix.as_bytes();
                p.starts_with(written) || written.starts_with(p)
            })
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    }
}

/// How a call of `name` starts, as the constraint writes it (the name
/// then the comma before its arguments, so that a name that begins
/// another does not match it).
fn call_prefix(name: &str) -> String {
    format!("{{\"tool\": {},", Value::String(name.to_owned()))
}

/// The model's vocabulary as llguidance sees it: each token's bytes, and
/// the tokenizer kira built from the GGUF for text the grammar forces.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<tokenizers::Tokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// The model's own tokenization of forced text, so forced tokens are
    /// the ones it would have read; bytes that are not UTF-8 (never whole
    /// JSON) fall back to the trie's greedy split.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => match self.tokenizer.encode_fast(text, false) {
                Ok(e) => e.get_ids().to_vec(),
                Err(_) => self.trie.greedy_tokenize(s),
            },
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// Tokens kept for closing on top of the schema's shortest answer: the
/// value open when closing begins (a string's quote, a number's end), and
/// forced text tokenized differently in place than alone.
const CLOSING_MARGIN: usize = 6;

/// How deep `$ref`s and nested schemas are followed for the shortest
/// answer; past this a value counts as `null`.
const SHORTEST_DEPTH: usize = 16;

/// Compiles output constraints for one model and keeps them.
pub(crate) struct Constrainer {
    factory: ParserFactory,
    cache: Mutex<HashMap<String, Matcher>>,
    /// The model's tokenizer, to count the tokens of a schema's shortest
    /// answer.
    tokenizer: Arc<tokenizers::Tokenizer>,
    /// Tokens that start with a `"`: inside a JSON string, the ones that
    /// close it, preferred when the answer's tokens are nearly spent.
    closing_string: SimpleVob,
    /// Tokens that start with `}` or `]`: outside strings, the ones that
    /// end a number (a small model may write `1.0000000...`) and close
    /// the object, preferred likewise.
    closing_value: SimpleVob,
    /// Tokens that start with `,`: outside strings, the ones that end a
    /// value where the schema still requires a key, preferred after the
    /// closing ones.
    ending_value: SimpleVob,
    /// Each token's bytes, to follow whether the answer is inside a string.
    words: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Constrainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Constrainer").finish_non_exhaustive()
    }
}

impl Constrainer {
    /// From each token id's bytes (see `tokenizer::token_bytes`) and the
    /// tokens that end a reply (the first is the grammar's end).
    pub(crate) fn new(
        words: &[Vec<u8>],
        stop_ids: &[u32],
        tokenizer: Arc<tokenizers::Tokenizer>,
    ) -> Result<Self, LlmError> {
        let bad = |e: &dyn std::fmt::Display| LlmError::Local(format!("constraint setup: {e}"));
        let eos = *stop_ids
            .first()
            .ok_or_else(|| bad(&"the model has no end-of-reply token"))?;
        let vocab_size = u32::try_from(words.len()).map_err(|e| bad(&e))?;
        if stop_ids.iter().any(|&t| t >= vocab_size) {
            return Err(bad(&"an end-of-reply token is outside the vocabulary"));
        }
        let info = TokRxInfo {
            vocab_size,
            tok_eos: eos,
            tok_bos: None,
            tok_pad: None,
            tok_unk: None,
            tok_end_of_turn: Some(eos),
        };
        let trie = TokTrie::from(&info, words).with_eos_tokens(stop_ids);
        let mut closing_string = trie.alloc_token_set();
        let mut closing_value = trie.alloc_token_set();
        let mut ending_value = trie.alloc_token_set();
        for (id, w) in words.iter().enumerate() {
            match w.first() {
                Some(b'"') => closing_string.allow_token(id as TokenId),
                Some(b'}' | b']') => closing_value.allow_token(id as TokenId),
                Some(b',') => ending_value.allow_token(id as TokenId),
                _ => {}
            }
        }
        let env: TokEnv = Arc::new(Vocabulary {
            trie,
            tokenizer: tokenizer.clone(),
        });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(&e))?;
        // Grammar warnings and errors come back as values; none on stderr.
        factory.quiet();
        Ok(Self {
            factory,
            cache: Mutex::new(HashMap::new()),
            tokenizer,
            closing_string,
            closing_value,
            ending_value,
            words: words.to_vec(),
        })
    }

    /// A fresh matcher for `schema`, compiled once per schema.
    pub(crate) fn matcher(&self, schema: &Value) -> Result<Matcher, LlmError> {
        let schema = compact(schema);
        let key = schema.to_string();
        if let Some(m) = self.cache.lock().ok().and_then(|c| c.get(&key).cloned()) {
            return Ok(m.deep_clone());
        }
        let parser = self
            .factory
            .create_parser(TopLevelGrammar::from_json_schema(schema))
            .map_err(|e| LlmError::Config(format!("the output schema does not compile: {e}")))?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(LlmError::Config(format!(
                "the output schema does not compile: {e}"
            )));
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_SIZE {
                cache.clear();
            }
            cache.insert(key, matcher.deep_clone());
        }
        Ok(matcher)
    }

    /// What a call held to `output` (with `tools`) may answer within
    /// `max_new` tokens: the schema, and for each alternative the answer
    /// may take, where it starts and the tokens it keeps for closing
    /// ([`Self::shortest_tokens`]). An offered tool whose shortest call does
    /// not fit is left out of the schema (the model could not finish it),
    /// unless none fits: then every tool stays, and the answer, closing
    /// from its first token, is cut where its budget ends (as a server's
    /// structured output is when its `max_tokens` runs out).
    pub(crate) fn plan(
        &self,
        output: &Output,
        tools: &[ToolSpec],
        max_new: usize,
    ) -> Result<Option<Plan>, LlmError> {
        match output {
            Output::Free => Ok(None),
            Output::Json { schema, .. } => Ok(Some(Plan {
                schema: schema.clone(),
                alternatives: vec![(String::new(), self.shortest_tokens(schema) + CLOSING_MARGIN)],
            })),
            Output::ToolCall if tools.is_empty() => Err(LlmError::Config(
                "a tool call was required but the request offers no tools".into(),
            )),
            Output::ToolCall => {
                let calls: Vec<(&ToolSpec, usize)> = tools
                    .iter()
                    .map(|t| {
                        let shortest =
                            self.shortest_tokens(&tool_call_schema(std::slice::from_ref(t)));
                        (t, shortest)
                    })
                    .collect();
                let fit = calls.iter().any(|(_, n)| *n <= max_new);
                let kept: Vec<&(&ToolSpec, usize)> = calls
                    .iter()
                    .filter(|(_, n)| !fit || *n <= max_new)
                    .collect();
                let offered: Vec<ToolSpec> = kept.iter().map(|(t, _)| (*t).clone()).collect();
                Ok(Some(Plan {
                    schema: tool_call_schema(&offered),
                    alternatives: kept
                        .iter()
                        .map(|(t, n)| (call_prefix(&t.name), n + CLOSING_MARGIN))
                        .collect(),
                }))
            }
        }
    }

    /// The tokens of the shortest answer to `schema` ([`shortest`],
    /// written as the constraint writes JSON), counted with the model's
    /// tokenizer.
    pub(crate) fn shortest_tokens(&self, schema: &Value) -> usize {
        let text = write_compact(&shortest(schema, schema, 0));
        self.tokenizer
            .encode_fast(text.as_str(), false)
            .map_or(text.len(), |e| e.len())
    }

    /// Schemas compiled and kept.
    pub(crate) fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }

    /// The tokens to prefer when the answer must close what it has open
    /// at `position`, best first: inside a string its closing quote;
    /// outside, what closes an object or array, then what ends a value
    /// before the next required key.
    pub(crate) fn closing(&self, position: JsonPosition) -> [&SimpleVob; 2] {
        if position.in_string() {
            [&self.closing_string, &self.closing_string]
        } else {
            [&self.closing_value, &self.ending_value]
        }
    }

    /// The bytes `token` stands for (empty for an id outside the vocabulary).
    pub(crate) fn bytes(&self, token: TokenId) -> &[u8] {
        self.words.get(token as usize).map_or(&[], Vec::as_slice)
    }
}

/// Whether JSON text is inside a string, followed byte by byte.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JsonPosition {
    in_string: bool,
    escaped: bool,
}

impl JsonPosition {
    pub(crate) fn read(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if !self.in_string {
                self.in_string = b == b'"';
            } else if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
        }
    }

    pub(crate) fn in_string(self) -> bool {
        self.in_string
    }
}

/// `logits` with every token `allowed` does not hold set to minus
/// infinity; when a set of `prefer` (tried in order) shares a token with
/// `allowed`, only the tokens shared with the first such set are kept.
pub(crate) fn mask(logits: &mut [f32], allowed: &SimpleVob, prefer: &[&SimpleVob]) {
    let shared = prefer.iter().find_map(|p| {
        let mut s = allowed.clone();
        s.and(p);
        (!s.is_zero()).then_some(s)
    });
    let keep = shared.as_ref().unwrap_or(allowed);
    for (i, l) in logits.iter_mut().enumerate() {
        if i >= keep.len() || !keep.get(i) {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// The shortest answer to `schema` (`root` resolves `$ref`s), taking at
/// every choice (`anyOf`, `oneOf`, types, `enum`) the alternative whose
/// shortest answer is longest, since the model may take any of them:
/// required keys only, empty strings and arrays (or their least length),
/// numbers at their minimum or 0.
pub(crate) fn shortest(schema: &Value, root: &Value, depth: usize) -> Value {
    let Some(o) = schema.as_object().filter(|_| depth < SHORTEST_DEPTH) else {
        return Value::Null;
    };
    let longest = |vs: Vec<Value>| {
        vs.into_iter()
            .max_by_key(|v| write_compact(v).len())
            .unwrap_or(Value::Null)
    };
    if let Some(c) = o.get("const") {
        return c.clone();
    }
    if let Some(e) = o.get("enum").and_then(Value::as_array) {
        return longest(e.clone());
    }
    if let Some(r) = o.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix('#')
            .and_then(|p| root.pointer(p))
            .unwrap_or(&Value::Null);
        return shortest(target, root, depth + 1);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = o.get(key).and_then(Value::as_array) {
            return longest(alts.iter().map(|a| shortest(a, root, depth + 1)).collect());
        }
    }
    if let Some(all) = o.get("allOf").and_then(Value::as_array) {
        // The parts' required keys together.
        let mut merged = serde_json::Map::new();
        for part in all {
            match shortest(part, root, depth + 1) {
                Value::Object(m) => merged.extend(m),
                other if merged.is_empty() => return other,
                _ => {}
            }
        }
        return Value::Object(merged);
    }
    match o.get("type") {
        Some(Value::Array(types)) => longest(
            types
                .iter()
                .map(|t| {
                    let mut one = o.clone();
                    one.insert("type".into(), t.clone());
                    shortest(&Value::Object(one), root, depth + 1)
                })
                .collect(),
        ),
        Some(Value::String(t)) => shortest_of_type(t, o, root, depth),
        // No type: an object if it names properties, else anything (`0`).
        _ if o.contains_key("properties") || o.contains_key("required") => {
            shortest_of_type("object", o, root, depth)
        }
        _ => json!(0),
    }
}

fn shortest_of_type(
    t: &str,
    o: &serde_json::Map<String, Value>,
    root: &Value,
    depth: usize,
) -> Value {
    let least = |k: &str| o.get(k).and_then(Value::as_u64).unwrap_or(0);
    match t {
        "object" => {
            let props = o.get("properties").and_then(Value::as_object);
            let required = o.get("required").and_then(Value::as_array);
            let mut out = serde_json::Map::new();
            for name in required.into_iter().flatten().filter_map(Value::as_str) {
                let sub = props.and_then(|p| p.get(name)).unwrap_or(&Value::Null);
                out.insert(name.to_owned(), shortest(sub, root, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let item = o.get("items").unwrap_or(&Value::Null);
            let one = shortest(item, root, depth + 1);
            Value::Array(vec![
                one;
                usize::try_from(least("minItems").min(64)).unwrap_or(0)
            ])
        }
        "string" => {
            let n = usize::try_from(least("minLength").min(256)).unwrap_or(0);
            Value::String("a".repeat(n))
        }
        "integer" | "number" => o
            .get("minimum")
            .or_else(|| o.get("exclusiveMinimum"))
            .filter(|m| m.is_number())
            .cloned()
            .unwrap_or(json!(0)),
        "boolean" => json!(false),
        _ => Value::Null,
    }
}

/// `v` as the constraint writes JSON (see [`compact`]): `", "` between
/// items and `": "` after keys, nothing else.
pub(crate) fn write_compact(v: &Value) -> String {
    match v {
        Value::Array(items) => {
            let inner: Vec<String> = items.iter().map(write_compact).collect();
            format!("[{}]", inner.join(", "))
        }
        Value::Object(m) => {
            let inner: Vec<String> = m
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), write_compact(v)))
                .collect();
            format!("{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_allowed_tokens_and_prefers_when_it_can() {
        let mut allowed = SimpleVob::alloc(8);
        allowed.allow_token(1);
        allowed.allow_token(3);
        let mut logits = vec![5.0; 10];
        mask(&mut logits, &allowed, &[]);
        let kept: Vec<usize> = (0..10).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [1, 3]);

        let mut prefer = SimpleVob::alloc(8);
        prefer.allow_token(3);
        prefer.allow_token(4);
        let mut logits = vec![5.0; 8];
        mask(&mut logits, &allowed, &[&prefer]);
        let kept: Vec<usize> = (0..8).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [3]);

        // Nothing preferred is allowed: the allowed tokens stay.
        let mut prefer = SimpleVob::alloc(8);
        prefer.allow_token(6);
        let mut logits = vec![5.0; 8];
        mask(&mut logits, &allowed, &[&prefer]);
        let kept: Vec<usize> = (0..8).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [1, 3]);
    }

    #[test]
    fn strings_are_followed_through_escapes() {
        let mut p = JsonPosition::default();
        p.read(br#"{"answer": "a \"quoted\" word"#);
        assert!(p.in_string());
        p.read(br#"\\"#);
        assert!(p.in_string());
        p.read(br#"", "n": 1"#);
        assert!(!p.in_string());
        p.read(br#", "k": ""#);
        assert!(p.in_string());
    }

    #[test]
    fn the_shortest_answer_has_the_required_keys_of_the_longest_alternative() {
        let memory = json!({
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2},
                "importance": {"type": "integer", "minimum": 1},
                "note": {"type": "string"}
            },
            "required": ["text", "tags", "importance"]
        });
        let search = json!({
            "type": "object",
            "properties": {"query": {"type": "string", "minLength": 2}},
            "required": ["query"]
        });
        let tools = [
            ToolSpec {
                name: "search".into(),
                description: String::new(),
                parameters: search,
            },
            ToolSpec {
                name: "record".into(),
                description: String::new(),
                parameters: memory,
            },
        ];
        let schema = tool_call_schema(&tools);
        assert_eq!(
            shortest(&schema, &schema, 0),
            json!({"tool": "record", "arguments": {"text": "", "tags": ["", ""], "importance": 1}})
        );
        assert_eq!(
            write_compact(&json!({"a": [1, {"b": "x"}], "c": null})),
            r#"{"a": [1, {"b": "x"}], "c": null}"#
        );
        // References, enums (the longest), types that may be several,
        // and a schema that refers to itself without end.
        let root = json!({
            "$defs": {"level": {"enum": ["low", "critical"]}, "me": {"$ref": "#/$defs/me"}},
            "type": "object",
            "properties": {
                "level": {"$ref": "#/$defs/level"},
                "n": {"type": ["integer", "string"], "minLength": 3},
                "loop": {"$ref": "#/$defs/me"}
            },
            "required": ["level", "n", "loop"]
        });
        assert_eq!(
            shortest(&root, &root, 0),
            json!({"level": "critical", "n": "aaa", "loop": null})
        );
    }

    #[test]
    fn the_reserve_is_the_most_any_alternative_still_open_keeps() {
        let plan = Plan {
            schema: json!({}),
            alternatives: vec![
                (call_prefix("search"), 10),
                (call_prefix("search_memory"), 30),
                (call_prefix("submit"), 20),
            ],
        };
        assert_eq!(plan.reserve(b""), 30, "nothing named yet: the most");
        assert_eq!(plan.reserve(br#"{"tool": "se"#), 30);
        assert_eq!(plan.reserve(br#"{"tool": "su"#), 20);
        assert_eq!(
            plan.reserve(br#"{"tool": "search","#),
            10,
            "a name that begins another"
        );
        assert_eq!(
            plan.reserve(br#"{"tool": "search", "arguments": {"query": "x"#),
            10
        );
        assert_eq!(
            plan.reserve(br#"{"tool": "search_memory", "arguments": {"#),
            30
        );
        let one = Plan {
            schema: json!({}),
            alternatives: vec![(String::new(), 12)],
        };
        assert_eq!(one.reserve(br#"{"summary": "a"#), 12);
    }

    #[test]
    fn compact_json_unless_the_schema_says_otherwise() {
        let s = compact(&json!({"type": "object"}));
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
        let own = json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(compact(&own), own);
    }
}
