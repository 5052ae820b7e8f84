//! Vectorised exp-based kernels: a training step takes ~260 M exponentials (SiLU forward and
//! backward, the attention softmax, the vocabulary softmax), and glibc's scalar `expf` made
//! them ~5% of a step.
//!
//! Paths ([`Path`]): AVX-512F (16 lanes), AVX2 + FMA (8 lanes), NEON on aarch64 (4 lanes) and
//! scalar. The best one the CPU has runs unless `LLMBS_SIMD=scalar|avx2|avx512|neon|auto`
//! forces one (read once); a forced path the CPU lacks falls back to the best it has, with a
//! warning. [`simd_path`] names the path that runs.
//!
//! exp: Cephes' single-precision polynomial on x - n ln 2 (relative error ~1e-7), scaled by
//! 2^n; inputs below -104 give 0 (as `f32::exp` does, up to denormals), NaN gives NaN.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(test)]
mod tests;

use std::sync::OnceLock;

/// The constants every vector path shares.
mod cephes {
    /// The clamp: e^88.72 is just below f32::MAX, e^-104 rounds to 0.
    pub const HI: f32 = 88.72;
    pub const LO: f32 = -104.0;
    /// ln 2 in two parts, so that n * LN2_HI is exact.
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    /// exp(r) ~ 1 + r + r^2 (P[0] r^5 + ... + P[5]), highest degree first.
    pub const P: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
}

/// One implementation of the kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Scalar,
    Avx2,
    Avx512,
    Neon,
}

impl Path {
    pub const ALL: [Path; 4] = [Path::Scalar, Path::Avx2, Path::Avx512, Path::Neon];

    /// The `LLMBS_SIMD` value that selects it.
    pub fn name(self) -> &'static str {
        match self {
            Path::Scalar => "scalar",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
            Path::Neon => "neon",
        }
    }

    /// Whether this build on this CPU can run it.
    pub fn supported(self) -> bool {
        match self {
            Path::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            Path::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "aarch64")]
            Path::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            _ => false,
        }
    }

    /// The fastest supported path.
    pub fn best() -> Path {
        [Path::Avx512, Path::Avx2, Path::Neon]
            .into_iter()
            .find(|p| p.supported())
            .unwrap_or(Path::Scalar)
    }

    /// The path `LLMBS_SIMD=value` selects here, and a warning when that is not what it asked.
    pub fn from_setting(value: Option<&str>) -> (Path, Option<String>) {
        let best = Path::best();
        let v = match value.map(str::trim) {
            None | Some("") | Some("auto") => return (best, None),
            Some(v) => v,
        };
        match Path::ALL.into_iter().find(|p| p.name() == v) {
            Some(p) if p.supported() => (p, None),
            Some(p) => (
                best,
                Some(format!(
                    "LLMBS_SIMD={}: this CPU or build lacks it; using {}",
                    p.name(),
                    best.name()
                )),
            ),
            None => (
                best,
                Some(format!(
                    "LLMBS_SIMD={v}: expected scalar, avx2, avx512, neon or auto; using {}",
                    best.name()
                )),
            ),
        }
    }
}

/// The path the kernels run on (see the module doc), chosen on first use.
pub fn path() -> Path {
    static PATH: OnceLock<Path> = OnceLock::new();
    *PATH.get_or_init(|| {
        let value = std::env::var("LLMBS_SIMD").ok();
        let (p, warning) = Path::from_setting(value.as_deref());
        if let Some(w) = warning {
            eprintln!("warning: {w}");
        }
        p
    })
}

/// The name of the path the kernels run on: `scalar`, `avx2`, `avx512` or `neon`.
pub fn simd_path() -> &'static str {
    path().name()
}

/// `x[i] = exp(x[i] - shift)`; returns the sum of the results.
pub fn exp_shift_sum(x: &mut [f32], shift: f32) -> f32 {
    exp_shift_sum_with(path(), x, shift)
}

/// [`exp_shift_sum`] on `path` (scalar where the CPU lacks it).
pub(crate) fn exp_shift_sum_with(path: Path, x: &mut [f32], shift: f32) -> f32 {
    match path {
        // SAFETY (each arm): the path's instructions are present; accesses stay inside `x`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if path.supported() => unsafe { avx512::exp_shift_sum(x, shift) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if path.supported() => unsafe { avx2::exp_shift_sum(x, shift) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon if path.supported() => unsafe { neon::exp_shift_sum(x, shift) },
        _ => {
            let mut sum = 0f32;
            for v in x.iter_mut() {
                *v = (*v - shift).exp();
                sum += *v;
            }
            sum
        }
    }
}

/// The largest element, NaN skipped (as `f32::max`); -inf for an empty slice.
pub fn max(x: &[f32]) -> f32 {
    max_with(path(), x)
}

/// [`max`] on `path` (scalar where the CPU lacks it).
pub(crate) fn max_with(path: Path, x: &[f32]) -> f32 {
    match path {
        // SAFETY (each arm): the path's instructions are present; loads stay inside `x`.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if path.supported() => unsafe { avx512::max(x) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if path.supported() => unsafe { avx2::max(x) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon if path.supported() => unsafe { neon::max(x) },
        _ => x.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    }
}

/// `out = silu(g) * u`.
pub fn silu_mul(g: &[f32], u: &[f32], out: &mut [f32]) {
    silu_mul_with(path(), g, u, out)
}

/// [`silu_mul`] on `path` (scalar where the CPU lacks it).
pub(crate) fn silu_mul_with(path: Path, g: &[f32], u: &[f32], out: &mut [f32]) {
    let n = out.len().min(g.len()).min(u.len());
    match path {
        // SAFETY (each arm): the path's instructions are present; every access is to the
        // first n elements.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if path.supported() => unsafe { avx512::silu_mul(g, u, out, n) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if path.supported() => unsafe { avx2::silu_mul(g, u, out, n) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon if path.supported() => unsafe { neon::silu_mul(g, u, out, n) },
        _ => {
            for i in 0..n {
                out[i] = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            }
        }
    }
}

/// The gradients of `silu(g) * u` given the output gradient `d`, written over `g` (dg) and
/// `u` (du): dg = d * u * sig * (1 + g * (1 - sig)), du = d * silu(g).
pub fn silu_mul_bwd_inplace(g: &mut [f32], u: &mut [f32], d: &[f32]) {
    silu_mul_bwd_with(path(), g, u, d)
}

/// [`silu_mul_bwd_inplace`] on `path` (scalar where the CPU lacks it).
pub(crate) fn silu_mul_bwd_with(path: Path, g: &mut [f32], u: &mut [f32], d: &[f32]) {
    let n = g.len().min(u.len()).min(d.len());
    match path {
        // SAFETY (each arm): the path's instructions are present; every access is to the
        // first n elements.
        #[cfg(target_arch = "x86_64")]
        Path::Avx512 if path.supported() => unsafe { avx512::silu_mul_bwd(g, u, d, n) },
        #[cfg(target_arch = "x86_64")]
        Path::Avx2 if path.supported() => unsafe { avx2::silu_mul_bwd(g, u, d, n) },
        #[cfg(target_arch = "aarch64")]
        Path::Neon if path.supported() => unsafe { neon::silu_mul_bwd(g, u, d, n) },
        _ => {
            for i in 0..n {
                let (x, up) = (g[i], u[i]);
                let sig = 1.0 / (1.0 + (-x).exp());
                g[i] = d[i] * up * sig * (1.0 + x * (1.0 - sig));
                u[i] = d[i] * x * sig;
            }
        }
    }
}
