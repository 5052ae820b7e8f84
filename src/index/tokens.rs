//! Item IDs as vocabulary token ids and the prefix trie over them (paper 3.4.3): what training
//! targets and beam search decode among, shared by `train`, `eval` and the run directory.

use anyhow::Context;
use tokenizers::Tokenizer;

use super::trie::Trie;

/// Item IDs as token ids (dataset order) and the trie over them.
pub struct ItemIds {
    pub tokens: Vec<Vec<String>>,
    pub ids: Vec<Vec<u32>>,
    pub trie: Trie,
}

impl ItemIds {
    /// Maps each item's ID tokens to vocabulary ids (they must have been added with
    /// `llm::vocab::extend_vocab`) and builds the trie.
    pub fn new(tokens: Vec<Vec<String>>, tok: &Tokenizer) -> anyhow::Result<Self> {
        let vocab = tok.get_vocab(true);
        let mut ids = Vec::with_capacity(tokens.len());
        for (i, id) in tokens.iter().enumerate() {
            let mut v = Vec::with_capacity(id.len());
            for t in id {
                v.push(*vocab.get(t).with_context(|| {
                    format!("item #{i}: ID token {t} is not in the vocabulary")
                })?);
            }
            ids.push(v);
        }
        let trie = Trie::new(&ids).context("building the item-ID trie")?;
        Ok(Self { tokens, ids, trie })
    }
}
