//! Tests of [`FramedSocket`](super::FramedSocket): descriptors, bounds, buffering.

use super::*;

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
    let mut sock = FramedSocket::new(ours, "worker", ChannelPolicy::worker(65536)).expect("framed");
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
    let mut sock = FramedSocket::new(ours, "control", ChannelPolicy::control()).expect("framed");
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
    let mut sock = FramedSocket::new(ours, "control", ChannelPolicy::control()).expect("framed");
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
    let pending = tokio::time::timeout(std::time::Duration::from_millis(200), sock.recv()).await;
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
