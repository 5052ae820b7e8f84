//! Scaling the trainer without changing what it computes: activation checkpointing gives the
//! gradients of the plain backward, and data-parallel ranks (threads with the in-process
//! communicator) end with the parameters one rank has, for full tuning with GCT and for a
//! LoRA adapter with dropout.

mod common;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use llmbs::llm::{init::random_model, Llama, LlamaConfig, LoraConfig};
use llmbs::tasks::build::Encoded;
use llmbs::train::batch::MicroBatch;
use llmbs::train::loss::Gct;
use llmbs::train::micro::{checkpointed_grads, plain_grads, GradAcc, Norms};
use llmbs::train::mixed::MixedPrecision;
use llmbs::train::optim::{AdamW, AdamWConfig, Params};
use llmbs::train::setup::{named, params, seed_new_modules, varmap_vars};
use llmbs::train::step::{StepConfig, Trainer};
use rand::SeedableRng;

const VOCAB: usize = 48;
const N_ITEMS: usize = 6;

/// Ten SRT samples with histories of 1-4 items over a 6-item catalogue (so micro-batches pad).
fn samples(gct: bool) -> Vec<Encoded> {
    (0..10)
        .map(|i| {
            let hist: Vec<usize> = (0..(i % 4 + 1)).map(|k| (i + k) % N_ITEMS).collect();
            common::toy_srt(&hist, (i + 1) % N_ITEMS, gct)
        })
        .collect()
}

fn step_cfg(checkpoint: bool) -> StepConfig {
    StepConfig {
        warmup: 1,
        seed: 7,
        checkpoint_activations: checkpoint,
        ..common::toy_step(1e-3, 5, 2)
    }
}

fn gct_head(vm: &VarMap) -> Gct {
    let dev = Device::Cpu;
    let table = |d: usize| {
        let v: Vec<f32> = (0..N_ITEMS * d)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 11.0)
            .collect();
        Tensor::from_vec(v, (N_ITEMS, d), &dev).unwrap()
    };
    let g = Gct::new(
        32,
        table(8),
        table(4),
        0.5,
        3,
        VarBuilder::from_varmap(vm, DType::F32, &dev),
    )
    .unwrap();
    seed_new_modules(vm, 9).unwrap();
    g
}

fn adamw(p: &Params) -> AdamW {
    let cfg = AdamWConfig::default();
    AdamW::new(cfg, p).unwrap()
}

/// What a test trains: every weight plus the GCT projectors (`lora` None), or a LoRA adapter
/// with dropout `p` over a frozen base.
struct Setup {
    trainer: Trainer,
}

fn setup(lora: Option<f32>, checkpoint: bool, recipe: bool) -> Setup {
    let dev = Device::Cpu;
    let cfg = LlamaConfig::tiny(VOCAB);
    let (model_vm, mut model) = random_model(&cfg, 1, DType::F32, &dev).unwrap();
    let (p, gct, lora_part) = match lora {
        None => {
            let gct_vm = VarMap::new();
            let gct = gct_head(&gct_vm);
            let p = params(vec![
                varmap_vars(&model_vm, ""),
                varmap_vars(&gct_vm, "gct."),
            ]);
            (p, Some(gct), None)
        }
        Some(dropout) => {
            let lc = LoraConfig {
                lora_dropout: dropout,
                ..Default::default()
            };
            let vm = VarMap::new();
            model
                .attach_lora(&lc, VarBuilder::from_varmap(&vm, DType::F32, &dev))
                .unwrap();
            seed_new_modules(&vm, 2).unwrap();
            // B starts at zero; make it nonzero so A's gradients are too.
            for (_, v) in varmap_vars(&vm, "") {
                let t = (v.as_tensor().ones_like().unwrap() * 0.01).unwrap();
                v.set(&(v.as_tensor() + t).unwrap()).unwrap();
            }
            let vars = varmap_vars(&vm, "");
            (
                params(vec![vars.clone()]),
                None,
                Some((lc, named(&vars, ""))),
            )
        }
    };
    let trainable: HashMap<String, Tensor> = match lora {
        None => named(&varmap_vars(&model_vm, ""), ""),
        Some(_) => HashMap::new(),
    };
    let mixed =
        recipe.then(|| MixedPrecision::new(DType::F32, &model, &trainable, lora_part).unwrap());
    let opt = adamw(&p);
    Setup {
        trainer: Trainer {
            model,
            params: p,
            gct,
            opt,
            cfg: step_cfg(checkpoint),
            step: 0,
            mixed,
            dp: None,
            teacher: None,
        },
    }
}

/// The largest absolute difference between two gradient lists (both present or both absent).
fn grads_diff(a: &[Option<Tensor>], b: &[Option<Tensor>]) -> (f32, f32) {
    let (mut diff, mut scale) = (0f32, 0f32);
    for (x, y) in a.iter().zip(b) {
        match (x, y) {
            (Some(x), Some(y)) => {
                diff = diff.max(common::max_diff(x, y));
                scale = scale.max(common::max_diff(x, &x.zeros_like().unwrap()));
            }
            (None, None) => {}
            _ => panic!("a gradient present in one backward only"),
        }
    }
    (diff, scale)
}

/// One micro-batch's gradients both ways, from the same seeds.
fn both_backwards(s: &mut Setup, gct: bool) -> (f32, f32) {
    let t = &mut s.trainer;
    let data = samples(gct);
    let refs: Vec<&Encoded> = data[..4].iter().collect();
    let mb = MicroBatch::new(&refs, &Device::Cpu).unwrap();
    let norms = Norms::of(&data);
    let c = t.cfg;
    let run = |model: &mut Llama, ckpt: bool| {
        let mut acc = GradAcc::new(t.params.vars.len());
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        model.seed_dropout(11);
        if ckpt {
            let mut noop = |_: usize, _: &mut GradAcc| Ok(());
            let (g, p) = (t.gct.as_ref(), &t.params);
            checkpointed_grads(
                model, g, &mb, norms, &c, &mut rng, 11, p, &mut acc, &mut noop,
            )
            .unwrap();
        } else {
            let (g, p) = (t.gct.as_ref(), &t.params);
            plain_grads(model, g, &mb, norms, &c, &mut rng, p, &mut acc).unwrap();
        }
        acc.grads
    };
    let plain = run(&mut t.model, false);
    let ckpt = run(&mut t.model, true);
    assert!(
        plain.iter().all(|g| g.is_some()),
        "a parameter got no gradient"
    );
    grads_diff(&plain, &ckpt)
}

#[test]
fn checkpointed_backward_gives_the_plain_gradients_full_tuning_with_gct() {
    let (diff, scale) = both_backwards(&mut setup(None, false, false), true);
    assert!(scale > 1e-3, "gradients too small to compare: {scale}");
    assert!(
        diff < 1e-6,
        "max |plain - checkpointed| = {diff} (max |g| {scale})"
    );
}

#[test]
fn checkpointed_backward_gives_the_plain_gradients_lora_with_dropout() {
    let (diff, scale) = both_backwards(&mut setup(Some(0.3), false, false), false);
    assert!(scale > 1e-3, "gradients too small to compare: {scale}");
    assert!(
        diff < 1e-6,
        "max |plain - checkpointed| = {diff} (max |g| {scale})"
    );
}

/// Parameters after `steps` steps on the same batch each step, and each step's loss and
/// gradient norm (before clipping: AdamW alone would hide a gradient scaled by a constant).
fn train(s: &mut Setup, steps: usize, gct: bool) -> (Vec<Tensor>, Vec<f64>) {
    let stop = AtomicBool::new(false);
    let data = samples(gct);
    let losses = (0..steps)
        .flat_map(|_| {
            let st = s.trainer.train_step(&data, &stop).unwrap().unwrap();
            [st.loss, st.grad_norm]
        })
        .collect();
    let p = s
        .trainer
        .params
        .vars
        .iter()
        .map(|v| v.as_tensor().copy().unwrap())
        .collect();
    (p, losses)
}

fn params_diff(a: &[Tensor], b: &[Tensor]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| common::max_diff(x, y))
        .fold(0f32, f32::max)
}

#[test]
fn checkpointed_training_follows_the_plain_run() {
    let (a, la) = train(&mut setup(None, false, false), 5, true);
    let (b, lb) = train(&mut setup(None, true, false), 5, true);
    let d = params_diff(&a, &b);
    assert!(
        d < 1e-6,
        "parameters differ by {d}; losses {la:?} vs {lb:?}"
    );
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-6 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
}

/// 2 ranks (threads, in-process all-reduce) splitting each effective batch end with one
/// rank's parameters: each rank's loss is divided by the whole batch's counts and every
/// micro-batch draws its GCT negatives and dropout masks from its own index.
fn two_ranks_match_one(lora: Option<f32>, checkpoint: bool, gct: bool) {
    let (one, l1) = train(&mut setup(lora, checkpoint, false), 5, gct);
    let mut dp = setup(lora, checkpoint, true);
    dp.trainer
        .enable_data_parallel(&[Device::Cpu, Device::Cpu], DType::F32)
        .unwrap();
    assert_eq!(dp.trainer.dp.as_ref().unwrap().world(), 2);
    let (two, l2) = train(&mut dp, 5, gct);
    let d = params_diff(&one, &two);
    assert!(d < 1e-6, "1 vs 2 ranks: parameters differ by {d}");
    for (a, b) in l1.iter().zip(&l2) {
        assert!(
            (a - b).abs() < 1e-6 * a.abs().max(1.0),
            "loss, grad norm: {l1:?} vs {l2:?}"
        );
    }
    // The parameters moved, so the comparison means something.
    let (start, _) = train(&mut setup(lora, checkpoint, false), 0, gct);
    assert!(params_diff(&start, &one) > 1e-4);
}

#[test]
fn two_ranks_match_one_rank_full_tuning_with_gct() {
    two_ranks_match_one(None, false, true);
}

#[test]
fn two_ranks_match_one_rank_lora_with_dropout_and_checkpointing() {
    two_ranks_match_one(Some(0.3), true, false);
}

#[test]
fn four_ranks_with_an_idle_rank_match_one_rank() {
    // 10 samples in micro-batches of 4: 3 micro-batches over 4 ranks, rank 3 has none.
    let mut one = setup(None, true, false);
    one.trainer.cfg.micro_batch = 4;
    let (a, la) = train(&mut one, 3, true);
    let mut dp = setup(None, true, true);
    dp.trainer.cfg.micro_batch = 4;
    let devs = [Device::Cpu, Device::Cpu, Device::Cpu, Device::Cpu];
    dp.trainer.enable_data_parallel(&devs, DType::F32).unwrap();
    let (b, lb) = train(&mut dp, 3, true);
    let d = params_diff(&a, &b);
    assert!(d < 1e-6, "1 vs 4 ranks: parameters differ by {d}");
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-6 * x.abs().max(1.0), "{la:?} vs {lb:?}");
    }
}

#[test]
fn data_parallelism_needs_the_model_recipe() {
    let mut s = setup(None, false, false);
    let err = s
        .trainer
        .enable_data_parallel(&[Device::Cpu, Device::Cpu], DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("recipe"), "{err}");
}

/// `llmbs ARGS`, which must succeed; its stderr.
fn llmbs(args: &[&str]) -> String {
    let (ok, out, err) = common::llmbs(args);
    assert!(ok, "llmbs {args:?} failed:\n{out}\n{err}");
    err
}

/// The training losses of `run`'s initial stage, step by step.
fn logged_losses(run: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("train/initial/log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["loss"].as_f64())
        .collect()
}

/// The command line: `llmbs train --devices cpu,cpu --checkpoint-activations` on a synthetic
/// model logs the losses `--device cpu` logs, and its report gives the peak memory.
#[test]
fn the_train_command_with_two_cpu_ranks_logs_the_one_rank_losses() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("beauty-slice");
    common::beauty_slice(&data, 30);
    let run = tmp.path().join("run");
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let (data_s, run_s) = (s(&data), s(&run));
    // Index, Z^s and Z^b (and a first training) from the tiny pipeline.
    let pipeline = [
        "pipeline",
        "--config",
        "tiny",
        "--data",
        &data_s,
        "--model",
        "synthetic:tiny",
        "--run",
        &run_s,
        "--device",
        "cpu",
    ];
    llmbs(&pipeline);
    let train = |extra: &[&str]| -> (Vec<f64>, String) {
        let mut args = vec![
            "train",
            "--stage",
            "initial",
            "--run",
            &run_s,
            "--data",
            &data_s,
            "--model",
            "synthetic:tiny",
            "--overwrite",
            "--steps",
            "3",
            "--batch-size",
            "8",
            "--micro-batch",
            "2",
            "--lr",
            "1e-3",
            "--warmup-steps",
            "1",
            "--eval-every",
            "3",
            "--valid-users",
            "0",
            "--max-history",
            "5",
        ];
        args.extend_from_slice(extra);
        let err = llmbs(&args);
        (logged_losses(&run), err)
    };
    let (one, _) = train(&["--device", "cpu"]);
    let (two, err) = train(&["--devices", "cpu,cpu", "--checkpoint-activations"]);
    assert!(err.contains("data parallel: 2 ranks"), "{err}");
    assert_eq!(one.len(), 3);
    for (a, b) in one.iter().zip(&two) {
        assert!(
            (a - b).abs() < 1e-5 * a.abs().max(1.0),
            "{one:?} vs {two:?}"
        );
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("train/initial/report.json")).unwrap(),
    )
    .unwrap();
    assert!(report["peak_memory"]["host_peak_bytes"].as_u64().unwrap() > 0);
}
