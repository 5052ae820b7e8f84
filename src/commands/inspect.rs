//! `llmbs inspect`: nearest neighbours and category agreement@K of an embedding table.

use std::path::PathBuf;

use candle_core::Tensor;

use crate::data::Dataset;
use crate::embed::{self, neighbors};

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// Dataset directory (LC-Rec JSON format)
    #[arg(long)]
    pub data: PathBuf,
    /// Embedding table (semantic or behavior .safetensors)
    #[arg(long)]
    pub embeddings: PathBuf,
    /// Neighbours per item
    #[arg(long, default_value_t = 10)]
    pub k: usize,
    /// How many example items to print
    #[arg(long, default_value_t = 5)]
    pub show: usize,
    /// Print the figures as JSON
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let ds = Dataset::load_lcrec(&args.data)?;
    let table = embed::load_table(&args.embeddings, None)?;
    report(&ds, &table, args.k, args.show, args.json)
}

/// Prints example neighbour lists and the full-category-path agreement@k against random.
pub fn report(
    ds: &Dataset,
    table: &Tensor,
    k: usize,
    show: usize,
    json: bool,
) -> anyhow::Result<()> {
    let n = table.dim(0)?;
    let nb = neighbors::knn(table, k)?;
    let labels: Vec<&str> = ds.items[..n]
        .iter()
        .map(|it| it.categories.as_str())
        .collect();
    let (observed, random) = neighbors::label_agreement(&nb, &labels);
    if json {
        let v = serde_json::json!({
            "items": n, "k": k,
            "category_agreement": observed, "random_baseline": random,
            "lift": observed / random.max(1e-12),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    // Spread the examples over the catalogue rather than showing the first few ids.
    let step = (n / show.max(1)).max(1);
    for i in (0..n).step_by(step).take(show) {
        println!("item {} : {}", ds.items[i].id, ds.items[i].title);
        for &(j, s) in nb[i].iter().take(5) {
            println!(
                "    {s:.3}  {} : {}",
                ds.items[j as usize].id, ds.items[j as usize].title
            );
        }
    }
    println!(
        "category agreement@{k} (same full category path): {observed:.4}  random: {random:.4}  lift: {:.1}x  ({n} items)",
        observed / random.max(1e-12)
    );
    Ok(())
}
