//! A client of `csv-agent serve` over HTTP/1.1 on the unix socket (or
//! loopback TCP with the bearer token): what `sandbox exec --serve`, the
//! tests and the bench use. One [`ServeClient`] keeps one connection open
//! and sends one request at a time on it; use one client per concurrent
//! caller.

use std::path::PathBuf;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::sandbox::CellResult;

/// Replies larger than this are refused (cells are capped far below it).
const MAX_REPLY: usize = 64 << 20;

/// Where the server listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp {
        authority: String,
        token: Option<String>,
    },
}

impl Endpoint {
    /// `http://127.0.0.1:PORT` (token from `CSV_AGENT_SERVE_TOKEN`), `unix:PATH` or a path.
    pub fn parse(text: &str) -> Endpoint {
        if let Some(rest) = text.strip_prefix("http://") {
            Endpoint::Tcp {
                authority: rest.trim_end_matches('/').to_string(),
                token: std::env::var(super::ENV_SERVE_TOKEN)
                    .ok()
                    .filter(|t| !t.is_empty()),
            }
        } else {
            Endpoint::Unix(PathBuf::from(text.strip_prefix("unix:").unwrap_or(text)))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { authority, .. } => write!(f, "http://{authority}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to {endpoint}: {source}")]
    Http {
        endpoint: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{endpoint} answered {status}: {message}")]
    Status {
        endpoint: String,
        status: u16,
        message: String,
    },
    #[error("{endpoint} sent a reply that is not what the API documents: {detail}")]
    Reply { endpoint: String, detail: String },
}

impl ClientError {
    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

pub struct ServeClient {
    endpoint: Endpoint,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl ServeClient {
    pub fn new(endpoint: Endpoint) -> ServeClient {
        ServeClient {
            endpoint,
            sender: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ClientError> {
        let connect_err = |source| ClientError::Connect {
            endpoint: self.endpoint.to_string(),
            source,
        };
        let http_err = |source| ClientError::Http {
            endpoint: self.endpoint.to_string(),
            source,
        };
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(connect_err)?;
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
            Endpoint::Tcp { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(connect_err)?;
                let _ = stream.set_nodelay(true);
                let (sender, conn) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(http_err)?;
                tokio::spawn(conn);
                Ok(sender)
            }
        }
    }

    /// One request; the JSON reply of a 2xx, else [`ClientError::Status`].
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let endpoint = self.endpoint.to_string();
        let reusable = match self.sender.take() {
            Some(mut s) => s.ready().await.is_ok().then_some(s),
            None => None,
        };
        let mut sender = match reusable {
            Some(s) => s,
            None => self.connect().await?,
        };
        let bytes = body
            .map(|b| serde_json::to_vec(b).unwrap_or_default())
            .unwrap_or_default();
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "localhost");
        if body.is_some() {
            builder = builder.header(http::header::CONTENT_TYPE, "application/json");
        }
        if let Endpoint::Tcp { token: Some(t), .. } = &self.endpoint {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = builder
            .body(Full::new(Bytes::from(bytes)))
            .map_err(|e| ClientError::Reply {
                endpoint: endpoint.clone(),
                detail: e.to_string(),
            })?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|source| ClientError::Http {
                endpoint: endpoint.clone(),
                source,
            })?;
        let status = resp.status();
        let closing = resp
            .headers()
            .get(http::header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let collected = Limited::new(resp.into_body(), MAX_REPLY)
            .collect()
            .await
            .map_err(|e| ClientError::Reply {
                endpoint: endpoint.clone(),
                detail: e.to_string(),
            })?
            .to_bytes();
        if !closing {
            self.sender = Some(sender);
        }
        let value: Value = serde_json::from_slice(&collected).map_err(|e| ClientError::Reply {
            endpoint: endpoint.clone(),
            detail: format!("not JSON ({e})"),
        })?;
        if status.is_success() {
            Ok(value)
        } else {
            Err(ClientError::Status {
                endpoint,
                status: status.as_u16(),
                message: value
                    .get("error")
                    .and_then(Value::as_str)
                    .unwrap_or(status.canonical_reason().unwrap_or(""))
                    .to_string(),
            })
        }
    }

    pub async fn health(&mut self) -> Result<Value, ClientError> {
        self.request(Method::GET, "/v1/health", None).await
    }

    /// A session on `spec` (`{"dataset": SLUG}` or `{"csv": PATH}`, plus
    /// optional `limits`); returns its id.
    pub async fn create_session(&mut self, spec: &Value) -> Result<String, ClientError> {
        let reply = self
            .request(Method::POST, "/v1/sessions", Some(spec))
            .await?;
        reply
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| ClientError::Reply {
                endpoint: self.endpoint.to_string(),
                detail: "a session without an id".to_string(),
            })
    }

    pub async fn run_cell(
        &mut self,
        id: &str,
        code: &str,
        timeout: Option<f64>,
    ) -> Result<CellResult, ClientError> {
        let mut body = json!({ "code": code });
        if let Some(t) = timeout {
            body["timeout"] = json!(t);
        }
        let reply = self
            .request(
                Method::POST,
                &format!("/v1/sessions/{id}/cells"),
                Some(&body),
            )
            .await?;
        serde_json::from_value(reply).map_err(|e| ClientError::Reply {
            endpoint: self.endpoint.to_string(),
            detail: format!("a cell result of another shape ({e})"),
        })
    }

    pub async fn delete_session(&mut self, id: &str) -> Result<(), ClientError> {
        self.request(Method::DELETE, &format!("/v1/sessions/{id}"), None)
            .await
            .map(|_| ())
    }

    pub async fn score(&mut self, request: &Value) -> Result<Value, ClientError> {
        self.request(Method::POST, "/v1/score", Some(request)).await
    }
}

/// Whether a status is "the session is gone" (deleted, expired, lost).
pub fn session_gone(status: u16) -> bool {
    status == StatusCode::NOT_FOUND.as_u16() || status == StatusCode::GONE.as_u16()
}
