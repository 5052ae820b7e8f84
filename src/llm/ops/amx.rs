//! A bf16 GEMM on Intel AMX tiles for `--dtype bf16` CPU training (the CPU counterpart of a
//! GPU's bf16 autocast, as [`super::bgemm`]), where the CPU has AMX-BF16 (Xeon Sapphire Rapids
//! and later). One TDPBF16PS does a 16 x 16 f32 tile += [16 x 32] bf16 · [32 x 16] bf16, 8,192
//! multiply-adds, where one VDPBF16PS does 32: on Xeons that issue VDPBF16PS at half the FMA
//! rate (so bgemm's bf16 is no faster than f32 there, `docs/perf.md`), this is the path that
//! makes bf16 pay. Same contract and rounding as bgemm: operands rounded to bf16 (nearest-even)
//! while packed, f32 accumulation.
//!
//! Layout: B is packed exactly as bgemm packs it (`[k / 2][32]` u32 pairs per 32-column panel,
//! which is two B tiles of 16 k-pairs x 16 columns at a 128-byte stride), k padded to a
//! multiple of 32 with zeros; A per 32-row panel as `[32][k / 2]` pairs (two A tiles of 16
//! rows). The micro-kernel holds a 32 x 32 block of C in tmm0-3, A in tmm4-5, B in tmm6-7.
//! Linux gives a process the AMX register state only on request (arch_prctl
//! ARCH_REQ_XCOMP_PERM), made once in [`available`].

use std::arch::asm;
use std::arch::x86_64::*;

use rayon::prelude::*;

use super::bgemm::{self, NR};
use super::View;

/// Rows of A per panel: two 16-row tiles.
const MR: usize = 32;
/// k per block (a multiple of 32): the B micro-panel, KC / 2 * NR * 4 bytes = 64 KiB, in L2;
/// fewer k blocks (each reloads C and repacks A) beat an L1-sized panel (step 1.47x f32 at
/// 1024, 1.40x at 512, 1.27x at 2048 with NC 512; `scripts/bench-bf16.sh`).
const KC: usize = 1024;
/// At most this many MR-row panels per A block: 256 rows * KC / 2 * 4 bytes = 512 KiB, in L2.
const MAX_PANELS: usize = 8;
/// Columns per B block (a multiple of NR): KC / 2 * NC * 4 bytes = 2 MiB.
const NC: usize = 1024;

/// Whether the AMX path runs here: AVX512-BF16 for the packing, AMX-TILE and AMX-BF16 in
/// CPUID, and the kernel granted the tile state. `LLMBS_NO_AMX=1` turns it off (A/B runs).
pub fn available() -> bool {
    static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OK.get_or_init(|| {
        std::env::var_os("LLMBS_NO_AMX").is_none()
            && bgemm::available()
            && cpu_has_amx_bf16()
            && request_tile_state()
    })
}

fn cpu_has_amx_bf16() -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
    let l = __cpuid_count(7, 0);
    (l.edx >> 22) & 1 == 1 && (l.edx >> 24) & 1 == 1
}

#[cfg(target_os = "linux")]
fn request_tile_state() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: u64 = 0x1023;
    const XFEATURE_XTILEDATA: u64 = 18;
    let ret: i64;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM) only widens the xsave features this process may
    // use; the syscall instruction clobbers rcx and r11, declared here.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_state() -> bool {
    false
}

/// The LDTILECFG block: palette 1, eight tiles of 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = TileConfig {
    palette: 1,
    start_row: 0,
    reserved: [0; 14],
    colsb: [64, 64, 64, 64, 64, 64, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0],
    rows: [16, 16, 16, 16, 16, 16, 16, 16, 0, 0, 0, 0, 0, 0, 0, 0],
};

/// Configures this thread's tiles; [`release`] hands them back.
pub(super) unsafe fn configure() {
    asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
}

pub(super) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}

/// `dst[m, n] = (accumulate ? dst : 0) + a[m, k] · b[k, n]` with bf16-rounded inputs, as
/// [`bgemm::gemm`]'s; the caller has checked the views against their slices and [`available`].
pub(crate) fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    (a, b): (View, View),
    parallel: bool,
) {
    let threads = if parallel {
        rayon::current_num_threads().max(1)
    } else {
        1
    };
    let panels = m.div_ceil(MR);
    let blocks = panels.div_ceil(threads * MAX_PANELS).max(1) * threads;
    let mc_max = panels.div_ceil(blocks).max(1) * MR;
    let kp_max = KC.min(k.next_multiple_of(32)) / 2;
    let mut bpack = bgemm::scratch(&bgemm::BPACK, kp_max * NC.min(n.next_multiple_of(NR)));
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        for pc in (0..k).step_by(KC) {
            let kc = KC.min(k - pc);
            let kp = kc.div_ceil(2);
            let kp16 = kp.next_multiple_of(16);
            let bp = &mut bpack[..nc.div_ceil(NR) * kp16 * NR];
            let pack = |(q, out): (usize, &mut [u32])| {
                let (j0, w) = (jc + q * NR, NR.min(nc - q * NR));
                let (body, pad) = out.split_at_mut(kp * NR);
                // SAFETY: `available` was checked by the caller; reads stay inside `b`.
                unsafe { bgemm::pack_b(b, pc, kc, j0, w, body) }
                pad.fill(0);
            };
            if parallel {
                bp.par_chunks_mut(kp16 * NR).enumerate().for_each(pack);
            } else {
                bp.chunks_mut(kp16 * NR).enumerate().for_each(pack);
            }
            let overwrite = pc == 0 && !accumulate;
            let bp = &*bp;
            let run = |(blk, c): (usize, &mut [f32])| {
                let i0 = blk * mc_max;
                let mc = mc_max.min(m - i0);
                let mut apack = bgemm::scratch(&bgemm::APACK, mc.div_ceil(MR) * kp16 * MR);
                // SAFETY: as above; C reads and writes stay inside this block's rows of `dst`.
                unsafe {
                    pack_a(a, (i0, mc), (pc, kc, kp16), &mut apack);
                    block(&apack, bp, (mc, nc, kp16), &mut c[jc..], dst_rs, overwrite);
                }
                bgemm::APACK.with(|s| s.replace(std::mem::take(&mut apack)));
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
    bgemm::BPACK.with(|s| s.replace(bpack));
}

/// All micro-tiles of one `mc x nc` block of C (`kp16` k-pairs, a multiple of 16).
unsafe fn block(
    apack: &[u32],
    bpack: &[u32],
    (mc, nc, kp16): (usize, usize, usize),
    c: &mut [f32],
    c_rs: usize,
    overwrite: bool,
) {
    configure();
    let mut tile = [0f32; MR * NR];
    for (q, bp) in bpack.chunks(kp16 * NR).enumerate() {
        let (j0, w) = (q * NR, NR.min(nc - q * NR));
        for (r, ap) in apack.chunks(kp16 * MR).enumerate() {
            let (i0, h) = (r * MR, MR.min(mc - r * MR));
            if h == MR && w == NR {
                let c = c[i0 * c_rs + j0..].as_mut_ptr();
                kernel(kp16, ap.as_ptr(), bp.as_ptr(), c, c_rs, overwrite);
                continue;
            }
            kernel(kp16, ap.as_ptr(), bp.as_ptr(), tile.as_mut_ptr(), NR, true);
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
    release();
}

/// C[32, 32] (+)= A-panel · B-panel over `kp16` k-pairs; `c` must have 32 rows of 32
/// writable floats at stride `c_rs`, and the tiles must be configured.
unsafe fn kernel(kp16: usize, a: *const u32, b: *const u32, c: *mut f32, c_rs: usize, zero: bool) {
    let cs = c_rs * 4;
    let (c1, c2, c3) = (c.add(16), c.add(16 * c_rs), c.add(16 * c_rs + 16));
    if zero {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    } else {
        asm!(
            "tileloadd tmm0, [{c0} + {s}*1]",
            "tileloadd tmm1, [{c1} + {s}*1]",
            "tileloadd tmm2, [{c2} + {s}*1]",
            "tileloadd tmm3, [{c3} + {s}*1]",
            c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) cs,
            options(nostack, readonly)
        );
    }
    let sa = kp16 * 4;
    for p0 in (0..kp16).step_by(16) {
        asm!(
            "tileloadd tmm4, [{a0} + {sa}*1]",
            "tileloadd tmm5, [{a1} + {sa}*1]",
            "tileloadd tmm6, [{b0} + {sb}*1]",
            "tileloadd tmm7, [{b1} + {sb}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a.add(p0),
            a1 = in(reg) a.add(16 * kp16 + p0),
            b0 = in(reg) b.add(p0 * NR),
            b1 = in(reg) b.add(p0 * NR + 16),
            sa = in(reg) sa,
            sb = in(reg) NR * 4,
            options(nostack, readonly)
        );
    }
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        c0 = in(reg) c, c1 = in(reg) c1, c2 = in(reg) c2, c3 = in(reg) c3, s = in(reg) cs,
        options(nostack)
    );
}

/// Packs `a[i0..i0 + mc, k0..k0 + kc]` as panels of `[MR][kp16]` pairs (zero-padded in both).
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn pack_a(
    a: View,
    (i0, mc): (usize, usize),
    (k0, kc, kp16): (usize, usize, usize),
    out: &mut [u32],
) {
    let ptr = a.data.as_ptr();
    for (r, panel) in out.chunks_mut(MR * kp16).enumerate() {
        let (r0, h) = (i0 + r * MR, MR.min(mc - r * MR));
        let o = panel.as_mut_ptr();
        if a.cs == 1 {
            for i in 0..MR {
                for p0 in (0..kp16).step_by(16) {
                    let left = kc.saturating_sub(2 * p0);
                    let v = if i < h && left > 0 {
                        let src = ptr.add((r0 + i) * a.rs + k0 + 2 * p0);
                        bgemm::pair_adjacent(src, left.min(32))
                    } else {
                        _mm512_setzero_si512()
                    };
                    _mm512_storeu_si512(o.add(i * kp16 + p0).cast(), v);
                }
            }
        } else if a.rs == 1 {
            for g in 0..MR / 16 {
                let rows = h.saturating_sub(16 * g).min(16);
                for p0 in (0..kp16).step_by(16) {
                    let mut t = [_mm512_setzero_si512(); 16];
                    if rows > 0 {
                        for (c, t) in t.iter_mut().enumerate() {
                            let kk = 2 * (p0 + c);
                            if kk >= kc {
                                break;
                            }
                            let col = |x: usize| ptr.add((k0 + x) * a.cs + r0 + 16 * g);
                            *t =
                                bgemm::pair_rows(col(kk), (kk + 1 < kc).then(|| col(kk + 1)), rows);
                        }
                        bgemm::transpose16(&mut t);
                    }
                    for (i, t) in t.iter().enumerate() {
                        _mm512_storeu_si512(o.add((16 * g + i) * kp16 + p0).cast(), *t);
                    }
                }
            }
        } else {
            for i in 0..MR {
                for p in 0..kp16 {
                    panel[i * kp16 + p] = match 2 * p < kc {
                        true => bgemm::pair_at(a, (k0 + 2 * p, kc - 2 * p), r0 + i, i < h, true),
                        false => 0,
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::ops::skip::{skip_unless, Unit};
    use bgemm::bf16_round;

    /// The AMX GEMM equals an f64 GEMM of the bf16-rounded inputs for every operand layout,
    /// ragged sizes and several k blocks.
    #[test]
    fn amx_gemm_equals_the_product_of_rounded_inputs() {
        if skip_unless(
            Unit::Amx,
            "amx::amx_gemm_equals_the_product_of_rounded_inputs",
        ) {
            return;
        }
        let sizes = [
            (1, 1, 1),
            (13, 33, 7),
            (97, 70, 300),
            (40, 2100, 33),
            (32, 32, 1100),
            (300, 64, 576),
        ];
        bgemm::assert_equals_rounded_product(gemm, &sizes, 11);
    }

    /// A strided view (neither stride 1) takes the scalar packing and still agrees.
    #[test]
    fn amx_gemm_packs_strided_views() {
        if skip_unless(Unit::Amx, "amx::amx_gemm_packs_strided_views") {
            return;
        }
        let (m, n, k) = (20, 40, 70);
        let av: Vec<f32> = (0..m * k * 2)
            .map(|i| ((i % 13) as f32 - 6.0) / 7.0)
            .collect();
        let bv: Vec<f32> = (0..k * n).map(|i| ((i % 11) as f32 - 5.0) / 9.0).collect();
        let a = View {
            data: &av,
            rs: 2 * k,
            cs: 2,
        };
        let b = View::rows(&bv, n);
        let mut c = vec![0f32; m * n];
        gemm((m, n, k), &mut c, n, false, (a, b), true);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|l| bf16_round(av[i * 2 * k + 2 * l]) * bf16_round(bv[l * n + j]))
                    .sum();
                assert!((c[i * n + j] as f64 - want).abs() < 1e-4, "({i}, {j})");
            }
        }
    }
}
