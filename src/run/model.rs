//! Which backbone and adapter a consumer of a run (`eval`, `recommend`, `ppl`) decodes with:
//! `--model` / `--adapter` as given, else the run's own checkpoints through the one resolver
//! (best, else latest, each with its `.old` twin). A run without a trained model is an error,
//! never a silent fall-back to the untrained backbone.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::{DType, Device};

use super::RunDir;
use crate::config::train::Stage;
use crate::index::tokens::ItemIds;
use crate::llm::{peft, vocab, Llama, Loaded, LoraConfig, ModelSource};

/// `--adapter`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterChoice {
    /// The run's anneal adapter when it has one, else none.
    Auto,
    Off,
    /// The run's anneal adapter; an error when it has none.
    On,
    /// A PEFT adapter directory.
    Path(PathBuf),
}

impl std::str::FromStr for AdapterChoice {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "auto" => Self::Auto,
            "off" => Self::Off,
            "on" => Self::On,
            p => Self::Path(PathBuf::from(p)),
        })
    }
}

/// The model a command asked for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelChoice {
    /// A backbone (`default`, a .gguf, a HF directory, a Hub id); None: the run's best initial
    /// checkpoint.
    pub model: Option<String>,
    pub adapter: AdapterChoice,
}

impl Default for ModelChoice {
    fn default() -> Self {
        Self {
            model: None,
            adapter: AdapterChoice::Auto,
        }
    }
}

/// A resolved choice, with the short names reports and file names use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub model: String,
    pub adapter: Option<PathBuf>,
    /// `initial-best`, `initial`, `default` or the last path component.
    pub model_name: String,
    /// `anneal-best`, `anneal`, `off` or the last path component.
    pub adapter_name: String,
}

/// Resolves `choice` against `run` (none: only explicit choices work).
pub fn resolve(run: Option<&RunDir>, choice: &ModelChoice) -> anyhow::Result<Resolved> {
    let model = match (&choice.model, run) {
        (Some(m), _) => m.clone(),
        (None, Some(r)) => r
            .best_checkpoint(Stage::Initial, "model.safetensors")
            .with_context(|| {
                format!(
                    "{} has no trained model (checkpoints/initial-best, initial, or their .old): \
                     run `llmbs train --stage initial`, or pass --model default to use the \
                     untrained backbone",
                    r.root().display()
                )
            })?
            .display()
            .to_string(),
        (None, None) => "default".to_string(),
    };
    let run_adapter = || run.and_then(|r| r.best_checkpoint(Stage::Anneal, peft::ADAPTER_CONFIG));
    let adapter = match &choice.adapter {
        AdapterChoice::Off => None,
        AdapterChoice::Auto => run_adapter(),
        AdapterChoice::On => Some(run_adapter().with_context(|| {
            "--adapter on: the run has no anneal adapter (checkpoints/anneal-best, anneal, or their .old); use --adapter off or auto"
        })?),
        AdapterChoice::Path(p) => {
            if !peft::is_adapter_dir(p) {
                anyhow::bail!(
                    "--adapter {}: no {} there (expected auto, on, off or a PEFT adapter directory)",
                    p.display(),
                    peft::ADAPTER_CONFIG
                );
            }
            Some(p.clone())
        }
    };
    let adapter_name = adapter.as_ref().map_or_else(
        || "off".to_string(),
        |p| short_name(&p.display().to_string(), run),
    );
    Ok(Resolved {
        model_name: short_name(&model, run),
        model,
        adapter,
        adapter_name,
    })
}

/// The record of the stage that trained the model `r` names: the run's anneal stage where its
/// own adapter is applied (an anneal stage may train otherwise than the initial one, e.g. with
/// the item-vocabulary loss), else `initial`, the initial stage's.
pub fn trained_record(
    run: &RunDir,
    r: &Resolved,
    initial: Option<&super::StageRecord>,
) -> anyhow::Result<Option<super::StageRecord>> {
    let own_adapter = r
        .adapter
        .as_ref()
        .is_some_and(|a| a.starts_with(run.root()));
    if own_adapter {
        if let Some(rec) = run.record(Stage::Anneal)? {
            return Ok(Some(rec));
        }
    }
    Ok(initial.cloned())
}

/// A file-name-safe short name of a model or adapter: the checkpoint's own name inside `run`
/// (`initial-best`, `anneal`; an `.old` twin counts as its directory), else the last path
/// component.
pub fn short_name(path: &str, run: Option<&RunDir>) -> String {
    let p = Path::new(path);
    let inside = run.is_some_and(|r| p.parent() == Some(&r.join("checkpoints")));
    let name = match p.file_name() {
        Some(n) => n.to_string_lossy().into_owned(),
        None => path.to_string(),
    };
    let name = if inside {
        name.trim_end_matches(".old").to_string()
    } else {
        name
    };
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Reads the PEFT adapter in `dir` and attaches it to `model` (in the model's dtype).
pub fn attach_adapter(model: &mut Llama, dir: &Path) -> anyhow::Result<LoraConfig> {
    let (cfg, tensors) = peft::load_adapter(dir, model.device(), model.dtype())?;
    model
        .attach_lora_from(&cfg, &tensors)
        .with_context(|| format!("attaching the adapter in {}", dir.display()))?;
    Ok(cfg)
}

/// An HF directory that also holds a PEFT adapter (an initial stage tuned with LoRA keeps its
/// trained embeddings in `model.safetensors` and the rest in the adapter) is one model: the
/// adapter is merged into it, as the anneal stage does before training on top. Returns whether
/// that happened.
pub fn merge_bundled_adapter(model: &mut Llama, src: &ModelSource) -> anyhow::Result<bool> {
    let ModelSource::HfDir(dir) = src else {
        return Ok(false);
    };
    if !peft::is_adapter_dir(dir) {
        return Ok(false);
    }
    attach_adapter(model, dir)?;
    model
        .merge_adapter()
        .with_context(|| format!("merging the adapter in {}", dir.display()))?;
    Ok(true)
}

/// What was loaded, for reports: `model SOURCE[ + its adapter merged], adapter PATH|off`.
pub fn describe(src: &ModelSource, bundled: bool, adapter: Option<&Path>) -> String {
    let adapter = adapter
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "off".into());
    let merged = if bundled { " + its adapter merged" } else { "" };
    format!("model {}{merged}, adapter {adapter}", src.describe())
}

/// A run's model ready for decoding: the backbone with every ID token and `[CON]` in its
/// vocabulary, an adapter bundled with it merged, and the chosen adapter merged in.
pub struct RunModel {
    pub loaded: Loaded,
    pub model: Llama,
    pub items: ItemIds,
    pub src: ModelSource,
    pub resolved: Resolved,
    /// What was loaded, for reports.
    pub desc: String,
    /// ID-token rows added untrained (0 for a trained checkpoint).
    pub fresh_rows: usize,
}

/// Loads what `eval` and `recommend` decode with; `tokens` are the items' ID tokens.
pub fn load_run_model(
    resolved: Resolved,
    tokens: Vec<Vec<String>>,
    vocab_seed: u64,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<RunModel> {
    let src = ModelSource::parse(&resolved.model)?;
    let mut loaded = Loaded::load(&src, device, dtype)?;
    let rows_before = loaded.cfg.vocab_size;
    let mut new_tokens: Vec<String> = tokens.iter().flatten().cloned().collect();
    new_tokens.sort();
    new_tokens.dedup();
    new_tokens.push(vocab::CON_TOKEN.to_string());
    vocab::extend_vocab(&mut loaded, &new_tokens, vocab_seed)?;
    // A trained checkpoint already has every ID token: then nothing is added here.
    let fresh_rows = loaded.cfg.vocab_size - rows_before;
    let mut m = loaded.build(device)?;
    let bundled = merge_bundled_adapter(&mut m, &src)?;
    if let Some(dir) = &resolved.adapter {
        attach_adapter(&mut m, dir)?;
        // Inference only: folded into the weights it is the same function, without the two
        // extra matmuls and two single-threaded elementwise passes per projection that an
        // unmerged adapter costs at every step of the beam search.
        m.merge_adapter()
            .with_context(|| format!("merging the adapter in {}", dir.display()))?;
    }
    let mut desc = describe(&src, bundled, resolved.adapter.as_deref());
    if fresh_rows > 0 {
        desc.push_str(&format!(", {fresh_rows} fresh ID-token rows (untrained)"));
    }
    let items = ItemIds::new(tokens, &loaded.tokenizer)?;
    Ok(RunModel {
        loaded,
        model: m,
        items,
        src,
        resolved,
        desc,
        fresh_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(dir: &Path, file: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(file), b"{}").unwrap();
    }

    #[test]
    fn a_run_without_a_trained_model_is_an_error_not_the_untrained_backbone() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        let err = resolve(Some(&run), &ModelChoice::default()).unwrap_err();
        assert!(err.to_string().contains("--model default"), "{err}");
        // Asked for explicitly, the untrained backbone is fine.
        let explicit = ModelChoice {
            model: Some("default".into()),
            adapter: AdapterChoice::Auto,
        };
        let r = resolve(Some(&run), &explicit).unwrap();
        assert_eq!(
            (r.model_name.as_str(), r.adapter_name.as_str()),
            ("default", "off")
        );
    }

    #[test]
    fn checkpoints_left_as_old_twins_are_found_and_named() {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::new(tmp.path());
        put(&run.join("checkpoints/initial.old"), "model.safetensors");
        let r = resolve(Some(&run), &ModelChoice::default()).unwrap();
        assert!(r.model.ends_with("initial.old"));
        assert_eq!(r.model_name, "initial");
        assert_eq!(r.adapter, None);
        let on = ModelChoice {
            model: None,
            adapter: AdapterChoice::On,
        };
        assert!(resolve(Some(&run), &on).is_err());
        put(&run.join("checkpoints/anneal-best"), peft::ADAPTER_CONFIG);
        let r = resolve(Some(&run), &on).unwrap();
        assert_eq!(r.adapter_name, "anneal-best");
        let off = ModelChoice {
            model: None,
            adapter: AdapterChoice::Off,
        };
        assert_eq!(resolve(Some(&run), &off).unwrap().adapter, None);
        let bad = ModelChoice {
            model: None,
            adapter: AdapterChoice::Path(tmp.path().join("nowhere")),
        };
        assert!(resolve(Some(&run), &bad).is_err());
        assert_eq!(short_name("org/My Model", None), "My_Model");
    }
}
