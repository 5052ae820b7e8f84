//! The AVX-512F kernels: 16 lanes, tails by masked loads and stores, 2^n by VSCALEFPS.

use std::arch::x86_64::*;

use super::cephes;

/// exp of 16 lanes. NaN stays NaN: MINPS/MAXPS return their second operand when either is
/// NaN, so `x` goes second in the clamp.
#[target_feature(enable = "avx512f")]
unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_max_ps(
        _mm512_set1_ps(cephes::LO),
        _mm512_min_ps(_mm512_set1_ps(cephes::HI), x),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(cephes::LN2_HI), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(cephes::LN2_LO), r);
    let mut p = _mm512_set1_ps(cephes::P[0]);
    for c in &cephes::P[1..] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    let r2 = _mm512_mul_ps(r, r);
    let e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
    _mm512_scalef_ps(e, n)
}

/// The lanes of a 16-wide chunk that fall before `left` elements from its start.
fn lanes(left: usize) -> __mmask16 {
    if left >= 16 {
        0xFFFF
    } else {
        (1u16 << left) - 1
    }
}

/// See [`super::exp_shift_sum`]. Safety: the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
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

/// See [`super::max`]. Safety: the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn max(x: &[f32]) -> f32 {
    let (p, n) = (x.as_ptr(), x.len());
    let mut acc = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        // The accumulator second: a NaN element is skipped, as `f32::max` skips it.
        acc = _mm512_mask_max_ps(acc, m, _mm512_maskz_loadu_ps(m, p.add(i)), acc);
        i += 16;
    }
    _mm512_reduce_max_ps(acc)
}

/// See [`super::silu_mul`]. Safety: the CPU has AVX-512F; `n` is at most each slice's length.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32], n: usize) {
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

/// See [`super::silu_mul_bwd_inplace`]. Safety: the CPU has AVX-512F; `n` is at most each
/// slice's length.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn silu_mul_bwd(g: &mut [f32], u: &mut [f32], d: &[f32], n: usize) {
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
