//! Who is calling, and the unix socket's place on disk.
//!
//! Unix socket: the kernel tells us the peer's uid (`SO_PEERCRED`); only the
//! uid the server runs as is served. Root is not let in either when the
//! server runs as another user: the owner decides who shares its jails, and
//! root can read the socket's sessions' files anyway. The socket is mode 0600
//! in a directory of mode 0700 that we own, so the check is the second of two
//! fences. TCP: loopback only, and every request carries
//! `Authorization: Bearer <token>`, compared in constant time.
//!
//! A session is bound to the [`Principal`] that created it: another caller
//! gets 404 for it, as for an id that never existed.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::ServeError;

/// Who made a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    /// A unix-socket peer with this uid.
    Unix { uid: u32 },
    /// A TCP peer holding the token (all holders are one principal).
    Token,
}

/// What the listener knows about a connection before any request.
#[derive(Debug, Clone)]
pub enum Peer {
    /// `uid` is None when the kernel would not say (then refused).
    Unix {
        uid: Option<u32>,
    },
    Tcp,
}

/// Why a request is refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 401: TCP without the right bearer token.
    Unauthenticated,
    /// 403: a unix peer that is not the owner.
    Forbidden,
}

/// Decide who `peer` is: `owner` is the server's uid, `token` the bearer
/// token TCP requires, `authorization` the request's header.
pub fn authenticate(
    peer: &Peer,
    owner: u32,
    token: Option<&str>,
    authorization: Option<&[u8]>,
) -> Result<Principal, Refusal> {
    match peer {
        Peer::Unix { uid: Some(uid) } if *uid == owner => Ok(Principal::Unix { uid: *uid }),
        Peer::Unix { .. } => Err(Refusal::Forbidden),
        Peer::Tcp => {
            let (Some(expected), Some(header)) = (token, authorization) else {
                return Err(Refusal::Unauthenticated);
            };
            let given = header.strip_prefix(b"Bearer ").unwrap_or(b"");
            if constant_time_eq(given, expected.as_bytes()) {
                Ok(Principal::Token)
            } else {
                Err(Refusal::Unauthenticated)
            }
        }
    }
}

/// Compare two secrets without a timing signal: both are hashed first (so
/// the loop runs over 32 bytes whatever the lengths), then every byte is
/// compared.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (ha, hb) = (Sha256::digest(a), Sha256::digest(b));
    ha.iter()
        .zip(hb.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// A session id: 128 random bits from the kernel, as 32 hex digits.
pub fn new_session_id() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Make (or check) the socket's directory: ours, mode 0700. An existing
/// directory someone else owns, or that others may enter, is refused rather
/// than fixed: in a shared place such as /tmp it may be a trap.
pub fn prepare_socket_dir(dir: &Path, owner: u32) -> Result<(), ServeError> {
    let bad = |reason: String| ServeError::SocketDir {
        path: dir.to_path_buf(),
        reason,
    };
    match std::fs::symlink_metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(bad("exists and is not a directory".to_string()));
            }
            if meta.uid() != owner {
                return Err(bad(format!(
                    "owned by uid {}, not by us (uid {owner})",
                    meta.uid()
                )));
            }
            if meta.mode() & 0o077 != 0 {
                return Err(bad(format!(
                    "mode {:o} lets other users in; want 0700",
                    meta.mode() & 0o777
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|e| bad(format!("cannot create it: {e}")))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| bad(format!("cannot set its mode: {e}")))
        }
        Err(e) => Err(bad(e.to_string())),
    }
}

/// Remove a socket file left by a server that was killed, unless a server
/// still answers on it.
pub fn clear_stale_socket(path: &Path) -> Result<(), ServeError> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    use std::os::unix::fs::FileTypeExt;
    if !meta.file_type().is_socket() {
        return Err(ServeError::SocketDir {
            path: path.to_path_buf(),
            reason: "exists and is not a socket".to_string(),
        });
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(ServeError::SocketInUse {
            path: path.to_path_buf(),
        });
    }
    std::fs::remove_file(path).map_err(|source| ServeError::Io {
        what: "removing the stale socket",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_uid_and_the_right_token_get_in() {
        let owner = 1000;
        assert_eq!(
            authenticate(&Peer::Unix { uid: Some(1000) }, owner, None, None),
            Ok(Principal::Unix { uid: 1000 })
        );
        assert_eq!(
            authenticate(&Peer::Unix { uid: Some(0) }, owner, None, None),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            authenticate(&Peer::Unix { uid: None }, owner, None, None),
            Err(Refusal::Forbidden)
        );
        let token = Some("0123456789abcdef0123");
        assert_eq!(
            authenticate(
                &Peer::Tcp,
                owner,
                token,
                Some(b"Bearer 0123456789abcdef0123")
            ),
            Ok(Principal::Token)
        );
        for bad in [
            None,
            Some(&b"Bearer 0123456789abcdef012"[..]),
            Some(&b"0123456789abcdef0123"[..]),
            Some(&b"Basic 0123456789abcdef0123"[..]),
        ] {
            assert_eq!(
                authenticate(&Peer::Tcp, owner, token, bad),
                Err(Refusal::Unauthenticated)
            );
        }
        // No token configured: TCP is never served.
        assert_eq!(
            authenticate(&Peer::Tcp, owner, None, Some(b"Bearer x")),
            Err(Refusal::Unauthenticated)
        );
    }

    #[test]
    fn session_ids_are_128_bit_and_distinct() {
        let a = new_session_id().unwrap();
        let b = new_session_id().unwrap();
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
