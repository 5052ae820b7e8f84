//! What a stage does at its validation and save points: validation CE and beam-search
//! Recall/NDCG@10 on a fixed seeded sample of validation users (the best kept by NDCG@10), and
//! checkpoint directories written whole (model or adapter, optimizer, projectors, state).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_nn::VarMap;

use super::assemble::{Assembled, Backbone};

use super::checkpoint::{save_tensors, write_dir};
use super::run::{Hooks, TrainState, ValidRecord};
use super::setup::{named, varmap_vars};
use super::step::Trainer;
use crate::config::train::{Stage, TrainConfig};
use crate::data::Sample;
use crate::eval::{self, ItemIds};
use crate::llm::{LlamaConfig, ModelSource};
use crate::metrics::{coverage, ndcg_standard_error, rank_of};
use crate::tasks::build::Encoded;
use crate::util::{atomic_write, write_json};

/// What a checkpoint writes of an assembled stage (borrowed beside its trainer).
pub struct SavedParts<'a> {
    pub weights: &'a HashMap<String, Tensor>,
    pub lora: Option<&'a VarMap>,
    pub gct: Option<&'a VarMap>,
}

impl<'a> SavedParts<'a> {
    pub fn of(parts: &'a Assembled) -> Self {
        Self {
            weights: &parts.weights,
            lora: parts.lora.as_ref(),
            gct: parts.gct.as_ref(),
        }
    }
}

/// The fixed validation sample of a stage.
pub struct ValidSet {
    /// SRT samples (template 0) for the validation CE.
    pub encoded: Vec<Encoded>,
    /// The users ranked by beam search, and their prompts.
    pub samples: Vec<Sample>,
    pub prompts: Vec<Vec<u32>>,
    /// Each ranked user's id and target item id (the dataset's names), for the ranks file.
    pub names: Vec<(String, String)>,
}

pub struct StageHooks<'a> {
    pub cfg: &'a TrainConfig,
    pub ckpt: PathBuf,
    pub best_dir: PathBuf,
    pub model_cfg: &'a LlamaConfig,
    pub tokenizer: &'a tokenizers::Tokenizer,
    /// Model weights by HF name (trainable ones are the variables' tensors).
    pub weights: &'a HashMap<String, Tensor>,
    pub lora: Option<&'a VarMap>,
    pub gct: Option<&'a VarMap>,
    pub valid: ValidSet,
    pub items: &'a ItemIds,
    /// PEFT's `base_model_name_or_path`.
    pub source: String,
    /// Where each validation writes its users' ranks (`valid-ranks-<step>.jsonl`); None: a
    /// probe's validation, which writes nothing.
    pub ranks_dir: Option<PathBuf>,
}

impl<'a> StageHooks<'a> {
    /// The hooks of a stage over `bb` that saves `parts` into `ckpt` and `best_dir`.
    pub fn new(
        cfg: &'a TrainConfig,
        bb: &'a Backbone,
        parts: SavedParts<'a>,
        valid: ValidSet,
        ckpt: PathBuf,
        best_dir: PathBuf,
    ) -> Self {
        Self {
            cfg,
            ckpt,
            best_dir,
            model_cfg: &bb.loaded.cfg,
            tokenizer: &bb.loaded.tokenizer,
            weights: parts.weights,
            lora: parts.lora,
            gct: parts.gct,
            valid,
            items: &bb.items,
            // PEFT's base_model_name_or_path: a plain path or Hub id that transformers can open.
            source: match &bb.src {
                ModelSource::Gguf(p) | ModelSource::HfDir(p) => p.display().to_string(),
                ModelSource::Hub(id) => id.clone(),
                ModelSource::Synthetic(_) => bb.src.describe(),
            },
            ranks_dir: None,
        }
    }

    fn write_model(&self, dir: &std::path::Path) -> anyhow::Result<()> {
        if self.cfg.stage == Stage::Initial {
            crate::llm::save::save_hf_dir(dir, self.model_cfg, self.tokenizer, self.weights)?;
        }
        if let Some(vm) = self.lora {
            let t = named(&varmap_vars(vm, ""), "");
            crate::llm::peft::save_adapter(dir, &self.cfg.lora, &self.source, &t)?;
        }
        Ok(())
    }
}

/// One line per validation user: its id, its target's id and the target's 1-based rank in the
/// beam's list (null outside it), the lines `llmbs paired` compares arm by arm, user by user.
fn write_ranks(path: &Path, valid: &ValidSet, lists: &[Vec<u32>]) -> anyhow::Result<()> {
    let mut text = String::new();
    for ((user, target), (s, l)) in valid.names.iter().zip(valid.samples.iter().zip(lists)) {
        let rank = rank_of(l, s.target, l.len());
        text.push_str(
            &serde_json::json!({"user": user, "target": target, "rank": rank}).to_string(),
        );
        text.push('\n');
    }
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    atomic_write(path, text.as_bytes())
}

impl Hooks for StageHooks<'_> {
    fn validate(&mut self, t: &Trainer) -> anyhow::Result<ValidRecord> {
        let start = std::time::Instant::now();
        let valid_loss = t.response_loss(&self.valid.encoded)?;
        let mut rec = ValidRecord {
            step: t.step,
            valid_loss,
            recall10: None,
            ndcg10: None,
            coverage10: None,
            ndcg10_se: None,
            users: self.valid.samples.len(),
            seconds: 0.0,
        };
        if !self.valid.samples.is_empty() {
            let out = eval::evaluate(
                &t.model,
                &self.valid.prompts,
                &self.valid.samples,
                self.items,
                eval::Search {
                    beam: self.cfg.valid_beam,
                    batch: self.cfg.valid_batch,
                    scoring: eval::Scoring::All,
                    normalize: match self.cfg.item_loss {
                        true => eval::Normalize::Ids,
                        false => eval::Normalize::Vocab,
                    },
                },
                // A Ctrl-C here is honoured after the save that follows validation.
                |_, _| Ok(()),
            )?;
            let lists: Vec<Vec<u32>> = out
                .ranked
                .iter()
                .map(|r| r.iter().map(|x| x.0).collect())
                .collect();
            rec.recall10 = out.metrics.recall.get(&10).copied();
            rec.ndcg10 = out.metrics.ndcg.get(&10).copied();
            let n_items = self.items.tokens.len();
            rec.coverage10 = Some(coverage(lists.iter().map(|l| l.as_slice()), 10, n_items).0);
            let pairs = lists.iter().zip(&self.valid.samples);
            rec.ndcg10_se = Some(ndcg_standard_error(
                pairs.map(|(l, s)| (l.as_slice(), s.target)),
                10,
            ));
            if let Some(dir) = &self.ranks_dir {
                write_ranks(
                    &dir.join(format!("valid-ranks-{}.jsonl", t.step)),
                    &self.valid,
                    &lists,
                )?;
            }
        }
        rec.seconds = start.elapsed().as_secs_f64();
        Ok(rec)
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
