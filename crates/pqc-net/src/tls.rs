//! TLS configuration: certificates, fingerprints, trust modes.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::ALPN;
use crate::error::NetError;
use crate::kx::KxProbe;

/// SHA-256 of a certificate's DER encoding. Displayed as colon-separated
/// upper-case hex (`AB:CD:...`); parsed from that form or from plain hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// Fingerprint of a DER certificate.
    pub fn of_der(der: &[u8]) -> Self {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut out = [0u8; 32];
        out.copy_from_slice(d.as_ref());
        Self(out)
    }

    /// Plain lower-case hex (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

impl core::str::FromStr for CertFingerprint {
    type Err = NetError;
    fn from_str(s: &str) -> Result<Self, NetError> {
        let clean: String = s.trim().chars().filter(|c| *c != ':').collect();
        let bytes = hex::decode(&clean).map_err(|_| NetError::Cert(format!("fingerprint {s:?} is not hex")))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| NetError::Cert(format!("fingerprint {s:?} is not 32 bytes (64 hex digits)")))?;
        Ok(Self(arr))
    }
}

/// How a client decides to trust the server certificate.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// Accept exactly this certificate (TOFU after the first connection).
    Pinned(CertFingerprint),
    /// Accept any certificate and report its fingerprint (first use). The
    /// caller must store the fingerprint and pin it from then on.
    FirstUse,
    /// Verify the chain and the server name against these roots.
    Roots(Vec<CertificateDer<'static>>),
}

impl ServerTrust {
    /// Loads CA certificates from a PEM file (`--ca`).
    pub fn from_ca_file(path: &Path) -> Result<Self, NetError> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| NetError::Cert(format!("cannot read CA file {}: {e}", path.display())))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NetError::Cert(format!("bad PEM in CA file {}: {e}", path.display())))?;
        if certs.is_empty() {
            return Err(NetError::Cert(format!("no certificate in CA file {}", path.display())));
        }
        Ok(Self::Roots(certs))
    }
}

/// A freshly generated self-signed certificate (PEM).
#[derive(Clone)]
pub struct SelfSigned {
    /// Certificate PEM.
    pub cert_pem: String,
    /// PKCS#8 private key PEM (secret: write it with mode 0600).
    pub key_pem: String,
    /// Fingerprint of the certificate.
    pub fingerprint: CertFingerprint,
}

impl fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SelfSigned({})", self.fingerprint)
    }
}

/// Generates a self-signed certificate (ECDSA P-256) for `names`.
pub fn generate_self_signed(names: &[String]) -> Result<SelfSigned, NetError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec()).map_err(|e| NetError::Cert(e.to_string()))?;
    Ok(SelfSigned {
        cert_pem: ck.cert.pem(),
        key_pem: ck.signing_key.serialize_pem(),
        fingerprint: CertFingerprint::of_der(ck.cert.der()),
    })
}

fn provider(probe: &KxProbe) -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider { kx_groups: probe.groups(), ..rustls::crypto::aws_lc_rs::default_provider() })
}

/// The idle timeout clients ask for (the smaller side's applies): also how
/// long a connection attempt waits for a server that does not answer.
pub const CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(15);

fn transport(server: bool) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // The idle timeout in effect is the smaller of the two sides'. Clients ask
    // for 15 s and send a keep-alive every 5 s, so a server that crashed or
    // restarted (its new process does not know the old connection) is noticed
    // within 15 s and the client's command fails or retries instead of hanging.
    let idle = if server { Duration::from_secs(60) } else { CLIENT_IDLE_TIMEOUT };
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    if server {
        // Clients never open streams: the server opens the one control stream.
        t.max_concurrent_bidi_streams(0u8.into());
        t.max_concurrent_uni_streams(0u8.into());
    } else {
        t.keep_alive_interval(Some(Duration::from_secs(5)));
    }
    // Each side asks the other (QUIC ACK frequency extension) to acknowledge
    // every tenth packet (or after its max_ack_delay) instead of every
    // second: a room message goes to every member and every message is a
    // request, a response and a push, and each pure ACK packet costs a send,
    // a receive, a decryption and loss-recovery work. Replies carry ACKs anyway.
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(9u8.into());
    t.ack_frequency_config(Some(ack));
    Arc::new(t)
}

#[derive(Debug)]
struct SingleCert(Arc<CertifiedKey>);

impl ResolvesServerCert for SingleCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// Server certificate and key, ready to build per-connection configs.
#[derive(Clone)]
pub struct ServerTls {
    key: Arc<CertifiedKey>,
    fingerprint: CertFingerprint,
    /// QUIC stateless-reset key, derived from the certificate's private key
    /// so that it stays the same across restarts.
    reset_key: Arc<aws_lc_rs::hmac::Key>,
    /// Key of the connection ids' check value, derived likewise: a restarted
    /// server must accept its predecessor's connection ids as its own to
    /// answer them with a reset.
    cid_key: u64,
}

/// Salt of the stateless-reset keys' derivation (HKDF-Extract with this
/// salt over the private key's DER encoding, then HKDF-Expand per key).
const RESET_KEY_LABEL: &[u8] = b"pqc-chat/quic-stateless-reset/v2";

/// An HKDF output length.
struct OkmLen(usize);

impl aws_lc_rs::hkdf::KeyType for OkmLen {
    fn len(&self) -> usize {
        self.0
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerTls({})", self.fingerprint)
    }
}

impl ServerTls {
    /// From a certificate chain (leaf first) and its private key.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Result<Self, NetError> {
        let leaf = chain.first().ok_or_else(|| NetError::Cert("empty certificate chain".into()))?;
        let fingerprint = CertFingerprint::of_der(leaf);
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)?;
        // A restarted server must recognise its predecessor's connections
        // to reset them: the key that makes stateless-reset tokens is a
        // function of the long-term private key, not random per process.
        // Clients of a server that crashed and came back then learn at their
        // next packet that their connection is gone (and reconnect) instead
        // of waiting out the idle timeout.
        // HKDF (RFC 5869): the pseudorandom key is zeroized when dropped;
        // each key is expanded from it under its own label.
        use aws_lc_rs::{hkdf, hmac};
        let derive = || NetError::Cert("cannot derive the stateless-reset keys".into());
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, RESET_KEY_LABEL).extract(key.secret_der());
        let reset_okm = prk.expand(&[b"stateless reset"], hmac::HMAC_SHA256).map_err(|_| derive())?;
        let reset_key = Arc::new(hmac::Key::from(reset_okm));
        let mut cid_key = [0u8; 8];
        prk.expand(&[b"connection ids"], OkmLen(cid_key.len()))
            .and_then(|okm| okm.fill(&mut cid_key))
            .map_err(|_| derive())?;
        let cid_key = u64::from_be_bytes(cid_key);
        Ok(Self { key: Arc::new(CertifiedKey::new(chain, signer)), fingerprint, reset_key, cid_key })
    }

    /// From PEM strings.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, NetError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NetError::Cert(format!("bad certificate PEM: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| NetError::Cert(format!("bad private key PEM: {e}")))?;
        Self::new(chain, key)
    }

    /// From PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, NetError> {
        let c = std::fs::read_to_string(cert)
            .map_err(|e| NetError::Cert(format!("cannot read {}: {e}", cert.display())))?;
        let k =
            std::fs::read_to_string(key).map_err(|e| NetError::Cert(format!("cannot read {}: {e}", key.display())))?;
        Self::from_pem(&c, &k)
    }

    /// SHA-256 fingerprint of the leaf certificate (what clients pin).
    pub fn fingerprint(&self) -> CertFingerprint {
        self.fingerprint
    }

    /// A quinn server config for one connection, with a probe that records
    /// the key-exchange group that connection negotiates. Keep the probe
    /// alive until the handshake completed. Pass the config to
    /// `quinn::Incoming::accept_with`.
    pub fn connection_config(&self) -> Result<(Arc<quinn::ServerConfig>, KxProbe), NetError> {
        let probe = KxProbe::new();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider(&probe))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(SingleCert(self.key.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        cfg.max_early_data_size = 0;
        let qc = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
            .map_err(|e| NetError::Cert(format!("TLS config unusable for QUIC: {e}")))?;
        let mut sc = quinn::ServerConfig::with_crypto(Arc::new(qc));
        sc.transport_config(transport(true));
        Ok((Arc::new(sc), probe))
    }

    /// Binds a server endpoint on `addr` (UDP).
    pub fn endpoint(&self, addr: std::net::SocketAddr) -> Result<quinn::Endpoint, NetError> {
        let (cfg, _probe) = self.connection_config()?;
        let socket = crate::socket::bind_udp(addr)?;
        let runtime = quinn::default_runtime().ok_or_else(|| std::io::Error::other("no async runtime found"))?;
        let mut endpoint = quinn::EndpointConfig::new(self.reset_key.clone());
        let cid_key = self.cid_key;
        endpoint.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key)));
        Ok(quinn::Endpoint::new(endpoint, Some(Arc::unwrap_or_clone(cfg)), socket, runtime)?)
    }
}

/// Verifier for pinned / first-use modes: the certificate is identified by
/// its fingerprint (no chain, no name check); the handshake signature is
/// still verified, which proves possession of the certificate's key.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    pin: Option<CertFingerprint>,
    algs: WebPkiSupportedAlgorithms,
    /// The fingerprint presented when it did not match the pin.
    pub(crate) mismatch: Mutex<Option<CertFingerprint>>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got = CertFingerprint::of_der(end_entity);
        match self.pin {
            None => Ok(ServerCertVerified::assertion()),
            Some(p) if p == got => Ok(ServerCertVerified::assertion()),
            Some(_) => {
                *self.mismatch.lock().unwrap_or_else(PoisonError::into_inner) = Some(got);
                Err(rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A client config for one connection plus its key-exchange probe and, in
/// pinned mode, the verifier (to report a mismatching fingerprint).
pub(crate) struct ClientParts {
    pub(crate) config: quinn::ClientConfig,
    pub(crate) probe: KxProbe,
    pub(crate) pin: Option<Arc<PinVerifier>>,
}

pub(crate) fn client_parts(trust: &ServerTrust) -> Result<ClientParts, NetError> {
    let probe = KxProbe::new();
    let provider = provider(&probe);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let (mut cfg, pin) = match trust {
        ServerTrust::Pinned(_) | ServerTrust::FirstUse => {
            let pin = match trust {
                ServerTrust::Pinned(p) => Some(*p),
                _ => None,
            };
            let v = Arc::new(PinVerifier {
                pin,
                algs: provider.signature_verification_algorithms,
                mismatch: Mutex::new(None),
            });
            (builder.dangerous().with_custom_certificate_verifier(v.clone()).with_no_client_auth(), Some(v))
        }
        ServerTrust::Roots(certs) => {
            let mut roots = RootCertStore::empty();
            for c in certs {
                roots.add(c.clone()).map_err(|e| NetError::Cert(format!("bad CA certificate: {e}")))?;
            }
            (builder.with_root_certificates(roots).with_no_client_auth(), None)
        }
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let qc = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| NetError::Cert(format!("TLS config unusable for QUIC: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(qc));
    config.transport_config(transport(false));
    Ok(ClientParts { config, probe, pin })
}

/// A quinn client config for `trust` (for callers that drive quinn
/// themselves; [`crate::Connection::connect`] is the usual entry point).
/// Keep the returned probe alive until the handshake completed.
pub fn client_config(trust: &ServerTrust) -> Result<(quinn::ClientConfig, KxProbe), NetError> {
    let p = client_parts(trust)?;
    Ok((p.config, p.probe))
}
