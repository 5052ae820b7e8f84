//! Throughput of the backbone's workloads (`llmbs bench llm`): inference forward, the training
//! step (forward + backward + AdamW, as the trainer runs it), embedding, beam search, a
//! layer-sized GEMM, and the trainer's own step on any model (synthetic ones included), each
//! a JSON object with its runs, median and rate.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::data::Dataset;
use crate::device::device_name;
use crate::embed;
use crate::llm::{Llama, LlamaConfig, Loaded, Mode, ModelSource};
use crate::train::Tune;

/// What to measure.
#[derive(Debug, Clone)]
pub struct LlmBench {
    /// Backbone source, or `synthetic:NAME`.
    pub model: String,
    /// Random weights of SmolLM2-135M's shape instead of loading a model.
    pub random_weights: bool,
    /// forward, backward, train, gemm, embed, beam; or step alone.
    pub workloads: Vec<String>,
    /// step: what trains.
    pub tune: Tune,
    /// step: recompute each decoder layer in the backward.
    pub checkpoint_activations: bool,
    /// step: sequences per forward/backward (default: `batch`).
    pub micro_batch: Option<usize>,
    /// step: learning rate.
    pub step_lr: f64,
    pub batch: usize,
    pub seq: usize,
    /// Timed runs per workload after one warm-up.
    pub runs: usize,
    /// embed: dataset, items, batch.
    pub data: PathBuf,
    pub items: usize,
    pub embed_batch: usize,
    /// beam: users, users per batch.
    pub beam_users: usize,
    pub beam_batch: usize,
}

pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// CPU seconds (user + system, all threads) this process has used so far; None off Linux.
fn process_cpu_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds of each timed run of the last `time_runs` (on a shared machine the wall time
/// depends on the other jobs; the CPU time much less).
static CPU_RUNS: std::sync::Mutex<Vec<f64>> = std::sync::Mutex::new(Vec::new());

/// Times `f` once for warm-up and then `runs` times.
fn time_runs(
    runs: usize,
    dev: &Device,
    mut f: impl FnMut() -> anyhow::Result<()>,
) -> anyhow::Result<Vec<f64>> {
    f()?;
    dev.synchronize()?;
    let mut out = Vec::with_capacity(runs);
    let mut cpu = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let (t, c) = (Instant::now(), process_cpu_s());
        f()?;
        dev.synchronize()?;
        out.push(t.elapsed().as_secs_f64());
        if let (Some(a), Some(b)) = (c, process_cpu_s()) {
            cpu.push(b - a);
        }
    }
    if let Ok(mut c) = CPU_RUNS.lock() {
        *c = cpu;
    }
    Ok(out)
}

/// A trainable copy of the weights: every tensor becomes a `Var` in a `VarMap`.
fn trainable(
    weights: &std::collections::HashMap<String, Tensor>,
    dtype: DType,
    dev: &Device,
) -> anyhow::Result<VarMap> {
    let vm = VarMap::new();
    {
        let mut data = vm
            .data()
            .lock()
            .map_err(|_| anyhow::anyhow!("VarMap lock poisoned"))?;
        for (k, v) in weights {
            data.insert(
                k.clone(),
                candle_core::Var::from_tensor(&v.to_dtype(dtype)?.to_device(dev)?)?,
            );
        }
    }
    Ok(vm)
}

/// The model a bench measures (a copy in variables for the workloads that train every weight).
struct Bench {
    cfg: LlamaConfig,
    vm: VarMap,
    loaded: Option<Loaded>,
    model: Llama,
    source: String,
}

fn load(b: &LlmBench, dev: &Device, dtype: DType) -> anyhow::Result<Bench> {
    let (cfg, vm, loaded, source) = if b.random_weights {
        let cfg = LlamaConfig::smollm2_135m();
        let (vm, _) = crate::llm::init::random_model(&cfg, 0, dtype, dev)?;
        (cfg, vm, None, "random:smollm2-135m".to_string())
    } else {
        let src = ModelSource::parse(&b.model)?;
        let loaded = Loaded::load(&src, dev, dtype)?;
        // Variable copies of every weight only for the workloads that train them all.
        let vm = if b
            .workloads
            .iter()
            .any(|w| matches!(w.as_str(), "backward" | "train"))
        {
            trainable(&loaded.weights, dtype, dev)?
        } else {
            VarMap::new()
        };
        (loaded.cfg.clone(), vm, Some(loaded), src.describe())
    };
    let model = match &loaded {
        Some(l) if vm.all_vars().is_empty() => l.build(dev)?,
        _ => Llama::new(&cfg, VarBuilder::from_varmap(&vm, dtype, dev))?,
    };
    Ok(Bench {
        cfg,
        vm,
        loaded,
        model,
        source,
    })
}

/// Runs every workload of `b`; one JSON object each.
pub fn run_llm_bench(b: &LlmBench, dev: &Device, dtype: DType) -> anyhow::Result<Vec<Value>> {
    if b.workloads == ["step"] {
        // Alone, so its peak memory is its own (the other workloads keep a model loaded).
        return Ok(vec![bench_step(b, dev, dtype)?]);
    }
    // bf16 on a CPU with AVX512-BF16: f32 tensors with bf16 matmul inputs (as `llmbs train
    // --dtype bf16` there); candle's own CPU bf16 widens every matmul to f32.
    let cpu_bf16 = dev.is_cpu() && dtype == DType::BF16 && crate::llm::ops::bf16_matmul_available();
    let _bf16 = crate::llm::ops::Bf16Matmul::new(cpu_bf16);
    crate::llm::ops::allow_tf32(dev);
    let (dtype, matmul) = if cpu_bf16 {
        (DType::F32, "bf16")
    } else {
        (dtype, "storage dtype")
    };
    let m = load(b, dev, dtype)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let ids: Vec<u32> = (0..b.batch * b.seq)
        .map(|_| rng.random_range(0..m.cfg.vocab_size as u32))
        .collect();
    let ids = Tensor::from_vec(ids, (b.batch, b.seq), dev)?;
    let base = serde_json::json!({
        "device": device_name(dev), "dtype": format!("{dtype:?}").to_lowercase(),
        "model": m.source, "threads": candle_core::utils::get_num_threads(),
        "matmul": matmul, "fused": crate::llm::kernels::fused_enabled(),
        "simd_path": crate::llm::ops::vmath::simd_path(),
        "tf32": dev.is_cuda() && candle_core::cuda::gemm_reduced_precision_f32(),
        "batch": b.batch, "seq": b.seq,
    });
    let mut out = Vec::new();
    for w in &b.workloads {
        let mut line = base.clone();
        line["workload"] = w.as_str().into();
        match w.as_str() {
            "forward" => {
                let runs = time_runs(b.runs, dev, || {
                    m.model
                        .forward_hidden(&ids, None, None, None, Mode::Infer)?;
                    Ok(())
                })?;
                rate(&mut line, runs, (b.batch * b.seq) as f64, "tokens_per_s");
            }
            "backward" | "train" => train_workload(&mut line, b, &m, &ids, w == "train", dev)?,
            "gemm" => gemm_workload(&mut line, b)?,
            "adamw" => {
                // The smoke's trainable parameters: the grown embedding (49,152 + 608 rows
                // of 576, its new rows a group of their own) and 2 decoder layers' weights.
                let (emb, new_from) = ((49_152 + 608) * 576, 49_152 * 576);
                let runs = crate::train::optim::bench_adamw(&[emb, 7_480_000], new_from, b.runs)?;
                rate(&mut line, runs, (emb + 7_480_000) as f64, "params_per_s");
            }
            "embed" => embed_workload(&mut line, b, &m, dev)?,
            "beam" => {
                let l = m.loaded.as_ref().context(
                    "the beam workload needs a real model's tokenizer (drop --random-weights)",
                )?;
                let (users, runs, prompt_tokens) = bench_beam(l, b, dev)?;
                rate(&mut line, runs, users as f64, "users_per_s");
                line["users"] = users.into();
                line["batch"] = b.beam_batch.into();
                line["num_beams"] = 20.into();
                line["prompt_tokens_mean"] = prompt_tokens.into();
                line["trie_items"] = 12_000.into();
            }
            "step" => anyhow::bail!("--workload step runs alone (its peak memory is its own)"),
            other => anyhow::bail!(
                "--workload {other}: expected forward, backward, train, gemm, adamw, embed, beam or step"
            ),
        }
        if let Ok(mut c) = CPU_RUNS.lock() {
            if !c.is_empty() {
                line["cpu_s_runs"] = serde_json::json!(c.clone());
                line["cpu_s_median"] = median(&mut c).into();
            }
            c.clear();
        }
        out.push(line);
    }
    Ok(out)
}

/// The runs, their median and `amount / median` as `key` into `line`.
fn rate(line: &mut Value, mut runs: Vec<f64>, amount: f64, key: &str) {
    line["runs"] = serde_json::json!(runs.clone());
    let m = median(&mut runs);
    line["median_s"] = m.into();
    line[key] = (amount / m).into();
}

/// forward + backward through the trainer's loss path (the LM head and cross-entropy at every
/// position but the last, gradients into the optimizer's buffers) and, for `train`, the
/// trainer's AdamW step with clipping folded in; per-phase and per-op times.
fn train_workload(
    line: &mut Value,
    b: &LlmBench,
    m: &Bench,
    ids: &Tensor,
    train: bool,
    dev: &Device,
) -> anyhow::Result<()> {
    let (bt, t) = (b.batch, b.seq);
    let vars = crate::train::setup::varmap_vars(&m.vm, "");
    let params = crate::train::setup::params(vec![vars]);
    let mut opt = crate::train::optim::AdamW::new(
        crate::train::optim::AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        },
        &params,
    )?;
    let at: Vec<(usize, usize)> = (0..bt)
        .flat_map(|r| (0..t - 1).map(move |p| (r, p)))
        .collect();
    let id_rows: Vec<Vec<u32>> = ids.to_vec2()?;
    let targets: Vec<u32> = at.iter().map(|&(r, p)| id_rows[r][p + 1]).collect();
    // Seconds of each phase per run: forward (with the loss), backward, optimizer.
    let mut phases: Vec<[f64; 3]> = Vec::new();
    let runs = time_runs(b.runs, dev, || {
        let t0 = Instant::now();
        let bufs = opt.grad_buffers(&params)?;
        let active = bufs.activate();
        let hidden = m.model.forward_hidden(ids, None, None, None, Mode::Train)?;
        let ce = crate::train::loss::response_ce_sum(&m.model, &hidden, &at, &targets)?;
        let loss = (ce / targets.len() as f64)?;
        let t1 = Instant::now();
        let g = loss.backward()?;
        drop(active);
        let t2 = Instant::now();
        if train {
            let mut grads: Vec<Option<Tensor>> = params
                .vars
                .iter()
                .map(|v| g.get(v.as_tensor()).cloned())
                .collect();
            bufs.merge(&mut grads)?;
            opt.clip_and_step(&params, &grads, 5e-5, 1.0)?;
        }
        let t3 = Instant::now();
        phases.push([t1 - t0, t2 - t1, t3 - t2].map(|d| d.as_secs_f64()));
        Ok(())
    })?;
    let ops = crate::llm::ops::timing::take();
    if !ops.is_empty() {
        let n = (b.runs.max(1) + 1) as f64;
        let per_run: serde_json::Map<String, Value> = ops
            .iter()
            .map(|(k, (s, _))| (k.to_string(), (s / n).into()))
            .collect();
        line["op_s_per_run"] = per_run.into();
    }
    // The warm-up run is the first.
    for (i, name) in ["forward_s", "backward_s", "optimizer_s"]
        .iter()
        .enumerate()
    {
        let mut v: Vec<f64> = phases.iter().skip(1).map(|p| p[i]).collect();
        line[*name] = median(&mut v).into();
    }
    rate(line, runs, (bt * t) as f64, "tokens_per_s");
    Ok(())
}

/// One layer-sized GEMM ([b * t, 1536] x [576, 1536]^T) by every kernel this CPU has (f32,
/// VDPBF16PS bf16, AMX bf16), and the one-core peak of each kernel's multiply-add instruction:
/// what says whether a CPU's bf16 can beat its f32 at all.
fn gemm_workload(line: &mut Value, b: &LlmBench) -> anyhow::Result<()> {
    let dims = (b.batch * b.seq, 576, 1536);
    for name in ["f32", "avx512-bf16", "amx"] {
        let have = match name {
            "f32" => true,
            "amx" => crate::llm::ops::amx_available(),
            _ => crate::llm::ops::bf16_matmul_available(),
        };
        if !have {
            continue;
        }
        let mut runs = crate::llm::ops::time_gemm(dims, name, b.runs)?;
        let m = median(&mut runs);
        let key = name.replace('-', "_");
        line[format!("{key}_gflops")] = (2.0 * (dims.0 * dims.1 * dims.2) as f64 / m / 1e9).into();
        line[format!("{key}_runs")] = serde_json::json!(runs);
    }
    #[cfg(target_arch = "x86_64")]
    {
        let (fma, dp, tile) = crate::llm::ops::peaks::instruction_peaks();
        line["peak_1core_gflops"] = serde_json::json!({
            "vfmadd231ps_zmm": fma, "vdpbf16ps_zmm": dp, "tdpbf16ps": tile
        });
    }
    line["bf16_kernel"] = crate::llm::ops::bf16_kernel_name().into();
    line["median_s"] = 0.0.into();
    line["dims"] = serde_json::json!([dims.0, dims.1, dims.2]);
    Ok(())
}

/// Mean-pooled embeddings of the first `items` items of the dataset.
fn embed_workload(line: &mut Value, b: &LlmBench, m: &Bench, dev: &Device) -> anyhow::Result<()> {
    let tok = &m
        .loaded
        .as_ref()
        .context("the embed workload needs a real model's tokenizer (drop --random-weights)")?
        .tokenizer;
    let ds = Dataset::load_lcrec(&b.data)?;
    let n = b.items.min(ds.items.len());
    let texts: Vec<String> = ds.items[..n].iter().map(|i| i.text.clone()).collect();
    let seqs = embed::tokenize_all(tok, &texts, 256)?;
    let tokens: usize = seqs.iter().map(|s| s.len()).sum();
    let runs = time_runs(b.runs, dev, || {
        embed::mean_pool(&m.model, &seqs, b.embed_batch, |_| {})?;
        Ok(())
    })?;
    rate(line, runs, n as f64, "items_per_s");
    let med = line["median_s"].as_f64().unwrap_or(f64::NAN);
    line["items"] = n.into();
    line["tokens_per_s"] = (tokens as f64 / med).into();
    line["batch"] = b.embed_batch.into();
    Ok(())
}

/// The trainer's own optimizer step on random tokens (`train::scale::probe_step`), with the
/// weights-and-optimizer memory estimate of full and LoRA tuning beside the measured peak.
fn bench_step(a: &LlmBench, dev: &Device, dtype: DType) -> anyhow::Result<Value> {
    use crate::train::scale::{estimate_memory, probe_step, StepProbe};
    let src = ModelSource::parse(&a.model)?;
    let p = StepProbe {
        tune: a.tune,
        lora: crate::llm::LoraConfig::default(),
        checkpoint_activations: a.checkpoint_activations,
        batch: a.batch,
        seq: a.seq,
        micro_batch: a.micro_batch.unwrap_or(a.batch),
        warmup: 1,
        runs: a.runs,
        lr: a.step_lr,
    };
    let t = probe_step(&src, dev, dtype, &p)?;
    let cfg = match &src {
        ModelSource::Synthetic(n) => Some(crate::llm::synthetic::config(n)?),
        _ => None,
    };
    let est = |tune| {
        cfg.as_ref()
            .map(|c| estimate_memory(c, tune, &p.lora, dtype))
    };
    let mut runs = t.runs.clone();
    let m = median(&mut runs);
    let line = serde_json::json!({
        "workload": "step", "device": device_name(dev), "dtype": format!("{dtype:?}").to_lowercase(),
        "model": src.describe(), "threads": candle_core::utils::get_num_threads(),
        "tune": a.tune, "checkpoint_activations": a.checkpoint_activations,
        "simd_path": crate::llm::ops::vmath::simd_path(),
        "batch": a.batch, "seq": a.seq, "micro_batch": p.micro_batch,
        "runs": t.runs, "median_s": m, "tokens_per_s": t.tokens_per_step as f64 / m,
        "losses": t.losses, "grad_norms": t.grad_norms, "trainable_parameters": t.trainable_parameters,
        "peak_memory": t.peak, "peak_memory_text": t.peak.describe(),
        "estimate_full": est(Tune::Full), "estimate_lora": est(Tune::Lora),
    });
    Ok(line)
}

/// The LC-Rec-style beam workload the peer script runs: 4 x 256 new ID tokens, a trie of
/// 12,000 random 4-token items, prompts with 20-item histories (~114 tokens), beam 20.
/// Returns (users, run times, mean prompt tokens).
fn bench_beam(l: &Loaded, a: &LlmBench, dev: &Device) -> anyhow::Result<(usize, Vec<f64>, f64)> {
    use crate::eval::{beam_search, Trie};
    let mut l = Loaded {
        cfg: l.cfg.clone(),
        weights: l.weights.clone(),
        tokenizer: l.tokenizer.clone(),
        source: l.source.clone(),
    };
    let names: Vec<String> = "abcd"
        .chars()
        .flat_map(|p| (0..256).map(move |i| format!("<{p}_{i}>")))
        .collect();
    let tid = crate::llm::vocab::extend_vocab(&mut l, &names, 0)?;
    let model = l.build(dev)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let mut codes = std::collections::BTreeSet::new();
    while codes.len() < 12_000 {
        codes.insert([0usize; 4].map(|_| rng.random_range(0..256usize)));
    }
    let codes: Vec<[usize; 4]> = codes.into_iter().collect();
    let ids: Vec<Vec<u32>> = codes
        .iter()
        .map(|c| (0..4).map(|lvl| tid[lvl * 256 + c[lvl]]).collect())
        .collect();
    let trie = Trie::new(&ids)?;
    let code_str = |c: &[usize; 4]| -> String {
        "abcd"
            .chars()
            .zip(c.iter())
            .map(|(p, i)| format!("<{p}_{i}>"))
            .collect()
    };
    let mut prompts = Vec::new();
    for _ in 0..a.beam_users.max(1) {
        let hist: Vec<String> = (0..20)
            .map(|_| code_str(&codes[rng.random_range(0..codes.len())]))
            .collect();
        let text = format!(
            "The user has purchased: {}. Predict the next item.\nResponse:",
            hist.join(",")
        );
        prompts.push(crate::llm::tokenizer::encode(&l.tokenizer, &text)?);
    }
    let mean = prompts.iter().map(|p| p.len()).sum::<usize>() as f64 / prompts.len() as f64;
    let runs = time_runs(a.runs, dev, || {
        for chunk in prompts.chunks(a.beam_batch.max(1)) {
            beam_search(&model, chunk, &trie, 20)?;
        }
        Ok(())
    })?;
    Ok((prompts.len(), runs, mean))
}
