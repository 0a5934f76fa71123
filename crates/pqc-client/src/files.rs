//! File encryption for attachments, in the style of the STREAM construction:
//! a fresh AES-256-GCM key per file; the file is cut into chunks of
//! [`CHUNK`] bytes; chunk `i` is sealed with nonce `0u32 || i (u64 BE)` and
//! associated data `"pqc-chat/file/v1" || last (u8)`, so chunks cannot be
//! reordered, dropped or truncated without detection. The key travels inside
//! the end-to-end encrypted message that announces the file.

use pqc_crypto::aead::{AeadAlgorithm, AeadKey, TAG_LEN};
use pqc_crypto::kdf::Sha256Hasher;
use zeroize::Zeroizing;

use crate::content::Rd;
use crate::error::{ClientError, Result};

/// Plaintext bytes per chunk of the files this client sends, when the
/// server's frames allow it (see [`chunk_for`]); receivers take the size
/// from the file's announcement.
pub const CHUNK: u32 = 512 * 1024;

/// The chunk size for uploads to a server whose frames carry at most
/// `max_frame` bytes: [`CHUNK`], or the largest multiple of 16 KiB that
/// leaves 1 KiB for the request around it (at least 16 KiB).
pub fn chunk_for(max_frame: usize) -> u32 {
    let fit = max_frame.saturating_sub(1024) / (16 << 10) * (16 << 10);
    u32::try_from(fit).unwrap_or(CHUNK).clamp(16 << 10, CHUNK)
}
const AAD_LABEL: &[u8] = b"pqc-chat/file/v1";

/// Number of chunks of a file of `plain_len` bytes (an empty file is one empty chunk).
pub fn chunk_count(plain_len: u64, chunk: u32) -> u64 {
    if plain_len == 0 { 1 } else { plain_len.div_ceil(u64::from(chunk)) }
}

/// Encrypted length of a file of `plain_len` bytes (saturating: lengths
/// from a peer's announcement are checked against [`MAX_FILE`] first).
pub fn cipher_len(plain_len: u64, chunk: u32) -> u64 {
    plain_len.saturating_add(chunk_count(plain_len, chunk).saturating_mul(TAG_LEN as u64))
}

/// Largest file a client sends or accepts (1 PiB): far above any server's
/// `max_attachment`, low enough that no length computed from it overflows.
pub const MAX_FILE: u64 = 1 << 50;

fn nonce(index: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&index.to_be_bytes());
    n
}

fn aad(last: bool) -> Vec<u8> {
    let mut a = AAD_LABEL.to_vec();
    a.push(u8::from(last));
    a
}

/// A file key.
pub struct FileCipher {
    key: AeadKey,
    chunk: u32,
    chunks: u64,
}

impl FileCipher {
    /// A cipher for a file of `plain_len` bytes under `key`.
    pub fn new(key: &[u8; 32], plain_len: u64, chunk: u32) -> Result<Self> {
        if chunk == 0 || chunk > 4 << 20 {
            return Err(ClientError::Malformed("file chunk size"));
        }
        if plain_len > MAX_FILE {
            return Err(ClientError::Malformed("file size"));
        }
        Ok(Self { key: AeadKey::new(AeadAlgorithm::Aes256Gcm, key)?, chunk, chunks: chunk_count(plain_len, chunk) })
    }

    /// Ciphertext bytes of chunk `index` (the last may be shorter).
    pub fn sealed_chunk_len(&self) -> u64 {
        u64::from(self.chunk) + TAG_LEN as u64
    }

    /// Seals chunk `index` in place.
    pub fn seal(&self, index: u64, buf: &mut Vec<u8>) -> Result<()> {
        Ok(self.key.seal_in_place(&nonce(index), &aad(index + 1 == self.chunks), buf)?)
    }

    /// Opens chunk `index` in place, returning its plaintext (the front of `sealed`).
    pub fn open_in_place<'a>(&self, index: u64, sealed: &'a mut [u8]) -> Result<&'a mut [u8]> {
        if index >= self.chunks {
            return Err(ClientError::Malformed("file chunk index"));
        }
        Ok(self.key.open_in_place(&nonce(index), &aad(index + 1 == self.chunks), sealed)?)
    }

    /// Opens chunk `index`, returning its plaintext.
    pub fn open(&self, index: u64, sealed: &[u8]) -> Result<Vec<u8>> {
        if index >= self.chunks {
            return Err(ClientError::Malformed("file chunk index"));
        }
        Ok(self.key.open(&nonce(index), &aad(index + 1 == self.chunks), sealed)?)
    }
}

/// Bytes of a download written between two fsyncs of the file, each on a
/// thread of its own while the download goes on, so the fsync at the end
/// has little left to write.
const SYNC_EVERY: u64 = 8 << 20;

/// Reads and hashes the chunks of `file` (`plain_len` bytes) in order, and
/// seals those from chunk `first` on, handing each to `out` (the chunks
/// before `first` are on the server already: a resumed upload); returns the
/// plaintext's SHA-256. Runs on a blocking thread, a few chunks ahead of the
/// uploads. Stops early once `out` is closed (the upload was abandoned).
pub(crate) fn seal_chunks(
    mut file: std::fs::File,
    plain_len: u64,
    cipher: &FileCipher,
    first: u64,
    out: &tokio::sync::mpsc::Sender<Vec<u8>>,
) -> Result<[u8; 32]> {
    use std::io::Read;
    let mut hasher = Sha256Hasher::new();
    let chunk = u64::from(cipher.chunk);
    for index in 0..cipher.chunks {
        let want = usize::try_from(plain_len.saturating_sub(index * chunk).min(chunk))
            .map_err(|_| ClientError::Malformed("file chunk size"))?;
        let mut buf = Vec::with_capacity(want + TAG_LEN);
        buf.resize(want, 0);
        file.read_exact(&mut buf).map_err(|e| ClientError::io("cannot read the file", e))?;
        hasher.update(&buf);
        if index < first {
            continue;
        }
        cipher.seal(index, &mut buf)?;
        if out.blocking_send(buf).is_err() {
            break;
        }
    }
    Ok(hasher.finish())
}

/// An upload not yet announced to its recipients, recorded (sealed) in the
/// profile from the moment the server created its attachment until the
/// message announcing it is queued: a later `send-file` of the same file
/// to the same recipient, after a crash or a lost connection, resumes it
/// where the server's copy ends instead of starting over.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingUpload {
    /// Server attachment id.
    pub attachment: u64,
    /// For whom: `user NAME` or `room HEX-ID`.
    pub audience: String,
    /// The file's absolute path.
    pub path: String,
    /// The file's length when the upload began.
    pub plain_len: u64,
    /// The file's modification time then (nanoseconds since the epoch).
    pub modified_ns: u64,
    /// Plaintext bytes per chunk.
    pub chunk: u32,
    /// The file's key.
    pub key: Zeroizing<[u8; 32]>,
}

impl core::fmt::Debug for PendingUpload {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "PendingUpload(attachment={}, {} bytes)", self.attachment, self.plain_len)
    }
}

const PENDING_UPLOAD_VERSION: u8 = 1;

impl PendingUpload {
    /// Encodes the record; `None` if a name or path is too long to record
    /// (such an upload is simply not resumable).
    pub fn encode(&self) -> Option<Zeroizing<Vec<u8>>> {
        let mut out = Zeroizing::new(vec![PENDING_UPLOAD_VERSION]);
        out.extend_from_slice(&self.attachment.to_be_bytes());
        out.extend_from_slice(&self.plain_len.to_be_bytes());
        out.extend_from_slice(&self.modified_ns.to_be_bytes());
        out.extend_from_slice(&self.chunk.to_be_bytes());
        out.extend_from_slice(self.key.as_ref());
        for text in [&self.audience, &self.path] {
            out.extend_from_slice(&u16::try_from(text.len()).ok()?.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        Some(out)
    }

    /// Decodes a record; never panics, rejects trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let bad = |_| ClientError::Malformed("unfinished upload record");
        let mut r = Rd(bytes);
        if r.u8().map_err(bad)? != PENDING_UPLOAD_VERSION {
            return Err(ClientError::Malformed("unfinished upload record (version)"));
        }
        let (attachment, plain_len, modified_ns) =
            (r.u64().map_err(bad)?, r.u64().map_err(bad)?, r.u64().map_err(bad)?);
        let chunk = r.u32().map_err(bad)?;
        let key = Zeroizing::new(r.array::<32>().map_err(bad)?);
        let mut text = || -> Result<String> {
            let n = usize::from(r.u16().map_err(bad)?);
            let t = r.take(n).map_err(bad)?;
            String::from_utf8(t.to_vec()).map_err(|_| ClientError::Malformed("unfinished upload record (text)"))
        };
        let (audience, path) = (text()?, text()?);
        if !r.0.is_empty() {
            return Err(ClientError::Malformed("unfinished upload record (trailing bytes)"));
        }
        Ok(Self { attachment, audience, path, plain_len, modified_ns, chunk, key })
    }
}

/// Fuzz entry: decoding never panics; what decodes re-encodes to the same.
pub(crate) fn fuzz_pending_upload(bytes: &[u8]) {
    if let Ok(p) = PendingUpload::decode(bytes) {
        debug_assert!(p.encode().is_some_and(|e| PendingUpload::decode(&e).is_ok_and(|q| q == p)));
    }
}

/// Opens, hashes and writes the sealed chunks of a download to `file` in
/// order as they come from `chunks`; returns the plaintext's SHA-256 once
/// the file is complete and on disk. Runs on a blocking thread beside the
/// downloads. A chunk that does not open is [`ClientError::FileCorrupt`]
/// (`from` names the sender).
pub(crate) fn open_chunks(
    mut file: std::fs::File,
    cipher: &FileCipher,
    mut chunks: tokio::sync::mpsc::Receiver<Vec<u8>>,
    from: &str,
) -> Result<[u8; 32]> {
    use std::io::Write;
    let written = |e| ClientError::io("cannot write the file", e);
    let mut hasher = Sha256Hasher::new();
    let (mut index, mut unsynced) = (0u64, 0u64);
    let mut syncing: Option<std::thread::JoinHandle<std::io::Result<()>>> = None;
    while let Some(mut sealed) = chunks.blocking_recv() {
        let plain = cipher.open_in_place(index, &mut sealed).map_err(|_| ClientError::FileCorrupt(from.to_string()))?;
        hasher.update(plain);
        file.write_all(plain).map_err(written)?;
        index += 1;
        unsynced += plain.len() as u64;
        if unsynced >= SYNC_EVERY {
            unsynced = 0;
            if let Some(sync) = syncing.take() {
                join_sync(sync).map_err(written)?;
            }
            let copy = file.try_clone().map_err(written)?;
            match std::thread::Builder::new().name("pqc-fsync".into()).spawn(move || copy.sync_data()) {
                Ok(sync) => syncing = Some(sync),
                Err(_) => file.sync_data().map_err(written)?,
            }
        }
    }
    if index != cipher.chunks {
        return Err(ClientError::FileCorrupt(from.to_string()));
    }
    if let Some(sync) = syncing.take() {
        join_sync(sync).map_err(written)?;
    }
    file.sync_all().map_err(written)?;
    Ok(hasher.finish())
}

fn join_sync(sync: std::thread::JoinHandle<std::io::Result<()>>) -> std::io::Result<()> {
    sync.join().unwrap_or_else(|_| Err(std::io::Error::other("the fsync thread failed")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_size_fits_the_servers_frames() {
        assert_eq!(chunk_for(1 << 20), CHUNK);
        assert_eq!(chunk_for(64 << 20), CHUNK);
        assert_eq!(chunk_for(300 << 10), 288 << 10);
        assert_eq!(chunk_for(0), 16 << 10);
        // Sealed, plus the request's header, it fits the frame.
        let c = chunk_for(300 << 10) as usize;
        assert!(c + TAG_LEN + 1024 <= 300 << 10);
    }

    #[test]
    fn pending_upload_records_round_trip_and_reject_garbage() {
        let p = PendingUpload {
            attachment: 7,
            audience: "user bob".into(),
            path: "/home/alice/video.mp4".into(),
            plain_len: 100 << 20,
            modified_ns: 1_700_000_000_000_000_000,
            chunk: CHUNK,
            key: Zeroizing::new([3; 32]),
        };
        let e = p.encode().unwrap();
        assert_eq!(PendingUpload::decode(&e).unwrap(), p);
        for cut in 0..e.len() {
            assert!(PendingUpload::decode(&e[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = e.to_vec();
        long.push(0);
        assert!(PendingUpload::decode(&long).is_err());
        let mut v2 = e.to_vec();
        v2[0] = 2;
        assert!(PendingUpload::decode(&v2).is_err());
        let too_long = PendingUpload { path: "x".repeat(70_000), ..p };
        assert!(too_long.encode().is_none());
    }

    #[test]
    fn chunks_are_bound_to_position_and_end() {
        let key = [9u8; 32];
        let c = FileCipher::new(&key, 10, 4).unwrap();
        assert_eq!(chunk_count(10, 4), 3);
        assert_eq!(cipher_len(10, 4), 10 + 48);
        let mut parts = Vec::new();
        for (i, p) in [&b"abcd"[..], b"efgh", b"ij"].iter().enumerate() {
            let mut b = p.to_vec();
            c.seal(i as u64, &mut b).unwrap();
            parts.push(b);
        }
        assert_eq!(c.open(1, &parts[1]).unwrap(), b"efgh");
        assert!(c.open(0, &parts[1]).is_err(), "reordered");
        // Truncation: presenting chunk 1 as the last of a 2-chunk file fails.
        let short = FileCipher::new(&key, 8, 4).unwrap();
        assert!(short.open(1, &parts[1]).is_err());
        assert_eq!(chunk_count(0, 4), 1);
        // An announcement whose lengths would wrap around (17 P = C mod 2^64
        // with chunk 1) is refused before any length is computed from it.
        let p = u64::MAX / 17 + 1000;
        assert!(FileCipher::new(&[0; 32], p, 1).is_err());
        assert!(FileCipher::new(&[0; 32], MAX_FILE, 1).is_ok());
        assert_eq!(cipher_len(u64::MAX, 1), u64::MAX);
    }
}
