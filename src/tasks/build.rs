//! Training samples of the Comprehensive Interaction Modeling tasks (paper 3.3.2) as token ids:
//! which task, which source row and which template each sample uses comes from a seeded plan,
//! so a resumed run sees exactly the samples an uninterrupted one would.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::Prompts;
use crate::data::{Dataset, Sample};
use crate::llm::tokenizer::encode;

/// The tasks of paper 3.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Sequence recommendation: history IDs -> next ID (GCT applies here).
    Srt,
    /// Semantic reconstruction: ID -> title and categories.
    Id2Text,
    /// Semantic reconstruction: title and categories -> ID.
    Text2Id,
    /// Preference reconfiguration: history titles -> next ID.
    HistText2Id,
    /// Preference reconfiguration: history IDs -> next item's title and categories.
    HistId2Text,
}

impl TaskKind {
    pub const ALL: [TaskKind; 5] = [
        TaskKind::Srt,
        TaskKind::Id2Text,
        TaskKind::Text2Id,
        TaskKind::HistText2Id,
        TaskKind::HistId2Text,
    ];
}

/// Relative sampling weights of the tasks (0 switches a task off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskMix {
    pub srt: f64,
    pub id2text: f64,
    pub text2id: f64,
    pub hist_text2id: f64,
    pub hist_id2text: f64,
}

impl Default for TaskMix {
    /// SRT dominates, as the recommendation task is what is evaluated; the auxiliary tasks
    /// together take a third of the samples.
    fn default() -> Self {
        Self {
            srt: 2.0,
            id2text: 0.25,
            text2id: 0.25,
            hist_text2id: 0.25,
            hist_id2text: 0.25,
        }
    }
}

impl TaskMix {
    pub fn srt_only() -> Self {
        Self {
            srt: 1.0,
            id2text: 0.0,
            text2id: 0.0,
            hist_text2id: 0.0,
            hist_id2text: 0.0,
        }
    }

    pub fn weight(&self, k: TaskKind) -> f64 {
        match k {
            TaskKind::Srt => self.srt,
            TaskKind::Id2Text => self.id2text,
            TaskKind::Text2Id => self.text2id,
            TaskKind::HistText2Id => self.hist_text2id,
            TaskKind::HistId2Text => self.hist_id2text,
        }
    }

    /// Parses `srt=2,id2text=0.25,...` (unnamed tasks keep their weight).
    pub fn parse_into(&mut self, s: &str) -> anyhow::Result<()> {
        for (k, v) in Self::parse_pairs(s)? {
            match k {
                "srt" => self.srt = v,
                "id2text" => self.id2text = v,
                "text2id" => self.text2id = v,
                "hist_text2id" => self.hist_text2id = v,
                _ => self.hist_id2text = v,
            }
        }
        Ok(())
    }

    /// The `task=weight` pairs of `srt=2,id2text=0.25,...`, checked.
    pub fn parse_pairs(s: &str) -> anyhow::Result<Vec<(&'static str, f64)>> {
        const TASKS: [&str; 5] = ["srt", "id2text", "text2id", "hist_text2id", "hist_id2text"];
        let mut out = Vec::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("task mix '{part}': expected task=weight"))?;
            let v: f64 = v
                .trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("task mix '{part}': '{v}' is not a number"))?;
            if !(v >= 0.0 && v.is_finite()) {
                anyhow::bail!("task mix '{part}': weights must be finite and >= 0");
            }
            let Some(&k) = TASKS.iter().find(|t| **t == k.trim()) else {
                anyhow::bail!(
                    "task mix: unknown task '{}' (srt, id2text, text2id, hist_text2id, hist_id2text)",
                    k.trim()
                );
            };
            out.push((k, v));
        }
        Ok(out)
    }
}

/// One planned sample: the task, its source row (a training sample or an item) and template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    pub kind: TaskKind,
    pub row: usize,
    pub template: usize,
}

/// One encoded sample: `input` = prompt ++ response (++ `[CON]`). Position `p` in
/// `prompt_len - 1 .. prompt_len + response_len - 1` predicts `input[p + 1]`; only those carry
/// loss. `gct_item` is the target whose Z^s / Z^b the `[CON]` state (the last token) contrasts.
/// `history_loss` holds prompt positions that carry loss too (dense SRT only, else empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub kind: TaskKind,
    pub input: Vec<u32>,
    pub prompt_len: usize,
    pub response_len: usize,
    pub gct_item: Option<u32>,
    pub history_loss: Vec<usize>,
    /// SRT: the sample's history then its target (what a behavior teacher reads for
    /// distillation, `train::distill`); empty for the other tasks.
    pub srt_items: Vec<u32>,
}

impl Encoded {
    /// Tokens that carry the cross-entropy.
    pub fn loss_tokens(&self) -> usize {
        self.response_len + self.history_loss.len()
    }
}

/// Length limits of the text parts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextLimits {
    /// Tokens of a text response (title and categories), before the end-of-sequence token.
    pub response_tokens: usize,
    /// Words of an item title inside a prompt.
    pub title_words: usize,
    /// Most recent items of a history written as titles.
    pub text_history: usize,
}

impl Default for TextLimits {
    fn default() -> Self {
        Self {
            response_tokens: 32,
            title_words: 12,
            text_history: 5,
        }
    }
}

/// Everything needed to turn a plan entry into tokens.
#[derive(Clone)]
pub struct TaskBuilder<'a> {
    pub ds: &'a Dataset,
    /// Per item: its ID tokens (strings) and their vocabulary ids.
    pub id_tokens: &'a [Vec<String>],
    pub id_ids: &'a [Vec<u32>],
    pub prompts: &'a Prompts,
    pub tok: &'a Tokenizer,
    pub samples: &'a [Sample],
    /// The items whose text may enter training, ascending: every item but the ones held out
    /// for the perplexity check (`text_items`), whose titles and categories appear in no prompt
    /// and no response of any task.
    pub text_items: Vec<u32>,
    pub limits: TextLimits,
    pub con_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Dense SRT: the rows of `samples` SRT draws from (`dense::srt_windows`), each with loss
    /// on its later history IDs too. None: every prefix, loss on the target only (paper).
    pub srt_windows: Option<Vec<usize>>,
}

impl TaskBuilder<'_> {
    /// How many source rows a task has.
    pub fn rows(&self, k: TaskKind) -> usize {
        self.rows_of(k).len()
    }

    /// Whether `item`'s text may enter training.
    fn text_ok(&self, item: u32) -> bool {
        self.text_items.binary_search(&item).is_ok()
    }

    /// The source rows a task draws from. The text tasks skip what would show a held-out item's
    /// text: `hist_id2text` a held-out target, `hist_text2id` a history with no other title.
    pub fn rows_of(&self, k: TaskKind) -> Vec<usize> {
        let all = |n: usize| (0..n).collect::<Vec<usize>>();
        let samples = (0..self.samples.len()).map(|r| (r, &self.samples[r]));
        match k {
            TaskKind::Srt => all(self
                .srt_windows
                .as_ref()
                .map_or(self.samples.len(), |w| w.len())),
            TaskKind::HistText2Id => samples
                .filter(|(_, s)| s.history.iter().any(|&i| self.text_ok(i)))
                .map(|(r, _)| r)
                .collect(),
            TaskKind::HistId2Text => samples
                .filter(|(_, s)| self.text_ok(s.target))
                .map(|(r, _)| r)
                .collect(),
            TaskKind::Id2Text | TaskKind::Text2Id => all(self.text_items.len()),
        }
    }

    /// `n` planned samples: task by weight, rows in a fresh seeded permutation per task and
    /// pass (every training prefix is seen once before any repeats), template uniformly.
    pub fn plan(&self, mix: &TaskMix, n: usize, seed: u64) -> anyhow::Result<Vec<Planned>> {
        let kinds: Vec<(TaskKind, f64)> = TaskKind::ALL
            .iter()
            .map(|&k| {
                (
                    k,
                    if self.rows(k) == 0 {
                        0.0
                    } else {
                        mix.weight(k)
                    },
                )
            })
            .filter(|&(_, w)| w > 0.0)
            .collect();
        let total: f64 = kinds.iter().map(|k| k.1).sum();
        if kinds.is_empty() || total <= 0.0 {
            anyhow::bail!("task mix: every task with data has weight 0");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut perms: Vec<(Vec<usize>, usize)> = kinds.iter().map(|_| (Vec::new(), 0)).collect();
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let mut u = rng.random_range(0.0..total);
            let mut ki = kinds.len() - 1;
            for (i, &(_, w)) in kinds.iter().enumerate() {
                if u < w {
                    ki = i;
                    break;
                }
                u -= w;
            }
            let kind = kinds[ki].0;
            let (perm, pos) = &mut perms[ki];
            if *pos >= perm.len() {
                *perm = self.rows_of(kind);
                perm.shuffle(&mut rng);
                *pos = 0;
            }
            let row = perm[*pos];
            *pos += 1;
            let template = rng.random_range(0..self.templates(kind).len());
            out.push(Planned {
                kind,
                row,
                template,
            });
        }
        Ok(out)
    }

    fn templates(&self, k: TaskKind) -> &[String] {
        match k {
            TaskKind::Srt => &self.prompts.srt,
            TaskKind::Id2Text => &self.prompts.id2text,
            TaskKind::Text2Id => &self.prompts.text2id,
            TaskKind::HistText2Id => &self.prompts.hist_text2id,
            TaskKind::HistId2Text => &self.prompts.hist_id2text,
        }
    }

    fn id_string(&self, item: u32) -> String {
        self.id_tokens[item as usize].concat()
    }

    fn item_description(&self, item: u32) -> String {
        let it = &self.ds.items[item as usize];
        format!("{}. Categories: {}", it.title, it.categories)
    }

    fn short_title(&self, item: u32) -> String {
        let words: Vec<&str> = self.ds.items[item as usize]
            .title
            .split_whitespace()
            .take(self.limits.title_words)
            .collect();
        words.join(" ")
    }

    fn history_ids(&self, s: &Sample) -> String {
        let h: Vec<String> = s.history.iter().map(|&i| self.id_string(i)).collect();
        h.join(&self.prompts.history_separator)
    }

    fn text_response(&self, item: u32) -> anyhow::Result<Vec<u32>> {
        let mut r = encode(self.tok, &self.item_description(item))?;
        r.truncate(self.limits.response_tokens);
        r.extend(self.eos_id);
        Ok(r)
    }

    /// Tokens of one planned sample.
    pub fn encode(&self, p: &Planned) -> anyhow::Result<Encoded> {
        let tpl = self.templates(p.kind);
        let (prompt, response, gct_item) = match p.kind {
            TaskKind::Srt => {
                let row = self.srt_windows.as_ref().map_or(p.row, |w| w[p.row]);
                let s = &self.samples[row];
                let prompt = self
                    .prompts
                    .fill(tpl, p.template, "{history}", &self.history_ids(s));
                let resp = self.id_ids[s.target as usize].clone();
                (prompt, resp, self.con_id.map(|_| s.target))
            }
            TaskKind::Id2Text => {
                let item = self.text_items[p.row];
                let prompt = self
                    .prompts
                    .fill(tpl, p.template, "{item}", &self.id_string(item));
                (prompt, self.text_response(item)?, None)
            }
            TaskKind::Text2Id => {
                let item = self.text_items[p.row];
                let prompt =
                    self.prompts
                        .fill(tpl, p.template, "{text}", &self.item_description(item));
                (prompt, self.id_ids[item as usize].clone(), None)
            }
            TaskKind::HistText2Id => {
                let s = &self.samples[p.row];
                let shown: Vec<u32> = s
                    .history
                    .iter()
                    .copied()
                    .filter(|&i| self.text_ok(i))
                    .collect();
                let from = shown.len().saturating_sub(self.limits.text_history);
                let titles: Vec<String> = shown[from..]
                    .iter()
                    .map(|&i| format!("\"{}\"", self.short_title(i)))
                    .collect();
                let prompt = self
                    .prompts
                    .fill(tpl, p.template, "{history}", &titles.join(", "));
                (prompt, self.id_ids[s.target as usize].clone(), None)
            }
            TaskKind::HistId2Text => {
                let s = &self.samples[p.row];
                let prompt = self
                    .prompts
                    .fill(tpl, p.template, "{history}", &self.history_ids(s));
                (prompt, self.text_response(s.target)?, None)
            }
        };
        let mut input = encode(self.tok, &prompt)?;
        let prompt_len = input.len();
        let response_len = response.len();
        input.extend(response);
        if let (Some(_), Some(con)) = (gct_item, self.con_id) {
            input.push(con);
        }
        let mut history_loss = Vec::new();
        let srt_items = match p.kind {
            TaskKind::Srt => {
                let row = self.srt_windows.as_ref().map_or(p.row, |w| w[p.row]);
                let s = &self.samples[row];
                s.history.iter().copied().chain([s.target]).collect()
            }
            _ => Vec::new(),
        };
        if let (TaskKind::Srt, Some(w)) = (p.kind, &self.srt_windows) {
            let s = &self.samples[w[p.row]];
            let ids: Vec<&[u32]> = s
                .history
                .iter()
                .map(|&i| self.id_ids[i as usize].as_slice())
                .collect();
            history_loss = super::dense::history_id_positions(&input, prompt_len, &ids)
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "dense SRT: the history IDs of user {} are not found as written in the \
                         tokenized prompt (template {})",
                        s.user,
                        p.template
                    )
                })?;
        }
        Ok(Encoded {
            kind: p.kind,
            input,
            prompt_len,
            response_len,
            gct_item,
            history_loss,
            srt_items,
        })
    }
}

/// Every item except the held-out ones, in order.
pub fn text_items(n_items: usize, heldout: &[u32]) -> Vec<u32> {
    let h: HashSet<u32> = heldout.iter().copied().collect();
    (0..n_items as u32).filter(|i| !h.contains(i)).collect()
}
