//! Synthetic backbones for scale checks without a download (`--model synthetic:llama-7b`):
//! the real shapes of Llama-2-7B / TinyLlama-1.1B (and the small default's) with seeded random
//! weights made directly on the target device, and a byte-level tokenizer.
//!
//! Why random weights are enough: throughput and memory depend on the shapes, not the values.
//! The weights are drawn on the device (curand on CUDA) so a 7B model appears in seconds and
//! never passes through host memory; on the CPU a counter-based generator fills tensors in
//! parallel. The same name and seed give the same weights on the same kind of device.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;
use tokenizers::Tokenizer;

use super::config::LlamaConfig;
use super::tokenizer::{from_gguf_vocab, GgufVocab};
use super::LlmError;

/// The names `synthetic:NAME` accepts.
pub const NAMES: [&str; 4] = ["llama-7b", "llama-1b", "smollm2-135m", "tiny"];

/// Seed of every synthetic model's weights.
pub const SEED: u64 = 0x5EED;

/// The shape of a synthetic model.
pub fn config(name: &str) -> Result<LlamaConfig, LlmError> {
    let llama = |hidden, inter, layers, heads, kv, max_pos| LlamaConfig {
        vocab_size: 32_000,
        hidden_size: hidden,
        intermediate_size: inter,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv),
        head_dim: None,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: max_pos,
        tie_word_embeddings: false,
        bos_token_id: Some(1),
        eos_token_id: Some(serde_json::Value::from(2)),
    };
    match name {
        // meta-llama/Llama-2-7b-hf's config.json.
        "llama-7b" => Ok(llama(4096, 11008, 32, 32, 32, 4096)),
        // TinyLlama-1.1B (Llama-2 architecture and tokenizer size, grouped-query attention).
        "llama-1b" => Ok(llama(2048, 5632, 22, 32, 4, 2048)),
        "smollm2-135m" => Ok(LlamaConfig::smollm2_135m()),
        // Byte-level prompts are long: room for them.
        "tiny" => Ok(LlamaConfig {
            max_position_embeddings: 4096,
            ..LlamaConfig::tiny(512)
        }),
        _ => Err(LlmError::Unsupported(format!(
            "synthetic:{name}: unknown synthetic model (known: {})",
            NAMES.join(", ")
        ))),
    }
}

/// The HF names and shapes of a decoder's weights, sorted by name.
pub fn weight_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (d, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (h, kv) = (cfg.num_attention_heads, cfg.num_kv_heads());
    let mut out = vec![
        (
            "model.embed_tokens.weight".to_string(),
            vec![cfg.vocab_size, d],
        ),
        ("model.norm.weight".to_string(), vec![d]),
    ];
    if !cfg.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, d]));
    }
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![d]),
            ("post_attention_layernorm.weight", vec![d]),
            ("self_attn.q_proj.weight", vec![h * hd, d]),
            ("self_attn.k_proj.weight", vec![kv * hd, d]),
            ("self_attn.v_proj.weight", vec![kv * hd, d]),
            ("self_attn.o_proj.weight", vec![d, h * hd]),
            ("mlp.gate_proj.weight", vec![i, d]),
            ("mlp.up_proj.weight", vec![i, d]),
            ("mlp.down_proj.weight", vec![d, i]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out.sort();
    out
}

/// Weights of `cfg`'s shape: matrices uniform in ±1/sqrt(fan_in), norms uniform in [0.9, 1.1];
/// each tensor in the dtype `dtype_of(name)` gives. Tensors are made in name order from `seed`.
pub fn weights(
    cfg: &LlamaConfig,
    seed: u64,
    device: &Device,
    dtype_of: &dyn Fn(&str) -> DType,
) -> candle_core::Result<HashMap<String, Tensor>> {
    if device.is_cuda() {
        device.set_seed(seed)?;
    }
    let mut out = HashMap::new();
    for (k, (name, shape)) in weight_shapes(cfg).into_iter().enumerate() {
        let (lo, hi) = bounds(&shape);
        let t = if device.is_cpu() {
            cpu_uniform(&shape, lo, hi, seed, k as u64)?
        } else {
            Tensor::rand(lo as f32, hi as f32, shape.as_slice(), device)?
        };
        out.insert(name.clone(), t.to_dtype(dtype_of(&name))?);
    }
    Ok(out)
}

fn bounds(shape: &[usize]) -> (f64, f64) {
    if shape.len() == 1 {
        (0.9, 1.1)
    } else {
        let a = 1.0 / (*shape.last().unwrap_or(&1) as f64).sqrt();
        (-a, a)
    }
}

/// splitmix64: a counter-based generator, so chunks can be filled in parallel and still give
/// the same values whatever the thread count.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn cpu_uniform(
    shape: &[usize],
    lo: f64,
    hi: f64,
    seed: u64,
    stream: u64,
) -> candle_core::Result<Tensor> {
    let n: usize = shape.iter().product();
    let base = splitmix(seed ^ splitmix(stream));
    let (lo, span) = (lo as f32, (hi - lo) as f32);
    let mut v = vec![0f32; n];
    v.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let start = (c << 16) as u64;
            for (j, x) in chunk.iter_mut().enumerate() {
                let r = splitmix(base.wrapping_add(start + j as u64));
                // The top 24 bits: an exact f32 in [0, 1).
                let u = (r >> 40) as f32 / (1u64 << 24) as f32;
                *x = lo + span * u;
            }
        });
    Tensor::from_vec(v, shape, &Device::Cpu)
}

/// A byte-level tokenizer of exactly `vocab_size` entries: `<unk>`, `<s>`, `</s>`, the 256 byte
/// symbols, then unused fillers (so new tokens get the ids of new embedding rows). Without
/// merges every UTF-8 byte is one token, about 3-4 times the tokens a trained BPE makes.
pub fn tokenizer(vocab_size: usize) -> Result<Tokenizer, LlmError> {
    if vocab_size < 259 {
        return Err(LlmError::Unsupported(format!(
            "synthetic tokenizer: vocab_size {vocab_size} < 259 (3 specials + 256 bytes)"
        )));
    }
    let mut bytes: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet()
        .into_iter()
        .collect();
    bytes.sort();
    let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"].map(String::from).to_vec();
    tokens.extend(bytes.iter().map(|c| c.to_string()));
    let fill = vocab_size - tokens.len();
    tokens.extend((0..fill).map(|i| format!("<unused_{i}>")));
    let mut token_types = vec![1; tokens.len()];
    token_types[..3].fill(3);
    from_gguf_vocab(
        GgufVocab {
            model: "gpt2".into(),
            pre: None,
            tokens,
            merges: Vec::new(),
            token_types,
        },
        "synthetic tokenizer",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_parameter_count() {
        for name in NAMES {
            let cfg = config(name).unwrap();
            let n: usize = weight_shapes(&cfg)
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            assert_eq!(n, cfg.num_params(), "{name}");
        }
        // Llama-2-7B has 6.74 B parameters.
        let n = config("llama-7b").unwrap().num_params();
        assert_eq!(n, 6_738_415_616);
    }

    #[test]
    fn cpu_weights_are_seeded_and_bounded() {
        let cfg = config("tiny").unwrap();
        let f32s = |_: &str| DType::F32;
        let a = weights(&cfg, 3, &Device::Cpu, &f32s).unwrap();
        let b = weights(&cfg, 3, &Device::Cpu, &f32s).unwrap();
        let c = weights(&cfg, 4, &Device::Cpu, &f32s).unwrap();
        let k = "model.layers.1.mlp.up_proj.weight";
        let v = |m: &HashMap<String, Tensor>| m[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(v(&a), v(&b));
        assert_ne!(v(&a), v(&c));
        let bound = 1.0 / (32f32).sqrt();
        assert!(v(&a).iter().all(|x| x.abs() <= bound));
        let mean = v(&a).iter().sum::<f32>() / v(&a).len() as f32;
        assert!(mean.abs() < 0.02, "mean {mean}");
        let norm = a["model.norm.weight"].to_vec1::<f32>().unwrap();
        assert!(norm.iter().all(|x| (0.9..=1.1).contains(x)));
        let bf = weights(&cfg, 3, &Device::Cpu, &|_: &str| DType::BF16).unwrap();
        assert_eq!(bf[k].dtype(), DType::BF16);
    }

    #[test]
    fn tokenizer_covers_every_byte_and_has_the_model_vocab_size() {
        let tok = tokenizer(32_000).unwrap();
        assert_eq!(tok.get_vocab_size(true), 32_000);
        let ids = tok.encode("Lip gloss, 5 ml — pink", false).unwrap();
        let ids = ids.get_ids();
        assert_eq!(ids.len(), "Lip gloss, 5 ml — pink".len());
        assert!(ids.iter().all(|&i| (3..259).contains(&i)));
        assert_eq!(
            tok.decode(ids, false).unwrap(),
            "Lip gloss, 5 ml — pink".to_string()
        );
    }
}
