//! The report of one evaluation (`eval/<label>.{json,md}`): metrics, coverage, the settings a
//! resumed run must match, throughput, and the paper's row on the dataset it was published on.

use serde::{Deserialize, Serialize};

use super::config::{EvalConfig, SplitName};
use super::slices::{slices_markdown, SliceMetrics};
use crate::metrics::Metrics;

/// `eval/<label>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub label: String,
    pub dataset: String,
    pub split: SplitName,
    pub users: usize,
    /// Users the evaluation set out to cover (more than `users` when `--max-minutes` stopped it).
    #[serde(default)]
    pub planned_users: usize,
    pub all_users: bool,
    pub metrics: Metrics,
    /// R@10 and N@10 by the target's training popularity (empty in older reports).
    #[serde(default)]
    pub slices: Vec<SliceMetrics>,
    pub coverage10: Coverage,
    pub seconds: f64,
    pub users_per_s: f64,
    pub resumed_users: usize,
    /// What a resumed evaluation must match.
    pub resume_settings: serde_json::Value,
    pub config: EvalConfig,
    pub model: String,
    pub checkpoint: String,
    pub index: String,
    pub prompt: String,
    pub max_history: usize,
    pub mean_prompt_tokens: f64,
    pub device: String,
    pub dtype: String,
    pub scoring: String,
    pub paper_table2: Option<[f64; 4]>,
    pub predictions: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Coverage {
    pub items: usize,
    pub fraction: f64,
}

impl EvalReport {
    pub fn markdown(&self) -> String {
        let m = &self.metrics;
        let mut sample = match self.config.limit {
            Some(_) => format!(", seeded sample, seed {}", self.config.seed),
            None => String::new(),
        };
        if let Some(m) = self.config.max_minutes {
            if self.users < self.planned_users {
                sample.push_str(&format!(
                    "; {m} min budget reached: a seeded random {} of {} planned users, seed {}",
                    self.users, self.planned_users, self.config.seed
                ));
            }
        }
        let mut md = format!(
            "# llmbs eval: {} ({} split, {} users{sample}): {}\n\n{}\n{}\n",
            self.dataset,
            self.split.name(),
            self.users,
            self.label,
            m.markdown_header(),
            m.to_markdown_row()
        );
        md.push_str(&format!(
            "\nCoverage@10: {} distinct items in the users' top-10 lists ({:.2}% of the catalogue).\n",
            self.coverage10.items,
            100.0 * self.coverage10.fraction
        ));
        if !self.slices.is_empty() {
            md.push('\n');
            md.push_str(&slices_markdown(&self.slices));
        }
        if let Some(r) = self.paper_table2 {
            md.push_str(&format!(
                "\nPaper Table 2 (LLM-BS, LLaMA-7B): R@5 {:.4}, R@10 {:.4}, N@5 {:.4}, N@10 {:.4}\n",
                r[0], r[1], r[2], r[3]
            ));
        }
        let resumed = if self.resumed_users > 0 {
            format!(
                " for {} users; {} more came from an interrupted run",
                self.users - self.resumed_users,
                self.resumed_users
            )
        } else {
            String::new()
        };
        md.push_str(&format!(
            "\nLoaded: {}. Index: {}. Prompt: srt[{}], history of at most {} items. Beam {}, batch {}, {} {}: {:.2} users/s ({:.0} s{resumed}).\n",
            self.checkpoint,
            self.index,
            self.config.template,
            self.max_history,
            self.config.beam,
            self.config.batch,
            self.device,
            self.dtype,
            self.users_per_s,
            self.seconds,
        ));
        md
    }
}
