//! One-core peak rates of the CPU's multiply-add instructions (VFMADD231PS, VDPBF16PS,
//! TDPBF16PS): the ceiling each GEMM kernel of `ops` works under, and the reason bf16 on the
//! VDPBF16PS kernel loses to f32 on some Xeons (docs/perf.md, "bf16 on the CPU").

use std::arch::asm;

use super::amx::{self, configure, release};
use super::bgemm;

/// Peak GFLOP/s of one thread issuing nothing but independent multiply-adds: VFMADD231PS zmm
/// (f32), VDPBF16PS zmm (bf16 pairs) where the CPU has AVX512-BF16, TDPBF16PS where it has
/// AMX. What a GEMM kernel of each kind can at best reach on one core (`llmbs bench llm
/// --workload gemm`).
pub fn instruction_peaks() -> (f64, Option<f64>, Option<f64>) {
    let time = |f: &dyn Fn(u64), flops_per_iter: f64| {
        let iters = 2_000_000u64;
        f(iters / 10);
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = std::time::Instant::now();
            f(iters);
            best = best.min(t.elapsed().as_secs_f64());
        }
        flops_per_iter * iters as f64 / best / 1e9
    };
    if !std::is_x86_feature_detected!("avx512f") {
        return (f64::NAN, None, None);
    }
    // SAFETY (all three): the instructions' CPU features were checked; the loops touch no memory.
    let fma = time(&|n| unsafe { fma_loop(n) }, 12.0 * 32.0);
    let dp = bgemm::available().then(|| time(&|n| unsafe { dpbf16_loop(n) }, 12.0 * 64.0));
    let tile =
        amx::available().then(|| time(&|n| unsafe { amx_loop(n / 16) }, 4.0 * 16384.0 / 16.0));
    (fma, dp, tile)
}

macro_rules! twelve {
    ($op:literal) => {
        concat!(
            $op,
            " zmm0, zmm30, zmm31\n",
            $op,
            " zmm1, zmm30, zmm31\n",
            $op,
            " zmm2, zmm30, zmm31\n",
            $op,
            " zmm3, zmm30, zmm31\n",
            $op,
            " zmm4, zmm30, zmm31\n",
            $op,
            " zmm5, zmm30, zmm31\n",
            $op,
            " zmm6, zmm30, zmm31\n",
            $op,
            " zmm7, zmm30, zmm31\n",
            $op,
            " zmm8, zmm30, zmm31\n",
            $op,
            " zmm9, zmm30, zmm31\n",
            $op,
            " zmm10, zmm30, zmm31\n",
            $op,
            " zmm11, zmm30, zmm31\n",
        )
    };
}

#[target_feature(enable = "avx512f")]
unsafe fn fma_loop(n: u64) {
    asm!(
        "vxorps zmm30, zmm30, zmm30",
        "vxorps zmm31, zmm31, zmm31",
        "2:",
        twelve!("vfmadd231ps"),
        "dec {n}",
        "jnz 2b",
        n = inout(reg) n => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm30") _, out("zmm31") _,
        options(nostack, nomem)
    );
}

#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_loop(n: u64) {
    asm!(
        "vxorps zmm30, zmm30, zmm30",
        "vxorps zmm31, zmm31, zmm31",
        "2:",
        twelve!("vdpbf16ps"),
        "dec {n}",
        "jnz 2b",
        n = inout(reg) n => _,
        out("zmm0") _, out("zmm1") _, out("zmm2") _, out("zmm3") _, out("zmm4") _,
        out("zmm5") _, out("zmm6") _, out("zmm7") _, out("zmm8") _, out("zmm9") _,
        out("zmm10") _, out("zmm11") _, out("zmm30") _, out("zmm31") _,
        options(nostack, nomem)
    );
}

/// 16 x `n` TDPBF16PS into four independent accumulator tiles.
unsafe fn amx_loop(n: u64) {
    configure();
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "tilezero tmm4",
        "tilezero tmm5",
        "tilezero tmm6",
        "tilezero tmm7",
        "2:",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) n.max(1) => _,
        options(nostack, nomem)
    );
    release();
}
