//! `llmbs merge`: folds a PEFT LoRA adapter (the Annealing Adapter, paper 3.4.2) into its base
//! model and writes the result as a Hugging Face directory, for tools that know no adapters.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;

use crate::device::{device_name, DeviceArgs};
use crate::llm::{save, Loaded, ModelSource};

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Base model: `default`, a .gguf file, a HF directory (e.g. RUN/checkpoints/initial) or a Hub id
    #[arg(long)]
    pub model: String,
    /// PEFT adapter directory (adapter_config.json + adapter_model.safetensors)
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output directory: config.json, tokenizer.json, model.safetensors
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

pub fn run(a: MergeArgs) -> anyhow::Result<()> {
    let (device, dtype) = a.dev.resolve()?;
    let same = |p: &std::path::Path| match (p.canonicalize(), a.out.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    };
    // Writing over the base or the adapter would destroy what the merge came from.
    if same(std::path::Path::new(&a.model)) || same(&a.adapter) {
        anyhow::bail!(
            "--out {} is the model or adapter directory; choose a new directory",
            a.out.display()
        );
    }
    let start = Instant::now();
    let src = ModelSource::parse(&a.model)?;
    eprintln!(
        "merging {} into {} on {} ({dtype:?})",
        a.adapter.display(),
        src.describe(),
        device_name(&device)
    );
    let loaded = Loaded::load(&src, &device, dtype)?;
    let mut model = loaded.build(&device)?;
    if crate::run::model::merge_bundled_adapter(&mut model, &src)? {
        eprintln!("merged the adapter stored with the base model first");
    }
    let cfg = crate::run::model::attach_adapter(&mut model, &a.adapter)?;
    model
        .merge_adapter()
        .with_context(|| format!("merging {}", a.adapter.display()))?;
    save::save_hf_dir(&a.out, &loaded.cfg, &loaded.tokenizer, &model.weights())?;
    eprintln!(
        "wrote {} (r {}, alpha {}, {} modules) in {:.1}s",
        a.out.display(),
        cfg.r,
        cfg.lora_alpha,
        cfg.target_modules.join(","),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
