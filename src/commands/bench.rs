//! `llmbs bench llm`: flags into an `LlmBench`, then `bench::run_llm_bench`; JSON lines for
//! `scripts/bench-peer.sh` and the device checks, or a line of text per workload.

use std::path::PathBuf;

use crate::bench::{run_llm_bench, LlmBench};
use crate::device::DeviceArgs;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Backbone workloads: forward (inference path, no LM head), backward (forward+backward,
    /// training path with the LM head and cross-entropy), train (backward + AdamW), gemm (one
    /// layer-sized matmul by every kernel the CPU has, and their instructions' one-core peaks), adamw (the clipped
    /// AdamW step over the smoke's 36 M trainable parameters), embed, beam, step (the trainer's own step: --tune,
    /// --checkpoint-activations, f32 master weights).
    Llm(LlmBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct LlmBenchArgs {
    /// Backbone source (see `llmbs embed --help`), or synthetic:llama-7b / synthetic:llama-1b
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Random weights of SmolLM2-135M's shape instead of loading a model (speed only)
    #[arg(long)]
    pub random_weights: bool,
    /// Comma-separated: forward,backward,train,gemm,adamw,embed,beam,step (run step alone for its peak memory)
    #[arg(long, default_value = "forward,train")]
    pub workload: String,
    /// step workload: what trains (lora: adapters + embedding/head, as `llmbs train --tune lora`)
    #[arg(long, value_enum, default_value = "lora")]
    pub tune: crate::train::Tune,
    /// step workload: recompute each decoder layer in the backward
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// step workload: sequences per forward/backward (default: --batch)
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// step workload: learning rate of every step (the reported losses and gradient norms of
    /// successive steps check the backward and AdamW, e.g. fused vs LLMBS_NO_FUSED=1)
    #[arg(long, default_value_t = 1e-5)]
    pub step_lr: f64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 128)]
    pub seq: usize,
    /// Timed runs per workload (after one warm-up); the median is reported
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// CPU threads (sets RAYON_NUM_THREADS); default: all cores
    #[arg(long)]
    pub threads: Option<usize>,
    /// Dataset for the embed workload
    #[arg(long, default_value = "../shared/data/beauty")]
    pub data: PathBuf,
    /// Items for the embed workload
    #[arg(long, default_value_t = 256)]
    pub items: usize,
    /// Batch size for the embed workload
    #[arg(long, default_value_t = 32)]
    pub embed_batch: usize,
    /// Users for the beam workload
    #[arg(long, default_value_t = 8)]
    pub beam_users: usize,
    /// Users per batch for the beam workload
    #[arg(long, default_value_t = 8)]
    pub beam_batch: usize,
    /// Print JSON lines instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Llm(a) => run_llm(a),
    }
}

fn run_llm(a: LlmBenchArgs) -> anyhow::Result<()> {
    if let Some(t) = a.threads {
        std::env::set_var("RAYON_NUM_THREADS", t.to_string());
    }
    let (dev, dtype) = a.dev.resolve()?;
    let b = LlmBench {
        model: a.model,
        random_weights: a.random_weights,
        workloads: a
            .workload
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        tune: a.tune,
        checkpoint_activations: a.checkpoint_activations,
        micro_batch: a.micro_batch,
        step_lr: a.step_lr,
        batch: a.batch,
        seq: a.seq,
        runs: a.runs,
        data: a.data,
        items: a.items,
        embed_batch: a.embed_batch,
        beam_users: a.beam_users,
        beam_batch: a.beam_batch,
    };
    for line in run_llm_bench(&b, &dev, dtype)? {
        if a.json {
            println!("{line}");
            continue;
        }
        let num = |k: &str| line[k].as_f64().unwrap_or(0.0);
        let rate = line["tokens_per_s"]
            .as_f64()
            .or(line["users_per_s"].as_f64())
            .unwrap_or(0.0);
        println!(
            "{:<9} {rate:>10.1} tokens/s  median {:.3}s, {:.2} CPU-s  ({} runs, {} {}, matmul {}){}",
            line["workload"].as_str().unwrap_or(""),
            num("median_s"),
            num("cpu_s_median"),
            b.runs,
            line["device"].as_str().unwrap_or(""),
            line["dtype"].as_str().unwrap_or(""),
            line["matmul"].as_str().unwrap_or("-"),
            line["peak_memory_text"]
                .as_str()
                .map(|p| format!(", peak memory {p}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
