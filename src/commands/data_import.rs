//! `llmbs data import`: raw files to a dataset directory (see `crate::data::import`).

use std::path::PathBuf;

use anyhow::Context;

use super::text_table::{grouped, table};
use crate::data::import::{
    import, Columns, FilterOptions, ImportConfig, ImportFormat, MissingText, Repeats,
};

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Input format.
    #[arg(long = "from", value_enum)]
    pub format: ImportFormat,
    /// Input files, plain or gzipped: amazon/amazon2023: the review file and optionally the
    /// meta_ file; recbole: NAME.inter and optionally NAME.item; csv: the interactions file,
    /// then optionally the item table.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Output dataset directory; must not exist (unless --force). Written to a temporary
    /// directory beside it and renamed when complete.
    #[arg(long)]
    pub out: PathBuf,
    /// Dataset name (<Name>.inter.json); default from the interactions file's name.
    #[arg(long)]
    pub name: Option<String>,
    /// Replace an existing --out.
    #[arg(long)]
    pub force: bool,
    /// k-core threshold for users and items, applied iteratively (0 or 1: none).
    #[arg(long, default_value_t = 5)]
    pub k_core: usize,
    /// User threshold, overriding --k-core.
    #[arg(long)]
    pub user_core: Option<usize>,
    /// Item threshold, overriding --k-core.
    #[arg(long)]
    pub item_core: Option<usize>,
    /// A user's repeated interactions with an item: drop (keep the earliest) or keep.
    #[arg(long, value_enum, default_value_t = Repeats::Drop)]
    pub repeats: Repeats,
    /// Skip interactions rated below this.
    #[arg(long)]
    pub min_rating: Option<f64>,
    /// Items with no title and no categories: drop (default when an item file is given) or
    /// placeholder ("Item <id>"; default without an item file).
    #[arg(long, value_enum)]
    pub missing_text: Option<MissingText>,
    /// Keep only each user's most recent N interactions (after the k-core; at least 3).
    #[arg(long, value_parser = clap::value_parser!(usize))]
    pub max_len: Option<usize>,
    /// csv/recbole: the user column [default: user_id].
    #[arg(long)]
    pub user_col: Option<String>,
    /// csv/recbole: the item column, in both files [default: item_id].
    #[arg(long)]
    pub item_col: Option<String>,
    /// csv/recbole: the time column (integers or decimals; only the order matters)
    /// [default: timestamp].
    #[arg(long)]
    pub time_col: Option<String>,
    /// csv/recbole: the rating column, read with --min-rating [default: rating].
    #[arg(long)]
    pub rating_col: Option<String>,
    /// csv/recbole item table: title column [default: title, if present].
    #[arg(long)]
    pub title_col: Option<String>,
    /// csv/recbole item table: categories column [default: categories, if present].
    #[arg(long)]
    pub categories_col: Option<String>,
    /// csv/recbole item table: brand column [default: brand, if present].
    #[arg(long)]
    pub brand_col: Option<String>,
    /// csv/recbole item table: description column [default: description, if present].
    #[arg(long)]
    pub description_col: Option<String>,
    /// csv: field separator [default: tab for .tsv, comma for .csv, else sniffed].
    #[arg(long)]
    pub delimiter: Option<char>,
}

impl ImportArgs {
    fn config(&self) -> anyhow::Result<ImportConfig> {
        if let Some(n) = self.max_len.filter(|&n| n < crate::data::MIN_INTERACTIONS) {
            anyhow::bail!(
                "--max-len {n}: leave-one-out needs at least {}",
                crate::data::MIN_INTERACTIONS
            );
        }
        Ok(ImportConfig {
            format: self.format,
            inputs: self.inputs.clone(),
            out: self.out.clone(),
            name: self.name.clone(),
            force: self.force,
            filters: FilterOptions {
                user_core: self.user_core.unwrap_or(self.k_core),
                item_core: self.item_core.unwrap_or(self.k_core),
                repeats: self.repeats,
                min_rating: self.min_rating,
                missing_text: MissingText::Drop,
                max_len: self.max_len,
            },
            missing_text: self.missing_text,
            columns: Columns {
                user: self.user_col.clone(),
                item: self.item_col.clone(),
                time: self.time_col.clone(),
                rating: self.rating_col.clone(),
                title: self.title_col.clone(),
                categories: self.categories_col.clone(),
                brand: self.brand_col.clone(),
                description: self.description_col.clone(),
                delimiter: self.delimiter,
            },
        })
    }
}

pub fn run(args: &ImportArgs) -> anyhow::Result<()> {
    let cfg = args.config()?;
    let summary = import(&cfg).with_context(|| format!("importing into {}", args.out.display()))?;
    let mut rows = vec![vec![
        "Step".to_string(),
        "#Users".into(),
        "#Items".into(),
        "#Interactions".into(),
    ]];
    for s in &summary.steps {
        rows.push(vec![
            s.step.clone(),
            grouped(s.users),
            grouped(s.items),
            grouped(s.interactions),
        ]);
    }
    print!("{}", table(&rows));
    println!(
        "\n{} written to {} (record: import.json)",
        summary.name,
        args.out.display()
    );
    Ok(())
}
