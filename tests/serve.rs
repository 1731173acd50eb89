//! `csv-agent serve` through the real binary: a server on a unix socket in a
//! temp dir (and on 127.0.0.1:0 with a token), driven by the library's
//! client. The API, isolation between sessions, bad input, faults (a
//! worker, a zygote and the server itself killed), and `sandbox exec
//! --serve` against a local run.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{strip_keys, TIMING_KEYS};
use csv_agent::sandbox::CellStatus;
use csv_agent::serve::{ClientError, Endpoint, ServeClient};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789abcdef";

struct Server {
    child: Option<Child>,
    socket: PathBuf,
    tcp: Option<String>,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Start `csv-agent serve` on a socket in a fresh 0700 directory, with
    /// the bundled datasets; wait until it printed its addresses.
    fn start(extra: &[&str]) -> Server {
        let dir = tempfile::Builder::new()
            .prefix("csv-agent-serve-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let socket = dir.path().join("sock").join("serve.sock");
        Server::start_at(socket, dir, extra)
    }

    fn start_at(socket: PathBuf, dir: tempfile::TempDir, extra: &[&str]) -> Server {
        let _ = common::image();
        let datasets = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
        let mut child = Command::new(common::BIN)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--datasets")
            .arg(&datasets)
            .args(extra)
            .env("CSV_AGENT_SERVE_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let first = lines
            .next()
            .expect("serve prints its socket")
            .expect("line");
        assert_eq!(first, format!("unix:{}", socket.display()));
        let tcp = if extra.contains(&"--listen") {
            Some(lines.next().expect("and its TCP address").expect("line"))
        } else {
            None
        };
        Server {
            child: Some(child),
            socket,
            tcp,
            _dir: dir,
        }
    }

    fn client(&self) -> ServeClient {
        ServeClient::new(Endpoint::Unix(self.socket.clone()))
    }

    fn tcp_client(&self, token: Option<&str>) -> ServeClient {
        let authority = self
            .tcp
            .as_ref()
            .expect("a TCP listener")
            .trim_start_matches("http://")
            .to_string();
        ServeClient::new(Endpoint::Tcp {
            authority,
            token: token.map(str::to_string),
        })
    }

    fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    fn wait(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> u16 {
    match r {
        Err(e) => e
            .status()
            .unwrap_or_else(|| panic!("not an HTTP refusal: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

async fn cell(c: &mut ServeClient, id: &str, code: &str) -> csv_agent::sandbox::CellResult {
    c.run_cell(id, code, None).await.expect("the cell runs")
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn wait_gone(pid: u32, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Send raw bytes on a fresh unix connection and read the reply (until the
/// server closes or `wait` passes).
fn raw(socket: &Path, bytes: &[u8], wait: Duration) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(wait)).unwrap();
    s.write_all(bytes).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Send `head`, pause, then send `body` on `stream`, then read the reply:
/// whether the whole body could be written, and the reply.
fn send_in_two<S: Read + Write>(
    mut stream: S,
    head: &[u8],
    body: &[u8],
    pause: Duration,
) -> (bool, String) {
    let mut sent = stream.write_all(head).is_ok();
    std::thread::sleep(pause);
    sent = sent && stream.write_all(body).is_ok();
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    (sent, String::from_utf8_lossy(&out).into_owned())
}

/// A unix connection to `socket` whose reads give up after 10 s.
fn unix_stream(socket: &Path) -> std::os::unix::net::UnixStream {
    let s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn penguins_rl_row(dir: &Path) -> PathBuf {
    let path = dir.join("rl.jsonl");
    let row = json!({"question_id": "q-count", "answer": "344", "answer_hash": csv_agent::answers::answer_hash(&json!(344)),
                     "ground_truth_hashes": [], "hook_hashes": [csv_agent::answers::answer_hash(&json!(8))],
                     "dataset": "datasets/penguins/data.csv"});
    std::fs::write(&path, format!("{row}\n")).unwrap();
    path
}

// The API end to end: health, sessions whose state lives across cells,
// per-cell timeouts, deletion, scoring, the Python client, and isolation
// between sessions (variables, files, processes, datasets, owners).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_cells_in_isolation_and_score_answers() {
    let qdir = tempfile::tempdir().unwrap();
    let rl = penguins_rl_row(qdir.path());
    let server = Server::start(&[
        "--preload",
        "penguins",
        "--listen",
        "127.0.0.1:0",
        "--questions",
        rl.to_str().unwrap(),
    ]);
    let mut c = server.client();
    let health = c.health().await.expect("health");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["sandboxes_alive"], 1);
    assert_eq!(health["questions"], 1);
    assert!(health["memory"]["daemon_rss_bytes"].as_u64().unwrap() > 0);

    // State persists across a session's cells.
    let a = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("session");
    assert_eq!(a.len(), 32, "128-bit ids");
    let r = cell(
        &mut c,
        &a,
        "secret = 41\nopen('mine.txt', 'w').write('a')\nimport os; os.getpid()",
    )
    .await;
    assert_eq!(r.status, CellStatus::Ok, "{r:?}");
    let a_pid: i64 = r.result.as_deref().unwrap().parse().unwrap();
    let r = cell(&mut c, &a, "secret + 1").await;
    assert_eq!(r.result.as_deref(), Some("42"));
    let r = cell(
        &mut c,
        &a,
        "submit(len(df)); hook(df.shape[1], 'df.shape[1]')",
    )
    .await;
    assert_eq!(r.submitted.as_ref().unwrap()["value"], 344);

    // Another session: none of it is visible.
    let b = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("session");
    let r = cell(&mut c, &b, "secret").await;
    assert_eq!(r.status, CellStatus::Error);
    assert_eq!(r.error.as_ref().unwrap()["type"], "NameError");
    let r = cell(&mut c, &b, "import os; os.path.exists('mine.txt')").await;
    assert_eq!(
        r.result.as_deref(),
        Some("False"),
        "another session's files"
    );
    let r = cell(
        &mut c,
        &b,
        &format!("import os\ntry:\n    os.kill({a_pid}, 0); print('reached')\nexcept OSError as e:\n    print(type(e).__name__)"),
    )
    .await;
    assert!(
        !r.stdout.contains("reached"),
        "another session's process: {r:?}"
    );
    // Nor another dataset: only penguins is in this jail.
    let other = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/grunfeld/data.csv");
    let r = cell(
        &mut c,
        &b,
        &format!(
            "import os; os.path.exists({:?})",
            other.display().to_string()
        ),
    )
    .await;
    assert_eq!(r.result.as_deref(), Some("False"));

    // A session is bound to its creator: the TCP principal does not see it.
    let mut t = server.tcp_client(Some(TOKEN));
    assert_eq!(status_of(t.run_cell(&a, "1", None).await), 404);
    assert_eq!(status_of(t.delete_session(&a).await), 404);
    let tcp_session = t
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("tcp session");
    assert_eq!(status_of(c.run_cell(&tcp_session, "1", None).await), 404);
    t.delete_session(&tcp_session).await.unwrap();

    // A cell past its timeout kills the worker; the next runs in a fresh one.
    let r = c
        .run_cell(&a, "import time; time.sleep(30)", Some(1.0))
        .await
        .unwrap();
    assert_eq!(r.status, CellStatus::Timeout);
    assert!(r.elapsed_ms < 10_000.0);
    let r = cell(&mut c, &a, "secret").await;
    assert_eq!(r.error.as_ref().unwrap()["type"], "NameError");

    // Deleted: gone for good.
    c.delete_session(&a).await.unwrap();
    assert_eq!(status_of(c.run_cell(&a, "1", None).await), 404);
    assert_eq!(status_of(c.delete_session(&a).await), 404);

    // Scoring: by question id (from --questions) and inline.
    let s = c
        .score(&json!({"question_id": "q-count", "submitted": 344.0000001,
                       "hooks": [{"value_hash": csv_agent::answers::answer_hash(&json!(8))}]}))
        .await
        .unwrap();
    assert_eq!(s["match"], true);
    assert_eq!(s["reward"], 1.25);
    let s = c
        .score(&json!({"question_id": "q-count", "submitted": 343}))
        .await
        .unwrap();
    assert_eq!(
        (s["match"].clone(), s["reward"].clone()),
        (json!(false), json!(0.0))
    );
    let s = c
        .score(&json!({"expected": {"answer": {"mean": 4.2}}, "submitted": {"mean": 4.2}}))
        .await
        .unwrap();
    assert_eq!(s["reward"], 1.0);
    assert_eq!(
        status_of(c.score(&json!({"question_id": "nope"})).await),
        404
    );
    assert_eq!(status_of(c.score(&json!({"submitted": 1})).await), 400);

    // The Python client (stdlib only) and its GRPO reward, against this server.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/python/csv_agent_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg("--self-test")
        .arg(&server.socket)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets/penguins/data.csv"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python client self-test: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // `sandbox exec --serve` prints what a local `sandbox exec` prints.
    let penguins = common::penguins();
    let args = |serve: Option<&str>| {
        let mut v = vec![
            "sandbox".to_string(),
            "exec".to_string(),
            "--csv".to_string(),
            penguins.display().to_string(),
            "--json".to_string(),
        ];
        for code in [
            "x = df.groupby('species').size()",
            "print(x.to_dict()); submit(int(x.max()))",
            "1/0",
        ] {
            v.push("--code".to_string());
            v.push(code.to_string());
        }
        if let Some(s) = serve {
            v.push("--serve".to_string());
            v.push(s.to_string());
        }
        v
    };
    let strip = |out: &std::process::Output| -> Vec<Value> {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("elapsed_ms");
                v
            })
            .collect()
    };
    let socket = server.socket.display().to_string();
    let remote_args = args(Some(&socket));
    let remote_args: Vec<&str> = remote_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let remote = common::csv_agent(&remote_args);
    let remote_time = started.elapsed();
    let local_args = args(None);
    let local_args: Vec<&str> = local_args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let local = common::csv_agent(&local_args);
    let local_time = started.elapsed();
    eprintln!("sandbox exec: local {local_time:?}, --serve {remote_time:?}");
    assert_eq!(
        local.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    assert_eq!(
        remote.status.code(),
        local.status.code(),
        "{}",
        String::from_utf8_lossy(&remote.stderr)
    );
    assert_eq!(strip(&remote), strip(&local));
    assert_eq!(strip(&local).len(), 3);
}

// Bad input of every kind is refused with its status, and the server keeps
// serving others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_others_are_still_served() {
    let server = Server::start(&[
        "--listen",
        "127.0.0.1:0",
        "--max-body",
        "64K",
        "--max-sessions",
        "2",
        "--max-cell-timeout",
        "20s",
        "--cell-timeout",
        "10s",
        "--header-timeout",
        "1s",
        "--body-timeout",
        "1s",
        "--idle-timeout",
        "5s",
    ]);
    let mut c = server.client();
    let s = |r: &str| r.lines().next().unwrap_or("").to_string();
    // Malformed JSON, unknown fields, unknown routes, wrong methods.
    let reply = raw(
        &server.socket,
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 8\r\nConnection: close\r\n\r\n{\"datase",
        Duration::from_secs(5),
    );
    assert!(s(&reply).contains("400"), "{reply}");
    assert!(reply.contains("malformed JSON"), "{reply}");
    assert_eq!(
        status_of(
            c.request(
                http::Method::POST,
                "/v1/sessions",
                Some(&json!({"dataset": "penguins", "x": 1}))
            )
            .await
        ),
        400
    );
    assert_eq!(
        status_of(
            c.request(http::Method::POST, "/v1/sessions", Some(&json!({})))
                .await
        ),
        400
    );
    assert_eq!(
        status_of(
            c.request(
                http::Method::POST,
                "/v1/sessions",
                Some(&json!({"dataset": "no-such"}))
            )
            .await
        ),
        404
    );
    assert_eq!(
        status_of(
            c.request(
                http::Method::POST,
                "/v1/sessions",
                Some(&json!({"csv": "relative.csv"}))
            )
            .await
        ),
        400
    );
    assert_eq!(
        status_of(c.request(http::Method::GET, "/v2/health", None).await),
        404
    );
    assert_eq!(
        status_of(c.request(http::Method::GET, "/", None).await),
        404
    );
    assert_eq!(
        status_of(c.request(http::Method::PUT, "/v1/health", None).await),
        405
    );
    assert_eq!(
        status_of(
            c.run_cell("0123456789abcdef0123456789abcdef", "1", None)
                .await
        ),
        404
    );
    // A cell's body is read before its session is looked up: a client that
    // sends its body late still gets the answer, not a closed connection.
    let head = format!(
        "POST /v1/sessions/{}/cells HTTP/1.1\r\nHost: x\r\nContent-Length: 12\r\nConnection: close\r\n\r\n",
        "0".repeat(32)
    );
    let (sent, reply) = send_in_two(
        unix_stream(&server.socket),
        head.as_bytes(),
        br#"{"code":"1"}"#,
        Duration::from_millis(300),
    );
    assert!(sent, "the server closed before the body arrived: {reply}");
    assert!(s(&reply).contains("404"), "{reply}");
    // Oversize body: declared, and streamed without a length.
    let big = "x".repeat(100 * 1024);
    assert_eq!(
        status_of(c.run_cell("whatever", &big, None).await),
        413,
        "the body is bounded before the session is looked up"
    );
    let id = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("session");
    assert_eq!(status_of(c.run_cell(&id, &big, None).await), 413);
    // Past the socket's buffer too: the refusal arrives while the client is
    // still writing, and the client reads it.
    let huge = "x".repeat(8 << 20);
    assert_eq!(status_of(c.run_cell(&id, &huge, None).await), 413);
    // The same by hand, on both transports: the refused client can write
    // its whole body (the server drains it) and then reads why.
    let head = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            huge.len()
        )
    };
    let (sent, reply) = send_in_two(
        unix_stream(&server.socket),
        head(&format!("/v1/sessions/{id}/cells")).as_bytes(),
        huge.as_bytes(),
        Duration::ZERO,
    );
    assert!(sent && s(&reply).contains("413"), "sent {sent}: {reply}");
    let tcp =
        std::net::TcpStream::connect(server.tcp.as_deref().unwrap().trim_start_matches("http://"))
            .unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (sent, reply) = send_in_two(
        tcp,
        head("/v1/sessions").as_bytes(),
        huge.as_bytes(),
        Duration::ZERO,
    );
    assert!(sent && s(&reply).contains("401"), "sent {sent}: {reply}");
    // The server may close a connection whose body it did not read.
    let mut c = server.client();
    let mut chunked = format!(
        "POST /v1/sessions/{id}/cells HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 8192, "y".repeat(8192)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let reply = raw(&server.socket, &chunked, Duration::from_secs(5));
    assert!(s(&reply).contains("413"), "{reply}");
    // Bounds: cell time, sessions.
    assert_eq!(status_of(c.run_cell(&id, "1", Some(3600.0)).await), 400);
    assert_eq!(status_of(c.run_cell(&id, "1", Some(-1.0)).await), 400);
    let id2 = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("second session");
    assert_eq!(
        status_of(c.create_session(&json!({"dataset": "penguins"})).await),
        429
    );
    c.delete_session(&id2).await.unwrap();
    // A slow client does not hold up the others.
    let slow_socket = server.socket.clone();
    let slow = std::thread::spawn(move || {
        raw(
            &slow_socket,
            b"POST /v1/score HTTP/1.1\r\nHost: x\r\n",
            Duration::from_secs(10),
        )
    });
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    assert_eq!(c.health().await.unwrap()["status"], "ok");
    assert!(
        t.elapsed() < Duration::from_millis(900),
        "served while a slow client waits"
    );
    let _ = slow.join();
    // A slow client: headers never finished, body never finished.
    let started = Instant::now();
    let reply = raw(
        &server.socket,
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(10),
    );
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a slow header is cut"
    );
    assert!(!reply.contains("201"), "{reply}");
    let reply = raw(
        &server.socket,
        b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"ques",
        Duration::from_secs(10),
    );
    assert!(s(&reply).contains("408"), "{reply}");
    // TCP: no token, a wrong token, a token without the scheme.
    assert_eq!(status_of(server.tcp_client(None).health().await), 401);
    assert_eq!(
        status_of(
            server
                .tcp_client(Some("wrong-token-0123456789"))
                .health()
                .await
        ),
        401
    );
    assert!(server.tcp_client(Some(TOKEN)).health().await.is_ok());
    // Another uid on the socket. The 0700 directory keeps it out first;
    // opened up on purpose, the peer-credential check still refuses it.
    let dir = server.socket.parent().unwrap();
    let top = dir.parent().unwrap();
    std::fs::set_permissions(top, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let probe = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                 s.sendall(b'GET /v1/health HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n\
                 print(s.recv(4096).split(b'\\r\\n')[0].decode())";
    // The system interpreter: a root-only pyenv shim would not run as 65534.
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3");
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            python,
            "-c",
            probe,
        ])
        .arg(&server.socket)
        .output()
        .expect("setpriv runs");
    std::fs::set_permissions(&server.socket, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("403"),
        "another uid: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Still serving, the session intact.
    let r = c.run_cell(&id, "6 * 7", None).await.unwrap();
    assert_eq!(r.result.as_deref(), Some("42"));
    // Idle sessions expire.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(status_of(c.run_cell(&id, "1", None).await), 404);
    assert_eq!(c.health().await.unwrap()["sessions"], 0);
}

fn cgroups_of(pid: i32) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in [
        "/sys/fs/cgroup/memory/csv-agent",
        "/sys/fs/cgroup/csv-agent",
        "/sys/fs/cgroup/pids/csv-agent",
    ] {
        if let Ok(entries) = std::fs::read_dir(root) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(&format!("{pid}-"))
                {
                    out.push(e.path());
                }
            }
        }
    }
    out
}

// A session's worker killed, a zygote killed, the server drained by SIGTERM
// and killed by SIGKILL: each is survived or cleaned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_workers_zygotes_and_servers_leave_nothing_behind() {
    let mut server = Server::start(&["--preload", "penguins"]);
    let mut c = server.client();
    let a = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .unwrap();
    let b = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .unwrap();
    cell(&mut c, &a, "x = 1").await;
    cell(&mut c, &b, "y = 2").await;

    // Kill a's worker from outside: a is lost (503, then 404); b goes on.
    let info = c
        .request(http::Method::GET, &format!("/v1/sessions/{a}"), None)
        .await
        .unwrap();
    let worker = info["worker_host_pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on a pid the server reported.
    unsafe {
        libc::kill(worker, libc::SIGKILL);
    }
    assert!(wait_gone(worker as u32, Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lost = c.run_cell(&a, "x", None).await;
    assert_eq!(status_of(lost), 503);
    assert_eq!(status_of(c.run_cell(&a, "x", None).await), 404);
    assert_eq!(cell(&mut c, &b, "y").await.result.as_deref(), Some("2"));

    // Kill the zygote: its sessions are lost; the next session restarts it.
    let health = c.health().await.unwrap();
    let zygote = health["sandboxes"][0]["zygote_host_pid"].as_u64().unwrap() as i32;
    // SAFETY: kill(2) on a pid the server reported.
    unsafe {
        libc::kill(zygote, libc::SIGKILL);
    }
    assert!(wait_gone(zygote as u32, Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status_of(c.run_cell(&b, "y", None).await), 503);
    let fresh = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("restarted");
    assert_eq!(
        cell(&mut c, &fresh, "len(df)").await.result.as_deref(),
        Some("344")
    );
    let health = c.health().await.unwrap();
    assert_eq!(health["sandboxes"][0]["starts"], 2);
    let zygote = health["sandboxes"][0]["zygote_host_pid"].as_u64().unwrap() as u32;

    // SIGTERM with a cell in flight: the cell finishes, then everything stops.
    let socket = server.socket.clone();
    let in_flight = tokio::spawn(async move {
        let mut c = ServeClient::new(Endpoint::Unix(socket));
        c.run_cell(&fresh, "import time; time.sleep(2); 'done'", None)
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = server.pid();
    server.signal(libc::SIGTERM);
    let r = in_flight
        .await
        .unwrap()
        .expect("the cell in flight finished");
    assert_eq!(r.result.as_deref(), Some("'done'"));
    let status = server
        .wait(Duration::from_secs(20))
        .expect("the server exits");
    assert!(status.success(), "{status:?}");
    assert!(!server.socket.exists(), "the socket is removed");
    assert!(
        wait_gone(zygote, Duration::from_secs(5)),
        "the zygote stops"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        cgroups_of(pid).is_empty(),
        "cgroups removed: {:?}",
        cgroups_of(pid)
    );

    // SIGKILL: the jail dies with its supervisor; the next start clears
    // the stale socket and the cgroups.
    let dir = tempfile::Builder::new()
        .prefix("csv-agent-serve-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.path().join("serve.sock");
    let mut killed = Server::start_at(socket.clone(), dir, &["--preload", "penguins"]);
    let mut c = killed.client();
    let id = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .unwrap();
    cell(&mut c, &id, "1").await;
    let health = c.health().await.unwrap();
    let zygote = health["sandboxes"][0]["zygote_host_pid"].as_u64().unwrap() as u32;
    let killed_pid = killed.pid();
    killed.signal(libc::SIGKILL);
    killed.wait(Duration::from_secs(5)).expect("killed");
    assert!(
        wait_gone(zygote, Duration::from_secs(10)),
        "the jail died with the server"
    );
    assert!(socket.exists(), "SIGKILL leaves the socket");
    let dir2 = tempfile::tempdir().unwrap();
    let next = Server::start_at(socket.clone(), dir2, &["--preload", "penguins"]);
    let mut c = next.client();
    assert_eq!(c.health().await.unwrap()["status"], "ok");
    assert!(
        cgroups_of(killed_pid).is_empty(),
        "stale cgroups cleaned: {:?}",
        cgroups_of(killed_pid)
    );
}

// scripts/validate_formats.py's rl check, without the training libraries:
// the rl export of a small run, each verified row rolled out in the jail
// (through csv-agent serve and the Python client) with its gold program
// (must score >= 1) and with a wrong answer (must not).
#[test]
fn validate_formats_rolls_out_rl_rows_in_the_jail() {
    let _ = common::image();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/validate_formats.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([
            "--rl-rollouts-only",
            "--max-questions",
            "3",
            "--bin",
            common::BIN,
        ])
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("rolled out in the jail"), "{stdout}");
}

/// Episodes without what differs from run to run (times, timestamps).
fn episodes_without_timing(path: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_to_string(path)
        .expect("episodes")
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            strip_keys(&mut v, &TIMING_KEYS);
            v
        })
        .collect();
    out.sort_by_key(|e| e["episode_id"].as_str().unwrap_or("").to_string());
    out
}

// `run --serve` writes the episodes a local run writes, in a fraction of
// the time once the server is warm.
#[test]
fn run_with_and_without_serve_gives_the_same_episodes() {
    let server = Server::start(&["--preload", "penguins"]);
    let out = tempfile::tempdir().unwrap();
    let datasets = Path::new(env!("CARGO_MANIFEST_DIR")).join("datasets");
    let run = |dir: &str, serve: bool| {
        let mut args = vec![
            "run".to_string(),
            "--datasets".to_string(),
            datasets.display().to_string(),
            "--only".to_string(),
            "penguins".to_string(),
            "--max-questions".to_string(),
            "4".to_string(),
            "--out".to_string(),
            out.path().join(dir).display().to_string(),
        ];
        if serve {
            args.push("--serve".to_string());
            args.push(server.socket.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let started = Instant::now();
        let o = common::csv_agent(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        started.elapsed()
    };
    let local = run("local", false);
    let remote = run("serve", true);
    eprintln!(
        "run --max-questions 4 on penguins: local {:.2} s, --serve (warm) {:.2} s",
        local.as_secs_f64(),
        remote.as_secs_f64()
    );
    let a = episodes_without_timing(&out.path().join("local/episodes.jsonl"));
    let b = episodes_without_timing(&out.path().join("serve/episodes.jsonl"));
    // 4 template and 4 composed questions (the default sources); the
    // composed ones are screened through the server's sessions too.
    assert_eq!(a.len(), 8);
    assert_eq!(a, b, "the same episodes with and without --serve");
    // The server kept no session.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let sessions =
        rt.block_on(async { server.client().health().await.unwrap()["sessions"].clone() });
    assert_eq!(sessions, 0);
}

// The memory budget: a sandbox with a live session is never evicted (the
// new one is refused with 503); once idle, the least recently used one
// makes room; and a sandbox with no session is stopped after the idle
// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_evicts_idle_sandboxes_least_recently_used_first() {
    let server = Server::start(&["--memory-budget", "1", "--idle-timeout", "4s"]);
    let mut c = server.client();
    let datasets = |h: &Value| -> Vec<String> {
        h["sandboxes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["dataset"].as_str().unwrap().to_string())
            .collect()
    };
    let a = c
        .create_session(&json!({"dataset": "penguins"}))
        .await
        .expect("first sandbox");
    assert_eq!(
        status_of(c.create_session(&json!({"dataset": "grunfeld"})).await),
        503,
        "no room while penguins has a session"
    );
    c.delete_session(&a).await.unwrap();
    let b = c
        .create_session(&json!({"dataset": "grunfeld"}))
        .await
        .expect("room made");
    assert_eq!(
        datasets(&c.health().await.unwrap()),
        vec!["grunfeld".to_string()]
    );
    assert_eq!(
        cell(&mut c, &b, "len(df) > 0").await.result.as_deref(),
        Some("True")
    );
    c.delete_session(&b).await.unwrap();
    // Idle: stopped.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = c.health().await.unwrap();
        if datasets(&h).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the idle sandbox was not stopped: {h}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
