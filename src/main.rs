use clap::{Parser, Subcommand};
use llmbs::commands;

/// llmbs: an LLM-based generative recommender (LLM-BS) on candle.
#[derive(Parser)]
#[command(name = "llmbs", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a dataset: statistics and leave-one-out split sizes.
    #[command(subcommand)]
    Data(commands::data::DataCommand),
    /// Semantic item embeddings Z^s: mean-pooled backbone hidden states of item texts.
    Embed(commands::embed::EmbedArgs),
    /// Nearest neighbours and category agreement of an embedding table.
    Inspect(commands::inspect::InspectArgs),
    /// Dual-source item IDs (hierarchical k-means over Z^s and Z^b), or an external index checked.
    Index(commands::index::IndexArgs),
    /// Behavior item embeddings Z^b (DIN) or the SASRec baseline, trained and ranked on the split.
    Behavior(commands::behavior::BehaviorArgs),
    /// Train the recommender: `--stage initial` (tasks + GCT) or `--stage anneal` (adapter).
    Train(Box<commands::train::TrainArgs>),
    /// Every stage from data to eval into runs/<name>/, skipping stages that are up to date.
    Pipeline(commands::pipeline::PipelineArgs),
    /// The top-K next items for a user or a history, with titles and scores.
    Recommend(commands::recommend::RecommendArgs),
    /// Trie-constrained beam search over all item IDs; Recall/NDCG reports and predictions.
    Eval(commands::eval::EvalArgs),
    /// Most popular, cluster and SASRec baselines on a run's own split and users.
    Baselines(commands::baselines::BaselinesArgs),
    /// Arms ranked on the same users, each minus the first with paired standard errors.
    Paired(commands::paired::PairedArgs),
    /// Fold a PEFT LoRA adapter into its base model and write a Hugging Face directory.
    Merge(commands::merge::MergeArgs),
    /// Perplexity of the held-out items' text, adapter on or off.
    Ppl(commands::ppl::PplArgs),
    /// Throughput benchmarks (JSON lines with --json).
    #[command(subcommand)]
    Bench(commands::bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    llmbs::util::pin_thread_count();
    match cli.command {
        Command::Data(cmd) => commands::data::run(cmd),
        Command::Embed(args) => commands::embed::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Index(args) => commands::index::run(args),
        Command::Behavior(args) => commands::behavior::run(args),
        Command::Train(args) => commands::train::run(*args),
        Command::Pipeline(args) => commands::pipeline::run(args),
        Command::Recommend(args) => commands::recommend::run(args),
        Command::Eval(args) => commands::eval::run(args),
        Command::Baselines(args) => commands::baselines::run(args),
        Command::Paired(args) => commands::paired::run(args),
        Command::Merge(args) => commands::merge::run(args),
        Command::Ppl(args) => commands::ppl::run(args),
        Command::Bench(cmd) => commands::bench::run(cmd),
    }
}
