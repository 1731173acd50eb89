//! `datasets add kaggle:OWNER/DATASET`: the dataset's description and files
//! through Kaggle's public API (the one the `kaggle` command-line tool uses):
//!
//! - `GET {base}/api/v1/datasets/view/{owner}/{dataset}`: JSON with `ref`,
//!   `title`, `subtitle`, `url`, `licenseName`, `currentVersionNumber`
//!   (any missing field is left empty);
//! - `GET {base}/api/v1/datasets/download/{owner}/{dataset}[/{file}]`: the
//!   whole dataset as a zip archive, or one file (itself zipped when large).
//!
//! Both with HTTP basic auth: the username and API key from
//! `KAGGLE_USERNAME`/`KAGGLE_KEY`, else `~/.kaggle/kaggle.json` (or
//! `$KAGGLE_CONFIG_DIR/kaggle.json`). The key is never logged, printed or
//! put into an error. `CSV_AGENT_KAGGLE_URL` replaces the base URL
//! (`https://www.kaggle.com`), for a mirror or a test stub.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Kaggle's API host.
pub const DEFAULT_BASE_URL: &str = "https://www.kaggle.com";

#[derive(Debug, thiserror::Error)]
pub enum KaggleError {
    #[error("`{given}` is not a Kaggle dataset reference; write kaggle:OWNER/DATASET, as in the dataset's address kaggle.com/datasets/OWNER/DATASET")]
    BadReference { given: String },
    #[error("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or save the API token from kaggle.com → Settings → API → Create New Token as ~/.kaggle/kaggle.json")]
    NoCredentials,
    #[error("{path}: not a Kaggle token file ({reason}); download a new one from kaggle.com → Settings → API → Create New Token")]
    BadCredentials { path: PathBuf, reason: String },
    #[error("Kaggle refused the credentials of user `{user}` ({status}); check KAGGLE_USERNAME/KAGGLE_KEY or ~/.kaggle/kaggle.json, and accept the dataset's rules on its page if it has any")]
    Unauthorized { user: String, status: u16 },
    #[error(
        "Kaggle has no dataset {reference} ({status}); check the owner and name in its address"
    )]
    NotFound { reference: String, status: u16 },
    #[error("Kaggle answered {status} for {what}: {body}")]
    Http {
        what: String,
        status: u16,
        body: String,
    },
    #[error(
        "could not reach Kaggle at {base} ({reason}); check the network, or CSV_AGENT_KAGGLE_URL"
    )]
    Unreachable { base: String, reason: String },
    #[error("writing the download to {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `OWNER/DATASET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub owner: String,
    pub dataset: String,
}

impl Reference {
    /// `kaggle:owner/name`, also accepting a dataset's web address.
    pub fn parse(given: &str) -> Result<Reference, KaggleError> {
        let bad = || KaggleError::BadReference {
            given: given.to_string(),
        };
        let rest = given.strip_prefix("kaggle:").ok_or_else(bad)?;
        let rest = rest
            .trim_start_matches("https://")
            .trim_start_matches("www.")
            .trim_start_matches("kaggle.com/")
            .trim_start_matches("datasets/")
            .trim_matches('/');
        let (owner, dataset) = rest.split_once('/').ok_or_else(bad)?;
        let ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !s.starts_with('.')
        };
        if !ok(owner) || !ok(dataset) {
            return Err(bad());
        }
        Ok(Reference {
            owner: owner.to_string(),
            dataset: dataset.to_string(),
        })
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.owner, self.dataset)
    }
}

/// The username and key. `Debug` never shows the key.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    key: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("key", &"<hidden>")
            .finish()
    }
}

impl Credentials {
    pub fn new(username: String, key: String) -> Credentials {
        Credentials { username, key }
    }

    /// The environment first, then the token file.
    pub fn find() -> Result<Credentials, KaggleError> {
        let env = |n: &str| std::env::var(n).ok().filter(|v| !v.trim().is_empty());
        if let (Some(username), Some(key)) = (
            env(crate::config::ENV_KAGGLE_USERNAME),
            env(crate::config::ENV_KAGGLE_KEY),
        ) {
            return Ok(Credentials { username, key });
        }
        let dir = env(crate::config::ENV_KAGGLE_CONFIG_DIR)
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".kaggle")));
        let Some(path) = dir.map(|d| d.join("kaggle.json")) else {
            return Err(KaggleError::NoCredentials);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(KaggleError::NoCredentials)
            }
            Err(e) => {
                return Err(KaggleError::BadCredentials {
                    path,
                    reason: e.to_string(),
                })
            }
        };
        #[derive(Deserialize)]
        struct TokenFile {
            username: String,
            key: String,
        }
        // The parse error would quote the file (and the key): say less.
        let token: TokenFile =
            serde_json::from_str(&text).map_err(|_| KaggleError::BadCredentials {
                path: path.clone(),
                reason: "expected {\"username\": …, \"key\": …}".to_string(),
            })?;
        Ok(Credentials {
            username: token.username,
            key: token.key,
        })
    }
}

/// What the dataset's page says about it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct DatasetInfo {
    #[serde(rename = "ref")]
    pub reference: String,
    pub title: String,
    pub subtitle: String,
    pub url: String,
    pub license_name: String,
    pub current_version_number: Option<serde_json::Value>,
    pub description: Option<String>,
}

pub struct Client {
    base: String,
    credentials: Credentials,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: Option<String>, credentials: Credentials) -> Result<Client, KaggleError> {
        let base = base
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("csv-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| KaggleError::Unreachable {
                base: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base,
            credentials,
            http,
        })
    }

    async fn get(
        &self,
        path: &str,
        reference: &Reference,
    ) -> Result<reqwest::Response, KaggleError> {
        let url = format!("{}{path}", self.base);
        let response = self
            .http
            .get(&url)
            .basic_auth(&self.credentials.username, Some(&self.credentials.key))
            .send()
            .await
            .map_err(|e| KaggleError::Unreachable {
                base: self.base.clone(),
                // Without the URL: the reason alone, no credentials in it.
                reason: e.without_url().to_string(),
            })?;
        let status = response.status().as_u16();
        match status {
            200..=299 => Ok(response),
            401 | 403 => Err(KaggleError::Unauthorized {
                user: self.credentials.username.clone(),
                status,
            }),
            404 => Err(KaggleError::NotFound {
                reference: reference.to_string(),
                status,
            }),
            _ => {
                let body = response.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                Err(KaggleError::Http {
                    what: format!("{reference} ({path})"),
                    status,
                    body,
                })
            }
        }
    }

    pub async fn info(&self, reference: &Reference) -> Result<DatasetInfo, KaggleError> {
        let path = format!(
            "/api/v1/datasets/view/{}/{}",
            reference.owner, reference.dataset
        );
        let response = self.get(&path, reference).await?;
        let text = response
            .text()
            .await
            .map_err(|e| KaggleError::Unreachable {
                base: self.base.clone(),
                reason: e.without_url().to_string(),
            })?;
        serde_json::from_str(&text).map_err(|e| KaggleError::Http {
            what: format!("{reference} (its description)"),
            status: 200,
            body: format!("not the JSON expected: {e}"),
        })
    }

    /// Download the dataset (or one `file` of it) into `dir`; returns the
    /// path written: `<dataset>.zip`, or the file under its own name.
    pub async fn download(
        &self,
        reference: &Reference,
        file: Option<&str>,
        dir: &Path,
    ) -> Result<PathBuf, KaggleError> {
        let mut path = format!(
            "/api/v1/datasets/download/{}/{}",
            reference.owner, reference.dataset
        );
        if let Some(f) = file {
            path.push('/');
            path.push_str(&urlencode(f));
        }
        let mut response = self.get(&path, reference).await?;
        let name = file
            .map(|f| f.rsplit('/').next().unwrap_or(f).to_string())
            .unwrap_or_else(|| format!("{}.zip", reference.dataset));
        let target = dir.join(&name);
        let io = |source| KaggleError::Io {
            path: target.clone(),
            source,
        };
        let mut out = std::fs::File::create(&target).map_err(io)?;
        let mut head: Vec<u8> = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| KaggleError::Unreachable {
                base: self.base.clone(),
                reason: e.without_url().to_string(),
            })?
        {
            if head.len() < 4 {
                head.extend_from_slice(&chunk[..chunk.len().min(4)]);
            }
            out.write_all(&chunk).map_err(io)?;
        }
        out.flush().map_err(io)?;
        drop(out);
        // A single large file comes zipped: name it so the importer opens it.
        if file.is_some() && head.starts_with(b"PK\x03\x04") && !name.ends_with(".zip") {
            let zipped = dir.join(format!("{name}.zip"));
            std::fs::rename(&target, &zipped).map_err(|source| KaggleError::Io {
                path: zipped.clone(),
                source,
            })?;
            return Ok(zipped);
        }
        Ok(target)
    }
}

fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("kaggle:owner/data-set_1").expect("ok");
        assert_eq!(r.owner, "owner");
        assert_eq!(r.dataset, "data-set_1");
        let r = Reference::parse("kaggle:https://www.kaggle.com/datasets/a/b").expect("url");
        assert_eq!(r.to_string(), "a/b");
        for bad in ["owner/x", "kaggle:owner", "kaggle:a/../b", "kaggle:/x"] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_key_is_never_shown() {
        let c = Credentials::new("me".into(), "sekrit-key".into());
        assert!(!format!("{c:?}").contains("sekrit"));
    }
}
