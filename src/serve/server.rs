//! The HTTP side of `csv-agent serve`: listeners (a unix socket; loopback
//! TCP with a token), routing under `/v1`, JSON bodies and errors, bounds
//! (body size and read time, header read time, connections, sessions, cell
//! time), housekeeping (idle sessions and sandboxes) and the drain on
//! SIGTERM.
//!
//! Every error a client can cause is a JSON `{"error": …, "status": …}` with
//! a 4xx status; what the server or the jail failed at is a 5xx. No request
//! can panic the server: handlers return `Result<_, ApiError>`.

use std::convert::Infallible;
use std::future::poll_fn;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{watch, Semaphore};

use super::auth::{self, Peer, Principal, Refusal};
use super::linger::{self, Linger};
use super::pool::{Pool, PoolError, PoolKey, PoolSettings};
use super::score::{Questions, ScoreRequest};
use super::sessions::{CellError, CreateError, NewSession, Sessions};
use super::ServeError;
use crate::datasets::Registry;

/// Everything `serve` needs, resolved and checked by the CLI.
pub struct ServeSettings {
    pub socket: PathBuf,
    /// Loopback TCP address (port 0: any free port), served only with a token.
    pub listen: Option<SocketAddr>,
    pub token: Option<String>,
    pub datasets: PathBuf,
    pub pool: PoolSettings,
    pub max_sessions: usize,
    /// Sessions idle this long are closed (sandboxes: see [`PoolSettings`]).
    pub idle_timeout: Duration,
    pub preload: Vec<String>,
    pub questions: Questions,
    pub default_cell_timeout: Duration,
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub drain_timeout: Duration,
    pub max_connections: usize,
}

struct State {
    owner: u32,
    token: Option<String>,
    /// None without a registry directory: sessions then name CSV paths.
    registry: Option<Registry>,
    pool: Pool,
    sessions: Sessions,
    questions: Questions,
    default_cell_timeout: Duration,
    max_body_bytes: usize,
    body_timeout: Duration,
    started: Instant,
    draining: AtomicBool,
}

/// A request's failure, as the client sees it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    /// The error as JSON, closing the connection: the request's body may
    /// not have been read (an unknown session, a body too large), and the
    /// client must not send its next request after those bytes.
    fn response(self) -> Response<Full<Bytes>> {
        let mut r = json_response(
            self.status,
            &json!({"error": self.message, "status": self.status.as_u16()}),
        );
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        r
    }
}

fn json_response(status: StatusCode, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// The socket path when none is given: `$XDG_RUNTIME_DIR/csv-agent/serve.sock`,
/// else `/tmp/csv-agent-<uid>/serve.sock` (its directory is checked to be
/// ours and 0700 before use).
pub fn default_socket() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("csv-agent").join("serve.sock"),
        None => PathBuf::from(format!(
            "/tmp/csv-agent-{}",
            nix::unistd::geteuid().as_raw()
        ))
        .join("serve.sock"),
    }
}

/// Run the service until SIGTERM or SIGINT, then drain. `ready` is called
/// once with the addresses served (`unix:PATH`, `http://ADDR`), after the
/// preloaded sandboxes are warm.
pub async fn serve(
    settings: ServeSettings,
    ready: impl FnOnce(&[String]),
) -> Result<(), ServeError> {
    let owner = nix::unistd::geteuid().as_raw();
    // A server killed by SIGKILL left its cgroups; its jails died with it
    // (their monitors watch our end of a socket). Clean before starting.
    let _ = tokio::task::spawn_blocking(crate::sandbox::cgroup::remove_stale_groups).await;

    let state = Arc::new(State {
        owner,
        token: settings.token.clone(),
        registry: Registry::open(&settings.datasets).ok(),
        pool: Pool::new(settings.pool.clone()),
        sessions: Sessions::new(settings.max_sessions, settings.idle_timeout),
        questions: settings.questions,
        default_cell_timeout: settings.default_cell_timeout,
        max_body_bytes: settings.max_body_bytes,
        body_timeout: settings.body_timeout,
        started: Instant::now(),
        draining: AtomicBool::new(false),
    });

    // Listeners: the socket's place is checked before any jail starts.
    let dir = settings
        .socket
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    auth::prepare_socket_dir(dir, owner)?;
    auth::clear_stale_socket(&settings.socket)?;
    for slug in &settings.preload {
        preload(&state, slug).await?;
    }
    let unix =
        tokio::net::UnixListener::bind(&settings.socket).map_err(|source| ServeError::Io {
            what: "binding the socket",
            path: settings.socket.clone(),
            source,
        })?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&settings.socket, std::fs::Permissions::from_mode(0o600))
            .map_err(|source| ServeError::Io {
                what: "setting the socket's mode",
                path: settings.socket.clone(),
                source,
            })?;
    }
    let mut addresses = vec![format!("unix:{}", settings.socket.display())];
    let tcp = match settings.listen {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| ServeError::Listen {
                    addr: addr.to_string(),
                    reason: e.to_string(),
                })?;
            let bound = l.local_addr().map_err(|e| ServeError::Listen {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
            addresses.push(format!("http://{bound}"));
            Some(l)
        }
        None => None,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let conns = Arc::new(Semaphore::new(settings.max_connections));
    let limits = ConnLimits {
        header_timeout: settings.header_timeout,
        linger: Linger::default(),
    };
    let mut loops = Vec::new();
    {
        let (state, conns, stop) = (state.clone(), conns.clone(), stop_rx.clone());
        loops.push(tokio::spawn(async move {
            let mut stop_accept = stop.clone();
            loop {
                tokio::select! {
                    r = unix.accept() => match r {
                        Ok((stream, _)) => {
                            let uid = stream.peer_cred().ok().map(|c| c.uid());
                            admit(stream, Peer::Unix { uid }, &state, &conns, &stop, limits);
                        }
                        Err(e) => accept_error(e).await,
                    },
                    _ = stop_accept.changed() => break,
                }
            }
        }));
    }
    if let Some(tcp) = tcp {
        let (state, conns, stop) = (state.clone(), conns.clone(), stop_rx.clone());
        loops.push(tokio::spawn(async move {
            let mut stop_accept = stop.clone();
            loop {
                tokio::select! {
                    r = tcp.accept() => match r {
                        // Bound to loopback only; a non-loopback peer cannot
                        // arrive, but is refused at the socket anyway.
                        Ok((stream, addr)) if addr.ip().is_loopback() => {
                            let _ = stream.set_nodelay(true);
                            admit(stream, Peer::Tcp, &state, &conns, &stop, limits);
                        }
                        Ok(_) => {}
                        Err(e) => accept_error(e).await,
                    },
                    _ = stop_accept.changed() => break,
                }
            }
        }));
    }

    // Housekeeping: idle sessions, idle sandboxes.
    let house = {
        let state = state.clone();
        let period =
            (settings.idle_timeout / 4).clamp(Duration::from_millis(200), Duration::from_secs(5));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                let n = state.sessions.expire(&state.pool);
                if n > 0 {
                    eprintln!("csv-agent serve: {n} idle session(s) expired");
                }
                state.pool.evict_idle().await;
            }
        })
    };

    ready(&addresses);
    let signal = terminated().await;
    eprintln!(
        "csv-agent serve: {signal}: draining (no new connections; requests in flight finish)"
    );
    state.draining.store(true, Ordering::Release);
    let _ = stop_tx.send(true);
    for l in loops {
        let _ = l.await;
    }
    let _ = std::fs::remove_file(&settings.socket);
    let deadline = Instant::now() + settings.drain_timeout;
    while conns.available_permits() < settings.max_connections && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    house.abort();
    state.sessions.close_all(&state.pool);
    state.pool.shutdown().await;
    eprintln!("csv-agent serve: stopped");
    Ok(())
}

#[derive(Clone, Copy)]
struct ConnLimits {
    header_timeout: Duration,
    linger: Linger,
}

async fn accept_error(e: std::io::Error) {
    // EMFILE and friends: back off instead of spinning.
    eprintln!("csv-agent serve: accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Serve one connection, if the connection bound allows it (else it is closed).
fn admit<T>(
    io: T,
    peer: Peer,
    state: &Arc<State>,
    conns: &Arc<Semaphore>,
    stop: &watch::Receiver<bool>,
    limits: ConnLimits,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(permit) = conns.clone().try_acquire_owned() else {
        return;
    };
    let state = state.clone();
    let mut stop = stop.clone();
    tokio::spawn(async move {
        let _permit = permit;
        let svc = service_fn(move |req| {
            let (state, peer) = (state.clone(), peer.clone());
            Box::pin(async move { Ok::<_, Infallible>(handle(&state, &peer, req).await) })
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let mut conn = builder.serve_connection(TokioIo::new(io), svc);
        let ended = tokio::select! {
            r = poll_fn(|cx| conn.poll_without_shutdown(cx)) => r,
            _ = stop.changed() => {
                std::pin::Pin::new(&mut conn).graceful_shutdown();
                poll_fn(|cx| conn.poll_without_shutdown(cx)).await
            }
        };
        // Ended by HTTP (a close the server or the client asked for, or an
        // answer given before the body was read): close lingering. A
        // connection cut for a protocol error or a slow header is dropped.
        if ended.is_ok() {
            let mut io = conn.into_parts().io.into_inner();
            linger::close(&mut io, limits.linger).await;
        }
    });
}

async fn handle(state: &State, peer: &Peer, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let authorization = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    let who = match auth::authenticate(
        peer,
        state.owner,
        state.token.as_deref(),
        authorization.as_deref(),
    ) {
        Ok(p) => p,
        Err(Refusal::Forbidden) => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "this socket serves only the uid that started the server",
            )
            .response()
        }
        Err(Refusal::Unauthenticated) => {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer $CSV_AGENT_SERVE_TOKEN)",
            )
            .response();
            r.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    };
    match route(state, &who, req).await {
        Ok(r) => r,
        Err(e) => e.response(),
    }
}

async fn route(
    state: &State,
    who: &Principal,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "health"]) => Ok(health(state)),
        (&Method::POST, ["v1", "sessions"]) => create_session(state, who, req).await,
        (&Method::GET, ["v1", "sessions"]) => Ok(list_sessions(state, who)),
        (&Method::GET, ["v1", "sessions", id]) => {
            let s = state
                .sessions
                .get(id, who)
                .ok_or_else(|| unknown_session(id))?;
            Ok(json_response(StatusCode::OK, &to_value(&s.info())?))
        }
        (&Method::DELETE, ["v1", "sessions", id]) => {
            if state.sessions.delete(&state.pool, id, who) {
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"id": id, "deleted": true}),
                ))
            } else {
                Err(unknown_session(id))
            }
        }
        (&Method::POST, ["v1", "sessions", id, "cells"]) => run_cell(state, who, id, req).await,
        (&Method::POST, ["v1", "score"]) => score(state, req).await,
        (_, ["v1", "health"])
        | (_, ["v1", "sessions"])
        | (_, ["v1", "sessions", _])
        | (_, ["v1", "sessions", _, "cells"])
        | (_, ["v1", "score"]) => Err(ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{method} is not allowed on {path}"),
        )),
        _ => Err(ApiError::not_found(format!("no route {method} {path}"))),
    }
}

fn unknown_session(id: &str) -> ApiError {
    let shown: String = id.chars().take(64).collect();
    ApiError::not_found(format!(
        "unknown session {shown:?} (never created, deleted, expired, or not yours)"
    ))
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// Read a JSON body within the size and time bounds.
async fn read_json<T: DeserializeOwned>(
    state: &State,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let too_big = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {} bytes", state.max_body_bytes),
        )
    };
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > state.max_body_bytes as u64) {
        return Err(too_big());
    }
    let body = Limited::new(req.into_body(), state.max_body_bytes);
    let collected = match tokio::time::timeout(state.body_timeout, body.collect()).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    state.body_timeout.as_secs_f64()
                ),
            ))
        }
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(too_big())
        }
        Ok(Err(e)) => return Err(ApiError::bad(format!("reading the body: {e}"))),
        Ok(Ok(c)) => c.to_bytes(),
    };
    serde_json::from_slice(&collected)
        .map_err(|e| ApiError::bad(format!("malformed JSON body: {e}")))
}

fn health(state: &State) -> Response<Full<Bytes>> {
    let sandboxes = state.pool.report();
    let alive = sandboxes.iter().filter(|s| s.alive).count();
    let status = if state.draining.load(Ordering::Acquire) {
        "draining"
    } else {
        "ok"
    };
    json_response(
        StatusCode::OK,
        &json!({
            "status": status,
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_ms": state.started.elapsed().as_millis() as u64,
            "sandboxes_alive": alive,
            "sandboxes": sandboxes,
            "sessions": state.sessions.len(),
            "max_sessions": state.sessions.max,
            "questions": state.questions.len(),
            "memory": {
                "daemon_rss_bytes": daemon_rss(),
                "zygotes_bytes": state.pool.zygotes_memory(),
                "workers_bytes": state.sessions.workers_memory(),
                "budget_bytes": state.pool.settings().memory_budget,
            },
        }),
    )
}

/// Resident memory of this process (from /proc/self/statm).
pub fn daemon_rss() -> u64 {
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|n| n.parse::<u64>().ok())
        })
        .map(|pages| pages * page)
        .unwrap_or(0)
}

fn list_sessions(state: &State, who: &Principal) -> Response<Full<Bytes>> {
    json_response(
        StatusCode::OK,
        &json!({"sessions": state.sessions.owned_by(who)}),
    )
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeIn {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsIn {
    /// Per-worker memory (bytes or "512M"), at most the server's.
    memory: Option<SizeIn>,
    /// Default cell timeout of the session, seconds, at most the server's.
    timeout: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateIn {
    dataset: Option<String>,
    csv: Option<PathBuf>,
    #[serde(default)]
    limits: LimitsIn,
}

fn check_timeout(secs: f64, max: Duration) -> Result<Duration, ApiError> {
    if !(secs.is_finite() && secs > 0.0) {
        return Err(ApiError::bad(format!(
            "timeout must be a positive number of seconds, got {secs}"
        )));
    }
    if secs > max.as_secs_f64() {
        return Err(ApiError::bad(format!(
            "timeout {secs} s is above the server's maximum of {} s",
            max.as_secs_f64()
        )));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn registry(state: &State) -> Result<&Registry, String> {
    state.registry.as_ref().ok_or_else(|| {
        "the server has no dataset registry (--datasets DIR); name a CSV with \"csv\"".to_string()
    })
}

async fn preload(state: &State, slug: &str) -> Result<(), ServeError> {
    let fail = |reason: String| ServeError::Preload {
        slug: slug.to_string(),
        reason,
    };
    let ds = registry(state)
        .and_then(|r| r.get(slug).map_err(|e| e.to_string()))
        .map_err(fail)?;
    let hash = state
        .pool
        .hash_of(&ds.csv)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let key = PoolKey {
        hash,
        memory_bytes: state.pool.settings().limits.memory_bytes,
    };
    let (slot, _) = state
        .pool
        .checkout(key, slug, &ds.csv, &|| 0)
        .await
        .map_err(|e| fail(e.to_string()))?;
    state.pool.release(&slot);
    Ok(())
}

async fn create_session(
    state: &State,
    who: &Principal,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    if state.draining.load(Ordering::Acquire) {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is draining",
        ));
    }
    let body: CreateIn = read_json(state, req).await?;
    let (label, csv) = match (&body.dataset, &body.csv) {
        (Some(slug), None) => {
            let ds = registry(state)
                .and_then(|r| r.get(slug).map_err(|e| e.to_string()))
                .map_err(ApiError::not_found)?;
            (slug.clone(), ds.csv)
        }
        (None, Some(path)) => {
            if !path.is_absolute() {
                return Err(ApiError::bad(format!(
                    "csv {}: give an absolute path (the server's working directory is not yours)",
                    path.display()
                )));
            }
            let canon = std::fs::canonicalize(path)
                .map_err(|e| ApiError::bad(format!("csv {}: {e}", path.display())))?;
            if !canon.is_file() {
                return Err(ApiError::bad(format!(
                    "csv {}: not a regular file",
                    path.display()
                )));
            }
            (path.display().to_string(), canon)
        }
        _ => {
            return Err(ApiError::bad(
                "give exactly one of \"dataset\" (a slug) and \"csv\" (a path)",
            ))
        }
    };
    let base = &state.pool.settings().limits;
    let memory_bytes = match &body.limits.memory {
        None => base.memory_bytes,
        Some(SizeIn::Bytes(n)) => *n,
        Some(SizeIn::Text(t)) => crate::sandbox::parse_size(t)
            .map_err(|e| ApiError::bad(format!("limits.memory: {e}")))?,
    };
    if memory_bytes < 32 << 20 || memory_bytes > base.memory_bytes {
        return Err(ApiError::bad(format!(
            "limits.memory must be between 32 MiB and the server's {} MiB",
            base.memory_bytes >> 20
        )));
    }
    let default_timeout = match body.limits.timeout {
        None => state.default_cell_timeout.min(base.cell_timeout),
        Some(t) => check_timeout(t, base.cell_timeout)?,
    };
    let hash = state
        .pool
        .hash_of(&csv)
        .await
        .map_err(|e| ApiError::bad(e.to_string()))?;
    let new = NewSession {
        owner: who.clone(),
        key: PoolKey { hash, memory_bytes },
        label: &label,
        csv: &csv,
        default_timeout,
        max_timeout: base.cell_timeout,
    };
    let session = state.sessions.create(&state.pool, new).await.map_err(|e| {
        let status = match &e {
            CreateError::Full(_) => StatusCode::TOO_MANY_REQUESTS,
            CreateError::Pool(PoolError::Budget { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            CreateError::Pool(PoolError::Read { .. }) => StatusCode::BAD_REQUEST,
            CreateError::Pool(PoolError::Start { source, .. }) if !source.is_infrastructure() => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.to_string())
    })?;
    let mut info = to_value(&session.info())?;
    if let Value::Object(m) = &mut info {
        m.insert("memory_bytes".to_string(), json!(memory_bytes));
        m.insert("zygote".to_string(), to_value(&session.slot.zygote())?);
    }
    Ok(json_response(StatusCode::CREATED, &info))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CellIn {
    code: String,
    timeout: Option<f64>,
}

async fn run_cell(
    state: &State,
    who: &Principal,
    id: &str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, ApiError> {
    // The body first, as in every handler that takes one: its size and JSON
    // are checked before anything is looked up.
    let body: CellIn = read_json(state, req).await?;
    let session = state
        .sessions
        .get(id, who)
        .ok_or_else(|| unknown_session(id))?;
    let timeout = match body.timeout {
        None => session.default_timeout,
        Some(t) => check_timeout(t, state.pool.settings().limits.cell_timeout)?,
    };
    match session.run_cell(&body.code, timeout).await {
        Ok(cell) => Ok(json_response(StatusCode::OK, &to_value(&cell)?)),
        Err(CellError::Busy) => Err(ApiError::new(
            StatusCode::CONFLICT,
            CellError::Busy.to_string(),
        )),
        Err(CellError::Deleted) => Err(ApiError::new(
            StatusCode::GONE,
            CellError::Deleted.to_string(),
        )),
        Err(e @ CellError::Lost(_)) => {
            state.sessions.discard(&state.pool, &session);
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ))
        }
    }
}

async fn score(state: &State, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, ApiError> {
    let body: ScoreRequest = read_json(state, req).await?;
    match state.questions.score(&body) {
        Ok(s) => Ok(json_response(StatusCode::OK, &to_value(&s)?)),
        Err(e @ super::score::ScoreError::UnknownQuestion(..)) => {
            Err(ApiError::not_found(e.to_string()))
        }
        Err(e) => Err(ApiError::bad(e.to_string())),
    }
}

/// Resolves on the first SIGINT or SIGTERM, naming it (the server's drain
/// and the CLI's interruption both wait on this).
pub async fn terminated() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    }
}
