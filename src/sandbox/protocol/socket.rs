//! [`FramedSocket`]: the async, bounded reader and writer of one channel,
//! with descriptor and credential passing (`SCM_RIGHTS`, `SCM_CREDENTIALS`).

use super::*;

/// Bytes asked of the kernel per read.
pub(super) const READ_CHUNK: usize = 64 * 1024;
/// Smallest read worth making without growing the buffer first.
pub(super) const MIN_READ: usize = 4 * 1024;
/// A receive buffer emptied after a frame bigger than this is freed.
pub(super) const KEEP_BUFFER: usize = 1 << 20;

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

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
