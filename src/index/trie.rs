//! The prefix trie over all item IDs' token sequences (paper 3.4.3): beam search may only
//! follow its edges, so only real items come out.

use std::collections::HashMap;

/// Why a set of IDs cannot form a trie.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrieError {
    #[error("item {0} has an empty ID")]
    Empty(u32),
    #[error("items {0} and {1} have the same ID")]
    Duplicate(u32, u32),
    #[error("the ID of item {0} is a prefix of the ID of item {1}")]
    Prefix(u32, u32),
}

#[derive(Debug, Clone, Default)]
struct Node {
    children: Vec<(u32, u32)>, // (token, node), sorted by token
    item: Option<u32>,
}

/// A token trie whose leaves are items.
#[derive(Debug, Clone)]
pub struct Trie {
    nodes: Vec<Node>,
    max_depth: usize,
}

/// The root node's index.
pub const ROOT: u32 = 0;

impl Trie {
    /// `ids[i]` is item i's token sequence. IDs may differ in length, but none may be empty,
    /// repeated, or a prefix of another (the beam would not know whether to stop).
    pub fn new(ids: &[Vec<u32>]) -> Result<Self, TrieError> {
        let mut nodes = vec![Node::default()];
        let mut maps: Vec<HashMap<u32, u32>> = vec![HashMap::new()];
        let mut max_depth = 0;
        for (item, seq) in ids.iter().enumerate() {
            let item = item as u32;
            if seq.is_empty() {
                return Err(TrieError::Empty(item));
            }
            max_depth = max_depth.max(seq.len());
            let mut cur = ROOT as usize;
            for &tok in seq {
                if let Some(other) = nodes[cur].item {
                    return Err(TrieError::Prefix(other, item));
                }
                let next = match maps[cur].get(&tok) {
                    Some(&n) => n as usize,
                    None => {
                        nodes.push(Node::default());
                        maps.push(HashMap::new());
                        let n = nodes.len() - 1;
                        maps[cur].insert(tok, n as u32);
                        nodes[cur].children.push((tok, n as u32));
                        n
                    }
                };
                cur = next;
            }
            if let Some(other) = nodes[cur].item {
                return Err(TrieError::Duplicate(other, item));
            }
            if let Some(&(_, child)) = nodes[cur].children.first() {
                return Err(TrieError::Prefix(item, first_item(&nodes, child)));
            }
            nodes[cur].item = Some(item);
        }
        for n in nodes.iter_mut() {
            n.children.sort_unstable();
        }
        Ok(Self { nodes, max_depth })
    }

    /// (token, child node) pairs leaving `node`, sorted by token.
    pub fn children(&self, node: u32) -> &[(u32, u32)] {
        &self.nodes[node as usize].children
    }

    /// The item whose ID ends at `node`, if any.
    pub fn item(&self, node: u32) -> Option<u32> {
        self.nodes[node as usize].item
    }

    /// The child reached from `node` by `token`, or None when `token` is not allowed there.
    pub fn step(&self, node: u32, token: u32) -> Option<u32> {
        let c = &self.nodes[node as usize].children;
        c.binary_search_by_key(&token, |&(t, _)| t)
            .ok()
            .map(|i| c[i].1)
    }

    /// The node a whole token sequence leads to (None when any token is not allowed).
    pub fn walk(&self, tokens: &[u32]) -> Option<u32> {
        tokens.iter().try_fold(ROOT, |n, &t| self.step(n, t))
    }

    /// The smallest token range holding every token of the trie.
    pub fn token_range(&self) -> std::ops::Range<u32> {
        let toks = self
            .nodes
            .iter()
            .flat_map(|n| n.children.iter().map(|c| c.0));
        let (lo, hi) = toks.fold((u32::MAX, 0u32), |(lo, hi), t| (lo.min(t), hi.max(t)));
        if lo > hi {
            0..0
        } else {
            lo..hi + 1
        }
    }

    /// The longest ID's length.
    pub fn max_depth(&self) -> usize {
        self.max_depth
    }

    pub fn num_nodes(&self) -> usize {
        self.nodes.len()
    }
}

fn first_item(nodes: &[Node], mut n: u32) -> u32 {
    loop {
        let node = &nodes[n as usize];
        if let Some(i) = node.item {
            return i;
        }
        match node.children.first() {
            Some(&(_, c)) => n = c,
            None => return u32::MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_leaves_unequal_lengths_and_unknown_tokens() {
        let t = Trie::new(&[vec![1, 2, 3], vec![1, 2, 4], vec![5, 6], vec![1, 7, 8, 9]]).unwrap();
        assert_eq!(
            t.children(ROOT).iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![1, 5]
        );
        let n12 = t.walk(&[1, 2]).unwrap();
        assert_eq!(
            t.children(n12).iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![3, 4]
        );
        assert_eq!(t.item(t.walk(&[1, 2, 4]).unwrap()), Some(1));
        assert_eq!(t.item(t.walk(&[5, 6]).unwrap()), Some(2));
        assert_eq!(t.item(t.walk(&[1, 7, 8, 9]).unwrap()), Some(3));
        assert_eq!(t.item(n12), None);
        assert_eq!(t.walk(&[1, 3]), None);
        assert_eq!(t.step(ROOT, 99), None);
        assert_eq!(t.max_depth(), 4);
    }

    #[test]
    fn rejects_bad_id_sets() {
        assert_eq!(
            Trie::new(&[vec![1, 2], vec![1, 2]]).unwrap_err(),
            TrieError::Duplicate(0, 1)
        );
        assert_eq!(
            Trie::new(&[vec![1, 2], vec![1, 2, 3]]).unwrap_err(),
            TrieError::Prefix(0, 1)
        );
        assert_eq!(
            Trie::new(&[vec![1, 2, 3], vec![1, 2]]).unwrap_err(),
            TrieError::Prefix(1, 0)
        );
        assert_eq!(Trie::new(&[vec![]]).unwrap_err(), TrieError::Empty(0));
    }
}
