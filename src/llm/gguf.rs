//! GGUF loading: llama weights dequantized to the target dtype under Hugging Face names, the
//! config from metadata, and attn_q/attn_k rows un-permuted back to the HF RoPE layout.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};

use super::config::LlamaConfig;
use super::tokenizer::GgufVocab;
use super::LlmError;

fn md<'a>(ct: &'a Content, key: &str, src: &str) -> Result<&'a Value, LlmError> {
    ct.metadata
        .get(key)
        .ok_or_else(|| LlmError::Format(format!("{src}: GGUF metadata lacks '{key}'")))
}

fn md_usize(ct: &Content, key: &str, src: &str) -> Result<usize, LlmError> {
    let v = md(ct, key, src)?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| LlmError::Format(format!("{src}: GGUF metadata '{key}': {e}")))
}

fn md_f64(ct: &Content, key: &str, src: &str) -> Result<f64, LlmError> {
    md(ct, key, src)?
        .to_f32()
        .map(|x| x as f64)
        .map_err(|e| LlmError::Format(format!("{src}: GGUF metadata '{key}': {e}")))
}

fn md_strings(ct: &Content, key: &str, src: &str) -> Result<Vec<String>, LlmError> {
    let err =
        |e: candle_core::Error| LlmError::Format(format!("{src}: GGUF metadata '{key}': {e}"));
    md(ct, key, src)?
        .to_vec()
        .map_err(err)?
        .iter()
        .map(|v| v.to_string().cloned().map_err(err))
        .collect()
}

/// The llama.cpp converter stores q/k rows permuted for interleaved RoPE:
/// `w.reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`. This is its inverse.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    w.reshape((n_head, hd / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// The inverse of [`unpermute_qk`] (used to write GGUF test files).
pub fn permute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    w.reshape((n_head, 2, hd / 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

/// Reads a llama GGUF: config, HF-named dequantized weights, and the tokenizer vocabulary.
pub fn load_gguf(
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(LlamaConfig, HashMap<String, Tensor>, GgufVocab), LlmError> {
    let src = path.display().to_string();
    let io = |e: std::io::Error| LlmError::Io(format!("{src}: {e}"));
    let mut file = std::fs::File::open(path).map_err(io)?;
    let ct = Content::read(&mut file)
        .map_err(|e| LlmError::Format(format!("{src}: not a GGUF file: {e}")))?;
    let arch = md(&ct, "general.architecture", &src)?
        .to_string()
        .map_err(|e| LlmError::Format(format!("{src}: {e}")))?
        .clone();
    if arch != "llama" {
        return Err(LlmError::Unsupported(format!(
            "{src}: GGUF architecture '{arch}' (llmbs reads llama GGUF files)"
        )));
    }
    let tokens = md_strings(&ct, "tokenizer.ggml.tokens", &src)?;
    let n_head = md_usize(&ct, "llama.attention.head_count", &src)?;
    let n_kv = md_usize(&ct, "llama.attention.head_count_kv", &src).unwrap_or(n_head);
    let hidden = md_usize(&ct, "llama.embedding_length", &src)?;
    let head_dim = md_usize(&ct, "llama.rope.dimension_count", &src).unwrap_or(hidden / n_head);
    let has_output = ct.tensor_infos.contains_key("output.weight");
    let token_id = |k: &str| md_usize(&ct, k, &src).ok().map(|x| x as u32);
    let cfg = LlamaConfig {
        vocab_size: tokens.len(),
        hidden_size: hidden,
        intermediate_size: md_usize(&ct, "llama.feed_forward_length", &src)?,
        num_hidden_layers: md_usize(&ct, "llama.block_count", &src)?,
        num_attention_heads: n_head,
        num_key_value_heads: Some(n_kv),
        head_dim: Some(head_dim),
        rms_norm_eps: md_f64(&ct, "llama.attention.layer_norm_rms_epsilon", &src)?,
        rope_theta: md_f64(&ct, "llama.rope.freq_base", &src).unwrap_or(10_000.0),
        max_position_embeddings: md_usize(&ct, "llama.context_length", &src).unwrap_or(2048),
        tie_word_embeddings: !has_output,
        bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
        eos_token_id: token_id("tokenizer.ggml.eos_token_id").map(serde_json::Value::from),
    };
    let mut weights = HashMap::new();
    let names: Vec<String> = ct.tensor_infos.keys().cloned().collect();
    for name in names {
        let Some(hf) = hf_name(&name) else { continue };
        let q = ct
            .tensor(&mut file, &name, device)
            .map_err(|e| LlmError::Format(format!("{src}: tensor '{name}': {e}")))?;
        let w = q
            .dequantize(device)
            .and_then(|w| {
                if name.ends_with("attn_q.weight") {
                    unpermute_qk(&w, n_head)
                } else if name.ends_with("attn_k.weight") {
                    unpermute_qk(&w, n_kv)
                } else {
                    Ok(w)
                }
            })
            .and_then(|w| w.to_dtype(dtype))
            .map_err(|e| LlmError::Format(format!("{src}: tensor '{name}': {e}")))?;
        weights.insert(hf, w);
    }
    let vocab = GgufVocab {
        model: md(&ct, "tokenizer.ggml.model", &src)?
            .to_string()
            .map_err(|e| LlmError::Format(format!("{src}: {e}")))?
            .clone(),
        pre: ct
            .metadata
            .get("tokenizer.ggml.pre")
            .and_then(|v| v.to_string().ok().cloned()),
        merges: md_strings(&ct, "tokenizer.ggml.merges", &src)?,
        token_types: match ct.metadata.get("tokenizer.ggml.token_type") {
            Some(v) => v
                .to_vec()
                .map_err(|e| LlmError::Format(format!("{src}: {e}")))?
                .iter()
                .map(|x| x.to_i32().unwrap_or(1))
                .collect(),
            None => vec![1; tokens.len()],
        },
        tokens,
    };
    Ok((cfg, weights, vocab))
}

/// GGUF tensor name -> Hugging Face checkpoint key.
pub fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{mapped}"))
}

/// HF key -> GGUF name (test files and export).
pub fn gguf_name(hf: &str) -> Option<String> {
    match hf {
        "model.embed_tokens.weight" => return Some("token_embd.weight".into()),
        "model.norm.weight" => return Some("output_norm.weight".into()),
        "lm_head.weight" => return Some("output.weight".into()),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, tail) = rest.split_once('.')?;
    let mapped = match tail {
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        "input_layernorm.weight" => "attn_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{mapped}"))
}
