//! GEMM timings: the probe `--dtype auto` chooses the training dtype by, and the layer-shaped
//! GEMM of `llmbs bench llm --workload gemm`, by kernel.

use candle_core::Result;

use super::{amx_available, bf16_gemm, bgemm, sgemm, Gemm, View};

/// GFLOP/s of the training GEMM on this CPU in f32 and with bf16 inputs (None where the CPU
/// has no AVX512-BF16), the best of a few runs on a decoder-layer shape (1024 tokens x 576 ->
/// 1536, SmolLM2's MLP): what `--dtype auto` chooses the faster CPU path by. Takes ~0.2 s.
pub fn probe_cpu_gemm() -> Result<(f64, Option<f64>)> {
    let (m, k, n) = (1024usize, 576usize, 1536usize);
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i % 97) as f32 - 48.0) / 97.0)
        .collect();
    let b: Vec<f32> = (0..k * n)
        .map(|i| ((i % 89) as f32 - 44.0) / 89.0)
        .collect();
    let mut c = vec![0f32; m * n];
    let mut rate = |mode: Gemm| -> Result<f64> {
        let mut best = f64::INFINITY;
        for _ in 0..6 {
            let t = std::time::Instant::now();
            sgemm(
                (m, n, k),
                &mut c,
                n,
                false,
                View::rows(&a, k),
                View::rows(&b, n),
                mode,
            )?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(2.0 * (m * n * k) as f64 / best / 1e9)
    };
    let f32_rate = rate(Gemm::Parallel)?;
    let bf16_rate = match bgemm::available() {
        true => Some(rate(Gemm::Bf16)?),
        false => None,
    };
    Ok((f32_rate, bf16_rate))
}

/// Seconds per `a [m, k] · b^T` (b stored `[n, k]`, as a layer's forward) for each of `runs`
/// timed runs after one warm-up, by `kernel`: `f32`, `avx512-bf16` (the VDPBF16PS kernel) or
/// `amx` (tiles) (`llmbs bench llm --workload gemm`).
pub fn time_gemm((m, n, k): (usize, usize, usize), kernel: &str, runs: usize) -> Result<Vec<f64>> {
    let ok = match kernel {
        "f32" => true,
        "avx512-bf16" => bgemm::available(),
        "amx" => cfg!(target_arch = "x86_64") && amx_available(),
        other => candle_core::bail!("GEMM kernel {other}: expected f32, avx512-bf16 or amx"),
    };
    if !ok {
        candle_core::bail!("this CPU cannot run the {kernel} GEMM")
    }
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 7919) % 997) as f32 / 997.0 - 0.5)
        .collect();
    let b: Vec<f32> = (0..n * k)
        .map(|i| ((i * 104729) % 991) as f32 / 991.0 - 0.5)
        .collect();
    let mut c = vec![0f32; m * n];
    let mut out = Vec::with_capacity(runs);
    for r in 0..=runs {
        let (av, bv) = (View::rows(&a, k), View::t(&b, k));
        let t = std::time::Instant::now();
        match kernel {
            "f32" => sgemm((m, n, k), &mut c, n, false, av, bv, Gemm::Parallel)?,
            "avx512-bf16" => bgemm::gemm((m, n, k), &mut c, n, false, (av, bv), true),
            _ => bf16_gemm((m, n, k), &mut c, n, false, (av, bv), true),
        }
        if r > 0 {
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}
