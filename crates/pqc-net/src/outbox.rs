//! The sending side of a client's control stream, shared by its callers.
//!
//! A frame is handed to quinn by the caller itself when nothing waits
//! ahead of it and quinn takes it at once (the usual case: a request of a
//! few hundred bytes), so a request costs no wake-up of another task. What
//! quinn cannot take yet (flow control, a file chunk larger than the window)
//! is queued whole and written by the connection's flusher task, in order.
//!
//! Cancel-safe: [`Outbox::send`] puts the whole frame into quinn or into the
//! queue before its first `.await`, so a caller dropped while it waits for
//! room never leaves half a frame on the stream.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::NetError;

/// Bytes a connection may hold for quinn before [`Outbox::send`] waits
/// (beyond what quinn itself buffers): eight 512 KiB file chunks.
pub const OUTBOX_LIMIT: usize = 4 << 20;

/// The control stream's sending side (see the module documentation).
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Signalled whenever queued bytes went to quinn, or the stream failed.
    room: Notify,
}

#[derive(Debug)]
struct State {
    stream: quinn::SendStream,
    /// Frames, or what is left of one, that quinn has not taken yet.
    queue: VecDeque<Bytes>,
    /// Bytes in `queue`.
    queued: usize,
    /// The flusher, while it waits for the queue to fill.
    flusher: Option<Waker>,
    /// The stream failed (connection lost, stream stopped): nothing more goes out.
    failed: bool,
    /// The connection's owner let go: finish the stream once the queue is out.
    closing: bool,
}

impl Outbox {
    /// Wraps the control stream's sending side and spawns its flusher task
    /// (on the current Tokio runtime), which ends once the stream failed, or
    /// was closed ([`Outbox::close`]) and everything queued went out.
    pub fn start(stream: quinn::SendStream) -> (Arc<Self>, JoinHandle<()>) {
        let state = State { stream, queue: VecDeque::new(), queued: 0, flusher: None, failed: false, closing: false };
        let out = Arc::new(Self { state: Mutex::new(state), room: Notify::new() });
        let flusher = out.clone();
        let task = tokio::spawn(async move { poll_fn(|cx| flusher.poll_flush(cx)).await });
        (out, task)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands `frame` (whole: length prefix and body) to quinn, or queues it
    /// behind what waits; then waits while more than [`OUTBOX_LIMIT`] bytes
    /// are queued. `Err(NetError::Closed)` if the stream failed.
    pub async fn send(&self, frame: Vec<u8>) -> Result<(), NetError> {
        {
            let mut s = self.lock();
            if s.failed {
                return Err(NetError::Closed);
            }
            let mut rest = [Bytes::from(frame)];
            if s.queue.is_empty() {
                // One attempt, without waiting: quinn takes what its windows
                // allow (maybe all, maybe part, maybe nothing) and leaves the
                // rest in `rest`. Not blocked here, the flusher's waker is
                // not needed; blocked, the flusher registers its own below.
                let mut cx = Context::from_waker(Waker::noop());
                let tried = pin!(s.stream.write_chunks(&mut rest)).poll(&mut cx);
                if let Poll::Ready(Err(_)) = tried {
                    s.fail(&self.room);
                    return Err(NetError::Closed);
                }
            }
            let [rest] = rest;
            if !rest.is_empty() {
                s.queued += rest.len();
                s.queue.push_back(rest);
                if let Some(w) = s.flusher.take() {
                    w.wake();
                }
            }
            if s.queued <= OUTBOX_LIMIT {
                return Ok(());
            }
        }
        loop {
            let notified = self.room.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            {
                let s = self.lock();
                if s.failed {
                    return Err(NetError::Closed);
                }
                if s.queued <= OUTBOX_LIMIT {
                    return Ok(());
                }
            }
            notified.await;
        }
    }

    /// Lets the stream finish once everything queued went out (the
    /// connection's owner dropped it).
    pub fn close(&self) {
        let mut s = self.lock();
        s.closing = true;
        if let Some(w) = s.flusher.take() {
            w.wake();
        }
    }

    /// The flusher task's work: writes what [`Outbox::send`] queued, in
    /// order, until the stream fails or is closed and drained.
    fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut guard = self.lock();
        let s = &mut *guard;
        loop {
            if s.failed {
                return Poll::Ready(());
            }
            if s.queue.is_empty() {
                if s.closing {
                    let _ = s.stream.finish();
                    return Poll::Ready(());
                }
                s.flusher = Some(cx.waker().clone());
                return Poll::Pending;
            }
            let wrote = pin!(s.stream.write_chunks(s.queue.make_contiguous())).poll(cx);
            match wrote {
                // quinn wakes this task when the stream can take more.
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(_)) => {
                    s.fail(&self.room);
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(written)) => {
                    s.queued = s.queued.saturating_sub(written.bytes);
                    while s.queue.front().is_some_and(Bytes::is_empty) {
                        s.queue.pop_front();
                    }
                    self.room.notify_waiters();
                }
            }
        }
    }
}

impl State {
    fn fail(&mut self, room: &Notify) {
        self.failed = true;
        self.queue.clear();
        self.queued = 0;
        if let Some(w) = self.flusher.take() {
            w.wake();
        }
        room.notify_waiters();
    }
}
