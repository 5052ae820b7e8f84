//! An A/B of several arms ranked on the same users (training validation's
//! `train/<stage>/valid-ranks-<step>.jsonl`, or evaluations' `.predictions.jsonl`): each arm's
//! R@10 and N@10 with standard errors, and each arm minus the first, user by user, with paired
//! standard errors, so a gain smaller than either arm's own error bar can still show.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::paired::{paired, PairedDiff, K};
use crate::metrics::{mean_and_se, ndcg_gain};

#[derive(Deserialize)]
struct Line {
    user: String,
    target: String,
    rank: Option<usize>,
}

/// One arm's users in file order: user id, target id, the target's rank (None: not ranked).
pub fn read_ranks(path: &Path) -> anyhow::Result<Vec<(String, String, Option<usize>)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(no, l)| {
            let p: Line = serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a rank line", path.display(), no + 1))?;
            Ok((p.user, p.target, p.rank))
        })
        .collect()
}

/// One arm of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Arm {
    pub name: String,
    pub file: String,
    pub users: usize,
    pub recall10: f64,
    pub recall10_se: f64,
    pub ndcg10: f64,
    pub ndcg10_se: f64,
    /// This arm minus the first (None for the first).
    pub minus_first: Option<PairedDiff>,
}

/// Each arm (`name`, its ranks file) against the first; an error names an arm whose users or
/// targets differ from the first arm's.
pub fn compare(arms: &[(String, PathBuf)]) -> anyhow::Result<Vec<Arm>> {
    let Some((_, first_file)) = arms.first() else {
        anyhow::bail!("no arms to compare");
    };
    let first = read_ranks(first_file)?;
    let mut out = Vec::with_capacity(arms.len());
    let mut first_ranks = Vec::new();
    for (i, (name, file)) in arms.iter().enumerate() {
        let lines = read_ranks(file)?;
        let by_user: HashMap<&str, (&str, Option<usize>)> = lines
            .iter()
            .map(|(u, t, r)| (u.as_str(), (t.as_str(), *r)))
            .collect();
        anyhow::ensure!(
            by_user.len() == first.len() && lines.len() == first.len(),
            "{}: {} users, the first arm ({}) has {}",
            file.display(),
            lines.len(),
            first_file.display(),
            first.len()
        );
        // In the first arm's user order, so the pairs line up.
        let ranks = first
            .iter()
            .map(|(u, t, _)| match by_user.get(u.as_str()) {
                Some((tt, r)) if tt == t => Ok(*r),
                Some((tt, _)) => anyhow::bail!(
                    "{}: user {u} has target {tt}, the first arm's is {t}",
                    file.display()
                ),
                None => anyhow::bail!("{}: no rank for user {u} of the first arm", file.display()),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (hits, gains): (Vec<f64>, Vec<f64>) = ranks
            .iter()
            .map(|r| match r {
                Some(r) if *r <= K => (1.0, ndcg_gain(*r)),
                _ => (0.0, 0.0),
            })
            .unzip();
        let ((r, rse), (n, nse)) = (mean_and_se(&hits), mean_and_se(&gains));
        if i == 0 {
            first_ranks = ranks.clone();
        }
        out.push(Arm {
            name: name.clone(),
            file: file.display().to_string(),
            users: ranks.len(),
            recall10: r,
            recall10_se: rse,
            ndcg10: n,
            ndcg10_se: nse,
            minus_first: (i > 0)
                .then(|| paired(name, &ranks, &first_ranks))
                .transpose()?,
        });
    }
    Ok(out)
}

/// The arms as a markdown table, each minus the first with its paired standard errors.
pub fn markdown(arms: &[Arm]) -> String {
    let first = arms.first().map_or("", |a| a.name.as_str());
    let mut md = format!(
        "| arm | users | R@10 (s.e.) | N@10 (s.e.) | R@10 minus {first} (paired s.e.) | N@10 minus {first} (paired s.e.) | both beyond 2 s.e. |\n| --- | ---: | ---: | ---: | ---: | ---: | --- |\n"
    );
    for a in arms {
        let (dr, dn, v) = match &a.minus_first {
            Some(d) => (
                format!("{:+.4} ({:.4})", d.recall10_diff, d.recall10_se),
                format!("{:+.4} ({:.4})", d.ndcg10_diff, d.ndcg10_se),
                d.verdict(),
            ),
            None => ("-".into(), "-".into(), "-"),
        };
        md.push_str(&format!(
            "| {} | {} | {:.4} ({:.4}) | {:.4} ({:.4}) | {dr} | {dn} | {v} |\n",
            a.name, a.users, a.recall10, a.recall10_se, a.ndcg10, a.ndcg10_se
        ));
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, lines: &[(&str, &str, Option<usize>)]) -> PathBuf {
        let text: String = lines
            .iter()
            .map(|(u, t, r)| {
                format!(
                    "{}\n",
                    serde_json::json!({"user": u, "target": t, "rank": r})
                )
            })
            .collect();
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn each_arm_minus_the_first_by_hand() {
        let tmp = tempfile::tempdir().unwrap();
        let a = write(tmp.path(), "a", &[("u1", "x", Some(1)), ("u2", "y", None)]);
        // Another user order; u1 drops to rank 3, u2 is found at 1.
        let b = write(
            tmp.path(),
            "b",
            &[("u2", "y", Some(1)), ("u1", "x", Some(3))],
        );
        let arms = compare(&[("a".into(), a.clone()), ("b".into(), b)]).unwrap();
        assert_eq!((arms[0].recall10, arms[0].ndcg10), (0.5, 0.5));
        let d = arms[1].minus_first.as_ref().unwrap();
        // Hits: 1 - 1 and 1 - 0: mean 0.5, s.e. 0.5; NDCG: 0.5 - 1 and 1 - 0: mean 0.25.
        assert!((d.recall10_diff - 0.5).abs() < 1e-12 && (d.recall10_se - 0.5).abs() < 1e-12);
        assert!((d.ndcg10_diff - 0.25).abs() < 1e-12);
        assert!(markdown(&arms)
            .contains("| b | 2 | 1.0000 (0.0000) | 0.7500 (0.2500) | +0.5000 (0.5000) |"));
        // Another target for a user, or another user set, is refused.
        let c = write(tmp.path(), "c", &[("u1", "z", Some(1)), ("u2", "y", None)]);
        assert!(compare(&[("a".into(), a.clone()), ("c".into(), c)]).is_err());
        let e = write(tmp.path(), "e", &[("u1", "x", Some(1))]);
        assert!(compare(&[("a".into(), a), ("e".into(), e)]).is_err());
    }
}
