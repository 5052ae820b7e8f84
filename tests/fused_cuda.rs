//! The CUDA fused ops (llm::ops::cuda) against the composed candle ops on the CPU: values and
//! gradients on random inputs, the multi-tensor AdamW against the CPU one-pass AdamW, and the
//! tiny model's 20-step loss curves (fused vs composed on the GPU, f32 vs bf16).
//!
//! They need a GPU, so they are ignored by default; on a CUDA machine:
//! `cargo test --release --features cuda --test fused_cuda -- --ignored`.
#![cfg(feature = "cuda")]

mod common;

use std::sync::atomic::AtomicBool;

use candle_core::{DType, Device, Tensor, Var, D};
use llmbs::llm::kernels::with_fused;
use llmbs::llm::{init::random_model, LlamaConfig};
use llmbs::tasks::build::Encoded;
use llmbs::train::optim::{AdamW, AdamWConfig, Params};
use llmbs::train::setup::{params, varmap_vars};
use llmbs::train::step::{StepConfig, Trainer};
use rand::{Rng, SeedableRng};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need a CUDA GPU (run them with --ignored there)")
}

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn rand(shape: &[usize], seed: u64, dev: &Device) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(rand_vec(n, seed), shape, dev).unwrap()
}

/// max |a - b| / max |b|, both brought to the CPU in f32; infinite where either side holds a
/// NaN or an infinity (`f32::max` drops NaN, so an all-NaN output would otherwise compare as
/// equal to anything).
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let v = |t: &Tensor| -> Vec<f32> {
        t.to_device(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let (a, b) = (v(a), v(b));
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

/// `f` on the GPU with the fused ops and on the CPU composed, on the same random inputs of
/// `shapes`: the values and every input's gradient (of `sum(out * w)`) agree to `tol`.
fn check(name: &str, shapes: &[&[usize]], tol: f32, f: impl Fn(&[Tensor]) -> Tensor) {
    let run = |dev: &Device, fused: bool| {
        with_fused(fused, || {
            let vars: Vec<Var> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Var::from_tensor(&rand(s, 10 + i as u64, dev)).unwrap())
                .collect();
            let ins: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
            let y = f(&ins);
            let w = rand(y.dims(), 99, dev);
            let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
            let grads: Vec<Tensor> = vars
                .iter()
                .map(|v| g.get(v.as_tensor()).unwrap().clone())
                .collect();
            (y, grads)
        })
    };
    let (yg, gg) = run(&gpu(), true);
    let (yc, gc) = run(&Device::Cpu, false);
    let r = rel(&yg, &yc);
    assert!(r < tol, "{name}: values differ by {r}");
    assert_eq!(gg.len(), gc.len(), "{name}: gradient counts");
    for (i, (a, b)) in gg.iter().zip(&gc).enumerate() {
        let r = rel(a, b);
        assert!(r < tol, "{name}: gradient {i} differs by {r}");
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rms_norm_matches_the_composed_norm() {
    for shape in [[2usize, 5, 64], [3, 7, 576]] {
        let d = shape[2];
        check("rms_norm", &[&shape, &[d]], 1e-5, |t| {
            llmbs::llm::ops::norm::rms_norm(&t[0], &t[1], 1e-5).unwrap()
        });
    }
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn silu_mul_matches_the_composed_gate() {
    check("silu_mul", &[&[4, 33, 97], &[4, 33, 97]], 1e-5, |t| {
        llmbs::llm::kernels::silu_mul(&t[0], &t[1]).unwrap()
    });
}

/// Rotate-half RoPE composed from candle ops, x [b, h, t, hd], tables [t, hd / 2].
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let cos = Tensor::cat(&[cos, cos], D::Minus1).unwrap();
    let sin = Tensor::cat(&[sin, sin], D::Minus1).unwrap();
    let half = x.dim(D::Minus1).unwrap() / 2;
    let x1 = x.narrow(D::Minus1, 0, half).unwrap();
    let x2 = x.narrow(D::Minus1, half, half).unwrap();
    let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn rope_matches_the_composed_rotation() {
    let (t, hd) = (9usize, 16usize);
    let ang: Vec<f32> = (0..t * hd / 2)
        .map(|i| (i / (hd / 2)) as f32 / 10f32.powf((i % (hd / 2)) as f32 / 8.0))
        .collect();
    let table = |f: fn(f32) -> f32, dev: &Device| {
        Tensor::from_vec(
            ang.iter().map(|&a| f(a)).collect::<Vec<_>>(),
            (t, hd / 2),
            dev,
        )
        .unwrap()
    };
    check("rope", &[&[2, 3, t, hd]], 1e-5, |x| {
        let dev = x[0].device();
        let (c, s) = (table(f32::cos, dev), table(f32::sin, dev));
        match llmbs::llm::ops::rope::rope(&x[0], &c, &s).unwrap() {
            Some(y) => y,
            None => rope_composed(&x[0], &c, &s),
        }
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn causal_softmax_matches_the_masked_softmax() {
    // [b=2, kv=1, n_rep * t = 2 * 5, kv_len = 5], row 1 right-padded after 3 tokens.
    let (t, kv_len) = (5usize, 5usize);
    let valid = [[1u8, 1, 1, 1, 1], [1, 1, 1, 0, 0]];
    check("causal_softmax", &[&[2, 1, 2 * t, kv_len]], 1e-5, |x| {
        let dev = x[0].device();
        let v = Tensor::new(&valid, dev).unwrap();
        if let Some(y) = llmbs::llm::kernels::causal_softmax(&x[0], 0.5, t, 0, &v).unwrap() {
            return y;
        }
        let mut mask = vec![0f32; 2 * 2 * t * kv_len];
        for b in 0..2 {
            for r in 0..2 * t {
                for j in 0..kv_len {
                    if j > r % t || valid[b][j] == 0 {
                        mask[(b * 2 * t + r) * kv_len + j] = f32::NEG_INFINITY;
                    }
                }
            }
        }
        let mask = Tensor::from_vec(mask, (2, 1, 2 * t, kv_len), dev).unwrap();
        candle_nn::ops::softmax(&(&x[0] * 0.5).unwrap().add(&mask).unwrap(), D::Minus1).unwrap()
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn cross_entropy_matches_log_softmax_gather() {
    let targets: Vec<u32> = (0..13).map(|i| (i * 37 % 1001) as u32).collect();
    check("ce", &[&[13, 1001]], 1e-5, |x| {
        llmbs::train::loss::nll_sum(&x[0], &targets).unwrap()
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn embedding_matches_index_select() {
    let ids = [[3u32, 1, 3, 9], [0, 3, 1, 1]];
    check("embedding", &[&[10, 6]], 1e-6, |w| {
        let dev = w[0].device();
        let ids = Tensor::new(&ids, dev).unwrap();
        llmbs::llm::ops::embed::embedding(&w[0], &ids, true).unwrap()
    });
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn multi_tensor_adamw_equals_the_cpu_one_pass_adamw() {
    let shapes: [&[usize]; 4] = [&[300, 7], &[5000], &[3], &[64, 129]];
    let names = ["a.weight", "b.norm.weight", "c.bias", "d.weight"];
    let run = |dev: &Device| {
        let vars: Vec<Var> = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Var::from_tensor(&rand(s, i as u64, dev)).unwrap())
            .collect();
        let p = Params {
            names: names.iter().map(|s| s.to_string()).collect(),
            vars: vars.clone(),
        };
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(cfg, &p).unwrap();
        let mut norms = Vec::new();
        for step in 0..4u64 {
            let grads: Vec<Option<Tensor>> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| Some((rand(s, 100 + 10 * step + i as u64, dev) * 3.0).unwrap()))
                .collect();
            // Clipping active on some steps (norms of these gradients are ~50).
            let max = if step % 2 == 0 { 10.0 } else { 0.0 };
            norms.push(opt.clip_and_step(&p, &grads, 1e-2, max).unwrap());
        }
        (vars, norms)
    };
    let (vg, ng) = run(&gpu());
    let (vc, nc) = run(&Device::Cpu);
    assert_eq!((ng.len(), vg.len()), (nc.len(), vc.len()));
    for (a, b) in ng.iter().zip(&nc) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "norm {a} vs {b}");
    }
    for (i, (a, b)) in vg.iter().zip(&vc).enumerate() {
        let r = rel(a.as_tensor(), b.as_tensor());
        assert!(r < 1e-6, "parameter {i}: GPU and CPU AdamW differ by {r}");
    }
}

fn samples() -> Vec<Encoded> {
    common::toy_padded(false)
}

fn trainer(dev: &Device, dtype: DType) -> Trainer {
    let (vm, model) = random_model(&LlamaConfig::tiny(40), 3, DType::F32, dev).unwrap();
    let p = params(vec![varmap_vars(&vm, "")]);
    let cfg = AdamWConfig::default();
    let mixed = (dtype == DType::BF16).then(|| {
        let trainable = llmbs::train::setup::named(&varmap_vars(&vm, ""), "");
        llmbs::train::mixed::MixedPrecision::new(DType::BF16, &model, &trainable, None).unwrap()
    });
    Trainer {
        model,
        opt: AdamW::new(cfg, &p).unwrap(),
        params: p,
        gct: None,
        cfg: StepConfig {
            lambda_s: 0.0,
            lambda_b: 0.0,
            ..common::toy_step(1e-2, 20, 4)
        },
        step: 0,
        mixed,
        dp: None,
        teacher: None,
    }
}

fn curve(dev: &Device, dtype: DType, fused: bool) -> Vec<f64> {
    with_fused(fused, || {
        let mut t = trainer(dev, dtype);
        let stop = AtomicBool::new(false);
        let s = samples();
        (0..20)
            .map(|_| t.train_step(&s, &stop).unwrap().unwrap().loss)
            .collect()
    })
}

#[test]
#[ignore = "needs a CUDA GPU"]
fn gpu_training_follows_the_cpu_loss_curve_and_bf16_stays_within_two_percent() {
    // TF32 would move the f32 GPU curve off the CPU one: full f32 here.
    std::env::set_var("LLMBS_NO_TF32", "1");
    let cpu = curve(&Device::Cpu, DType::F32, false);
    let fused = curve(&gpu(), DType::F32, true);
    let composed = curve(&gpu(), DType::F32, false);
    let bf16 = curve(&gpu(), DType::BF16, true);
    assert!(fused[19] < fused[0], "the loss did not fall: {fused:?}");
    for i in 0..20 {
        let c = cpu[i];
        assert!(
            (fused[i] - c).abs() <= 1e-4 * c.max(1.0),
            "step {i}: GPU fused {} vs CPU {c}",
            fused[i]
        );
        assert!(
            (composed[i] - c).abs() <= 1e-4 * c.max(1.0),
            "step {i}: GPU composed {} vs CPU {c}",
            composed[i]
        );
        assert!(
            (bf16[i] - c).abs() <= 0.02 * c,
            "step {i}: bf16 {} vs f32 {c}",
            bf16[i]
        );
    }
}
