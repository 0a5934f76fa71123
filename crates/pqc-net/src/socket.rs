//! The UDP sockets under the QUIC endpoints.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Receive buffer asked of the kernel for each endpoint's socket; Linux caps
/// it at `net.core.rmem_max` (often 208 KiB, 4 MiB on many hosts). A server
/// under load receives bursts from many connections between two reads, and a
/// datagram that finds the buffer full is dropped: the packets of the stream
/// behind it wait for loss recovery (milliseconds). With the default, one
/// datagram in 2 000 to 6 000 was dropped at 80 000 relayed messages a second
/// on loopback; memory is used only for datagrams actually queued.
pub const RECV_BUFFER: usize = 4 << 20;

/// A UDP socket bound to `addr`, with [`RECV_BUFFER`] asked for (what the
/// kernel grants is not an error). An IPv6 unspecified address also accepts
/// IPv4 where the system allows, as quinn's own endpoints do.
pub fn bind_udp(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Best effort: some systems have no dual-stack sockets.
        let _ = socket.set_only_v6(false);
    }
    if let Err(e) = socket.set_recv_buffer_size(RECV_BUFFER) {
        tracing::debug!("could not enlarge the UDP receive buffer: {e}");
    }
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// A client endpoint (no server config) on `bind`, on [`bind_udp`]'s socket.
pub fn client_endpoint(bind: SocketAddr) -> std::io::Result<quinn::Endpoint> {
    let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, bind_udp(bind)?, runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receive_buffer_is_enlarged() {
        let s = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let got = socket2::SockRef::from(&s).recv_buffer_size().unwrap();
        // Linux reports twice what it grants (bookkeeping included); at least
        // the 208 KiB default, more wherever rmem_max allows.
        assert!(got >= 212_992, "{got}");
        if let Ok(max) = std::fs::read_to_string("/proc/sys/net/core/rmem_max") {
            let max: usize = max.trim().parse().unwrap();
            assert!(got >= max.min(RECV_BUFFER), "{got} < min({max}, {RECV_BUFFER})");
        }
    }
}
