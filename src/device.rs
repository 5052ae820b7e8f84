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
        _ => anyhow::bail!("--dtype {s}: expected f32, bf16 or f16"),
    }
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
    /// f32, bf16 or f16 (weights and activations; bf16 is meant for CUDA)
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl DeviceArgs {
    pub fn resolve(&self) -> anyhow::Result<(Device, DType)> {
        Ok((parse_device(&self.device)?, parse_dtype(&self.dtype)?))
    }
}
