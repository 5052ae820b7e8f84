//! Leave-one-out split (paper 4.1.2), next-item training samples and dataset statistics.

use serde::{Deserialize, Serialize};

use super::{DataError, Dataset, MIN_INTERACTIONS};

/// The paper caps every history at the 20 most recent items.
pub const DEFAULT_MAX_HISTORY: usize = 20;

/// How histories are built from sequences.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitConfig {
    /// Keep only this many most recent items of each history.
    pub max_history: usize,
}

impl Default for SplitConfig {
    fn default() -> Self {
        SplitConfig {
            max_history: DEFAULT_MAX_HISTORY,
        }
    }
}

/// One next-item example: the user's recent items (oldest first) and the item to predict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// User index (position in [`Dataset::users`]).
    pub user: u32,
    pub history: Vec<u32>,
    pub target: u32,
}

/// Per user: test target = last item, validation target = second to last, training = the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Per user, in dataset order: the training part (all but the last two items), uncapped.
    pub train: Vec<Vec<u32>>,
    /// Per user: training part (capped) → second-to-last item.
    pub valid: Vec<Sample>,
    /// Per user: training part + validation target (capped) → last item.
    pub test: Vec<Sample>,
}

/// The most recent `max` items of `seq`.
fn recent(seq: &[u32], max: usize) -> Vec<u32> {
    seq[seq.len().saturating_sub(max)..].to_vec()
}

impl Split {
    /// Splits every sequence; each needs at least [`MIN_INTERACTIONS`] items, which the
    /// loaders already guarantee (the check here guards hand-built sequences).
    pub fn leave_one_out(sequences: &[Vec<u32>], cfg: &SplitConfig) -> Result<Split, DataError> {
        let mut split = Split {
            train: Vec::with_capacity(sequences.len()),
            valid: Vec::with_capacity(sequences.len()),
            test: Vec::with_capacity(sequences.len()),
        };
        for (user, seq) in (0u32..).zip(sequences) {
            let n = seq.len();
            if n < MIN_INTERACTIONS {
                return Err(DataError::SequenceTooShort {
                    user: user as usize,
                    len: n,
                });
            }
            let train = &seq[..n - 2];
            split.valid.push(Sample {
                user,
                history: recent(train, cfg.max_history),
                target: seq[n - 2],
            });
            split.test.push(Sample {
                user,
                history: recent(&seq[..n - 1], cfg.max_history),
                target: seq[n - 1],
            });
            split.train.push(train.to_vec());
        }
        Ok(split)
    }

    /// Next-item training samples: for each user's training part `[a, b, c]`, the samples
    /// `[a] → b` and `[a, b] → c`, histories capped to the `max_history` most recent items.
    /// Users in dataset order, prefixes shortest first.
    pub fn train_samples(&self, max_history: usize) -> Vec<Sample> {
        let mut samples = Vec::with_capacity(self.num_train_samples());
        for (user, part) in (0u32..).zip(&self.train) {
            for end in 1..part.len() {
                samples.push(Sample {
                    user,
                    history: recent(&part[..end], max_history),
                    target: part[end],
                });
            }
        }
        samples
    }

    /// How many samples [`Split::train_samples`] yields, without building them.
    pub fn num_train_samples(&self) -> usize {
        self.train.iter().map(|p| p.len().saturating_sub(1)).sum()
    }
}

/// The paper's Table 1 row plus sequence lengths and split sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub dataset: String,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    /// 1 - interactions / (users × items).
    pub sparsity: f64,
    pub min_seq_len: usize,
    pub max_seq_len: usize,
    pub mean_seq_len: f64,
    pub train_samples: usize,
    pub valid: usize,
    pub test: usize,
}

impl Stats {
    pub fn new(ds: &Dataset, split: &Split) -> Stats {
        let users = ds.users.len();
        let items = ds.items.len();
        let interactions = ds.interactions();
        let cells = users as f64 * items as f64;
        let lens = ds.sequences.iter().map(Vec::len);
        Stats {
            dataset: ds.name.clone(),
            users,
            items,
            interactions,
            sparsity: if cells > 0.0 {
                1.0 - interactions as f64 / cells
            } else {
                0.0
            },
            min_seq_len: lens.clone().min().unwrap_or(0),
            max_seq_len: lens.max().unwrap_or(0),
            mean_seq_len: if users > 0 {
                interactions as f64 / users as f64
            } else {
                0.0
            },
            train_samples: split.num_train_samples(),
            valid: split.valid.len(),
            test: split.test.len(),
        }
    }
}
