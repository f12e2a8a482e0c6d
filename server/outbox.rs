//! A queue of messages for one subscriber of a server stream, bounded in
//! bytes rather than in messages.
//!
//! A count bound says nothing about memory: sixty-four watch events of a
//! 92 KB entry are 6 MB, sixteen health-stream responses carrying a
//! configuration with a large prompt are as many megabytes. Here a message
//! is queued only while fewer than the budget's bytes wait, so at most the
//! budget plus one message is ever held. The stream hands messages to the
//! transport as it asks for them; tonic encodes them into HTTP/2, whose
//! send buffer per stream hyper bounds, and whose flow control stops when
//! the peer stops reading, so a subscriber that does not read is held to
//! its budget here, whatever it is sent.
//!
//! [`Outbox::finish`] ends a stream after what is queued with a last
//! message (a status), whatever room is left; [`Outbox::cut`] cuts a
//! subscriber off: what is queued is dropped at once (the memory comes back
//! even if the peer never reads again) and the last message is what the
//! stream sends next.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio_stream::Stream;

/// The sending half: clone it to queue from several tasks. The stream ends
/// when every clone is dropped.
#[derive(Debug)]
pub struct Outbox<T> {
    shared: Arc<Shared<T>>,
}

/// The receiving half, a stream of what was queued, in order.
#[derive(Debug)]
pub struct Inbox<T> {
    shared: Arc<Shared<T>>,
}

/// Why a message was not queued; it comes back with the error.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused<T> {
    /// The budget is taken: the subscriber is not reading.
    Full(T),
    /// The stream is gone or was ended.
    Closed(T),
}

#[derive(Debug)]
struct Shared<T> {
    state: Mutex<State<T>>,
    /// Woken when bytes leave the queue or the stream goes.
    room: Notify,
    budget: usize,
}

#[derive(Debug)]
struct State<T> {
    queue: VecDeque<(T, usize)>,
    queued: usize,
    /// Sent after the queue, by `end`.
    last: Option<T>,
    ended: bool,
    senders: usize,
    gone: bool,
    reader: Option<Waker>,
}

/// An outbox of `budget` bytes and its stream.
pub fn outbox<T>(budget: usize) -> (Outbox<T>, Inbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            queued: 0,
            last: None,
            ended: false,
            senders: 1,
            gone: false,
            reader: None,
        }),
        room: Notify::new(),
        budget: budget.max(1),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

impl<T> Shared<T> {
    fn state(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock is held leaves a queue that is still whole.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T> Outbox<T> {
    /// Queues `message` of `bytes` once the queue has room; `Err` gives it
    /// back when the stream is gone or ended.
    pub async fn send(&self, mut message: T, bytes: usize) -> Result<(), T> {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            // Registered before looking, so that room made meanwhile wakes it.
            room.as_mut().enable();
            match self.try_send(message, bytes) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(m)) => return Err(m),
                Err(Refused::Full(m)) => {
                    message = m;
                    room.await;
                }
            }
        }
    }

    /// Queues `message` of `bytes` if the queue has room now.
    pub fn try_send(&self, message: T, bytes: usize) -> Result<(), Refused<T>> {
        let mut state = self.shared.state();
        if state.gone || state.ended {
            return Err(Refused::Closed(message));
        }
        if state.queued >= self.shared.budget {
            return Err(Refused::Full(message));
        }
        state.queued += bytes;
        state.queue.push_back((message, bytes));
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
        Ok(())
    }

    /// Makes `last` the stream's final message, after what is queued,
    /// whether or not the budget has room for it; later sends are refused.
    pub fn finish(&self, last: T) {
        self.end(last, false);
    }

    /// Drops what is queued and makes `last` the stream's next and final
    /// message.
    pub fn cut(&self, last: T) {
        self.end(last, true);
    }

    fn end(&self, last: T, drop_queue: bool) {
        let mut state = self.shared.state();
        if state.gone || state.ended {
            return;
        }
        if drop_queue {
            state.queue.clear();
            state.queued = 0;
        }
        state.last = Some(last);
        state.ended = true;
        if let Some(reader) = state.reader.take() {
            reader.wake();
        }
        drop(state);
        self.shared.room.notify_waiters();
    }

    /// Resolves when the stream is gone (the caller went away).
    pub async fn closed(&self) {
        loop {
            let room = self.shared.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if self.shared.state().gone {
                return;
            }
            room.await;
        }
    }

    /// The budget, in bytes.
    pub fn budget(&self) -> usize {
        self.shared.budget
    }

    /// Bytes queued and not yet taken by the stream.
    pub fn queued(&self) -> usize {
        self.shared.state().queued
    }
}

impl<T> Clone for Outbox<T> {
    fn clone(&self) -> Self {
        self.shared.state().senders += 1;
        Outbox {
            shared: self.shared.clone(),
        }
    }
}

impl<T> Drop for Outbox<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.senders -= 1;
        if state.senders == 0
            && let Some(reader) = state.reader.take()
        {
            reader.wake();
        }
    }
}

impl<T> Stream for Inbox<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = self.shared.state();
        if let Some((message, bytes)) = state.queue.pop_front() {
            state.queued -= bytes;
            drop(state);
            self.shared.room.notify_waiters();
            return Poll::Ready(Some(message));
        }
        if let Some(last) = state.last.take() {
            return Poll::Ready(Some(last));
        }
        if state.ended || state.senders == 0 {
            return Poll::Ready(None);
        }
        state.reader = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl<T> Drop for Inbox<T> {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.gone = true;
        state.queue.clear();
        state.queued = 0;
        state.last = None;
        drop(state);
        self.shared.room.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_stream::StreamExt;

    #[tokio::test]
    async fn room_is_counted_in_bytes_and_given_back_when_taken() {
        let (tx, mut rx) = outbox::<&str>(100);
        tx.try_send("a", 60).unwrap();
        tx.try_send("b", 30).unwrap();
        // 90 < 100: one more message fits, whatever its size.
        tx.try_send("c", 500).unwrap();
        assert_eq!(tx.queued(), 590);
        assert_eq!(tx.try_send("d", 1), Err(Refused::Full("d")));
        assert_eq!(rx.next().await, Some("a"));
        assert_eq!(
            tx.try_send("d", 1),
            Err(Refused::Full("d")),
            "530 still queued"
        );
        assert_eq!(rx.next().await, Some("b"));
        assert_eq!(rx.next().await, Some("c"));
        assert_eq!(tx.queued(), 0, "taking a message gives its bytes back");
        tx.try_send("d", 1).unwrap();
        assert_eq!(rx.next().await, Some("d"));
    }

    #[tokio::test]
    async fn send_waits_for_room() {
        let (tx, mut rx) = outbox::<u32>(10);
        tx.try_send(1, 10).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2, 10).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        assert_eq!(rx.next().await, Some(1));
        waiting.await.unwrap().unwrap();
        assert_eq!(rx.next().await, Some(2));
    }

    #[tokio::test]
    async fn finish_sends_the_queue_then_the_last_message() {
        let (tx, mut rx) = outbox::<u32>(10);
        tx.try_send(1, 10).unwrap();
        tx.finish(99);
        assert_eq!(tx.try_send(3, 1), Err(Refused::Closed(3)));
        assert_eq!(rx.next().await, Some(1));
        assert_eq!(rx.next().await, Some(99));
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn cut_drops_the_queue_and_sends_the_last_message() {
        let (tx, mut rx) = outbox::<u32>(10);
        tx.try_send(1, 10).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2, 1).await }
        });
        tokio::task::yield_now().await;
        tx.cut(99);
        assert_eq!(tx.queued(), 0, "the queue is dropped at once");
        assert_eq!(
            waiting.await.unwrap(),
            Err(2),
            "a waiting sender is refused"
        );
        assert_eq!(tx.try_send(3, 1), Err(Refused::Closed(3)));
        assert_eq!(rx.next().await, Some(99));
        assert_eq!(rx.next().await, None);
    }

    #[tokio::test]
    async fn the_stream_ends_with_its_senders_and_a_gone_stream_refuses() {
        let (tx, mut rx) = outbox::<u32>(10);
        tx.try_send(1, 1).unwrap();
        drop(tx);
        assert_eq!(rx.next().await, Some(1));
        assert_eq!(rx.next().await, None);

        let (tx, rx) = outbox::<u32>(10);
        tx.try_send(1, 10).unwrap();
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(2, 1).await }
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(2));
        assert_eq!(tx.try_send(3, 1), Err(Refused::Closed(3)));
        tx.closed().await;
    }
}
