//! Helpers shared by the integration tests: tensor comparison, a slice of the real Beauty, a
//! tiny random model with the real SmolLM2 tokenizer, the binary, and the tiny pipeline.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use llmbs::llm::{gguf, init::random_model, tokenizer, LlamaConfig};
use llmbs::pipeline::{load_config, PipelineJob};
use llmbs::run::RunDir;

pub const BEAUTY: &str = "../shared/data/beauty";

/// The first `users` users of Beauty and every item they touch, in the LC-Rec layout.
pub fn beauty_slice(dir: &Path, users: usize) {
    let inter: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(Path::new(BEAUTY).join("Beauty.inter.json")).unwrap(),
    )
    .unwrap();
    let items: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(Path::new(BEAUTY).join("Beauty.item.json")).unwrap(),
    )
    .unwrap();
    let kept: serde_json::Map<String, serde_json::Value> = inter.into_iter().take(users).collect();
    let mut used = std::collections::BTreeSet::new();
    for seq in kept.values() {
        for i in seq.as_array().unwrap() {
            used.insert(i.to_string().trim_matches('"').to_string());
        }
    }
    let kept_items: serde_json::Map<String, serde_json::Value> = items
        .into_iter()
        .filter(|(k, _)| used.contains(k))
        .collect();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("Beauty.inter.json"),
        serde_json::to_string(&kept).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("Beauty.item.json"),
        serde_json::to_string(&kept_items).unwrap(),
    )
    .unwrap();
}

/// A 2-layer, hidden-32 random model with the real SmolLM2 tokenizer, as a HF directory.
pub fn tiny_model(dir: &Path) {
    let (_, _, vocab) = gguf::load_gguf(
        &llmbs::llm::load::default_model_path(),
        &Device::Cpu,
        DType::F32,
    )
    .expect("the default model (scripts/fetch-model.sh)");
    let tok = tokenizer::from_gguf_vocab(vocab, "smollm2").unwrap();
    let cfg = LlamaConfig::tiny(tok.get_vocab_size(true));
    let (_, model) = random_model(&cfg, 3, DType::F32, &Device::Cpu).unwrap();
    llmbs::llm::save::save_hf_dir(dir, &cfg, &tok, &model.weights()).unwrap();
}

pub fn llmbs(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_llmbs"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The `tiny` pipeline over a 40-user slice of Beauty and a tiny model, made in `dir`, into
/// `dir/run`, quiet, on the CPU.
pub fn tiny_pipeline(dir: &Path) -> PipelineJob {
    let data = dir.join("data");
    let model = dir.join("model");
    beauty_slice(&data, 40);
    tiny_model(&model);
    let mut config = load_config("tiny").unwrap();
    config.data = data.display().to_string();
    config.model = model.display().to_string();
    PipelineJob {
        config,
        run: RunDir::new(dir.join("run")),
        reuse_from: Vec::new(),
        from: None,
        to: None,
        data_overridden: true,
        device: Device::Cpu,
        quiet: true,
        deadline: None,
    }
}

/// Beam search's list equals the teacher-forced ranking: the same items in the same order, each
/// score within 1e-3.
pub fn assert_same_ranking(got: &[(u32, f32)], exact: &[(u32, f32)]) {
    let gi: Vec<u32> = got.iter().map(|x| x.0).collect();
    let ei: Vec<u32> = exact.iter().map(|x| x.0).collect();
    assert_eq!(gi, ei);
    for (g, e) in got.iter().zip(exact) {
        assert!((g.1 - e.1).abs() < 1e-3, "{g:?} vs {e:?}");
    }
}

/// The largest absolute element difference of two tensors of the same shape.
pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Item i's ID in the toy trainer tests: tokens 30 + i and 40 + (i % 3): two levels, unique.
pub fn toy_item_id(i: usize) -> Vec<u32> {
    vec![30 + i as u32, 40 + (i % 3) as u32]
}

/// One toy SRT sample: prompt `[1, 2, ids of history.., 3]`, response the next item's ID, then
/// `[CON]` (47) when `gct`.
pub fn toy_srt(history: &[usize], next: usize, gct: bool) -> llmbs::tasks::build::Encoded {
    let mut input = vec![1u32, 2];
    for &h in history {
        input.extend(toy_item_id(h));
    }
    input.push(3);
    let prompt_len = input.len();
    input.extend(toy_item_id(next));
    if gct {
        input.push(47);
    }
    llmbs::tasks::build::Encoded {
        kind: llmbs::tasks::build::TaskKind::Srt,
        input,
        prompt_len,
        response_len: 2,
        gct_item: gct.then_some(next as u32),
        history_loss: Vec::new(),
        srt_items: Vec::new(),
    }
}

/// The toy trainer tests' step settings: 2 warm-up steps of `total`, clip 1, GCT lambdas 0.1.
pub fn toy_step(lr: f64, total: usize, micro_batch: usize) -> llmbs::train::step::StepConfig {
    llmbs::train::step::StepConfig {
        lr,
        warmup: 2,
        total,
        min_lr_ratio: 0.1,
        clip_norm: 1.0,
        lambda_s: 0.1,
        lambda_b: 0.1,
        micro_batch,
        seed: 5,
        checkpoint_activations: false,
        id_rows: None,
        distill_alpha: 0.0,
    }
}

/// Six toy samples of lengths 6-14 (so micro-batches pad); with `aux`, a GCT item each and
/// history-loss positions on every other one.
pub fn toy_padded(aux: bool) -> Vec<llmbs::tasks::build::Encoded> {
    (0..6)
        .map(|i| {
            let len = 6 + (i * 5) % 9;
            let input: Vec<u32> = (0..len)
                .map(|p| ((i * 7 + p * 3) % 30 + 1) as u32)
                .collect();
            llmbs::tasks::build::Encoded {
                kind: llmbs::tasks::build::TaskKind::Srt,
                prompt_len: len - 3,
                response_len: 2,
                gct_item: aux.then_some((i % 4) as u32),
                history_loss: if aux && i % 2 == 0 {
                    vec![1, 2]
                } else {
                    vec![]
                },
                srt_items: Vec::new(),
                input,
            }
        })
        .collect()
}

/// A tiny random base (seed 8) frozen as plain tensors, with a fresh LoRA adapter of dropout
/// `dropout` (seed 2) as its only variables: the model and the adapter's VarMap.
pub fn toy_lora_model(vocab: usize, dropout: f32) -> (llmbs::llm::Llama, candle_nn::VarMap) {
    use candle_nn::{VarBuilder, VarMap};
    use llmbs::train::setup::{seed_new_modules, varmap_vars};
    let dev = Device::Cpu;
    let cfg = LlamaConfig::tiny(vocab);
    let (vm, _) = random_model(&cfg, 8, DType::F32, &dev).unwrap();
    let base: std::collections::HashMap<String, Tensor> = varmap_vars(&vm, "")
        .into_iter()
        .map(|(n, v)| (n, v.as_tensor().copy().unwrap()))
        .collect();
    let vb = VarBuilder::from_tensors(base, DType::F32, &dev);
    let mut model = llmbs::llm::Llama::new(&cfg, vb).unwrap();
    let lora_vm = VarMap::new();
    let lc = llmbs::llm::LoraConfig {
        lora_dropout: dropout,
        ..Default::default()
    };
    model
        .attach_lora(&lc, VarBuilder::from_varmap(&lora_vm, DType::F32, &dev))
        .unwrap();
    seed_new_modules(&lora_vm, 2).unwrap();
    (model, lora_vm)
}

/// The numbers of a run's initial-stage training log that it computes (not its timings).
pub fn trained_log(run: &llmbs::run::RunDir) -> Vec<serde_json::Value> {
    let dir = run.train_dir(llmbs::train::Stage::Initial);
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    log.lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            for k in ["seconds", "host_peak_bytes", "device_peak_bytes"] {
                o.remove(k);
            }
            v
        })
        .collect()
}
