//! Async client: connect, request/response matched by request id, pushes.
//!
//! One reader task dispatches responses to waiting requests and pushes to a
//! channel; callers write their frames themselves ([`Outbox`]), a flusher
//! task only what quinn could not take at once.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pqc_wire::{CHALLENGE_LEN, ClientFrame, PROTOCOL_VERSION, Push, Request, RequestId, Response, ServerFrame};
use rustls::NamedGroup;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, oneshot};

use crate::error::NetError;
use crate::framed::{FrameReader, read_frame};
use crate::outbox::Outbox;
use crate::tls::{CertFingerprint, ServerTrust, client_parts};

/// Largest frame body the client accepts from a server, whatever it announces.
const CLIENT_MAX_FRAME: usize = 64 << 20;

/// Requests waiting for their response, with the time they give up, in
/// the order they were sent: the server answers a connection's requests in
/// order, so a response's waiter is found at the front (no hashing per
/// request and per response; a request that timed out is gone from the
/// queue, and an out-of-order answer is still matched, by a short scan).
type Pending = Arc<Mutex<VecDeque<(u32, oneshot::Sender<Response>, Instant)>>>;

/// Takes the waiter of request `id` out of `pending`.
fn take_waiter(pending: &Pending, id: u32) -> Option<oneshot::Sender<Response>> {
    let mut q = pending.lock().unwrap_or_else(PoisonError::into_inner);
    let pos = q.iter().position(|(i, _, _)| *i == id)?;
    q.remove(pos).map(|(_, tx, _)| tx)
}

/// How often a connection's watchdog looks for requests past their timeout.
const WATCHDOG_TICK: Duration = Duration::from_secs(1);

/// What the client learned while connecting.
#[derive(Debug, Clone)]
pub struct ConnectInfo {
    /// SHA-256 of the server's certificate (pin it after first use).
    pub fingerprint: CertFingerprint,
    /// Negotiated TLS key-exchange group (expect X25519MLKEM768).
    pub group: NamedGroup,
    /// The login challenge from the server's Hello.
    pub challenge: [u8; CHALLENGE_LEN],
    /// The server's maximum frame body size.
    pub max_frame: usize,
}

/// How long a connection attempt goes unanswered before [`port_refused`]
/// probes the port.
const PROBE_AFTER: Duration = Duration::from_millis(100);

/// Any local address and port of `addr`'s family, to send to it from.
fn any_port_like(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0))
    }
}

/// Resolves once the host at `addr` answers that nothing listens on its UDP
/// port; stays pending otherwise (a host that does not answer, a firewall
/// that drops, a server that is there).
///
/// A connected UDP socket sends an empty datagram (a QUIC endpoint drops
/// it) and sees the ICMP port unreachable that comes back as
/// `ECONNREFUSED`; quinn's socket is not connected, so it never does. The
/// datagram goes again after 0.5 s and 1.5 s in case one was lost. Only
/// for an attempt still unanswered after [`PROBE_AFTER`]: a server that is
/// there has usually answered by then, and gets no probe.
async fn port_refused(addr: SocketAddr) {
    async fn refused(sock: &tokio::net::UdpSocket) -> bool {
        let mut buf = [0u8; 1];
        loop {
            match sock.recv(&mut buf).await {
                Ok(_) => continue,
                Err(e) => return e.kind() == std::io::ErrorKind::ConnectionRefused,
            }
        }
    }
    tokio::time::sleep(PROBE_AFTER).await;
    if let Ok(sock) = tokio::net::UdpSocket::bind(any_port_like(addr)).await
        && sock.connect(addr).await.is_ok()
    {
        for wait_ms in [500, 1000, 2000] {
            if let Err(e) = sock.send(&[]).await {
                if e.kind() == std::io::ErrorKind::ConnectionRefused {
                    return;
                }
                break;
            }
            match tokio::time::timeout(Duration::from_millis(wait_ms), refused(&sock)).await {
                Ok(true) => return,
                Ok(false) => break,
                Err(_) => continue,
            }
        }
    }
    std::future::pending().await
}

/// A connection to a pqc-chat server.
#[derive(Debug)]
pub struct Connection {
    conn: quinn::Connection,
    endpoint: quinn::Endpoint,
    /// The control stream's sending side.
    out: Arc<Outbox>,
    pending: Pending,
    closed: Arc<AtomicBool>,
    next_id: AtomicU32,
    info: ConnectInfo,
    pushes: Option<mpsc::UnboundedReceiver<Push>>,
    timeout: Duration,
}

impl Connection {
    /// Connects to `addr`, presenting `server_name` (SNI; checked only in
    /// CA mode), and waits for the server's Hello. Returns the connection,
    /// the server certificate's fingerprint and the negotiated group.
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        trust: ServerTrust,
    ) -> Result<(Self, CertFingerprint, NamedGroup), NetError> {
        let endpoint = crate::socket::client_endpoint(any_port_like(addr))?;
        let parts = client_parts(&trust)?;
        let connecting = endpoint.connect_with(parts.config, addr, server_name)?;
        // QUIC itself ignores the ICMP answer of a host where nothing listens
        // and would wait out the idle timeout (15 s); the probe beside it
        // turns that answer into an error at once.
        let connected = tokio::select! {
            c = connecting => c,
            () = port_refused(addr) => return Err(NetError::PortClosed(addr)),
        };
        let conn = match connected {
            Ok(c) => c,
            Err(e) => {
                if let (ServerTrust::Pinned(expected), Some(v)) = (&trust, &parts.pin)
                    && let Some(got) = *v.mismatch.lock().unwrap_or_else(PoisonError::into_inner)
                {
                    return Err(NetError::FingerprintMismatch { expected: *expected, got });
                }
                return Err(e.into());
            }
        };
        let group = parts.probe.get().ok_or_else(|| NetError::Protocol("no key-exchange group recorded".into()))?;
        let fingerprint = conn
            .peer_identity()
            .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
            .and_then(|chain| chain.first().map(|c| CertFingerprint::of_der(c)))
            .ok_or_else(|| NetError::Protocol("server presented no certificate".into()))?;
        let (send, mut recv) = conn.accept_bi().await?;
        let hello = read_frame(&mut recv, CLIENT_MAX_FRAME).await?.ok_or(NetError::Closed)?;
        let (challenge, max_frame) = match ServerFrame::decode(&hello)? {
            ServerFrame::Hello { version, challenge, max_frame } => {
                if version != PROTOCOL_VERSION {
                    return Err(pqc_wire::WireError::UnknownVersion(version).into());
                }
                (challenge, max_frame as usize)
            }
            other => return Err(NetError::Protocol(format!("expected Hello, got {other:?}"))),
        };
        let info = ConnectInfo { fingerprint, group, challenge, max_frame };

        let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
        let (out, _flusher) = Outbox::start(send);
        let (push_tx, push_rx) = mpsc::unbounded_channel();
        let closed = Arc::new(AtomicBool::new(false));
        let reader_closed = closed.clone();
        let reader_pending = pending.clone();
        let reader_conn = conn.clone();
        tokio::spawn(async move {
            let max = max_frame.clamp(pqc_wire::DEFAULT_MAX_FRAME, CLIENT_MAX_FRAME);
            let mut frames = FrameReader::new(max, None);
            loop {
                let body = match frames.next(&mut recv).await {
                    Ok(Some(b)) => b,
                    Ok(None) | Err(_) => break,
                };
                match ServerFrame::decode(&body) {
                    Ok(ServerFrame::Response { id, response }) => {
                        if let Some(tx) = take_waiter(&reader_pending, id.0) {
                            let _ = tx.send(response);
                        }
                    }
                    Ok(ServerFrame::Push(p)) => {
                        let _ = push_tx.send(p);
                    }
                    Ok(_) | Err(_) => {
                        tracing::warn!("malformed or unexpected frame from server; closing");
                        reader_conn.close(1u32.into(), b"protocol error");
                        break;
                    }
                }
            }
            // Fail every waiting request (and any request made from now on).
            reader_closed.store(true, Ordering::SeqCst);
            reader_pending.lock().unwrap_or_else(PoisonError::into_inner).clear();
        });
        // One timer per connection, not one per request: every tick, the
        // requests past their time are dropped, which their waiters see as
        // a timeout (the connection being open).
        let watched = Arc::downgrade(&pending);
        let watch_closed = closed.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(WATCHDOG_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pending) = watched.upgrade() else { break };
                if watch_closed.load(Ordering::SeqCst) {
                    break;
                }
                let now = Instant::now();
                pending.lock().unwrap_or_else(PoisonError::into_inner).retain(|(_, _, until)| *until > now);
            }
        });
        let c = Self {
            conn,
            endpoint,
            out,
            pending,
            closed,
            next_id: AtomicU32::new(1),
            info,
            pushes: Some(push_rx),
            timeout: Duration::from_secs(30),
        };
        Ok((c, fingerprint, group))
    }

    /// Connection details (fingerprint, group, challenge, limits).
    pub fn info(&self) -> &ConnectInfo {
        &self.info
    }

    /// The server's login challenge for this connection.
    pub fn challenge(&self) -> [u8; CHALLENGE_LEN] {
        self.info.challenge
    }

    /// Sets the per-request timeout (default 30 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Takes the receiver of server pushes (once; `None` afterwards).
    pub fn take_pushes(&mut self) -> Option<mpsc::UnboundedReceiver<Push>> {
        self.pushes.take()
    }

    /// Sends `request` and waits for its response.
    pub async fn request(&self, request: Request) -> Result<Response, NetError> {
        self.submit(request).await?.response().await
    }

    /// Sends `request` without waiting for its response, so several requests
    /// can be in flight at once (pipelining); await [`PendingResponse::response`]
    /// for each. The server answers the requests of a connection in order.
    pub async fn submit(&self, request: Request) -> Result<PendingResponse<'_>, NetError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = ClientFrame { id: RequestId(id), request }.encode();
        let len = frame.len().saturating_sub(4);
        if len > self.info.max_frame {
            return Err(pqc_wire::WireError::TooLarge { len, max: self.info.max_frame }.into());
        }
        let (tx, rx) = oneshot::channel();
        let until = Instant::now() + self.timeout;
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).push_back((id, tx, until));
        if self.closed.load(Ordering::SeqCst) {
            take_waiter(&self.pending, id);
            return Err(self.closed_reason());
        }
        if self.out.send(frame).await.is_err() {
            take_waiter(&self.pending, id);
            return Err(self.closed_reason());
        }
        Ok(PendingResponse { conn: self, rx })
    }

    /// Sends raw bytes on the control stream (tests of malformed input).
    #[doc(hidden)]
    pub async fn send_raw_frame_body(&self, body: Vec<u8>) -> Result<(), NetError> {
        self.out.send(pqc_wire::encode_frame(&body)).await
    }

    fn closed_reason(&self) -> NetError {
        match self.conn.close_reason() {
            Some(e) => NetError::Connection(e),
            None => NetError::Closed,
        }
    }

    /// Whether the connection is closed (and why).
    pub fn close_reason(&self) -> Option<quinn::ConnectionError> {
        self.conn.close_reason()
    }

    /// The underlying quinn connection.
    pub fn quinn(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Closes the connection and waits briefly for the close to be sent.
    ///
    /// The close goes out at once; the wait (three round trips, at least
    /// 10 ms, at most 1 s) only lets it be sent again if the server's next
    /// packets show it was lost. Waiting for the whole draining period
    /// (three probe timeouts, ≈ 80 ms even on loopback) would delay every
    /// command for nothing.
    pub async fn close(self) {
        let grace = (self.conn.rtt() * 3).clamp(Duration::from_millis(10), Duration::from_secs(1));
        self.conn.close(0u32.into(), b"bye");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // What is queued still goes out, then the stream finishes.
        self.out.close();
    }
}

/// A request sent with [`Connection::submit`] whose response is still to come.
#[derive(Debug)]
pub struct PendingResponse<'a> {
    conn: &'a Connection,
    rx: oneshot::Receiver<Response>,
}

impl PendingResponse<'_> {
    /// Waits for the response (bounded by the connection's timeout, give
    /// or take a second: the connection's watchdog gives up on it).
    pub async fn response(self) -> Result<Response, NetError> {
        match self.rx.await {
            Ok(r) => Ok(r),
            Err(_) if self.conn.closed.load(Ordering::SeqCst) => Err(self.conn.closed_reason()),
            Err(_) => Err(NetError::Timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(ids: &[u32]) -> (Pending, Vec<oneshot::Receiver<Response>>) {
        let pending: Pending = Arc::new(Mutex::new(VecDeque::new()));
        let mut rxs = Vec::new();
        for &id in ids {
            let (tx, rx) = oneshot::channel();
            pending.lock().unwrap().push_back((id, tx, Instant::now()));
            rxs.push(rx);
        }
        (pending, rxs)
    }

    #[test]
    fn responses_find_their_waiters_in_any_order() {
        let (pending, mut rxs) = waiting(&[1, 2, 3, 4]);
        // In order, out of order, and one nobody waits for (timed out).
        for id in [1, 3, 2, 9] {
            match take_waiter(&pending, id) {
                Some(tx) => tx.send(Response::Pong).unwrap(),
                None => assert_eq!(id, 9),
            }
        }
        for (i, rx) in rxs.iter_mut().enumerate().take(3) {
            assert!(matches!(rx.try_recv(), Ok(Response::Pong)), "request {}", i + 1);
        }
        assert!(rxs[3].try_recv().is_err(), "request 4 still waits");
        assert_eq!(pending.lock().unwrap().len(), 1);
        assert!(take_waiter(&pending, 3).is_none(), "answered once only");
    }
}
