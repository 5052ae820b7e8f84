//! The standard preprocessing: chronological order per user (file order breaks ties), repeats
//! dropped or kept, items without text dropped, iterative k-core, a length cap, and the
//! leave-one-out minimum, with the counts after each step.

use serde::Serialize;

use super::table::{Row, Table};
use super::ImportError;
use crate::data::MIN_INTERACTIONS;

/// What to do with a user's second interaction with the same item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Repeats {
    /// Keep the earliest (LC-Rec/LETTER's `make_inters_in_order`).
    Drop,
    /// Keep every interaction (S3-Rec's `get_interaction`).
    Keep,
}

/// What to do with an item whose title and categories are both empty or absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MissingText {
    /// Drop its interactions before the k-core (LC-Rec filters by the meta file's items).
    Drop,
    /// Keep it, titled "Item <id>".
    Placeholder,
}

/// The preprocessing settings; [`Default`] is the field's: 5-core, repeats dropped.
#[derive(Debug, Clone, Serialize)]
pub struct FilterOptions {
    /// Users need at least this many interactions (0 or 1: no user filter).
    pub user_core: usize,
    /// Items need at least this many interactions.
    pub item_core: usize,
    pub repeats: Repeats,
    /// Interactions rated below this are skipped as they are read.
    pub min_rating: Option<f64>,
    pub missing_text: MissingText,
    /// Keep only each user's most recent interactions, after the k-core.
    pub max_len: Option<usize>,
}

impl Default for FilterOptions {
    fn default() -> Self {
        FilterOptions {
            user_core: 5,
            item_core: 5,
            repeats: Repeats::Drop,
            min_rating: None,
            missing_text: MissingText::Drop,
            max_len: None,
        }
    }
}

/// Users, items and interactions after one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepCount {
    pub step: String,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
}

/// The filtered data: per source user id (first-seen order), the source item ids oldest first;
/// users left with nothing have an empty list.
pub struct Filtered {
    pub sequences: Vec<Vec<u32>>,
    pub steps: Vec<StepCount>,
    /// Rounds the k-core took to settle.
    pub kcore_rounds: usize,
}

fn count(step: &str, seqs: &[Vec<u32>], n_items: usize) -> StepCount {
    let mut seen = vec![false; n_items];
    let mut items = 0;
    let mut interactions = 0;
    for &i in seqs.iter().flatten() {
        interactions += 1;
        if !std::mem::replace(&mut seen[i as usize], true) {
            items += 1;
        }
    }
    StepCount {
        step: step.to_string(),
        users: seqs.iter().filter(|s| !s.is_empty()).count(),
        items,
        interactions,
    }
}

/// Groups rows by user, each user's oldest first; equal times keep file order (the sort is
/// stable), so the same file always gives the same sequences.
fn chronological(mut rows: Vec<Row>, n_users: usize) -> Vec<Vec<u32>> {
    rows.sort_by_key(|r| (r.user, r.time));
    let mut seqs: Vec<Vec<u32>> = vec![Vec::new(); n_users];
    let mut lens = vec![0usize; n_users];
    for r in &rows {
        lens[r.user as usize] += 1;
    }
    for (seq, &len) in seqs.iter_mut().zip(&lens) {
        seq.reserve_exact(len);
    }
    for r in rows {
        seqs[r.user as usize].push(r.item);
    }
    seqs
}

/// Keeps each user's first interaction with an item (`stamp[item]` marks the last user that
/// saw it, so no per-user set is built).
fn drop_repeats(seqs: &mut [Vec<u32>], n_items: usize) {
    let mut stamp = vec![u32::MAX; n_items];
    for (u, seq) in (0u32..).zip(seqs.iter_mut()) {
        seq.retain(|&i| std::mem::replace(&mut stamp[i as usize], u) != u);
    }
}

/// Iterative k-core: drop users and items below their thresholds, recount, repeat until none
/// is below. Each round removes only what is below with the current counts, so the result is
/// the unique largest subset in which every user and item meets its threshold. Returns rounds.
fn kcore(seqs: &mut [Vec<u32>], n_items: usize, user_k: usize, item_k: usize) -> usize {
    let mut rounds = 0;
    loop {
        let mut item_count = vec![0usize; n_items];
        for &i in seqs.iter().flatten() {
            item_count[i as usize] += 1;
        }
        let low_user = seqs.iter().any(|s| !s.is_empty() && s.len() < user_k);
        let low_item = item_count.iter().any(|&c| c > 0 && c < item_k);
        if !low_user && !low_item {
            return rounds;
        }
        rounds += 1;
        for seq in seqs.iter_mut() {
            if seq.len() < user_k {
                seq.clear();
            } else {
                seq.retain(|&i| item_count[i as usize] >= item_k);
            }
        }
    }
}

/// Runs every step on the table's rows (consuming them) and records the counts.
pub fn apply(table: &mut Table, opts: &FilterOptions) -> Result<Filtered, ImportError> {
    let n_items = table.items.len();
    let mut steps = vec![StepCount {
        step: "read".into(),
        users: table.users.len(),
        items: n_items,
        interactions: table.read,
    }];
    let rows = std::mem::take(&mut table.rows);
    let mut seqs = chronological(rows, table.users.len());
    if let Some(r) = opts.min_rating {
        steps.push(count(&format!("rating >= {r}"), &seqs, n_items));
    }
    if opts.repeats == Repeats::Drop {
        drop_repeats(&mut seqs, n_items);
        steps.push(count("repeats dropped", &seqs, n_items));
    }
    if opts.missing_text == MissingText::Drop {
        for seq in seqs.iter_mut() {
            seq.retain(|&i| table.text(i).is_some_and(|t| t.usable()));
        }
        steps.push(count("items without text dropped", &seqs, n_items));
    }
    let mut kcore_rounds = 0;
    if opts.user_core > 1 || opts.item_core > 1 {
        kcore_rounds = kcore(&mut seqs, n_items, opts.user_core, opts.item_core);
        let name = format!(
            "{}-core users, {}-core items",
            opts.user_core, opts.item_core
        );
        steps.push(count(&name, &seqs, n_items));
    }
    if let Some(cap) = opts.max_len {
        for seq in seqs.iter_mut().filter(|s| s.len() > cap) {
            seq.drain(..seq.len() - cap);
        }
        steps.push(count(
            &format!("most recent {cap} per user"),
            &seqs,
            n_items,
        ));
    }
    if seqs
        .iter()
        .any(|s| !s.is_empty() && s.len() < MIN_INTERACTIONS)
    {
        for seq in seqs.iter_mut().filter(|s| s.len() < MIN_INTERACTIONS) {
            seq.clear();
        }
        let name = format!("users with >= {MIN_INTERACTIONS} (leave-one-out)");
        steps.push(count(&name, &seqs, n_items));
    }
    if let Some(empty) = steps.iter().position(|s| s.interactions == 0) {
        return Err(ImportError::EmptyResult {
            step: steps[empty].step.clone(),
            before: steps.get(empty.wrapping_sub(1)).cloned(),
        });
    }
    Ok(Filtered {
        sequences: seqs,
        steps,
        kcore_rounds,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs(v: &[&[u32]]) -> Vec<Vec<u32>> {
        v.iter().map(|s| s.to_vec()).collect()
    }

    #[test]
    fn kcore_cascades() {
        // Item 3 has 1 interaction; removing it drops user 2 below 2, which drops item 2.
        let mut s = seqs(&[&[0, 1], &[0, 1], &[2, 3], &[2, 0]]);
        let rounds = kcore(&mut s, 4, 2, 2);
        assert_eq!(s, seqs(&[&[0, 1], &[0, 1], &[], &[]]));
        assert!(rounds >= 2);
    }

    #[test]
    fn repeats_keep_the_first() {
        let mut s = seqs(&[&[1, 2, 1, 3, 2], &[1, 1]]);
        drop_repeats(&mut s, 4);
        assert_eq!(s, seqs(&[&[1, 2, 3], &[1]]));
    }

    #[test]
    fn chronological_is_stable() {
        let row = |user, item, time| Row { user, item, time };
        let rows = vec![
            row(1, 5, 3),
            row(0, 1, 9),
            row(1, 6, 3),
            row(1, 7, 1),
            row(0, 2, 2),
        ];
        assert_eq!(chronological(rows, 2), seqs(&[&[2, 1], &[7, 5, 6]]));
    }
}
