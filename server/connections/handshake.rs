//! A connection on probation: it must finish TLS (when on) and send the
//! HTTP/2 preface and its first SETTINGS frame before the handshake
//! timeout, or its next read fails and hyper closes it.
//!
//! The deadline is checked in `poll_read`, which hyper keeps pending on a
//! connection that has not spoken, so the timer wakes it without a task of
//! its own. After the first frame the connection is HTTP/2's to keep alive
//! (its keepalive pings end peers that stop answering).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::admission::Admitted;
use super::tls::Acceptor;
use crate::telemetry::metrics as telemetry;

/// The client preface (24 bytes) and a frame header (9 bytes).
const PREFACE: usize = 24;
const FRAME_HEADER: usize = 9;

enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection admitted under the caps, on probation until it has spoken.
pub struct Guarded {
    io: Io,
    info: TcpConnectInfo,
    /// Until the preface and first frame have been read.
    probation: Option<Probation>,
    admitted: Admitted,
}

struct Probation {
    deadline: Pin<Box<Sleep>>,
    /// Bytes read so far, and the first frame header's bytes.
    read: usize,
    header: [u8; FRAME_HEADER],
}

impl Probation {
    /// Takes what was just read; true once the first frame is complete.
    fn saw(&mut self, bytes: &[u8]) -> bool {
        for &b in bytes {
            if let Some(i) = self.read.checked_sub(PREFACE).filter(|i| *i < FRAME_HEADER) {
                self.header[i] = b;
            }
            self.read += 1;
        }
        if self.read < PREFACE + FRAME_HEADER {
            return false;
        }
        let length = u32::from_be_bytes([0, self.header[0], self.header[1], self.header[2]]);
        self.read >= PREFACE + FRAME_HEADER + length as usize
    }
}

/// Starts `stream`'s probation now: TLS through `tls` within `timeout`,
/// then the rest of the handshake within what is left of it.
pub(super) async fn start(
    stream: TcpStream,
    tls: Option<Acceptor>,
    timeout: Duration,
    admitted: Admitted,
) -> io::Result<Guarded> {
    let deadline = Instant::now() + timeout;
    let info = TcpConnectInfo {
        local_addr: stream.local_addr().ok(),
        remote_addr: stream.peer_addr().ok(),
    };
    let io = match tls {
        None => Io::Plain(stream),
        Some(tls) => {
            let accepted = tokio::time::timeout_at(deadline, tls.accept(stream))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?;
            Io::Tls(Box::new(accepted?))
        }
    };
    Ok(Guarded {
        io,
        info,
        probation: Some(Probation {
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            read: 0,
            header: [0; FRAME_HEADER],
        }),
        admitted,
    })
}

impl Connected for Guarded {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = match &mut this.io {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        let Some(probation) = &mut this.probation else {
            return read;
        };
        if let Poll::Ready(Ok(())) = &read {
            if probation.saw(&buf.filled()[before..]) {
                this.probation = None;
            }
            return read;
        }
        if read.is_pending() {
            ready!(probation.deadline.as_mut().poll(cx));
            this.admitted
                .connections
                .stats
                .handshake_timeouts
                .fetch_add(1, Ordering::Relaxed);
            metrics::counter!(telemetry::HANDSHAKE_TIMEOUTS).increment(1);
            tracing::debug!(peer = ?this.info.remote_addr, "closing a connection that did not finish its HTTP/2 handshake in time");
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no HTTP/2 preface and SETTINGS within the handshake timeout",
            )));
        }
        read
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().io {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probation() -> Probation {
        Probation {
            deadline: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            read: 0,
            header: [0; FRAME_HEADER],
        }
    }

    #[tokio::test]
    async fn the_first_frame_ends_probation_however_the_bytes_arrive() {
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // SETTINGS with two settings (12 bytes), then a WINDOW_UPDATE.
        bytes.extend_from_slice(&[0, 0, 12, 4, 0, 0, 0, 0, 0]);
        bytes.extend_from_slice(&[0; 12]);
        let first = bytes.len();
        bytes.extend_from_slice(&[0, 0, 4, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        for chunk in [1, 7, first, bytes.len()] {
            let mut p = probation();
            let mut done_at = None;
            for (i, piece) in bytes.chunks(chunk).enumerate() {
                if p.saw(piece) && done_at.is_none() {
                    done_at = Some((i + 1) * chunk);
                }
            }
            let done_at = done_at.expect("the frame completes");
            assert!(
                done_at >= first && done_at < first + chunk,
                "chunks of {chunk}: done at {done_at}"
            );
        }
        let mut p = probation();
        assert!(!p.saw(&bytes[..first - 1]), "one byte short of the frame");
    }
}
