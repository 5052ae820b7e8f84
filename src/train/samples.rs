//! The samples a stage trains and validates on (paper 3.3.2, 3.4.2): the anneal stage's
//! high-grade subset, the task builder over the run's data, and the fixed validation sample.

use std::collections::HashMap;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::assemble::Backbone;
use super::hooks::ValidSet;
use crate::config::train::{AnnealSelect, Stage, TrainConfig};
use crate::data::Sample;
use crate::eval;
use crate::run::RunData;
use crate::tasks::build::{text_items, Planned, TaskBuilder, TaskKind};

/// What a stage trains on: every training sample (initial) or the anneal subset.
pub fn stage_samples(d: &RunData, c: &TrainConfig) -> Vec<Sample> {
    let train = d.split.train_samples(c.max_history);
    match c.stage {
        Stage::Initial => train,
        Stage::Anneal => anneal_samples(&train, c),
    }
}

/// The anneal stage's high-grade subset (paper 3.4.2).
pub fn anneal_samples(train: &[Sample], c: &TrainConfig) -> Vec<Sample> {
    match c.anneal_select {
        AnnealSelect::LatestPerUser => {
            let mut last: HashMap<u32, &Sample> = HashMap::new();
            for s in train {
                last.insert(s.user, s); // samples come oldest first per user
            }
            let mut v: Vec<Sample> = last.into_values().cloned().collect();
            v.sort_by_key(|s| s.user);
            v
        }
        AnnealSelect::LongHistories => train
            .iter()
            .filter(|s| s.history.len() >= c.anneal_min_history)
            .cloned()
            .collect(),
    }
}

/// A fixed seeded sample of validation users: `valid_users` ranked by beam search, and at
/// least 64 for the validation CE.
pub fn valid_set(
    d: &RunData,
    builder: &TaskBuilder,
    items: &eval::ItemIds,
    c: &TrainConfig,
) -> anyhow::Result<ValidSet> {
    let mut valid: Vec<Sample> = d.split.valid.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(c.seed ^ 0x7A11D);
    valid.shuffle(&mut rng);
    valid.truncate(c.valid_users.max(64));
    valid.sort_by_key(|s| s.user);
    let vb = TaskBuilder {
        samples: &valid,
        con_id: None,
        text_items: Vec::new(),
        srt_windows: None,
        ..builder.clone()
    };
    let encoded = (0..valid.len())
        .map(|row| {
            vb.encode(&Planned {
                kind: TaskKind::Srt,
                row,
                template: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let samples: Vec<Sample> = valid.iter().take(c.valid_users).cloned().collect();
    let prompts = eval::prompt_ids(&samples, items, &d.prompts, 0, builder.tok)?;
    let names = samples
        .iter()
        .map(|s| {
            let user = d.ds.users[s.user as usize].clone();
            (user, d.ds.items[s.target as usize].id.clone())
        })
        .collect();
    Ok(ValidSet {
        encoded,
        samples,
        prompts,
        names,
    })
}

/// The task builder of a stage over its samples: held-out items' text kept out, `[CON]` when
/// GCT is on, dense SRT windows when asked.
pub fn task_builder<'a>(
    d: &'a RunData,
    bb: &'a Backbone,
    samples: &'a [Sample],
    c: &TrainConfig,
) -> TaskBuilder<'a> {
    let heldout =
        crate::tasks::heldout::heldout_items(d.ds.items.len(), c.heldout_fraction, c.seed);
    let eos_id = bb.loaded.cfg.eos_token_id.as_ref().and_then(|v| {
        v.as_u64().or_else(|| {
            v.as_array()
                .and_then(|a| a.first())
                .and_then(|x| x.as_u64())
        })
    });
    TaskBuilder {
        ds: &d.ds,
        id_tokens: &bb.items.tokens,
        id_ids: &bb.items.ids,
        prompts: &d.prompts,
        tok: &bb.loaded.tokenizer,
        samples,
        text_items: text_items(d.ds.items.len(), &heldout),
        limits: c.text.clone(),
        con_id: bb.con_id.filter(|_| c.gct() && c.stage == Stage::Initial),
        eos_id: eos_id.map(|x| x as u32),
        srt_windows: c
            .srt_dense
            .then(|| crate::tasks::dense::srt_windows(samples, c.max_history)),
    }
}
