//! Framed messages between the supervisor, the jail init, the zygote and the
//! workers. A frame is a 4-byte big-endian length and that many bytes of JSON;
//! every message is an object tagged by `"type"`. docs/protocol.md is the
//! reference; this file and `sandbox-image/zygote.py` implement it.

mod messages;
mod socket;

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::MsgFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub use messages::*;
pub use socket::{set_nonblocking, Frame, FramedSocket};

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame any channel accepts (the jail init's sync channel, and the
/// ceiling of every per-channel bound below).
pub const MAX_FRAME: usize = 64 << 20;

/// Largest frame the zygote sends on the control channel: its messages are a
/// few hundred bytes (`ready` with package versions is the biggest).
pub const CONTROL_MAX_FRAME: usize = 1 << 20;

/// Descriptors one control frame may carry: `forked` carries exactly one.
pub const CONTROL_MAX_FDS: usize = 1;

/// Room in a worker's `result` for what is not capped text: `submitted`,
/// `hooks` (values are never cut: a cut value would be another answer), keys,
/// numbers.
pub const RESULT_VALUES_BUDGET: usize = 4 << 20;

/// Largest frame a worker may send: its `result` holds five capped strings
/// (stdout, stderr, result, error message, traceback; each at most
/// `max_output` bytes plus the truncation line, and JSON may escape one byte
/// into six: `\u0000`), so 32 × `max_output`, plus [`RESULT_VALUES_BUDGET`];
/// never above [`MAX_FRAME`]. 6 MiB with the default 64 KiB cap. The zygote
/// gets this number (`max_frame` in its config) and replaces a bigger result
/// with a `ResultTooLarge` error.
pub fn worker_frame_limit(max_output: u64) -> usize {
    let max_output = usize::try_from(max_output).unwrap_or(usize::MAX);
    max_output
        .saturating_mul(32)
        .saturating_add(RESULT_VALUES_BUDGET)
        .min(MAX_FRAME)
}

/// What a channel's peer may send besides bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelPolicy {
    /// Largest frame body accepted; also bounds the bytes buffered.
    pub max_frame: usize,
    /// Descriptors (SCM_RIGHTS) one frame may carry; 0: none, and receiving
    /// any is a protocol violation.
    pub max_fds: usize,
    /// Room for SCM_CREDENTIALS (the peer's pid) in every read.
    pub credentials: bool,
}

impl ChannelPolicy {
    /// The zygote's control channel: small frames, one descriptor per frame.
    pub const fn control() -> Self {
        ChannelPolicy {
            max_frame: CONTROL_MAX_FRAME,
            max_fds: CONTROL_MAX_FDS,
            credentials: false,
        }
    }

    /// A worker's channel: credentials only, frames bounded by the cap on
    /// output (see [`worker_frame_limit`]).
    pub fn worker(max_output: u64) -> Self {
        ChannelPolicy {
            max_frame: worker_frame_limit(max_output),
            max_fds: 0,
            credentials: true,
        }
    }

    /// Bytes of control-message buffer: exactly what the policy accepts, so
    /// the kernel installs no descriptor beyond `max_fds` (it closes the rest
    /// and sets MSG_CTRUNC).
    fn control_len(&self) -> usize {
        let mut len = 0;
        if self.credentials {
            len += cmsg_space(std::mem::size_of::<libc::ucred>());
        }
        if self.max_fds > 0 {
            // CMSG_LEN, not CMSG_SPACE: the padding of CMSG_SPACE would make
            // room for one more descriptor.
            len += cmsg_len(self.max_fds.saturating_mul(std::mem::size_of::<RawFd>()));
        }
        len
    }
}

pub(super) fn cmsg_space(data: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE(u32::try_from(data).unwrap_or(u32::MAX)) as usize }
}

pub(super) fn cmsg_len(data: usize) -> usize {
    // SAFETY: CMSG_LEN is pure arithmetic.
    unsafe { libc::CMSG_LEN(u32::try_from(data).unwrap_or(u32::MAX)) as usize }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o on the {channel} channel failed: {source}")]
    Io {
        channel: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the {channel} channel closed in the middle of a frame")]
    Truncated { channel: &'static str },
    #[error("frame of {len} bytes on the {channel} channel exceeds the {MAX_FRAME}-byte limit")]
    TooLarge { channel: &'static str, len: usize },
    #[error(
        "frame of {len} bytes announced on the {channel} channel exceeds its {max}-byte limit"
    )]
    FrameTooLarge {
        channel: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "the {channel} channel received descriptors it does not accept \
         ({received} installed and closed at once{}; at most {allowed} per frame)",
        if *.truncated { ", the rest discarded by the kernel" } else { "" }
    )]
    Descriptors {
        channel: &'static str,
        received: usize,
        truncated: bool,
        allowed: usize,
    },
    #[error("the {channel} channel is closed after a protocol violation")]
    Poisoned { channel: &'static str },
    #[error("malformed message on the {channel} channel: {detail}")]
    Malformed {
        channel: &'static str,
        detail: String,
    },
    #[error("unexpected message on the {channel} channel: expected {expected}, got {got}")]
    Unexpected {
        channel: &'static str,
        expected: &'static str,
        got: String,
    },
    #[error("unexpected message on the {channel} channel: expected the result of cell {cell}, got {got}")]
    NotTheResult {
        channel: &'static str,
        cell: u64,
        got: String,
    },
    #[error("malformed result of cell {cell} on the {channel} channel: {source}")]
    Reply {
        channel: &'static str,
        cell: u64,
        #[source]
        source: ReplyError,
    },
}

impl ProtocolError {
    /// The peer broke the protocol (as opposed to dying or hanging up): a
    /// worker that does this is hostile.
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            ProtocolError::TooLarge { .. }
                | ProtocolError::FrameTooLarge { .. }
                | ProtocolError::Descriptors { .. }
                | ProtocolError::Poisoned { .. }
                | ProtocolError::Malformed { .. }
                | ProtocolError::Unexpected { .. }
                | ProtocolError::NotTheResult { .. }
                | ProtocolError::Reply { .. }
        )
    }
}

pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing our own message types cannot fail (no maps with non-string
    // keys, no custom serializers).
    let body = serde_json::to_vec(msg).unwrap_or_else(|_| b"{}".to_vec());
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let mut frame = Vec::with_capacity(body.len() + 4);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

pub fn decode<T: DeserializeOwned>(channel: &'static str, body: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(body).map_err(|e| ProtocolError::Malformed {
        channel,
        detail: format!(
            "{e}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ),
    })
}

/// Blocking write of one frame (jail init side; no async runtime there).
pub fn write_frame_blocking<W: Write, T: Serialize>(
    w: &mut W,
    channel: &'static str,
    msg: &T,
) -> Result<(), ProtocolError> {
    w.write_all(&encode(msg))
        .and_then(|_| w.flush())
        .map_err(|source| ProtocolError::Io { channel, source })
}

/// Blocking read of one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame_blocking<R: Read, T: DeserializeOwned>(
    r: &mut R,
    channel: &'static str,
) -> Result<Option<T>, ProtocolError> {
    let mut header = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(ProtocolError::Truncated { channel }),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => return Err(ProtocolError::Io { channel, source }),
        }
    }
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(ProtocolError::TooLarge { channel, len });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => ProtocolError::Truncated { channel },
        _ => ProtocolError::Io { channel, source: e },
    })?;
    decode(channel, &body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_blocking_reader() {
        let msg = ToZygote::Fork {
            worker_id: 7,
            limits: WorkerLimits {
                cpu_seconds: Some(30),
                ..Default::default()
            },
        };
        let bytes = encode(&msg);
        assert_eq!(&bytes[..4], &((bytes.len() - 4) as u32).to_be_bytes());
        let back: ToZygote = read_frame_blocking(&mut &bytes[..], "test")
            .expect("decodes")
            .expect("one frame");
        match back {
            ToZygote::Fork { worker_id, limits } => {
                assert_eq!(worker_id, 7);
                assert_eq!(limits.cpu_seconds, Some(30));
            }
            other => panic!("wrong message {other:?}"),
        }
    }

    #[test]
    fn truncated_frame_is_an_error_not_a_hang() {
        let bytes = encode(&ToZygote::Shutdown);
        let err = read_frame_blocking::<_, ToZygote>(&mut &bytes[..bytes.len() - 1], "test");
        assert!(matches!(err, Err(ProtocolError::Truncated { .. })));
    }

    #[test]
    fn oversized_frame_is_refused_before_allocation() {
        let bytes = (u32::MAX).to_be_bytes();
        let err = read_frame_blocking::<_, ToZygote>(&mut &bytes[..], "test");
        assert!(matches!(err, Err(ProtocolError::TooLarge { .. })));
    }
}
