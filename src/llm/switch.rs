//! The switch between our fused kernels and candle's composed ops (`LLMBS_NO_FUSED`, and
//! per thread for A/B tests), with the input checks every fused CPU op shares. It sits below
//! `llm::kernels` and `llm::ops`, which both read it.

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

thread_local! {
    static FUSED_OVERRIDE: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// False when `LLMBS_NO_FUSED` is set (A/B measurements, debugging, and the fallback when the
/// fused kernels of a new GPU disagree with the composed ops; `LLMBS_NO_FUSED_CPU`, its old
/// name, too) or when this thread is inside [`with_fused`]`(false, ..)`. It switches off the
/// CPU and the CUDA fused kernels alike.
pub fn fused_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    FUSED_OVERRIDE.with(|o| o.get()).unwrap_or_else(|| {
        *ON.get_or_init(|| {
            ["LLMBS_NO_FUSED", "LLMBS_NO_FUSED_CPU"]
                .iter()
                .all(|v| std::env::var_os(v).is_none())
        })
    })
}

/// Runs `f` with the fused kernels switched on or off on this thread (the switch is read when
/// a forward builds its ops), whatever `LLMBS_NO_FUSED` says: fused-vs-composed tests and
/// A/B benchmarks in one process.
pub fn with_fused<R>(on: bool, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            FUSED_OVERRIDE.with(|o| o.set(self.0));
        }
    }
    let _restore = Restore(FUSED_OVERRIDE.with(|o| o.replace(Some(on))));
    f()
}

pub(crate) fn use_fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && fused_enabled()
}

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> Result<&'a [f32]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&s.as_slice::<f32>()?[a..b]),
        None => candle_core::bail!("{name}: input must be contiguous"),
    }
}
