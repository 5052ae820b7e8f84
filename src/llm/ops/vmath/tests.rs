//! Every path the CPU has against f64 references and `f32::exp`: tails of every length
//! around the vector widths, the clamp ends, NaN; and the `LLMBS_SIMD` selection.

use std::io::Write;

use super::*;

/// Runs `f` on every path this CPU has, and names the ones it lacks on stderr, past the test
/// harness's capture, so that a path that did not run never passes silently.
fn each_path(test: &str, f: impl Fn(Path)) {
    let (ran, skipped): (Vec<Path>, Vec<Path>) = Path::ALL.into_iter().partition(|p| p.supported());
    for p in &ran {
        f(*p);
    }
    let names = |v: &[Path]| v.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ");
    let _ = writeln!(
        std::io::stderr(),
        "vmath {test}: ran {}; skipped (this CPU or build lacks them): {}",
        names(&ran),
        names(&skipped)
    );
}

const LENGTHS: [usize; 11] = [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 33];
const SENTINEL: f32 = 12345.0;

/// exp within 3e-7 relative, or 1 ulp of the smallest denormal.
fn exp_close(got: f32, want: f64) -> bool {
    if want.is_nan() {
        return got.is_nan();
    }
    (got as f64 - want).abs() <= 3e-7 * want + 1.5e-45
}

fn inputs(n: usize, seed: usize) -> Vec<f32> {
    // Over [-110, 80]: past the low clamp, and a sum of 33 that stays finite in f32.
    (0..n)
        .map(|i| -110.0 + ((i * 7919 + seed * 104_729) % 1000) as f32 * 0.19)
        .collect()
}

#[test]
fn exp_shift_sum_matches_f64_on_every_path_and_tail() {
    each_path("exp_shift_sum", |p| {
        for n in LENGTHS {
            let xs = inputs(n, n);
            for shift in [0.0f32, 0.5] {
                let mut buf = xs.clone();
                buf.push(SENTINEL);
                let sum = exp_shift_sum_with(p, &mut buf[..n], shift);
                assert_eq!(buf[n], SENTINEL, "{p:?} n={n}: wrote past the end");
                let mut want_sum = 0f64;
                for (x, got) in xs.iter().zip(&buf) {
                    let want = (*x as f64 - shift as f64).exp();
                    want_sum += want;
                    assert!(
                        exp_close(*got, want),
                        "{p:?} exp({x} - {shift}): {got} vs {want}"
                    );
                    assert!((got - (x - shift).exp()).abs() <= 3e-7 * got.abs() + 1.5e-45);
                }
                let tol = 1e-6 * want_sum;
                assert!(
                    ((sum as f64) - want_sum).abs() <= tol,
                    "{p:?} n={n} sum {sum} vs {want_sum}"
                );
            }
        }
    });
}

#[test]
fn exp_edges_on_every_path() {
    let xs = [
        f32::NEG_INFINITY,
        -1e30,
        -1000.0,
        -104.5,
        -104.0,
        -103.9,
        -100.0,
        -87.5,
        -10.0,
        -1e-7,
        0.0,
        1e-7,
        1.0,
        50.0,
        88.0,
        88.7,
    ];
    each_path("exp edges", |p| {
        for x in xs {
            // Alone and in every lane position of a full and a tail chunk.
            for (n, at) in [(1, 0), (17, 3), (17, 16), (33, 31)] {
                let mut v = vec![0.25f32; n];
                v[at] = x;
                exp_shift_sum_with(p, &mut v, 0.0);
                let want = (x as f64).exp();
                assert!(
                    exp_close(v[at], want),
                    "{p:?} exp({x}) = {} vs {want}",
                    v[at]
                );
            }
        }
        // Far below the clamp: exactly 0, as f32::exp.
        let mut v = vec![-200.0f32; 9];
        assert_eq!(exp_shift_sum_with(p, &mut v, 0.0), 0.0);
        assert!(v.iter().all(|x| *x == 0.0), "{p:?}: {v:?}");
        // NaN stays NaN and leaves its neighbours alone (as on the scalar path).
        let mut v = vec![1.0f32; 17];
        v[5] = f32::NAN;
        let sum = exp_shift_sum_with(p, &mut v, 1.0);
        assert!(v[5].is_nan() && sum.is_nan(), "{p:?}: NaN lost ({})", v[5]);
        assert!(
            v.iter().enumerate().all(|(i, x)| i == 5 || *x == 1.0),
            "{p:?}: {v:?}"
        );
    });
}

#[test]
fn max_on_every_path_and_tail() {
    each_path("max", |p| {
        for n in LENGTHS {
            let xs = inputs(n, 3);
            let want = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max_with(p, &xs), want, "{p:?} n={n}");
            // The largest in the last position (a tail lane).
            let mut ys = xs.clone();
            if let Some(last) = ys.last_mut() {
                *last = 500.0;
                assert_eq!(max_with(p, &ys), 500.0, "{p:?} n={n}: tail lane");
            }
            // NaN is skipped, as `f32::max` skips it.
            if n > 2 {
                ys[1] = f32::NAN;
                assert_eq!(max_with(p, &ys), 500.0, "{p:?} n={n}: NaN");
            }
        }
        assert_eq!(max_with(p, &[]), f32::NEG_INFINITY);
        assert_eq!(max_with(p, &[f32::NEG_INFINITY; 9]), f32::NEG_INFINITY);
        assert_eq!(max_with(p, &[-3.0; 9]), -3.0);
    });
}

#[test]
fn silu_kernels_match_the_formulas_on_every_path() {
    each_path("silu", |p| {
        for n in LENGTHS.into_iter().chain([37]) {
            let mut g: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 9.0).collect();
            if n > 2 {
                (g[0], g[1]) = (-100.0, 95.0);
            }
            let u: Vec<f32> = (0..n).map(|i| 1.0 - i as f32 * 0.1).collect();
            let d: Vec<f32> = (0..n).map(|i| (i % 5) as f32 - 2.0).collect();
            let mut out = vec![SENTINEL; n + 1];
            silu_mul_with(p, &g, &u, &mut out[..n]);
            let (mut dg, mut du) = (g.clone(), u.clone());
            dg.push(SENTINEL);
            du.push(SENTINEL);
            silu_mul_bwd_with(p, &mut dg[..n], &mut du[..n], &d);
            assert_eq!(
                [out[n], dg[n], du[n]],
                [SENTINEL; 3],
                "{p:?} n={n}: past the end"
            );
            for i in 0..n {
                let (x, up, dd) = (g[i] as f64, u[i] as f64, d[i] as f64);
                let sig = 1.0 / (1.0 + (-x).exp());
                let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs());
                assert!(
                    close(out[i], x * sig * up),
                    "{p:?} silu_mul {i}: {}",
                    out[i]
                );
                let want = dd * up * sig * (1.0 + x * (1.0 - sig));
                assert!(close(dg[i], want), "{p:?} dg {i}: {} vs {want}", dg[i]);
                assert!(close(du[i], dd * x * sig), "{p:?} du {i}");
            }
        }
        let mut out = [0f32; 9];
        let mut g = [0.5f32; 9];
        g[8] = f32::NAN;
        silu_mul_with(p, &g, &[1.0; 9], &mut out);
        assert!(
            out[8].is_nan() && out[..8].iter().all(|x| !x.is_nan()),
            "{p:?}: {out:?}"
        );
    });
}

#[test]
fn simd_setting_selects_a_supported_path() {
    let best = Path::best();
    assert!(best.supported());
    assert_eq!(Path::from_setting(None), (best, None));
    assert_eq!(Path::from_setting(Some("auto")), (best, None));
    assert_eq!(Path::from_setting(Some("scalar")), (Path::Scalar, None));
    let (p, warning) = Path::from_setting(Some("sse9"));
    assert!(p == best && warning.is_some());
    for p in Path::ALL {
        let (chosen, warning) = Path::from_setting(Some(p.name()));
        if p.supported() {
            assert_eq!((chosen, warning), (p, None));
        } else {
            assert!(chosen == best && warning.is_some(), "{p:?}");
        }
    }
    // Under `LLMBS_SIMD=...` (scripts/test.sh), the forced path is the one that runs.
    let forced = std::env::var("LLMBS_SIMD").ok();
    assert_eq!(path(), Path::from_setting(forced.as_deref()).0);
    let _ = writeln!(
        std::io::stderr(),
        "vmath: LLMBS_SIMD={} runs {}",
        forced.as_deref().unwrap_or("(unset)"),
        simd_path()
    );
}
