//! A TCP relay in front of a gRPC server that a test turns against the
//! server's clients: it can kill the server as a crash would (connections
//! drop, new ones are refused), black-hole it (nothing passes either way and
//! nothing closes), or lose the answers on the connections open now (what
//! clients send reaches the server; what it sends back vanishes).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::task::{AbortHandle, JoinHandle};

pub struct Front {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

#[derive(Default)]
struct Shared {
    /// Nothing passes, on any connection.
    dark: AtomicBool,
    /// Connections accepted so far (each one's number is its order).
    accepted: AtomicU64,
    /// Connections numbered below this lose what the server sends.
    answers_lost_below: AtomicU64,
    /// The relays of open connections, to kill.
    relays: Mutex<Vec<AbortHandle>>,
}

impl Front {
    /// Relays 127.0.0.1:<random> to `target`.
    pub async fn start(target: SocketAddr) -> Front {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let accept = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        continue;
                    };
                    let number = shared.accepted.fetch_add(1, Ordering::SeqCst);
                    let (ri, wi) = inbound.into_split();
                    let (ro, wo) = outbound.into_split();
                    let up = tokio::spawn(relay(ri, wo, shared.clone(), None));
                    let down = tokio::spawn(relay(ro, wi, shared.clone(), Some(number)));
                    let mut relays = shared.relays.lock().expect("relays");
                    relays.push(up.abort_handle());
                    relays.push(down.abort_handle());
                }
            })
        };
        Front {
            addr,
            shared,
            accept,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// As a crash: every connection drops, and new ones are refused.
    pub fn kill(&self) {
        self.accept.abort();
        for relay in self.shared.relays.lock().expect("relays").drain(..) {
            relay.abort();
        }
    }

    /// Every connection open now drops, as a network failure would; new
    /// ones are accepted.
    pub fn drop_connections(&self) {
        for relay in self.shared.relays.lock().expect("relays").drain(..) {
            relay.abort();
        }
    }

    /// Nothing passes from now on, and nothing is closed.
    pub fn black_hole(&self) {
        self.shared.dark.store(true, Ordering::SeqCst);
    }

    /// What the server sends on the connections open now is lost from now
    /// on; connections opened later pass everything.
    pub fn lose_answers(&self) {
        let accepted = self.shared.accepted.load(Ordering::SeqCst);
        self.shared
            .answers_lost_below
            .store(accepted, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Copies `from` to `to` until either closes; `answers` is the connection's
/// number when this is the server's side, whose bytes may be lost.
async fn relay(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    shared: Arc<Shared>,
    answers: Option<u64>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buffer).await {
        if n == 0 {
            return;
        }
        let lost = shared.dark.load(Ordering::SeqCst)
            || answers.is_some_and(|c| c < shared.answers_lost_below.load(Ordering::SeqCst));
        if !lost && to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}
