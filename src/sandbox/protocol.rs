//! Framed messages between the supervisor, the jail init, the zygote and the
//! workers. A frame is a 4-byte big-endian length and that many bytes of JSON;
//! every message is an object tagged by `"type"`. docs/protocol.md is the
//! reference; this file and `sandbox-image/zygote.py` implement it.

use std::collections::{BTreeMap, VecDeque};
use std::io::{Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::MsgFlags;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

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

fn cmsg_space(data: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic.
    unsafe { libc::CMSG_SPACE(u32::try_from(data).unwrap_or(u32::MAX)) as usize }
}

fn cmsg_len(data: usize) -> usize {
    // SAFETY: CMSG_LEN is pure arithmetic.
    unsafe { libc::CMSG_LEN(u32::try_from(data).unwrap_or(u32::MAX)) as usize }
}

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 64 * 1024;
/// Smallest read worth making without growing the buffer first.
const MIN_READ: usize = 4 * 1024;
/// A receive buffer emptied after a frame bigger than this is freed.
const KEEP_BUFFER: usize = 1 << 20;

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

/// One received frame with what came along with it.
#[derive(Debug)]
pub struct Frame {
    pub body: Vec<u8>,
    /// Descriptors received (SCM_RIGHTS) with this frame; always empty on a
    /// channel whose policy accepts none.
    pub fds: Vec<OwnedFd>,
    /// Sender's pid as seen in OUR pid namespace (SCM_CREDENTIALS).
    pub sender_pid: Option<i32>,
}

/// An async, framed unix stream socket (the supervisor's end of the control
/// and worker channels). What the peer may send besides bytes, and how big a
/// frame may be, is the channel's [`ChannelPolicy`]: descriptors beyond it are
/// closed on arrival, and any violation closes the channel for good.
pub struct FramedSocket {
    fd: AsyncFd<OwnedFd>,
    channel: &'static str,
    policy: ChannelPolicy,
    /// Received bytes not yet returned as frames: at most one incomplete
    /// frame and its header, so never more than `4 + policy.max_frame`.
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// Descriptors not yet handed out, each with the stream offset just past
    /// the read that delivered it.
    fds: VecDeque<(u64, OwnedFd)>,
    sender_pid: Option<i32>,
    eof: bool,
    /// A violation happened: every later `recv` fails without reading.
    poisoned: bool,
    /// Descriptors this end received against its policy (all closed).
    refused_fds: u64,
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
    pub fn new(
        fd: OwnedFd,
        channel: &'static str,
        policy: ChannelPolicy,
    ) -> Result<Self, ProtocolError> {
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
            policy,
            buf: Vec::new(),
            buf_start: 0,
            fds: VecDeque::new(),
            sender_pid: None,
            eof: false,
            poisoned: false,
            refused_fds: 0,
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }

    /// Descriptors received against the policy (each closed on arrival; the
    /// kernel discards those that did not fit without counting them here).
    pub fn refused_descriptors(&self) -> u64 {
        self.refused_fds
    }

    /// Bytes of memory the receive buffer holds (its capacity).
    pub fn buffered_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Drop everything received and not yet returned (the peer is being
    /// killed); later `recv`s fail.
    pub fn release(&mut self) {
        self.poisoned = true;
        self.buf = Vec::new();
        self.fds.clear();
    }

    fn violation(&mut self, error: ProtocolError) -> ProtocolError {
        self.release();
        error
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
            if self.poisoned {
                return Err(ProtocolError::Poisoned {
                    channel: self.channel,
                });
            }
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
        if len > self.policy.max_frame {
            let error = ProtocolError::FrameTooLarge {
                channel: self.channel,
                len,
                max: self.policy.max_frame,
            };
            return Err(self.violation(error));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let body = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
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

    /// One read from the socket. Only called when `buf` holds no complete
    /// frame, so `buf` is one incomplete frame (its length checked against
    /// the bound once the header is in) and every queued descriptor is that
    /// frame's.
    async fn fill(&mut self) -> Result<(), ProtocolError> {
        let channel = self.channel;
        // Never buffer more than one maximal frame: the peer's header is not
        // trusted for an allocation, the bytes it actually sent are, up to
        // this bound.
        let limit = 4 + self.policy.max_frame;
        let want = limit.saturating_sub(self.buf.len()).min(READ_CHUNK);
        if want == 0 {
            // Unreachable while take_frame checks every header; kept so a
            // broken invariant cannot grow the buffer.
            let error = ProtocolError::FrameTooLarge {
                channel,
                len: self.buf.len(),
                max: self.policy.max_frame,
            };
            return Err(self.violation(error));
        }
        reserve_bounded(&mut self.buf, want, limit);
        let want = want.min(self.buf.capacity() - self.buf.len());
        let control_len = self.policy.control_len();
        loop {
            let mut guard = self
                .fd
                .readable()
                .await
                .map_err(|source| ProtocolError::Io { channel, source })?;
            let buf = &mut self.buf;
            let result = guard.try_io(|inner| {
                let spare = &mut buf.spare_capacity_mut()[..want];
                recv_with_ancillary(inner.get_ref().as_raw_fd(), spare, control_len)
            });
            drop(guard);
            match result {
                Ok(Ok(received)) => return self.accept(received),
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

    /// Apply the policy to what one read delivered.
    fn accept(&mut self, received: Received) -> Result<(), ProtocolError> {
        let Received {
            bytes,
            fds,
            pid,
            truncated,
        } = received;
        let too_many = self.fds.len().saturating_add(fds.len()) > self.policy.max_fds;
        if truncated || too_many {
            // Closed right here (dropping the OwnedFds), never queued; the
            // bytes of this read are dropped with the channel.
            let count = fds.len();
            drop(fds);
            self.refused_fds = self.refused_fds.saturating_add(count as u64);
            let error = ProtocolError::Descriptors {
                channel: self.channel,
                received: count,
                truncated,
                allowed: self.policy.max_fds,
            };
            return Err(self.violation(error));
        }
        let read_end = self.buf_start + (self.buf.len() + bytes) as u64;
        self.fds.extend(fds.into_iter().map(|fd| (read_end, fd)));
        if pid.is_some() {
            self.sender_pid = pid;
        }
        if bytes == 0 {
            self.eof = true;
        } else {
            // SAFETY: recvmsg initialized the first `bytes` bytes of the
            // spare capacity (it returns at most the length it was given,
            // which is within the capacity reserved in fill).
            unsafe { self.buf.set_len(self.buf.len() + bytes) };
        }
        Ok(())
    }
}

/// Make room to read up to `want` more bytes without ever letting the
/// capacity pass `limit`: the spare capacity is used as long as a useful read
/// fits in it; otherwise grow by amortized doubling, clamped.
fn reserve_bounded(buf: &mut Vec<u8>, want: usize, limit: usize) {
    let spare = buf.capacity() - buf.len();
    if spare >= want.min(MIN_READ) {
        return;
    }
    let need = buf.len().saturating_add(want);
    let target = buf.capacity().saturating_mul(2).min(limit).max(need);
    buf.reserve_exact(target - buf.len());
}

/// What one `recvmsg` delivered.
#[derive(Debug)]
struct Received {
    bytes: usize,
    /// Descriptors the kernel installed (close-on-exec), now owned.
    fds: Vec<OwnedFd>,
    pid: Option<i32>,
    /// MSG_CTRUNC: the peer sent more ancillary data than the buffer holds;
    /// the kernel installed the descriptors that fit and closed the rest.
    truncated: bool,
}

/// `recvmsg` with a control buffer of exactly `control_len` bytes and
/// MSG_CMSG_CLOEXEC. Unlike nix's `RecvMsg::cmsgs` (which refuses to iterate
/// after MSG_CTRUNC, leaking whatever the kernel did install), this walks the
/// control messages the kernel wrote in every case, so every installed
/// descriptor becomes an `OwnedFd` the caller closes or keeps.
fn recv_with_ancillary(
    fd: RawFd,
    buf: &mut [MaybeUninit<u8>],
    control_len: usize,
) -> std::io::Result<Received> {
    // u64 storage: cmsghdr alignment.
    let mut control = vec![0u64; control_len.div_ceil(8).max(1)];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if control_len > 0 {
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = control_len as _;
    }
    // SAFETY: msg points at live buffers of the lengths it states.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let bytes = usize::try_from(n).unwrap_or(0);
    let mut fds = Vec::new();
    let mut pid = None;
    let control_start = control.as_ptr() as usize;
    let control_end = control_start + (msg.msg_controllen as usize).min(control_len);
    // SAFETY: the kernel wrote msg_controllen bytes of well-formed control
    // messages into `control`; CMSG_FIRSTHDR/CMSG_NXTHDR stay within them,
    // and each payload is checked against the end before it is read.
    unsafe {
        let mut cmsg = if control_len > 0 {
            libc::CMSG_FIRSTHDR(&msg)
        } else {
            std::ptr::null_mut()
        };
        while !cmsg.is_null() {
            let header = std::ptr::read_unaligned(cmsg);
            let data = libc::CMSG_DATA(cmsg);
            let data_len = (header.cmsg_len as usize).saturating_sub(cmsg_len(0));
            let data_len = data_len.min(control_end.saturating_sub(data as usize));
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                for i in 0..data_len / std::mem::size_of::<RawFd>() {
                    let raw = std::ptr::read_unaligned(
                        data.add(i * std::mem::size_of::<RawFd>()).cast::<RawFd>(),
                    );
                    // The kernel just installed this descriptor in our
                    // table for us; nothing else owns it.
                    fds.push(OwnedFd::from_raw_fd(raw));
                }
            } else if header.cmsg_level == libc::SOL_SOCKET
                && header.cmsg_type == libc::SCM_CREDENTIALS
                && data_len >= std::mem::size_of::<libc::ucred>()
            {
                let creds = std::ptr::read_unaligned(data.cast::<libc::ucred>());
                pid = Some(creds.pid);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok(Received {
        bytes,
        fds,
        pid,
        truncated: msg.msg_flags & libc::MSG_CTRUNC != 0,
    })
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

impl FromWorker {
    /// A short description for error messages (never the worker's content,
    /// which may be megabytes).
    pub fn kind(&self) -> String {
        match self {
            FromWorker::Hello { worker_id, .. } => format!("a hello of worker {worker_id}"),
            FromWorker::Result(reply) => format!("a result for cell {}", reply.cell),
        }
    }
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
        let mut sock = FramedSocket::new(ours, "test", ChannelPolicy::control()).expect("framed");
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

    use std::os::fd::AsFd;

    fn pair() -> (OwnedFd, OwnedFd) {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .expect("socketpair")
    }

    /// `count` pipes: our read ends, and their write ends to send away.
    fn pipes(count: usize) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
        (0..count)
            .map(|_| {
                nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                    .expect("pipe")
            })
            .unzip()
    }

    /// Every write end is closed everywhere in this process: each read end
    /// sees end-of-file (a write end still held would give EAGAIN).
    async fn all_closed(reads: &[OwnedFd]) -> bool {
        for _ in 0..100 {
            let closed = reads.iter().all(|r| {
                let mut byte = [0u8; 1];
                matches!(nix::unistd::read(r.as_fd(), &mut byte), Ok(0))
            });
            if closed {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    }

    fn send_with_fds(sock: &OwnedFd, bytes: &[u8], fds: &[OwnedFd]) {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[std::io::IoSlice::new(bytes)],
            &[ControlMessage::ScmRights(&raw)],
            MsgFlags::empty(),
            None,
        )
        .expect("sendmsg");
    }

    fn write_all(sock: &OwnedFd, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let n = nix::unistd::write(sock.as_fd(), bytes).expect("write");
            bytes = &bytes[n..];
        }
    }

    /// What Linux does with a control buffer too small for the descriptors
    /// sent: it installs those that fit, closes the rest, sets MSG_CTRUNC.
    /// nix's `cmsgs()` refuses to iterate then (the leak this reader had);
    /// ours hands back the installed one, and dropping it closes it.
    #[test]
    fn a_short_control_buffer_installs_what_fits_and_the_kernel_closes_the_rest() {
        let (ours, theirs) = pair();
        let (reads, writes) = pipes(3);
        send_with_fds(&theirs, b"x", &writes);
        drop(writes);
        let mut buf = [MaybeUninit::<u8>::uninit(); 16];
        let got = recv_with_ancillary(
            ours.as_raw_fd(),
            &mut buf,
            ChannelPolicy::control().control_len(),
        )
        .expect("recvmsg");
        assert_eq!(got.bytes, 1);
        assert!(got.truncated, "MSG_CTRUNC must be reported");
        assert_eq!(got.fds.len(), 1, "exactly the one descriptor that fits");
        assert!(
            nix::fcntl::fcntl(got.fds[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD)
                .is_ok_and(|flags| flags & libc::FD_CLOEXEC != 0),
            "installed close-on-exec"
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        assert!(
            rt.block_on(all_closed(&reads[1..])),
            "the kernel closed the descriptors that did not fit"
        );
        let mut byte = [0u8; 1];
        assert_eq!(
            nix::unistd::read(reads[0].as_fd(), &mut byte),
            Err(nix::errno::Errno::EAGAIN),
            "the installed one keeps its pipe open"
        );
        drop(got);
        assert!(rt.block_on(all_closed(&reads[..1])), "dropped = closed");
    }

    #[tokio::test]
    async fn descriptors_on_a_worker_channel_are_closed_and_poison_it() {
        use nix::sys::socket::{setsockopt, sockopt::PassCred};
        let (ours, theirs) = pair();
        setsockopt(&ours, PassCred, &true).expect("SO_PASSCRED");
        let (reads, writes) = pipes(250);
        let hello = encode(&ToWorker::Exit);
        send_with_fds(&theirs, &hello, &writes);
        drop(writes);
        let mut sock =
            FramedSocket::new(ours, "worker", ChannelPolicy::worker(65536)).expect("framed");
        let err = sock.recv().await.expect_err("descriptors are a violation");
        assert!(
            matches!(
                err,
                ProtocolError::Descriptors {
                    truncated: true,
                    allowed: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_violation());
        assert!(all_closed(&reads).await, "the supervisor kept a descriptor");
        // The channel stays closed, even for a well-formed frame.
        write_all(&theirs, &encode(&ToWorker::Exit));
        assert!(matches!(
            sock.recv().await,
            Err(ProtocolError::Poisoned { .. })
        ));
        assert_eq!(sock.buffered_capacity(), 0, "nothing stays buffered");
    }

    #[tokio::test]
    async fn the_control_channel_takes_one_descriptor_per_frame_not_more() {
        let (ours, theirs) = pair();
        let mut sock =
            FramedSocket::new(ours, "control", ChannelPolicy::control()).expect("framed");
        let forked = encode(&FromZygote::Forked {
            worker_id: 1,
            pid: 2,
        });
        let (reads, writes) = pipes(3);
        send_with_fds(&theirs, &forked, &writes[..1]);
        let frame = sock.recv().await.expect("recv").expect("frame");
        assert_eq!(frame.fds.len(), 1);
        drop(frame);
        send_with_fds(&theirs, &forked, &writes[1..]);
        drop(writes);
        let err = sock.recv().await.expect_err("two descriptors in one frame");
        assert!(
            matches!(
                err,
                ProtocolError::Descriptors {
                    received: 1,
                    truncated: true,
                    allowed: 1,
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(sock.refused_descriptors(), 1);
        assert!(all_closed(&reads).await, "a descriptor stayed open");
    }

    #[tokio::test]
    async fn the_frame_bound_is_per_channel_and_checked_on_the_header() {
        let small = ChannelPolicy {
            max_frame: 1000,
            max_fds: 0,
            credentials: false,
        };
        let body = vec![b' '; 1001];
        let mut header_only = Vec::new();
        header_only.extend_from_slice(&1001u32.to_be_bytes());
        // Small channel: refused from the header alone, the body never sent.
        let (ours, theirs) = pair();
        let mut sock = FramedSocket::new(ours, "worker", small).expect("framed");
        write_all(&theirs, &header_only);
        let err = sock.recv().await.expect_err("too large");
        assert!(
            matches!(
                err,
                ProtocolError::FrameTooLarge {
                    len: 1001,
                    max: 1000,
                    ..
                }
            ),
            "{err}"
        );
        // The control channel's bound is larger: the same frame passes.
        let (ours, theirs) = pair();
        let mut sock =
            FramedSocket::new(ours, "control", ChannelPolicy::control()).expect("framed");
        write_all(&theirs, &header_only);
        write_all(&theirs, &body);
        let frame = sock.recv().await.expect("recv").expect("frame");
        assert_eq!(frame.body.len(), 1001);
        // The worker bound follows the output cap, within the ceiling.
        assert_eq!(worker_frame_limit(65536), 6 << 20);
        assert_eq!(worker_frame_limit(u64::MAX), MAX_FRAME);
        assert!(ChannelPolicy::worker(1).max_frame < CONTROL_MAX_FRAME * 5);
    }

    #[tokio::test]
    async fn an_announced_length_allocates_nothing_and_buffering_stays_bounded() {
        let policy = ChannelPolicy {
            max_frame: 60 << 20,
            max_fds: 0,
            credentials: false,
        };
        let (ours, theirs) = pair();
        let mut sock = FramedSocket::new(ours, "worker", policy).expect("framed");
        write_all(&theirs, &(60u32 << 20).to_be_bytes());
        write_all(&theirs, b"{\"type\"");
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(200), sock.recv()).await;
        assert!(pending.is_err(), "an incomplete frame is not returned");
        assert!(
            sock.buffered_capacity() <= READ_CHUNK,
            "{} bytes reserved for a 60 MiB announcement",
            sock.buffered_capacity()
        );

        // A peer that sends more than a frame can hold never makes us buffer
        // more than one maximal frame.
        let policy = ChannelPolicy {
            max_frame: 100_000,
            max_fds: 0,
            credentials: false,
        };
        let (ours, theirs) = pair();
        let mut sock = FramedSocket::new(ours, "worker", policy).expect("framed");
        let writer = std::thread::spawn(move || {
            let mut frame = 100_000u32.to_be_bytes().to_vec();
            frame.extend(std::iter::repeat_n(b'x', 100_000));
            for _ in 0..3 {
                write_all(&theirs, &frame);
            }
            theirs
        });
        for _ in 0..3 {
            let frame = sock.recv().await.expect("recv").expect("frame");
            assert_eq!(frame.body.len(), 100_000);
            assert!(sock.buffered_capacity() <= 4 + 100_000);
        }
        drop(writer.join().expect("writer"));
    }
}
