//! Tests of `llm::load`.
use super::*;

/// A tiny HF directory whose weights are split over two shards with an index.
fn sharded_dir(dir: &Path) -> HashMap<String, Tensor> {
    let cfg = synthetic::config("tiny").unwrap();
    let w = synthetic::weights(&cfg, 1, &Device::Cpu, &|_| DType::F32).unwrap();
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let mut map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        // One shard in bf16, as many Hub checkpoints are.
        let dt = if i == 0 { DType::BF16 } else { DType::F32 };
        let tensors: Vec<(&str, Tensor)> = part
            .iter()
            .map(|n| (n.as_str(), w[*n].to_dtype(dt).unwrap()))
            .collect();
        safetensors::serialize_to_file(
            tensors.iter().map(|(k, t)| (*k, t)),
            None,
            &dir.join(&file),
        )
        .unwrap();
        for n in part {
            map.insert((*n).clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    std::fs::write(
        dir.join("config.json"),
        serde_json::to_string(&cfg).unwrap(),
    )
    .unwrap();
    synthetic::tokenizer(cfg.vocab_size)
        .unwrap()
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    w
}

#[test]
fn sharded_safetensors_stream_in_with_per_tensor_dtypes() {
    let tmp = tempfile::tempdir().unwrap();
    let want = sharded_dir(tmp.path());
    let src = ModelSource::parse(tmp.path().to_str().unwrap()).unwrap();
    let keep = |n: &str| n == "model.embed_tokens.weight";
    let got = Loaded::load_with(&src, &Device::Cpu, DType::BF16, &keep).unwrap();
    assert_eq!(got.weights.len(), want.len());
    for (name, w) in &want {
        let g = &got.weights[name];
        let dt = if keep(name) { DType::F32 } else { DType::BF16 };
        assert_eq!(g.dtype(), dt, "{name}");
        let diff = (g.to_dtype(DType::F32).unwrap() - w)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        // bf16 keeps 8 significant bits; these weights are below 1 in magnitude.
        assert!(diff < 4e-3, "{name}: {diff}");
    }
    // A tensor read from the f32 shard and kept in f32 is exact.
    let f32_shard = want.keys().max().unwrap();
    let exact = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    let same = exact.weights[f32_shard]
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(
        same,
        want[f32_shard]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    );
    assert!(exact.build(&Device::Cpu).is_ok());
}

#[test]
fn a_truncated_shard_names_the_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();
    sharded_dir(tmp.path());
    let shard = tmp.path().join("model-00002-of-00002.safetensors");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() - 16]).unwrap();
    let src = ModelSource::parse(tmp.path().to_str().unwrap()).unwrap();
    let err = Loaded::load(&src, &Device::Cpu, DType::F32)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("model-00002-of-00002.safetensors"), "{err}");
}

#[test]
fn synthetic_sources_parse_and_load() {
    let src = ModelSource::parse("synthetic:tiny").unwrap();
    assert_eq!(src.describe(), "synthetic:tiny");
    assert!(ModelSource::parse("synthetic:llama-70b").is_err());
    let l = Loaded::load(&src, &Device::Cpu, DType::F32).unwrap();
    let m = l.build(&Device::Cpu).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 9]], &Device::Cpu).unwrap();
    let h = m
        .forward_hidden(&ids, None, None, None, crate::llm::Mode::Infer)
        .unwrap();
    assert_eq!(h.dims(), &[1, 3, 32]);
}
