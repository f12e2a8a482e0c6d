//! The unary load driver shared by `available` and `acquire`: runs one call
//! function over a set of connections for `--seconds`, either closed loop
//! (`--concurrency` callers, each with one call in flight) or open loop
//! (`--rate` calls started per second by a pacing thread), and collects the
//! latencies into a [`Run`]. Also opens the connections the callers use.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentry_client::Client;

use crate::Error;
use crate::cli::{Args, Load};
use crate::stats::{Done, Run};
use crate::{raw, setup};

/// A client (or connection) the callers share: cloned into each caller.
pub(crate) trait Shared: Clone + Send + 'static {}

impl<T: Clone + Send + 'static> Shared for T {}

/// What the loops call with a client: a closure, cloned into each caller,
/// whose call is a future they can spawn. Named once so that both loops ask
/// the same of it.
pub(crate) trait Call<C>: Clone + Send + 'static {
    type Future: Future<Output = Result<Done, Error>> + Send + 'static;

    fn call(&self, client: C) -> Self::Future;
}

impl<C, F, Fut> Call<C> for F
where
    F: Fn(C) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Done, Error>> + Send + 'static,
{
    type Future = Fut;

    fn call(&self, client: C) -> Fut {
        self(client)
    }
}

impl Load {
    /// Runs `call` over `clients` for `seconds`: from `concurrency` callers,
    /// or at `rate` calls per second.
    pub(crate) async fn run<C: Shared>(
        &self,
        clients: &[C],
        call: impl Call<C>,
    ) -> Result<Run, Error> {
        let started = Instant::now();
        let until = started + Duration::from_secs(self.seconds);
        let mut run = if self.rate > 0 {
            self.open_loop(clients, call, started, until).await?
        } else {
            self.closed_loop(clients, call, until).await?
        };
        run.elapsed = started.elapsed().as_secs_f64();
        Ok(run)
    }

    async fn closed_loop<C: Shared>(
        &self,
        clients: &[C],
        call: impl Call<C>,
        until: Instant,
    ) -> Result<Run, Error> {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..self.concurrency.max(1) {
            let (client, call) = (clients[i % clients.len()].clone(), call.clone());
            tasks.spawn(async move {
                let mut run = Run::default();
                loop {
                    let at = Instant::now();
                    if at >= until {
                        break;
                    }
                    let done = call.call(client.clone()).await?;
                    run.add(done, at.elapsed());
                }
                Ok::<_, Error>(run)
            });
        }
        let mut run = Run::default();
        while let Some(r) = tasks.join_next().await {
            run.merge(r??);
        }
        Ok(run)
    }

    /// A pacing thread starts each call at its due time (within the
    /// ~50 µs a thread's sleep takes; tokio's millisecond timers would start
    /// them in bursts, queueing calls behind each other in the load generator).
    /// A call's latency counts from its start, so a wait for one of the
    /// `concurrency` slots counts.
    async fn open_loop<C: Shared>(
        &self,
        clients: &[C],
        call: impl Call<C>,
        started: Instant,
        until: Instant,
    ) -> Result<Run, Error> {
        let slots = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (clients, rate) = (clients.to_vec(), self.rate as f64);
        let runtime = tokio::runtime::Handle::current();
        let pacer = tokio::task::spawn_blocking(move || {
            let mut started_calls = 0u64;
            loop {
                let now = Instant::now();
                if now >= until {
                    break;
                }
                let due = (now - started).as_secs_f64() * rate;
                while (started_calls as f64) < due {
                    let client = clients[started_calls as usize % clients.len()].clone();
                    let (call, slots, tx) = (call.clone(), slots.clone(), tx.clone());
                    runtime.spawn(async move {
                        let result = match slots.acquire_owned().await {
                            Ok(_slot) => call.call(client).await.map(|done| (done, now.elapsed())),
                            Err(e) => Err(e.into()),
                        };
                        // The receiver outlives every sender but the ones sent with.
                        let _ = tx.send(result);
                    });
                    started_calls += 1;
                }
                let next = started + Duration::from_secs_f64((started_calls as f64 + 1.0) / rate);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        pacer.await?;
        let mut run = Run::default();
        while let Some(result) = rx.recv().await {
            let (done, latency) = result?;
            run.add(done, latency);
        }
        Ok(run)
    }

    /// One bare HTTP/2 connection per `connections`.
    pub(crate) async fn connections(&self, args: &Args) -> Result<Vec<raw::Connection>, Error> {
        self.per_connection(|| raw::connect(&args.url)).await
    }

    /// One client per connection, all with `key`.
    pub(crate) async fn clients(&self, args: &Args, key: &str) -> Result<Vec<Client>, Error> {
        self.per_connection(|| setup::client(args, key)).await
    }

    /// `connect()` once per `connections` (at least once), one after another.
    async fn per_connection<T, E, Fut>(&self, connect: impl Fn() -> Fut) -> Result<Vec<T>, Error>
    where
        Fut: Future<Output = Result<T, E>>,
        Error: From<E>,
    {
        let mut out = Vec::new();
        for _ in 0..self.connections.max(1) {
            out.push(connect().await?);
        }
        Ok(out)
    }
}
