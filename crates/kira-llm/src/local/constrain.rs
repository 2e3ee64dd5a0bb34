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

/// The schema an [`Output`] holds the answer's text to, given the
/// request's tools; `None` for free text.
pub(crate) fn schema_of(output: &Output, tools: &[ToolSpec]) -> Result<Option<Value>, LlmError> {
    match output {
        Output::Free => Ok(None),
        Output::Json { schema, .. } => Ok(Some(schema.clone())),
        Output::ToolCall if tools.is_empty() => Err(LlmError::Config(
            "a tool call was required but the request offers no tools".into(),
        )),
        Output::ToolCall => Ok(Some(tool_call_schema(tools))),
    }
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

/// Compiles output constraints for one model and keeps them.
pub(crate) struct Constrainer {
    factory: ParserFactory,
    cache: Mutex<HashMap<String, Matcher>>,
    /// Tokens that start with a `"`: inside a JSON string, the ones that
    /// close it, preferred when the answer's tokens are nearly spent.
    closing_string: SimpleVob,
    /// Tokens that start with `}` or `]`: outside strings, the ones that
    /// end a number (a small model may write `1.0000000...`) and close
    /// the object, preferred likewise.
    closing_value: SimpleVob,
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
        for (id, w) in words.iter().enumerate() {
            match w.first() {
                Some(b'"') => closing_string.allow_token(id as TokenId),
                Some(b'}' | b']') => closing_value.allow_token(id as TokenId),
                _ => {}
            }
        }
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| bad(&e))?;
        // Grammar warnings and errors come back as values; none on stderr.
        factory.quiet();
        Ok(Self {
            factory,
            cache: Mutex::new(HashMap::new()),
            closing_string,
            closing_value,
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

    /// Schemas compiled and kept.
    pub(crate) fn cached(&self) -> usize {
        self.cache.lock().map_or(0, |c| c.len())
    }

    /// The tokens to prefer when the answer must close what it has open
    /// at `position`.
    pub(crate) fn closing(&self, position: JsonPosition) -> &SimpleVob {
        if position.in_string() {
            &self.closing_string
        } else {
            &self.closing_value
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
/// infinity; when `prefer` shares a token with `allowed`, only those
/// shared tokens are kept.
pub(crate) fn mask(logits: &mut [f32], allowed: &SimpleVob, prefer: Option<&SimpleVob>) {
    let shared = prefer.and_then(|p| {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mask_keeps_allowed_tokens_and_prefers_when_it_can() {
        let mut allowed = SimpleVob::alloc(8);
        allowed.allow_token(1);
        allowed.allow_token(3);
        let mut logits = vec![5.0; 10];
        mask(&mut logits, &allowed, None);
        let kept: Vec<usize> = (0..10).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [1, 3]);

        let mut prefer = SimpleVob::alloc(8);
        prefer.allow_token(3);
        prefer.allow_token(4);
        let mut logits = vec![5.0; 8];
        mask(&mut logits, &allowed, Some(&prefer));
        let kept: Vec<usize> = (0..8).filter(|&i| logits[i].is_finite()).collect();
        assert_eq!(kept, [3]);

        // Nothing preferred is allowed: the allowed tokens stay.
        let mut prefer = SimpleVob::alloc(8);
        prefer.allow_token(6);
        let mut logits = vec![5.0; 8];
        mask(&mut logits, &allowed, Some(&prefer));
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
    fn compact_json_unless_the_schema_says_otherwise() {
        let s = compact(&json!({"type": "object"}));
        assert_eq!(s["x-guidance"]["whitespace_flexible"], false);
        let own = json!({"type": "object", "x-guidance": {"whitespace_flexible": true}});
        assert_eq!(compact(&own), own);
    }
}
