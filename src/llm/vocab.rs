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

/// Sets the fresh rows of item-ID tokens from the items' texts, in the embedding matrix and an
/// untied LM head alike. Why: rows that all start at the mean embedding are nearly the same
/// input vector, so a history of item IDs looks the same for every user until training has
/// pulled the rows apart; starting each ID token at what its items are about gives the model
/// distinguishable histories from step 0.
///
/// `item_tokens[i]` are item `i`'s ID token ids, `item_text[i]` the token ids of its text.
/// A row `t` with `is_fresh(t)` becomes the mean, over the items whose ID holds `t`, of each
/// item's mean text-token row; the rows' deviations from the vocabulary mean are then scaled
/// so their mean norm equals that of the existing rows, since averaging shrinks them toward
/// the mean. Text tokens at or past `old_rows` are ignored. Returns the number of rows set.
pub fn init_id_rows_from_text(
    loaded: &mut Loaded,
    item_tokens: &[Vec<u32>],
    item_text: &[Vec<u32>],
    old_rows: usize,
    is_fresh: impl Fn(u32) -> bool,
) -> Result<usize, LlmError> {
    if item_tokens.len() != item_text.len() {
        return Err(LlmError::Format(format!(
            "{} item IDs but {} item texts",
            item_tokens.len(),
            item_text.len()
        )));
    }
    let mut set = 0;
    for key in ["model.embed_tokens.weight", "lm_head.weight"] {
        let Some(w) = loaded.weights.get(key) else {
            continue;
        };
        let (rows, d) = w.dims2()?;
        let dev = w.device().clone();
        let dtype = w.dtype();
        let mut m: Vec<f32> = w.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let old = old_rows.min(rows);
        let row = |m: &[f32], r: usize| m[r * d..(r + 1) * d].to_vec();
        let mut mu = vec![0f64; d];
        for r in 0..old {
            for (a, &x) in mu.iter_mut().zip(&m[r * d..(r + 1) * d]) {
                *a += x as f64;
            }
        }
        mu.iter_mut().for_each(|a| *a /= old.max(1) as f64);
        let dev_norm = |v: &[f32]| {
            v.iter()
                .zip(&mu)
                .map(|(&x, &u)| (x as f64 - u).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let target_norm = (0..old).map(|r| dev_norm(&row(&m, r))).sum::<f64>() / old.max(1) as f64;

        let mut sums: std::collections::BTreeMap<u32, (Vec<f64>, usize)> = Default::default();
        for (ids, text) in item_tokens.iter().zip(item_text) {
            let text: Vec<usize> = text
                .iter()
                .map(|&t| t as usize)
                .filter(|&t| t < old)
                .collect();
            if text.is_empty() {
                continue;
            }
            let mut item = vec![0f64; d];
            for &t in &text {
                for (a, &x) in item.iter_mut().zip(&m[t * d..(t + 1) * d]) {
                    *a += x as f64;
                }
            }
            item.iter_mut().for_each(|a| *a /= text.len() as f64);
            for &t in ids.iter().filter(|&&t| is_fresh(t) && (t as usize) < rows) {
                let e = sums.entry(t).or_insert_with(|| (vec![0f64; d], 0));
                e.0.iter_mut().zip(&item).for_each(|(a, b)| *a += b);
                e.1 += 1;
            }
        }
        let means: Vec<(u32, Vec<f64>)> = sums
            .into_iter()
            .map(|(t, (s, n))| {
                (
                    t,
                    s.iter().zip(&mu).map(|(a, u)| a / n as f64 - u).collect(),
                )
            })
            .collect();
        let mean_dev = means
            .iter()
            .map(|(_, v)| v.iter().map(|x| x * x).sum::<f64>().sqrt())
            .sum::<f64>()
            / means.len().max(1) as f64;
        let scale = if mean_dev > 0.0 {
            target_norm / mean_dev
        } else {
            1.0
        };
        for (t, v) in &means {
            let r = *t as usize;
            for (k, x) in v.iter().enumerate() {
                m[r * d + k] = (mu[k] + x * scale) as f32;
            }
        }
        set = means.len();
        let t = Tensor::from_vec(m, (rows, d), &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(&dev)?;
        loaded.weights.insert(key.to_string(), t);
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{LlamaConfig, ModelSource};

    fn loaded(embed: &[[f32; 2]], head: Option<&[[f32; 2]]>) -> Loaded {
        let t = |rows: &[[f32; 2]]| {
            let v: Vec<f32> = rows.iter().flatten().copied().collect();
            Tensor::from_vec(v, (rows.len(), 2), &Device::Cpu).unwrap()
        };
        let mut weights = std::collections::HashMap::new();
        weights.insert("model.embed_tokens.weight".to_string(), t(embed));
        if let Some(h) = head {
            weights.insert("lm_head.weight".to_string(), t(h));
        }
        let wl = tokenizers::models::wordlevel::WordLevel::builder()
            .vocab([("a".to_string(), 0u32)].into_iter().collect())
            .unk_token("a".into())
            .build()
            .unwrap();
        Loaded {
            cfg: LlamaConfig::tiny(embed.len()),
            weights,
            tokenizer: tokenizers::Tokenizer::new(wl),
            source: ModelSource::Hub("test".into()),
        }
    }

    /// The closed form for rows 0..4 old, rows 4 and 5 fresh: item means, token means, then
    /// deviations from the old-row mean rescaled to the old rows' mean deviation norm.
    fn expected(old: &[[f32; 2]], items: &[Vec<u32>], text: &[Vec<u32>]) -> Vec<[f64; 2]> {
        let mu = [0, 1].map(|k| old.iter().map(|r| r[k] as f64).sum::<f64>() / old.len() as f64);
        let norm = |v: [f64; 2]| (v[0] * v[0] + v[1] * v[1]).sqrt();
        let target = old
            .iter()
            .map(|r| norm([r[0] as f64 - mu[0], r[1] as f64 - mu[1]]))
            .sum::<f64>()
            / old.len() as f64;
        let item_mean = |t: &[u32]| {
            [0, 1]
                .map(|k| t.iter().map(|&i| old[i as usize][k] as f64).sum::<f64>() / t.len() as f64)
        };
        let devs: Vec<[f64; 2]> = [4u32, 5]
            .iter()
            .map(|tok| {
                let ms: Vec<[f64; 2]> = items
                    .iter()
                    .zip(text)
                    .filter(|(ids, _)| ids.contains(tok))
                    .map(|(_, t)| item_mean(t))
                    .collect();
                [0, 1].map(|k| ms.iter().map(|m| m[k]).sum::<f64>() / ms.len() as f64 - mu[k])
            })
            .collect();
        let scale = target / (devs.iter().map(|&v| norm(v)).sum::<f64>() / devs.len() as f64);
        devs.iter()
            .map(|v| [0, 1].map(|k| mu[k] + v[k] * scale))
            .collect()
    }

    #[test]
    fn id_rows_from_text_match_the_closed_form_in_embedding_and_untied_head() {
        let old = [[1.0, 0.0], [0.0, 2.0], [-1.0, 1.0], [3.0, -1.0]];
        let fresh = [[9.0, 9.0], [9.0, 9.0]];
        let emb: Vec<[f32; 2]> = old.iter().chain(&fresh).copied().collect();
        let head_old = [[0.5, 0.5], [2.0, 0.0], [0.0, -1.0], [1.0, 1.0]];
        let head: Vec<[f32; 2]> = head_old.iter().chain(&fresh).copied().collect();
        let items = vec![vec![4u32], vec![4, 5], vec![5], vec![]];
        // Item 2's text repeats a token; item 3 holds no fresh token; id 7 is out of range.
        let text = vec![vec![0u32, 1], vec![2, 7], vec![3, 3], vec![1]];
        let mut l = loaded(&emb, Some(&head));
        let n = init_id_rows_from_text(&mut l, &items, &text, 4, |t| t >= 4).unwrap();
        assert_eq!(n, 2);
        let text_in: Vec<Vec<u32>> = text
            .iter()
            .map(|t| t.iter().copied().filter(|&i| i < 4).collect())
            .collect();
        for (key, o) in [
            ("model.embed_tokens.weight", &old),
            ("lm_head.weight", &head_old),
        ] {
            let got: Vec<Vec<f32>> = l.weights[key].to_vec2().unwrap();
            let want = expected(o, &items, &text_in);
            for (r, w) in want.iter().enumerate() {
                for k in 0..2 {
                    assert!((got[4 + r][k] as f64 - w[k]).abs() < 1e-5, "{key} row {r}");
                }
            }
            // Old rows are untouched.
            for (r, row) in o.iter().enumerate() {
                assert_eq!(got[r], row.to_vec(), "{key} old row {r}");
            }
        }
        // Two tokens with different items get different rows.
        let e: Vec<Vec<f32>> = l.weights["model.embed_tokens.weight"].to_vec2().unwrap();
        assert!((e[4][0] - e[5][0]).abs() + (e[4][1] - e[5][1]).abs() > 0.1);
    }

    #[test]
    fn id_rows_from_text_rejects_mismatched_lengths() {
        let mut l = loaded(&[[1.0, 0.0], [0.0, 1.0]], None);
        assert!(init_id_rows_from_text(&mut l, &[vec![1]], &[], 1, |_| true).is_err());
    }
}
