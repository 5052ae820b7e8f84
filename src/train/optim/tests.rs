//! Tests of `train::optim`.
use super::*;

#[test]
fn schedule_warms_up_then_decays_to_the_floor() {
    assert!((cosine_lr(1.0, 0, 10, 2, 0.1) - 0.5).abs() < 1e-12);
    assert!((cosine_lr(1.0, 1, 10, 2, 0.1) - 1.0).abs() < 1e-12);
    assert!((cosine_lr(1.0, 2, 10, 2, 0.1) - 1.0).abs() < 1e-12);
    assert!((cosine_lr(1.0, 10, 10, 2, 0.1) - 0.1).abs() < 1e-12);
    assert!(cosine_lr(1.0, 6, 10, 2, 0.0) < cosine_lr(1.0, 5, 10, 2, 0.0));
}

#[test]
fn adamw_first_step_moves_by_lr_against_the_gradient_sign() {
    // Reference: torch.optim.AdamW(lr=0.1, weight_decay=0) on w=[1, 1], g=[0.5, -2]
    // gives w=[0.9, 1.1] after one step (m_hat / sqrt(v_hat) = sign(g)).
    let var = Var::new(&[1f32, 1.0], &Device::Cpu).unwrap();
    let p = Params {
        names: vec!["w".into()],
        vars: vec![var.clone()],
    };
    let cfg = AdamWConfig {
        weight_decay: 0.0,
        ..AdamWConfig::default()
    };
    let mut opt = AdamW::new(cfg, &p).unwrap();
    let g = Tensor::new(&[0.5f32, -2.0], &Device::Cpu).unwrap();
    opt.step(&p, &[Some(g)], 0.1).unwrap();
    let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
    assert!(
        (w[0] - 0.9).abs() < 1e-6 && (w[1] - 1.1).abs() < 1e-6,
        "{w:?}"
    );
}

#[test]
fn parameter_groups_give_the_new_part_its_own_rate_and_decay() {
    // First AdamW step = lr * sign(g) (plus decay); elements from 2 on are new: 3x the rate
    // and no decay, the old ones the base rate and decay 0.5.
    for contiguous in [true, false] {
        let var = Var::new(&[1f32, 1.0, 1.0, 1.0], &Device::Cpu).unwrap();
        let p = Params {
            names: vec!["model.embed_tokens.weight".into()],
            vars: vec![var.clone()],
        };
        let cfg = AdamWConfig {
            weight_decay: 0.5,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(cfg, &p).unwrap();
        opt.groups = Some(Groups {
            new: NewGroup {
                lr_scale: 3.0,
                weight_decay: 0.0,
            },
            from: vec![Some(2)],
        });
        let g = Tensor::new(&[0.5f32, -2.0, 0.5, -2.0], &Device::Cpu).unwrap();
        let g = match contiguous {
            true => g,
            false => Tensor::stack(&[&g, &g], 1)
                .unwrap()
                .narrow(1, 0, 1)
                .unwrap()
                .squeeze(1)
                .unwrap(),
        };
        opt.step(&p, &[Some(g)], 0.1).unwrap();
        let w: Vec<f32> = var.as_tensor().to_vec1().unwrap();
        let want = [0.95 - 0.1, 0.95 + 0.1, 1.0 - 0.3, 1.0 + 0.3];
        for (a, b) in w.iter().zip(want) {
            assert!(
                (a - b).abs() < 1e-5,
                "{w:?} vs {want:?} (contiguous {contiguous})"
            );
        }
    }
}

/// The largest difference between the fused CPU update and the composed one after three
/// steps over 40,000 elements (three of the fused pass's 16,384-element chunks), the elements
/// from `new_from` on a parameter group of their own.
fn fused_minus_composed(new_from: Option<usize>) -> f32 {
    let n = 40_000;
    let vals = |k: usize| -> Vec<f32> {
        (0..n)
            .map(|i| (((i * 31 + k * 17) % 97) as f32 - 48.0) / 50.0)
            .collect()
    };
    let run = |fused: bool| -> Vec<f32> {
        // The switch is process-wide; the composed path is forced by a non-contiguous
        // gradient instead, so parallel tests are not disturbed.
        let var = Var::from_vec(vals(1), n, &Device::Cpu).unwrap();
        let p = Params {
            names: vec!["layer.weight".into()],
            vars: vec![var.clone()],
        };
        let cfg = AdamWConfig::default();
        let mut opt = AdamW::new(cfg, &p).unwrap();
        opt.groups = new_from.map(|f| Groups {
            new: NewGroup {
                lr_scale: 3.0,
                weight_decay: 0.0,
            },
            from: vec![Some(f)],
        });
        for step in 0..3 {
            let g = Tensor::from_vec(vals(step + 2), n, &Device::Cpu).unwrap();
            let g = if fused {
                g
            } else {
                // Same values, strided layout: column 0 of [n, 2].
                let s = Tensor::stack(&[&g, &g], 1)
                    .unwrap()
                    .narrow(1, 0, 1)
                    .unwrap();
                let s = s.squeeze(1).unwrap();
                assert!(!s.is_contiguous());
                s
            };
            opt.step(&p, &[Some(g)], 1e-3).unwrap();
        }
        var.as_tensor().to_vec1().unwrap()
    };
    let (a, b) = (run(true), run(false));
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| if d.is_nan() { f32::NAN } else { m.max(d) })
}

#[test]
fn fused_cpu_update_equals_the_composed_one() {
    let max = fused_minus_composed(None);
    assert!(max < 1e-6, "fused vs composed differ by {max}");
}

#[test]
fn fused_cpu_update_splits_the_new_group_inside_a_chunk() {
    // The fused pass cuts each chunk at the group's first element: mid-chunk (20,000 is in the
    // second chunk), on a chunk's first element, the whole parameter, and none of it.
    for from in [20_000, 16_384, 0, 40_000, 39_999, 1] {
        let max = fused_minus_composed(Some(from));
        assert!(
            max < 1e-6,
            "new group from {from}: fused vs composed differ by {max}"
        );
    }
}

#[test]
fn clipping_scales_to_the_max_norm() {
    let mut g = vec![Some(Tensor::new(&[3f32, 4.0], &Device::Cpu).unwrap()), None];
    let n = clip_grad_norm(&mut g, 1.0).unwrap();
    assert!((n - 5.0).abs() < 1e-6);
    let v: Vec<f32> = g[0].as_ref().unwrap().to_vec1().unwrap();
    assert!((v[0] - 0.6).abs() < 1e-5 && (v[1] - 0.8).abs() < 1e-5);
    assert!(decays("model.layers.0.mlp.up_proj.weight"));
    assert!(!decays("model.layers.0.input_layernorm.weight"));
    assert!(!decays("gct.proj_s.bias"));
}
