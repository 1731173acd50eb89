//! `csv-agent serve` under load, over its unix socket, with the library's
//! client (HTTP/1.1, one connection per caller):
//!
//! 1. first cell of a new session on a warm dataset (create + `1+1`),
//! 2. `1+1` round trip in one session,
//! 3. 64 concurrent sessions × 100 cells: throughput, p50/p99, daemon RSS,
//! 4. a soak: 16 callers creating a session, running 10 cells, deleting it,
//!    for SERVE_SOAK_SECS (default 30; the figure is 600), sampling
//!    the daemon's RSS; at the end no session, no worker beyond the spares,
//!    no worker cgroup beyond theirs.
//!
//! `cargo bench --bench serve` (`-- --quick` for fewer iterations).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csv_agent::serve::{Endpoint, ServeClient};
use serde_json::json;

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

fn row(name: &str, xs: &[f64]) {
    println!(
        "| {name} | {:.3} | {:.3} | {:.3} | {:.3} | {} |",
        percentile(xs, 50.0),
        percentile(xs, 99.0),
        percentile(xs, 0.0),
        percentile(xs, 100.0),
        xs.len()
    );
}

fn rss_of(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn children_of(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .map(|s| s.split_whitespace().count())
        .unwrap_or(0)
}

fn worker_cgroups(server: u32) -> usize {
    let mut n = 0;
    for root in [
        "/sys/fs/cgroup/memory/csv-agent",
        "/sys/fs/cgroup/csv-agent",
    ] {
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{server}-"))
                {
                    n += std::fs::read_dir(e.path())
                        .map(|it| it.flatten().filter(|x| x.path().is_dir()).count())
                        .unwrap_or(0);
                }
            }
        }
    }
    n
}

struct Server {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}

fn start(spares: usize) -> Server {
    let dir = tempfile::Builder::new()
        .prefix("csv-agent-bench-serve-")
        .tempdir()
        .unwrap();
    let socket = dir.path().join("sock").join("serve.sock");
    let datasets = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
    let mut child = Command::new(env!("CARGO_BIN_EXE_csv-agent"))
        .args(["serve", "--preload", "penguins", "--max-sessions", "256"])
        .arg("--spare-workers")
        .arg(spares.to_string())
        .arg("--socket")
        .arg(&socket)
        .arg("--datasets")
        .arg(&datasets)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("serve starts");
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .expect("serve is ready");
    assert!(line.starts_with("unix:"), "serve did not start");
    Server {
        child,
        socket,
        _dir: dir,
    }
}

fn client(s: &Server) -> ServeClient {
    ServeClient::new(Endpoint::Unix(s.socket.clone()))
}

async fn zygote_pid(c: &mut ServeClient) -> u32 {
    let h = c.health().await.unwrap();
    h["sandboxes"][0]["zygote_host_pid"].as_u64().unwrap_or(0) as u32
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let soak_secs: u64 = std::env::var("SERVE_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if quick { 10 } else { 30 });
    let n_first = if quick { 50 } else { 200 };
    let n_cells = if quick { 500 } else { 2000 };
    let spares = 2;

    let t = Instant::now();
    let server = start(spares);
    println!(
        "server up with penguins preloaded in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let pid = server.child.id();
    let mut c = client(&server);

    // 1. A new session's first cell, paced so the spares refill between
    // sessions (a warm dataset), and back to back (forks inline).
    println!("\n| measurement (ms) | p50 | p99 | min | max | n |\n|---|---|---|---|---|---|");
    for (label, pause) in [
        ("paced 50 ms", Duration::from_millis(50)),
        ("back to back", Duration::ZERO),
    ] {
        let (mut create, mut first, mut both) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..n_first {
            tokio::time::sleep(pause).await;
            let t0 = Instant::now();
            let id = c
                .create_session(&json!({"dataset": "penguins"}))
                .await
                .unwrap();
            let t1 = Instant::now();
            let r = c.run_cell(&id, "1+1", None).await.unwrap();
            let t2 = Instant::now();
            assert_eq!(r.result.as_deref(), Some("2"));
            create.push((t1 - t0).as_secs_f64() * 1e3);
            first.push((t2 - t1).as_secs_f64() * 1e3);
            both.push((t2 - t0).as_secs_f64() * 1e3);
            c.delete_session(&id).await.unwrap();
        }
        row(&format!("create session ({label})"), &create);
        row(&format!("first cell `1+1` ({label})"), &first);
        row(&format!("create + first cell ({label})"), &both);
    }

    // 2. `1+1` in one session.
    let id = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .unwrap();
    let mut lat = Vec::new();
    for _ in 0..n_cells {
        let t0 = Instant::now();
        c.run_cell(&id, "1+1", None).await.unwrap();
        lat.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    c.delete_session(&id).await.unwrap();
    row("`1+1` round trip, one session", &lat);
    let mut health = Vec::new();
    for _ in 0..200 {
        let t0 = Instant::now();
        c.health().await.unwrap();
        health.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    row("GET /v1/health (no jail)", &health);

    // 3. 64 concurrent sessions × 100 cells.
    let rss_before = rss_of(pid);
    let (sessions, cells) = (64usize, if quick { 20 } else { 100 });
    let socket = Arc::new(server.socket.clone());
    let t0 = Instant::now();
    let mut handles = Vec::new();
    for s in 0..sessions {
        let socket = socket.clone();
        handles.push(tokio::spawn(async move {
            let mut c = ServeClient::new(Endpoint::Unix((*socket).clone()));
            let id = c
                .create_session(&json!({"dataset": "penguins"}))
                .await
                .unwrap();
            let mut lat = Vec::with_capacity(cells);
            for i in 0..cells {
                let t = Instant::now();
                let r = c
                    .run_cell(
                        &id,
                        &format!("x = df['body_mass_g'].mean() + {s} + {i}"),
                        None,
                    )
                    .await
                    .unwrap();
                assert_eq!(r.status, csv_agent::sandbox::CellStatus::Ok);
                lat.push(t.elapsed().as_secs_f64() * 1e3);
            }
            (c, id, lat)
        }));
    }
    let mut all = Vec::new();
    let mut open = Vec::new();
    for h in handles {
        let (c, id, lat) = h.await.unwrap();
        all.extend(lat);
        open.push((c, id));
    }
    let wall = t0.elapsed().as_secs_f64();
    let rss_loaded = rss_of(pid);
    let h = c.health().await.unwrap();
    for (mut c, id) in open {
        c.delete_session(&id).await.unwrap();
    }
    println!();
    row(
        &format!("{sessions} sessions × {cells} cells, per cell"),
        &all,
    );
    println!(
        "\n{sessions} × {cells}: {} cells in {wall:.2} s = {:.0} cells/s (sessions created inside the window); \
         daemon RSS {:.1} MiB before, {:.1} MiB with {sessions} sessions live; \
         workers' own cgroup memory {:.1} MiB, zygote {:.1} MiB",
        all.len(),
        all.len() as f64 / wall,
        rss_before as f64 / 1048576.0,
        rss_loaded as f64 / 1048576.0,
        h["memory"]["workers_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
        h["memory"]["zygotes_bytes"].as_u64().unwrap_or(0) as f64 / 1048576.0,
    );

    // 4. Soak.
    println!("\nsoak: {soak_secs} s, 16 callers × (create, 10 cells, delete)");
    let deadline = Instant::now() + Duration::from_secs(soak_secs);
    let mut callers = Vec::new();
    for _ in 0..16 {
        let socket = socket.clone();
        callers.push(tokio::spawn(async move {
            let mut c = ServeClient::new(Endpoint::Unix((*socket).clone()));
            let mut n = 0u64;
            while Instant::now() < deadline {
                let id = c
                    .create_session(&json!({"dataset": "penguins"}))
                    .await
                    .unwrap();
                for i in 0..10 {
                    c.run_cell(&id, &format!("v{i} = df.describe().shape"), None)
                        .await
                        .unwrap();
                }
                c.delete_session(&id).await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut samples = Vec::new();
    let start = Instant::now();
    let period = Duration::from_secs((soak_secs / 10).max(1));
    while Instant::now() < deadline {
        samples.push((start.elapsed().as_secs(), rss_of(pid)));
        tokio::time::sleep(period).await;
    }
    let mut sessions_done = 0;
    for c in callers {
        sessions_done += c.await.unwrap();
    }
    samples.push((start.elapsed().as_secs(), rss_of(pid)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let h = c.health().await.unwrap();
    let zygote = zygote_pid(&mut c).await;
    println!(
        "soak: {sessions_done} sessions ({} cells) done; daemon RSS (s → MiB): {}",
        sessions_done * 10,
        samples
            .iter()
            .map(|(s, r)| format!("{s}→{:.1}", *r as f64 / 1048576.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "after the soak: sessions {}, zygote children {} (spares: {spares}), cgroups of the sandbox {} (the zygote's + one per live worker)",
        h["sessions"],
        children_of(zygote),
        worker_cgroups(pid)
    );
    drop(server);
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!(
        "after SIGTERM: zygote alive {}, cgroups of the server {}",
        Path::new(&format!("/proc/{zygote}")).exists(),
        worker_cgroups(pid)
    );
}
