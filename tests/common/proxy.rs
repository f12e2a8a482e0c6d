//! A TCP proxy in front of PostgreSQL that a test can cut and restore, to
//! simulate a database outage without touching the shared server.
//!
//! It also reads what clients send (the frontend half of the wire protocol),
//! so a test can count the statements PostgreSQL was asked to run, see their
//! text, and hold back what PostgreSQL sends to a connection that ran
//! `LISTEN` (a change feed running late), or a statement on its way to
//! PostgreSQL (a write in flight while the network is slow).
//!
//! It can also stand for a load balancer whose backend is gone: it accepts
//! new connections and resets them ([`Proxy::reset_new`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Protocol codes of the untyped packets that may open a connection.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// What the proxy does with a connection it accepts while it resets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reset {
    /// Reads the client's first packet (its SSLRequest, or its startup
    /// message), then closes: the client reads end of file where the answer
    /// should be.
    AfterFirstPacket,
    /// Reads the first packet, then aborts the connection (a TCP RST).
    Abort,
}

/// [`Shared::reset`]: accepted connections are relayed.
const RELAY: u8 = 0;

struct Shared {
    up: AtomicBool,
    /// [`RELAY`], or a [`Reset`] as `1 + its index`.
    reset: AtomicU8,
    /// While non-empty, a client's bytes that complete a statement whose
    /// text contains one of these wait before they go on to PostgreSQL.
    held: watch::Sender<Vec<String>>,
    /// Statements waiting in the proxy now because of `held`.
    holding: AtomicUsize,
    generation: watch::Sender<u64>,
    /// While true, nothing PostgreSQL sends reaches a connection that ran LISTEN.
    hold: watch::Sender<bool>,
    /// Connections open through the proxy.
    open: AtomicUsize,
    /// Open connections that ran LISTEN.
    listening: AtomicUsize,
    /// The text of every statement run, in order (see [`Proxy::statements`]).
    statements: Mutex<Vec<String>>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<random> to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared {
            up: AtomicBool::new(true),
            reset: AtomicU8::new(RELAY),
            held: watch::channel(Vec::new()).0,
            holding: AtomicUsize::new(0),
            generation: watch::channel(0).0,
            hold: watch::channel(false).0,
            open: AtomicUsize::new(0),
            listening: AtomicUsize::new(0),
            statements: Mutex::default(),
        });
        let task = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Ok((inbound, _)) = listener.accept().await {
                    if !shared.up.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let reset = match shared.reset.load(Ordering::SeqCst) {
                        RELAY => None,
                        1 => Some(Reset::AfterFirstPacket),
                        _ => Some(Reset::Abort),
                    };
                    if let Some(reset) = reset {
                        tokio::spawn(turn_away(inbound, reset));
                        continue;
                    }
                    let mut cut = shared.generation.subscribe();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let Ok(outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        shared.open.fetch_add(1, Ordering::SeqCst);
                        let connection = Connection::new(shared.clone());
                        tokio::select! {
                            _ = connection.relay(inbound, outbound) => {}
                            _ = cut.changed() => {}
                        }
                        shared.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            })
        };
        Proxy { addr, shared, task }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.shared.up.store(false, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Accepts connections again, and relays them.
    pub fn restore(&self) {
        self.shared.reset.store(RELAY, Ordering::SeqCst);
        self.shared.up.store(true, Ordering::SeqCst);
    }

    /// Drops every open connection; new ones are accepted and then reset as
    /// `how` says, until [`Proxy::restore`].
    pub fn reset_new(&self, how: Reset) {
        let code = match how {
            Reset::AfterFirstPacket => 1,
            Reset::Abort => 2,
        };
        self.shared.reset.store(code, Ordering::SeqCst);
        self.shared.up.store(true, Ordering::SeqCst);
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// Holds back, before they reach PostgreSQL, the statements whose text
    /// contains `like` (and whatever their clients send after them), until
    /// [`Proxy::release_statements`].
    pub fn hold_statements(&self, like: &str) {
        self.shared.held.send_modify(|h| h.push(like.to_owned()));
    }

    /// Passes the held statements on, and what follows them.
    pub fn release_statements(&self) {
        self.shared.held.send_replace(Vec::new());
    }

    /// Statements held back in the proxy now (see [`Proxy::hold_statements`]).
    pub fn holding(&self) -> usize {
        self.shared.holding.load(Ordering::SeqCst)
    }

    /// Connections open through the proxy now.
    pub fn connections(&self) -> usize {
        self.shared.open.load(Ordering::SeqCst)
    }

    /// Open connections that ran `LISTEN` (a server's change feed).
    pub fn listening(&self) -> usize {
        self.shared.listening.load(Ordering::SeqCst)
    }

    /// Holds back everything PostgreSQL sends to connections that ran
    /// `LISTEN`, notifications included, until [`Proxy::release_listeners`].
    pub fn hold_listeners(&self) {
        self.shared.hold.send_replace(true);
    }

    /// Passes on what was held back, and what follows.
    pub fn release_listeners(&self) {
        self.shared.hold.send_replace(false);
    }

    /// How many statements clients have had PostgreSQL run so far: simple
    /// `Query` and extended-protocol `Execute` messages. A mark for
    /// [`Proxy::statements_since`].
    pub fn statements(&self) -> usize {
        self.log().len()
    }

    /// The text of the statements run since `mark` (a [`Proxy::statements`] count).
    pub fn statements_since(&self, mark: usize) -> Vec<String> {
        self.log().get(mark..).unwrap_or_default().to_vec()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.shared
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads the first packet of a connection the proxy turns away, then
/// closes or aborts it as `how` says.
async fn turn_away(mut inbound: TcpStream, how: Reset) {
    let mut header = [0u8; 8];
    if inbound.read_exact(&mut header).await.is_err() {
        return;
    }
    let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let mut rest = vec![0u8; length.saturating_sub(8).min(64 * 1024)];
    let _ = inbound.read_exact(&mut rest).await;
    match how {
        Reset::AfterFirstPacket => {
            let _ = inbound.shutdown().await;
        }
        Reset::Abort => {
            let _ = inbound.set_zero_linger();
        }
    }
}

/// One client connection being relayed.
struct Connection {
    shared: Arc<Shared>,
    /// Whether this client ran LISTEN.
    listener: AtomicBool,
}

impl Connection {
    fn new(shared: Arc<Shared>) -> Self {
        Connection {
            shared,
            listener: AtomicBool::new(false),
        }
    }

    /// Relays both ways until either side closes.
    async fn relay(&self, inbound: TcpStream, outbound: TcpStream) {
        let (mut from_client, mut to_client) = inbound.into_split();
        let (from_server, mut to_server) = outbound.into_split();
        let Ok(opaque) = self
            .open(&mut from_client, &mut to_client, &mut to_server)
            .await
        else {
            return;
        };
        tokio::select! {
            _ = self.upstream(from_client, to_server, opaque) => {}
            _ = self.downstream(from_server, to_client) => {}
        }
    }

    /// Passes the untyped packets that open a connection (the startup
    /// message) on. An SSL or GSSAPI encryption request is declined here,
    /// so the conversation stays readable. Returns whether what follows
    /// cannot be read as typed messages (a cancel request).
    async fn open(
        &self,
        from_client: &mut OwnedReadHalf,
        to_client: &mut OwnedWriteHalf,
        to_server: &mut OwnedWriteHalf,
    ) -> std::io::Result<bool> {
        loop {
            let mut header = [0u8; 8];
            from_client.read_exact(&mut header).await?;
            let length = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
            let code = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
            if matches!(code, SSL_REQUEST | GSSENC_REQUEST) {
                // "N": no encryption; the client goes on with its startup message.
                to_client.write_all(b"N").await?;
                continue;
            }
            let mut rest = vec![0u8; length.saturating_sub(8)];
            from_client.read_exact(&mut rest).await?;
            to_server.write_all(&header).await?;
            to_server.write_all(&rest).await?;
            return Ok(code == CANCEL_REQUEST);
        }
    }

    /// Client to PostgreSQL: reads the typed messages (1 type byte, then a
    /// 4-byte big-endian length that counts itself) and forwards at once,
    /// unless they complete a statement the proxy holds.
    async fn upstream(
        &self,
        mut from_client: OwnedReadHalf,
        mut to_server: OwnedWriteHalf,
        opaque: bool,
    ) -> std::io::Result<()> {
        let mut parser = Frontend::default();
        let mut held = self.shared.held.subscribe();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = from_client.read(&mut buffer).await?;
            if n == 0 {
                return Ok(());
            }
            let statements = if opaque {
                Vec::new()
            } else {
                parser.feed(&buffer[..n])
            };
            let holds = |likes: &Vec<String>| {
                statements
                    .iter()
                    .any(|s| likes.iter().any(|like| s.contains(like.as_str())))
            };
            if holds(&held.borrow_and_update()) {
                self.shared.holding.fetch_add(1, Ordering::SeqCst);
                let _ = held.wait_for(|likes| !holds(likes)).await;
                self.shared.holding.fetch_sub(1, Ordering::SeqCst);
            }
            to_server.write_all(&buffer[..n]).await?;
            for statement in statements {
                self.ran(statement);
            }
        }
    }

    fn ran(&self, statement: String) {
        if statement
            .trim_start()
            .to_ascii_uppercase()
            .starts_with("LISTEN")
            && !self.listener.swap(true, Ordering::SeqCst)
        {
            self.shared.listening.fetch_add(1, Ordering::SeqCst);
        }
        self.shared
            .statements
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(statement);
    }

    /// PostgreSQL to client, held back while this is a listener and the proxy holds listeners.
    async fn downstream(
        &self,
        mut from_server: OwnedReadHalf,
        mut to_client: OwnedWriteHalf,
    ) -> std::io::Result<()> {
        let mut hold = self.shared.hold.subscribe();
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = from_server.read(&mut buffer).await?;
            if n == 0 {
                return Ok(());
            }
            if self.listener.load(Ordering::SeqCst) {
                let _ = hold.wait_for(|held| !*held).await;
            }
            to_client.write_all(&buffer[..n]).await?;
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.listener.load(Ordering::SeqCst) {
            self.shared.listening.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Reads a client's typed messages out of the bytes it sends. Prepared
/// statements are remembered by name so that an `Execute` can be named by
/// the text of the statement bound to its portal.
#[derive(Default)]
struct Frontend {
    pending: Vec<u8>,
    /// Prepared statements by name ("" is the unnamed one).
    prepared: HashMap<String, String>,
    /// The statement bound to each portal ("" is the unnamed one).
    portals: HashMap<String, String>,
}

impl Frontend {
    /// Takes the next bytes; returns the statements they complete (their text).
    fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        self.pending.extend_from_slice(bytes);
        let mut messages = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= 5 {
            let kind = self.pending[at];
            let length = u32::from_be_bytes([
                self.pending[at + 1],
                self.pending[at + 2],
                self.pending[at + 3],
                self.pending[at + 4],
            ]) as usize;
            let end = at + 1 + length;
            if length < 4 || self.pending.len() < end {
                break;
            }
            let body = self.pending[at + 5..end].to_vec();
            at = end;
            let mut fields = body
                .split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned());
            let mut field = || fields.next().unwrap_or_default();
            match kind {
                b'Q' => messages.push(field()),
                b'P' => {
                    let (name, text) = (field(), field());
                    self.prepared.insert(name, text);
                }
                b'B' => {
                    let (portal, statement) = (field(), field());
                    let text = self.prepared.get(&statement).cloned().unwrap_or_default();
                    self.portals.insert(portal, text);
                }
                b'E' => {
                    let text = self.portals.get(&field()).cloned().unwrap_or_default();
                    messages.push(text);
                }
                _ => {}
            }
        }
        self.pending.drain(..at);
        messages
    }
}
