//! Where a model wins: R@10 and N@10 split by the target item's training popularity. Items
//! sorted by training count (most first, ties to the lower index) are cut into head, torso and
//! tail holding a third of the training interactions each; "rare" (at most [`RARE_MAX`]
//! training interactions) cuts across them, since item IDs built from text should help there
//! first, where an ID-only model has seen an item too rarely to place it.

use serde::{Deserialize, Serialize};

use super::paired::{paired, PairedDiff, K};
use crate::data::Sample;
use crate::metrics::{mean_and_se, ndcg_gain};

/// Items with at most this many training interactions form the "rare" slice.
pub const RARE_MAX: usize = 5;

/// The slices, in report order: the three thirds, then the rare items (which overlap them).
pub const SLICES: [&str; 4] = ["head", "torso", "tail", "rare"];

/// Each item's training count and third (0 head, 1 torso, 2 tail).
#[derive(Debug, Clone, PartialEq)]
pub struct Popularity {
    pub count: Vec<usize>,
    pub third: Vec<u8>,
}

impl Popularity {
    /// From each user's training part (`Split::train`) over a catalogue of `n_items`. An item
    /// belongs to the third in which its share of the interactions starts: the item that
    /// straddles a boundary goes to the more popular side, and items never seen in training
    /// are tail.
    pub fn new(train: &[Vec<u32>], n_items: usize) -> Self {
        let mut count = vec![0usize; n_items];
        for seq in train {
            for &i in seq {
                if let Some(c) = count.get_mut(i as usize) {
                    *c += 1;
                }
            }
        }
        let total: usize = count.iter().sum();
        let mut order: Vec<usize> = (0..n_items).collect();
        order.sort_by_key(|&i| (std::cmp::Reverse(count[i]), i));
        let mut third = vec![2u8; n_items];
        let mut before = 0usize;
        for i in order {
            // Integer thirds: 3 * before < total is "starts in the first third".
            third[i] = match 3 * before {
                b if b < total => 0,
                b if b < 2 * total => 1,
                _ => 2,
            };
            before += count[i];
        }
        Popularity { count, third }
    }

    /// Whether `item` is in slice `s` (an index into [`SLICES`]).
    pub fn contains(&self, s: usize, item: u32) -> bool {
        let i = item as usize;
        match s {
            3 => self.count.get(i).is_some_and(|&c| c <= RARE_MAX),
            _ => self.third.get(i).is_some_and(|&t| t as usize == s),
        }
    }

    /// How many catalogue items each slice holds.
    pub fn items(&self, s: usize) -> usize {
        (0..self.count.len() as u32)
            .filter(|&i| self.contains(s, i))
            .count()
    }
}

/// One slice's figures for one ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceMetrics {
    pub slice: String,
    /// Catalogue items in the slice.
    pub items: usize,
    /// Users whose target is in the slice.
    pub users: usize,
    pub recall10: f64,
    /// Standard error of the mean hit@10 (0 below two users).
    pub recall10_se: f64,
    pub ndcg10: f64,
    pub ndcg10_se: f64,
}

/// A model-minus-baseline comparison inside one slice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SliceDiff {
    pub slice: String,
    #[serde(flatten)]
    pub diff: PairedDiff,
}

/// The positions of the users whose target is in slice `s`.
fn members(pop: &Popularity, s: usize, samples: &[Sample]) -> Vec<usize> {
    (0..samples.len())
        .filter(|&u| pop.contains(s, samples[u].target))
        .collect()
}

/// Per slice: users, R@10 and N@10 with standard errors, of 1-based `ranks` (None: outside
/// the ranking) of `samples`' targets.
pub fn slice_metrics(
    pop: &Popularity,
    samples: &[Sample],
    ranks: &[Option<usize>],
) -> Vec<SliceMetrics> {
    (0..SLICES.len())
        .map(|s| {
            let (hits, gains): (Vec<f64>, Vec<f64>) = members(pop, s, samples)
                .into_iter()
                .map(|u| match ranks.get(u).copied().flatten() {
                    Some(r) if r <= K => (1.0, ndcg_gain(r)),
                    _ => (0.0, 0.0),
                })
                .unzip();
            let ((r, rse), (n, nse)) = (mean_and_se(&hits), mean_and_se(&gains));
            SliceMetrics {
                slice: SLICES[s].to_string(),
                items: pop.items(s),
                users: hits.len(),
                recall10: r,
                recall10_se: rse,
                ndcg10: n,
                ndcg10_se: nse,
            }
        })
        .collect()
}

/// Per slice, the paired comparison of `model` and `base` ranks of the same `samples`.
pub fn slice_paired(
    pop: &Popularity,
    samples: &[Sample],
    model: &[Option<usize>],
    base: &[Option<usize>],
) -> anyhow::Result<Vec<SliceDiff>> {
    anyhow::ensure!(
        model.len() == samples.len() && base.len() == samples.len(),
        "per-slice comparison: {} users, rankings of {} and {}",
        samples.len(),
        model.len(),
        base.len()
    );
    (0..SLICES.len())
        .map(|s| {
            let users = members(pop, s, samples);
            let pick = |r: &[Option<usize>]| users.iter().map(|&u| r[u]).collect::<Vec<_>>();
            Ok(SliceDiff {
                slice: SLICES[s].to_string(),
                diff: paired(SLICES[s], &pick(model), &pick(base))?,
            })
        })
        .collect()
}

/// Header of [`slices_markdown`]'s rows.
pub const SLICES_HEADER: &str =
    "| slice | items | users | R@10 (s.e.) | N@10 (s.e.) |\n| --- | ---: | ---: | ---: | ---: |\n";

/// One table row per slice ([`SLICES_HEADER`]'s columns).
pub fn slice_rows(rows: &[SliceMetrics]) -> String {
    rows.iter()
        .map(|m| {
            format!(
                "| {} | {} | {} | {:.4} ({:.4}) | {:.4} ({:.4}) |\n",
                m.slice, m.items, m.users, m.recall10, m.recall10_se, m.ndcg10, m.ndcg10_se
            )
        })
        .collect()
}

/// The slice table of one ranking, with a line saying how the slices are cut.
pub fn slices_markdown(rows: &[SliceMetrics]) -> String {
    format!(
        "By the target's training popularity (head / torso / tail: a third of the training interactions each; rare: at most {RARE_MAX} training interactions, across the thirds):\n\n{SLICES_HEADER}{}",
        slice_rows(rows)
    )
}

/// One table of several rankings' slices (`named`: a ranking's name and its slices).
pub fn slices_table(named: &[(&str, &[SliceMetrics])]) -> String {
    let mut md = String::from(
        "| ranking | slice | items | users | R@10 (s.e.) | N@10 (s.e.) |\n| --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    for (name, rows) in named {
        for line in slice_rows(rows).lines() {
            md.push_str(&format!("| {name} {line}\n"));
        }
    }
    md
}

/// The model minus `who` per slice (`base`: `who`'s slices, `diffs`: the paired differences
/// on the same users): both sides, the differences with paired standard errors, a verdict per
/// slice, and one line naming where the model is ahead and behind beyond two of them.
pub fn diff_markdown(who: &str, base: &[SliceMetrics], diffs: &[SliceDiff]) -> String {
    let mut md = format!(
        "The model minus {who} by the target's training popularity, user by user (paired standard errors; ahead / behind: both R@10 and N@10 beyond 2 s.e.):\n\n| slice | users | {who} R@10 | model R@10 | minus (s.e.) | {who} N@10 | model N@10 | minus (s.e.) | beyond 2 s.e. |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n"
    );
    let (mut ahead, mut behind) = (Vec::new(), Vec::new());
    for (b, d) in base.iter().zip(diffs) {
        let p = &d.diff;
        let v = p.verdict();
        match v {
            "ahead" => ahead.push(d.slice.as_str()),
            "behind" => behind.push(d.slice.as_str()),
            _ => {}
        }
        md.push_str(&format!(
            "| {} | {} | {:.4} | {:.4} | {:+.4} ({:.4}) | {:.4} | {:.4} | {:+.4} ({:.4}) | {v} |\n",
            d.slice,
            p.users,
            b.recall10,
            b.recall10 + p.recall10_diff,
            p.recall10_diff,
            p.recall10_se,
            b.ndcg10,
            b.ndcg10 + p.ndcg10_diff,
            p.ndcg10_diff,
            p.ndcg10_se,
        ));
    }
    let list = |v: &[&str]| match v {
        [] => "no slice".to_string(),
        _ => v.join(", "),
    };
    md.push_str(&format!(
        "\nThe model is ahead of {who} beyond 2 s.e. in {}; behind in {}.\n",
        list(&ahead),
        list(&behind)
    ));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(target: u32) -> Sample {
        Sample {
            user: 0,
            history: Vec::new(),
            target,
        }
    }

    #[test]
    fn thirds_of_the_interactions_by_hand() {
        // Counts: item 0: 6, item 1: 3, item 2: 2, item 3: 1, item 4: 0; total 12. Sorted
        // 0, 1, 2, 3, 4 with 0, 6, 9, 11, 12 interactions before each: item 0 starts in the
        // first third (0 < 4), item 1 at 6 in the second (4 <= 6 < 8), items 2, 3, 4 in the last.
        let train = vec![vec![0, 0, 0, 1, 2], vec![0, 0, 0, 1, 1, 2, 3]];
        let p = Popularity::new(&train, 5);
        assert_eq!(p.count, vec![6, 3, 2, 1, 0]);
        assert_eq!(p.third, vec![0, 1, 2, 2, 2]);
        // Rare (<= 5): items 1 to 4, across the torso and tail.
        assert_eq!((0..4).map(|s| p.items(s)).collect::<Vec<_>>(), [1, 1, 3, 4]);
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        // Three items of 2 each (total 6), sorted 0, 1, 2: item 0 starts at 0 (head), item 1
        // at 2 (3 * 2 = 6 is not below 6: torso), item 2 at 4 (12 is not below 12: tail).
        let p = Popularity::new(&[vec![2, 1, 0, 0, 1, 2]], 3);
        assert_eq!(p.third, vec![0, 1, 2]);
    }

    #[test]
    fn slice_figures_by_hand() {
        let train = vec![vec![0, 0, 0, 1, 2], vec![0, 0, 0, 1, 1, 2, 3]];
        let p = Popularity::new(&train, 5);
        // Two head users (item 0), hit at rank 1 and missed; one torso user (item 1) at rank 3;
        // one tail user (item 4) at rank 11 (a miss at 10).
        let samples: Vec<Sample> = [0, 0, 1, 4].into_iter().map(sample).collect();
        let ranks = [Some(1), None, Some(3), Some(11)];
        let m = slice_metrics(&p, &samples, &ranks);
        let names: Vec<&str> = m.iter().map(|x| x.slice.as_str()).collect();
        assert_eq!(names, SLICES);
        assert_eq!(m.iter().map(|x| x.users).collect::<Vec<_>>(), [2, 1, 1, 2]);
        // Head: hits 1, 0: mean 0.5, s.e. sqrt(0.5 / 2) = 0.5.
        assert!((m[0].recall10 - 0.5).abs() < 1e-12 && (m[0].recall10_se - 0.5).abs() < 1e-12);
        assert!((m[0].ndcg10 - 0.5).abs() < 1e-12);
        // Torso: one hit at 3: NDCG 1 / log2(4) = 0.5, no s.e. with one user.
        assert_eq!(
            (m[1].recall10, m[1].ndcg10, m[1].ndcg10_se),
            (1.0, 0.5, 0.0)
        );
        assert_eq!((m[2].recall10, m[2].ndcg10), (0.0, 0.0));
        // Rare: the torso and tail users: hits 1, 0.
        assert!((m[3].recall10 - 0.5).abs() < 1e-12);
        assert!(slices_markdown(&m).contains("| rare | 4 | 2 | 0.5000 (0.5000) |"));
    }

    #[test]
    fn per_slice_paired_differences_by_hand() {
        let p = Popularity::new(&[vec![0, 0, 0, 1, 2], vec![0, 0, 0, 1, 1, 2, 3]], 5);
        let samples: Vec<Sample> = [0, 0, 1, 4].into_iter().map(sample).collect();
        let model = [Some(1), None, Some(3), None];
        let base = [None, None, None, Some(1)];
        let d = slice_paired(&p, &samples, &model, &base).unwrap();
        // Head: differences 1, 0; torso 1; tail -1; rare (torso and tail users) 1, -1.
        let r: Vec<f64> = d.iter().map(|x| x.diff.recall10_diff).collect();
        assert_eq!(r, [0.5, 1.0, -1.0, 0.0]);
        assert_eq!(d[3].diff.users, 2);
        assert!((d[3].diff.recall10_se - 1.0).abs() < 1e-12);
        assert!(slice_paired(&p, &samples, &model, &base[..3]).is_err());
        let base_m = slice_metrics(&p, &samples, &base);
        let md = diff_markdown("B", &base_m, &d);
        // Torso and tail have one user each: no standard error, no verdict.
        assert!(
            md.contains("| torso | 1 | 0.0000 | 1.0000 | +1.0000 (0.0000) |"),
            "{md}"
        );
        assert!(
            md.contains("ahead of B beyond 2 s.e. in no slice; behind in no slice"),
            "{md}"
        );
    }
}
