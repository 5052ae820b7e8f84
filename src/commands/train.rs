//! `llmbs train --stage initial|anneal`: multi-task instruction training with GCT (paper 3.4.1)
//! and the Annealing Adapter (3.4.2), resumable, into `RUN/checkpoints/<stage>/`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{Dataset, Sample, SplitConfig};
use crate::device::{device_name, DeviceArgs};
use crate::eval::{self, ItemIds};
use crate::llm::{tokenizer::encode, vocab, Loaded, ModelSource};
use crate::tasks::build::{text_items, Encoded, Planned, TaskBuilder, TaskKind};
use crate::tasks::Prompts;
use crate::train::checkpoint::{find_complete, save_tensors, write_dir};
use crate::train::loss::{table_to, Gct};
use crate::train::mixed::MixedPrecision;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::run::{fit, plot_log, Ended, Hooks, TrainState, ValidRecord};
use crate::train::setup::{make_vars, named, params, restore, seed_new_modules, varmap_vars};
use crate::train::step::{StepConfig, Trainer};
use crate::train::{AnnealSelect, IdInit, ReduceDType, Stage, TrainConfig, Tune};
use crate::util::{atomic_write, write_json};

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[arg(long, value_enum)]
    pub stage: Stage,
    /// Run directory (index, embeddings; checkpoints and logs are written here)
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    /// Initial stage: the backbone to start from (default, a .gguf, a HF directory or a Hub id).
    /// Anneal: default is RUN/checkpoints/initial-best (or initial)
    #[arg(long)]
    pub model: Option<String>,
    /// Item index (default: the only RUN/index/*.index.json)
    #[arg(long)]
    pub index: Option<PathBuf>,
    /// JSON file with TrainConfig fields (any subset; the rest keep the stage's defaults)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Continue from RUN/checkpoints/<stage> (its saved config is used)
    #[arg(long)]
    pub resume: bool,
    /// Optimizer steps (initial 3000, anneal 200)
    #[arg(long)]
    pub steps: Option<usize>,
    /// Samples per optimizer step, the effective batch (128)
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Samples per forward/backward; gradients accumulate to --batch-size (8)
    #[arg(long)]
    pub micro_batch: Option<usize>,
    /// Peak learning rate of the cosine schedule (initial 5e-5, anneal 2e-4)
    #[arg(long)]
    pub lr: Option<f64>,
    /// Linear warmup steps (initial 100, anneal 10)
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    /// Initial stage: every weight (full) or LoRA + the grown embedding (lora)
    #[arg(long, value_enum)]
    pub tune: Option<Tune>,
    /// Start of the fresh ID-token rows: from the items' text (text) or the vocabulary mean (mean)
    #[arg(long, value_enum)]
    pub id_init: Option<IdInit>,
    /// Weight of the semantic InfoNCE term (paper lambda1, 0.1); both 0 switch GCT off
    #[arg(long)]
    pub lambda_s: Option<f64>,
    /// Weight of the behavior InfoNCE term (paper lambda2, 0.1)
    #[arg(long)]
    pub lambda_b: Option<f64>,
    /// InfoNCE temperature of GCT (0.07)
    #[arg(long)]
    pub tau: Option<f64>,
    /// Task weights, e.g. srt=2,id2text=0.25,text2id=0.25,hist_text2id=0.25,hist_id2text=0.25
    #[arg(long)]
    pub mix: Option<String>,
    /// History cap of the recommendation samples (20)
    #[arg(long)]
    pub max_history: Option<usize>,
    /// Dense SRT: one sample per window of --max-history items, every later history ID carrying
    /// loss too (all the window's prefixes in one pass; off: one sample per prefix, as the paper)
    #[arg(long)]
    pub srt_dense: bool,
    /// Validate (loss, beam-search R@10/N@10) and checkpoint every N steps
    #[arg(long)]
    pub eval_every: Option<usize>,
    /// Validation users for the beam search (a fixed seeded sample; 200)
    #[arg(long)]
    pub valid_users: Option<usize>,
    /// Stop with a checkpoint after the step that passes this many minutes
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Seed of the sample plan, templates, new rows, adapters, projectors (0)
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompt file (default: the embedded configs/prompts.json)
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Recompute each decoder layer in the backward instead of keeping its activations
    #[arg(long)]
    pub checkpoint_activations: bool,
    /// Data parallelism: one rank per device, e.g. cuda:0,cuda:1 (NCCL) or cpu,cpu (overrides --device)
    #[arg(long)]
    pub devices: Option<String>,
    /// dtype of the data-parallel gradient all-reduce: f32 (exact) or bf16 (half the traffic)
    #[arg(long, value_enum)]
    pub dp_reduce: Option<ReduceDType>,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// Overlays the JSON object `over` onto `base`, key by key; unknown keys are refused.
fn overlay(base: &mut serde_json::Value, over: &serde_json::Value, at: &str) -> anyhow::Result<()> {
    let (Some(b), Some(o)) = (base.as_object_mut(), over.as_object()) else {
        anyhow::bail!("{at}: expected a JSON object");
    };
    for (k, v) in o {
        let key = if at.is_empty() {
            k.clone()
        } else {
            format!("{at}.{k}")
        };
        match b.get_mut(k) {
            None => anyhow::bail!("unknown key '{key}'"),
            Some(slot) if slot.is_object() && v.is_object() => overlay(slot, v, &key)?,
            Some(slot) => *slot = v.clone(),
        }
    }
    Ok(())
}

/// The stage defaults, then the config file, then the flags.
fn resolve_config(a: &TrainArgs) -> anyhow::Result<TrainConfig> {
    let mut v = serde_json::to_value(TrainConfig::new(a.stage))?;
    if let Some(p) = &a.config {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let over: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        overlay(&mut v, &over, "").with_context(|| format!("{}", p.display()))?;
        v["stage"] = serde_json::to_value(a.stage)?;
    }
    let mut c: TrainConfig = serde_json::from_value(v).context("train config")?;
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(x) = a.$f { c.$f = x; } )* };
    }
    set!(
        steps,
        batch_size,
        micro_batch,
        lr,
        warmup_steps,
        tune,
        id_init,
        lambda_s,
        lambda_b,
        tau
    );
    set!(max_history, eval_every, valid_users, seed);
    if a.max_minutes.is_some() {
        c.max_minutes = a.max_minutes;
    }
    if a.srt_dense {
        c.srt_dense = true;
    }
    if a.checkpoint_activations {
        c.checkpoint_activations = true;
    }
    if let Some(r) = a.dp_reduce {
        c.dp_reduce = r;
    }
    if let Some(m) = &a.mix {
        c.mix.parse_into(m)?;
    }
    c.validate()?;
    Ok(c)
}

/// The model a consumer should use from a stage: `<stage>-best` when present, else `<stage>`.
pub fn best_checkpoint(run: &Path, stage: &str, marker: &str) -> Option<PathBuf> {
    let ck = run.join("checkpoints");
    find_complete(&ck.join(format!("{stage}-best")), marker)
        .or_else(|| find_complete(&ck.join(stage), marker))
}

/// The anneal stage's high-grade subset (paper 3.4.2).
fn anneal_samples(train: &[Sample], c: &TrainConfig) -> Vec<Sample> {
    match c.anneal_select {
        AnnealSelect::LatestPerUser => {
            let mut last: HashMap<u32, &Sample> = HashMap::new();
            for s in train {
                last.insert(s.user, s); // samples come oldest first per user
            }
            let mut v: Vec<Sample> = last.into_values().cloned().collect();
            v.sort_by_key(|s| s.user);
            v
        }
        AnnealSelect::LongHistories => train
            .iter()
            .filter(|s| s.history.len() >= c.anneal_min_history)
            .cloned()
            .collect(),
    }
}

struct StageHooks<'a> {
    cfg: &'a TrainConfig,
    ckpt: PathBuf,
    best_dir: PathBuf,
    loaded: &'a Loaded,
    /// Model weights by HF name (trainable ones are the variables' tensors).
    weights: &'a HashMap<String, Tensor>,
    lora: Option<&'a VarMap>,
    gct: Option<&'a VarMap>,
    valid_enc: Vec<Encoded>,
    valid_samples: Vec<Sample>,
    valid_prompts: Vec<Vec<u32>>,
    items: &'a ItemIds,
    source: String,
}

impl StageHooks<'_> {
    fn write_model(&self, dir: &Path) -> anyhow::Result<()> {
        if self.cfg.stage == Stage::Initial {
            crate::llm::save::save_hf_dir(
                dir,
                &self.loaded.cfg,
                &self.loaded.tokenizer,
                self.weights,
            )?;
        }
        if let Some(vm) = self.lora {
            let t = named(&varmap_vars(vm, ""), "");
            crate::llm::peft::save_adapter(dir, &self.cfg.lora, &self.source, &t)?;
        }
        Ok(())
    }
}

impl Hooks for StageHooks<'_> {
    fn validate(&mut self, t: &Trainer) -> anyhow::Result<ValidRecord> {
        let start = std::time::Instant::now();
        let valid_loss = t.response_loss(&self.valid_enc)?;
        let (mut recall10, mut ndcg10, mut coverage10) = (None, None, None);
        if !self.valid_samples.is_empty() {
            let out = eval::evaluate(
                &t.model,
                &self.valid_prompts,
                &self.valid_samples,
                self.items,
                self.cfg.valid_beam,
                self.cfg.valid_batch,
                |_, _| Ok(()),
            )?;
            recall10 = out.metrics.recall.get(&10).copied();
            ndcg10 = out.metrics.ndcg.get(&10).copied();
            let lists: Vec<Vec<u32>> = out
                .ranked
                .iter()
                .map(|r| r.iter().map(|x| x.0).collect())
                .collect();
            let n_items = self.items.tokens.len();
            coverage10 =
                Some(crate::metrics::coverage(lists.iter().map(|l| l.as_slice()), 10, n_items).0);
        }
        Ok(ValidRecord {
            step: t.step,
            valid_loss,
            recall10,
            ndcg10,
            coverage10,
            users: self.valid_samples.len(),
            seconds: start.elapsed().as_secs_f64(),
        })
    }

    fn save(&mut self, t: &Trainer, state: &TrainState, best: bool) -> anyhow::Result<()> {
        write_dir(&self.ckpt, |d| {
            self.write_model(d)?;
            t.opt.save(&t.params, &d.join("optimizer.safetensors"))?;
            if let Some(vm) = self.gct {
                save_tensors(
                    &named(&varmap_vars(vm, ""), ""),
                    &d.join("projectors.safetensors"),
                )?;
            }
            write_json(&d.join("state.json"), state)
        })?;
        if best {
            write_dir(&self.best_dir, |d| {
                self.write_model(d)?;
                write_json(&d.join("metrics.json"), &state.best)
            })?;
        }
        Ok(())
    }
}

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let (device, dtype) = a.dev.resolve()?;
    let devices = match &a.devices {
        Some(list) => list
            .split(',')
            .map(|d| crate::device::parse_device(d.trim()))
            .collect::<anyhow::Result<Vec<_>>>()?,
        None => vec![device.clone()],
    };
    let device = devices[0].clone();
    match dtype {
        DType::F32 => {}
        DType::BF16 if device.is_cpu() => eprintln!(
            "--dtype bf16 on the CPU: correct but slower than f32 (CPU matmuls are fastest in f32)"
        ),
        DType::BF16 => {}
        _ => anyhow::bail!(
            "--dtype {}: training computes in f32 or bf16 (f16 would need loss scaling)",
            a.dev.dtype
        ),
    }
    let stage = a.stage.name();
    let ckpt = a.run.join("checkpoints").join(stage);
    let resume_from =
        if a.resume {
            Some(find_complete(&ckpt, "state.json").with_context(|| {
                format!("--resume: no complete checkpoint at {}", ckpt.display())
            })?)
        } else {
            None
        };
    let prev: Option<TrainState> = match &resume_from {
        Some(d) => {
            let p = d.join("state.json");
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?)
        }
        None => None,
    };
    let mut c = match &prev {
        Some(s) => s.config.clone(),
        None => resolve_config(&a)?,
    };
    if prev.is_some() {
        if let Some(n) = a.steps {
            c.steps = n;
        }
        if a.max_minutes.is_some() {
            c.max_minutes = a.max_minutes;
        }
        // Memory and communication settings: the trained values do not depend on them.
        if a.checkpoint_activations {
            c.checkpoint_activations = true;
        }
        if let Some(r) = a.dp_reduce {
            c.dp_reduce = r;
        }
    }

    let ds = Dataset::load_lcrec(&a.data)?;
    let split = ds.split(&SplitConfig {
        max_history: c.max_history,
    })?;
    let index_path = match &a.index {
        Some(p) => p.clone(),
        None => crate::commands::eval::find_index(&a.run)?,
    };
    let (index, _) = crate::index::load_external(&index_path, &ds)?;
    let tokens: Vec<Vec<String>> = (0..index.len()).map(|i| index.id_strings(i)).collect();
    let prompts = match &a.prompts {
        Some(p) => Prompts::load(p)?,
        None => Prompts::embedded()?,
    };

    // The backbone: the source model (initial) or the initial checkpoint (anneal); a resumed
    // initial run reloads its own checkpoint, which is a complete HF directory.
    let source = match (&resume_from, c.stage, &a.model) {
        (Some(d), Stage::Initial, _) => d.display().to_string(),
        (_, _, Some(m)) => m.clone(),
        (_, Stage::Initial, None) => "default".to_string(),
        (_, Stage::Anneal, None) => best_checkpoint(&a.run, "initial", "model.safetensors")
            .with_context(|| {
                format!("no initial checkpoint in {}/checkpoints: run `llmbs train --stage initial` first", a.run.display())
            })?
            .display()
            .to_string(),
    };
    let src = ModelSource::parse(&source)?;
    // What trains is read in f32; the frozen rest straight in the compute dtype.
    let trains = |n: &str| crate::train::setup::trains(c.stage, c.tune, n);
    let mut loaded = Loaded::load_with(&src, &device, dtype, &trains)?;
    let mut new_tokens: Vec<String> = tokens.iter().flatten().cloned().collect();
    new_tokens.sort();
    new_tokens.dedup();
    new_tokens.push(vocab::CON_TOKEN.to_string());
    let old_rows = loaded.cfg.vocab_size;
    let added = vocab::extend_vocab(&mut loaded, &new_tokens, c.seed)?;
    let con_id = added.last().copied();
    let items = ItemIds::new(tokens.clone(), &loaded.tokenizer)?;
    if c.stage == Stage::Initial && resume_from.is_none() && c.id_init == IdInit::Text {
        let texts = ds
            .items
            .iter()
            .map(|it| {
                encode(
                    &loaded.tokenizer,
                    &format!("{}. {}", it.title, it.categories),
                )
            })
            .collect::<Result<Vec<_>, _>>()
            .context("tokenizing item texts for the ID-token rows")?;
        let n = vocab::init_id_rows_from_text(&mut loaded, &items.ids, &texts, old_rows, |t| {
            t as usize >= old_rows
        })?;
        eprintln!("{n} fresh ID-token rows start from their items' text (id_init = text)");
    }

    // Trainable variables.
    let mut weights = loaded.weights.clone();
    let base_vars = make_vars(&mut weights, trains)?;
    let vb = VarBuilder::from_tensors(weights.clone(), dtype, &device);
    let mut model = crate::llm::Llama::new(&loaded.cfg, vb)?;
    if let (Stage::Anneal, ModelSource::HfDir(d)) = (c.stage, &src) {
        // An initial stage tuned with LoRA: its adapter becomes part of the frozen base.
        if crate::llm::peft::is_adapter_dir(d) {
            let (lc, t) = crate::llm::peft::load_adapter(d, &device, DType::F32)?;
            model.attach_lora_from(&lc, &t)?;
            model.merge_adapter()?;
        }
    }
    let lora_vm = if c.tune == Tune::Lora {
        let vm = VarMap::new();
        model.attach_lora(&c.lora, VarBuilder::from_varmap(&vm, DType::F32, &device))?;
        seed_new_modules(&vm, c.seed ^ 0x10_4A)?;
        Some(vm)
    } else {
        None
    };
    let (gct_vm, gct) = if c.gct() && c.stage == Stage::Initial {
        let emb = a.run.join("embeddings");
        let zs = crate::embed::load_table(&emb.join("semantic.safetensors"), Some(ds.items.len()))
            .context("GCT needs Z^s (run `llmbs embed`, or set --lambda-s 0 --lambda-b 0)")?;
        let zb = crate::embed::load_table(&emb.join("behavior.safetensors"), Some(ds.items.len()))
            .context("GCT needs Z^b (run `llmbs behavior`, or set --lambda-s 0 --lambda-b 0)")?;
        let vm = VarMap::new();
        let gct = Gct::new(
            loaded.cfg.hidden_size,
            table_to(&zs, &device)?,
            table_to(&zb, &device)?,
            c.tau,
            c.gct_negatives,
            VarBuilder::from_varmap(&vm, DType::F32, &device),
        )?;
        seed_new_modules(&vm, c.seed ^ 0x6C7)?;
        (Some(vm), Some(gct))
    } else {
        (None, None)
    };
    let lora_vars = lora_vm
        .as_ref()
        .map(|vm| varmap_vars(vm, ""))
        .unwrap_or_default();
    let gct_vars = gct_vm
        .as_ref()
        .map(|vm| varmap_vars(vm, "gct."))
        .unwrap_or_default();
    if let Some(d) = &resume_from {
        if !lora_vars.is_empty() {
            restore(&lora_vars, &d.join("adapter_model.safetensors"), |n| {
                format!("base_model.model.{n}")
            })?;
        }
        if !gct_vars.is_empty() {
            restore(&gct_vars, &d.join("projectors.safetensors"), |n| {
                n.trim_start_matches("gct.").to_string()
            })?;
        }
    }
    // Variables stay f32 (the master weights); with bf16 each step computes on cast copies.
    let mixed = if dtype == DType::F32 && a.devices.is_none() {
        None
    } else {
        let lora = lora_vm
            .as_ref()
            .map(|vm| (c.lora.clone(), named(&varmap_vars(vm, ""), "")));
        Some(MixedPrecision::new(
            dtype,
            &model,
            &named(&base_vars, ""),
            lora,
        )?)
    };
    let p = params(vec![base_vars, lora_vars, gct_vars]);
    let mut opt = AdamW::new(
        AdamWConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        },
        &p,
    )?;
    if let Some(d) = &resume_from {
        opt.load(&p, &d.join("optimizer.safetensors"))?;
    }
    let n_params = p.count();
    let mut trainer = Trainer {
        model,
        params: p,
        gct,
        opt,
        cfg: StepConfig {
            lr: c.lr,
            warmup: c.warmup_steps,
            total: c.steps,
            min_lr_ratio: c.min_lr_ratio,
            clip_norm: c.clip_norm,
            lambda_s: c.lambda_s,
            lambda_b: c.lambda_b,
            micro_batch: c.micro_batch,
            seed: c.seed,
            checkpoint_activations: c.checkpoint_activations,
        },
        step: prev.as_ref().map(|s| s.step).unwrap_or(0),
        mixed,
        dp: None,
    };
    if let Some(list) = &a.devices {
        trainer.enable_data_parallel(&devices, c.dp_reduce.dtype())?;
        let world = trainer.dp.as_ref().map_or(1, |d| d.world());
        eprintln!(
            "data parallel: {world} ranks ({list} here), gradients summed in {:?}",
            c.dp_reduce
        );
    }

    // Tasks and their plan.
    let train_samples = split.train_samples(c.max_history);
    let samples = match c.stage {
        Stage::Initial => train_samples,
        Stage::Anneal => anneal_samples(&train_samples, &c),
    };
    let heldout = crate::tasks::heldout::heldout_items(ds.items.len(), c.heldout_fraction, c.seed);
    let eos_id = loaded.cfg.eos_token_id.as_ref().and_then(|v| {
        v.as_u64().or_else(|| {
            v.as_array()
                .and_then(|a| a.first())
                .and_then(|x| x.as_u64())
        })
    });
    let builder = TaskBuilder {
        ds: &ds,
        id_tokens: &items.tokens,
        id_ids: &items.ids,
        prompts: &prompts,
        tok: &loaded.tokenizer,
        samples: &samples,
        text_items: text_items(ds.items.len(), &heldout),
        limits: c.text.clone(),
        con_id: if c.gct() && c.stage == Stage::Initial {
            con_id
        } else {
            None
        },
        eos_id: eos_id.map(|x| x as u32),
        srt_windows: c
            .srt_dense
            .then(|| crate::tasks::dense::srt_windows(&samples, c.max_history)),
    };
    let plan = builder.plan(&c.mix, c.steps * c.batch_size, c.seed)?;

    // A fixed seeded sample of validation users.
    let mut valid: Vec<Sample> = split.valid.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed ^ 0x7A11D);
    valid.shuffle(&mut rng);
    valid.truncate(c.valid_users.max(64));
    valid.sort_by_key(|s| s.user);
    let valid_builder = TaskBuilder {
        samples: &valid,
        con_id: None,
        text_items: Vec::new(),
        srt_windows: None,
        ..builder.clone()
    };
    let valid_enc: Vec<Encoded> = (0..valid.len())
        .map(|row| {
            valid_builder.encode(&Planned {
                kind: TaskKind::Srt,
                row,
                template: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let beam_valid: Vec<Sample> = valid.iter().take(c.valid_users).cloned().collect();
    let valid_prompts = eval::prompt_ids(&beam_valid, &items, &prompts, 0, &loaded.tokenizer)?;

    if trainer.dp.as_ref().is_some_and(|dp| !dp.is_leader()) {
        // Another machine's ranks of a multi-node run: train, write nothing.
        let stop = stop_flag()?;
        return crate::train::parallel::follow(&mut trainer, &plan, &builder, c.batch_size, &stop);
    }
    let out_dir = a.run.join("train").join(stage);
    write_json(&out_dir.join("config.json"), &c)?;
    let mut state = prev.unwrap_or(TrainState {
        stage: stage.to_string(),
        step: 0,
        total_steps: c.steps,
        best: None,
        validations: Vec::new(),
        seconds: 0.0,
        config: c.clone(),
        model: src.describe(),
        index: index_path.display().to_string(),
    });
    state.total_steps = c.steps;
    state.config = c.clone();
    let mut hooks = StageHooks {
        cfg: &c,
        ckpt: ckpt.clone(),
        best_dir: a.run.join("checkpoints").join(format!("{stage}-best")),
        loaded: &loaded,
        weights: &weights,
        lora: lora_vm.as_ref(),
        gct: gct_vm.as_ref(),
        valid_enc,
        valid_samples: beam_valid,
        valid_prompts,
        items: &items,
        // PEFT's base_model_name_or_path: a plain path or Hub id that transformers can open.
        source: match &src {
            ModelSource::Gguf(p) | ModelSource::HfDir(p) => p.display().to_string(),
            ModelSource::Hub(id) => id.clone(),
            ModelSource::Synthetic(_) => src.describe(),
        },
    };
    let stop = stop_flag()?;
    stop.store(false, Ordering::SeqCst);
    eprintln!(
        "train {stage}: {} trainable parameters ({:?}), {} steps x {} samples (micro-batch {}), {} tasks samples from {} rows, GCT {}, {} on {}",
        n_params,
        c.tune,
        c.steps,
        c.batch_size,
        c.micro_batch,
        plan.len(),
        samples.len(),
        if builder.con_id.is_some() { "on" } else { "off" },
        src.describe(),
        device_name(&device)
    );
    let log_path = out_dir.join("log.jsonl");
    let ended = fit(
        &mut trainer,
        &plan,
        &builder,
        &c,
        &mut state,
        &mut hooks,
        &log_path,
        &stop,
        false,
    )?;
    trainer.release_data_parallel()?;
    plot_log(&log_path, &out_dir.join("curves.svg"))?;
    let report = report(&state, &log_path, ended, n_params, &device, dtype)?;
    write_json(&out_dir.join("report.json"), &report.0)?;
    atomic_write(&out_dir.join("report.md"), report.1.as_bytes())?;
    println!("{}", report.1);
    if ended == Ended::Interrupted {
        anyhow::bail!(
            "interrupted: checkpoint at step {} in {} (continue with --resume)",
            state.step,
            ckpt.display()
        );
    }
    Ok(())
}

/// The process-wide Ctrl-C flag (a handler can be installed only once per process, and the
/// pipeline trains twice).
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    static FLAG: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();
    if let Some(f) = FLAG.get() {
        return Ok(f.clone());
    }
    let f = Arc::new(AtomicBool::new(false));
    let h = f.clone();
    ctrlc::set_handler(move || h.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    Ok(FLAG.get_or_init(|| f).clone())
}

/// The end-of-training report: JSON value and markdown.
fn report(
    state: &TrainState,
    log_path: &Path,
    ended: Ended,
    n_params: usize,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<(serde_json::Value, String)> {
    let compute = format!("{dtype:?}").to_lowercase();
    let text = std::fs::read_to_string(log_path)
        .with_context(|| format!("reading {}", log_path.display()))?;
    let steps: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .collect();
    let mut tps: Vec<f64> = steps
        .iter()
        .map(|v| {
            v["tokens"].as_f64().unwrap_or(0.0) / v["seconds"].as_f64().unwrap_or(1.0).max(1e-9)
        })
        .collect();
    tps.sort_by(|a, b| a.total_cmp(b));
    let median_tps = tps.get(tps.len() / 2).copied().unwrap_or(0.0);
    let mean_loss = |vs: &[serde_json::Value]| {
        vs.iter().filter_map(|v| v["loss"].as_f64()).sum::<f64>() / vs.len().max(1) as f64
    };
    let k = steps.len().min(10);
    let first = mean_loss(&steps[..k]);
    let last = mean_loss(&steps[steps.len() - k..]);
    let json = serde_json::json!({
        "stage": state.stage, "ended": format!("{ended:?}"), "steps": state.step,
        "total_steps": state.total_steps, "seconds": state.seconds,
        "trainable_parameters": n_params, "median_tokens_per_s": median_tps,
        "loss_first_10_steps": first, "loss_last_10_steps": last,
        "best": state.best, "validations": state.validations,
        "device": device_name(device), "compute_dtype": compute, "master_dtype": "f32",
        "peak_memory": crate::memory::peak(device),
        "model": state.model, "index": state.index,
        "config": state.config,
    });
    let mut md = format!(
        "# llmbs train --stage {}\n\n{} of {} steps ({:?}) in {:.0} s on {} ({} compute, f32 weights); {} trainable parameters; median {:.0} tokens/s (forward+backward+AdamW).\n\nLoss: {:.4} (mean of the first 10 steps) -> {:.4} (last 10).\n\nPeak memory: {}.\n\n| step | valid CE | R@10 | N@10 | coverage@10 | users |\n|---:|---:|---:|---:|---:|---:|\n",
        state.stage, state.step, state.total_steps, ended, state.seconds, device_name(device), compute, n_params, median_tps, first, last,
        crate::memory::peak(device).describe()
    );

    let fmt = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_else(|| "-".into());
    for r in &state.validations {
        md.push_str(&format!(
            "| {} | {:.4} | {} | {} | {} | {} |\n",
            r.step,
            r.valid_loss,
            fmt(r.recall10),
            fmt(r.ndcg10),
            r.coverage10.map_or_else(|| "-".into(), |c| c.to_string()),
            r.users
        ));
    }
    if let Some(b) = &state.best {
        md.push_str(&format!(
            "\nBest: step {} (kept in checkpoints/{}-best).\n",
            b.step, state.stage
        ));
    }
    Ok((json, md))
}
