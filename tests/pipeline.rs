//! End to end: `llmbs pipeline --config tiny` on a slice of the real Beauty with a tiny
//! random-weight model (the real SmolLM2 tokenizer), then the skip and `--from` logic, the
//! reports' dataset-specific rows, `llmbs recommend` on the trained run, and `llmbs train`
//! refusing to replace a stage.

mod common;

use std::path::PathBuf;

use candle_core::{DType, Device};
use common::{beauty_slice, llmbs, s, tiny_model};

/// The tiny config's evaluation: test split, 8 seeded users, the run's best model and adapter.
const LABEL: &str = "test-initial-best-anneal-best-8u-seed0";

#[test]
fn tiny_pipeline_end_to_end_then_skips_and_reruns() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("beauty-slice");
    let model = tmp.path().join("tiny-model");
    let run: PathBuf = tmp.path().join("run");
    beauty_slice(&data, 40);
    tiny_model(&model);
    let args = [
        "pipeline",
        "--config",
        "tiny",
        "--data",
        s(&data),
        "--model",
        s(&model),
        "--run",
        s(&run),
        "--device",
        "cpu",
    ];
    let (ok, out, err) = llmbs(&args);
    assert!(ok, "pipeline failed:\n{out}\n{err}");
    let label = LABEL;
    let eval_json = format!("eval/{label}.json");
    let eval_preds = format!("eval/{label}.predictions.jsonl");
    // The baselines' comparison with this evaluation is named after it.
    let base_json = format!("eval/baselines-test-8u-seed0-vs-{label}.json");
    for f in [
        "config.json",
        "data/stats.json",
        "embeddings/semantic.safetensors",
        "embeddings/behavior.safetensors",
        "index/Beauty.index.json",
        "checkpoints/initial/model.safetensors",
        "checkpoints/initial/config.json",
        "checkpoints/initial/tokenizer.json",
        "checkpoints/initial/state.json",
        "checkpoints/initial/optimizer.safetensors",
        "checkpoints/initial/projectors.safetensors",
        "checkpoints/initial-best/model.safetensors",
        "checkpoints/anneal/adapter_model.safetensors",
        "checkpoints/anneal/adapter_config.json",
        "checkpoints/anneal/state.json",
        "train/initial/config.json",
        "train/initial/log.jsonl",
        "train/initial/curves.svg",
        "train/initial/report.md",
        "train/initial/valid-ranks-3.jsonl",
        "train/anneal/report.json",
        "train/anneal/valid-ranks-2.jsonl",
        &eval_json,
        &eval_preds,
        &base_json,
        "pipeline/report.md",
        "pipeline/report.json",
    ] {
        assert!(run.join(f).is_file(), "missing {f}\n{err}");
    }
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/initial/state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["step"], 3);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(&eval_json)).unwrap()).unwrap();
    assert_eq!(report["users"], 8);
    // Eval sees the split the run trained with (tiny: 5-item histories), not the default 20.
    assert_eq!(report["max_history"], 5, "{report}");
    // The run recorded its data, index and prompts before training.
    let rec: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("train/initial/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rec["train"]["max_history"], 5);
    assert!(
        rec["prompts"]["srt"].is_array() && rec["data"] == s(&data),
        "{rec}"
    );
    // The slice is not the dataset the published rows belong to: none shown.
    let beh: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("behavior/din/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(beh["references"], serde_json::json!([]), "{beh}");
    assert!(report["paper_table2"].is_null());
    let md = std::fs::read_to_string(run.join("pipeline/report.md")).unwrap();
    assert!(
        md.contains("--data; the config was written for another dataset")
            && !md.contains("The end-to-end test's config")
            && !md.contains("Paper Table 2")
            && md.contains("most popular"),
        "{md}"
    );
    // A DIN run without a teacher has no SASRec: the report says so and how to get one, and
    // still splits the model's figures by the target's popularity.
    assert!(
        md.contains("No SASRec row") && md.contains("`teacher`") && md.contains("| rare |"),
        "{md}"
    );
    assert_eq!(
        report["slices"].as_array().map(|s| s.len()),
        Some(4),
        "{report}"
    );
    // Validation's per-user ranks: the anneal stage minus the initial one on the same users.
    let arm = |name: &str, f: &str| format!("{name}={}", s(&run.join(f)));
    let (ok, ab_out, ab_err) = llmbs(&[
        "paired",
        &arm("initial", "train/initial/valid-ranks-3.jsonl"),
        &arm("anneal", "train/anneal/valid-ranks-2.jsonl"),
    ]);
    assert!(
        ok && ab_out.contains("| anneal | 4 |"),
        "{ab_out}\n{ab_err}"
    );
    // The behavior stage's final ranking shows progress.
    assert!(err.contains("users ranked"), "{err}");
    let covered = report["coverage10"]["items"].as_u64().unwrap();
    assert!((10..=80).contains(&covered), "{report}");
    assert!(
        report["checkpoint"].as_str().unwrap().contains("anneal"),
        "{report}"
    );
    let preds = std::fs::read_to_string(run.join(&eval_preds)).unwrap();
    assert_eq!(preds.lines().count(), 8);
    // The baselines compare with the model user by user: on the same users the mean of the
    // per-user differences is the difference of the two recalls.
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(&base_json)).unwrap()).unwrap();
    let paired = base["against"]["rows"].as_array().expect("paired rows");
    assert_eq!(
        paired.len(),
        base["rows"].as_array().unwrap().len(),
        "{base}"
    );
    let model_r10 = report["metrics"]["recall"]["10"].as_f64().unwrap();
    for (row, (name, m)) in paired.iter().zip(
        base["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (&r[0], &r[1])),
    ) {
        assert_eq!(&row["baseline"], name);
        let diff = model_r10 - m["recall"]["10"].as_f64().unwrap();
        assert!(
            (row["recall10_diff"].as_f64().unwrap() - diff).abs() < 1e-12,
            "{row} {m}"
        );
        assert_eq!(row["users"], 8);
    }
    assert!(md.contains("paired standard errors"), "{md}");
    let peft: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run.join("checkpoints/anneal/adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(peft["peft_type"], "LORA");

    // An interrupted eval (3 users written, a torn fourth line) resumed with --resume gives the
    // same predictions and metrics as the uninterrupted one.
    let preds_path = run.join(&eval_preds);
    let partial = run.join(format!("{eval_preds}.partial"));
    let mut text = serde_json::json!({"llmbs_eval_partial": report["resume_settings"]}).to_string();
    text.push('\n');
    for l in preds.lines().take(3) {
        text.push_str(l);
        text.push('\n');
    }
    text.push_str(&preds.lines().nth(3).unwrap()[..20]);
    std::fs::write(&partial, text).unwrap();
    let eval_args = [
        "eval",
        "--run",
        s(&run),
        "--data",
        s(&data),
        "--split",
        "test",
        "--limit",
        "8",
        "--beam",
        "10",
        "--batch",
        "4",
        "--device",
        "cpu",
    ];
    // Without --resume an interrupted evaluation is kept, and the error names both ways on.
    let (ok, _, err) = llmbs(&eval_args);
    assert!(
        !ok && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert!(partial.exists());
    let mut resume = eval_args.to_vec();
    resume.push("--resume");
    let (ok, _, err) = llmbs(&resume);
    assert!(ok && err.contains("resuming: 3 users"), "{err}");
    assert!(!partial.exists());
    let again = std::fs::read_to_string(&preds_path).unwrap();
    let items = |t: &str| -> Vec<serde_json::Value> {
        t.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["top"].clone())
            .map(|top| {
                top.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x[0].clone())
                    .collect()
            })
            .collect()
    };
    assert_eq!(items(&again), items(&preds));
    let resumed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join(&eval_json)).unwrap()).unwrap();
    assert_eq!(resumed["resumed_users"], 3);
    assert_eq!(resumed["metrics"], report["metrics"]);
    // A partial file from other settings is refused, naming it.
    std::fs::write(
        &partial,
        "{\"llmbs_eval_partial\": {\"split\": \"valid\"}}\n",
    )
    .unwrap();
    let (ok, _, err) = llmbs(&resume);
    assert!(!ok && err.contains("predictions.jsonl.partial"), "{err}");
    std::fs::remove_file(&partial).unwrap();
    // Settings whose report would be wrong or empty are refused.
    for (flag, value) in [("--beam", "3"), ("--beam", "0"), ("--limit", "0")] {
        let mut bad = eval_args.to_vec();
        let at = bad.iter().position(|a| *a == flag).unwrap();
        bad[at + 1] = value;
        let (ok, _, err) = llmbs(&bad);
        assert!(!ok && err.contains(&format!("{flag} {value}")), "{err}");
    }
    // Adapter off writes its own report beside the adapter-on one.
    let mut off = eval_args.to_vec();
    off.extend(["--adapter", "off"]);
    let (ok, _, err) = llmbs(&off);
    assert!(ok, "{err}");
    assert!(run
        .join("eval/test-initial-best-off-8u-seed0.json")
        .is_file());
    assert!(run.join(&eval_json).is_file());

    // Everything is up to date: every stage is skipped.
    let (ok, _, err) = llmbs(&args);
    assert!(ok, "{err}");
    assert_eq!(err.matches("up to date (skipped)").count(), 7, "{err}");

    // A copy of the dataset (new modification times, as on a fresh machine) is the same data:
    // nothing reruns.
    let copy = tmp.path().join("beauty-copy");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(&data).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let mut copied = args.to_vec();
    copied[4] = s(&copy);
    let (ok, _, err) = llmbs(&copied);
    assert!(ok, "{err}");
    assert_eq!(err.matches("up to date (skipped)").count(), 7, "{err}");

    // --from train_anneal reruns the last two stages only.
    let mut from = args.to_vec();
    from.extend(["--from", "train_anneal"]);
    let (ok, _, err) = llmbs(&from);
    assert!(ok, "{err}");
    assert_eq!(err.matches("up to date (skipped)").count(), 5, "{err}");
    assert!(
        err.contains("pipeline: train_anneal\n") && err.contains("pipeline: eval\n"),
        "{err}"
    );

    // An ablation without the anneal stage: everything before eval is reused from the base
    // run (checkpoints included), and eval uses the trained initial model without an adapter.
    let mut abl = args.to_vec();
    abl.extend(["--ablation", "anneal=off"]);
    let (ok, _, err) = llmbs(&abl);
    assert!(ok, "{err}");
    assert_eq!(err.matches("reused from").count(), 5, "{err}");
    let arun = tmp.path().join("run-anneal-off");
    // The behavior stage's model and report come with its table: a reused SASRec still gives
    // the eval stage its baseline row and the distillation its teacher.
    for f in ["behavior/din/model.safetensors", "behavior/din/report.json"] {
        assert!(
            arun.join(f).is_file(),
            "{f} not linked into the ablation run"
        );
    }
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(arun.join("eval/test-initial-best-off-8u-seed0.json")).unwrap(),
    )
    .unwrap();
    let ck = report["checkpoint"].as_str().unwrap();
    assert!(
        ck.contains("initial-best") && ck.contains("adapter off") && !ck.contains("fresh"),
        "{ck}"
    );

    // recommend: a known user, a given history, and clear errors for unknown ids.
    let inter: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(data.join("Beauty.inter.json")).unwrap())
            .unwrap();
    let (user, seq) = inter.iter().next().unwrap();
    let (ok, out, err) = llmbs(&[
        "recommend",
        "--run",
        s(&run),
        "--user",
        user,
        "--k",
        "5",
        "--json",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let recs = v["recommendations"].as_array().unwrap();
    assert_eq!(recs.len(), 5);
    let distinct: std::collections::HashSet<&str> =
        recs.iter().map(|r| r["item"].as_str().unwrap()).collect();
    assert_eq!(distinct.len(), 5);
    assert!(recs
        .iter()
        .all(|r| !r["title"].as_str().unwrap().is_empty()));
    let first = seq.as_array().unwrap()[0]
        .to_string()
        .trim_matches('"')
        .to_string();
    let (ok, out, err) = llmbs(&[
        "recommend",
        "--run",
        s(&run),
        "--history",
        &first,
        "--k",
        "3",
        "--device",
        "cpu",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| rank"))
            .count(),
        3,
        "{out}"
    );
    let (ok, _, err) = llmbs(&[
        "recommend",
        "--run",
        s(&run),
        "--history",
        &format!("{first},no-such-item"),
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("no-such-item"), "{err}");
    let (ok, _, err) = llmbs(&[
        "recommend",
        "--run",
        s(&run),
        "--user",
        "nobody-42",
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("nobody-42"), "{err}");

    // `llmbs train --dtype bf16`: bf16 compute, f32 weights in the checkpoint, the compute
    // dtype in the report; the fresh ID rows started from the item text (the default). Dense SRT
    // on: every sample's history IDs are found in the real tokenizer's prompt (or it fails).
    let run2 = tmp.path().join("run-bf16");
    for d in ["index", "embeddings"] {
        std::fs::create_dir_all(run2.join(d)).unwrap();
        for f in std::fs::read_dir(run.join(d)).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, run2.join(d).join(f.file_name().unwrap())).unwrap();
        }
    }
    let train = |extra: &[&str]| {
        let mut a = vec![
            "train",
            "--stage",
            "initial",
            "--run",
            s(&run2),
            "--data",
            s(&data),
            "--model",
            s(&model),
            "--steps",
            "2",
            "--device",
            "cpu",
        ];
        a.extend_from_slice(extra);
        llmbs(&a)
    };
    let (ok, _, err) = train(&[
        "--batch-size",
        "4",
        "--micro-batch",
        "2",
        "--eval-every",
        "2",
        "--valid-users",
        "4",
        "--max-history",
        "5",
        "--dtype",
        "bf16",
        "--srt-dense",
        "--mix",
        "srt=1,id2text=0,text2id=0,hist_text2id=0,hist_id2text=0",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("start from their items' text"), "{err}");
    let rep: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(run2.join("train/initial/report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rep["compute_dtype"], "bf16", "{rep}");
    assert_eq!(rep["config"]["id_init"], "text", "{rep}");
    assert_eq!(rep["config"]["srt_dense"], true, "{rep}");
    let w = candle_core::safetensors::load(
        run2.join("checkpoints/initial/model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    assert!(w.values().all(|t| t.dtype() == DType::F32));
    let (ok, _, err) = train(&["--dtype", "f16"]);
    assert!(!ok && err.contains("f16"), "{err}");
    // A second fresh train would replace the first: refused, naming both ways on.
    let (ok, _, err) = train(&["--max-history", "5"]);
    assert!(
        !ok && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    // --resume with a longer schedule is refused, naming the setting.
    let (ok, _, err) = llmbs(&[
        "train",
        "--stage",
        "initial",
        "--run",
        s(&run2),
        "--resume",
        "--steps",
        "4",
        "--device",
        "cpu",
    ]);
    assert!(!ok && err.contains("steps: 2 -> 4"), "{err}");

    // A config with an unknown key is refused, naming it.
    let bad = tmp.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"name": "x", "data": "d", "model": "m", "train_anneal": null, "epochs": 3}"#,
    )
    .unwrap();
    let (ok, _, err) = llmbs(&["pipeline", "--config", s(&bad)]);
    assert!(
        !ok && err.contains("epochs") && err.contains("bad.json"),
        "{err}"
    );
}
