//! Model against baseline on the same users: the mean per-user difference of Recall@10 and
//! NDCG@10 with its paired standard error, so a report can say whether a model beats a
//! heuristic beyond two standard errors (the project's rule) without the looser unpaired bound.

use std::collections::HashMap;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::data::{Dataset, Sample};
use crate::metrics::{mean_and_se, ndcg_gain};

/// The cut-off of the paired comparison.
pub const K: usize = 10;

/// One model-minus-baseline row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedDiff {
    pub baseline: String,
    pub users: usize,
    /// Mean over users of hit@10(model) - hit@10(baseline).
    pub recall10_diff: f64,
    /// Its standard error: the sample standard deviation of the per-user differences / sqrt(n).
    pub recall10_se: f64,
    pub ndcg10_diff: f64,
    pub ndcg10_se: f64,
}

impl PairedDiff {
    /// Whether a standard error exists: below two users it is unknown, not 0.
    pub fn has_standard_error(&self) -> bool {
        self.users >= MIN_USERS
    }

    /// Whether both differences are above zero by more than two standard errors (never for
    /// fewer than two users, whose s.e. of 0 would make any difference "significant").
    pub fn beats_beyond_2se(&self) -> bool {
        self.has_standard_error()
            && self.recall10_diff > 2.0 * self.recall10_se
            && self.ndcg10_diff > 2.0 * self.ndcg10_se
    }

    /// Whether both differences are below zero by more than two standard errors: the model
    /// is behind the baseline (a report must say so, not merely "not ahead").
    pub fn trails_beyond_2se(&self) -> bool {
        self.has_standard_error()
            && self.recall10_diff < -2.0 * self.recall10_se
            && self.ndcg10_diff < -2.0 * self.ndcg10_se
    }

    /// "ahead" or "behind" where both differences pass two standard errors, else "within";
    /// "n/a" without a standard error.
    pub fn verdict(&self) -> &'static str {
        if !self.has_standard_error() {
            "n/a"
        } else if self.beats_beyond_2se() {
            "ahead"
        } else if self.trails_beyond_2se() {
            "behind"
        } else {
            "within"
        }
    }

    pub fn markdown_row(&self) -> String {
        let verdict = self.verdict();
        format!(
            "| {} | {:+.4} ({:.4}) | {:+.4} ({:.4}) | {verdict} |",
            self.baseline, self.recall10_diff, self.recall10_se, self.ndcg10_diff, self.ndcg10_se,
        )
    }
}

/// Header of the table [`PairedDiff::markdown_row`] fills.
pub const MARKDOWN_HEADER: &str = "| model minus | R@10 (paired s.e.) | N@10 (paired s.e.) | both beyond 2 s.e. |\n| --- | ---: | ---: | --- |\n";

/// Hit@K and NDCG@K of a 1-based rank.
fn gains(rank: Option<usize>) -> (f64, f64) {
    match rank {
        Some(r) if r <= K => (1.0, ndcg_gain(r)),
        _ => (0.0, 0.0),
    }
}

/// The fewest users with a standard error (the sample standard deviation needs two).
const MIN_USERS: usize = 2;

/// The paired comparison of two rankings of the same users (ranks 1-based, None = not found);
/// an error when the two do not rank the same number of users (zipping would drop the rest).
pub fn paired(
    baseline: &str,
    model: &[Option<usize>],
    base: &[Option<usize>],
) -> anyhow::Result<PairedDiff> {
    if model.len() != base.len() {
        anyhow::bail!(
            "paired comparison with {baseline}: the model ranks {} users, the baseline {}",
            model.len(),
            base.len()
        );
    }
    let (mut dh, mut dn) = (
        Vec::with_capacity(model.len()),
        Vec::with_capacity(model.len()),
    );
    for (&m, &b) in model.iter().zip(base) {
        let ((hm, nm), (hb, nb)) = (gains(m), gains(b));
        dh.push(hm - hb);
        dn.push(nm - nb);
    }
    let ((rd, rs), (nd, ns)) = (mean_and_se(&dh), mean_and_se(&dn));
    Ok(PairedDiff {
        baseline: baseline.to_string(),
        users: dh.len(),
        recall10_diff: rd,
        recall10_se: rs,
        ndcg10_diff: nd,
        ndcg10_se: ns,
    })
}

#[derive(Deserialize)]
struct Line {
    user: String,
    target: String,
    rank: Option<usize>,
}

/// The model's rank of each sample's target, in sample order, from an evaluation's
/// predictions file; an error names the file and line where it does not rank exactly these
/// users and targets.
pub fn model_ranks(
    path: &Path,
    ds: &Dataset,
    samples: &[Sample],
) -> anyhow::Result<Vec<Option<usize>>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut by_user: HashMap<String, (String, Option<usize>)> = HashMap::new();
    for (no, l) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let p: Line = serde_json::from_str(l)
            .with_context(|| format!("{}:{}: not a prediction line", path.display(), no + 1))?;
        by_user.insert(p.user, (p.target, p.rank));
    }
    samples
        .iter()
        .map(|s| {
            let user = &ds.users[s.user as usize];
            let target = &ds.items[s.target as usize].id;
            match by_user.get(user) {
                Some((t, r)) if t == target => Ok(*r),
                Some((t, _)) => anyhow::bail!(
                    "{}: user {user} has target {t}, this evaluation's is {target}",
                    path.display()
                ),
                None => anyhow::bail!("{}: no prediction for user {user}", path.display()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paired_differences_by_hand() {
        // Model hits users 0 (rank 1) and 1 (rank 3); the baseline hits user 1 (rank 1) and
        // user 2 (rank 11: a miss at 10).
        let model = [Some(1), Some(3), None, None];
        let base = [None, Some(1), Some(11), None];
        let p = paired("b", &model, &base).unwrap();
        // Hit differences 1, 0, 0, 0: mean 0.25, sd sqrt(0.25), s.e. 0.25.
        assert_eq!(p.users, 4);
        assert!((p.recall10_diff - 0.25).abs() < 1e-12);
        assert!((p.recall10_se - 0.25).abs() < 1e-12);
        // NDCG differences 1, 0.5 - 1, 0, 0: mean 0.125.
        assert!((p.ndcg10_diff - 0.125).abs() < 1e-12);
        assert!(!p.beats_beyond_2se());
        let (m, se) = mean_and_se(&[1.0, 3.0]);
        assert_eq!((m, se), (2.0, 1.0));
    }

    #[test]
    fn identical_rankings_differ_by_nothing() {
        let r = [Some(2), None, Some(10), Some(4)];
        let p = paired("same", &r, &r).unwrap();
        assert_eq!(
            (p.recall10_diff, p.recall10_se, p.ndcg10_diff),
            (0.0, 0.0, 0.0)
        );
        assert!(!p.beats_beyond_2se());
    }

    #[test]
    fn one_user_has_no_standard_error_and_no_verdict() {
        // One user the model hits and the baseline misses: a difference of 1 whose standard
        // error is unknown (not 0), so no "beyond 2 s.e." verdict.
        let p = paired("b", &[Some(1)], &[None]).unwrap();
        assert_eq!(p.users, 1);
        assert!(!p.beats_beyond_2se());
        assert!(
            p.markdown_row().ends_with("| n/a |"),
            "{}",
            p.markdown_row()
        );
    }

    #[test]
    fn rankings_of_different_lengths_are_an_error() {
        let err = paired("b", &[Some(1), None], &[None])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("2 users") && err.contains("baseline 1"),
            "{err}"
        );
    }

    #[test]
    fn two_standard_errors_decide() {
        // 100 users; the model hits 30 at rank 1, the baseline 20 of those and nothing else:
        // differences are 1 on 10 users, 0 on 90: mean 0.1, s.e. sqrt(0.1*0.9*100/99/100)
        // = 0.0302, so 0.1 is 3.3 s.e. above zero.
        let model: Vec<_> = (0..100).map(|u| (u < 30).then_some(1)).collect();
        let base: Vec<_> = (0..100).map(|u| (u < 20).then_some(1)).collect();
        let p = paired("b", &model, &base).unwrap();
        assert!((p.recall10_se - (0.09f64 / 99.0).sqrt()).abs() < 1e-12);
        assert!(p.beats_beyond_2se());
        // With 3 users ahead instead of 10 the difference (0.03, s.e. 0.0171) is within 2 s.e.
        let base: Vec<_> = (0..100).map(|u| (u < 27).then_some(1)).collect();
        let within = paired("b", &model, &base).unwrap();
        assert!(!within.beats_beyond_2se() && !within.trails_beyond_2se());
        assert!(within.markdown_row().ends_with("| within |"));
    }

    #[test]
    fn a_model_behind_beyond_two_standard_errors_is_called_behind() {
        // The mirror of the case above: the baseline hits 10 more users of 100 (3.3 s.e.).
        // The row said "no" here, which read as "no difference" for a model clearly behind.
        let model: Vec<_> = (0..100).map(|u| (u < 20).then_some(1)).collect();
        let base: Vec<_> = (0..100).map(|u| (u < 30).then_some(1)).collect();
        let p = paired("b", &model, &base).unwrap();
        assert!(p.trails_beyond_2se() && !p.beats_beyond_2se());
        assert!(
            p.markdown_row().ends_with("| behind |"),
            "{}",
            p.markdown_row()
        );
        let ahead = paired("b", &base, &model).unwrap();
        assert!(ahead.markdown_row().ends_with("| ahead |"));
    }
}
