//! A connection's queue of pushes (envelopes, room entries), bounded in
//! bytes.
//!
//! Pushes are queued by whoever committed what they carry and written by
//! the connection's task. A peer that stops reading its stream blocks that
//! task's writes (QUIC flow control) while pushes keep coming: unbounded,
//! the queue would hold them in memory for as long as the peer keeps the
//! connection alive. Past [`PushTx::limit`] bytes the connection is closed
//! instead; nothing is lost, since what was pushed stays queued on disk
//! until the recipient acknowledges it (envelopes) or reads past it (room
//! entries), and a client that reconnects fetches it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::metrics::{Metrics, inc};

/// An encoded push frame, shared by every connection it goes to.
pub(crate) type PushFrame = Arc<[u8]>;

/// QUIC application close code: the peer did not read its pushes.
pub(crate) const CLOSE_BACKLOG: u32 = 4;

/// The queueing side (kept in the table of who is online).
#[derive(Clone)]
pub(crate) struct PushTx {
    tx: mpsc::UnboundedSender<PushFrame>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    conn: quinn::Connection,
    metrics: Arc<Metrics>,
}

/// The connection task's side.
pub(crate) struct PushRx {
    rx: mpsc::UnboundedReceiver<PushFrame>,
    queued: Arc<AtomicUsize>,
}

/// A push queue for `conn` that closes it past `limit` bytes not yet
/// written.
pub(crate) fn push_queue(conn: quinn::Connection, limit: usize, metrics: Arc<Metrics>) -> (PushTx, PushRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    (PushTx { tx, queued: queued.clone(), limit, conn, metrics }, PushRx { rx, queued })
}

impl PushTx {
    /// Queues `frame`; false if the connection is gone or was just closed
    /// for holding more than the limit unread.
    pub(crate) fn send(&self, frame: &PushFrame) -> bool {
        let n = frame.len();
        let before = self.queued.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.limit {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            if self.conn.close_reason().is_none() {
                inc(&self.metrics.refused_push_backlog);
                tracing::warn!(
                    remote = %self.conn.remote_address(),
                    "refused: more than {} KiB of pushes unread; closing the connection",
                    self.limit >> 10
                );
                self.conn.close(CLOSE_BACKLOG.into(), b"pushes not read; reconnect and fetch");
            }
            return false;
        }
        if self.tx.send(frame.clone()).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }
}

impl PushRx {
    /// The next push, waiting for one.
    pub(crate) async fn recv(&mut self) -> Option<PushFrame> {
        let p = self.rx.recv().await?;
        self.queued.fetch_sub(p.len(), Ordering::Relaxed);
        Some(p)
    }

    /// The next push if one is queued.
    pub(crate) fn try_recv(&mut self) -> Option<PushFrame> {
        let p = self.rx.try_recv().ok()?;
        self.queued.fetch_sub(p.len(), Ordering::Relaxed);
        Some(p)
    }
}
