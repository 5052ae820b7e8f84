//! Backbone tests: tiny random models for the invariances, the real SmolLM2 GGUF for tokenizer
//! ids and parity with candle-transformers' quantized llama.

mod common;
use common::max_diff;

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use llmbs::llm::{
    gguf, tokenizer, KvCache, Llama, LlamaConfig, Loaded, Mode, ModelSource, Positions,
};

fn tiny(seed: u64) -> (LlamaConfig, VarMap, Llama) {
    let cfg = LlamaConfig::tiny(64);
    let (vm, model) = llmbs::llm::init::random_model(&cfg, seed, DType::F32, &Device::Cpu).unwrap();
    (cfg, vm, model)
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}

const SEQ: [u32; 10] = [3, 17, 9, 42, 5, 61, 8, 8, 30, 2];

#[test]
fn kv_cache_decoding_equals_full_forward() {
    let (_, _, m) = tiny(1);
    let full = m.forward_logits(&ids(&[&SEQ]), Mode::Infer).unwrap(); // [1, 10, V]
    let mut cache = m.new_cache();
    let h = m
        .forward_hidden(
            &ids(&[&SEQ[..6]]),
            None,
            None,
            Some(&mut cache),
            Mode::Infer,
        )
        .unwrap();
    let mut steps = vec![m.logits(&h.i(0).unwrap()).unwrap()];
    for &tok in &SEQ[6..] {
        let h = m
            .forward_hidden(&ids(&[&[tok]]), None, None, Some(&mut cache), Mode::Infer)
            .unwrap();
        steps.push(m.logits(&h.i(0).unwrap()).unwrap());
    }
    let inc = Tensor::cat(&steps, 0).unwrap();
    assert_eq!(cache.len(), 10);
    assert!(max_diff(&full.i(0).unwrap(), &inc) < 1e-4);
}

#[test]
fn right_padding_does_not_change_real_positions() {
    let (_, _, m) = tiny(2);
    let short = [7u32, 1, 33, 4, 12, 50];
    let mut padded = short.to_vec();
    padded.extend([0, 0, 0, 0]);
    let batch = m
        .forward_hidden(&ids(&[&SEQ, &padded]), None, None, None, Mode::Infer)
        .unwrap();
    let alone = m
        .forward_hidden(&ids(&[&short]), None, None, None, Mode::Infer)
        .unwrap();
    let real = batch.i((1, 0..6)).unwrap();
    assert!(max_diff(&real, &alone.i(0).unwrap()) < 1e-5);
    let long = m
        .forward_hidden(&ids(&[&SEQ]), None, None, None, Mode::Infer)
        .unwrap();
    assert!(max_diff(&batch.i(0).unwrap(), &long.i(0).unwrap()) < 1e-5);
}

/// Decoding after right-padded prompts (per-row positions + key validity), as beam search does,
/// gives what each prompt gives alone.
#[test]
fn padded_batch_decoding_matches_single_rows() {
    let (_, _, m) = tiny(3);
    let a = [5u32, 9, 14, 3, 27, 11];
    let b = [40u32, 2, 19];
    let next = [[8u32, 13], [22, 6]];
    let padded_b = [40u32, 2, 19, 0, 0, 0];
    let valid = Tensor::from_vec(
        vec![1u8, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        (2, 6),
        &Device::Cpu,
    )
    .unwrap();
    let mut cache = m.new_cache();
    let h = m
        .forward_hidden(
            &ids(&[&a, &padded_b]),
            None,
            Some(&valid),
            Some(&mut cache),
            Mode::Infer,
        )
        .unwrap();
    let mut got = vec![m.last_logits(&h, &[6, 3]).unwrap()];
    let mut lens = [6u32, 3];
    for (&na, &nb) in next[0].iter().zip(&next[1]) {
        let pos = Tensor::from_vec(lens.to_vec(), (2, 1), &Device::Cpu).unwrap();
        let h = m
            .forward_hidden(
                &ids(&[&[na], &[nb]]),
                Some(Positions::PerRow(pos)),
                None,
                Some(&mut cache),
                Mode::Infer,
            )
            .unwrap();
        got.push(m.last_logits(&h, &[1, 1]).unwrap());
        lens[0] += 1;
        lens[1] += 1;
    }
    for (row, (prompt, nx)) in [(&a[..], next[0]), (&b[..], next[1])]
        .into_iter()
        .enumerate()
    {
        let mut seq = prompt.to_vec();
        seq.extend(nx);
        let full = m
            .forward_logits(&ids(&[&seq]), Mode::Infer)
            .unwrap()
            .i(0)
            .unwrap();
        for (step, g) in got.iter().enumerate() {
            let want = full.i(prompt.len() - 1 + step).unwrap();
            assert!(
                max_diff(&g.i(row).unwrap(), &want) < 1e-4,
                "row {row} step {step}"
            );
        }
    }
}

#[test]
fn cache_reorder_selects_rows() {
    let (_, _, m) = tiny(4);
    let a = [5u32, 9, 14];
    let b = [40u32, 2, 19];
    let mut cache = m.new_cache();
    m.forward_hidden(&ids(&[&a, &b]), None, None, Some(&mut cache), Mode::Infer)
        .unwrap();
    let idx = Tensor::new(&[1u32, 0, 1], &Device::Cpu).unwrap();
    cache.reorder(&idx).unwrap();
    let h = m
        .forward_hidden(
            &ids(&[&[7], &[7], &[7]]),
            None,
            None,
            Some(&mut cache),
            Mode::Infer,
        )
        .unwrap();
    let got = m.last_logits(&h, &[1, 1, 1]).unwrap();
    let fa = m
        .forward_logits(&ids(&[&[5, 9, 14, 7]]), Mode::Infer)
        .unwrap()
        .i((0, 3))
        .unwrap();
    let fb = m
        .forward_logits(&ids(&[&[40, 2, 19, 7]]), Mode::Infer)
        .unwrap()
        .i((0, 3))
        .unwrap();
    assert!(max_diff(&got.i(0).unwrap(), &fb) < 1e-4);
    assert!(max_diff(&got.i(1).unwrap(), &fa) < 1e-4);
    assert!(max_diff(&got.i(2).unwrap(), &fb) < 1e-4);
    let fresh = KvCache::new(2);
    assert!(fresh.is_empty());
}

#[test]
fn differentiable_path_equals_fused_path_and_grads_reach_every_weight() {
    let (_, vm, m) = tiny(5);
    let x = ids(&[&SEQ, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]);
    let infer = m.forward_logits(&x, Mode::Infer).unwrap();
    let train = m.forward_logits(&x, Mode::Train).unwrap();
    assert!(max_diff(&infer, &train) < 1e-4);
    let targets = x.narrow(1, 1, 9).unwrap().flatten_all().unwrap();
    let logits = train.narrow(1, 0, 9).unwrap().flatten_to(1).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &targets).unwrap();
    let grads = loss.backward().unwrap();
    let data = vm.data().lock().unwrap();
    assert_eq!(data.len(), 2 * 9 + 2);
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

/// Writes the tiny model as a HF directory and as a GGUF file (q/k permuted the llama.cpp way,
/// tokenizer in the metadata) and checks both load to identical outputs.
#[test]
fn hf_directory_and_gguf_load_identically() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let (cfg, vm, m) = tiny(6);
    let dir = tempfile::tempdir().unwrap();
    let weights: HashMap<String, Tensor> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    // HF directory.
    let hf = dir.path().join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    candle_core::safetensors::save(&weights, hf.join("model.safetensors")).unwrap();
    let tokens: Vec<String> = (0..64).map(|i| format!("t{i}")).collect();
    let mut types = vec![1i32; 64];
    types[0] = 3;
    let tok = tokenizer::from_gguf_vocab(
        tokenizer::GgufVocab {
            model: "gpt2".into(),
            pre: None,
            tokens: tokens.clone(),
            merges: vec![],
            token_types: types.clone(),
        },
        "test",
    )
    .unwrap();
    tok.save(hf.join("tokenizer.json"), false).unwrap();
    // GGUF.
    let mut qts = Vec::new();
    for (k, v) in &weights {
        let v = if k.ends_with("q_proj.weight") {
            gguf::permute_qk(v, cfg.num_attention_heads).unwrap()
        } else if k.ends_with("k_proj.weight") {
            gguf::permute_qk(v, cfg.num_kv_heads()).unwrap()
        } else {
            v.clone()
        };
        qts.push((
            gguf::gguf_name(k).unwrap(),
            QTensor::quantize(&v, GgmlDType::F32).unwrap(),
        ));
    }
    use gguf_file::Value;
    let md: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.embedding_length", Value::U32(32)),
        ("llama.feed_forward_length", Value::U32(64)),
        ("llama.block_count", Value::U32(2)),
        ("llama.rope.dimension_count", Value::U32(8)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.context_length", Value::U32(512)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.into_iter().map(Value::String).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![])),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
    ];
    let gguf_path = dir.path().join("tiny.gguf");
    let mut f = std::fs::File::create(&gguf_path).unwrap();
    let md_refs: Vec<(&str, &Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let t_refs: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md_refs, &t_refs).unwrap();
    drop(f);

    let x = ids(&[&SEQ]);
    let want = m.forward_logits(&x, Mode::Infer).unwrap();
    for src in [
        ModelSource::HfDir(hf.clone()),
        ModelSource::Gguf(gguf_path.clone()),
    ] {
        let loaded = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
        assert_eq!(loaded.cfg.vocab_size, 64);
        assert_eq!(loaded.tokenizer.get_vocab_size(true), 64);
        let got = loaded
            .build(&Device::Cpu)
            .unwrap()
            .forward_logits(&x, Mode::Infer)
            .unwrap();
        assert!(max_diff(&want, &got) < 1e-6, "{src:?}");
    }
    assert_eq!(
        ModelSource::parse(gguf_path.to_str().unwrap()).unwrap(),
        ModelSource::Gguf(gguf_path)
    );
    assert_eq!(
        ModelSource::parse(hf.to_str().unwrap()).unwrap(),
        ModelSource::HfDir(hf)
    );
    assert_eq!(
        ModelSource::parse("org/name").unwrap(),
        ModelSource::Hub("org/name".into())
    );
    assert!(ModelSource::parse("/no/such/file.gguf").is_err());
}

#[test]
fn lora_zero_init_is_identity_and_switchable() {
    let (cfg, _, mut m) = tiny(7);
    let _ = cfg;
    let x = ids(&[&SEQ]);
    let base = m.forward_logits(&x, Mode::Infer).unwrap();
    let lvm = VarMap::new();
    let lcfg = llmbs::llm::LoraConfig::default();
    m.attach_lora(
        &lcfg,
        VarBuilder::from_varmap(&lvm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    assert_eq!(lvm.all_vars().len(), 2 * 7 * 2);
    let with = m.forward_logits(&x, Mode::Infer).unwrap();
    assert!(max_diff(&base, &with) < 1e-6);
    // Non-zero B: on differs from base, off equals base.
    for (name, var) in lvm.data().lock().unwrap().iter() {
        if name.contains("lora_B") {
            let ones = Tensor::ones(var.shape(), DType::F32, &Device::Cpu).unwrap();
            var.set(&(ones * 0.1).unwrap()).unwrap();
        }
    }
    let on = m.forward_logits(&x, Mode::Infer).unwrap();
    assert!(max_diff(&base, &on) > 1e-3);
    m.set_adapter_enabled(false);
    let off = m.forward_logits(&x, Mode::Infer).unwrap();
    assert!(max_diff(&base, &off) < 1e-6);
}

// ---- The real default model (scripts/fetch-model.sh puts it in the cache; CI runs it first). ----

fn real_model_path() -> std::path::PathBuf {
    let p = llmbs::llm::load::default_model_path();
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-model.sh",
        p.display()
    );
    p
}

#[test]
fn smollm2_tokenizer_matches_transformers() {
    let (_, _, vocab) = gguf::load_gguf(&real_model_path(), &Device::Cpu, DType::F32).unwrap();
    let tok = tokenizer::from_gguf_vocab(vocab, "smollm2").unwrap();
    let cases: [(&str, &[u32]); 4] = [
        ("Hello world", &[19556, 905]),
        (
            "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce",
            &[
                7627, 57, 442, 636, 31648, 17772, 28, 3106, 763, 284, 1541, 20311, 28, 216, 32, 30,
                37, 29, 29422, 311, 492, 419, 319,
            ],
        ),
        (
            "Toys & Games 12345",
            &[2068, 672, 1456, 13561, 216, 33, 34, 35, 36, 37],
        ),
        ("<|im_start|>user\nhi<|im_end|>", &[1, 4093, 198, 6004, 2]),
    ];
    for (text, want) in cases {
        let got = tokenizer::encode(&tok, text).unwrap();
        assert_eq!(got, want, "{text:?}");
        // Round trip (special tokens kept when decoding).
        assert_eq!(tok.decode(&got, false).unwrap(), text);
    }
    // Digits are single tokens each.
    let d = tokenizer::encode(&tok, "9876543210").unwrap();
    assert_eq!(d.len(), 10);
}

/// Parity with `candle_transformers::models::quantized_llama` on the same GGUF. That model
/// returns only the last position's logits, so it is stepped one token at a time; with
/// CANDLE_DEQUANTIZE_ALL its matmuls run on the same f32 weights as ours.
#[test]
fn smollm2_parity_with_quantized_llama() {
    std::env::set_var("CANDLE_DEQUANTIZE_ALL", "1");
    let path = real_model_path();
    let dev = Device::Cpu;
    let loaded = Loaded::load(&ModelSource::Gguf(path.clone()), &dev, DType::F32).unwrap();
    let ours = loaded.build(&dev).unwrap();
    let mut f = std::fs::File::open(&path).unwrap();
    let ct = candle_core::quantized::gguf_file::Content::read(&mut f).unwrap();
    let mut reference =
        candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct, &mut f, &dev)
            .unwrap();
    for prompt in [
        "<|im_start|>user\nRecommend a nail polish.<|im_end|>\n<|im_start|>assistant\n",
        "OPI Nail Lacquer, Simmer and Shimmer, 0.5-Fluid Ounce. Categories: Beauty,Makeup,Nails",
    ] {
        let toks = tokenizer::encode(&loaded.tokenizer, prompt).unwrap();
        let x = Tensor::new(toks.as_slice(), &dev)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let mine = ours.forward_logits(&x, Mode::Infer).unwrap().i(0).unwrap();
        reference.clear_kv_cache();
        for (pos, &t) in toks.iter().enumerate() {
            let xi = Tensor::new(&[t], &dev).unwrap().unsqueeze(0).unwrap();
            let r = reference.forward(&xi, pos).unwrap().i(0).unwrap();
            let m = mine.i(pos).unwrap();
            let top = |t: &Tensor| t.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap();
            assert_eq!(top(&m), top(&r), "{prompt:?} position {pos}");
            let diff = max_diff(&m, &r);
            let scale: f32 = r.abs().unwrap().max(0).unwrap().to_scalar().unwrap();
            assert!(
                diff < 1e-3 * scale.max(1.0),
                "{prompt:?} position {pos}: max |diff| {diff}"
            );
        }
    }
}
