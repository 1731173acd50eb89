//! Lingering close: how a connection ends after the server answered without
//! reading the whole request (a 401, a 413 on the declared length, a 404 for
//! an unknown route).
//!
//! Closing at once would leave the client blocked writing the rest of its
//! body into a socket nobody reads: it gets a broken pipe (unix) or a reset
//! that can discard the answer it has not read yet (TCP), and never sees why
//! it was refused. So the server first ends its own side (the client reads
//! the answer and then end of file), then reads and throws away what the
//! client still sends, within bounds of time and bytes, as HTTP servers do
//! (nginx's `lingering_close`).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

/// How long and how much a closing connection is drained.
#[derive(Clone, Copy, Debug)]
pub struct Linger {
    /// The whole drain ends by then.
    pub total: Duration,
    /// The drain ends when nothing arrives for this long.
    pub idle: Duration,
    /// The drain ends after this many bytes.
    pub max_bytes: u64,
}

impl Default for Linger {
    fn default() -> Self {
        Linger {
            total: Duration::from_secs(5),
            idle: Duration::from_secs(1),
            max_bytes: 64 << 20,
        }
    }
}

/// Why a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client closed its side.
    Eof,
    /// Nothing arrived within `idle`.
    Idle,
    /// `total` passed.
    Time,
    /// `max_bytes` were read.
    Bytes,
    /// Reading failed (the client reset the connection).
    Error,
}

/// End the server's side of `io`, then drain what the client still sends.
/// Returns why the drain stopped and how many bytes it threw away; the
/// connection is closed when `io` is dropped by the caller.
pub async fn close<T>(io: &mut T, bounds: Linger) -> (Ended, u64)
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    if io.shutdown().await.is_err() {
        return (Ended::Error, 0);
    }
    let deadline = Instant::now() + bounds.total;
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0u64;
    loop {
        if read >= bounds.max_bytes {
            return (Ended::Bytes, read);
        }
        let idle_end = (Instant::now() + bounds.idle).min(deadline);
        match timeout_at(idle_end, io.read(&mut buf)).await {
            Ok(Ok(0)) => return (Ended::Eof, read),
            Ok(Ok(n)) => read += n as u64,
            Ok(Err(_)) => return (Ended::Error, read),
            Err(_) if Instant::now() >= deadline => return (Ended::Time, read),
            Err(_) => return (Ended::Idle, read),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    fn bounds(total_ms: u64, idle_ms: u64, max_bytes: u64) -> Linger {
        Linger {
            total: Duration::from_millis(total_ms),
            idle: Duration::from_millis(idle_ms),
            max_bytes,
        }
    }

    #[tokio::test]
    async fn the_client_sees_end_of_file_and_its_late_body_is_drained() {
        let (mut server, mut client) = duplex(1024);
        let writer = tokio::spawn(async move {
            // More than the pipe holds: this only finishes if someone reads.
            client.write_all(&[b'x'; 100_000]).await.unwrap();
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            drop(client);
            rest.len()
        });
        let (ended, read) = close(&mut server, bounds(5_000, 1_000, 1 << 20)).await;
        assert_eq!((ended, read), (Ended::Eof, 100_000));
        assert_eq!(
            writer.await.unwrap(),
            0,
            "the server's side was ended first"
        );
    }

    #[tokio::test]
    async fn a_silent_client_is_left_after_the_idle_bound() {
        let (mut server, _client) = duplex(1024);
        let started = std::time::Instant::now();
        let (ended, _) = close(&mut server, bounds(5_000, 50, 1 << 20)).await;
        assert_eq!(ended, Ended::Idle);
        assert!(started.elapsed() < Duration::from_secs(4));
    }

    #[tokio::test]
    async fn a_client_that_keeps_sending_is_cut_by_bytes_and_by_time() {
        let (mut server, mut client) = duplex(1024);
        let _writer =
            tokio::spawn(async move { while client.write_all(&[b'y'; 512]).await.is_ok() {} });
        let (ended, read) = close(&mut server, bounds(5_000, 1_000, 10_000)).await;
        assert_eq!(ended, Ended::Bytes);
        assert!(read >= 10_000);

        let (mut server, mut client) = duplex(1024);
        let _writer = tokio::spawn(async move {
            loop {
                if client.write_all(b"z").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        let (ended, _) = close(&mut server, bounds(100, 1_000, 1 << 30)).await;
        assert_eq!(ended, Ended::Time);
    }
}
