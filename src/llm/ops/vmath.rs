//! Vectorised exp-based kernels (AVX-512 where the CPU has it, scalar otherwise): a training
//! step takes ~260 M exponentials (SiLU forward and backward, the attention softmax, the
//! vocabulary softmax), and glibc's scalar `expf` made them ~5% of a step.
//!
//! exp: Cephes' single-precision polynomial on x - n ln 2 (relative error ~1e-7), scaled by 2^n
//! with VSCALEFPS; inputs below -104 give 0 (as `f32::exp` does, up to denormals).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| is_x86_feature_detected!("avx512f"))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(
        _mm512_min_ps(x, _mm512_set1_ps(88.72)),
        _mm512_set1_ps(-104.0),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm512_set1_ps(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(e, n)
}

/// The lanes of a 16-wide chunk that fall before `left` elements from its start.
#[cfg(target_arch = "x86_64")]
fn lanes(left: usize) -> __mmask16 {
    if left >= 16 {
        0xFFFF
    } else {
        (1u16 << left) - 1
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn exp_shift_sum_avx512(x: &mut [f32], shift: f32) -> f32 {
    let (p, s, n) = (x.as_mut_ptr(), _mm512_set1_ps(shift), x.len());
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let v = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, p.add(i)), s));
        _mm512_mask_storeu_ps(p.add(i), m, v);
        acc = _mm512_add_ps(acc, _mm512_maskz_mov_ps(m, v));
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// `x[i] = exp(x[i] - shift)`; returns the sum of the results.
pub fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; masked loads and stores stay inside `x`.
        return unsafe { exp_shift_sum_avx512(x, shift) };
    }
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_avx512(x: &[f32]) -> f32 {
    let (p, n) = (x.as_ptr(), x.len());
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        acc = _mm512_mask_max_ps(acc, m, acc, _mm512_maskz_loadu_ps(m, p.add(i)));
        i += 16;
    }
    _mm512_reduce_max_ps(acc)
}

/// The largest element (-inf for an empty slice).
pub fn max(x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; masked loads stay inside `x`.
        return unsafe { max_avx512(x) };
    }
    x.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_avx512(g: &[f32], u: &[f32], out: &mut [f32], n: usize) {
    let (gp, up, op) = (g.as_ptr(), u.as_ptr(), out.as_mut_ptr());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let x = _mm512_maskz_loadu_ps(m, gp.add(i));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        let silu = _mm512_div_ps(x, _mm512_add_ps(one, e));
        let y = _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up.add(i)));
        _mm512_mask_storeu_ps(op.add(i), m, y);
        i += 16;
    }
}

/// `out = silu(g) * u`.
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len().min(g.len()).min(u.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; every access is masked to the first n elements.
        unsafe { silu_mul_avx512(g, u, out, n) };
        return;
    }
    for i in 0..n {
        out[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn silu_mul_bwd_avx512(g: &mut [f32], u: &mut [f32], d: &[f32], n: usize) {
    let (gp, up, dp) = (g.as_mut_ptr(), u.as_mut_ptr(), d.as_ptr());
    let one = _mm512_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let x = _mm512_maskz_loadu_ps(m, gp.add(i));
        let uv = _mm512_maskz_loadu_ps(m, up.add(i));
        let dv = _mm512_maskz_loadu_ps(m, dp.add(i));
        let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
        let sig = _mm512_div_ps(one, _mm512_add_ps(one, e));
        let t = _mm512_fmadd_ps(x, _mm512_sub_ps(one, sig), one);
        let dg = _mm512_mul_ps(_mm512_mul_ps(dv, uv), _mm512_mul_ps(sig, t));
        let du = _mm512_mul_ps(dv, _mm512_mul_ps(x, sig));
        _mm512_mask_storeu_ps(gp.add(i), m, dg);
        _mm512_mask_storeu_ps(up.add(i), m, du);
        i += 16;
    }
}

/// The gradients of `silu(g) * u` given the output gradient `d`, written over `g` (dg) and
/// `u` (du): dg = d * u * sig * (1 + g * (1 - sig)), du = d * silu(g).
pub fn silu_mul_bwd_inplace(g: &mut [f32], u: &mut [f32], d: &[f32]) {
    let n = g.len().min(u.len()).min(d.len());
    #[cfg(target_arch = "x86_64")]
    if avx512() {
        // SAFETY: AVX-512F is present; every access is masked to the first n elements.
        unsafe { silu_mul_bwd_avx512(g, u, d, n) };
        return;
    }
    for i in 0..n {
        let (x, up) = (g[i], u[i]);
        let sig = 1.0 / (1.0 + (-x).exp());
        g[i] = d[i] * up * sig * (1.0 + x * (1.0 - sig));
        u[i] = d[i] * x * sig;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_exp_matches_libm() {
        // Up to e^80: the sum stays finite in f32.
        let xs: Vec<f32> = (0..1001).map(|i| -110.0 + i as f32 * 0.19).collect();
        let mut v = xs.clone();
        let sum = exp_shift_sum(&mut v, 0.5);
        let mut want_sum = 0f64;
        for (x, got) in xs.iter().zip(&v) {
            let want = ((x - 0.5) as f64).exp();
            want_sum += want;
            let tol = 3e-7 * want + 1e-37;
            assert!(
                (*got as f64 - want).abs() <= tol,
                "exp({x} - 0.5): {got} vs {want}"
            );
        }
        assert!(((sum as f64) - want_sum).abs() <= 1e-5 * want_sum);
        assert_eq!(max(&xs[..37]), xs[36]);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    #[test]
    fn silu_kernels_match_the_formulas() {
        let g: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 9.0).collect();
        let u: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.1).collect();
        let d: Vec<f32> = (0..37).map(|i| (i % 5) as f32 - 2.0).collect();
        let mut out = vec![0f32; 37];
        silu_mul(&g, &u, &mut out);
        let (mut dg, mut du) = (g.clone(), u.clone());
        silu_mul_bwd_inplace(&mut dg, &mut du, &d);
        for i in 0..37 {
            let (x, up) = (g[i] as f64, u[i] as f64);
            let sig = 1.0 / (1.0 + (-x).exp());
            let close = |a: f32, b: f64| (a as f64 - b).abs() <= 1e-6 * (1.0 + b.abs());
            assert!(close(out[i], x * sig * up), "silu_mul {i}");
            assert!(
                close(dg[i], d[i] as f64 * up * sig * (1.0 + x * (1.0 - sig))),
                "dg {i}"
            );
            assert!(close(du[i], d[i] as f64 * x * sig), "du {i}");
        }
    }
}
