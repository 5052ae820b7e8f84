//! Item IDs as token sequences (paper 3.2): the index type, the disambiguation that makes every
//! ID unique, and the LC-Rec index file format `{"<item key>": ["<s1_12>", ...]}`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The name of the `j`-th disambiguation token.
pub fn disambiguation_token(j: usize) -> String {
    format!("<d_{j}>")
}

/// An item index: per item (dataset order) a sequence of tokens from a small vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub struct ItemIndex {
    /// Item keys (original ids) in dataset order; position = dense item index.
    pub keys: Vec<String>,
    /// Names of the token positions before disambiguation, e.g. `["s1", "s2", "b1", "b2"]`.
    pub levels: Vec<String>,
    /// Positions where a source (semantic, behavior, random, external) starts; the coherence
    /// checks look at the token in these positions.
    pub source_starts: Vec<usize>,
    /// Distinct tokens, e.g. `"<s1_12>"`.
    pub vocab: Vec<String>,
    /// Per item: its token sequence as indices into `vocab`.
    pub ids: Vec<Vec<u32>>,
}

/// What disambiguation did: collisions before, and the extra tokens given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disambiguation {
    pub items: usize,
    /// Distinct IDs before (the number of leaves).
    pub distinct_before: usize,
    /// Distinct IDs after (equals `items`).
    pub distinct_after: usize,
    /// `items - distinct_before`.
    pub collisions: usize,
    /// Groups of two or more items that shared an ID.
    pub groups: usize,
    /// Items that got a `<d_i>` token (every member of every group).
    pub items_disambiguated: usize,
    /// The largest group of items sharing an ID (1 when there was no collision).
    pub largest_group: usize,
    /// IDs that are a proper prefix of another item's ID (never for built indexes, whose IDs
    /// all have the same length before disambiguation).
    pub prefix_conflicts: usize,
}

impl ItemIndex {
    /// Builds an index from per-level codes (row-major `[n, levels.len()]`): the token at level
    /// `l` is `<{levels[l]}_{code}>`. Not yet disambiguated.
    pub fn from_codes(
        keys: Vec<String>,
        levels: Vec<String>,
        source_starts: Vec<usize>,
        codes: &[u32],
    ) -> ItemIndex {
        let nl = levels.len();
        let mut vocab = Vec::new();
        // Per level: code -> vocabulary index, tokens ordered by level then code.
        let mut maps: Vec<Vec<u32>> = Vec::with_capacity(nl);
        for (l, name) in levels.iter().enumerate() {
            let max = codes
                .iter()
                .skip(l)
                .step_by(nl.max(1))
                .copied()
                .max()
                .unwrap_or(0) as usize;
            let mut used = vec![false; max + 1];
            codes
                .iter()
                .skip(l)
                .step_by(nl.max(1))
                .for_each(|&c| used[c as usize] = true);
            let mut map = vec![u32::MAX; max + 1];
            for (c, _) in used.iter().enumerate().filter(|(_, &u)| u) {
                map[c] = vocab.len() as u32;
                vocab.push(format!("<{name}_{c}>"));
            }
            maps.push(map);
        }
        let ids = codes
            .chunks_exact(nl.max(1))
            .take(keys.len())
            .map(|row| row.iter().zip(&maps).map(|(&c, m)| m[c as usize]).collect())
            .collect();
        ItemIndex {
            keys,
            levels,
            source_starts,
            vocab,
            ids,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The tokens of item `item` (dense index).
    pub fn tokens(&self, item: usize) -> impl Iterator<Item = &str> + '_ {
        self.ids[item]
            .iter()
            .map(move |&t| self.vocab[t as usize].as_str())
    }

    /// The tokens of item `item` as owned strings.
    pub fn id_strings(&self, item: usize) -> Vec<String> {
        self.tokens(item).map(str::to_string).collect()
    }

    /// The tokens actually used by some item, in vocabulary order.
    pub fn used_vocab(&self) -> Vec<&str> {
        let mut used = vec![false; self.vocab.len()];
        self.ids
            .iter()
            .flatten()
            .for_each(|&t| used[t as usize] = true);
        self.vocab
            .iter()
            .zip(used)
            .filter(|(_, u)| *u)
            .map(|(v, _)| v.as_str())
            .collect()
    }

    /// Number of distinct IDs.
    pub fn distinct(&self) -> usize {
        self.ids
            .iter()
            .map(Vec::as_slice)
            .collect::<HashSet<_>>()
            .len()
    }

    /// Whether every item has its own ID.
    pub fn is_unique(&self) -> bool {
        self.distinct() == self.len()
    }

    /// How many IDs are a proper prefix of another ID.
    pub fn prefix_conflicts(&self) -> usize {
        let mut sorted: Vec<&[u32]> = self.ids.iter().map(Vec::as_slice).collect();
        sorted.sort_unstable();
        sorted.dedup();
        sorted
            .windows(2)
            .filter(|w| w[0].len() < w[1].len() && w[1].starts_with(w[0]))
            .count()
    }

    /// Gives every item that shares its whole ID with another one more token, `<d_0>`,
    /// `<d_1>`, ... within its group in dataset order, so that every ID is unique. A `<d_j>`
    /// that would recreate an existing ID (possible only with IDs of different lengths) is
    /// skipped.
    pub fn disambiguate(&mut self) -> Disambiguation {
        let n = self.ids.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| self.ids[a].cmp(&self.ids[b]).then(a.cmp(&b)));
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut distinct_before = 0;
        let mut start = 0;
        while start < n {
            let mut end = start + 1;
            while end < n && self.ids[order[end]] == self.ids[order[start]] {
                end += 1;
            }
            distinct_before += 1;
            if end - start > 1 {
                groups.push(order[start..end].to_vec());
            }
            start = end;
        }
        let uniform = self.ids.iter().map(Vec::len).collect::<HashSet<_>>().len() <= 1;
        let existing: HashSet<Vec<u32>> = if uniform || groups.is_empty() {
            HashSet::new()
        } else {
            self.ids.iter().cloned().collect()
        };
        let mut lookup: HashMap<String, u32> = HashMap::new();
        if !groups.is_empty() {
            lookup = self
                .vocab
                .iter()
                .enumerate()
                .map(|(i, t)| (t.clone(), i as u32))
                .collect();
        }
        let mut report = Disambiguation {
            items: n,
            distinct_before,
            collisions: n - distinct_before,
            groups: groups.len(),
            largest_group: groups
                .iter()
                .map(Vec::len)
                .max()
                .unwrap_or(usize::from(n > 0)),
            ..Disambiguation::default()
        };
        for group in &groups {
            let mut j = 0;
            for &item in group {
                loop {
                    let tok = disambiguation_token(j);
                    j += 1;
                    let id = match lookup.get(&tok) {
                        Some(&id) => id,
                        None => {
                            let id = self.vocab.len() as u32;
                            self.vocab.push(tok.clone());
                            lookup.insert(tok, id);
                            id
                        }
                    };
                    let mut candidate = self.ids[item].clone();
                    candidate.push(id);
                    if !existing.contains(&candidate) {
                        self.ids[item] = candidate;
                        break;
                    }
                }
                report.items_disambiguated += 1;
            }
        }
        report.distinct_after = self.distinct();
        report.prefix_conflicts = self.prefix_conflicts();
        report
    }

    /// The index as a JSON object `{"<item key>": ["<tok>", ...]}` in dataset order.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        (0..self.len())
            .map(|i| {
                (
                    self.keys[i].clone(),
                    serde_json::Value::from(self.id_strings(i)),
                )
            })
            .collect()
    }

    /// Writes the index in the LC-Rec format, one item per line, atomically.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        use anyhow::Context;
        crate::util::atomic_write_with(path, |tmp| {
            let f = std::fs::File::create(tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let mut w = std::io::BufWriter::new(f);
            let werr = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", tmp.display());
            w.write_all(b"{").map_err(werr)?;
            for i in 0..self.len() {
                let sep = if i == 0 { "\n" } else { ",\n" };
                let key = serde_json::to_string(&self.keys[i])?;
                let toks = serde_json::to_string(&self.id_strings(i))?;
                write!(w, "{sep}  {key}: {toks}").map_err(werr)?;
            }
            w.write_all(b"\n}\n").map_err(werr)?;
            let f = w.into_inner().map_err(|e| werr(e.into_error()))?;
            f.sync_all()
                .with_context(|| format!("syncing {}", tmp.display()))?;
            Ok(())
        })
    }
}
