//! The aarch64 NEON kernels: 4 lanes, tails through a padded stack copy (NEON has no masked
//! loads), 2^n built in the exponent bits as on AVX2.

use std::arch::aarch64::*;

use super::cephes;

/// 2^k for integral `k` in [-126, 127], built in the exponent bits.
#[target_feature(enable = "neon")]
unsafe fn pow2(k: int32x4_t) -> float32x4_t {
    vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))))
}

/// exp of 4 lanes; the polynomial and the two-factor 2^n of the AVX2 path (see its `scale`).
/// FMIN/FMAX propagate NaN, so NaN stays NaN.
#[target_feature(enable = "neon")]
unsafe fn exp4(x: float32x4_t) -> float32x4_t {
    let x = vmaxq_f32(
        vminq_f32(x, vdupq_n_f32(cephes::HI)),
        vdupq_n_f32(cephes::LO),
    );
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(std::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(cephes::LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(cephes::LN2_LO));
    let mut p = vdupq_n_f32(cephes::P[0]);
    for c in &cephes::P[1..] {
        p = vfmaq_f32(vdupq_n_f32(*c), p, r);
    }
    let e = vaddq_f32(vfmaq_f32(r, p, vmulq_f32(r, r)), vdupq_n_f32(1.0));
    let n = vcvtq_s32_f32(n);
    let half = vshrq_n_s32::<1>(n);
    vmulq_f32(vmulq_f32(e, pow2(half)), pow2(vsubq_s32(n, half)))
}

/// The last `src.len()` (< 4) elements of a slice in 4 lanes, the rest `fill`.
fn padded(src: &[f32], fill: f32) -> [f32; 4] {
    let mut t = [fill; 4];
    t[..src.len()].copy_from_slice(src);
    t
}

/// See [`super::exp_shift_sum`]. Safety: the CPU has NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    let (n, s) = (x.len(), vdupq_n_f32(shift));
    let whole = n - n % 4;
    let p = x.as_mut_ptr();
    let mut acc = vdupq_n_f32(0.0);
    for i in (0..whole).step_by(4) {
        let v = exp4(vsubq_f32(vld1q_f32(p.add(i)), s));
        vst1q_f32(p.add(i), v);
        acc = vaddq_f32(acc, v);
    }
    if whole < n {
        let mut t = padded(&x[whole..], 0.0);
        vst1q_f32(t.as_mut_ptr(), exp4(vsubq_f32(vld1q_f32(t.as_ptr()), s)));
        x[whole..].copy_from_slice(&t[..n - whole]);
        // The padding lanes count as 0 in the sum.
        t[n - whole..].fill(0.0);
        acc = vaddq_f32(acc, vld1q_f32(t.as_ptr()));
    }
    vaddvq_f32(acc)
}

/// See [`super::max`]. Safety: the CPU has NEON.
#[target_feature(enable = "neon")]
pub(super) unsafe fn max(x: &[f32]) -> f32 {
    let whole = x.len() - x.len() % 4;
    let p = x.as_ptr();
    // FMAXNM: a NaN element is skipped, as `f32::max` skips it.
    let mut acc = vdupq_n_f32(f32::NEG_INFINITY);
    for i in (0..whole).step_by(4) {
        acc = vmaxnmq_f32(acc, vld1q_f32(p.add(i)));
    }
    if whole < x.len() {
        let t = padded(&x[whole..], f32::NEG_INFINITY);
        acc = vmaxnmq_f32(acc, vld1q_f32(t.as_ptr()));
    }
    vmaxnmvq_f32(acc)
}

/// silu(g) * u of 4 lanes.
#[target_feature(enable = "neon")]
unsafe fn silu_mul4(g: *const f32, u: *const f32, out: *mut f32) {
    let x = vld1q_f32(g);
    let e = exp4(vnegq_f32(x));
    let silu = vdivq_f32(x, vaddq_f32(vdupq_n_f32(1.0), e));
    vst1q_f32(out, vmulq_f32(silu, vld1q_f32(u)));
}

/// See [`super::silu_mul`]. Safety: the CPU has NEON; `n` is at most each slice's length.
#[target_feature(enable = "neon")]
pub(super) unsafe fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32], n: usize) {
    let whole = n - n % 4;
    for i in (0..whole).step_by(4) {
        silu_mul4(
            g.as_ptr().add(i),
            u.as_ptr().add(i),
            out.as_mut_ptr().add(i),
        );
    }
    if whole < n {
        let (tg, tu, mut to) = (
            padded(&g[whole..n], 0.0),
            padded(&u[whole..n], 0.0),
            [0f32; 4],
        );
        silu_mul4(tg.as_ptr(), tu.as_ptr(), to.as_mut_ptr());
        out[whole..n].copy_from_slice(&to[..n - whole]);
    }
}

/// The gradients of silu(g) * u of 4 lanes, over `g` and `u`.
#[target_feature(enable = "neon")]
unsafe fn silu_mul_bwd4(g: *mut f32, u: *mut f32, d: *const f32) {
    let one = vdupq_n_f32(1.0);
    let (x, uv, dv) = (vld1q_f32(g), vld1q_f32(u), vld1q_f32(d));
    let sig = vdivq_f32(one, vaddq_f32(one, exp4(vnegq_f32(x))));
    let t = vfmaq_f32(one, x, vsubq_f32(one, sig));
    vst1q_f32(g, vmulq_f32(vmulq_f32(dv, uv), vmulq_f32(sig, t)));
    vst1q_f32(u, vmulq_f32(dv, vmulq_f32(x, sig)));
}

/// See [`super::silu_mul_bwd_inplace`]. Safety: the CPU has NEON; `n` is at most each slice's
/// length.
#[target_feature(enable = "neon")]
pub(super) unsafe fn silu_mul_bwd(g: &mut [f32], u: &mut [f32], d: &[f32], n: usize) {
    let whole = n - n % 4;
    for i in (0..whole).step_by(4) {
        silu_mul_bwd4(
            g.as_mut_ptr().add(i),
            u.as_mut_ptr().add(i),
            d.as_ptr().add(i),
        );
    }
    if whole < n {
        let (mut tg, mut tu) = (padded(&g[whole..n], 0.0), padded(&u[whole..n], 0.0));
        let td = padded(&d[whole..n], 0.0);
        silu_mul_bwd4(tg.as_mut_ptr(), tu.as_mut_ptr(), td.as_ptr());
        g[whole..n].copy_from_slice(&tg[..n - whole]);
        u[whole..n].copy_from_slice(&tu[..n - whole]);
    }
}
