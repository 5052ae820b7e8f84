//! `--device auto|cpu|cuda[:N]` and `--dtype f32|bf16|f16`, shared by every command that computes.

use candle_core::{DType, Device};

/// Parses a device name. `auto` is CUDA device 0 when the binary has CUDA and a GPU is visible.
pub fn parse_device(s: &str) -> anyhow::Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if candle_core::utils::cuda_is_available() {
                Ok(Device::new_cuda(0).unwrap_or(Device::Cpu))
            } else {
                Ok(Device::Cpu)
            }
        }
        _ => {
            let idx = match s.strip_prefix("cuda") {
                Some("") => 0,
                Some(rest) => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse::<usize>().ok())
                    .ok_or_else(|| anyhow::anyhow!("--device {s}: expected cuda or cuda:N"))?,
                None => anyhow::bail!("--device {s}: expected auto, cpu, cuda or cuda:N"),
            };
            if !candle_core::utils::cuda_is_available() {
                anyhow::bail!("--device {s}: this llmbs binary was built without CUDA (build with scripts/build-cuda.sh)");
            }
            Device::new_cuda(idx).map_err(|e| anyhow::anyhow!("--device {s}: {e}"))
        }
    }
}

pub fn parse_dtype(s: &str) -> anyhow::Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        "f16" => Ok(DType::F16),
        _ => anyhow::bail!("--dtype {s}: expected f32, bf16, f16 or auto"),
    }
}

/// How `--dtype auto` chose a training dtype (recorded with the stage).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DtypeChoice {
    pub asked: String,
    pub chosen: String,
    /// The CPU GEMM probe (`llm::ops::probe_cpu_gemm`), GFLOP/s.
    pub f32_gflops: Option<f64>,
    pub bf16_gflops: Option<f64>,
    /// The bf16 GEMM the probe timed: `amx` (tiles) or `avx512-bf16` (VDPBF16PS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bf16_kernel: Option<String>,
}

/// `--dtype` for training: `auto` is bf16 on CUDA and, on a CPU, whichever of f32 and bf16
/// GEMMs the probe measures faster (bf16 only with AVX512-BF16, on AMX tiles where the CPU has them; on some CPUs the
/// VDPBF16PS bf16 is 1.6x f32, on others slower). Other values as [`parse_dtype`].
pub fn train_dtype(s: &str, device: &Device) -> anyhow::Result<(DType, DtypeChoice)> {
    let choice = |d: DType, f: Option<f64>, b: Option<f64>| DtypeChoice {
        asked: s.to_string(),
        chosen: format!("{d:?}").to_lowercase(),
        f32_gflops: f,
        bf16_gflops: b,
        bf16_kernel: b.map(|_| crate::llm::ops::bf16_kernel_name().to_string()),
    };
    if s != "auto" {
        let d = parse_dtype(s)?;
        return Ok((d, choice(d, None, None)));
    }
    if !device.is_cpu() {
        return Ok((DType::BF16, choice(DType::BF16, None, None)));
    }
    let (f, b) = crate::llm::ops::probe_cpu_gemm()?;
    // A clear margin, so noise does not flip the choice between runs.
    let d = match b {
        Some(b) if b > 1.1 * f => DType::BF16,
        _ => DType::F32,
    };
    eprintln!(
        "--dtype auto: f32 GEMM {f:.0} GFLOP/s, bf16 {} -> {}",
        b.map_or("unavailable".into(), |b| format!(
            "{b:.0} GFLOP/s ({})",
            crate::llm::ops::bf16_kernel_name()
        )),
        format!("{d:?}").to_lowercase()
    );
    Ok((d, choice(d, Some(f), b)))
}

pub fn device_name(d: &Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(_) => "cuda".into(),
        Device::Metal(_) => "metal".into(),
    }
}

/// The `--device` / `--dtype` pair every computing command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct DeviceArgs {
    /// auto, cpu, cuda or cuda:N
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16 or f16 (weights and activations); training also takes auto (bf16 on CUDA,
    /// the faster of f32 and bf16 GEMMs on a CPU, measured at start)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl DeviceArgs {
    pub fn resolve(&self) -> anyhow::Result<(Device, DType)> {
        Ok((parse_device(&self.device)?, parse_dtype(&self.dtype)?))
    }

    /// [`DeviceArgs::resolve`] for training, where `--dtype auto` is allowed.
    pub fn resolve_train(&self) -> anyhow::Result<(Device, DType, DtypeChoice)> {
        let dev = parse_device(&self.device)?;
        let (d, c) = train_dtype(&self.dtype, &dev)?;
        Ok((dev, d, c))
    }
}
