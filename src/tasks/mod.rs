//! Instruction prompts of the Comprehensive Interaction Modeling tasks (paper 3.3.2); the
//! templates live in `configs/prompts.json` and are embedded as the defaults.

pub mod build;
pub mod dense;
pub mod heldout;

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// The prompt file compiled into the binary.
pub const DEFAULT_PROMPTS: &str = include_str!("../../configs/prompts.json");

/// Prompt templates: `wrapper` holds `{instruction}`; each task template holds `{history}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prompts {
    pub wrapper: String,
    pub history_separator: String,
    /// Sequence recommendation (SRT): history IDs -> next item's ID; `{history}`.
    pub srt: Vec<String>,
    /// Semantic reconstruction: an item's ID -> its title and categories; `{item}`.
    pub id2text: Vec<String>,
    /// Semantic reconstruction: an item's title and categories -> its ID; `{text}`.
    pub text2id: Vec<String>,
    /// Preference reconfiguration: the history as titles -> the next item's ID; `{history}`.
    pub hist_text2id: Vec<String>,
    /// Preference reconfiguration: the history as IDs -> the next item's title and categories.
    pub hist_id2text: Vec<String>,
}

impl Prompts {
    pub fn embedded() -> anyhow::Result<Self> {
        Self::parse(DEFAULT_PROMPTS, "configs/prompts.json (embedded)")
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, name: &str) -> anyhow::Result<Self> {
        let p: Prompts =
            serde_json::from_str(text).with_context(|| format!("parsing prompts {name}"))?;
        if !p.wrapper.contains("{instruction}") {
            anyhow::bail!("{name}: 'wrapper' lacks {{instruction}}");
        }
        let groups: [(&str, &Vec<String>, &str); 5] = [
            ("srt", &p.srt, "{history}"),
            ("id2text", &p.id2text, "{item}"),
            ("text2id", &p.text2id, "{text}"),
            ("hist_text2id", &p.hist_text2id, "{history}"),
            ("hist_id2text", &p.hist_id2text, "{history}"),
        ];
        for (key, templates, slot) in groups {
            if templates.is_empty() {
                anyhow::bail!("{name}: '{key}' has no templates");
            }
            for (i, t) in templates.iter().enumerate() {
                if !t.contains(slot) {
                    anyhow::bail!("{name}: {key}[{i}] lacks {slot}");
                }
            }
        }
        Ok(p)
    }

    /// The full SRT prompt for a history of item IDs (each a list of ID tokens), oldest first.
    pub fn srt_prompt(&self, template: usize, history: &[&[String]]) -> String {
        let hist: Vec<String> = history.iter().map(|id| id.concat()).collect();
        let instruction = self.srt[template % self.srt.len()]
            .replace("{history}", &hist.join(&self.history_separator));
        self.wrapper.replace("{instruction}", &instruction)
    }

    /// Fills `templates[template]`'s `slot` with `value` and wraps it as an instruction.
    pub fn fill(&self, templates: &[String], template: usize, slot: &str, value: &str) -> String {
        let t = &templates[template % templates.len().max(1)];
        self.wrapper
            .replace("{instruction}", &t.replace(slot, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_prompts_parse_and_fill() {
        let p = Prompts::embedded().unwrap();
        assert!(p.srt.len() >= 3);
        let a = vec!["<s1_1>".to_string(), "<s2_2>".to_string()];
        let b = vec!["<s1_3>".to_string(), "<s2_4>".to_string()];
        let s = p.srt_prompt(0, &[&a, &b]);
        assert!(s.contains("<s1_1><s2_2>, <s1_3><s2_4>"));
        assert!(s.ends_with("### Response:\n"));
    }
}
