//! The CPU recipe's levers (issue 22) end to end on the tiny pipeline: a layer-pruned backbone
//! is a K-layer Hugging Face checkpoint that reloads to the same logits, keeping every layer
//! changes nothing bit for bit, and the item-vocabulary loss, parameter groups and
//! distillation from the run's own SASRec teacher train and evaluate through every stage.

mod common;

use candle_core::{DType, Device, Tensor};
use llmbs::behavior::{BehaviorConfig, EncoderKind};
use llmbs::llm::{Loaded, Mode, ModelSource};
use llmbs::pipeline::run_pipeline;
use llmbs::train::distill::DistillConfig;
use llmbs::train::Stage;

fn logits(l: &Loaded) -> Tensor {
    let m = l.build(&Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 50, 9, 200, 7]], &Device::Cpu).unwrap();
    m.forward_logits(&ids, Mode::Infer).unwrap()
}

#[test]
fn a_pruned_backbone_saves_and_reloads_to_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    common::tiny_model(&dir);
    let src = ModelSource::HfDir(dir.clone());
    let full = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    // Keeping every layer keeps every weight and the config.
    let mut all = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    all.keep_layers(full.cfg.num_hidden_layers).unwrap();
    assert_eq!(all.cfg, full.cfg);
    let mut names: Vec<_> = all.weights.keys().collect();
    names.sort();
    let mut want: Vec<_> = full.weights.keys().collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(common::max_diff(&logits(&all), &logits(&full)), 0.0);
    // One layer: a one-layer HF directory that reloads to the same logits.
    let mut one = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    one.keep_layers(1).unwrap();
    assert!(one
        .weights
        .keys()
        .all(|k| !k.starts_with("model.layers.1.")));
    let out = tmp.path().join("one");
    llmbs::llm::save::save_hf_dir(&out, &one.cfg, &one.tokenizer, &one.weights).unwrap();
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1);
    let back = Loaded::load(&ModelSource::HfDir(out), &Device::Cpu, DType::F32).unwrap();
    assert_eq!(common::max_diff(&logits(&back), &logits(&one)), 0.0);
    assert!(common::max_diff(&logits(&one), &logits(&full)) > 0.0);
    for bad in [0, 3] {
        let mut l = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
        let e = l.keep_layers(bad).unwrap_err().to_string();
        assert!(e.contains(&format!("layers {bad}")), "{e}");
    }
}

fn trained(run: &llmbs::run::RunDir) -> Vec<serde_json::Value> {
    common::trained_log(run)
}

#[test]
fn keeping_every_layer_trains_bit_for_bit_as_before() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = common::tiny_pipeline(&tmp.path().join("a"));
    run_pipeline(&plain).unwrap();
    let mut all = common::tiny_pipeline(&tmp.path().join("b"));
    all.config.train_initial.layers = Some(2);
    run_pipeline(&all).unwrap();
    assert_eq!(trained(&plain.run), trained(&all.run));
    let eval = |r: &llmbs::run::RunDir| {
        let f = std::fs::read_dir(r.eval_dir())
            .unwrap()
            .flatten()
            .find(|e| {
                e.file_name()
                    .to_string_lossy()
                    .ends_with(".predictions.jsonl")
            })
            .unwrap()
            .path();
        std::fs::read_to_string(f).unwrap()
    };
    assert_eq!(eval(&plain.run), eval(&all.run));
}

#[test]
fn the_recipe_trains_a_pruned_model_with_every_lever_and_evaluates_it() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = common::tiny_pipeline(tmp.path());
    let t = &mut job.config.train_initial;
    t.layers = Some(1);
    t.item_loss = true;
    t.srt_dense = true;
    t.lr_new = Some(3e-3);
    t.weight_decay_new = Some(0.0);
    t.distill = Some(DistillConfig {
        weight: 0.5,
        ..Default::default()
    });
    job.config.teacher = Some(BehaviorConfig {
        epochs: 1,
        dim: 16,
        ..BehaviorConfig::new(EncoderKind::Sasrec)
    });
    job.config.dtype = "auto".into();
    job.config.train_anneal.as_mut().unwrap().item_loss = true;
    run_pipeline(&job).unwrap();
    let run = &job.run;
    let best = run.best_dir(Stage::Initial);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(best.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["num_hidden_layers"], 1);
    assert!(run
        .behavior_report_dir("sasrec")
        .join("model.safetensors")
        .is_file());
    let rec = run.record(Stage::Initial).unwrap().unwrap();
    let compute = rec.compute.unwrap();
    assert_eq!(compute.asked, "auto");
    assert!(compute.f32_gflops.is_some_and(|g| g > 0.0));
    // The trained loss terms are logged apart: the mixed target's CE differs from the one-hot.
    let steps: Vec<serde_json::Value> = trained(run)
        .into_iter()
        .filter(|v| v.get("lr").is_some())
        .collect();
    assert!(steps
        .iter()
        .all(|s| s["loss"].as_f64().unwrap().is_finite()));
    let report = std::fs::read_dir(run.eval_dir())
        .unwrap()
        .flatten()
        .find(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with("test-") && n.ends_with(".json")
        })
        .unwrap()
        .path();
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap();
    assert!(
        r["scoring"].as_str().unwrap().contains("item-ID tokens"),
        "{}",
        r["scoring"]
    );
    assert!(r["resume_settings"]["normalize"] == "ids");
}

#[test]
fn a_pipeline_prompt_file_trains_and_is_recorded_and_fingerprinted() {
    let tmp = tempfile::tempdir().unwrap();
    let mut job = common::tiny_pipeline(tmp.path());
    job.to = llmbs::pipeline::STAGES
        .iter()
        .position(|s| *s == "train_initial");
    let compact =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/prompts-compact.json");
    job.config.prompts = Some(compact.display().to_string());
    run_pipeline(&job).unwrap();
    let rec = job.run.record(Stage::Initial).unwrap().unwrap();
    let want = llmbs::tasks::Prompts::load(&compact).unwrap();
    assert_eq!(rec.prompts, want);
    assert!(rec.prompts.srt_prompt(0, &[]).ends_with("Answer: "));
    // Other prompt text is another training stage: the pipeline retrains it.
    let other = tmp.path().join("other.json");
    let mut p = want.clone();
    p.wrapper = "{instruction}\nReply: ".into();
    std::fs::write(&other, serde_json::to_string(&p).unwrap()).unwrap();
    job.config.prompts = Some(other.display().to_string());
    run_pipeline(&job).unwrap();
    let rec = job.run.record(Stage::Initial).unwrap().unwrap();
    assert_eq!(rec.prompts.wrapper, "{instruction}\nReply: ");
}
