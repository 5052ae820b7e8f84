//! Everything a stage trains, put together: the backbone with the ID tokens and `[CON]` in its
//! vocabulary (ID rows started from item text, paper 3.3.1), the trainable set of the stage and
//! tuning mode, LoRA, the GCT projectors (3.3.3), bf16 compute, AdamW, and the state of a
//! resumed checkpoint. What trains is read in f32 and the frozen rest straight in the compute
//! dtype, so a bf16 run never holds an f32 copy of its frozen base (`docs/scale.md`).

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::loss::{table_to, Gct};
use super::mixed::MixedPrecision;
use super::optim::{AdamW, AdamWConfig};
use super::setup::{make_vars, named, params, restore, seed_new_modules, trains, varmap_vars};
use super::step::{StepConfig, Trainer};
use crate::config::train::{IdInit, Stage, TrainConfig, Tune};
use crate::data::Dataset;
use crate::eval::ItemIds;
use crate::llm::{peft, tokenizer::encode, vocab, Llama, Loaded, ModelSource};
use crate::run::RunDir;

/// The backbone of a stage with the run's vocabulary.
pub struct Backbone {
    pub loaded: Loaded,
    pub src: ModelSource,
    pub items: ItemIds,
    /// `[CON]`'s id.
    pub con_id: Option<u32>,
}

/// The trainer and what checkpoints are written from.
pub struct Assembled {
    pub trainer: Trainer,
    /// Model weights by HF name (trainable ones are the variables' tensors).
    pub weights: HashMap<String, Tensor>,
    pub lora: Option<VarMap>,
    pub gct: Option<VarMap>,
    pub n_params: usize,
}

/// Loads `source` (what trains in f32, the rest in `dtype`), grows its vocabulary by the
/// items' ID tokens and `[CON]`, (fresh initial stages with `id_init = text`) starts each
/// ID row from its items' text, and (`behavior_input`) adds the run's Z^b as an input.
/// `fresh`: the run of a stage that starts from the source model (None: a resumed stage,
/// whose checkpoint has all of these).
pub fn backbone(
    source: &str,
    tokens: &[Vec<String>],
    ds: &Dataset,
    c: &TrainConfig,
    fresh: Option<&RunDir>,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<Backbone> {
    let src = ModelSource::parse(source)?;
    let keep_f32 = |n: &str| trains(c.stage, c.tune, n);
    let mut loaded = Loaded::load_with(&src, device, dtype, &keep_f32)?;
    if let Some(k) = c.layers {
        // A resumed run reloads its own k-layer checkpoint: then this keeps everything.
        let n = loaded.cfg.num_hidden_layers;
        loaded.keep_layers(k).context("train config: layers")?;
        if k < n {
            eprintln!("layers: keeping the first {k} of {n} decoder layers");
        }
    }
    let mut new_tokens: Vec<String> = tokens.iter().flatten().cloned().collect();
    new_tokens.sort();
    new_tokens.dedup();
    new_tokens.push(vocab::CON_TOKEN.to_string());
    let old_rows = loaded.cfg.vocab_size;
    let added = vocab::extend_vocab(&mut loaded, &new_tokens, c.seed)?;
    let con_id = added.last().copied();
    let items = ItemIds::new(tokens.to_vec(), &loaded.tokenizer)?;
    if c.stage == Stage::Initial && fresh.is_some() && c.id_init == IdInit::Text {
        // Held-out items (the perplexity check) lend their text to no row.
        let heldout: std::collections::HashSet<u32> =
            crate::tasks::heldout::heldout_items(ds.items.len(), c.heldout_fraction, c.seed)
                .into_iter()
                .collect();
        let texts = ds
            .items
            .iter()
            .enumerate()
            .map(|(i, it)| match heldout.contains(&(i as u32)) {
                true => Ok(Vec::new()),
                false => encode(
                    &loaded.tokenizer,
                    &format!("{}. {}", it.title, it.categories),
                ),
            })
            .collect::<Result<Vec<_>, _>>()
            .context("tokenizing item texts for the ID-token rows")?;
        let n = vocab::init_id_rows_from_text(&mut loaded, &items.ids, &texts, old_rows, |t| {
            t as usize >= old_rows
        })?;
        eprintln!("{n} fresh ID-token rows start from their items' text (id_init = text)");
    }
    // A source that has a behavior input already (a checkpoint) keeps its own.
    let has = loaded
        .weights
        .contains_key(crate::llm::behavior_input::PROJ);
    if let Some(run) = fresh.filter(|_| c.behavior_input && !has) {
        attach_behavior_input(&mut loaded, run, &items, device)?;
    }
    Ok(Backbone {
        loaded,
        src,
        items,
        con_id,
    })
}

/// Adds a fresh behavior input (`llm::behavior_input`: the run's Z^b, a zero projection) to
/// the weights of a fresh initial stage; a resumed or annealed checkpoint carries its own.
fn attach_behavior_input(
    loaded: &mut Loaded,
    run: &RunDir,
    items: &ItemIds,
    device: &Device,
) -> anyhow::Result<()> {
    let path = run.behavior_path();
    let zb = crate::embed::load_table(&path, Some(items.ids.len())).with_context(|| {
        format!(
            "behavior_input needs the run's Z^b {} (run `llmbs behavior`)",
            path.display()
        )
    })?;
    let hidden = loaded.cfg.hidden_size;
    let t =
        crate::llm::behavior_input::BehaviorInput::fresh_tensors(&zb, &items.ids, hidden, device)
            .context("train config: behavior_input")?;
    eprintln!(
        "behavior input: each history item's ID ends with its Z^b vector ({}, dim {}) through a \
         projection to {hidden} (starts at zero)",
        path.display(),
        zb.dim(1)?
    );
    loaded.weights.extend(t);
    Ok(())
}

/// The trainer of a stage over `bb`; `resume` is the checkpoint directory to restore from.
pub fn assemble(
    bb: &Backbone,
    n_items: usize,
    run: &RunDir,
    c: &TrainConfig,
    resume: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<Assembled> {
    let mut weights = bb.loaded.weights.clone();
    let base_vars = make_vars(&mut weights, |n| trains(c.stage, c.tune, n))?;
    // The compute dtype: trainable weights enter as casts of their f32 variables.
    let vb = VarBuilder::from_tensors(weights.clone(), dtype, device);
    let mut model = Llama::new(&bb.loaded.cfg, vb)?;
    if let (Stage::Anneal, ModelSource::HfDir(d)) = (c.stage, &bb.src) {
        // An initial stage tuned with LoRA: its adapter becomes part of the frozen base.
        if peft::is_adapter_dir(d) {
            let (lc, t) = peft::load_adapter(d, device, DType::F32)?;
            model.attach_lora_from(&lc, &t)?;
            model.merge_adapter()?;
        }
    }
    let lora = if c.tune == Tune::Lora {
        let vm = VarMap::new();
        model.attach_lora(&c.lora, VarBuilder::from_varmap(&vm, DType::F32, device))?;
        seed_new_modules(&vm, c.seed ^ 0x10_4A)?;
        Some(vm)
    } else {
        None
    };
    let (gct_vm, gct) = match bb.con_id.filter(|_| c.gct() && c.stage == Stage::Initial) {
        Some(_) => {
            let (vm, g) = gct_head(run, &bb.loaded, n_items, c, device)?;
            (Some(vm), Some(g))
        }
        None => (None, None),
    };
    let lora_vars = lora
        .as_ref()
        .map(|vm| varmap_vars(vm, ""))
        .unwrap_or_default();
    let gct_vars = gct_vm
        .as_ref()
        .map(|vm| varmap_vars(vm, "gct."))
        .unwrap_or_default();
    if let Some(d) = resume {
        restore_new_modules(d, &lora_vars, &gct_vars)?;
    }
    // Variables stay f32 (the master weights); each step computes on a model built from them
    // (bf16 casts with --dtype bf16). The same recipe builds data-parallel replicas.
    let l = lora
        .as_ref()
        .map(|vm| (c.lora.clone(), named(&varmap_vars(vm, ""), "")));
    let mixed = Some(MixedPrecision::new(
        dtype,
        &model,
        &named(&base_vars, ""),
        l,
    )?);
    let p = params(vec![base_vars, lora_vars, gct_vars]);
    let opt = optimizer(&p, bb, c, resume)?;
    let n_params = p.count();
    let mut cfg = step_config(c);
    if c.item_loss {
        let r = bb.items.trie.token_range();
        cfg.id_rows = Some((r.start, r.end));
    }
    let teacher = match &c.distill {
        Some(d) => {
            let dir = run.behavior_report_dir(d.teacher.name());
            Some(super::distill::Teacher::load(&dir, d, &bb.items.ids)?)
        }
        None => None,
    };
    let trainer = Trainer {
        model,
        params: p,
        gct,
        opt,
        cfg,
        step: 0,
        mixed,
        dp: None,
        teacher,
    };
    Ok(Assembled {
        trainer,
        weights,
        lora,
        gct: gct_vm,
        n_params,
    })
}

/// A resumed run's LoRA adapter and GCT projectors, read back into their variables.
fn restore_new_modules(
    d: &Path,
    lora_vars: &[(String, Var)],
    gct_vars: &[(String, Var)],
) -> anyhow::Result<()> {
    if !lora_vars.is_empty() {
        restore(lora_vars, &d.join("adapter_model.safetensors"), |n| {
            format!("base_model.model.{n}")
        })?;
    }
    if !gct_vars.is_empty() {
        restore(gct_vars, &d.join("projectors.safetensors"), |n| {
            n.trim_start_matches("gct.").to_string()
        })?;
    }
    Ok(())
}

/// AdamW over `p` with `c`'s parameter groups, its moments read back when resuming.
fn optimizer(
    p: &super::optim::Params,
    bb: &Backbone,
    c: &TrainConfig,
    resume: Option<&Path>,
) -> anyhow::Result<AdamW> {
    let mut opt = AdamW::new(
        AdamWConfig {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            weight_decay: c.weight_decay,
        },
        p,
    )?;
    if c.lr_new.is_some() || c.weight_decay_new.is_some() {
        opt.groups = Some(new_groups(p, bb, c));
    }
    if let Some(d) = resume {
        opt.load(p, &d.join("optimizer.safetensors"))?;
    }
    Ok(opt)
}

/// The parameter groups of `c`: the rows from the first item-ID token on (the ID tokens and
/// `[CON]`, the last rows of the grown embedding and an untied head), the GCT projectors and
/// the behavior input's projection are new; everything else is the backbone.
fn new_groups(p: &super::optim::Params, bb: &Backbone, c: &TrainConfig) -> super::optim::Groups {
    let first = bb.items.trie.token_range().start as usize;
    let d = bb.loaded.cfg.hidden_size;
    let from = p
        .names
        .iter()
        .map(|n| match n.as_str() {
            "model.embed_tokens.weight" | "lm_head.weight" => Some(first * d),
            _ if n.starts_with("gct.") => Some(0),
            crate::llm::behavior_input::PROJ => Some(0),
            _ => None,
        })
        .collect();
    super::optim::Groups {
        new: super::optim::NewGroup {
            lr_scale: c.lr_new.unwrap_or(c.lr) / c.lr,
            weight_decay: c.weight_decay_new.unwrap_or(c.weight_decay),
        },
        from,
    }
}

/// The GCT head over the run's Z^s and Z^b (centred inside `Gct`).
fn gct_head(
    run: &RunDir,
    loaded: &Loaded,
    n_items: usize,
    c: &TrainConfig,
    device: &Device,
) -> anyhow::Result<(VarMap, Gct)> {
    let n_items = Some(n_items);
    let zs = crate::embed::load_table(&run.semantic_path(), n_items)
        .context("GCT needs Z^s (run `llmbs embed`, or set --lambda-s 0 --lambda-b 0)")?;
    let zb = crate::embed::load_table(&run.behavior_path(), n_items)
        .context("GCT needs Z^b (run `llmbs behavior`, or set --lambda-s 0 --lambda-b 0)")?;
    let vm = VarMap::new();
    let gct = Gct::new(
        loaded.cfg.hidden_size,
        table_to(&zs, device)?,
        table_to(&zb, device)?,
        c.tau,
        c.gct_negatives,
        VarBuilder::from_varmap(&vm, DType::F32, device),
    )?;
    seed_new_modules(&vm, c.seed ^ 0x6C7)?;
    Ok((vm, gct))
}

fn step_config(c: &TrainConfig) -> StepConfig {
    StepConfig {
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
        id_rows: None,
        distill_alpha: c.distill.as_ref().map_or(0.0, |d| d.weight),
    }
}
