//! Whole blocks (embedding, gradient buffers, MLP and attention blocks, sub-layers, bf16) against
//! their composed references; the helpers are the parent's.

use super::*;

#[test]
fn embedding_matches_index_select() {
    let w = var(&[10, 6], 60);
    let ids = Tensor::new(&[[3u32, 1, 3, 9], [0, 3, 1, 1]], &Device::Cpu).unwrap();
    for sinks in [false, true] {
        check(
            "embedding",
            &[&w],
            sinks,
            || embedding(w.as_tensor(), &ids, true).unwrap(),
            || {
                w.as_tensor()
                    .index_select(&ids.flatten_all().unwrap(), 0)
                    .unwrap()
                    .reshape((2, 4, 6))
                    .unwrap()
            },
        );
    }
}

#[test]
fn buffers_accumulate_across_backward_passes_and_zero() {
    let x = var(&[3, 4], 70);
    let w = var(&[2, 4], 71);
    let bufs = Arc::new(GradBuffers::new(std::slice::from_ref(&w)).unwrap());
    let run = || {
        let _a = bufs.activate();
        with_fused(true, || {
            linear(x.as_tensor(), w.as_tensor())
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        });
    };
    run();
    let once: Vec<Vec<f32>> = bufs.grad(0).unwrap().to_vec2().unwrap();
    run();
    let twice: Vec<Vec<f32>> = bufs.grad(0).unwrap().to_vec2().unwrap();
    for (a, b) in once.iter().flatten().zip(twice.iter().flatten()) {
        assert!((2.0 * a - b).abs() < 1e-6);
    }
    bufs.zero().unwrap();
    assert!(bufs.grad(0).is_none());
    run();
    let again: Vec<Vec<f32>> = bufs.grad(0).unwrap().to_vec2().unwrap();
    assert_eq!(again, once);
    assert_eq!(DType::F32, bufs.grad(0).unwrap().dtype());
}

#[test]
fn mlp_block_matches_the_composed_mlp() {
    let composed = |x: &Tensor, g: &Tensor, u: &Tensor, d: &Tensor| {
        let mm = |a: &Tensor, w: &Tensor| a.broadcast_matmul(&w.t().unwrap()).unwrap();
        mm(
            &(candle_nn::ops::silu(&mm(x, g)).unwrap() * mm(x, u)).unwrap(),
            d,
        )
    };
    for (shape, inter, seed) in [(vec![2usize, 3, 8], 12usize, 80u64), (vec![5, 6], 7, 81)] {
        let d = *shape.last().unwrap();
        let x = var(&shape, seed);
        let (g, u) = (var(&[inter, d], seed + 1), var(&[inter, d], seed + 2));
        let dw = var(&[d, inter], seed + 3);
        check(
            "mlp",
            &[&x, &g, &u, &dw],
            true,
            || crate::llm::ops::mlp::mlp(&x, &g, &u, &dw).unwrap().unwrap(),
            || composed(&x, &g, &u, &dw),
        );
        // Frozen weights: only x has a gradient, and the op still applies.
        let (gf, uf, df) = (
            rand(&[inter, d], 5),
            rand(&[inter, d], 6),
            rand(&[d, inter], 7),
        );
        check(
            "mlp frozen",
            &[&x],
            true,
            || {
                crate::llm::ops::mlp::mlp(&x, &gf, &uf, &df)
                    .unwrap()
                    .unwrap()
            },
            || composed(&x, &gf, &uf, &df),
        );
    }
    // A trainable weight without a buffer cannot go through the op.
    let (x, g) = (var(&[2, 4], 90), var(&[3, 4], 91));
    let none = with_fused(true, || {
        crate::llm::ops::mlp::mlp(&x, &g, &g, &rand(&[4, 3], 92)).unwrap()
    });
    assert!(none.is_none());
}

#[test]
fn attention_block_matches_projections_and_attention() {
    let (b, t, d, h, kv, hd) = (2usize, 6usize, 12usize, 4usize, 2usize, 4usize);
    let x = var(&[b, t, d], 100);
    let wq = var(&[h * hd, d], 101);
    let wk = var(&[kv * hd, d], 102);
    let wv = var(&[kv * hd, d], 103);
    let wo = var(&[d, h * hd], 104);
    let (cos, sin) = rope_tables(t, hd / 2, Some(b));
    let valid = vec![vec![1u8; t], vec![1, 1, 1, 1, 0, 0]];
    let valid_t = Tensor::new(valid.clone(), &Device::Cpu).unwrap();
    let s = AttnShape {
        n_heads: h,
        n_kv: kv,
        head_dim: hd,
    };
    let mm = |a: &Tensor, w: &Tensor| a.broadcast_matmul(&w.t().unwrap()).unwrap();
    check(
        "attention block",
        &[&x, &wq, &wk, &wv, &wo],
        true,
        || {
            let w = [
                wq.as_tensor(),
                wk.as_tensor(),
                wv.as_tensor(),
                wo.as_tensor(),
            ];
            crate::llm::ops::attn::attention_block(&x, w, (&cos, &sin), Some(&valid_t), s)
                .unwrap()
                .unwrap()
        },
        || {
            let (q, k, v) = (mm(&x, &wq), mm(&x, &wk), mm(&x, &wv));
            mm(&attention_composed(&q, &k, &v, &cos, &sin, &valid, s), &wo)
        },
    );
}

#[test]
fn sublayers_add_the_residual_around_the_normed_block() {
    let (b, t, d, h, kv, hd, inter) = (2usize, 5usize, 12usize, 4usize, 2usize, 4usize, 20usize);
    let x = var(&[b, t, d], 110);
    let n1 = var(&[d], 111);
    let n2 = var(&[d], 112);
    let wq = var(&[h * hd, d], 113);
    let wk = var(&[kv * hd, d], 114);
    let wv = var(&[kv * hd, d], 115);
    let wo = var(&[d, h * hd], 116);
    let (wg, wu, wd) = (
        var(&[inter, d], 117),
        var(&[inter, d], 118),
        var(&[d, inter], 119),
    );
    let (cos, sin) = rope_tables(t, hd / 2, None);
    let valid = vec![vec![1u8; t], vec![1, 1, 1, 0, 0]];
    let valid_t = Tensor::new(valid.clone(), &Device::Cpu).unwrap();
    let s = AttnShape {
        n_heads: h,
        n_kv: kv,
        head_dim: hd,
    };
    let mm = |a: &Tensor, w: &Tensor| a.broadcast_matmul(&w.t().unwrap()).unwrap();
    let all = [&x, &n1, &n2, &wq, &wk, &wv, &wo, &wg, &wu, &wd];
    check(
        "attention + mlp sublayers",
        &all,
        true,
        || {
            let w = [
                wq.as_tensor(),
                wk.as_tensor(),
                wv.as_tensor(),
                wo.as_tensor(),
            ];
            let cs = (&cos, &sin);
            let y = crate::llm::ops::attn::attention_sublayer(
                &x,
                (&n1, 1e-5),
                w,
                cs,
                Some(&valid_t),
                s,
            )
            .unwrap()
            .unwrap();
            let w = [wg.as_tensor(), wu.as_tensor(), wd.as_tensor()];
            crate::llm::ops::mlp::mlp_sublayer(&y, (&n2, 1e-5), w)
                .unwrap()
                .unwrap()
        },
        || {
            let hn = candle_nn::ops::rms_norm_slow(&x, &n1, 1e-5).unwrap();
            let (q, k, v) = (mm(&hn, &wq), mm(&hn, &wk), mm(&hn, &wv));
            let a = mm(&attention_composed(&q, &k, &v, &cos, &sin, &valid, s), &wo);
            let y = (x.as_tensor() + a).unwrap();
            let hn = candle_nn::ops::rms_norm_slow(&y, &n2, 1e-5).unwrap();
            let m = (candle_nn::ops::silu(&mm(&hn, &wg)).unwrap() * mm(&hn, &wu)).unwrap();
            (y + mm(&m, &wd)).unwrap()
        },
    );
}

#[test]
fn bf16_attention_stays_close_to_f32() {
    use crate::llm::ops::skip::{skip_unless, Unit};
    if skip_unless(
        Unit::Avx512Bf16,
        "ops::tests::blocks::bf16_attention_stays_close_to_f32",
    ) {
        return;
    }
    let (b, t, h, kv, hd) = (2usize, 45usize, 4usize, 2usize, 16usize);
    let q = rand(&[b, t, h * hd], 130);
    let k = rand(&[b, t, kv * hd], 131);
    let v = rand(&[b, t, kv * hd], 132);
    let (cos, sin) = rope_tables(t, hd / 2, None);
    let s = AttnShape {
        n_heads: h,
        n_kv: kv,
        head_dim: hd,
    };
    let run = |bf16: bool| {
        crate::llm::ops::with_bf16_matmul(bf16, || {
            with_fused(true, || {
                attention(&q, &k, &v, (&cos, &sin), None, s)
                    .unwrap()
                    .unwrap()
            })
        })
    };
    let r = rel(&run(true), &run(false));
    assert!(r > 0.0 && r < 2e-2, "bf16 vs f32 attention: {r}");
}
