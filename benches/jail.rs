//! Start-up and latency of the jail: `cargo bench --bench jail`.
//!
//! Prints a Markdown table: zygote cold start in the jail against a bare
//! import of the same stack outside any jail, worker acquire with and
//! without a pre-forked spare, and the round trip of a `1+1` cell. Each
//! figure is the median with min and max over repeated runs; ratios are
//! computed within this run. (Memory comparisons belong to the memory bench.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use csv_agent::sandbox::image::{self, ImageProgress, ImageSpec};
use csv_agent::sandbox::{Sandbox, SandboxOptions};

struct Quiet;
impl ImageProgress for Quiet {
    fn step(&self, m: &str) {
        eprintln!("image: {m}");
    }
    fn line(&self, _: &str) {}
}

struct Stat {
    median: f64,
    min: f64,
    max: f64,
    n: usize,
}

fn stat(mut ms: Vec<f64>) -> Stat {
    ms.sort_by(|a, b| a.total_cmp(b));
    let n = ms.len();
    let median = if n % 2 == 1 {
        ms[n / 2]
    } else {
        (ms[n / 2 - 1] + ms[n / 2]) / 2.0
    };
    Stat {
        median,
        min: ms[0],
        max: ms[n - 1],
        n,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn row(name: &str, s: &Stat) {
    println!(
        "| {name} | {:.3} | {:.3} | {:.3} | {} |",
        s.median, s.min, s.max, s.n
    );
}

fn options(csv: &Path, image: &image::Image, spares: usize) -> SandboxOptions {
    let mut o = SandboxOptions::new(csv, image.clone()).expect("options");
    o.init_program = PathBuf::from(env!("CARGO_BIN_EXE_csv-agent"));
    o.spare_workers = spares;
    o
}

fn main() {
    let image = image::ensure(&ImageSpec::from_env(), &Quiet).expect("image");
    let csv = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/penguins/data.csv");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    const STARTS: usize = 7;
    // Bare import outside any jail, same interpreter and environment.
    let mut bare = Vec::new();
    for _ in 0..STARTS {
        let t = Instant::now();
        let ok = Command::new(&image.python)
            .args([
                "-I",
                "-B",
                "-c",
                "import pandas, numpy, scipy.stats, sklearn, statsmodels.api",
            ])
            .env_clear()
            .envs(image.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("OPENBLAS_NUM_THREADS", "1")
            .env("OMP_NUM_THREADS", "1")
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "bare import failed");
        bare.push(ms(t.elapsed()));
    }

    let (cold, acquire_spare, acquire_fresh, round_trip) = rt.block_on(async {
        let mut cold = Vec::new();
        for _ in 0..STARTS {
            let t = Instant::now();
            let sb = Sandbox::start(options(&csv, &image, 0))
                .await
                .expect("start");
            cold.push(ms(t.elapsed()));
            sb.shutdown().await;
        }

        let sb = Sandbox::start(options(&csv, &image, 1))
            .await
            .expect("start");
        let mut spare = Vec::new();
        for _ in 0..30 {
            // Let the refill finish so a spare is waiting.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let t = Instant::now();
            let w = sb.acquire().await.expect("acquire");
            spare.push(ms(t.elapsed()));
            drop(w);
        }
        sb.shutdown().await;

        let sb = Sandbox::start(options(&csv, &image, 0))
            .await
            .expect("start");
        let mut fresh = Vec::new();
        for _ in 0..30 {
            let t = Instant::now();
            let w = sb.acquire().await.expect("acquire");
            fresh.push(ms(t.elapsed()));
            drop(w);
        }
        let mut w = sb.acquire().await.expect("acquire");
        for _ in 0..20 {
            w.exec("1+1").await.expect("warm-up");
        }
        let mut rt = Vec::new();
        for _ in 0..500 {
            let t = Instant::now();
            let c = w.exec("1+1").await.expect("cell");
            rt.push(ms(t.elapsed()));
            assert_eq!(c.result.as_deref(), Some("2"));
        }
        drop(w);
        sb.shutdown().await;
        (cold, spare, fresh, rt)
    });

    let bare = stat(bare);
    let cold = stat(cold);
    println!("| measurement | median ms | min ms | max ms | runs |");
    println!("|---|---|---|---|---|");
    row("bare import of the stack, no jail", &bare);
    row(
        "zygote cold start in the jail (to ready, CSV loaded)",
        &cold,
    );
    row("worker acquire, spare pre-forked", &stat(acquire_spare));
    row("worker acquire, fresh fork", &stat(acquire_fresh));
    row("cell round trip `1+1`", &stat(round_trip));
    println!();
    println!(
        "jail start / bare import (medians): {:.3} ({:+.1} %)",
        cold.median / bare.median,
        (cold.median / bare.median - 1.0) * 100.0
    );
}
