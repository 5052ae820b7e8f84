//! Dense sequence recommendation (an option beyond paper 3.3.2): one SRT sample per window of
//! `max_history` items whose every history ID after the first also carries loss, so one
//! forward pass trains all the prefixes of the window that the paper feeds one by one.

use crate::data::Sample;

/// Indices into `samples` (every training prefix, oldest first per user, as
/// `Split::train_samples` yields them) of one sample per window: per user the longest prefix,
/// then the one `max_history` targets earlier, and so on. With dense loss those windows cover
/// every training target of the user exactly once.
pub fn srt_windows(samples: &[Sample], max_history: usize) -> Vec<usize> {
    let step = max_history.max(1);
    let mut out = Vec::new();
    let mut start = 0;
    while start < samples.len() {
        let user = samples[start].user;
        let mut end = start;
        while end < samples.len() && samples[end].user == user {
            end += 1;
        }
        // Oldest first inside the user, so windows are pushed in time order too.
        let mut mine: Vec<usize> = (start..end).rev().step_by(step).collect();
        mine.reverse();
        out.extend(mine);
        start = end;
    }
    out
}

/// Positions `p` of `input[..prompt_len]` whose next token is an ID token of a history item
/// other than the first (`input[p + 1]` is that token), found by matching each item's ID
/// tokens in order. Returns None when some item's ID is not found as written (a tokenizer that
/// merged an ID token with its neighbours), so the caller can refuse the sample loudly.
pub fn history_id_positions(
    input: &[u32],
    prompt_len: usize,
    history_ids: &[&[u32]],
) -> Option<Vec<usize>> {
    let prompt = &input[..prompt_len.min(input.len())];
    let mut out = Vec::new();
    let mut cursor = 0;
    for (k, ids) in history_ids.iter().enumerate() {
        if ids.is_empty() {
            return None;
        }
        let found = (cursor..=prompt.len().checked_sub(ids.len())?)
            .find(|&s| &prompt[s..s + ids.len()] == *ids)?;
        if k > 0 && found > 0 {
            out.extend(found - 1..found - 1 + ids.len());
        }
        cursor = found + ids.len();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefixes(user: u32, seq: &[u32], cap: usize) -> Vec<Sample> {
        (1..seq.len())
            .map(|end| Sample {
                user,
                history: seq[end.saturating_sub(cap)..end].to_vec(),
                target: seq[end],
            })
            .collect()
    }

    #[test]
    fn windows_cover_every_target_once() {
        let cap = 3;
        let a: Vec<u32> = (0..9).collect(); // 8 prefixes
        let b: Vec<u32> = (100..103).collect(); // 2 prefixes
        let mut s = prefixes(0, &a, cap);
        s.extend(prefixes(1, &b, cap));
        let w = srt_windows(&s, cap);
        // User 0: prefixes 0..8, windows at 1, 4, 7; user 1: prefixes 8, 9 -> window 9.
        assert_eq!(w, vec![1, 4, 7, 9]);
        let mut covered: Vec<u32> = Vec::new();
        for &i in &w {
            covered.extend(&s[i].history[1..]);
            covered.push(s[i].target);
        }
        // A window's first history item is the target of no one in it, unless it opens the
        // sequence (then nobody predicts it anyway).
        let mut want: Vec<u32> = s.iter().map(|x| x.target).collect();
        want.sort();
        covered.sort();
        assert_eq!(covered, want);
    }

    #[test]
    fn positions_point_at_later_history_ids() {
        // "<p> 7 8 , 9 10 , 11 12 <q>": three items of two tokens, separator 5.
        let input = [1, 2, 7, 8, 5, 9, 10, 5, 11, 12, 3, 40, 41];
        let hist: [&[u32]; 3] = [&[7, 8], &[9, 10], &[11, 12]];
        let pos = history_id_positions(&input, 11, &hist).unwrap();
        assert_eq!(pos, vec![4, 5, 7, 8]);
        let next: Vec<u32> = pos.iter().map(|&p| input[p + 1]).collect();
        assert_eq!(next, vec![9, 10, 11, 12]);
        // The response (40, 41) is never matched as history.
        assert!(history_id_positions(&input, 11, &[&[7, 8], &[40, 41]]).is_none());
    }
}
