//! New vocabulary rows for item-ID tokens and `[CON]` (paper 3.2, 3.3.1): added to the
//! tokenizer, the embedding matrix and (when untied) the LM head. Eval and training share it.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_distr_normal::Normal;
use tokenizers::AddedToken;

use super::{LlmError, Loaded};

/// The GCT summary token (paper Eq. 4).
pub const CON_TOKEN: &str = "[CON]";

/// Standard deviation of the noise added to the mean embedding for each new row.
pub const NEW_ROW_NOISE: f64 = 0.02;

mod rand_distr_normal {
    //! A Box-Muller normal sampler, so no extra crate is needed for one distribution.
    use rand::Rng;
    pub struct Normal(pub f64);
    impl Normal {
        pub fn sample<R: Rng>(&self, rng: &mut R) -> f64 {
            let u1: f64 = rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = rng.random_range(0.0..1.0);
            self.0 * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
        }
    }
}

/// Adds `tokens` (those not already in the vocabulary) to the tokenizer and grows
/// `model.embed_tokens.weight` (and an untied `lm_head.weight`) by one row each, initialised to
/// the mean of the existing rows plus N(0, 0.02^2) noise from `seed`. Returns the ids of all
/// `tokens`, in order.
pub fn extend_vocab(
    loaded: &mut Loaded,
    tokens: &[String],
    seed: u64,
) -> Result<Vec<u32>, LlmError> {
    let fresh: Vec<String> = {
        let vocab = loaded.tokenizer.get_vocab(true);
        let mut seen = std::collections::HashSet::new();
        tokens
            .iter()
            .filter(|t| !vocab.contains_key(*t) && seen.insert((*t).clone()))
            .cloned()
            .collect()
    };
    let old_rows = loaded.cfg.vocab_size;
    if !fresh.is_empty() {
        let added: Vec<AddedToken> = fresh
            .iter()
            .map(|t| AddedToken::from(t.clone(), true))
            .collect();
        loaded
            .tokenizer
            .add_special_tokens(added)
            .map_err(|e| LlmError::Tokenizer(format!("adding ID tokens: {e}")))?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for key in ["model.embed_tokens.weight", "lm_head.weight"] {
            let Some(w) = loaded.weights.get(key) else {
                continue;
            };
            let grown = grow_rows(w, fresh.len(), &mut rng)?;
            loaded.weights.insert(key.to_string(), grown);
        }
        loaded.cfg.vocab_size = old_rows + fresh.len();
    }
    let vocab = loaded.tokenizer.get_vocab(true);
    let mut ids = Vec::with_capacity(tokens.len());
    for t in tokens {
        let id = *vocab
            .get(t)
            .ok_or_else(|| LlmError::Tokenizer(format!("token {t} missing after extension")))?;
        if id as usize >= loaded.cfg.vocab_size {
            // A tokenizer with more entries than embedding rows (some HF models pad the
            // matrix the other way round) would make this id index out of bounds.
            return Err(LlmError::Format(format!(
                "token {t} got id {id} but the embedding has {} rows",
                loaded.cfg.vocab_size
            )));
        }
        ids.push(id);
    }
    Ok(ids)
}

fn grow_rows(w: &Tensor, n: usize, rng: &mut rand::rngs::StdRng) -> candle_core::Result<Tensor> {
    let (_, d) = w.dims2()?;
    let dev = w.device().clone();
    let mean = w.to_dtype(DType::F32)?.mean(0)?.to_device(&Device::Cpu)?;
    let mean: Vec<f32> = mean.to_vec1()?;
    let normal = Normal(NEW_ROW_NOISE);
    let vals: Vec<f32> = (0..n)
        .flat_map(|_| {
            mean.iter()
                .map(|&m| m + normal.sample(rng) as f32)
                .collect::<Vec<_>>()
        })
        .collect();
    let extra = Tensor::from_vec(vals, (n, d), &Device::Cpu)?
        .to_dtype(w.dtype())?
        .to_device(&dev)?;
    Tensor::cat(&[w, &extra], 0)
}
