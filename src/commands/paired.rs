//! `llmbs paired`: arms ranked on the same users (validation ranks files of an A/B, or
//! evaluations' predictions), each arm minus the first with paired standard errors.

use std::path::PathBuf;

use crate::eval::ab::{compare, markdown};
use crate::util::write_json;

#[derive(clap::Args, Debug)]
pub struct PairedArgs {
    /// Ranks files of the arms, the first being the reference: lines of user, target and rank
    /// (`train/<stage>/valid-ranks-<step>.jsonl`, `eval/<label>.predictions.jsonl`); an arm may
    /// be named as NAME=FILE
    #[arg(required = true)]
    pub arms: Vec<String>,
    /// Also write the comparison as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(a: PairedArgs) -> anyhow::Result<()> {
    let arms: Vec<(String, PathBuf)> = a
        .arms
        .iter()
        .map(|s| match s.split_once('=') {
            Some((name, file)) => (name.to_string(), PathBuf::from(file)),
            None => (s.clone(), PathBuf::from(s)),
        })
        .collect();
    let out = compare(&arms)?;
    if let Some(p) = &a.json {
        write_json(p, &out)?;
    }
    print!("{}", markdown(&out));
    Ok(())
}
