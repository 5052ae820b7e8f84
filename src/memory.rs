//! Peak memory of a run, for the train/embed/bench reports: the process's resident high-water
//! mark (`VmHWM`, Linux) and, on CUDA, the device memory pool's high-water mark.
//!
//! Why these two: on the CPU every tensor lives in the process's resident set, so `VmHWM` is
//! the peak a machine must have; on CUDA candle allocates through cudarc's stream-ordered
//! allocator (`cuMemAllocAsync`) from the device's default pool, whose `USED_MEM_HIGH`
//! attribute is the peak of live tensor bytes (free-list reuse included, other processes not).

use candle_core::Device;
use serde::{Deserialize, Serialize};

/// Peak memory figures; `None` where the platform does not tell.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct PeakMemory {
    /// Process resident-set high-water mark (host memory), bytes.
    pub host_peak_bytes: Option<u64>,
    /// Device memory high-water mark (CUDA only), bytes.
    pub device_peak_bytes: Option<u64>,
}

impl PeakMemory {
    /// Both figures in GiB for humans, e.g. "host 3.21 GiB, device 14.02 GiB".
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(b) = self.host_peak_bytes {
            parts.push(format!("host {:.2} GiB", gib(b)));
        }
        if let Some(b) = self.device_peak_bytes {
            parts.push(format!("device {:.2} GiB", gib(b)));
        }
        if parts.is_empty() {
            "unknown".into()
        } else {
            parts.join(", ")
        }
    }
}

pub fn gib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// A `/proc/self/status` field in bytes (`VmHWM`, `VmRSS`, ...).
fn status_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line
        .trim_start_matches(field)
        .trim_start_matches(':')
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The process's peak resident set (`VmHWM`), bytes.
pub fn host_peak_bytes() -> Option<u64> {
    status_bytes("VmHWM")
}

/// The process's current resident set (`VmRSS`), bytes.
pub fn host_current_bytes() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Resets `VmHWM` to the current resident set (Linux >= 4.0, `/proc/self/clear_refs` = 5), so
/// one process can measure the peaks of successive phases. False where it is not possible.
pub fn reset_host_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The device's peak since the last [`reset_device_peak`] (None on the CPU).
pub fn device_peak_bytes(dev: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return cuda::pool_attr(d, cuda::USED_HIGH).ok();
    }
    let _ = dev;
    None
}

/// Restarts the device's high-water mark (no-op on the CPU).
pub fn reset_device_peak(dev: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        let _ = cuda::reset_used_high(d);
    }
    let _ = dev;
}

/// Resets both high-water marks (before the phase to measure).
pub fn reset(dev: &Device) {
    reset_host_peak();
    reset_device_peak(dev);
}

/// The peaks so far: host always, device on CUDA.
pub fn peak(dev: &Device) -> PeakMemory {
    PeakMemory {
        host_peak_bytes: host_peak_bytes(),
        device_peak_bytes: device_peak_bytes(dev),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The default memory pool's attributes through the driver API (cudarc's raw bindings).
    use candle_core::cuda_backend::cudarc::driver::sys;
    use candle_core::cuda_backend::CudaDevice;

    pub const USED_HIGH: sys::CUmemPool_attribute =
        sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;

    fn check(r: sys::CUresult, what: &str) -> candle_core::Result<()> {
        if r == sys::CUresult::CUDA_SUCCESS {
            Ok(())
        } else {
            candle_core::bail!("{what}: {r:?}")
        }
    }

    fn pool(d: &CudaDevice) -> candle_core::Result<sys::CUmemoryPool> {
        let stream = d.cuda_stream();
        let ctx = stream.context();
        ctx.bind_to_thread()
            .map_err(|e| candle_core::Error::Msg(format!("binding the CUDA context: {e:?}")))?;
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        // SAFETY: `pool` is a valid out-pointer and the device handle comes from a live context.
        let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
        check(r, "cuDeviceGetDefaultMemPool")?;
        Ok(pool)
    }

    pub fn pool_attr(d: &CudaDevice, attr: sys::CUmemPool_attribute) -> candle_core::Result<u64> {
        let pool = pool(d)?;
        let mut v: u64 = 0;
        // SAFETY: the *_MEM_* pool attributes are cuuint64_t, which `v` is.
        let r = unsafe {
            sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut std::ffi::c_void)
        };
        check(r, "cuMemPoolGetAttribute")?;
        Ok(v)
    }

    pub fn reset_used_high(d: &CudaDevice) -> candle_core::Result<()> {
        let pool = pool(d)?;
        let mut zero: u64 = 0;
        // SAFETY: USED_MEM_HIGH may only be set to zero, as a cuuint64_t.
        let r = unsafe {
            sys::cuMemPoolSetAttribute(
                pool,
                USED_HIGH,
                &mut zero as *mut u64 as *mut std::ffi::c_void,
            )
        };
        check(r, "cuMemPoolSetAttribute")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_peak_sees_a_large_allocation() {
        let Some(before) = host_peak_bytes() else {
            return; // not Linux: nothing to check
        };
        let v = vec![1u8; 256 << 20];
        std::hint::black_box(&v);
        let after = host_peak_bytes().unwrap();
        assert!(after >= before, "{before} -> {after}");
        assert!(
            after >= 256 << 20,
            "VmHWM {after} below a live 256 MiB buffer"
        );
        drop(v);
        let p = peak(&Device::Cpu);
        assert!(p.host_peak_bytes.is_some() && p.device_peak_bytes.is_none());
        assert!(p.describe().starts_with("host "));
    }
}
