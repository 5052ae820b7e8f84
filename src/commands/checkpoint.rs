//! Which backbone and adapter a command uses: `--model` / `--adapter` as given, or a run's
//! checkpoints (`RUN/checkpoints/initial`, an HF directory; `RUN/checkpoints/anneal`, a PEFT
//! adapter), shared by `eval` and `ppl`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use candle_core::{DType, Device};

use crate::eval::ItemIds;
use crate::llm::{peft, vocab, Llama, Loaded, LoraConfig, ModelSource};

/// The initial stage's checkpoint inside a run (an HF directory).
pub const INITIAL_DIR: &str = "checkpoints/initial";
/// The anneal stage's adapter inside a run (PEFT layout).
pub const ANNEAL_DIR: &str = "checkpoints/anneal";

/// The `--model` / `--adapter` pair of the commands that decode with a run's model (`eval`,
/// `recommend`, `ppl`).
#[derive(clap::Args, Debug, Clone)]
pub struct ModelArgs {
    /// Backbone; default: RUN/checkpoints/initial-best (else initial) when it has
    /// model.safetensors, else `default` (untrained: fresh ID-token rows)
    #[arg(long)]
    pub model: Option<String>,
    /// off, on (RUN/checkpoints/anneal-best, else anneal, when it holds an adapter) or a PEFT
    /// adapter directory
    #[arg(long, default_value = "on")]
    pub adapter: String,
}

/// `--model` as given; else `RUN/checkpoints/initial-best` (the best validation step) or
/// `RUN/checkpoints/initial` when it holds `model.safetensors` (written last, so it means the
/// checkpoint is complete); else `default`.
pub fn resolve_model(model: Option<&str>, run: Option<&Path>) -> String {
    if let Some(m) = model {
        return m.to_string();
    }
    // The best validation checkpoint first, then the last one.
    let found = run.and_then(|r| {
        [format!("{INITIAL_DIR}-best"), INITIAL_DIR.to_string()]
            .into_iter()
            .map(|d| r.join(d))
            .find(|d| d.join("model.safetensors").is_file())
    });
    match found {
        Some(d) => d.display().to_string(),
        None => "default".to_string(),
    }
}

/// `--adapter off|on|PATH`: `off` is none; `on` is `RUN/checkpoints/anneal-best` or
/// `RUN/checkpoints/anneal` when it holds an `adapter_config.json` (none otherwise, or without a
/// run); a path must be a PEFT directory.
pub fn resolve_adapter(flag: &str, run: Option<&Path>) -> anyhow::Result<Option<PathBuf>> {
    match flag {
        "off" => Ok(None),
        "on" => Ok(run.and_then(|r| {
            [format!("{ANNEAL_DIR}-best"), ANNEAL_DIR.to_string()]
                .into_iter()
                .map(|d| r.join(d))
                .find(|d| peft::is_adapter_dir(d))
        })),
        path => {
            let p = PathBuf::from(path);
            if !peft::is_adapter_dir(&p) {
                anyhow::bail!(
                    "--adapter {path}: no {} there (expected off, on or a PEFT adapter directory)",
                    peft::ADAPTER_CONFIG
                );
            }
            Ok(Some(p))
        }
    }
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

/// What was loaded, for reports: `model SOURCE, adapter PATH|off`.
pub fn describe(src: &ModelSource, adapter: Option<&Path>) -> String {
    describe_with(src, false, adapter)
}

/// [`describe`], saying also whether [`merge_bundled_adapter`] merged one.
pub fn describe_with(src: &ModelSource, bundled: bool, adapter: Option<&Path>) -> String {
    let adapter = adapter
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "off".into());
    let merged = if bundled { " + its adapter merged" } else { "" };
    format!("model {}{merged}, adapter {adapter}", src.describe())
}

/// A file-name-safe short name of a model or adapter path: the run's stage names for its own
/// checkpoints, else the last path component.
pub fn short_name(path: &str, run: Option<&Path>) -> String {
    let p = Path::new(path);
    let stage = run.and_then(|r| {
        [("initial", INITIAL_DIR), ("anneal", ANNEAL_DIR)]
            .into_iter()
            .find(|(_, d)| r.join(d) == p)
            .map(|(n, _)| n.to_string())
    });
    let name = stage.unwrap_or_else(|| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string())
    });
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

/// A run's model ready for decoding: the backbone (`--model`, or the run's best initial
/// checkpoint) with every ID token and `[CON]` in its vocabulary, an adapter bundled with it
/// merged, and the `--adapter` attached.
pub struct RunModel {
    pub loaded: Loaded,
    pub model: Llama,
    pub items: ItemIds,
    pub src: ModelSource,
    /// What was loaded, for reports.
    pub desc: String,
    /// ID-token rows added untrained (0 for a trained checkpoint).
    pub fresh_rows: usize,
}

/// Loads what `eval` and `recommend` decode with; `tokens` are the items' ID tokens.
pub fn load_run_model(
    model: Option<&str>,
    adapter: &str,
    run: &Path,
    tokens: Vec<Vec<String>>,
    vocab_seed: u64,
    device: &Device,
    dtype: DType,
) -> anyhow::Result<RunModel> {
    let src = ModelSource::parse(&resolve_model(model, Some(run)))?;
    let adapter = resolve_adapter(adapter, Some(run))?;
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
    if let Some(dir) = &adapter {
        attach_adapter(&mut m, dir)?;
        // Inference only: folded into the weights it is the same function, without the two
        // extra matmuls and two single-threaded elementwise passes per projection that an
        // unmerged adapter costs at every step of the beam search.
        m.merge_adapter()
            .with_context(|| format!("merging the adapter in {}", dir.display()))?;
    }
    let mut desc = describe_with(&src, bundled, adapter.as_deref());
    if fresh_rows > 0 {
        desc.push_str(&format!(", {fresh_rows} fresh ID-token rows (untrained)"));
    }
    let items = ItemIds::new(tokens, &loaded.tokenizer)?;
    Ok(RunModel {
        loaded,
        model: m,
        items,
        src,
        desc,
        fresh_rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_from_a_run() {
        let run = tempfile::tempdir().unwrap();
        let r = Some(run.path());
        assert_eq!(resolve_model(None, r), "default");
        assert_eq!(resolve_model(Some("x.gguf"), r), "x.gguf");
        let init = run.path().join(INITIAL_DIR);
        std::fs::create_dir_all(&init).unwrap();
        std::fs::write(init.join("model.safetensors"), b"").unwrap();
        assert_eq!(resolve_model(None, r), init.display().to_string());
        assert_eq!(short_name(&init.display().to_string(), r), "initial");
        assert_eq!(short_name("default", r), "default");
        assert_eq!(short_name("org/My Model", None), "My_Model");

        assert_eq!(resolve_adapter("on", r).unwrap(), None);
        assert_eq!(resolve_adapter("on", None).unwrap(), None);
        let anneal = run.path().join(ANNEAL_DIR);
        std::fs::create_dir_all(&anneal).unwrap();
        let a = anneal.display().to_string();
        assert!(resolve_adapter(&a, r).is_err());
        std::fs::write(anneal.join(peft::ADAPTER_CONFIG), b"{}").unwrap();
        assert_eq!(resolve_adapter("on", r).unwrap(), Some(anneal.clone()));
        assert_eq!(resolve_adapter("off", r).unwrap(), None);
        assert_eq!(resolve_adapter(&a, None).unwrap(), Some(anneal));
    }
}
