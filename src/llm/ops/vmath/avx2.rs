//! The AVX2 + FMA kernels: 8 lanes, tails by masked loads and stores (VMASKMOVPS), 2^n built
//! in the exponent bits.

use std::arch::x86_64::*;

use super::cephes;

/// 2^k for integral `k` in [-126, 127], built in the exponent bits.
#[target_feature(enable = "avx2,fma")]
unsafe fn pow2(k: __m256i) -> __m256 {
    _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
        k,
        _mm256_set1_epi32(127),
    )))
}

/// e * 2^n for integral `n` in [-150, 128] (what the clamp of [`exp8`] leaves): as two factors
/// 2^(n>>1) * 2^(n - (n>>1)), each a normal float, because a single factor's biased exponent
/// n + 127 would leave 1..=254 at both ends. The second product rounds once, into the
/// denormals or to 0 below 2^-149, as VSCALEFPS and `f32::exp` do.
#[target_feature(enable = "avx2,fma")]
unsafe fn scale(e: __m256, n: __m256) -> __m256 {
    let n = _mm256_cvtps_epi32(n);
    let half = _mm256_srai_epi32::<1>(n);
    _mm256_mul_ps(
        _mm256_mul_ps(e, pow2(half)),
        pow2(_mm256_sub_epi32(n, half)),
    )
}

/// exp of 8 lanes; the same polynomial as the AVX-512 path. NaN stays NaN (`x` second in
/// the clamp; a NaN `n` converts to i32::MIN, whose factors come out finite).
#[target_feature(enable = "avx2,fma")]
unsafe fn exp8(x: __m256) -> __m256 {
    let x = _mm256_max_ps(
        _mm256_set1_ps(cephes::LO),
        _mm256_min_ps(_mm256_set1_ps(cephes::HI), x),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(cephes::LN2_HI), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(cephes::LN2_LO), r);
    let mut p = _mm256_set1_ps(cephes::P[0]);
    for c in &cephes::P[1..] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(*c));
    }
    let r2 = _mm256_mul_ps(r, r);
    let e = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
    scale(e, n)
}

/// All-ones in the lanes of an 8-wide chunk that fall before `left` elements from its start.
#[target_feature(enable = "avx2,fma")]
unsafe fn lanes(left: usize) -> __m256i {
    let left = _mm256_set1_epi32(left.min(8) as i32);
    _mm256_cmpgt_epi32(left, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn sum8(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

#[target_feature(enable = "avx2,fma")]
unsafe fn max8(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// See [`super::exp_shift_sum`]. Safety: the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let (p, s, n) = (x.as_mut_ptr(), _mm256_set1_ps(shift), x.len());
    let mut acc = _mm256_setzero_ps();
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let v = exp8(_mm256_sub_ps(_mm256_maskload_ps(p.add(i), m), s));
        _mm256_maskstore_ps(p.add(i), m, v);
        acc = _mm256_add_ps(acc, _mm256_and_ps(v, _mm256_castsi256_ps(m)));
        i += 8;
    }
    sum8(acc)
}

/// See [`super::max`]. Safety: the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn max(x: &[f32]) -> f32 {
    let (p, n) = (x.as_ptr(), x.len());
    let low = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut acc = low;
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let v = _mm256_blendv_ps(low, _mm256_maskload_ps(p.add(i), m), _mm256_castsi256_ps(m));
        // The accumulator second: a NaN element is skipped, as `f32::max` skips it.
        acc = _mm256_max_ps(v, acc);
        i += 8;
    }
    max8(acc)
}

/// See [`super::silu_mul`]. Safety: the CPU has AVX2 and FMA; `n` is at most each slice's
/// length.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32], n: usize) {
    let (gp, up, op) = (g.as_ptr(), u.as_ptr(), out.as_mut_ptr());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let x = _mm256_maskload_ps(gp.add(i), m);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        let y = _mm256_mul_ps(silu, _mm256_maskload_ps(up.add(i), m));
        _mm256_maskstore_ps(op.add(i), m, y);
        i += 8;
    }
}

/// See [`super::silu_mul_bwd_inplace`]. Safety: the CPU has AVX2 and FMA; `n` is at most each
/// slice's length.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn silu_mul_bwd(g: &mut [f32], u: &mut [f32], d: &[f32], n: usize) {
    let (gp, up, dp) = (g.as_mut_ptr(), u.as_mut_ptr(), d.as_ptr());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    while i < n {
        let m = lanes(n - i);
        let x = _mm256_maskload_ps(gp.add(i), m);
        let uv = _mm256_maskload_ps(up.add(i), m);
        let dv = _mm256_maskload_ps(dp.add(i), m);
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        let sig = _mm256_div_ps(one, _mm256_add_ps(one, e));
        let t = _mm256_fmadd_ps(x, _mm256_sub_ps(one, sig), one);
        let dg = _mm256_mul_ps(_mm256_mul_ps(dv, uv), _mm256_mul_ps(sig, t));
        let du = _mm256_mul_ps(dv, _mm256_mul_ps(x, sig));
        _mm256_maskstore_ps(gp.add(i), m, dg);
        _mm256_maskstore_ps(up.add(i), m, du);
        i += 8;
    }
}
