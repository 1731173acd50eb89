//! A real OpenAI-compatible HTTP/1.1 server on `127.0.0.1` (random port)
//! that plays a script, for tests and benchmarks of anything that talks to a
//! model through `csv_agent::llm::Client`.
//!
//! Include it with
//!
//! ```ignore
//! #[path = "support/openai_server.rs"]
//! mod openai_server;
//! use openai_server::{Request, Response, Server};
//! ```
//!
//! (the file allows dead code, so using part of it is warning-free).
//!
//! # Scripts
//!
//! A script is a function `Fn(&Request) -> Response`, called once per
//! `POST /v1/chat/completions`, possibly from many connections at once. It
//! should be stateless: pick the reply from the conversation itself, so that
//! any number of concurrent conversations are served correctly.
//!
//! ```ignore
//! let server = Server::start(|req: &Request| match req.n_assistant() {
//!     0 => Response::reply("```python\nprint(df.shape)\n```"),
//!     _ if req.contains("Traceback") => Response::reply("fixed code"),
//!     _ => Response::reply("submit(42)"),
//! })
//! .await;
//! let settings = LlmSettings::new(server.base_url(), "test-model");
//! ```
//!
//! For behaviour over time use the server-wide sequence number:
//! `if req.nth_request() < 2 { Response::status(429, "slow down").with_header("Retry-After", "1") } else { … }`.
//!
//! # What the server does
//!
//! - One tokio task per connection, HTTP/1.1 keep-alive (reqwest pools
//!   connections), and a listen backlog of 4096, so hundreds of slow
//!   concurrent requests neither queue nor wait for a SYN retransmit.
//! - Request bodies must carry `Content-Length` (reqwest's do); chunked
//!   request bodies are not supported.
//! - Every request, on any path, is recorded (see [`Server::requests`]) and
//!   numbered from 0 in arrival order. Only `POST /v1/chat/completions` goes
//!   to the script; anything else gets a 404 in OpenAI's error shape.
//! - A script that panics makes the server answer 500 with
//!   `test server script panicked: …` (retryable, so the client's error
//!   names the panic).
//! - Dropping the [`Server`] aborts the accept loop and every connection.
//!
//! # Token accounting of [`Response::reply`]
//!
//! Exact, so that tests can assert totals: `prompt_tokens` is the number of
//! characters (Unicode scalar values) of all the request's message contents
//! together, divided by 4 and rounded up — `ceil(sum / 4)`, not the sum of
//! per-message ceilings; roles do not count. `completion_tokens` is the
//! reply's characters / 4 rounded up. See [`approx_tokens`] and
//! [`Request::prompt_tokens`].
#![allow(dead_code)]

use std::net::SocketAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The path the script answers.
pub const CHAT_PATH: &str = "/v1/chat/completions";

/// A script, shared by every connection.
pub type Script = Arc<dyn Fn(&Request) -> Response + Send + Sync>;

/// `ceil(characters / 4)`: the token count [`Response::reply`] reports.
pub fn approx_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// A base URL (`http://127.0.0.1:PORT/v1`) where nothing listens: the port
/// was bound and released, so connecting is refused (unless another process
/// grabs the port in between, which is unlikely).
pub fn unused_base_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("local address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}/v1")
}

/// One chat message as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// One received HTTP request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Server-wide arrival number, from 0 (also [`Request::nth_request`]).
    pub seq: u64,
    /// Which TCP connection it came on, numbered from 0 in accept order.
    pub connection: u64,
    pub method: String,
    /// Request target, e.g. `/v1/chat/completions`.
    pub path: String,
    /// In arrival order; names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The JSON body; `Value::Null` when the body is empty or not JSON.
    pub body: Value,
    /// The body as text (lossy UTF-8).
    pub raw_body: String,
    /// `body.messages`, with non-string contents as their JSON text.
    pub messages: Vec<ChatMessage>,
}

impl Request {
    /// Server-wide arrival number, from 0: "the first two requests get a
    /// 429" is `req.nth_request() < 2`.
    pub fn nth_request(&self) -> u64 {
        self.seq
    }

    /// A header's value; `name` is case-insensitive.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Authorization` header, e.g. `Bearer sk-…`.
    pub fn authorization(&self) -> Option<&str> {
        self.header("authorization")
    }

    /// `body.model`.
    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// The first system message's content.
    pub fn system(&self) -> Option<&str> {
        self.messages
            .iter()
            .find(|m| m.role == "system")
            .map(|m| m.content.as_str())
    }

    /// The last user message's content.
    pub fn last_user(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.as_str())
    }

    /// Assistant messages so far: the turn number of the reply being asked
    /// for (0 for the first turn).
    pub fn n_assistant(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| m.role == "assistant")
            .count()
    }

    /// Whether any message's content contains `text`.
    pub fn contains(&self, text: &str) -> bool {
        self.messages.iter().any(|m| m.content.contains(text))
    }

    /// `body.max_tokens`.
    pub fn max_tokens(&self) -> Option<u64> {
        self.body.get("max_tokens").and_then(Value::as_u64)
    }

    /// `body.temperature`.
    pub fn temperature(&self) -> Option<f64> {
        self.body.get("temperature").and_then(Value::as_f64)
    }

    /// `body.top_p`.
    pub fn top_p(&self) -> Option<f64> {
        self.body.get("top_p").and_then(Value::as_f64)
    }

    /// Characters of all message contents together.
    pub fn prompt_chars(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| m.content.chars().count() as u64)
            .sum()
    }

    /// The `prompt_tokens` that [`Response::reply`] reports for this
    /// request: `ceil(prompt_chars / 4)`.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_chars().div_ceil(4)
    }
}

/// What the server does with one request. Build one with a constructor and
/// adjust it with the `with_…`/`after` methods.
#[derive(Debug, Clone)]
pub struct Response {
    kind: Kind,
    headers: Vec<(String, String)>,
    delay: Duration,
}

#[derive(Debug, Clone)]
enum Kind {
    Reply {
        content: String,
        finish_reason: String,
        usage: TokenCount,
    },
    Body {
        status: u16,
        body: String,
    },
    Stall(Duration),
    CutOff {
        content: String,
    },
    HangUp,
}

#[derive(Debug, Clone, Copy)]
enum TokenCount {
    /// `ceil(chars / 4)`, see the module header.
    Counted,
    Fixed {
        prompt: u64,
        completion: u64,
    },
    Omitted,
}

impl Response {
    /// 200 with a `chat.completion` whose `choices[0].message.content` is
    /// `content`, `finish_reason` `stop`, and `usage` counted as the module
    /// header says.
    pub fn reply(content: impl Into<String>) -> Response {
        Response::of(Kind::Reply {
            content: content.into(),
            finish_reason: "stop".into(),
            usage: TokenCount::Counted,
        })
    }

    /// `code` with an OpenAI-shaped error body
    /// `{"error": {"message": message, "type": "test_error", "code": code}}`.
    pub fn status(code: u16, message: impl Into<String>) -> Response {
        let body = json!({
            "error": {"message": message.into(), "type": "test_error", "code": code}
        });
        Response::raw(code, body.to_string())
    }

    /// `code` with `body` sent verbatim (`content-type: application/json`
    /// regardless): malformed JSON, HTML from a proxy, an empty body…
    pub fn raw(code: u16, body: impl Into<String>) -> Response {
        Response::of(Kind::Body {
            status: code,
            body: body.into(),
        })
    }

    /// 200 with any JSON, e.g. a completion without `choices`.
    pub fn json(value: Value) -> Response {
        Response::raw(200, value.to_string())
    }

    /// Read the request, then send nothing for `duration` and close the
    /// connection (sooner if the client closes it first, as a client
    /// timing out does).
    pub fn stall(duration: Duration) -> Response {
        Response::of(Kind::Stall(duration))
    }

    /// Start a 200 reply for `content` (headers and `Content-Length` of the
    /// whole body) but send only half of the body, then close the connection:
    /// a reply cut off mid-stream.
    pub fn cut_off(content: impl Into<String>) -> Response {
        Response::of(Kind::CutOff {
            content: content.into(),
        })
    }

    /// Close the connection without answering.
    pub fn hang_up() -> Response {
        Response::of(Kind::HangUp)
    }

    /// Adds a response header, e.g. `.with_header("Retry-After", "1")`.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Response {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Wait `delay` before answering (added to the server's latency).
    pub fn after(mut self, delay: Duration) -> Response {
        self.delay += delay;
        self
    }

    /// For [`Response::reply`]: another `finish_reason` (e.g. `length`).
    pub fn finish_reason(mut self, reason: impl Into<String>) -> Response {
        if let Kind::Reply { finish_reason, .. } = &mut self.kind {
            *finish_reason = reason.into();
        }
        self
    }

    /// For [`Response::reply`]: report these token counts instead.
    pub fn with_usage(mut self, prompt_tokens: u64, completion_tokens: u64) -> Response {
        if let Kind::Reply { usage, .. } = &mut self.kind {
            *usage = TokenCount::Fixed {
                prompt: prompt_tokens,
                completion: completion_tokens,
            };
        }
        self
    }

    /// For [`Response::reply`]: leave `usage` out, as some servers do.
    pub fn without_usage(mut self) -> Response {
        if let Kind::Reply { usage, .. } = &mut self.kind {
            *usage = TokenCount::Omitted;
        }
        self
    }

    fn of(kind: Kind) -> Response {
        Response {
            kind,
            headers: Vec::new(),
            delay: Duration::ZERO,
        }
    }
}

/// How a [`Server`] runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Added before every answer (on top of [`Response::after`]).
    pub latency: Duration,
    /// Keep every request for [`Server::requests`]. Turn off in long
    /// benchmarks to keep memory flat; counts are kept either way.
    pub record_requests: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            latency: Duration::ZERO,
            record_requests: true,
        }
    }
}

/// The running server. Shuts down on drop.
pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    accept: JoinHandle<()>,
}

struct State {
    script: Script,
    options: Options,
    requests: Mutex<Vec<Request>>,
    count: AtomicU64,
    connections: AtomicU64,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Server {
    /// Starts a server playing `script`, with no added latency.
    pub async fn start(script: impl Fn(&Request) -> Response + Send + Sync + 'static) -> Server {
        Server::start_with(Options::default(), script).await
    }

    /// Starts a server that waits `latency` before every answer.
    pub async fn start_with_latency(
        latency: Duration,
        script: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Server {
        let options = Options {
            latency,
            ..Options::default()
        };
        Server::start_with(options, script).await
    }

    pub async fn start_with(
        options: Options,
        script: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> Server {
        // `TcpListener::bind` listens with a backlog of 128: a benchmark that
        // opens hundreds of connections at once would overflow it and wait
        // out the kernel's 1 s SYN retransmit. The kernel caps this at
        // net.core.somaxconn.
        let socket = TcpSocket::new_v4().expect("a TCP socket for the test server");
        socket
            .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind the test server to 127.0.0.1");
        let listener = socket.listen(4096).expect("listen on 127.0.0.1");
        let addr = listener.local_addr().expect("the test server's address");
        let state = Arc::new(State {
            script: Arc::new(script),
            options,
            requests: Mutex::new(Vec::new()),
            count: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        });
        let accept = tokio::spawn(accept_loop(listener, state.clone()));
        Server {
            addr,
            state,
            accept,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/v1`, ready for `LlmSettings::base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far (any path), in arrival order. Empty
    /// when [`Options::record_requests`] is off.
    pub fn requests(&self) -> Vec<Request> {
        let mut requests = self.state.requests.lock().unwrap().clone();
        requests.sort_by_key(|r| r.seq);
        requests
    }

    /// Requests received so far (any path).
    pub fn request_count(&self) -> u64 {
        self.state.count.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests read and not yet fully answered, now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests that were in flight at once: counted from the end
    /// of reading a request to the end of writing its answer (or of its
    /// stall, or its connection closing).
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // The accept task owns the listener and the JoinSet of connection
        // tasks: aborting it closes the port and aborts every connection.
        self.accept.abort();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let id = state.connections.fetch_add(1, Ordering::SeqCst);
                    connections.spawn(serve_connection(stream, state.clone(), id));
                }
                // Out of file descriptors and the like: let some close.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Counts a request in flight until dropped (also when its task is aborted).
struct InFlight<'a>(&'a State);

impl<'a> InFlight<'a> {
    fn enter(state: &'a State) -> InFlight<'a> {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<State>, connection: u64) {
    let _ = stream.set_nodelay(true);
    let mut buffer = Vec::with_capacity(16 * 1024);
    while let Ok(Some(raw)) = read_request(&mut stream, &mut buffer).await {
        let keep_alive = !raw
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let seq = state.count.fetch_add(1, Ordering::SeqCst);
        let request = Request::new(seq, connection, raw);
        let _in_flight = InFlight::enter(&state);
        if state.options.record_requests {
            state.requests.lock().unwrap().push(request.clone());
        }
        let response = if request.method == "POST" && request.path == CHAT_PATH {
            run_script(&state.script, &request)
        } else {
            Response::status(
                404,
                format!("no route for {} {}", request.method, request.path),
            )
        };
        let delay = state.options.latency + response.delay;
        if !delay.is_zero() && !wait_unless_closed(&mut stream, &mut buffer, delay).await {
            return;
        }
        let extra = &response.headers;
        match response.kind {
            Kind::Reply {
                content,
                finish_reason,
                usage,
            } => {
                let body = completion(&request, &content, &finish_reason, usage).to_string();
                if write(&mut stream, 200, extra, &body, body.len(), !keep_alive)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Kind::Body { status, body } => {
                if write(&mut stream, status, extra, &body, body.len(), !keep_alive)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Kind::Stall(duration) => {
                wait_unless_closed(&mut stream, &mut buffer, duration).await;
                return;
            }
            Kind::CutOff { content } => {
                let body = completion(&request, &content, "stop", TokenCount::Counted).to_string();
                let mut cut = body.len() / 2;
                while !body.is_char_boundary(cut) {
                    cut -= 1;
                }
                let half = &body[..cut];
                let _ = write(&mut stream, 200, extra, half, body.len(), true).await;
                return;
            }
            Kind::HangUp => return,
        }
        if !keep_alive {
            return;
        }
    }
}

fn run_script(script: &Script, request: &Request) -> Response {
    catch_unwind(AssertUnwindSafe(|| script(request))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into());
        Response::status(500, format!("test server script panicked: {message}"))
    })
}

/// Sleeps `duration`; returns early with `false` if the client closes the
/// connection meanwhile. Bytes that arrive are kept for the next request.
async fn wait_unless_closed(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
    duration: Duration,
) -> bool {
    let sleep = tokio::time::sleep(duration);
    tokio::pin!(sleep);
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            read = stream.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            },
        }
    }
}

fn completion(request: &Request, content: &str, finish_reason: &str, usage: TokenCount) -> Value {
    let mut body = json!({
        "id": format!("chatcmpl-test-{}", request.seq),
        "object": "chat.completion",
        "created": 1_700_000_000u64,
        "model": request.model().unwrap_or("test-model"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": finish_reason,
        }],
    });
    let counts = match usage {
        TokenCount::Counted => Some((request.prompt_tokens(), approx_tokens(content))),
        TokenCount::Fixed { prompt, completion } => Some((prompt, completion)),
        TokenCount::Omitted => None,
    };
    if let Some((prompt, completion)) = counts {
        body["usage"] = json!({
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        });
    }
    body
}

/// Writes a status line, headers (with `content_length`, which may exceed
/// `body` for a cut-off reply) and `body`.
async fn write(
    stream: &mut TcpStream,
    status: u16,
    extra: &[(String, String)],
    body: &str,
    content_length: usize,
    close: bool,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {content_length}\r\n",
        reason(status)
    );
    if close {
        head.push_str("connection: close\r\n");
    }
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    stream.write_all(&bytes).await?;
    stream.flush().await
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        408 => "Request Timeout",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A request as read off the wire.
struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawRequest {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Request {
    fn new(seq: u64, connection: u64, raw: RawRequest) -> Request {
        let raw_body = String::from_utf8_lossy(&raw.body).into_owned();
        let body: Value = serde_json::from_slice(&raw.body).unwrap_or(Value::Null);
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .map(|messages| {
                messages
                    .iter()
                    .map(|m| ChatMessage {
                        role: m
                            .get("role")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                        content: match m.get("content") {
                            Some(Value::String(s)) => s.clone(),
                            None | Some(Value::Null) => String::new(),
                            Some(other) => other.to_string(),
                        },
                    })
                    .collect()
            })
            .unwrap_or_default();
        Request {
            seq,
            connection,
            method: raw.method,
            path: raw.path,
            headers: raw.headers,
            body,
            raw_body,
            messages,
        }
    }
}

const MAX_HEAD: usize = 64 * 1024;

/// Reads one request from `stream`, using and leaving leftover bytes in
/// `buffer`. `Ok(None)` when the client closed the connection (or sent
/// something that is not HTTP/1.1: the connection is then dropped).
async fn read_request(
    stream: &mut TcpStream,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Option<RawRequest>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        if buffer.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split_ascii_whitespace();
    let (Some(method), Some(path)) = (request_line.next(), request_line.next()) else {
        return Ok(None);
    };
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let mut raw = RawRequest {
        method: method.to_owned(),
        path: path.to_owned(),
        headers,
        body: Vec::new(),
    };
    if raw
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Ok(None);
    }
    let length: usize = match raw.header("content-length") {
        Some(v) => match v.parse() {
            Ok(n) => n,
            Err(_) => return Ok(None),
        },
        None => 0,
    };
    let body_start = head_end + 4;
    while buffer.len() < body_start + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
    raw.body = buffer[body_start..body_start + length].to_vec();
    buffer.drain(..body_start + length);
    Ok(Some(raw))
}
