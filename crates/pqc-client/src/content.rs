//! The plaintext inside each end-to-end encrypted message.
//!
//! ```text
//! content   = version (u8 = 1) || type (u8) || message id (16 random bytes)
//!             || max_views (u32 BE, 0 = unlimited) || body
//! text      (type 0x01): body = UTF-8 text (rest of the message)
//! file      (type 0x02): body = attachment id (u64) || ciphertext length (u64)
//!                               || plaintext length (u64) || chunk size (u32)
//!                               || file key (32) || SHA-256 of the plaintext (32)
//!                               || name length (u16) || name (UTF-8)
//! room invitation (type 0x03): body = MLS Welcome (rest of the message)
//! ```
//!
//! The sender puts `max_views` inside the encrypted content as well as on the
//! envelope, so a server cannot strip the limit. The message id lets the
//! recipient drop a message that arrives twice because the sender retried a
//! send whose acknowledgement was lost.

use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

const VERSION: u8 = 1;
const TYPE_TEXT: u8 = 0x01;
const TYPE_FILE: u8 = 0x02;
const TYPE_ROOM_WELCOME: u8 = 0x03;

/// A file announcement: where the encrypted bytes are and how to open them.
#[derive(Clone, PartialEq, Eq)]
pub struct FileRef {
    /// Server attachment id.
    pub attachment: u64,
    /// Length of the encrypted blob on the server.
    pub cipher_len: u64,
    /// Length of the file.
    pub plain_len: u64,
    /// Plaintext bytes per encrypted chunk.
    pub chunk: u32,
    /// The file's AES-256-GCM key.
    pub key: Zeroizing<[u8; 32]>,
    /// SHA-256 of the file.
    pub sha256: [u8; 32],
    /// The file name the sender gave (untrusted: sanitise before use).
    pub name: String,
}

impl core::fmt::Debug for FileRef {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "FileRef(attachment={}, {} bytes)", self.attachment, self.plain_len)
    }
}

/// Message content.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    /// A text message.
    Text(String),
    /// A file.
    File(FileRef),
    /// An invitation to a room: the MLS Welcome (`rooms invite`).
    RoomWelcome(Vec<u8>),
}

/// Content plus its view limit.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Content {
    /// Random id chosen by the sender, the same on every retry.
    pub id: [u8; 16],
    /// Maximum views (None = unlimited).
    pub max_views: Option<u32>,
    /// What was sent.
    pub body: Body,
}

impl Content {
    /// Encodes the content.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::new());
        let ty = match self.body {
            Body::Text(_) => TYPE_TEXT,
            Body::File(_) => TYPE_FILE,
            Body::RoomWelcome(_) => TYPE_ROOM_WELCOME,
        };
        out.extend_from_slice(&[VERSION, ty]);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(&self.max_views.unwrap_or(0).to_be_bytes());
        match &self.body {
            Body::Text(t) => out.extend_from_slice(t.as_bytes()),
            Body::RoomWelcome(w) => out.extend_from_slice(w),
            Body::File(f) => {
                out.extend_from_slice(&f.attachment.to_be_bytes());
                out.extend_from_slice(&f.cipher_len.to_be_bytes());
                out.extend_from_slice(&f.plain_len.to_be_bytes());
                out.extend_from_slice(&f.chunk.to_be_bytes());
                out.extend_from_slice(f.key.as_ref());
                out.extend_from_slice(&f.sha256);
                let name = f.name.as_bytes();
                let len = u16::try_from(name.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&name[..usize::from(len)]);
            }
        }
        out
    }

    /// Decodes content; never panics, rejects trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Rd(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(ClientError::Usage(format!(
                "a message uses content version {version}; this pqc-client understands version {VERSION}: upgrade"
            )));
        }
        let ty = r.u8()?;
        let id = r.array::<16>()?;
        let max_views = match r.u32()? {
            0 => None,
            n => Some(n),
        };
        let body = match ty {
            TYPE_TEXT => {
                let text = std::str::from_utf8(r.rest()).map_err(|_| ClientError::Malformed("text (not UTF-8)"))?;
                Body::Text(text.to_owned())
            }
            TYPE_FILE => {
                let attachment = r.u64()?;
                let cipher_len = r.u64()?;
                let plain_len = r.u64()?;
                let chunk = r.u32()?;
                let key = Zeroizing::new(r.array::<32>()?);
                let sha256 = r.array::<32>()?;
                let n = usize::from(r.u16()?);
                let name = std::str::from_utf8(r.take(n)?).map_err(|_| ClientError::Malformed("file name"))?.to_owned();
                if !r.0.is_empty() {
                    return Err(ClientError::Malformed("file message (trailing bytes)"));
                }
                Body::File(FileRef { attachment, cipher_len, plain_len, chunk, key, sha256, name })
            }
            TYPE_ROOM_WELCOME => Body::RoomWelcome(r.rest().to_vec()),
            _ => return Err(ClientError::Malformed("message content (unknown type)")),
        };
        Ok(Self { id, max_views, body })
    }
}

/// A reader of big-endian fields that fails cleanly on short input.
pub(crate) struct Rd<'a>(pub(crate) &'a [u8]);

impl<'a> Rd<'a> {
    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(ClientError::Malformed("message content (truncated)"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Entry point shared by the fuzz target and the corpus replay test.
pub fn fuzz_decode(bytes: &[u8]) {
    if let Ok(c) = Content::decode(bytes) {
        let again = Content::decode(&c.encode());
        debug_assert!(again.is_ok());
    }
    // The same bytes as a room message's content (text, audio/video, file),
    // as a saved room record, and as an unfinished upload's record in the
    // profile.
    crate::rooms::fuzz_room_content(bytes);
    crate::files::fuzz_pending_upload(bytes);
}

/// Makes a sender-chosen file name safe to create inside the output folder:
/// only the last path component, no control characters or characters
/// Windows forbids, no leading dots, no trailing dots or spaces, at most 200
/// bytes, and a name Windows reserves for a device (`CON`, `nul.txt`,
/// `COM1`...) gets a leading `_`.
pub fn sanitize_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let mut clean: String =
        last.chars().filter(|c| !c.is_control() && !matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|')).collect();
    // 199: room for the `_` of a device name.
    while clean.len() > 199 {
        clean.pop();
    }
    clean = clean.trim().trim_start_matches('.').trim_end_matches(['.', ' ']).to_string();
    if clean.is_empty() {
        return "file".to_string();
    }
    if is_reserved_device_name(&clean) { format!("_{clean}") } else { clean }
}

/// `CON`, `PRN`, `AUX`, `NUL`, `COM1`-`COM9`, `LPT1`-`LPT9`, in any case,
/// alone or before an extension.
fn is_reserved_device_name(name: &str) -> bool {
    let stem = name.split('.').next().unwrap_or("").trim_end().to_ascii_uppercase();
    match stem.as_str() {
        "CON" | "PRN" | "AUX" | "NUL" => true,
        s => {
            (s.starts_with("COM") || s.starts_with("LPT"))
                && s.len() == 4
                && s.as_bytes().get(3).is_some_and(|d| (b'1'..=b'9').contains(d))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        let t = Content { id: [5; 16], max_views: Some(3), body: Body::Text("héllo".into()) };
        assert_eq!(Content::decode(&t.encode()).unwrap(), t);
        let f = Content {
            id: [6; 16],
            max_views: None,
            body: Body::File(FileRef {
                attachment: 7,
                cipher_len: 100,
                plain_len: 84,
                chunk: 65536,
                key: Zeroizing::new([1; 32]),
                sha256: [2; 32],
                name: "a.txt".into(),
            }),
        };
        let enc = f.encode();
        assert_eq!(Content::decode(&enc).unwrap(), f);
        assert!(Content::decode(&enc[..enc.len() - 1]).is_err());
        let mut extra = enc.to_vec();
        extra.push(0);
        assert!(Content::decode(&extra).is_err());
        assert!(Content::decode(&[2, 1, 0, 0, 0, 0]).is_err());
        assert!(Content::decode(&[1, 1, 0, 0, 0, 0]).is_err());
        assert!(Content::decode(&[]).is_err());
    }

    #[test]
    fn file_names_cannot_escape() {
        assert_eq!(sanitize_file_name("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_file_name("..\\..\\win.ini"), "win.ini");
        assert_eq!(sanitize_file_name("/abs/path/x.png"), "x.png");
        assert_eq!(sanitize_file_name(".."), "file");
        assert_eq!(sanitize_file_name(".bashrc"), "bashrc");
        assert_eq!(sanitize_file_name("a\u{0}b\nc"), "abc");
        assert_eq!(sanitize_file_name(""), "file");
        assert!(sanitize_file_name(&"x".repeat(500)).len() <= 200);
        // Names Windows would open as a device, or silently change.
        assert_eq!(sanitize_file_name("CON"), "_CON");
        assert_eq!(sanitize_file_name("nul.txt"), "_nul.txt");
        assert_eq!(sanitize_file_name("x/Com1.tar.gz"), "_Com1.tar.gz");
        assert_eq!(sanitize_file_name("lpt9"), "_lpt9");
        assert_eq!(sanitize_file_name("COM0"), "COM0");
        assert_eq!(sanitize_file_name("CONSOLE.txt"), "CONSOLE.txt");
        assert_eq!(sanitize_file_name("report.pdf. . "), "report.pdf");
        assert_eq!(sanitize_file_name(" . "), "file");
        assert!(sanitize_file_name(&format!("nul.{}", "x".repeat(500))).len() <= 200);
    }
}
