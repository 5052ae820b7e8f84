//! A bf16 GEMM with f32 accumulation on AVX512-BF16 CPUs (VDPBF16PS: twice the multiply-adds
//! of an f32 FMA per instruction), for `--dtype bf16` training on the CPU: f32 tensors, bf16
//! products, the CPU counterpart of a GPU's bf16 autocast. The operands are rounded to bf16
//! (nearest-even) while they are packed, which a GEMM does anyway, so the rounding costs no
//! extra pass.
//!
//! Layout (BLIS-style): B is packed per `KC x NC` block into panels of `NR` columns whose
//! k-pairs are adjacent (`[k / 2][NR]` u32 pairs), A per row block into panels of `MR`
//! rows (`[k / 2][MR]` u32 pairs); the micro-kernel keeps an `MR x NR` tile of C in 24 zmm
//! registers and broadcasts one pair of A per row. Row blocks of C run in parallel.

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::View;

const MR: usize = 12;
pub(super) const NR: usize = 32;
/// k per block (even): the B micro-panel, KC / 2 * NR * 4 bytes = 16 KiB, stays in L1.
const KC: usize = 256;
/// At most this many MR-row panels per A block: 480 rows * KC / 2 * 4 bytes = 240 KiB, in L2.
const MAX_PANELS: usize = 40;
/// Columns per B block (a multiple of NR): KC / 2 * NC * 4 bytes = 2 MiB.
const NC: usize = 4096;

/// Whether this CPU has the instructions (checked once).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512bf16")
    })
}

/// f32 -> bf16 bits, round to nearest even (as VCVTNE2PS2BF16 does for finite values).
pub fn bf16_bits(x: f32) -> u32 {
    let b = x.to_bits();
    (b + 0x7FFF + ((b >> 16) & 1)) >> 16
}

/// `dst[m, n] = (accumulate ? dst : 0) + a[m, k] · b[k, n]` with bf16-rounded inputs. The
/// caller has checked the views against their slices and that [`available`] holds.
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (a, b): (View, View),
    parallel: bool,
) {
    // Row blocks: as few as fit L2, their count a multiple of the threads so none idles (96-row
    // blocks left one of two threads idle for a twelfth of every 1024-row GEMM).
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let panels = m.div_ceil(MR);
    let blocks = panels.div_ceil(threads * MAX_PANELS).max(1) * threads;
    let mc_max = panels.div_ceil(blocks).max(1) * MR;
    let kc_max = KC.min(k.next_multiple_of(2));
    let mut bpack = scratch(&BPACK, kc_max / 2 * NC.min(n.next_multiple_of(NR)));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kp = kc.div_ceil(2);
            let panels = nc.div_ceil(NR);
            let bp = &mut bpack[..panels * kp * NR];
            let pack = |(q, out): (usize, &mut [u32])| {
                let (j0, w) = (jc + q * NR, NR.min(nc - q * NR));
                // SAFETY: `available` was checked by the caller; reads stay inside `b`.
                unsafe { pack_b(b, pc, kc, j0, w, out) }
            };
            if parallel {
                bp.par_chunks_mut(kp * NR).enumerate().for_each(pack);
            } else {
                bp.chunks_mut(kp * NR).enumerate().for_each(pack);
            }
            let overwrite = pc == 0 && !accumulate;
            let bp = &*bp;
            let run = |(blk, c): (usize, &mut [f32])| {
                let i0 = blk * mc_max;
                let mc = mc_max.min(m - i0);
                let mut apack = scratch(&APACK, mc.div_ceil(MR) * kp * MR);
                // SAFETY: as above; C writes stay inside this block's rows of `dst`.
                unsafe {
                    pack_a(a, i0, mc, pc, kc, &mut apack);
                    block(&apack, bp, (mc, nc, kp), &mut c[jc..], dst_rs, overwrite);
                }
                APACK.with(|s| s.replace(std::mem::take(&mut apack)));
            };
            let row_blocks = m.div_ceil(mc_max);
            if parallel {
                dst.par_chunks_mut(mc_max * dst_rs)
                    .take(row_blocks)
                    .enumerate()
                    .for_each(run);
            } else {
                dst.chunks_mut(mc_max * dst_rs)
                    .take(row_blocks)
                    .enumerate()
                    .for_each(run);
            }
        }
    }
    BPACK.with(|s| s.replace(bpack));
}

thread_local! {
    // Packing buffers reused across calls: fresh ones of a few MiB each would be fresh pages
    // from the kernel on every GEMM.
    pub(super) static APACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
    pub(super) static BPACK: std::cell::RefCell<Vec<u32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This thread's buffer from `cell`, resized to `len` (contents unspecified: packing writes
/// every element it reads).
pub(super) fn scratch(
    cell: &'static std::thread::LocalKey<std::cell::RefCell<Vec<u32>>>,
    len: usize,
) -> Vec<u32> {
    let mut v = cell.with(|s| s.take());
    v.resize(len, 0);
    v
}

/// All micro-tiles of one `mc x nc` block of C.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block(
    apack: &[u32],
    bpack: &[u32],
    (mc, nc, kp): (usize, usize, usize),
    c: &mut [f32],
    c_rs: usize,
    overwrite: bool,
) {
    let mut tile = [0f32; MR * NR];
    for (q, bp) in bpack.chunks(kp * NR).enumerate() {
        let (j0, w) = (q * NR, NR.min(nc - q * NR));
        for (r, ap) in apack.chunks(kp * MR).enumerate() {
            let (i0, h) = (r * MR, MR.min(mc - r * MR));
            if h == MR && w == NR {
                kernel(
                    kp,
                    ap,
                    bp,
                    c[i0 * c_rs + j0..].as_mut_ptr(),
                    c_rs,
                    overwrite,
                );
            } else {
                kernel(kp, ap, bp, tile.as_mut_ptr(), NR, true);
                for i in 0..h {
                    let row = &mut c[(i0 + i) * c_rs + j0..][..w];
                    let t = &tile[i * NR..][..w];
                    if overwrite {
                        row.copy_from_slice(t);
                    } else {
                        row.iter_mut().zip(t).for_each(|(c, t)| *c += t);
                    }
                }
            }
        }
    }
}

/// C[MR, NR] (+)= A-panel · B-panel over `kp` k-pairs. `c` must have MR rows of NR writable
/// floats at stride `c_rs`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn kernel(kp: usize, a: &[u32], b: &[u32], c: *mut f32, c_rs: usize, overwrite: bool) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (ap, bp) = (a.as_ptr(), b.as_ptr());
    for p in 0..kp {
        let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR).cast()));
        let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(bp.add(p * NR + 16).cast()));
        for (r, acc) in acc.iter_mut().enumerate() {
            let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(p * MR + r) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], x, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], x, b1);
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        let row = c.add(r * c_rs);
        for (h, v) in acc.iter().enumerate() {
            let dst = row.add(16 * h);
            let v = if overwrite {
                *v
            } else {
                _mm512_add_ps(*v, _mm512_loadu_ps(dst))
            };
            _mm512_storeu_ps(dst, v);
        }
    }
}

/// The rounded bf16 bits of 16 floats, in the upper halves of 32-bit lanes.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn rounded(x: __m512) -> __m512i {
    let b = _mm512_castps_si512(x);
    let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
    _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb)
}

/// 16 bf16 pairs (lo from `lo[..n]`, hi from `hi[..n]`, zeros past `n` or without `hi`).
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn pair_rows(lo: *const f32, hi: Option<*const f32>, n: usize) -> __m512i {
    let mask: __mmask16 = if n >= 16 { 0xFFFF } else { (1u16 << n) - 1 };
    let l = _mm512_srli_epi32::<16>(rounded(_mm512_maskz_loadu_ps(mask, lo)));
    match hi {
        Some(hi) => {
            let h = rounded(_mm512_maskz_loadu_ps(mask, hi));
            let h = _mm512_and_si512(h, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
            _mm512_or_si512(l, h)
        }
        None => l,
    }
}

/// 16 bf16 pairs from `n <= 32` consecutive floats (pairs adjacent in memory), zero-padded.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pair_adjacent(src: *const f32, n: usize) -> __m512i {
    let m = |c: usize| -> __mmask16 {
        if c >= 16 {
            0xFFFF
        } else {
            (1u16 << c) - 1
        }
    };
    let x0 = _mm512_maskz_loadu_ps(m(n), src);
    let x1 = _mm512_maskz_loadu_ps(m(n.saturating_sub(16)), src.add(16.min(n)));
    std::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0))
}

/// Transposes a 16 x 16 matrix of 32-bit lanes held as 16 row vectors.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose16(r: &mut [__m512i; 16]) {
    let z = _mm512_setzero_si512();
    let mut t = [z; 16];
    for i in 0..8 {
        // per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3]
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    let mut u = [z; 16];
    for g in 0..4 {
        // u[4g + j], 128-bit lane L: rows 4g..4g+4 of column 4L + j
        let (a, b, c, d) = (t[4 * g], t[4 * g + 1], t[4 * g + 2], t[4 * g + 3]);
        u[4 * g] = _mm512_unpacklo_epi64(a, c);
        u[4 * g + 1] = _mm512_unpackhi_epi64(a, c);
        u[4 * g + 2] = _mm512_unpacklo_epi64(b, d);
        u[4 * g + 3] = _mm512_unpackhi_epi64(b, d);
    }
    for j in 0..4 {
        let x0 = _mm512_shuffle_i32x4::<0x88>(u[j], u[4 + j]);
        let x1 = _mm512_shuffle_i32x4::<0xDD>(u[j], u[4 + j]);
        let y0 = _mm512_shuffle_i32x4::<0x88>(u[8 + j], u[12 + j]);
        let y1 = _mm512_shuffle_i32x4::<0xDD>(u[8 + j], u[12 + j]);
        r[j] = _mm512_shuffle_i32x4::<0x88>(x0, y0);
        r[8 + j] = _mm512_shuffle_i32x4::<0xDD>(x0, y0);
        r[4 + j] = _mm512_shuffle_i32x4::<0x88>(x1, y1);
        r[12 + j] = _mm512_shuffle_i32x4::<0xDD>(x1, y1);
    }
}

/// The k-pairs `p0..p0 + 16` of `rows` k-contiguous vectors (row i at `base(i)`, `left`
/// floats of it from pair p0 on), transposed: `out(c)` receives the `rows` pairs of pair
/// p0 + c for each c below `(left + 1) / 2` (at most 16).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pairs_transposed(
    rows: usize,
    base: impl Fn(usize) -> *const f32,
    left: usize,
    mut out: impl FnMut(usize, __m512i),
) {
    let mut r = [_mm512_setzero_si512(); 16];
    for (i, r) in r.iter_mut().enumerate().take(rows) {
        *r = pair_adjacent(base(i), left.min(32));
    }
    transpose16(&mut r);
    for (c, v) in r.iter().enumerate().take(left.div_ceil(2).min(16)) {
        out(c, *v);
    }
}

/// Packs `b[k0..k0 + kc, j0..j0 + w]` as `[kc / 2][NR]` pairs (zero-padded) into `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
pub(super) unsafe fn pack_b(b: View, k0: usize, kc: usize, j0: usize, w: usize, out: &mut [u32]) {
    let kp = kc.div_ceil(2);
    let ptr = b.data.as_ptr();
    if b.cs == 1 {
        for p in 0..kp {
            let lo = ptr.add((k0 + 2 * p) * b.rs + j0);
            let hi = (2 * p + 1 < kc).then(|| ptr.add((k0 + 2 * p + 1) * b.rs + j0));
            for h in 0..NR / 16 {
                let n = w.saturating_sub(16 * h).min(16);
                let v = if n == 0 {
                    _mm512_setzero_si512()
                } else {
                    pair_rows(lo.add(16 * h), hi.map(|x| x.add(16 * h)), n)
                };
                _mm512_storeu_si512(out.as_mut_ptr().add(p * NR + 16 * h).cast(), v);
            }
        }
    } else if b.rs == 1 {
        let o = out.as_mut_ptr();
        for h in 0..NR / 16 {
            let cols = w.saturating_sub(16 * h).min(16);
            for p0 in (0..kp).step_by(16) {
                let col = |i: usize| ptr.add((j0 + 16 * h + i) * b.cs + k0 + 2 * p0);
                pairs_transposed(cols, col, kc - 2 * p0, |c, v| {
                    _mm512_storeu_si512(o.add((p0 + c) * NR + 16 * h).cast(), v)
                });
            }
        }
    } else {
        for p in 0..kp {
            for jj in 0..NR {
                out[p * NR + jj] = pair_at(b, (k0 + 2 * p, kc - 2 * p), j0 + jj, jj < w, false);
            }
        }
    }
}

/// Packs `a[i0..i0 + mc, k0..k0 + kc]` as panels of `[kc / 2][MR]` pairs into `out`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a(a: View, i0: usize, mc: usize, k0: usize, kc: usize, out: &mut [u32]) {
    let kp = kc.div_ceil(2);
    let ptr = a.data.as_ptr();
    for (r, panel) in out.chunks_mut(kp * MR).enumerate() {
        let (r0, h) = (i0 + r * MR, MR.min(mc - r * MR));
        if a.cs == 1 {
            let o = panel.as_mut_ptr();
            let keep: __mmask16 = (1u16 << MR) - 1;
            for p0 in (0..kp).step_by(16) {
                let row = |i: usize| ptr.add((r0 + i) * a.rs + k0 + 2 * p0);
                pairs_transposed(h, row, kc - 2 * p0, |c, v| {
                    _mm512_mask_storeu_epi32(o.add((p0 + c) * MR).cast(), keep, v)
                });
            }
        } else if a.rs == 1 {
            for p in 0..kp {
                let lo = ptr.add((k0 + 2 * p) * a.cs + r0);
                let hi = (2 * p + 1 < kc).then(|| ptr.add((k0 + 2 * p + 1) * a.cs + r0));
                let v = pair_rows(lo, hi, h);
                let keep: __mmask16 = (1u16 << MR) - 1;
                _mm512_mask_storeu_epi32(panel.as_mut_ptr().add(p * MR).cast(), keep, v);
            }
        } else {
            for p in 0..kp {
                for ii in 0..MR {
                    panel[p * MR + ii] =
                        pair_at(a, (k0 + 2 * p, kc - 2 * p), r0 + ii, ii < h, true);
                }
            }
        }
    }
}

/// The bf16 pair (k, k + 1) at the other index `x` of a view (`a_side`: x is the row), zero
/// when `!real` or past the block's `left` k values.
pub(super) fn pair_at(
    v: View,
    (k, left): (usize, usize),
    x: usize,
    real: bool,
    a_side: bool,
) -> u32 {
    if !real {
        return 0;
    }
    let at = |kk: usize| {
        let i = if a_side {
            x * v.rs + kk * v.cs
        } else {
            kk * v.rs + x * v.cs
        };
        bf16_bits(v.data[i])
    };
    let lo = at(k);
    let hi = if left > 1 { at(k + 1) } else { 0 };
    lo | (hi << 16)
}

/// A GEMM with this file's signature (`gemm` here, `amx::gemm`).
#[cfg(test)]
pub(super) type GemmFn = fn((usize, usize, usize), &mut [f32], usize, bool, (View, View), bool);

/// f32 -> bf16 -> f64, as the bf16 GEMMs round their operands.
#[cfg(test)]
pub(super) fn bf16_round(x: f32) -> f64 {
    f32::from_bits(bf16_bits(x) << 16) as f64
}

/// Asserts that `gemm` equals an f64 GEMM of the bf16-rounded inputs (only the summation
/// order differs) for each of `sizes`, every operand layout (a as [m, k] rows or the transpose
/// of a [k, m] buffer; the same for b), with and without accumulation: the shared check of
/// this file's kernel and of `amx`.
#[cfg(test)]
pub(super) fn assert_equals_rounded_product(
    gemm: GemmFn,
    sizes: &[(usize, usize, usize)],
    seed: u64,
) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for &(m, n, k) in sizes {
        let av: Vec<f32> = (0..m * k).map(|_| rng.random_range(-1.0..1.0)).collect();
        let bv: Vec<f32> = (0..k * n).map(|_| rng.random_range(-1.0..1.0)).collect();
        for (a_t, b_t) in [(false, false), (true, false), (false, true), (true, true)] {
            let a = if a_t {
                View::t(&av, m)
            } else {
                View::rows(&av, k)
            };
            let b = if b_t {
                View::t(&bv, k)
            } else {
                View::rows(&bv, n)
            };
            let get = |v: &View, i: usize, j: usize| v.data[i * v.rs + j * v.cs];
            for accumulate in [false, true] {
                let mut c = vec![0.5f32; m * n];
                gemm((m, n, k), &mut c, n, accumulate, (a, b), m % 2 == 1);
                let base = if accumulate { 0.5 } else { 0.0 };
                let mut worst = 0f64;
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = base
                            + (0..k)
                                .map(|l| bf16_round(get(&a, i, l)) * bf16_round(get(&b, l, j)))
                                .sum::<f64>();
                        worst = worst.max((c[i * n + j] as f64 - want).abs());
                    }
                }
                let case = format!("{m}x{n}x{k} a_t {a_t} b_t {b_t} acc {accumulate}");
                assert!(worst < 1e-5 * k as f64, "{case}: {worst}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ops::skip::{skip_unless, Unit};

    #[test]
    fn transpose16_transposes() {
        if skip_unless(Unit::Avx512Bf16, "bgemm::transpose16_transposes") {
            return;
        }
        let m: Vec<u32> = (0..256).collect();
        // SAFETY: the CPU has AVX-512 (checked above); loads and stores stay in `m` and `t`.
        let t = unsafe {
            let mut r = [_mm512_setzero_si512(); 16];
            for (i, r) in r.iter_mut().enumerate() {
                *r = _mm512_loadu_si512(m.as_ptr().add(16 * i).cast());
            }
            transpose16(&mut r);
            let mut t = vec![0u32; 256];
            for (i, r) in r.iter().enumerate() {
                _mm512_storeu_si512(t.as_mut_ptr().add(16 * i).cast(), *r);
            }
            t
        };
        for i in 0..16 {
            for j in 0..16 {
                assert_eq!(t[i * 16 + j], m[j * 16 + i], "({i}, {j})");
            }
        }
    }

    /// The bf16 GEMM equals an f64 GEMM of the bf16-rounded inputs (only the summation order
    /// differs), for every operand layout and ragged sizes.
    #[test]
    fn bf16_gemm_equals_the_product_of_rounded_inputs() {
        if skip_unless(
            Unit::Avx512Bf16,
            "bgemm::bf16_gemm_equals_the_product_of_rounded_inputs",
        ) {
            return;
        }
        let sizes = [
            (1, 1, 1),
            (13, 33, 7),
            (97, 70, 300),
            (200, 4100, 33),
            (12, 32, 512),
        ];
        assert_equals_rounded_product(gemm, &sizes, 7);
    }
}
