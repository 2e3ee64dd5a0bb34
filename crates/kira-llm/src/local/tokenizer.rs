//! The local model's tokenizer, built from the GGUF file's own metadata:
//! byte-level BPE from `tokenizer.ggml.tokens` and `tokenizer.ggml.merges`,
//! the pre-tokenizer `tokenizer.ggml.pre` names (SmolLM2's: digits split one
//! by one before the byte-level split, no prefix space; Qwen2's: NFC, then
//! its own split pattern before the byte-level mapping), the byte-level
//! decoder, the control tokens (`token_type` 3, such as `<|im_start|>`) as
//! special tokens and the user-defined ones (4, Qwen's `<tool_call>`) as
//! added tokens. candle's own GGUF tokenizer helper gets SmolLM2's ids
//! wrong, so it is not used.

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{
    AddedToken, NormalizerWrapper, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer,
};

use crate::LlmError;

/// llama.cpp's token types: control tokens (`<|im_start|>`), tokens a
/// model's authors added as text (`<tool_call>`), and unused slots
/// (Qwen's `[PAD151665]`, there to round the vocabulary up).
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

/// Qwen2's split before the byte-level mapping (its tokenizer.json's, and
/// llama.cpp's for `tokenizer.ggml.pre = "qwen2"`): contractions, words
/// with at most one leading non-letter, single digits, runs of
/// punctuation, newlines, and spaces (the last one left to the word that
/// follows).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn meta<'a>(ct: &'a Content, key: &str) -> Result<&'a Value, LlmError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| LlmError::Local(format!("GGUF metadata has no {key}")))
}

fn strings<'a>(ct: &'a Content, key: &str) -> Result<Vec<&'a str>, LlmError> {
    let bad = |e: &dyn std::fmt::Display| LlmError::Local(format!("GGUF {key}: {e}"));
    meta(ct, key)?
        .to_vec()
        .map_err(|e| bad(&e))?
        .iter()
        .map(|v| v.to_string().map(String::as_str).map_err(|e| bad(&e)))
        .collect()
}

fn integer(v: &Value) -> Option<i64> {
    match v {
        Value::U8(x) => Some(i64::from(*x)),
        Value::I8(x) => Some(i64::from(*x)),
        Value::U16(x) => Some(i64::from(*x)),
        Value::I16(x) => Some(i64::from(*x)),
        Value::U32(x) => Some(i64::from(*x)),
        Value::I32(x) => Some(i64::from(*x)),
        Value::U64(x) => i64::try_from(*x).ok(),
        Value::I64(x) => Some(*x),
        _ => None,
    }
}

/// A token id from the metadata, if the key is there.
pub(crate) fn token_id(ct: &Content, key: &str) -> Option<u32> {
    ct.metadata
        .get(key)
        .and_then(integer)
        .and_then(|v| u32::try_from(v).ok())
}

/// What each token id stands for, as bytes, for the constraint's token
/// trie: a normal token's text through byte-level BPE's character map
/// (`Ġ` is a space), a control token's name after llguidance's special
/// token marker (0xFF, which no UTF-8 text holds), so that no text the
/// grammar allows can spell it. A token whose text is not in the map
/// (none in SmolLM2), or an unused slot, stands for nothing and is never
/// allowed.
pub(crate) fn token_bytes(ct: &Content) -> Result<Vec<Vec<u8>>, LlmError> {
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let types = token_types(ct)?;
    let bytes = byte_of_char();
    Ok(tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if types.get(i) == Some(&CONTROL) {
                let mut b = vec![llguidance::toktrie::TokTrie::SPECIAL_TOKEN_MARKER];
                b.extend_from_slice(t.as_bytes());
                b
            } else if types.get(i) == Some(&UNUSED) {
                Vec::new()
            } else {
                t.chars()
                    .map(|c| bytes.get(&c).copied())
                    .collect::<Option<Vec<u8>>>()
                    .unwrap_or_default()
            }
        })
        .collect())
}

/// Byte-level BPE's map from the characters of token texts back to bytes:
/// printable Latin-1 bytes stand for themselves, the others (control
/// bytes, space, ...) for the characters from U+0100 on, in byte order.
fn byte_of_char() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                let c = char::from_u32(next).unwrap_or(char::REPLACEMENT_CHARACTER);
                next += 1;
                (c, b)
            }
        })
        .collect()
}

fn token_types(ct: &Content) -> Result<Vec<i64>, LlmError> {
    Ok(meta(ct, "tokenizer.ggml.token_type")?
        .to_vec()
        .map_err(|e| LlmError::Local(format!("GGUF tokenizer.ggml.token_type: {e}")))?
        .iter()
        .map(|v| integer(v).unwrap_or(0))
        .collect())
}

/// Builds the tokenizer from the GGUF metadata.
pub(crate) fn from_gguf(ct: &Content) -> Result<Tokenizer, LlmError> {
    let model = meta(ct, "tokenizer.ggml.model")?
        .to_string()
        .map_err(|e| LlmError::Local(format!("GGUF tokenizer.ggml.model: {e}")))?;
    if model != "gpt2" {
        return Err(LlmError::Local(format!(
            "tokenizer model {model:?} is not byte-level BPE (gpt2)"
        )));
    }
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges = strings(ct, "tokenizer.ggml.merges")?;
    let types = token_types(ct)?;

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let merges: Vec<(String, String)> = merges
        .iter()
        .filter_map(|m| m.split_once(' '))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LlmError::Local(format!("BPE from GGUF: {e}")))?;

    let mut tokenizer = Tokenizer::new(bpe);
    let pre = match ct.metadata.get("tokenizer.ggml.pre") {
        Some(v) => v
            .to_string()
            .map_err(|e| LlmError::Local(format!("GGUF tokenizer.ggml.pre: {e}")))?
            .as_str(),
        None => "smollm",
    };
    let (normalizer, pre) = pre_tokenizer(pre)?;
    tokenizer
        .with_normalizer(normalizer)
        .map_err(|e| LlmError::Local(format!("normalizer from GGUF: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(pre));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
    let added = |kind: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|&(_, &ty)| ty == kind)
            .map(|(t, _)| AddedToken::from(t.to_string(), special))
            .collect()
    };
    tokenizer
        .add_special_tokens(added(CONTROL, true))
        .map_err(|e| LlmError::Local(format!("special tokens from GGUF: {e}")))?;
    tokenizer
        .add_tokens(added(USER_DEFINED, false))
        .map_err(|e| LlmError::Local(format!("added tokens from GGUF: {e}")))?;
    Ok(tokenizer)
}

/// The normalizer (if any) and pre-tokenizer of the `tokenizer.ggml.pre`
/// named `pre`.
fn pre_tokenizer(pre: &str) -> Result<(Option<NormalizerWrapper>, PreTokenizerWrapper), LlmError> {
    // Byte-level mapping without a prefix space; the split is done before.
    let byte_level = |regex| PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, regex));
    match pre {
        "smollm" => Ok((
            None,
            PreTokenizerWrapper::Sequence(Sequence::new(vec![
                PreTokenizerWrapper::Digits(Digits::new(true)),
                byte_level(true),
            ])),
        )),
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| LlmError::Local(format!("qwen2 pre-tokenizer: {e}")))?;
            Ok((
                Some(NormalizerWrapper::NFC(NFC)),
                PreTokenizerWrapper::Sequence(Sequence::new(vec![
                    PreTokenizerWrapper::Split(split),
                    byte_level(false),
                ])),
            ))
        }
        other => Err(LlmError::Local(format!(
            "the GGUF's pre-tokenizer {other:?} is not one kira knows (smollm, qwen2)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    /// The pieces `pre` cuts `text` into, before BPE, in byte-level text.
    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let (_, pre) = pre_tokenizer(pre).expect("known");
        let mut s = PreTokenizedString::from(text);
        pre.pre_tokenize(&mut s).expect("split");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(p, _, _)| p.to_string())
            .collect()
    }

    #[test]
    fn qwen2_splits_words_single_digits_punctuation_and_spaces_as_its_pattern_says() {
        assert_eq!(
            pieces("qwen2", "Hello world, it's 2027!\n\nOK  go"),
            [
                "Hello", "Ġworld", ",", "Ġit", "'s", "Ġ", "2", "0", "2", "7", "!ĊĊ", "OK", "Ġ",
                "Ġgo"
            ]
        );
        // SmolLM2's keeps a space with the digits' run before splitting them.
        assert_eq!(pieces("smollm", "in 2027"), ["in", "Ġ", "2", "0", "2", "7"]);
        let Err(e) = pre_tokenizer("gemma3") else {
            panic!("an unknown pre-tokenizer was accepted");
        };
        assert!(e.to_string().contains("gemma3"), "{e}");
    }

    #[test]
    fn the_byte_map_covers_every_byte_once() {
        let map = byte_of_char();
        assert_eq!(map.len(), 256);
        let mut bytes: Vec<u8> = map.values().copied().collect();
        bytes.sort_unstable();
        bytes.dedup();
        assert_eq!(bytes.len(), 256);
        // GPT-2's own: a space is Ġ, a newline Ċ, letters themselves.
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
        assert_eq!(map[&'é'], 0xE9);
    }
}
