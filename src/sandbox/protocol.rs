//! Framed messages between the supervisor, the jail init, the zygote and the
//! workers. A frame is a 4-byte big-endian length and that many bytes of JSON;
//! every message is an object tagged by `"type"`. docs/protocol.md is the
//! reference; this file and `sandbox-image/zygote.py` implement it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

pub const PROTOCOL_VERSION: u32 = 1;
/// Largest frame either side accepts: a cell's output is capped far below
/// this, so a bigger frame means a broken or hostile peer.
pub const MAX_FRAME: usize = 64 << 20;

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

/// One received frame with what came along with it.
#[derive(Debug)]
pub struct Frame {
    pub body: Vec<u8>,
    /// Descriptors received (SCM_RIGHTS) since the previous frame.
    pub fds: Vec<OwnedFd>,
    /// Sender's pid as seen in OUR pid namespace (SCM_CREDENTIALS).
    pub sender_pid: Option<i32>,
}

/// An async, framed unix stream socket that also receives descriptors and
/// credentials (the supervisor's end of the control and worker channels).
pub struct FramedSocket {
    fd: AsyncFd<OwnedFd>,
    channel: &'static str,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// Descriptors not yet handed out, each with the stream offset just past
    /// the read that delivered it.
    fds: VecDeque<(u64, OwnedFd)>,
    sender_pid: Option<i32>,
    eof: bool,
}

impl std::fmt::Debug for FramedSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedSocket")
            .field("fd", &self.fd.get_ref().as_raw_fd())
            .field("channel", &self.channel)
            .finish()
    }
}

impl FramedSocket {
    /// Take ownership of a connected unix stream socket.
    pub fn new(fd: OwnedFd, channel: &'static str) -> Result<Self, ProtocolError> {
        let io = |source| ProtocolError::Io { channel, source };
        set_nonblocking(fd.as_raw_fd()).map_err(io)?;
        // SAFETY: the AsyncFd owns the OwnedFd, so the descriptor stays open
        // and refers to the same socket for the AsyncFd's whole lifetime.
        let fd =
            unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }
                .map_err(|e| io(std::io::Error::other(e.to_string())))?;
        Ok(FramedSocket {
            fd,
            channel,
            buf: Vec::new(),
            buf_start: 0,
            fds: VecDeque::new(),
            sender_pid: None,
            eof: false,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    pub async fn send<T: Serialize>(&self, msg: &T) -> Result<(), ProtocolError> {
        let frame = encode(msg);
        let mut sent = 0;
        while sent < frame.len() {
            let mut guard = self
                .fd
                .writable()
                .await
                .map_err(|source| ProtocolError::Io {
                    channel: self.channel,
                    source,
                })?;
            match guard.try_io(|inner| {
                nix::sys::socket::send(
                    inner.get_ref().as_raw_fd(),
                    &frame[sent..],
                    MsgFlags::MSG_NOSIGNAL,
                )
                .map_err(std::io::Error::from)
            }) {
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(source)) => {
                    return Err(ProtocolError::Io {
                        channel: self.channel,
                        source,
                    })
                }
                Err(_would_block) => {}
            }
        }
        Ok(())
    }

    /// The next frame, or `Ok(None)` when the peer closed the stream cleanly.
    pub async fn recv(&mut self) -> Result<Option<Frame>, ProtocolError> {
        loop {
            if let Some(frame) = self.take_frame()? {
                return Ok(Some(frame));
            }
            if self.eof {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated {
                        channel: self.channel,
                    })
                };
            }
            self.fill().await?;
        }
    }

    /// Receive and decode the next message; end of stream is an error naming
    /// what was expected.
    pub async fn recv_msg<T: DeserializeOwned>(
        &mut self,
        expected: &'static str,
    ) -> Result<(T, Frame), ProtocolError> {
        match self.recv().await? {
            Some(frame) => Ok((decode(self.channel, &frame.body)?, frame)),
            None => Err(ProtocolError::Unexpected {
                channel: self.channel,
                expected,
                got: "end of stream".to_string(),
            }),
        }
    }

    fn take_frame(&mut self) -> Result<Option<Frame>, ProtocolError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtocolError::TooLarge {
                channel: self.channel,
                len,
            });
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        let frame_end = self.buf_start + 4 + len as u64;
        self.buf_start = frame_end;
        // The kernel ends a read right after the message that carries
        // descriptors, so they belong to the frame holding the last byte of
        // that read: hand over every descriptor delivered at or before this
        // frame's end (never those of a later frame read ahead).
        let mut fds = Vec::new();
        while self.fds.front().is_some_and(|(at, _)| *at <= frame_end) {
            if let Some((_, fd)) = self.fds.pop_front() {
                fds.push(fd);
            }
        }
        Ok(Some(Frame {
            body,
            fds,
            sender_pid: self.sender_pid,
        }))
    }

    async fn fill(&mut self) -> Result<(), ProtocolError> {
        let channel = self.channel;
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| ProtocolError::Io { channel, source })?;
            let mut chunk = vec![0u8; 256 * 1024];
            let result =
                guard.try_io(|inner| recv_with_ancillary(inner.get_ref().as_raw_fd(), &mut chunk));
            match result {
                Ok(Ok((n, fds, pid))) => {
                    let read_end = self.buf_start + (self.buf.len() + n) as u64;
                    self.fds.extend(fds.into_iter().map(|fd| (read_end, fd)));
                    if pid.is_some() {
                        self.sender_pid = pid;
                    }
                    if n == 0 {
                        self.eof = true;
                    } else {
                        self.buf.extend_from_slice(&chunk[..n]);
                    }
                    return Ok(());
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(Err(source)) => return Err(ProtocolError::Io { channel, source }),
                Err(_would_block) => {}
            }
        }
    }
}

type Received = (usize, Vec<OwnedFd>, Option<i32>);

fn recv_with_ancillary(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; 8], nix::sys::socket::UnixCredentials);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut fds = Vec::new();
    let mut pid = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            match c {
                ControlMessageOwned::ScmRights(received) => {
                    for raw in received {
                        // SAFETY: the kernel just installed this descriptor in
                        // our table for us; nothing else owns it.
                        fds.push(unsafe { OwnedFd::from_raw_fd(raw) });
                    }
                }
                ControlMessageOwned::ScmCredentials(creds) => pid = Some(creds.pid()),
                _ => {}
            }
        }
    }
    Ok((msg.bytes, fds, pid))
}

pub fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    // SAFETY: borrowing a descriptor the caller owns for the duration of the call.
    let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let flags = fcntl(borrowed.as_fd(), FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
    fcntl(borrowed.as_fd(), FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

// ---------------------------------------------------------------- messages

/// Supervisor → jail init (sync channel).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToInit {
    /// The jail description; the first message.
    Spec { spec: Box<super::spawn::JailSpec> },
    /// uid/gid maps are written: go on.
    Mapped,
    /// The maps could not be written: give up.
    Abort { error: String },
}

/// Jail init → supervisor (sync channel).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromInit {
    /// New namespaces exist; write the id maps of this pid.
    Unshared { pid: i32 },
    /// No user namespace could be made; running without namespaces (only
    /// when the spec allows it). No id maps to write.
    Unconfined { reason: String },
    /// Every layer as the init applied it, sent just before `execve`.
    Applied { layers: Vec<super::layers::Layer> },
    /// Setting up the jail failed at `step`.
    Failed { step: String, error: String },
}

/// Per-worker limits the zygote applies after `fork`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerLimits {
    pub cpu_seconds: Option<u64>,
    /// Address-space allowance above what the worker inherited: the memory
    /// fallback where there are no cgroups.
    pub address_space_extra: Option<u64>,
    pub nofile: Option<u64>,
}

/// Supervisor → zygote.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToZygote {
    Fork {
        worker_id: u64,
        limits: WorkerLimits,
    },
    Shutdown,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZygoteReady {
    pub version: u32,
    pub pid: i32,
    #[serde(default)]
    pub python: String,
    #[serde(default)]
    pub packages: BTreeMap<String, String>,
    #[serde(default)]
    pub rows: u64,
    #[serde(default)]
    pub columns: u64,
    #[serde(default)]
    pub separator: String,
    #[serde(default)]
    pub encoding: String,
    #[serde(default)]
    pub import_ms: f64,
    #[serde(default)]
    pub load_ms: f64,
}

/// Zygote → supervisor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromZygote {
    Ready(ZygoteReady),
    LoadError {
        error: String,
    },
    Forked {
        worker_id: u64,
        pid: i32,
    },
    ForkFailed {
        worker_id: u64,
        error: String,
        /// A shortage that may be gone in a moment (fork's EAGAIN, a failed
        /// hand-over of the worker's socket): worth a retry.
        #[serde(default)]
        transient: bool,
    },
    Exited {
        worker_id: u64,
        pid: i32,
        exit_code: Option<i32>,
        signal: Option<i32>,
    },
    Error {
        error: String,
    },
}

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToWorker {
    Exec { cell: u64, code: String },
    Exit,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScopeStatus {
    pub applied: bool,
    #[serde(default)]
    pub error: Option<String>,
}

/// A worker's reply to `exec`, as the zygote sends it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CellReply {
    pub cell: u64,
    pub status: String,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: u64,
    #[serde(default)]
    pub stderr_truncated: u64,
    #[serde(default)]
    pub result: Option<String>,
    #[serde(default)]
    pub error: Option<serde_json::Value>,
    #[serde(default)]
    pub submitted: Option<serde_json::Value>,
    #[serde(default)]
    pub hooks: Vec<serde_json::Value>,
    #[serde(default)]
    pub elapsed_ms: f64,
}

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromWorker {
    Hello {
        version: u32,
        worker_id: u64,
        pid: i32,
        #[serde(default)]
        scope: ScopeStatus,
        /// The worker's own seccomp filter (pids of other processes refused).
        #[serde(default)]
        filter: ScopeStatus,
        /// The worker's uid inside the jail (its own in per-worker uid mode).
        #[serde(default)]
        uid: Option<u32>,
    },
    Result(CellReply),
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

    #[test]
    fn zygote_messages_parse_in_the_documented_shape() {
        let forked: FromZygote =
            serde_json::from_str(r#"{"type":"forked","worker_id":3,"pid":12}"#).expect("forked");
        assert!(matches!(
            forked,
            FromZygote::Forked {
                worker_id: 3,
                pid: 12
            }
        ));
        let exited: FromZygote = serde_json::from_str(
            r#"{"type":"exited","worker_id":3,"pid":12,"exit_code":null,"signal":9}"#,
        )
        .expect("exited");
        assert!(matches!(
            exited,
            FromZygote::Exited {
                signal: Some(9),
                ..
            }
        ));
    }

    /// Regression: one read returned an `exited` frame and then a `forked`
    /// frame with its socket; the socket went to `exited` and was closed.
    #[tokio::test]
    async fn descriptors_go_to_the_frame_that_carried_them() {
        use nix::sys::socket::{
            sendmsg, socketpair, AddressFamily, ControlMessage, SockFlag, SockType,
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let exited = encode(&FromZygote::Exited {
            worker_id: 1,
            pid: 5,
            exit_code: Some(0),
            signal: None,
        });
        let forked = encode(&FromZygote::Forked {
            worker_id: 2,
            pid: 6,
        });
        let (passed, _keep) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair");
        let raw = [passed.as_raw_fd()];
        sendmsg::<()>(
            theirs.as_raw_fd(),
            &[std::io::IoSlice::new(&exited)],
            &[],
            MsgFlags::empty(),
            None,
        )
        .expect("send exited");
        sendmsg::<()>(
            theirs.as_raw_fd(),
            &[std::io::IoSlice::new(&forked)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("send forked");
        let mut sock = FramedSocket::new(ours, "test").expect("framed");
        let first = sock.recv().await.expect("recv").expect("frame");
        let second = sock.recv().await.expect("recv").expect("frame");
        assert!(matches!(
            decode::<FromZygote>("test", &first.body),
            Ok(FromZygote::Exited { .. })
        ));
        assert!(first.fds.is_empty(), "exited must not take the socket");
        assert!(matches!(
            decode::<FromZygote>("test", &second.body),
            Ok(FromZygote::Forked { .. })
        ));
        assert_eq!(second.fds.len(), 1);
    }
}
