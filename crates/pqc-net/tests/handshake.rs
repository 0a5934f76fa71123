//! Real QUIC on 127.0.0.1: negotiated group, pinning, request/response.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use pqc_net::*;
use pqc_wire::{ClientFrame, Request, Response, ServerFrame};

/// A minimal server: Hello, then answers Ping with Pong (and nothing else). Returns the address
/// and a channel reporting each connection's negotiated group.
async fn mini_server(tls: ServerTls) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Option<NamedGroup>>) {
    mini_server_on(tls, "127.0.0.1:0".parse().unwrap()).await
}

/// [`mini_server`] on `addr`.
async fn mini_server_on(
    tls: ServerTls,
    addr: SocketAddr,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Option<NamedGroup>>) {
    // A crashed predecessor's socket on `addr` may take a moment to close.
    let mut tries = 0;
    let ep = loop {
        match tls.endpoint(addr) {
            Ok(ep) => break ep,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind {addr}: {e}"),
        }
    };
    let addr = ep.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            let (cfg, probe) = tls.connection_config().unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = inc.accept_with(cfg).unwrap().await else { return };
                tx.send(probe.get()).unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                let hello = ServerFrame::Hello { version: 1, challenge: [1; 32], max_frame: 1 << 20 };
                write_frame(&mut send, &hello.encode_body()).await.unwrap();
                while let Ok(Some(body)) = read_frame(&mut recv, 1 << 20).await {
                    let f = ClientFrame::decode(&body).unwrap();
                    // Only pings are answered (a test leaves a request unanswered).
                    if !matches!(f.request, Request::Ping) {
                        continue;
                    }
                    let r = ServerFrame::Response { id: f.id, response: Response::Pong };
                    write_frame(&mut send, &r.encode_body()).await.unwrap();
                }
            });
        }
    });
    (addr, rx)
}

fn tls() -> ServerTls {
    let ss = generate_self_signed(&["localhost".into()]).unwrap();
    let tls = ServerTls::from_pem(&ss.cert_pem, &ss.key_pem).unwrap();
    assert_eq!(tls.fingerprint(), ss.fingerprint);
    tls
}

#[tokio::test]
async fn negotiates_x25519mlkem768_and_pins() {
    let tls = tls();
    let fp = tls.fingerprint();
    let (addr, mut groups) = mini_server(tls).await;

    // First use: accepted, fingerprint reported.
    let (c, got_fp, group) = Connection::connect(addr, "localhost", ServerTrust::FirstUse).await.unwrap();
    assert_eq!(got_fp, fp);
    assert_eq!(group, NamedGroup::X25519MLKEM768);
    assert_eq!(groups.recv().await.unwrap(), Some(NamedGroup::X25519MLKEM768));
    assert_eq!(c.challenge(), [1; 32]);
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
    c.close().await;

    // Pinned to the right fingerprint.
    let (c, _, _) = Connection::connect(addr, "anything", ServerTrust::Pinned(fp)).await.unwrap();
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
    c.close().await;

    // Pinned to another fingerprint: a clear error.
    let wrong = CertFingerprint([0xAB; 32]);
    let err = Connection::connect(addr, "localhost", ServerTrust::Pinned(wrong)).await.unwrap_err();
    assert!(matches!(err, NetError::FingerprintMismatch { got, .. } if got == fp), "{err}");
}

#[tokio::test]
async fn ca_mode_checks_the_chain() {
    let ss = generate_self_signed(&["localhost".into()]).unwrap();
    let tls = ServerTls::from_pem(&ss.cert_pem, &ss.key_pem).unwrap();
    let (addr, _g) = mini_server(tls).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &ss.cert_pem).unwrap();
    let trust = ServerTrust::from_ca_file(&ca).unwrap();
    let (c, _, _) = Connection::connect(addr, "localhost", trust.clone()).await.unwrap();
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
    c.close().await;
    // Wrong name is rejected in CA mode.
    assert!(Connection::connect(addr, "other.example", trust).await.is_err());
}

#[test]
fn fingerprint_text_forms() {
    let fp = CertFingerprint([0x0A; 32]);
    let s = fp.to_string();
    assert!(s.starts_with("0A:0A:"));
    assert_eq!(s.parse::<CertFingerprint>().unwrap(), fp);
    assert_eq!(fp.to_hex().parse::<CertFingerprint>().unwrap(), fp);
    assert!("zz".parse::<CertFingerprint>().is_err());
}

/// Runs [`mini_server`] on `addr` in a runtime of its own, on its own
/// thread; dropping the returned sender stops that runtime without closing
/// anything (as a crash would).
fn crashable_server(tls: ServerTls, addr: SocketAddr) -> (SocketAddr, std::sync::mpsc::Sender<()>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (bound_tx, bound) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let (bound, _groups) = mini_server_on(tls, addr).await;
            bound_tx.send(bound).unwrap();
            // Serve until the test drops `stop` (a blocking wait elsewhere).
            let _ = tokio::task::spawn_blocking(move || stopped.recv()).await;
        });
        rt.shutdown_background();
    });
    (bound.recv().unwrap(), stop)
}

#[tokio::test]
async fn a_restarted_server_resets_its_predecessors_connections() {
    let tls = tls();
    let (addr, stop) = crashable_server(tls.clone(), "127.0.0.1:0".parse().unwrap());
    let (c, _, _) = Connection::connect(addr, "localhost", ServerTrust::FirstUse).await.unwrap();
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
    // The server crashes and comes back on the same port with the same key.
    drop(stop);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_again, _stop_again) = crashable_server(tls, addr);
    // Its stateless reset ends the old connection at the next packet, well
    // before the 15 s idle timeout.
    let started = std::time::Instant::now();
    let err = c.request(Request::Ping).await.unwrap_err();
    assert!(matches!(err, NetError::Connection(quinn::ConnectionError::Reset)), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    // And a new connection works.
    let (c, _, _) = Connection::connect(addr, "localhost", ServerTrust::FirstUse).await.unwrap();
    assert_eq!(c.request(Request::Ping).await.unwrap(), Response::Pong);
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_the_connection_goes_on() {
    let (addr, _groups) = mini_server(tls()).await;
    let (mut c, _, _) = Connection::connect(addr, "localhost", ServerTrust::FirstUse).await.unwrap();
    c.set_timeout(std::time::Duration::from_millis(300));
    let t = std::time::Instant::now();
    assert!(matches!(c.request(Request::Fetch).await, Err(NetError::Timeout)));
    // The watchdog gives up within a tick (1 s) of the timeout.
    let took = t.elapsed();
    assert!(took >= std::time::Duration::from_millis(300) && took < std::time::Duration::from_secs(3), "{took:?}");
    assert!(matches!(c.request(Request::Ping).await, Ok(Response::Pong)));
}

#[tokio::test]
async fn a_port_where_nothing_listens_is_refused_at_once() {
    // A port that was free a moment ago: nothing listens on it.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let started = std::time::Instant::now();
    let err = Connection::connect(addr, "localhost", ServerTrust::FirstUse).await.unwrap_err();
    assert!(matches!(err, NetError::PortClosed(a) if a == addr), "{err}");
    assert!(err.to_string().contains(&format!("UDP port {}", addr.port())), "{err}");
    // Not the 15 s idle timeout QUIC alone would wait.
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
}
