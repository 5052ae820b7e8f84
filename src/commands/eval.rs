//! `llmbs eval`: trie-constrained beam search on the validation or test users of a run, with
//! Recall/NDCG reports and per-user predictions (paper 3.4.3, 4.1.2).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::data::{Dataset, Sample, SplitConfig};
use crate::device::{device_name, DeviceArgs};
use crate::eval::partial::{self, Partial};
use crate::eval::{self, Prediction};
use crate::metrics::rank_of;
use crate::metrics::MetricAccumulator;
use crate::tasks::Prompts;
use crate::util::{atomic_write, atomic_write_with, progress_bar, write_json};

use super::checkpoint;

/// The paper's Table 2 rows (R@5, R@10, N@5, N@10) by dataset name.
const PAPER_ROWS: &[(&str, [f64; 4])] = &[("Beauty", [0.0548, 0.0830, 0.0369, 0.0459])];

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// Run directory: reports go to RUN/eval/
    #[arg(long)]
    pub run: PathBuf,
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    #[command(flatten)]
    pub m: super::checkpoint::ModelArgs,
    /// Item index (LC-Rec format); default: the only RUN/index/*.index.json
    #[arg(long)]
    pub index: Option<PathBuf>,
    #[arg(long, value_parser = ["test", "valid"], default_value = "test")]
    pub split: String,
    #[arg(long, default_value_t = 20)]
    pub beam: usize,
    /// Users per beam-search batch
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Evaluate a seeded random sample of N users (all users without it)
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Prompt file (default: the embedded configs/prompts.json); SRT template 0 is used
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Continue an interrupted evaluation from RUN/eval/predictions[-SPLIT].jsonl.partial
    /// (written batch by batch; the settings must match)
    #[arg(long)]
    pub resume: bool,
    /// Seed of the fresh ID-token rows
    #[arg(long, default_value_t = 0)]
    pub vocab_seed: u64,
    #[command(flatten)]
    pub dev: DeviceArgs,
}

/// One line of `predictions.jsonl`: user, target, the target's rank, the top items with scores
/// and titles.
fn prediction_line(
    ds: &Dataset,
    s: &Sample,
    r: &eval::Ranked,
) -> anyhow::Result<serde_json::Value> {
    let list: Vec<u32> = r.iter().map(|x| x.0).collect();
    let p = Prediction {
        user: ds.users[s.user as usize].clone(),
        target: ds.items[s.target as usize].id.clone(),
        rank: rank_of(&list, s.target, list.len()),
        top: r
            .iter()
            .map(|&(i, sc)| (ds.items[i as usize].id.clone(), sc))
            .collect(),
    };
    let mut v = serde_json::to_value(&p)?;
    v["top_titles"] = r
        .iter()
        .map(|&(i, _)| ds.items[i as usize].title.clone())
        .collect();
    Ok(v)
}

pub fn find_index(run: &Path) -> anyhow::Result<PathBuf> {
    let dir = run.join("index");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("no --index given and {} is not readable", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".index.json"))
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!(
            "{}: no *.index.json (run `llmbs index` or pass --index)",
            dir.display()
        ),
        _ => anyhow::bail!("{}: several *.index.json, pass --index", dir.display()),
    }
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    let (device, dtype) = a.dev.resolve()?;
    let ds = Dataset::load_lcrec(&a.data)?;
    let split = ds.split(&SplitConfig::default())?;
    let index_path = match &a.index {
        Some(p) => p.clone(),
        None => find_index(&a.run)?,
    };
    let (index, report) = crate::index::load_external(&index_path, &ds)?;
    if report.disambiguation.collisions > 0 {
        eprintln!("{report}");
    }
    let tokens: Vec<Vec<String>> = (0..index.len()).map(|i| index.id_strings(i)).collect();
    let prompts = match &a.prompts {
        Some(p) => Prompts::load(p)?,
        None => Prompts::embedded()?,
    };
    let checkpoint::RunModel {
        loaded,
        model,
        items,
        src,
        desc: loaded_desc,
        ..
    } = checkpoint::load_run_model(
        a.m.model.as_deref(),
        &a.m.adapter,
        &a.run,
        tokens,
        a.vocab_seed,
        &device,
        dtype,
    )?;

    let mut samples: Vec<Sample> = if a.split == "test" {
        split.test.clone()
    } else {
        split.valid.clone()
    };
    if let Some(n) = a.limit {
        let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
        samples.shuffle(&mut rng);
        samples.truncate(n);
        samples.sort_by_key(|s| s.user);
    }
    let prompt_ids = eval::prompt_ids(&samples, &items, &prompts, 0, &loaded.tokenizer)?;
    let mean_prompt =
        prompt_ids.iter().map(|p| p.len()).sum::<usize>() as f64 / prompt_ids.len().max(1) as f64;
    eprintln!(
        "evaluating {} {} users, beam {}, batch {}, {} on {} (mean prompt {mean_prompt:.0} tokens)",
        samples.len(),
        a.split,
        a.beam,
        a.batch,
        src.describe(),
        device_name(&device)
    );
    let suffix = if a.split == "test" {
        String::new()
    } else {
        format!("-{}", a.split)
    };
    let eval_dir = a.run.join("eval");
    std::fs::create_dir_all(&eval_dir)
        .with_context(|| format!("creating {}", eval_dir.display()))?;
    let preds_path = eval_dir.join(format!("predictions{suffix}.jsonl"));
    // What must match for a resumed evaluation to be the same evaluation.
    let settings = serde_json::json!({
        "split": a.split, "users": samples.len(), "limit": a.limit, "seed": a.seed,
        "beam": a.beam, "model": loaded_desc, "index": index_path.display().to_string(),
        "prompt": prompts.srt[0], "dtype": format!("{dtype:?}").to_lowercase(),
    });
    let (mut partial, done_lines) = Partial::open(&preds_path, &settings, a.resume)?;
    let mut done: Vec<Option<eval::Ranked>> = vec![None; samples.len()];
    let by_user: HashMap<&str, usize> = samples
        .iter()
        .enumerate()
        .map(|(i, s)| (ds.users[s.user as usize].as_str(), i))
        .collect();
    let by_item: HashMap<&str, u32> = ds
        .items
        .iter()
        .enumerate()
        .map(|(i, it)| (it.id.as_str(), i as u32))
        .collect();
    for v in &done_lines {
        let p: Prediction = serde_json::from_value(v.clone())
            .with_context(|| format!("{}: {v}", partial::partial_path(&preds_path).display()))?;
        let (Some(&i), Some(top)) = (
            by_user.get(p.user.as_str()),
            p.top
                .iter()
                .map(|(id, sc)| by_item.get(id.as_str()).map(|&x| (x, *sc)))
                .collect::<Option<Vec<_>>>(),
        ) else {
            anyhow::bail!(
                "{}: user {} or one of its items is not in this evaluation",
                partial::partial_path(&preds_path).display(),
                p.user
            );
        };
        done[i] = Some(top);
    }
    let todo: Vec<usize> = (0..samples.len()).filter(|&i| done[i].is_none()).collect();
    if !done_lines.is_empty() {
        eprintln!(
            "resuming: {} users from {}, {} to go",
            samples.len() - todo.len(),
            partial::partial_path(&preds_path).display(),
            todo.len()
        );
    }
    let todo_samples: Vec<Sample> = todo.iter().map(|&i| samples[i].clone()).collect();
    let todo_prompts: Vec<Vec<u32>> = todo.iter().map(|&i| prompt_ids[i].clone()).collect();
    let pb = progress_bar(todo.len() as u64, "users");
    let out = eval::evaluate(
        &model,
        &todo_prompts,
        &todo_samples,
        &items,
        a.beam,
        a.batch,
        |idx, ranked| {
            pb.inc(idx.len() as u64);
            let lines = idx
                .iter()
                .zip(ranked)
                .map(|(&i, r)| prediction_line(&ds, &todo_samples[i], r))
                .collect::<anyhow::Result<Vec<_>>>()?;
            partial.append(&lines)
        },
    )?;
    pb.finish_and_clear();
    for (&i, r) in todo.iter().zip(out.ranked) {
        done[i] = Some(r);
    }
    let ranked: Vec<eval::Ranked> = done.into_iter().map(|r| r.unwrap_or_default()).collect();
    let mut acc = MetricAccumulator::default();
    for (s, r) in samples.iter().zip(&ranked) {
        let list: Vec<u32> = r.iter().map(|x| x.0).collect();
        acc.add(&list, s.target);
    }
    let metrics = acc.finish();

    atomic_write_with(&preds_path, |tmp| {
        let mut f = std::io::BufWriter::new(std::fs::File::create(tmp)?);
        for (s, r) in samples.iter().zip(&ranked) {
            writeln!(f, "{}", prediction_line(&ds, s, r)?)?;
        }
        f.flush()?;
        Ok(())
    })?;
    partial.finish()?;
    let resumed = samples.len() - todo.len();
    let users_per_s = todo.len() as f64 / out.seconds;
    let lists: Vec<Vec<u32>> = ranked
        .iter()
        .map(|r| r.iter().map(|x| x.0).collect())
        .collect();
    let (covered, coverage) =
        crate::metrics::coverage(lists.iter().map(|l| l.as_slice()), 10, ds.items.len());
    let paper = PAPER_ROWS
        .iter()
        .find(|(n, _)| *n == ds.name)
        .map(|(_, r)| *r);
    let report = serde_json::json!({
        "split": a.split, "users": samples.len(), "all_users": a.limit.is_none(),
        "metrics": metrics, "coverage10": {"items": covered, "fraction": coverage},
        "seconds": out.seconds, "users_per_s": users_per_s, "resumed_users": resumed,
        "resume_settings": settings,
        "beam": a.beam, "batch": a.batch, "model": src.describe(), "checkpoint": loaded_desc,
        "index": index_path.display().to_string(), "prompt_template": "srt[0]",
        "prompt": prompts.srt[0], "mean_prompt_tokens": mean_prompt,
        "device": device_name(&device), "dtype": format!("{dtype:?}").to_lowercase(),
        "scoring": "sum of full-vocabulary log-probabilities, no length normalisation",
        "paper_table2": paper.map(|r| serde_json::json!({"R@5": r[0], "R@10": r[1], "N@5": r[2], "N@10": r[3]})),
    });
    write_json(&eval_dir.join(format!("report{suffix}.json")), &report)?;
    let m = &metrics;
    let mut md = format!(
        "# llmbs eval: {} ({} split, {} users{})\n\n{}\n{}\n",
        ds.name,
        a.split,
        samples.len(),
        if a.limit.is_some() {
            format!(", seeded sample, seed {}", a.seed)
        } else {
            String::new()
        },
        m.markdown_header(),
        m.to_markdown_row()
    );
    md.push_str(&format!(
        "\nCoverage@10: {covered} distinct items in the users' top-10 lists ({:.2}% of {}).\n",
        100.0 * coverage,
        ds.items.len()
    ));
    if let Some(r) = paper {
        md.push_str(&format!(
            "\nPaper Table 2 (LLM-BS, LLaMA-7B): R@5 {:.4}, R@10 {:.4}, N@5 {:.4}, N@10 {:.4}\n",
            r[0], r[1], r[2], r[3]
        ));
    }
    md.push_str(&format!(
        "\nLoaded: {loaded_desc}. Index: {}. Prompt: srt[0]. Beam {}, batch {}, {} {:?}: {:.2} users/s ({:.0} s{}).\n",
        index_path.display(),
        a.beam,
        a.batch,
        device_name(&device),
        dtype,
        users_per_s,
        out.seconds,
        if resumed > 0 {
            format!(" for {} users; {resumed} more came from an interrupted run", todo.len())
        } else {
            String::new()
        }
    ));
    atomic_write(&eval_dir.join(format!("report{suffix}.md")), md.as_bytes())?;
    println!("{md}");
    Ok(())
}
