//! The fused CPU training path (llm::ops, gradient buffers, in-place AdamW) against the
//! composed candle ops it replaces, on a tiny random model: the same hidden states and
//! gradients, and the same 20-step loss curves of the real trainer (full fine-tuning with GCT,
//! and a LoRA adapter).

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use llmbs::llm::kernels::with_fused;
use llmbs::llm::ops::GradBuffers;
use llmbs::llm::{init::random_model, LlamaConfig, Mode};
use llmbs::tasks::build::Encoded;
use llmbs::train::loss::{response_ce, response_ce_sum, CeMode, Gct};
use llmbs::train::optim::{AdamW, AdamWConfig, Groups, NewGroup, Params};
use llmbs::train::setup::{params, seed_new_modules, varmap_vars};
use llmbs::train::step::{StepConfig, Trainer};

const VOCAB: usize = 40;

/// max |a - b| / max |b|; infinite where either side holds a NaN or an infinity (`f32::max`
/// drops NaN, so an all-NaN output would otherwise compare as equal to anything).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len(), "the compared outputs differ in length");
    if a.iter().chain(&b).any(|x| !x.is_finite()) {
        return f32::INFINITY;
    }
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-30);
    let diff = a
        .iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    diff / scale
}

#[test]
fn rel_rejects_an_all_nan_output() {
    let b = Tensor::new(&[1f32, -2.0, 3.0], &candle_core::Device::Cpu).unwrap();
    let nan = Tensor::new(&[f32::NAN; 3], &candle_core::Device::Cpu).unwrap();
    assert!(rel(&nan, &b).is_infinite() && rel(&b, &nan).is_infinite());
    assert_eq!(rel(&b, &b), 0.0);
}

fn samples() -> Vec<Encoded> {
    common::toy_padded(true)
}

fn adamw(p: &Params) -> AdamW {
    let cfg = AdamWConfig::default();
    AdamW::new(cfg, p).unwrap()
}

fn step_cfg(total: usize) -> StepConfig {
    common::toy_step(1e-2, total, 4)
}

/// Full fine-tuning of a tiny model with the GCT head.
fn full_trainer() -> Trainer {
    let dev = Device::Cpu;
    let (model_vm, model) = random_model(&LlamaConfig::tiny(VOCAB), 3, DType::F32, &dev).unwrap();
    let gct_vm = VarMap::new();
    let table = |d: usize| {
        let v: Vec<f32> = (0..4 * d)
            .map(|i| ((i * 7919 % 23) as f32 - 11.0) / 11.0)
            .collect();
        Tensor::from_vec(v, (4, d), &dev).unwrap()
    };
    let vb = VarBuilder::from_varmap(&gct_vm, DType::F32, &dev);
    let gct = Gct::new(32, table(8), table(4), 0.5, 3, vb).unwrap();
    seed_new_modules(&gct_vm, 9).unwrap();
    let p = params(vec![
        varmap_vars(&model_vm, ""),
        varmap_vars(&gct_vm, "gct."),
    ]);
    Trainer {
        model,
        opt: adamw(&p),
        params: p,
        gct: Some(gct),
        cfg: step_cfg(20),
        step: 0,
        mixed: None,
        dp: None,
        teacher: None,
    }
}

/// A frozen tiny base with a fresh LoRA adapter (with dropout) as the only trainable part.
fn lora_trainer() -> Trainer {
    let dev = Device::Cpu;
    let (model, lora_vm) = common::toy_lora_model(VOCAB, 0.1);
    // A non-zero B so the adapter contributes from the first step.
    for (name, var) in varmap_vars(&lora_vm, "") {
        if name.contains("lora_B") {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n).map(|i| ((i % 7) as f32 - 3.0) / 30.0).collect();
            var.set(&Tensor::from_vec(v, var.shape(), &dev).unwrap())
                .unwrap();
        }
    }
    let p = params(vec![varmap_vars(&lora_vm, "")]);
    Trainer {
        model,
        opt: adamw(&p),
        params: p,
        gct: None,
        cfg: step_cfg(20),
        step: 0,
        mixed: None,
        dp: None,
        teacher: None,
    }
}

fn curve(fused: bool, make: fn() -> Trainer) -> Vec<(f64, f64)> {
    with_fused(fused, || {
        let mut t = make();
        let stop = AtomicBool::new(false);
        let s = samples();
        (0..20)
            .map(|_| {
                let st = t.train_step(&s, &stop).unwrap().unwrap();
                (st.loss, st.grad_norm)
            })
            .collect()
    })
}

#[test]
fn fused_and_composed_training_follow_the_same_loss_curve() {
    for (name, make) in [
        ("full + GCT", full_trainer as fn() -> Trainer),
        ("LoRA", lora_trainer as fn() -> Trainer),
    ] {
        let (f, c) = (curve(true, make), curve(false, make));
        assert!(f[19].0 < f[0].0, "{name}: the loss did not fall: {f:?}");
        assert_eq!(f.len(), c.len(), "{name}: curve lengths");
        assert_eq!(f.len(), c.len(), "curve lengths");
        for (i, ((lf, nf), (lc, nc))) in f.iter().zip(&c).enumerate() {
            assert!(
                (lf - lc).abs() <= 1e-4 * lc.abs().max(1.0),
                "{name}: step {i}: loss fused {lf} composed {lc}"
            );
            assert!(
                (nf - nc).abs() <= 1e-3 * nc.abs().max(1.0),
                "{name}: step {i}: grad norm fused {nf} composed {nc}"
            );
        }
    }
}

#[test]
fn fused_model_gives_the_composed_hidden_states_and_gradients() {
    let dev = Device::Cpu;
    let (vm, model) = random_model(&LlamaConfig::tiny(VOCAB), 4, DType::F32, &dev).unwrap();
    let vars = varmap_vars(&vm, "");
    let ids = Tensor::new(&[[1u32, 5, 9, 2, 7], [3, 3, 8, 0, 0]], &dev).unwrap();
    let at = [(0usize, 1usize), (0, 3), (1, 0), (1, 2)];
    let targets = [9u32, 7, 3, 8];
    let run = |fused: bool| {
        with_fused(fused, || {
            let all: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
            let bufs = Arc::new(GradBuffers::new(&all).unwrap());
            let active = bufs.activate();
            let h = model
                .forward_hidden(&ids, None, None, None, Mode::Train)
                .unwrap();
            let loss = response_ce_sum(&model, &h, &at, &targets).unwrap();
            let g = loss.backward().unwrap();
            drop(active);
            let mut grads: Vec<Option<Tensor>> =
                all.iter().map(|v| g.get(v.as_tensor()).cloned()).collect();
            bufs.merge(&mut grads).unwrap();
            (h, loss, grads)
        })
    };
    let (hf, lf, gf) = run(true);
    let (hc, lc, gc) = run(false);
    assert!(rel(&hf, &hc) < 1e-5, "hidden states differ");
    assert!(rel(&lf, &lc) < 1e-5, "losses differ");
    assert_eq!((gf.len(), gc.len()), (vars.len(), vars.len()));
    for ((name, _), (f, c)) in vars.iter().zip(gf.iter().zip(&gc)) {
        let (f, c) = (f.as_ref().unwrap(), c.as_ref().unwrap());
        let r = rel(f, c);
        assert!(r < 1e-5, "{name}: gradients differ by {r} (relative)");
    }
}

/// The item-vocabulary loss (targets 20..40 scored over those rows only, the others over the
/// vocabulary) with distillation targets on some rows: fused and composed give the same
/// (mixed) loss, the same logged one-hot cross-entropy and the same gradients.
#[test]
fn item_vocabulary_loss_and_soft_targets_fused_equal_composed() {
    let dev = Device::Cpu;
    let (vm, model) = random_model(&LlamaConfig::tiny(VOCAB), 6, DType::F32, &dev).unwrap();
    let vars = varmap_vars(&vm, "");
    let ids = Tensor::new(&[[1u32, 25, 9, 22, 7], [3, 31, 8, 36, 0]], &dev).unwrap();
    let at = [(0usize, 0usize), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)];
    let targets = [25u32, 9, 22, 31, 8, 36];
    let soft: Vec<Vec<(u32, f32)>> = vec![
        vec![(25, 0.5), (27, 0.25), (39, 0.25)],
        vec![],
        vec![(22, 1.0)],
        vec![(20, 0.1), (31, 0.9)],
        vec![],
        vec![],
    ];
    for mode in [
        CeMode {
            id_rows: Some((20, 40)),
            soft: None,
        },
        CeMode {
            id_rows: Some((20, 40)),
            soft: Some((&soft, 0.4)),
        },
        CeMode {
            id_rows: None,
            soft: Some((&soft, 0.7)),
        },
    ] {
        let run = |fused: bool| {
            with_fused(fused, || {
                let all: Vec<_> = vars.iter().map(|(_, v)| v.clone()).collect();
                let bufs = Arc::new(GradBuffers::new(&all).unwrap());
                let active = bufs.activate();
                let h = model
                    .forward_hidden(&ids, None, None, None, Mode::Train)
                    .unwrap();
                let ce = response_ce(&model, &h, &at, &targets, &mode).unwrap();
                let g = ce.loss.backward().unwrap();
                drop(active);
                let mut grads: Vec<Option<Tensor>> =
                    all.iter().map(|v| g.get(v.as_tensor()).cloned()).collect();
                bufs.merge(&mut grads).unwrap();
                (ce.loss, ce.hard, grads)
            })
        };
        let ((lf, hf, gf), (lc, hc, gc)) = (run(true), run(false));
        assert!(rel(&lf, &lc) < 1e-5, "{mode:?}: losses differ");
        assert!(
            (hf - hc).abs() < 1e-4 * hc.abs(),
            "{mode:?}: hard CE {hf} vs {hc}"
        );
        assert_eq!((gf.len(), gc.len()), (vars.len(), vars.len()));
        for ((name, _), (f, c)) in vars.iter().zip(gf.iter().zip(&gc)) {
            let (f, c) = (f.as_ref().unwrap(), c.as_ref().unwrap());
            let r = rel(f, c);
            assert!(
                r < 1e-5,
                "{mode:?}: {name}: gradients differ by {r} (relative)"
            );
        }
    }
}

/// The recipe's levers in the real trainer: the item-vocabulary loss over tokens 10..25 and
/// parameter groups (embedding rows from 20 on and the projectors at 3x the rate, no decay)
/// follow the same 20-step curve fused and composed, and the loss falls.
#[test]
fn item_loss_and_parameter_groups_follow_the_same_curve_fused_and_composed() {
    fn make() -> Trainer {
        let mut t = full_trainer();
        t.cfg.id_rows = Some((10, 25));
        let from = t
            .params
            .names
            .iter()
            .map(|n| match n.as_str() {
                "model.embed_tokens.weight" => Some(20 * 32),
                _ if n.starts_with("gct.") => Some(0),
                _ => None,
            })
            .collect();
        let new = NewGroup {
            lr_scale: 3.0,
            weight_decay: 0.0,
        };
        t.opt.groups = Some(Groups { new, from });
        t
    }
    let (f, c) = (curve(true, make), curve(false, make));
    assert!(f[19].0 < f[0].0, "the loss did not fall: {f:?}");
    assert_eq!(f.len(), c.len(), "curve lengths");
    for (i, ((lf, nf), (lc, nc))) in f.iter().zip(&c).enumerate() {
        assert!(
            (lf - lc).abs() <= 1e-4 * lc.abs().max(1.0),
            "step {i}: loss {lf} vs {lc}"
        );
        assert!(
            (nf - nc).abs() <= 1e-3 * nc.abs().max(1.0),
            "step {i}: norm {nf} vs {nc}"
        );
    }
    // Without the groups and the item loss the curve is another one (the levers act).
    let plain = curve(true, full_trainer);
    assert!((plain[5].0 - f[5].0).abs() > 1e-6);
}
