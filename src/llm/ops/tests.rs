//! Every fused op against the composed candle ops it replaces: values and the gradients of
//! every input, on random inputs of several shapes (odd sizes, padding, per-row positions),
//! with and without gradient buffers.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, Var, D};
use rand::{Rng, SeedableRng};

use super::attn::{attention, AttnShape};
use super::ce::{head_ce, head_ce_sum, HeadTargets};
use super::embed::embedding;
use super::linear::linear;
use super::norm::rms_norm;
use super::GradBuffers;
use crate::llm::kernels::with_fused;

fn rand(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&rand(shape, seed)).unwrap()
}

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
fn rel_rejects_nan_inf_and_length_mismatches() {
    let b = Tensor::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let nan = Tensor::new(&[f32::NAN; 3], &Device::Cpu).unwrap();
    let inf = Tensor::new(&[1f32, f32::INFINITY, 3.0], &Device::Cpu).unwrap();
    // An all-NaN output (or reference) and an infinite one fail any tolerance.
    for (x, y) in [(&nan, &b), (&b, &nan), (&inf, &b), (&b, &inf)] {
        assert!(rel(x, y).is_infinite(), "{x} vs {y}: {}", rel(x, y));
    }
    assert_eq!(rel(&b, &b), 0.0);
    let short = Tensor::new(&[1f32, -2.0], &Device::Cpu).unwrap();
    let mismatch = std::panic::AssertUnwindSafe(|| rel(&short, &b));
    assert!(std::panic::catch_unwind(mismatch).is_err());
}

/// Values and input gradients (of `sum(out * w)`, a random projection of the output) of the
/// fused `f` against the composed `g`; with `sinks`, the fused run's weight gradients go
/// through gradient buffers.
fn check(
    name: &str,
    vars: &[&Var],
    sinks: bool,
    fused: impl Fn() -> Tensor,
    composed: impl Fn() -> Tensor,
) {
    let bufs =
        Arc::new(GradBuffers::new(&vars.iter().map(|v| (*v).clone()).collect::<Vec<_>>()).unwrap());
    let (yf, gf) = with_fused(true, || {
        let _active = sinks.then(|| bufs.activate());
        let y = fused();
        let w = rand(y.dims(), 99);
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g)
    });
    let (yc, gc) = with_fused(false, || {
        let y = composed();
        let w = rand(y.dims(), 99);
        let g = (&y * &w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g)
    });
    let r = rel(&yf, &yc);
    assert!(r < 1e-5, "{name}: values differ by {r} (relative)");
    let mut grads: Vec<Option<Tensor>> = vars
        .iter()
        .map(|v| gf.get(v.as_tensor()).cloned())
        .collect();
    bufs.merge(&mut grads).unwrap();
    for (i, v) in vars.iter().enumerate() {
        let want = gc
            .get(v.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no composed grad {i}"));
        let got = grads[i]
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no fused grad {i}"));
        let r = rel(got, want);
        assert!(
            r < 1e-5,
            "{name}: gradient of input {i} differs by {r} (relative), sinks {sinks}"
        );
    }
}

#[test]
fn linear_matches_matmul() {
    for (rows, d_in, d_out, seed) in [
        (7usize, 5usize, 3usize, 1u64),
        (33, 64, 17, 2),
        (1, 9, 130, 3),
    ] {
        let x = var(&[rows, d_in], seed);
        let w = var(&[d_out, d_in], seed + 10);
        for sinks in [false, true] {
            check(
                "linear",
                &[&x, &w],
                sinks,
                || linear(x.as_tensor(), w.as_tensor()).unwrap(),
                || x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap(),
            );
        }
    }
}

#[test]
fn rms_norm_matches_the_composed_norm() {
    for (shape, seed) in [
        (vec![2usize, 3, 8], 4u64),
        (vec![5, 33], 5),
        (vec![1, 1, 576], 6),
    ] {
        let d = *shape.last().unwrap();
        let x = var(&shape, seed);
        let w = var(&[d], seed + 10);
        for sinks in [false, true] {
            check(
                "rms_norm",
                &[&x, &w],
                sinks,
                || rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).unwrap(),
                || candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-5).unwrap(),
            );
        }
    }
}

/// Rotate-half RoPE composed from candle ops; x [b, h, t, hd], cos/sin [t | b t, hd/2].
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let cos = Tensor::cat(&[cos, cos], D::Minus1).unwrap();
    let sin = Tensor::cat(&[sin, sin], D::Minus1).unwrap();
    let (cos, sin) = if cos.rank() == 2 {
        (
            cos.unsqueeze(0).unwrap().unsqueeze(0).unwrap(),
            sin.unsqueeze(0).unwrap().unsqueeze(0).unwrap(),
        )
    } else {
        (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap())
    };
    let half = x.dim(D::Minus1).unwrap() / 2;
    let x1 = x.narrow(D::Minus1, 0, half).unwrap();
    let x2 = x.narrow(D::Minus1, half, half).unwrap();
    let rot = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    (x.broadcast_mul(&cos).unwrap() + rot.broadcast_mul(&sin).unwrap()).unwrap()
}

/// Reference attention: repeat KV heads, causal + key-validity additive mask, softmax.
fn attention_composed(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    valid: &[Vec<u8>],
    s: AttnShape,
) -> Tensor {
    let (b, t, _) = q.dims3().unwrap();
    let (h, kv, hd) = (s.n_heads, s.n_kv, s.head_dim);
    let heads = |x: &Tensor, n: usize| {
        x.reshape((b, t, n, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let q = rope_composed(&heads(q, h), cos, sin);
    let k = rope_composed(&heads(k, kv), cos, sin);
    let v = heads(v, kv);
    let rep = |x: &Tensor| {
        let x = x
            .unsqueeze(2)
            .unwrap()
            .repeat((1, 1, h / kv, 1, 1))
            .unwrap();
        x.reshape((b, h, t, hd)).unwrap()
    };
    let (k, v) = (rep(&k), rep(&v));
    let att = (q.matmul(&k.t().unwrap()).unwrap() / (hd as f64).sqrt()).unwrap();
    let mut mask = vec![0f32; b * t * t];
    for bi in 0..b {
        for i in 0..t {
            for j in 0..t {
                if j > i || valid[bi][j] == 0 {
                    mask[(bi * t + i) * t + j] = f32::NEG_INFINITY;
                }
            }
        }
    }
    let mask = Tensor::from_vec(mask, (b, 1, t, t), &Device::Cpu).unwrap();
    let p = candle_nn::ops::softmax(&att.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, t, h * hd))
        .unwrap()
}

fn rope_tables(t: usize, half: usize, rows: Option<usize>) -> (Tensor, Tensor) {
    let n = rows.unwrap_or(1);
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for r in 0..n {
        for p in 0..t {
            for j in 0..half {
                let ang = (p + 3 * r) as f32 / 10f32.powf(j as f32 / half as f32);
                cos.push(ang.cos());
                sin.push(ang.sin());
            }
        }
    }
    let shape: Vec<usize> = match rows {
        Some(b) => vec![b, t, half],
        None => vec![t, half],
    };
    let dev = Device::Cpu;
    (
        Tensor::from_vec(cos, shape.clone(), &dev).unwrap(),
        Tensor::from_vec(sin, shape, &dev).unwrap(),
    )
}

#[test]
fn attention_matches_the_composed_attention() {
    // (b, t, heads, kv heads, head dim, per-row positions, right-padding lengths)
    let cases = [
        (
            2usize,
            5usize,
            4usize,
            2usize,
            8usize,
            false,
            vec![5usize, 3],
        ),
        (3, 7, 3, 1, 4, true, vec![7, 1, 4]),
        (1, 16, 2, 2, 16, false, vec![16]),
        // Several causal blocks (32 rows each), a ragged last one.
        (1, 70, 2, 1, 8, false, vec![70]),
        (2, 40, 4, 2, 8, true, vec![40, 33]),
    ];
    for (n, (b, t, h, kv, hd, per_row, lens)) in cases.into_iter().enumerate() {
        let seed = 20 + 3 * n as u64;
        let q = var(&[b, t, h * hd], seed);
        let k = var(&[b, t, kv * hd], seed + 1);
        let v = var(&[b, t, kv * hd], seed + 2);
        let (cos, sin) = rope_tables(t, hd / 2, per_row.then_some(b));
        let valid: Vec<Vec<u8>> = lens
            .iter()
            .map(|&l| (0..t).map(|j| (j < l) as u8).collect())
            .collect();
        let valid_t = Tensor::new(valid.clone(), &Device::Cpu).unwrap();
        let s = AttnShape {
            n_heads: h,
            n_kv: kv,
            head_dim: hd,
        };
        check(
            "attention",
            &[&q, &k, &v],
            false,
            || {
                attention(
                    q.as_tensor(),
                    k.as_tensor(),
                    v.as_tensor(),
                    (&cos, &sin),
                    Some(&valid_t),
                    s,
                )
                .unwrap()
                .unwrap()
            },
            || {
                attention_composed(
                    q.as_tensor(),
                    k.as_tensor(),
                    v.as_tensor(),
                    &cos,
                    &sin,
                    &valid,
                    s,
                )
            },
        );
    }
}

#[test]
fn attention_rows_without_a_visible_key_are_zero() {
    // Left padding: query 0 of row 0 sees only key 0, which is padding.
    let (b, t, hd) = (1usize, 3usize, 4usize);
    let q = var(&[b, t, hd], 40);
    let k = var(&[b, t, hd], 41);
    let v = var(&[b, t, hd], 42);
    let (cos, sin) = rope_tables(t, hd / 2, None);
    let valid = Tensor::new(&[[0u8, 1, 1]], &Device::Cpu).unwrap();
    let s = AttnShape {
        n_heads: 1,
        n_kv: 1,
        head_dim: hd,
    };
    let y = attention(
        q.as_tensor(),
        k.as_tensor(),
        v.as_tensor(),
        (&cos, &sin),
        Some(&valid),
        s,
    )
    .unwrap()
    .unwrap();
    let rows: Vec<Vec<f32>> = y.squeeze(0).unwrap().to_vec2().unwrap();
    assert!(rows[0].iter().all(|&x| x == 0.0), "{rows:?}");
    // Query 1 sees only key 1: its output is v[1].
    let v1: Vec<f32> = v
        .as_tensor()
        .squeeze(0)
        .unwrap()
        .get(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(rows[1].len(), v1.len());
    // `all` of the comparisons: a NaN fails it (a max over the differences would drop it).
    assert!(rows[1].iter().zip(&v1).all(|(a, b)| (a - b).abs() < 1e-6));
    let g = y.sum_all().unwrap().backward().unwrap();
    assert!(g.get(q.as_tensor()).unwrap().to_vec3::<f32>().unwrap()[0]
        .iter()
        .all(|r| r.iter().all(|x| x.is_finite())));
}

#[test]
fn head_cross_entropy_matches_log_softmax_gather() {
    for (n, d, vocab, seed) in [
        (4usize, 8usize, 11usize, 50u64),
        (13, 32, 97, 51),
        (1, 5, 3, 52),
    ] {
        let h = var(&[n, d], seed);
        let w = var(&[vocab, d], seed + 10);
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        for sinks in [false, true] {
            check(
                "head_ce",
                &[&h, &w],
                sinks,
                || {
                    head_ce_sum(h.as_tensor(), w.as_tensor(), &targets)
                        .unwrap()
                        .unwrap()
                },
                || {
                    let logits = h.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap();
                    crate::train::loss::nll_sum(&logits, &targets).unwrap()
                },
            );
        }
    }
}

/// The item-vocabulary loss and distillation targets: a softmax over a row range of the head
/// and mixed targets `(1 - alpha) onehot + alpha q`, both outputs (mixed, hard) and their
/// gradients against log-softmax and gathers.
#[test]
fn head_cross_entropy_over_rows_with_soft_targets() {
    let (n, d, vocab) = (6usize, 16usize, 40usize);
    let rows = 25..37;
    let h = var(&[n, d], 70);
    let w = var(&[vocab, d], 71);
    let targets: Vec<u32> = (0..n).map(|i| ((i * 5 + 1) % rows.len()) as u32).collect();
    let soft: Vec<Vec<(u32, f32)>> = (0..n)
        .map(|i| match i % 3 {
            0 => Vec::new(),
            _ => vec![(2, 0.5), ((i % 7) as u32 + 3, 0.3), (11, 0.2)],
        })
        .collect();
    let alpha = 0.6;
    for sinks in [false, true] {
        check(
            "head_ce rows + soft",
            &[&h, &w],
            sinks,
            || {
                let spec = HeadTargets {
                    targets: &targets,
                    rows: rows.clone(),
                    soft: &soft,
                    alpha,
                };
                head_ce(h.as_tensor(), w.as_tensor(), &spec)
                    .unwrap()
                    .unwrap()
            },
            || {
                let wr = w.as_tensor().narrow(0, rows.start, rows.len()).unwrap();
                let logits = h.as_tensor().matmul(&wr.t().unwrap()).unwrap();
                let lp = candle_nn::ops::log_softmax(&logits, candle_core::D::Minus1).unwrap();
                let (mut mixed, mut hard) = (Vec::new(), Vec::new());
                for r in 0..n {
                    let row = lp.get(r).unwrap();
                    let at = |k: u32| row.get(k as usize).unwrap();
                    let t = at(targets[r]);
                    hard.push(t.clone());
                    let m = if soft[r].is_empty() {
                        t
                    } else {
                        let mut acc = (t * (1.0 - alpha)).unwrap();
                        for &(k, q) in &soft[r] {
                            acc = (acc + (at(k) * (alpha * q as f64)).unwrap()).unwrap();
                        }
                        acc
                    };
                    mixed.push(m);
                }
                let sum = |v: Vec<Tensor>| {
                    Tensor::stack(&v, 0)
                        .unwrap()
                        .sum_all()
                        .unwrap()
                        .neg()
                        .unwrap()
                };
                Tensor::stack(&[sum(mixed), sum(hard)], 0).unwrap()
            },
        );
    }
}

mod blocks;
