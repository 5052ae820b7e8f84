//! The semantic table Z^s (paper Eq. 2) from a prefix of the decoder (`embed.layers`).

mod common;

use candle_core::{DType, Device};
use llmbs::embed::job::{embed_catalogue, EmbedJob};
use llmbs::embed::{mean_pool, tokenize_all, EmbedConfig};
use llmbs::llm::{Loaded, ModelSource};

fn job(dir: &std::path::Path, layers: Option<usize>, name: &str) -> EmbedJob {
    EmbedJob {
        data: dir.join("data"),
        model: dir.join("model").display().to_string(),
        out: dir.join(format!("{name}.safetensors")),
        config: EmbedConfig {
            batch_size: 4,
            max_tokens: 16,
            layers,
        },
        limit: Some(12),
    }
}

#[test]
fn layers_pool_after_the_kth_decoder_layer() {
    let dir = tempfile::tempdir().unwrap();
    common::beauty_slice(&dir.path().join("data"), 5);
    common::tiny_model(&dir.path().join("model"));
    let cpu = Device::Cpu;
    let full = embed_catalogue(&job(dir.path(), None, "full"), &cpu, DType::F32).unwrap();
    let one = embed_catalogue(&job(dir.path(), Some(1), "one"), &cpu, DType::F32).unwrap();
    let two = embed_catalogue(&job(dir.path(), Some(2), "two"), &cpu, DType::F32).unwrap();

    // The reference: the 1-layer model built by hand, pooled the same way.
    let src = ModelSource::parse(&dir.path().join("model").display().to_string()).unwrap();
    let mut loaded = Loaded::load(&src, &cpu, DType::F32).unwrap();
    loaded.keep_layers(1).unwrap();
    let model = loaded.build(&cpu).unwrap();
    let n = one.table.dim(0).unwrap();
    assert!(n >= 8, "the slice has {n} items");
    let texts: Vec<String> = one.ds.items[..n].iter().map(|i| i.text.clone()).collect();
    let seqs = tokenize_all(&loaded.tokenizer, &texts, 16).unwrap();
    let want = mean_pool(&model, &seqs, 4, |_| {}).unwrap();

    assert_eq!(one.table.dims(), &[n, 32]);
    assert!(common::max_diff(&one.table, &want) < 1e-6);
    // The tiny model has 2 layers: keeping both is the full forward, keeping one is not.
    assert!(common::max_diff(&two.table, &full.table) < 1e-6);
    assert!(common::max_diff(&one.table, &full.table) > 1e-3);
    assert_eq!(one.sidecar.config.layers, Some(1));
    // Recorded in the sidecar only when set, so older sidecars read back unchanged.
    let side = std::fs::read_to_string(dir.path().join("full.json")).unwrap();
    assert!(!side.contains("\"layers\""), "{side}");
    let side = std::fs::read_to_string(dir.path().join("one.json")).unwrap();
    assert!(side.contains("\"layers\": 1"), "{side}");
}

#[test]
fn layers_beyond_the_model_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    common::beauty_slice(&dir.path().join("data"), 3);
    common::tiny_model(&dir.path().join("model"));
    let out = dir.path().join("three.safetensors");
    let err = embed_catalogue(&job(dir.path(), Some(3), "three"), &Device::Cpu, DType::F32)
        .err()
        .expect("3 layers of a 2-layer model");
    let msg = format!("{err:#}");
    assert!(msg.contains("embed config: layers"), "{msg}");
    assert!(msg.contains("has 2 decoder layers"), "{msg}");
    assert!(!out.exists(), "no table is written for a refused config");
}

#[test]
fn pipeline_config_reads_embed_layers() {
    let cfg = llmbs::pipeline::load_config("beauty-smoke").unwrap();
    assert_eq!(
        cfg.embed.layers,
        Some(4),
        "the smoke pools after 4 layers (the index its 2-layer model was chosen on)"
    );
}
