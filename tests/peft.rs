//! The switchable Annealing Adapter on disk (PEFT layout), merging, HF-directory export and
//! perplexity, on tiny random models. `scripts/peft_check.py` runs the two ignored tests to
//! cross-check against Python PEFT.

mod common;
use common::max_diff;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{VarBuilder, VarMap};
use llmbs::eval::perplexity;
use llmbs::llm::{peft, save, Llama, LlamaConfig, Loaded, LoraConfig, Mode, ModelSource};

const V: usize = 64;
const SEQ: [u32; 10] = [3, 17, 9, 42, 5, 61, 8, 8, 30, 2];

fn ids(rows: &[&[u32]]) -> Tensor {
    let flat: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_vec(flat, (rows.len(), rows[0].len()), &Device::Cpu).unwrap()
}

fn logits(m: &Llama) -> Tensor {
    m.forward_logits(&ids(&[&SEQ, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]), Mode::Infer)
        .unwrap()
}

fn lora_cfg() -> LoraConfig {
    LoraConfig {
        r: 4,
        lora_alpha: 8.0,
        lora_dropout: 0.05,
        ..LoraConfig::default()
    }
}

/// A tiny model and a fresh adapter in its own `VarMap` (B = 0, as a trainer starts).
fn with_adapter(cfg: &LlamaConfig, lcfg: &LoraConfig) -> (Llama, VarMap) {
    let (_, mut m) = llmbs::llm::init::random_model(cfg, 3, DType::F32, &Device::Cpu).unwrap();
    let lvm = VarMap::new();
    m.attach_lora(
        lcfg,
        VarBuilder::from_varmap(&lvm, DType::F32, &Device::Cpu),
    )
    .unwrap();
    (m, lvm)
}

/// The same model with every adapter tensor (B included) seeded at random.
fn trained(cfg: &LlamaConfig, lcfg: &LoraConfig) -> Llama {
    let (m, lvm) = with_adapter(cfg, lcfg);
    llmbs::llm::init::reseed(&lvm, 11).unwrap();
    m
}

fn base(cfg: &LlamaConfig) -> Llama {
    llmbs::llm::init::random_model(cfg, 3, DType::F32, &Device::Cpu)
        .unwrap()
        .1
}

#[test]
fn zero_adapter_is_identity_and_trained_one_switches() {
    let cfg = LlamaConfig::tiny(V);
    let want = logits(&base(&cfg));
    let (mut m, _lvm) = with_adapter(&cfg, &lora_cfg());
    assert_eq!(max_diff(&want, &logits(&m)), 0.0);
    m.set_adapter_enabled(false);
    assert_eq!(max_diff(&want, &logits(&m)), 0.0);

    let mut m = trained(&cfg, &lora_cfg());
    assert!(max_diff(&want, &logits(&m)) > 1e-2);
    m.set_adapter_enabled(false);
    assert_eq!(max_diff(&want, &logits(&m)), 0.0);
}

#[test]
fn save_load_round_trip_is_bitwise() {
    let cfg = LlamaConfig::tiny(V);
    let lcfg = lora_cfg();
    let m = trained(&cfg, &lcfg);
    let tensors = m.adapter_weights();
    assert_eq!(tensors.len(), cfg.num_hidden_layers * 7 * 2);
    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(dir.path(), &lcfg, "my/base", &tensors).unwrap();
    let (lcfg2, loaded) = peft::load_adapter(dir.path(), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(lcfg2, lcfg);
    assert_eq!(loaded.len(), tensors.len());
    for (k, t) in &tensors {
        let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = loaded[k].flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len(), "{k}");
        assert!(
            a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{k}"
        );
    }
    let mut m2 = base(&cfg);
    m2.attach_lora_from(&lcfg2, &loaded).unwrap();
    assert!(m2.has_adapter());
    assert_eq!(max_diff(&logits(&m), &logits(&m2)), 0.0);
}

#[test]
fn peft_names_and_config_fields_are_literal() {
    let cfg = LlamaConfig::tiny(V);
    let lcfg = LoraConfig {
        target_modules: vec!["q_proj".into(), "v_proj".into()],
        ..lora_cfg()
    };
    let m = trained(&cfg, &lcfg);
    let dir = tempfile::tempdir().unwrap();
    peft::save_adapter(
        dir.path(),
        &lcfg,
        "runs/x/checkpoints/initial",
        &m.adapter_weights(),
    )
    .unwrap();
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors"]);

    let bytes = std::fs::read(dir.path().join("adapter_model.safetensors")).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let fmt = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get("format").cloned());
    assert_eq!(fmt.as_deref(), Some("pt"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut keys: Vec<String> = st.names().into_iter().map(String::from).collect();
    keys.sort();
    let mut want = Vec::new();
    for i in 0..2 {
        for p in ["q_proj", "v_proj"] {
            for ab in ["A", "B"] {
                want.push(format!(
                    "base_model.model.model.layers.{i}.self_attn.{p}.lora_{ab}.weight"
                ));
            }
        }
    }
    want.sort();
    assert_eq!(keys, want);
    let a = st
        .tensor("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")
        .unwrap();
    assert_eq!(a.dtype(), safetensors::Dtype::F32);
    assert_eq!(a.shape(), [4, 32]);
    let b = st
        .tensor("base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight")
        .unwrap();
    assert_eq!(b.shape(), [16, 4]); // 2 KV heads x head_dim 8

    let text = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    let c: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expect = serde_json::json!({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
        "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "fan_in_fan_out": false, "inference_mode": true,
        "base_model_name_or_path": "runs/x/checkpoints/initial", "modules_to_save": null,
        "init_lora_weights": true, "use_rslora": false, "use_dora": false,
        "rank_pattern": {}, "alpha_pattern": {}, "layers_to_transform": null,
    });
    for (k, v) in expect.as_object().unwrap() {
        assert_eq!(&c[k], v, "{k}");
    }
    assert!(text.contains("\"lora_alpha\": 8,") && text.contains("\"lora_dropout\": 0.05,"));
}

#[test]
fn merge_matches_the_unmerged_adapter_and_exports_hf_weights() {
    for tie in [true, false] {
        let cfg = LlamaConfig {
            tie_word_embeddings: tie,
            ..LlamaConfig::tiny(V)
        };
        let mut m = trained(&cfg, &lora_cfg());
        let want = logits(&m);
        m.merge_adapter().unwrap();
        assert!(!m.has_adapter());
        assert!(m.adapter_weights().is_empty());
        let got = logits(&m);
        assert!(max_diff(&want, &got) < 1e-5, "tie {tie}");
        m.set_adapter_enabled(false); // nothing left to switch off
        assert_eq!(max_diff(&got, &logits(&m)), 0.0);

        let w = m.weights();
        assert_eq!(w.len(), 1 + 2 * 9 + 1 + usize::from(!tie));
        for k in [
            "model.embed_tokens.weight",
            "model.layers.1.self_attn.k_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.1.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight",
            "model.norm.weight",
        ] {
            assert!(w.contains_key(k), "{k}");
        }
        assert_eq!(w.contains_key("lm_head.weight"), !tie);
        let rebuilt =
            Llama::new(&cfg, VarBuilder::from_tensors(w, DType::F32, &Device::Cpu)).unwrap();
        assert_eq!(max_diff(&got, &logits(&rebuilt)), 0.0, "tie {tie}");
    }
}

/// A word-level tokenizer over `V` made-up tokens: HF directories need a tokenizer.json.
fn toy_tokenizer() -> tokenizers::Tokenizer {
    let vocab: HashMap<String, u32> = (0..V as u32).map(|i| (format!("w{i}"), i)).collect();
    let wl = tokenizers::models::wordlevel::WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("w0".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(wl);
    tok.with_pre_tokenizer(Some(
        tokenizers::pre_tokenizers::whitespace::WhitespaceSplit,
    ));
    tok
}

#[test]
fn hf_directory_round_trip_through_the_loader() {
    let cfg = LlamaConfig {
        tie_word_embeddings: false,
        rope_theta: 50_000.0,
        ..LlamaConfig::tiny(V)
    };
    let m = base(&cfg);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hf");
    save::save_hf_dir(&out, &cfg, &toy_tokenizer(), &m.weights()).unwrap();
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["rope_theta"], 50_000.0);
    assert!(
        c.get("head_dim").is_none(),
        "unset fields are left out, not null"
    );
    let src = ModelSource::parse(out.to_str().unwrap()).unwrap();
    let loaded = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(loaded.cfg, cfg);
    let enc = loaded.tokenizer.encode("w5 w7", false).unwrap();
    assert_eq!(enc.get_ids(), [5, 7]);
    let m2 = loaded.build(&Device::Cpu).unwrap();
    assert_eq!(max_diff(&logits(&m), &logits(&m2)), 0.0);
}

#[test]
fn an_adapter_stored_with_its_model_is_merged_on_load() {
    // An initial stage tuned with LoRA writes model.safetensors and the adapter side by side.
    let cfg = LlamaConfig::tiny(V);
    let lcfg = lora_cfg();
    let m = trained(&cfg, &lcfg);
    let dir = tempfile::tempdir().unwrap();
    save::save_hf_dir(dir.path(), &cfg, &toy_tokenizer(), &m.weights()).unwrap();
    peft::save_adapter(dir.path(), &lcfg, "x", &m.adapter_weights()).unwrap();
    let src = ModelSource::parse(dir.path().to_str().unwrap()).unwrap();
    let mut m2 = Loaded::load(&src, &Device::Cpu, DType::F32)
        .unwrap()
        .build(&Device::Cpu)
        .unwrap();
    assert!(llmbs::run::model::merge_bundled_adapter(&mut m2, &src).unwrap());
    assert!(!m2.has_adapter());
    assert!(max_diff(&logits(&m), &logits(&m2)) < 1e-5);
    let desc = llmbs::run::model::describe(&src, true, None);
    assert!(
        desc.ends_with("+ its adapter merged, adapter off"),
        "{desc}"
    );
}

/// Saves `tensors` (already PEFT-named) and a default config as an adapter directory.
fn write_raw_adapter(dir: &Path, tensors: &HashMap<String, Tensor>, lcfg: &LoraConfig) {
    candle_core::safetensors::save(tensors, dir.join("adapter_model.safetensors")).unwrap();
    let c = peft::adapter_config_json(lcfg, "x");
    std::fs::write(dir.join("adapter_config.json"), c.to_string()).unwrap();
}

#[test]
fn bad_adapters_error_naming_the_key() {
    let cfg = LlamaConfig::tiny(V);
    let lcfg = lora_cfg();
    let good: HashMap<String, Tensor> = trained(&cfg, &lcfg)
        .adapter_weights()
        .into_iter()
        .map(|(k, t)| (format!("base_model.model.{k}"), t))
        .collect();
    let err = |tensors: &HashMap<String, Tensor>| -> String {
        let dir = tempfile::tempdir().unwrap();
        write_raw_adapter(dir.path(), tensors, &lcfg);
        let res = peft::load_adapter(dir.path(), &Device::Cpu, DType::F32)
            .and_then(|(c, t)| Ok(base(&cfg).attach_lora_from(&c, &t)?));
        format!("{:#}", res.unwrap_err())
    };
    let missing = "base_model.model.model.layers.1.mlp.up_proj.lora_B.weight";
    let mut t = good.clone();
    t.remove(missing);
    let e = err(&t);
    assert!(
        e.contains("model.layers.1.mlp.up_proj.lora_B.weight") && e.contains("missing"),
        "{e}"
    );

    for bad in [
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight",
        "model.layers.0.self_attn.q_proj.lora_A.weight",
        "base_model.model.lm_head.weight",
    ] {
        let mut t = good.clone();
        t.insert(
            bad.into(),
            Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
        );
        let e = err(&t);
        assert!(
            e.contains(bad) && e.contains("adapter_model.safetensors"),
            "{e}"
        );
    }
    // A layer the model does not have.
    let mut t = good.clone();
    t.insert(
        "base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight".into(),
        Tensor::zeros((4, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    assert!(err(&t).contains("model.layers.7.self_attn.q_proj.lora_A.weight"));
    // Rank that disagrees with r.
    let mut t = good.clone();
    let k = "base_model.model.model.layers.0.mlp.gate_proj.lora_A.weight";
    t.insert(
        k.into(),
        Tensor::zeros((3, 32), DType::F32, &Device::Cpu).unwrap(),
    );
    let e = err(&t);
    assert!(e.contains(k) && e.contains("r = 4"), "{e}");

    // Config problems name the config file.
    let dir = tempfile::tempdir().unwrap();
    write_raw_adapter(dir.path(), &good, &lcfg);
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type": "PREFIX_TUNING", "r": 4}"#,
    )
    .unwrap();
    let e = format!(
        "{:#}",
        peft::load_adapter(dir.path(), &Device::Cpu, DType::F32).unwrap_err()
    );
    assert!(
        e.contains("adapter_config.json") && e.contains("peft_type"),
        "{e}"
    );
    // Saving refuses non-adapter tensors too (e.g. a VarMap that also holds base weights).
    let mut ours = trained(&cfg, &lcfg).adapter_weights();
    ours.insert(
        "model.norm.weight".into(),
        Tensor::ones(32, DType::F32, &Device::Cpu).unwrap(),
    );
    let e = format!(
        "{:#}",
        peft::save_adapter(dir.path(), &lcfg, "x", &ours).unwrap_err()
    );
    assert!(e.contains("model.norm.weight"), "{e}");
}

#[test]
fn perplexity_of_uniform_logits_is_the_vocabulary_size() {
    let cfg = LlamaConfig::tiny(V);
    let (vm, m) = llmbs::llm::init::random_model(&cfg, 5, DType::F32, &Device::Cpu).unwrap();
    // Tied head: a zero embedding gives zero logits at every position, i.e. a uniform softmax.
    for (name, var) in vm.data().lock().unwrap().iter() {
        if name == "model.embed_tokens.weight" {
            var.set(&var.zeros_like().unwrap()).unwrap();
        }
    }
    let texts = vec![vec![1, 5, 9], vec![2; 7], vec![4], vec![3, 3]];
    let r = perplexity(&m, &texts, 2).unwrap();
    assert_eq!((r.texts, r.tokens), (3, 2 + 6 + 1));
    assert!((r.ppl - V as f64).abs() < 1e-3, "{r:?}");
    assert!((r.nll - (V as f64).ln()).abs() < 1e-6);
}

#[test]
fn perplexity_matches_a_hand_computed_nll_at_any_batch() {
    let m = trained(&LlamaConfig::tiny(V), &lora_cfg());
    let texts: Vec<Vec<u32>> = vec![
        SEQ.to_vec(),
        vec![1, 40, 41],
        vec![7, 8, 9, 10, 11, 12],
        vec![63, 0],
    ];
    let mut sum = 0f64;
    let mut n = 0usize;
    for t in &texts {
        let lp = candle_nn::ops::log_softmax(
            &m.forward_logits(&ids(&[t]), Mode::Infer).unwrap(),
            D::Minus1,
        )
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
        for p in 0..t.len() - 1 {
            sum -= lp[p][t[p + 1] as usize] as f64;
            n += 1;
        }
    }
    let want = sum / n as f64;
    for batch in [1, 2, 4, 16] {
        let r = perplexity(&m, &texts, batch).unwrap();
        assert_eq!(r.tokens, n);
        assert!(
            (r.nll - want).abs() < 1e-5,
            "batch {batch}: {} vs {want}",
            r.nll
        );
        assert!((r.ppl - want.exp()).abs() < 1e-4);
    }
}

// ---- Fixtures for scripts/peft_check.py (run there, not in CI). ----

fn fixture_dir() -> std::path::PathBuf {
    std::env::var_os("LLMBS_PEFT_FIXTURE")
        .map(Into::into)
        .expect("set LLMBS_PEFT_FIXTURE to a directory")
}

fn fixture_cfg() -> LlamaConfig {
    // Untied head and a non-default theta, so a misread config shows up in the logits.
    LlamaConfig {
        tie_word_embeddings: false,
        rope_theta: 50_000.0,
        ..LlamaConfig::tiny(V)
    }
}

fn fixture_ids() -> Tensor {
    ids(&[&SEQ, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]])
}

/// Writes base/ (HF directory), adapter/ (our PEFT adapter) and ours.safetensors (logits with
/// the adapter off, on, and merged) under `$LLMBS_PEFT_FIXTURE`.
#[test]
#[ignore]
fn peft_fixture_write() {
    let out = fixture_dir();
    let cfg = fixture_cfg();
    let lcfg = LoraConfig {
        r: 4,
        lora_alpha: 16.0,
        lora_dropout: 0.0,
        target_modules: LoraConfig::default().target_modules,
    };
    let mut m = trained(&cfg, &lcfg);
    save::save_hf_dir(&out.join("base"), &cfg, &toy_tokenizer(), &m.weights()).unwrap();
    peft::save_adapter(&out.join("adapter"), &lcfg, "base", &m.adapter_weights()).unwrap();
    let x = fixture_ids();
    let on = m.forward_logits(&x, Mode::Infer).unwrap();
    m.set_adapter_enabled(false);
    let off = m.forward_logits(&x, Mode::Infer).unwrap();
    m.merge_adapter().unwrap();
    let merged = m.forward_logits(&x, Mode::Infer).unwrap();
    let map = HashMap::from([
        ("ids".to_string(), x),
        ("on".to_string(), on),
        ("off".to_string(), off),
        ("merged".to_string(), merged),
    ]);
    candle_core::safetensors::save(&map, out.join("ours.safetensors")).unwrap();
}

/// Reads py_adapter/ (written by PEFT's save_pretrained) onto base/ and writes our logits to
/// ours_py.safetensors.
#[test]
#[ignore]
fn peft_fixture_read() {
    let out = fixture_dir();
    let src = ModelSource::parse(out.join("base").to_str().unwrap()).unwrap();
    let mut m = Loaded::load(&src, &Device::Cpu, DType::F32)
        .unwrap()
        .build(&Device::Cpu)
        .unwrap();
    let (lcfg, t) = peft::load_adapter(&out.join("py_adapter"), &Device::Cpu, DType::F32).unwrap();
    m.attach_lora_from(&lcfg, &t).unwrap();
    let on = m.forward_logits(&fixture_ids(), Mode::Infer).unwrap();
    let map = HashMap::from([("on".to_string(), on)]);
    candle_core::safetensors::save(&map, out.join("ours_py.safetensors")).unwrap();
}
