//! `csv-agent sandbox profile`: N workers forked from one zygote against
//! independent sandboxes, measured (not estimated) in one run; a table, the
//! whole report as JSON, or a chart (SVG).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::sandbox::memory::{self, Profile, ProfileProgress, SharingPoint};
use crate::sandbox::SandboxOptions;

/// Most workers one profile may fork (each is a live process for the whole run).
pub const MAX_WORKERS: usize = 256;

/// A cell of the task may wait for the CPU behind every other worker's.
const TASK_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct ProfileArgs {
    /// The dataset every sandbox loads as `df`.
    #[arg(long)]
    csv: PathBuf,
    /// Workers forked from the one zygote, each running the task (1 to 256).
    #[arg(long)]
    workers: usize,
    /// Python run once in every worker (default: describe, a groupby
    /// aggregation, a correlation and a scipy test, on any CSV).
    #[arg(long)]
    task: Option<String>,
    /// Print the whole report as JSON (bytes).
    #[arg(long)]
    json: bool,
    /// Also measure at 1, N/8, N/4, N/2 workers and draw memory against
    /// worker count for both strategies into this SVG file.
    #[arg(long, value_name = "FILE")]
    svg: Option<PathBuf>,
    /// Run even if an isolation layer is unavailable on this host.
    #[arg(long)]
    allow_degraded: bool,
}

/// The profile request, validated.
struct Settings {
    csv: PathBuf,
    workers: usize,
    task: String,
    default_task: bool,
    json: bool,
    svg: Option<PathBuf>,
    allow_degraded: bool,
}

fn validate(args: ProfileArgs) -> Result<Settings> {
    if !(1..=MAX_WORKERS).contains(&args.workers) {
        bail!(
            "--workers {}: give between 1 and {MAX_WORKERS} (every worker stays alive while it is measured; `cargo bench` runs the standard comparison)",
            args.workers
        );
    }
    if !args.csv.is_file() {
        bail!(
            "--csv {}: no such file (give the path of a CSV file)",
            args.csv.display()
        );
    }
    let (task, default_task) = match args.task {
        Some(t) if t.trim().is_empty() => {
            bail!("--task is empty: give Python code, or leave --task out for the default task")
        }
        Some(t) => (t, false),
        None => (memory::DEFAULT_TASK.to_string(), true),
    };
    if let Some(svg) = &args.svg {
        if svg.extension().and_then(|e| e.to_str()) != Some("svg") {
            bail!(
                "--svg {}: the chart is an SVG file; give a path ending in .svg",
                svg.display()
            );
        }
        let parent = match svg.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        if !parent.is_dir() {
            bail!(
                "--svg {}: the directory {} does not exist; create it first",
                svg.display(),
                parent.display()
            );
        }
    }
    Ok(Settings {
        csv: args.csv,
        workers: args.workers,
        task,
        default_task,
        json: args.json,
        svg: args.svg,
        allow_degraded: args.allow_degraded,
    })
}

struct StderrProgress;

impl ProfileProgress for StderrProgress {
    fn step(&self, message: &str) {
        eprintln!("csv-agent: profile: {message}");
    }
}

pub async fn run(args: ProfileArgs) -> Result<i32> {
    let settings = validate(args)?;
    let image = crate::cli::image::ensure_image().await?;
    let mut opts = SandboxOptions::new(&settings.csv, image)?;
    opts.allow_degraded = settings.allow_degraded;
    opts.limits.cell_timeout = TASK_TIMEOUT;
    let counts = if settings.svg.is_some() {
        memory::checkpoints(settings.workers)
    } else {
        vec![settings.workers]
    };
    let profile = memory::profile(opts, &settings.task, &counts, &StderrProgress).await?;
    super::warn_degraded(&profile.isolation);

    if let Some(svg) = &settings.svg {
        draw_chart(svg, &profile)
            .with_context(|| format!("drawing the chart into {}", svg.display()))?;
        eprintln!("csv-agent: profile: chart written to {}", svg.display());
    }
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&profile)?);
    } else {
        print_table(&profile, settings.default_task);
    }
    let missing: Vec<String> = profile
        .points
        .iter()
        .flat_map(|p| &p.report.missing)
        .map(|m| format!("{} (host pid {}): {}", m.role, m.host_pid, m.reason))
        .collect();
    if missing.is_empty() {
        Ok(crate::cli::EXIT_OK)
    } else {
        for m in &missing {
            eprintln!("csv-agent: warn: not measured: {m}");
        }
        Ok(crate::cli::EXIT_FAILED)
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn print_table(profile: &Profile, default_task: bool) {
    let Some(p) = profile.result() else {
        return;
    };
    println!(
        "memory profile: {} · {} worker(s) · {} task",
        profile.csv.display(),
        p.workers,
        if default_task { "default" } else { "--task" }
    );
    println!();
    println!("| process | Rss MiB | Pss MiB | Uss MiB |");
    println!("|---|---:|---:|---:|");
    let zygote = p.report.zygote();
    println!(
        "| zygote | {:.1} | {:.1} | {:.1} |",
        mib(p.zygote_rss),
        mib(p.zygote_pss),
        mib(zygote.map(|z| z.uss).unwrap_or(0))
    );
    for (name, f) in [
        ("worker, average", &p.worker_avg),
        ("worker, maximum", &p.worker_max),
    ] {
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} |",
            mib(f.rss),
            mib(f.pss),
            mib(f.uss)
        );
    }
    println!();
    let cold = &profile.cold;
    println!("| figure | MiB |");
    println!("|---|---:|");
    println!(
        "| total Pss, zygote + {} workers | {:.1} |",
        p.workers,
        mib(p.total_pss)
    );
    println!(
        "| one cold sandbox: zygote Pss {:.1} + worker Pss {:.1} | {:.1} |",
        mib(cold.zygote_pss),
        mib(cold.worker_pss),
        mib(cold.footprint)
    );
    println!(
        "| cold baseline = {} × one cold sandbox | {:.1} |",
        p.workers,
        mib(p.cold_baseline)
    );
    println!(
        "| **sharing ratio** = cold baseline / total Pss | **{:.2}×** |",
        p.sharing_ratio
    );
    if profile.points.len() > 1 {
        println!();
        println!("| workers | total Pss MiB | cold baseline MiB | sharing ratio |");
        println!("|---:|---:|---:|---:|");
        for q in &profile.points {
            println!(
                "| {} | {:.1} | {:.1} | {:.2}× |",
                q.workers,
                mib(q.total_pss),
                mib(q.cold_baseline),
                q.sharing_ratio
            );
        }
    }
    println!();
    if let Some(z) = zygote.and_then(|z| z.cgroup_usage) {
        let avg: Vec<u64> = p.report.workers().filter_map(|w| w.cgroup_usage).collect();
        let avg = avg.iter().sum::<u64>().checked_div(avg.len() as u64);
        println!(
            "cgroup usage: zygote {:.1} MiB, worker average {} (charged to the group that touched a page first)",
            mib(z),
            avg.map(|a| format!("{:.1} MiB", mib(a)))
                .unwrap_or_else(|| "n/a".to_string())
        );
    }
    println!("{}.", profile.definition);
    println!("{}", p.report.note);
}

/// Memory against worker count: the measured total Pss of one zygote and its
/// workers, and N × one cold sandbox's footprint.
fn draw_chart(path: &Path, profile: &Profile) -> Result<()> {
    use plotters::prelude::*;

    let points: &[SharingPoint] = &profile.points;
    let x_max = profile.workers.max(1) as f64;
    let y_max = points
        .iter()
        .map(|p| mib(p.cold_baseline.max(p.total_pss)))
        .fold(1.0, f64::max)
        * 1.12;
    // The file and its folder: `penguins/data.csv` says more than `data.csv`.
    let parts: Vec<String> = profile
        .csv
        .iter()
        .rev()
        .take(2)
        .map(|p| p.to_string_lossy().to_string())
        .collect();
    let name = parts.into_iter().rev().collect::<Vec<_>>().join("/");
    let err = |e: &dyn std::fmt::Display| anyhow::anyhow!("{e}");

    let root = SVGBackend::new(path, (860, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("Memory against worker count ({name}, the same task in every worker)"),
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(72)
        .build_cartesian_2d(0.0..x_max * 1.1, 0.0..y_max)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("concurrent tasks (workers / sandboxes)")
        .y_desc("memory in use, MiB (sum of Pss)")
        .light_line_style(WHITE.mix(0.0))
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;

    let cold_color = RGBColor(200, 60, 40);
    let shared_color = RGBColor(40, 90, 180);
    let cold: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.workers as f64, mib(p.cold_baseline)))
        .collect();
    let shared: Vec<(f64, f64)> = points
        .iter()
        .map(|p| (p.workers as f64, mib(p.total_pss)))
        .collect();
    chart
        .draw_series(LineSeries::new(cold.clone(), cold_color.stroke_width(2)))
        .map_err(|e| err(&e))?
        .label(format!(
            "N independent sandboxes: N × {:.0} MiB (one measured alone)",
            mib(profile.cold.footprint)
        ))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], cold_color));
    chart
        .draw_series(cold.iter().map(|&c| Circle::new(c, 4, cold_color.filled())))
        .map_err(|e| err(&e))?;
    chart
        .draw_series(LineSeries::new(
            shared.clone(),
            shared_color.stroke_width(2),
        ))
        .map_err(|e| err(&e))?
        .label("one zygote + N forked workers (measured total Pss)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], shared_color));
    chart
        .draw_series(
            shared
                .iter()
                .map(|&c| Circle::new(c, 4, shared_color.filled())),
        )
        .map_err(|e| err(&e))?;
    chart
        .draw_series(points.iter().map(|p| {
            Text::new(
                format!("{:.1}×", p.sharing_ratio),
                (
                    p.workers as f64 - x_max * 0.01,
                    mib(p.total_pss) + y_max * 0.045,
                ),
                ("sans-serif", 15).into_font().color(&shared_color),
            )
        }))
        .map_err(|e| err(&e))?;
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(workers: usize) -> ProfileArgs {
        ProfileArgs {
            csv: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/datasets/penguins/data.csv"
            )),
            workers,
            task: None,
            json: false,
            svg: None,
            allow_degraded: false,
        }
    }

    fn message(r: Result<Settings>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn worker_counts_out_of_range_are_refused_early() {
        assert!(message(validate(args(0))).contains("between 1 and 256"));
        assert!(message(validate(args(257))).contains("between 1 and 256"));
        assert!(validate(args(1)).is_ok());
        assert!(validate(args(256)).is_ok());
    }

    #[test]
    fn the_default_task_is_used_without_task() {
        let s = validate(args(2)).unwrap();
        assert!(s.default_task);
        assert_eq!(s.task, memory::DEFAULT_TASK);
    }

    #[test]
    fn an_empty_task_or_a_bad_chart_path_is_refused() {
        let mut a = args(2);
        a.task = Some("  ".to_string());
        assert!(message(validate(a)).contains("--task is empty"));
        let mut a = args(2);
        a.svg = Some(PathBuf::from("chart.png"));
        assert!(message(validate(a)).contains("ending in .svg"));
        let mut a = args(2);
        a.svg = Some(PathBuf::from("/no/such/dir/chart.svg"));
        assert!(message(validate(a)).contains("does not exist"));
        let mut a = args(2);
        a.csv = PathBuf::from("/no/such.csv");
        assert!(message(validate(a)).contains("no such file"));
    }
}
