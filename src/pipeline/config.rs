//! Pipeline configs: a file names the data and backbone and, per stage, any subset of that
//! stage's typed config (the rest keep the stage's defaults); resolved, the config is one
//! typed value written to `RUN/config.json` before any work.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::behavior::{BehaviorConfig, EncoderKind};
use crate::embed::EmbedConfig;
use crate::eval::run::EvalConfig;
use crate::index::{IndexConfig, Mode};
use crate::run::model::AdapterChoice;
use crate::train::{Stage, TrainConfig};
use crate::util::overlay;

/// A resolved pipeline config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Run name: outputs go to `runs/<name>/`.
    pub name: String,
    /// One line on what the config is for.
    pub description: String,
    /// Dataset directory (LC-Rec JSON), relative to the working directory.
    pub data: String,
    /// Backbone of `embed` and the initial stage (`default`, a .gguf, a HF directory, a Hub id).
    pub model: String,
    /// Another run whose finished stages with the same inputs are linked instead of rerun.
    pub reuse: Option<String>,
    /// Compute dtype of the training stages: f32, bf16 or auto (bf16 on CUDA; on a CPU the
    /// faster of f32 and bf16 GEMMs, measured when the stage starts and recorded with it).
    #[serde(default = "f32_name")]
    pub dtype: String,
    /// Prompt file of the training stages (relative to the working directory, as `data`);
    /// None: the embedded `configs/prompts.json` (the paper's wording).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompts: Option<String>,
    pub embed: EmbedConfig,
    pub behavior: BehaviorConfig,
    /// A second behavior encoder trained only as the distillation teacher
    /// (`train_initial.distill`), into `RUN/behavior/<encoder>/`; None: no teacher stage.
    #[serde(default)]
    pub teacher: Option<BehaviorConfig>,
    pub index: IndexConfig,
    pub train_initial: TrainConfig,
    /// None switches the anneal stage off (the paper's "w/o AAT" ablation).
    pub train_anneal: Option<TrainConfig>,
    /// Each evaluation of the eval stage.
    pub eval: Vec<EvalConfig>,
    /// Most-popular and cluster baselines on every evaluation's users.
    pub baselines: bool,
}

fn f32_name() -> String {
    "f32".into()
}

/// The configs compiled into the binary, by name.
pub const EMBEDDED: [(&str, &str); 6] = [
    (
        "beauty-smoke",
        include_str!("../../configs/beauty-smoke.json"),
    ),
    ("beauty", include_str!("../../configs/beauty.json")),
    ("beauty-cpu", include_str!("../../configs/beauty-cpu.json")),
    (
        "beauty-cpu-dense",
        include_str!("../../configs/beauty-cpu-dense.json"),
    ),
    (
        "beauty-cpu-prefix",
        include_str!("../../configs/beauty-cpu-prefix.json"),
    ),
    ("tiny", include_str!("../../configs/tiny.json")),
];

/// Reads a config file, or an embedded config by name; errors name the file and key.
pub fn load_config(s: &str) -> anyhow::Result<PipelineConfig> {
    let (text, name) = match EMBEDDED.iter().find(|(n, _)| *n == s) {
        Some((n, t)) => (t.to_string(), format!("configs/{n}.json (embedded)")),
        None => (
            std::fs::read_to_string(s).with_context(|| {
                let names: Vec<&str> = EMBEDDED.iter().map(|e| e.0).collect();
                format!(
                    "reading pipeline config {s} (embedded: {})",
                    names.join(", ")
                )
            })?,
            s.to_string(),
        ),
    };
    let raw: Value =
        serde_json::from_str(&text).with_context(|| format!("parsing pipeline config {name}"))?;
    resolve(&raw).with_context(|| format!("pipeline config {name}"))
}

/// The stage defaults with the file's sections laid over them.
pub fn resolve(raw: &Value) -> anyhow::Result<PipelineConfig> {
    let obj = raw.as_object().context("expected a JSON object")?;
    let encoder = match obj.get("behavior").and_then(|b| b.get("encoder")) {
        Some(e) => serde_json::from_value(e.clone()).context("behavior.encoder")?,
        None => EncoderKind::Din,
    };
    let mut v = serde_json::json!({
        "name": "", "description": "", "data": "", "model": "default", "reuse": null, "prompts": null,
        "dtype": "f32",
        "embed": EmbedConfig::default().overlay_base()?,
        "behavior": BehaviorConfig::new(encoder),
        "teacher": null,
        "index": IndexConfig::default(),
        "train_initial": TrainConfig::new(Stage::Initial).overlay_base()?,
        "train_anneal": TrainConfig::new(Stage::Anneal).overlay_base()?,
        "eval": [], "baselines": true,
    });
    for (k, val) in obj {
        let slot = v.get_mut(k).with_context(|| format!("unknown key '{k}'"))?;
        match (k.as_str(), val) {
            ("train_anneal", Value::Null) => *slot = Value::Null,
            ("teacher", Value::Object(_)) => {
                let enc = match val.get("encoder") {
                    Some(e) => serde_json::from_value(e.clone()).context("teacher.encoder")?,
                    None => EncoderKind::Sasrec,
                };
                let mut t = serde_json::to_value(BehaviorConfig::new(enc))?;
                overlay(&mut t, val, k)?;
                *slot = t;
            }
            ("eval", Value::Array(list)) => {
                let mut out = Vec::new();
                for (i, e) in list.iter().enumerate() {
                    let mut d = serde_json::to_value(EvalConfig::default())?;
                    overlay(&mut d, e, &format!("eval[{i}]"))?;
                    out.push(d);
                }
                *slot = Value::Array(out);
            }
            (_, Value::Object(_)) if slot.is_object() => overlay(slot, val, k)?,
            _ => *slot = val.clone(),
        }
    }
    // The anneal stage trains with the initial stage's softmax unless told otherwise.
    let asked = obj
        .get("train_anneal")
        .and_then(|a| a.get("item_loss"))
        .is_some();
    if !asked && v["train_anneal"].is_object() {
        v["train_anneal"]["item_loss"] = v["train_initial"]["item_loss"].clone();
    }
    // A stage section cannot change which stage it is.
    v["train_initial"]["stage"] = serde_json::to_value(Stage::Initial)?;
    if v["train_anneal"].is_object() {
        v["train_anneal"]["stage"] = serde_json::to_value(Stage::Anneal)?;
    }
    let c: PipelineConfig = serde_json::from_value(v)?;
    c.train_initial.validate()?;
    if let Some(a) = &c.train_anneal {
        a.validate()?;
    }
    for e in &c.eval {
        e.validate()?;
    }
    if let Some(t) = &c.teacher {
        anyhow::ensure!(
            t.encoder != c.behavior.encoder,
            "teacher.encoder: the behavior stage already trains {} (its model is the teacher); drop 'teacher'",
            t.encoder.name()
        );
    }
    if let Some(d) = &c.train_initial.distill {
        let own = [
            Some(c.behavior.encoder),
            c.teacher.as_ref().map(|t| t.encoder),
        ];
        anyhow::ensure!(
            own.contains(&Some(d.teacher)),
            "train_initial.distill.teacher: {} is trained by neither 'behavior' nor 'teacher'",
            d.teacher.name()
        );
    }
    anyhow::ensure!(
        matches!(c.dtype.as_str(), "f32" | "bf16" | "auto"),
        "dtype: {} (f32, bf16 or auto)",
        c.dtype
    );
    anyhow::ensure!(!c.name.is_empty(), "'name' is required");
    anyhow::ensure!(!c.data.is_empty(), "'data' is required");
    Ok(c)
}

/// Applies `--ablation` switches (paper Table 4, Figure 5); returns the run-name suffix.
pub fn apply_ablations(c: &mut PipelineConfig, ablations: &[String]) -> anyhow::Result<String> {
    let mut tags = Vec::new();
    for a in ablations {
        match a.split_once('=') {
            Some(("index", m)) => {
                c.index.mode = match m {
                    "random" => Mode::Random,
                    "semantic" => Mode::Semantic,
                    "behavior" => Mode::Behavior,
                    "unit" => Mode::Unit,
                    "behavior-first" => Mode::BehaviorFirst,
                    _ => anyhow::bail!(
                        "--ablation {a}: index=random|semantic|behavior|unit|behavior-first"
                    ),
                };
                tags.push(format!("index-{m}"));
            }
            Some(("gct", "off")) => {
                c.train_initial.lambda_s = 0.0;
                c.train_initial.lambda_b = 0.0;
                tags.push("gct-off".into());
            }
            Some(("anneal", "off")) => {
                c.train_anneal = None;
                // Without the stage there is no adapter: an evaluation that asks for the run's
                // adapter becomes the adapter-off one, kept once (`beauty` evaluates on, then off).
                let mut evals: Vec<EvalConfig> = Vec::new();
                for mut e in std::mem::take(&mut c.eval) {
                    if e.model.adapter == AdapterChoice::On {
                        e.model.adapter = AdapterChoice::Off;
                    }
                    if !evals.contains(&e) {
                        evals.push(e);
                    }
                }
                c.eval = evals;
                tags.push("anneal-off".into());
            }
            _ => anyhow::bail!(
                "--ablation {a}: expected index=random|semantic|behavior|unit|behavior-first, gct=off or anneal=off"
            ),
        }
    }
    Ok(if tags.is_empty() {
        String::new()
    } else {
        format!("-{}", tags.join("-"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anneal_off_turns_adapter_on_evaluations_into_one_adapter_off() {
        // `beauty` evaluates the test split with the adapter on, then off.
        let mut c = load_config("beauty").unwrap();
        let before = c.eval.len();
        assert!(c.eval.iter().any(|e| e.model.adapter == AdapterChoice::On));
        apply_ablations(&mut c, &["anneal=off".into()]).unwrap();
        assert!(c.train_anneal.is_none());
        assert_eq!(c.eval.len(), before - 1, "{:?}", c.eval);
        assert!(c.eval.iter().all(|e| e.model.adapter != AdapterChoice::On));
    }

    #[test]
    fn every_embedded_config_resolves() {
        for (name, _) in EMBEDDED {
            let c = load_config(name).unwrap();
            assert_eq!(c.train_initial.stage, Stage::Initial);
            assert!(!c.eval.is_empty(), "{name}");
        }
    }

    #[test]
    fn unknown_keys_are_named() {
        let bad = serde_json::json!({"name": "x", "data": "d", "train_initial": {"stepz": 3}});
        let e = format!("{:#}", resolve(&bad).unwrap_err());
        assert!(e.contains("train_initial.stepz"), "{e}");
        let bad = serde_json::json!({"name": "x", "data": "d", "eval": [{"beam": 3}]});
        assert!(format!("{:#}", resolve(&bad).unwrap_err()).contains("--beam 3"));
    }
}
