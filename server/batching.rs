//! The batching skeleton of the writers that streams feed: the state
//! changes of health streams (`registrations/writer.rs`) and their load
//! reports (`registrations/load_writer.rs`).
//!
//! Thousands of streams each cause a change now and then; one statement per
//! change would queue them on the pool. A [`Batcher`] keeps what waits by
//! key (an instance), so a later change of the same key supersedes an
//! earlier one still waiting ([`Pending::merge`] says how the two combine),
//! and hands its writer batches of the changes waiting longest. A batch that
//! fails goes back into the queue, under anything newer that came meanwhile,
//! and is tried again with backoff for as long as the database is away:
//! nothing is dropped but what a newer change supersedes. Every writer
//! counts the same way (`agentry_writer_queue`, the batch metrics of
//! `telemetry`, [`BatchStats`]).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::sync::{Mutex, mpsc, watch};

use crate::error::Result;
use crate::telemetry::metrics as telemetry;

/// First and longest pause before a failed batch is tried again.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// A change that waits in a [`Batcher`].
pub trait Pending: Clone + Send + std::fmt::Debug + 'static {
    /// What a later change supersedes an earlier one of.
    type Key: Copy + Eq + Hash + Send + std::fmt::Debug;
    fn key(&self) -> Self::Key;
    /// `newer` in place of `older`, of the same key, keeping what `older`
    /// carries that `newer` does not supersede (or `older` itself when it
    /// belongs to something newer, say a later epoch).
    fn merge(newer: Self, older: &Self) -> Self;
}

/// Counters every writer keeps.
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Batches that landed.
    pub batches: AtomicU64,
    /// Changes those batches carried.
    pub changes: AtomicU64,
    /// Batches that failed and were tried again.
    pub retries: AtomicU64,
}

/// A change and its turn: when the queue first took a change of its key
/// that still waits.
#[derive(Debug)]
struct Queued<P> {
    change: P,
    turn: u64,
}

#[derive(Debug)]
struct Queue<P: Pending> {
    rx: mpsc::UnboundedReceiver<P>,
    pending: HashMap<P::Key, Queued<P>>,
    turns: u64,
}

impl<P: Pending> Queue<P> {
    /// Adds `change`, taken now (`newer`) or put back after a failed batch.
    fn keep(&mut self, change: P, turn: Option<u64>, newer: bool) {
        let turn = turn.unwrap_or_else(|| {
            self.turns += 1;
            self.turns
        });
        let key = change.key();
        let queued = match self.pending.remove(&key) {
            None => Queued { change, turn },
            Some(waiting) => Queued {
                turn: turn.min(waiting.turn),
                change: if newer {
                    P::merge(change, &waiting.change)
                } else {
                    P::merge(waiting.change, &change)
                },
            },
        };
        self.pending.insert(key, queued);
    }

    fn take_queued(&mut self) {
        while let Ok(change) = self.rx.try_recv() {
            self.keep(change, None, true);
        }
    }

    /// The changes waiting longest, at most `max` (with their turns).
    fn batch(&mut self, max: usize) -> Vec<(P, u64)> {
        let keys: Vec<P::Key> = if self.pending.len() <= max {
            self.pending.keys().copied().collect()
        } else {
            let mut turns: Vec<(u64, P::Key)> =
                self.pending.iter().map(|(k, q)| (q.turn, *k)).collect();
            turns.select_nth_unstable_by_key(max, |(turn, _)| *turn);
            turns[..max].iter().map(|(_, k)| *k).collect()
        };
        keys.iter()
            .filter_map(|k| self.pending.remove(k))
            .map(|q| (q.change, q.turn))
            .collect()
    }
}

/// The queue of one writer; [`Batcher::run`] is the task behind it.
#[derive(Debug)]
pub struct Batcher<P: Pending> {
    /// The writer's name in metrics and logs.
    name: &'static str,
    max_batch: usize,
    tx: mpsc::UnboundedSender<P>,
    queue: Mutex<Queue<P>>,
    closing: watch::Sender<bool>,
    /// Counters.
    pub stats: BatchStats,
}

impl<P: Pending> Batcher<P> {
    /// A queue for the writer `name`, whose batches carry at most `max_batch`.
    pub fn new(name: &'static str, max_batch: usize) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Batcher {
            name,
            max_batch,
            tx,
            queue: Mutex::new(Queue {
                rx,
                pending: HashMap::new(),
                turns: 0,
            }),
            closing: watch::channel(false).0,
            stats: BatchStats::default(),
        }
    }

    /// Queues `change`; it lands later.
    pub fn push(&self, change: P) {
        // The receiver lives as long as the batcher: this cannot fail.
        let _ = self.tx.send(change);
    }

    /// Hands batches to `write` until [`Batcher::close`] was called and
    /// nothing is left, at most one batch per `pace` (zero: as soon as the
    /// last one landed), so that what comes within one `pace` is written
    /// once. A batch `write` fails is queued again and retried with backoff.
    pub async fn run<F, Fut>(&self, pace: Duration, mut write: F)
    where
        F: FnMut(Vec<P>) -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let mut queue = self.queue.lock().await;
        let mut closing = self.closing.subscribe();
        let mut pause = RETRY_MIN;
        let mut next = tokio::time::Instant::now();
        loop {
            if queue.pending.is_empty() {
                metrics::gauge!(telemetry::WRITER_QUEUE, "writer" => self.name).set(0.0);
                let mut first = Vec::new();
                tokio::select! {
                    n = queue.rx.recv_many(&mut first, self.max_batch) => if n == 0 { return },
                    _ = closing.wait_for(|c| *c) => {
                        queue.take_queued();
                        if queue.pending.is_empty() {
                            return;
                        }
                    }
                }
                for change in first {
                    queue.keep(change, None, true);
                }
            }
            if !*closing.borrow() {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    _ = closing.wait_for(|c| *c) => {}
                }
            }
            queue.take_queued();
            let batch = queue.batch(self.max_batch);
            // The channel is unbounded and its sender cannot count: the
            // depth is what this task saw when it took the batch.
            metrics::gauge!(telemetry::WRITER_QUEUE, "writer" => self.name)
                .set((batch.len() + queue.pending.len()) as f64);
            let started = std::time::Instant::now();
            let changes = batch.iter().map(|(c, _)| c.clone()).collect();
            next = tokio::time::Instant::now() + pace;
            match write(changes).await {
                Ok(()) => {
                    telemetry::batch_landed(self.name, batch.len(), started.elapsed());
                    self.stats.batches.fetch_add(1, Relaxed);
                    self.stats.changes.fetch_add(batch.len() as u64, Relaxed);
                    pause = RETRY_MIN;
                }
                Err(e) => {
                    telemetry::batch_failed(self.name);
                    self.stats.retries.fetch_add(1, Relaxed);
                    tracing::warn!(
                        error = %e, writer = self.name, changes = batch.len(), retry_in = ?pause,
                        "changes not written yet; retrying"
                    );
                    for (change, turn) in batch {
                        queue.keep(change, Some(turn), false);
                    }
                    // Keep taking changes while waiting: merged by key, what
                    // waits stays one change per key however long the
                    // database is away, not everything the streams sent.
                    let until = tokio::time::Instant::now() + pause;
                    loop {
                        let mut more = Vec::new();
                        tokio::select! {
                            () = tokio::time::sleep_until(until) => break,
                            n = queue.rx.recv_many(&mut more, self.max_batch) => {
                                if n == 0 {
                                    break;
                                }
                                for change in more {
                                    queue.keep(change, None, true);
                                }
                            }
                        }
                    }
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Lets [`Batcher::run`] return once it has written everything queued.
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Changes queued or waiting for a retry; exact only once `run` returned.
    pub fn unwritten(&self) -> usize {
        self.queue
            .try_lock()
            .map(|q| q.pending.len() + q.rx.len())
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Debug, Clone, PartialEq)]
    struct Change {
        key: u32,
        epoch: i64,
        value: Option<u32>,
        note: Option<u32>,
    }

    impl Pending for Change {
        type Key = u32;
        fn key(&self) -> u32 {
            self.key
        }
        fn merge(mut newer: Self, older: &Self) -> Self {
            if older.epoch > newer.epoch {
                return older.clone();
            }
            if older.epoch == newer.epoch {
                newer.value = newer.value.or(older.value);
                newer.note = newer.note.or(older.note);
            }
            newer
        }
    }

    fn change(key: u32, epoch: i64, value: Option<u32>, note: Option<u32>) -> Change {
        Change {
            key,
            epoch,
            value,
            note,
        }
    }

    fn queue() -> Queue<Change> {
        Queue {
            rx: mpsc::unbounded_channel().1,
            pending: HashMap::new(),
            turns: 0,
        }
    }

    #[test]
    fn a_batch_takes_the_changes_waiting_longest() {
        let mut q = queue();
        q.keep(change(0, 1, Some(0), None), None, true);
        for key in 1..=200 {
            q.keep(change(key, 1, Some(key), None), None, true);
        }
        // A newer change of the first key keeps its turn.
        q.keep(change(0, 1, Some(9), None), None, true);
        let mut keys: Vec<u32> = q.batch(100).iter().map(|(c, _)| c.key).collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..100).collect::<Vec<_>>());
        assert_eq!(q.batch(100).len(), 100);
        assert_eq!(q.batch(100).len(), 1);
    }

    #[test]
    fn newer_changes_supersede_and_a_failed_batch_fills_only_the_gaps() {
        let mut q = queue();
        q.keep(change(1, 1, Some(1), None), None, true);
        let failed = q.batch(10);
        // Meanwhile: a note of the same epoch, and a change of a later epoch of key 2.
        q.keep(change(1, 1, None, Some(5)), None, true);
        q.keep(change(2, 3, Some(30), None), None, true);
        for (c, turn) in failed {
            q.keep(c, Some(turn), false);
        }
        q.keep(change(2, 2, Some(20), Some(2)), None, false);
        let mut batch: Vec<Change> = q.batch(10).into_iter().map(|(c, _)| c).collect();
        batch.sort_by_key(|c| c.key);
        assert_eq!(
            batch,
            vec![change(1, 1, Some(1), Some(5)), change(2, 3, Some(30), None)]
        );
    }

    #[tokio::test]
    async fn a_failed_batch_is_retried_until_it_lands_and_close_waits_for_it() {
        let batcher = Arc::new(Batcher::<Change>::new("test", 10));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let failures = Arc::new(AtomicU64::new(2));
        let task = tokio::spawn({
            let (batcher, written, failures) = (batcher.clone(), written.clone(), failures.clone());
            async move {
                batcher
                    .run(Duration::ZERO, |batch| {
                        let (written, failures) = (written.clone(), failures.clone());
                        async move {
                            if failures.load(Relaxed) > 0 {
                                failures.fetch_sub(1, Relaxed);
                                return Err(crate::error::Error::DatabaseUnavailable);
                            }
                            written.lock().unwrap().extend(batch);
                            Ok(())
                        }
                    })
                    .await
            }
        });
        batcher.push(change(7, 1, Some(1), None));
        batcher.close();
        task.await.unwrap();
        assert_eq!(*written.lock().unwrap(), vec![change(7, 1, Some(1), None)]);
        assert_eq!(batcher.stats.retries.load(Relaxed), 2);
        assert_eq!(batcher.unwritten(), 0);
    }
}
