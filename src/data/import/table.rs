//! The raw interaction table the readers fill: interned user and item keys, 16-byte rows in file
//! order, and the text of the items that have some.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// FxHash (rustc's hasher): keys are ids from trusted dumps, and SipHash would cost a third of
/// the CSV reader's time.
#[derive(Default, Clone, Copy)]
pub struct FxHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    /// Fx's last step is a multiply, whose low bits depend only on the input's low bits; keys
    /// that differ only in their last bytes (`U0000001`, `U0000002`: the high bytes of a
    /// little-endian word) then share their low bits, which index hashbrown's buckets, and a
    /// million users became a quadratic pile of collisions (10M rows in 216 s). murmur3's
    /// finaliser spreads every bit over the whole word.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// Keys to dense ids in first-seen order.
#[derive(Default)]
pub struct Interner {
    map: FxMap<Rc<str>, u32>,
    names: Vec<Rc<str>>,
}

impl Interner {
    /// The id of `key`, new ones numbered in the order first seen.
    pub fn intern(&mut self, key: &str) -> u32 {
        if let Some(&id) = self.map.get(key) {
            return id;
        }
        let id = self.names.len() as u32;
        let rc: Rc<str> = Rc::from(key);
        self.names.push(rc.clone());
        self.map.insert(rc, id);
        id
    }

    pub fn get(&self, key: &str) -> Option<u32> {
        self.map.get(key).copied()
    }

    pub fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// One interaction: interned user and item, and its time in the source's own unit (only the
/// order matters). Its position in [`Table::rows`] is the file order, the tie-break.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    pub user: u32,
    pub item: u32,
    pub time: i64,
}

/// An item's text fields, raw as the source had them (entities still escaped: the LC-Rec reader
/// unescapes once, and unescaping twice would turn `&amp;lt;` into `<`), HTML tags stripped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ItemText {
    pub title: String,
    pub categories: String,
    pub brand: String,
    pub description: String,
}

impl ItemText {
    /// What the LC-Rec reader requires: a title or categories that are not empty once cleaned.
    pub fn usable(&self) -> bool {
        !super::super::text::clean(&self.title).is_empty()
            || !super::super::text::clean(&self.categories).is_empty()
    }
}

/// Everything the readers gather.
#[derive(Default)]
pub struct Table {
    pub users: Interner,
    pub items: Interner,
    pub rows: Vec<Row>,
    /// Interactions read, including those below `--min-rating`.
    pub read: usize,
    /// Per interned item: its text, once an item source gave one.
    pub texts: Vec<Option<ItemText>>,
    /// Item-source records whose item never occurs in the interactions (skipped).
    pub unused_item_records: usize,
    /// Item-source records for an item already described (the first one is kept).
    pub duplicate_item_records: usize,
}

impl Table {
    /// Adds one interaction, or only counts it (interning its user and item, so the "read"
    /// counts include them) when `keep` is false.
    pub fn push(&mut self, user: &str, item: &str, time: i64, keep: bool) {
        let user = self.users.intern(user);
        let item = self.items.intern(item);
        self.read += 1;
        if keep {
            self.rows.push(Row { user, item, time });
        }
    }

    /// Records an item's text when the item occurs in the interactions; the first record wins.
    pub fn describe(&mut self, item: &str, text: ItemText) {
        let Some(id) = self.items.get(item) else {
            self.unused_item_records += 1;
            return;
        };
        if self.texts.len() < self.items.len() {
            self.texts.resize(self.items.len(), None);
        }
        let slot = &mut self.texts[id as usize];
        if slot.is_some() {
            self.duplicate_item_records += 1;
        } else {
            *slot = Some(text);
        }
    }

    pub fn text(&self, item: u32) -> Option<&ItemText> {
        self.texts.get(item as usize).and_then(Option::as_ref)
    }
}

/// Removes HTML tags (`<br>`, `</span>`, `<a href=..>`) from scraped text (they are markup, not
/// words) and collapses whitespace. A `<` not starting a tag (`a < b`) stays.
pub fn strip_tags(s: &str) -> String {
    if !s.contains('<') {
        return s.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(lt) = rest.find('<') {
        out.push_str(&rest[..lt]);
        let after = &rest[lt + 1..];
        let is_tag = after
            .trim_start_matches('/')
            .starts_with(|c: char| c.is_ascii_alphabetic());
        match after.find('>') {
            Some(gt) if is_tag => {
                out.push(' ');
                rest = &after[gt + 1..];
            }
            _ => {
                out.push('<');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn keys_differing_in_their_last_bytes_spread_over_the_low_bits() {
        // What hashbrown indexes its buckets with: the low bits. Before the finaliser, keys
        // like these fell into a few values of the low 16 bits.
        let b = BuildHasherDefault::<FxHasher>::default();
        let mut low: Vec<u64> = (0..100_000)
            .map(|i| b.hash_one(format!("U{i:07}").as_str()) & 0xffff)
            .collect();
        low.sort_unstable();
        low.dedup();
        assert!(
            low.len() > 50_000,
            "{} distinct low-16-bit values",
            low.len()
        );
    }

    #[test]
    fn interns_in_first_seen_order() {
        let mut i = Interner::default();
        assert_eq!((i.intern("b"), i.intern("a"), i.intern("b")), (0, 1, 0));
        assert_eq!((i.name(1), i.len(), i.get("c")), ("a", 2, None));
    }

    #[test]
    fn strips_tags_only() {
        assert_eq!(strip_tags("a<br/>b </span> c"), "a b c");
        assert_eq!(strip_tags("1 < 2 and 3 > 2"), "1 < 2 and 3 > 2");
        assert_eq!(strip_tags("Lotion &amp; more"), "Lotion &amp; more");
    }
}
