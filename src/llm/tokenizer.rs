//! Tokenizers: `tokenizer.json` from a Hugging Face directory, or a byte-level BPE rebuilt from
//! GGUF metadata (`tokenizer.ggml.tokens` / `merges` / `token_type`).

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

use super::LlmError;

/// GGUF `tokenizer.ggml.token_type` value for control (special) tokens.
const TOKEN_TYPE_CONTROL: i32 = 3;
/// GGUF `tokenizer.ggml.token_type` value for user-defined tokens.
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The tokenizer parts a GGUF file carries.
pub struct GgufVocab {
    pub model: String,
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    pub merges: Vec<String>,
    pub token_types: Vec<i32>,
}

/// Pre-tokenizer families (llama.cpp's `tokenizer.ggml.pre`) whose regex isolates each digit.
fn splits_digits(pre: &str) -> bool {
    matches!(
        pre,
        "smollm" | "starcoder" | "refact" | "command-r" | "olmo" | "smaug-bpe"
    )
}

/// Builds a byte-level BPE tokenizer equivalent to the one the GGUF was converted from.
pub fn from_gguf_vocab(v: GgufVocab, source: &str) -> Result<Tokenizer, LlmError> {
    if v.model != "gpt2" {
        return Err(LlmError::Unsupported(format!(
            "{source}: GGUF tokenizer model '{}' (only byte-level BPE, 'gpt2', is rebuilt from GGUF; \
             use the model's Hugging Face directory with tokenizer.json instead)",
            v.model
        )));
    }
    let vocab: Vocab = v
        .tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mut merges = Vec::with_capacity(v.merges.len());
    for (i, m) in v.merges.iter().enumerate() {
        let (a, b) = m.split_once(' ').ok_or_else(|| {
            LlmError::Format(format!(
                "{source}: tokenizer.ggml.merges[{i}] = {m:?} is not 'a b'"
            ))
        })?;
        merges.push((a.to_string(), b.to_string()));
    }
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| LlmError::Format(format!("{source}: building BPE: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre: PreTokenizerWrapper = match v.pre.as_deref() {
        Some(p) if splits_digits(p) => {
            Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into()
        }
        _ => byte_level.into(),
    };
    tok.with_pre_tokenizer(Some(pre));
    tok.with_decoder(Some(ByteLevel::default()));
    let specials: Vec<AddedToken> = v
        .tokens
        .iter()
        .zip(v.token_types.iter())
        .filter(|(_, &ty)| ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED)
        .map(|(t, &ty)| AddedToken::from(t.clone(), ty == TOKEN_TYPE_CONTROL))
        .collect();
    tok.add_special_tokens(specials)
        .map_err(|e| LlmError::Tokenizer(format!("{source}: special tokens: {e}")))?;
    Ok(tok)
}

/// Encodes without adding special tokens; errors become `LlmError::Tokenizer`.
pub fn encode(tok: &Tokenizer, text: &str) -> Result<Vec<u32>, LlmError> {
    tok.encode(text, false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| LlmError::Tokenizer(e.to_string()))
}
