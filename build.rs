//! With the `cuda` feature: compiles llm::ops's CUDA kernels to PTX with nvcc (the compiler
//! candle's own kernels need anyway), so kernel errors show at build time on a machine without
//! a GPU. `CUDA_COMPUTE_CAP` (default 90) picks the virtual architecture; nvcc comes from
//! `CUDA_ROOT/bin` when set, else from PATH (scripts/build-cuda.sh sets both).

use std::path::PathBuf;
use std::process::Command;

const SRC: &str = "src/llm/ops/cuda/kernels.cu";

fn main() {
    println!("cargo:rerun-if-changed={SRC}");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=CUDA_ROOT");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default()).join("llmbs_kernels.ptx");
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let root = std::env::var_os("CUDA_ROOT").map(PathBuf::from);
    let nvcc = match &root {
        Some(r) => r.join("bin").join("nvcc"),
        None => PathBuf::from("nvcc"),
    };
    let mut cmd = Command::new(&nvcc);
    cmd.args([
        "--ptx",
        "-O3",
        "-std=c++17",
        &format!("-arch=compute_{cap}"),
    ]);
    if let Some(r) = &root {
        cmd.arg("-I").arg(r.join("include"));
    }
    cmd.arg(SRC).arg("-o").arg(&out);
    match cmd.status() {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{}: nvcc failed on {SRC} ({s})", nvcc.display()),
        Err(e) => panic!("{}: cannot run nvcc for {SRC}: {e}", nvcc.display()),
    }
}
