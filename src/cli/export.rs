//! `csv-agent export` (episodes → one training format, JSON Lines) and
//! `csv-agent split` (episodes → train / val / test files). Flags are
//! resolved here into the library's options before any work; the work is
//! in `crate::formats` and `crate::split`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::EXIT_OK;
use crate::formats::{self, ExportOptions, Flavor, Format};
use crate::schema::Difficulty;
use crate::split::{self, GroupBy, Ratios, SplitOptions, REPORT_FILE, SPLITS};

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// sft | sft-tools | sft-interleaved | prm | orm | dpo | kto | rl
    /// (record shapes in docs/formats.md).
    #[arg(long, value_parser = parse_format)]
    format: Format,
    /// The episodes file: a run's episodes.jsonl or a split's train.jsonl.
    #[arg(long)]
    episodes: PathBuf,
    /// Where the records go (JSON Lines, replaced whole).
    #[arg(long)]
    out: PathBuf,
    /// Also use unverified episodes, judged by their clear majority answer.
    #[arg(long)]
    include_unverified: bool,
    /// trl, or openai (OpenAI fine-tuning files; sft-tools and dpo only).
    #[arg(long, value_parser = parse_flavor, default_value = "trl")]
    flavor: Flavor,
}

#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The episodes file (e.g. out/episodes.jsonl).
    #[arg(long)]
    episodes: PathBuf,
    /// Directory for train.jsonl, val.jsonl, test.jsonl and split_report.json.
    #[arg(long)]
    out: PathBuf,
    /// Shares of train, val and test; non-negative, summing to 1.
    #[arg(long, value_parser = parse_ratios, default_value = "0.8,0.1,0.1")]
    ratios: Ratios,
    /// Seed of the hash-ordered shuffle: the same seed gives the same split.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// What never straddles two splits: question, template or dataset.
    #[arg(long, value_parser = parse_group_by, default_value = "question")]
    group_by: GroupBy,
    /// Also split unverified episodes.
    #[arg(long)]
    include_unverified: bool,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e: formats::FormatError| e.to_string())
}

fn parse_flavor(s: &str) -> Result<Flavor, String> {
    s.parse().map_err(|e: formats::FormatError| e.to_string())
}

fn parse_ratios(s: &str) -> Result<Ratios, String> {
    s.parse().map_err(|e: split::SplitError| e.to_string())
}

fn parse_group_by(s: &str) -> Result<GroupBy, String> {
    s.parse().map_err(|e: split::SplitError| e.to_string())
}

pub fn export(args: ExportArgs) -> Result<i32> {
    let options = ExportOptions::new(args.format, args.flavor, args.include_unverified)?;
    let report = formats::export_file(&args.episodes, &args.out, &options)
        .with_context(|| format!("exporting {}", args.format))?;
    println!(
        "{}{}: wrote {} records to {} ({} episodes read; skipped: {} unverified, {} without a reference answer; {} gave no record)",
        args.format,
        if args.flavor == Flavor::Trl { String::new() } else { format!(" ({})", args.flavor) },
        report.records,
        args.out.display(),
        report.episodes,
        report.skipped_unverified,
        report.skipped_no_reference,
        report.without_records,
    );
    if report.records == 0 {
        eprintln!(
            "csv-agent: warning: {} is empty (dpo needs traces that disagree with the verified answer; unverified episodes need --include-unverified)",
            args.out.display()
        );
    }
    Ok(EXIT_OK)
}

pub fn split(args: SplitArgs) -> Result<i32> {
    let options = SplitOptions {
        ratios: args.ratios,
        seed: args.seed,
        group_by: args.group_by,
        include_unverified: args.include_unverified,
    };
    let report = split::split_file(&args.episodes, &args.out, &options).context("splitting")?;
    println!(
        "{} episodes read, {} unverified skipped; grouped by {}, ratios {}, seed {}",
        report.episodes, report.skipped_unverified, report.group_by, args.ratios, report.seed
    );
    let mut header = format!("{:<6} {:>8} {:>7}", "split", "episodes", "groups");
    for d in Difficulty::ALL {
        header += &format!(" {:>9}", d.as_str());
    }
    println!("{header}");
    for s in SPLITS {
        let c = report.counts(s);
        let mut row = format!("{:<6} {:>8} {:>7}", s.as_str(), c.episodes, c.groups);
        for d in Difficulty::ALL {
            row += &format!(" {:>9}", c.by_difficulty.get(d));
        }
        println!("{row}");
    }
    println!(
        "wrote {}: train.jsonl, val.jsonl, test.jsonl, {REPORT_FILE}",
        args.out.display()
    );
    Ok(EXIT_OK)
}
