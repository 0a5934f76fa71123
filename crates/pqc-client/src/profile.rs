//! A profile: one user's keys, sessions, contacts, pinned servers and history,
//! in one SQLite file (`profile.sqlite`) inside the profile folder.
//!
//! Every secret and every piece of user content is sealed with AES-256-GCM
//! under a key derived by Argon2id from the profile passphrase; the
//! database sees namespaces, keys (user names, ids) and ciphertext only.
//! Session pickles are encrypted by `pqc-proto` with the same key.

use std::path::{Path, PathBuf};

use argon2::{Algorithm, Argon2, Params, Version};
use pqc_crypto::aead::{AeadAlgorithm, AeadKey};
use pqc_crypto::rng::{SystemRng, random_array};
use pqc_proto::{IdentityKeyPair, Session};
use pqc_store::client::ClientDb;
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// Argon2id memory cost (KiB), time cost and lanes: the OWASP baseline,
/// about 50 ms on a laptop and well under a second on a Raspberry Pi 4.
const ARGON2_M_KIB: u32 = 19 * 1024;
const ARGON2_T: u32 = 2;
const ARGON2_P: u32 = 1;
const CHECK_PLAINTEXT: &[u8] = b"pqc-chat profile v1";
/// At most this many sessions per contact are kept (see [`Profile::sessions`]).
pub const MAX_SESSIONS_PER_PEER: usize = 4;

/// Namespaces in the profile database.
pub mod ns {
    /// Plain settings: salt, user name, server address.
    pub const META: &str = "meta";
    /// Sealed identity key pair.
    pub const IDENTITY: &str = "identity";
    /// Sealed signed prekey secrets by signed prekey id.
    pub const SIGNED_PREKEY: &str = "spk";
    /// Sealed one-time X25519 prekeys by id.
    pub const ONE_TIME: &str = "opk";
    /// Sealed one-time ML-KEM prekeys by id.
    pub const ONE_TIME_KEM: &str = "okem";
    /// Session pickles by contact.
    pub const SESSION: &str = "session";
    /// Sealed pinned identity keys by contact.
    pub const CONTACT: &str = "contact";
    /// Pinned server certificate fingerprints by address.
    pub const SERVER: &str = "server";
    /// Sealed limited-view messages kept until their views are used up.
    pub const LIMITED: &str = "limited";
    /// Sealed outgoing messages not yet acknowledged by the server, by sequence number.
    pub const OUTBOX: &str = "outbox";
    /// Ids of messages already shown, by `sender/id` (drops a retried duplicate).
    pub const DELIVERED: &str = "delivered";
    /// Rooms: MLS group state plus local room data, keyed by room id (hex).
    pub const ROOM: &str = "room";
    /// This user's MLS member state (signature key, key packages).
    pub const ROOM_MEMBER: &str = "room-member";
    /// A room commit sent but not yet known to be accepted, with the state after it.
    pub const ROOM_PENDING: &str = "room-pending";
    /// Sealed uploads not yet announced (resumable), by attachment id.
    pub const UPLOAD: &str = "upload";
}

/// An open, unlocked profile.
pub struct Profile {
    dir: PathBuf,
    db: ClientDb,
    key: Zeroizing<[u8; 32]>,
    aead: AeadKey,
    /// `profile.lock`, locked while this profile is open.
    _lock: std::fs::File,
}

/// Takes the profile folder `dir` for this process ([`pqc_store::lock`]).
/// Two processes on one profile would each load a session or a room's
/// group state, both advance it and save: the second save undoes the
/// first, and the next message would be sealed again with keys already
/// used. A second command gets [`ClientError::ProfileInUse`] instead (the
/// caller may wait and try again).
fn lock_profile(dir: &Path) -> Result<std::fs::File> {
    const LOCK: &str = "profile.lock";
    pqc_store::lock::lock_folder(dir, LOCK).map_err(|e| match e {
        pqc_store::lock::LockError::InUse { holder } => ClientError::ProfileInUse { dir: dir.to_path_buf(), holder },
        pqc_store::lock::LockError::Io(e) => ClientError::io(format!("cannot lock {}", dir.join(LOCK).display()), e),
    })
}

impl core::fmt::Debug for Profile {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "Profile({})", self.dir.display())
    }
}

/// The default profile folder: `$PQC_PROFILE`, else
/// `$XDG_DATA_HOME/pqc-chat/profile`, else `~/.local/share/pqc-chat/profile`.
pub fn default_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("PQC_PROFILE") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("pqc-chat").join("profile")
}

/// Reads the passphrase from `$PQC_PASSPHRASE`, else prompts on the terminal.
pub fn passphrase(confirm: bool) -> Result<Zeroizing<String>> {
    if let Ok(p) = std::env::var("PQC_PASSPHRASE") {
        return Ok(Zeroizing::new(p));
    }
    let p = Zeroizing::new(rpassword::prompt_password("Profile passphrase: ").map_err(|_| ClientError::NoPassphrase)?);
    if confirm {
        let again =
            Zeroizing::new(rpassword::prompt_password("Repeat passphrase: ").map_err(|_| ClientError::NoPassphrase)?);
        if *again != *p {
            return Err(ClientError::Usage("the passphrases differ; nothing was created".into()));
        }
    }
    Ok(p)
}

fn derive_key(passphrase: &str, salt: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, Some(32))
        .map_err(|_| ClientError::Usage("bad Argon2 parameters".into()))?;
    let mut key = Zeroizing::new([0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
        .map_err(|_| ClientError::Usage("could not derive the profile key".into()))?;
    Ok(key)
}

impl Profile {
    /// Whether a profile exists in `dir`.
    pub fn exists(dir: &Path) -> bool {
        dir.join("profile.sqlite").is_file()
    }

    /// Opens the profile in `dir`, creating it (folder, database, salt) when
    /// `create` is set and none exists. A wrong passphrase is refused.
    pub fn open(dir: &Path, passphrase: &str, create: bool) -> Result<Self> {
        if !Self::exists(dir) && !create {
            return Err(ClientError::NotRegistered);
        }
        std::fs::create_dir_all(dir).map_err(|e| ClientError::io(format!("cannot create {}", dir.display()), e))?;
        restrict_permissions(dir);
        let lock = lock_profile(dir)?;
        let db = ClientDb::open(&dir.join("profile.sqlite"))?;
        let salt = match db.get(ns::META, "salt")? {
            Some(s) => s,
            None => {
                let s: [u8; 16] = random_array(&mut SystemRng);
                db.put(ns::META, "salt", &s)?;
                s.to_vec()
            }
        };
        let key = derive_key(passphrase, &salt)?;
        let aead = AeadKey::new(AeadAlgorithm::Aes256Gcm, key.as_ref())?;
        let profile = Self { dir: dir.to_path_buf(), db, key, aead, _lock: lock };
        match profile.db.get(ns::META, "check")? {
            Some(sealed) => {
                if profile.open_sealed(ns::META, "check", &sealed).is_err() {
                    return Err(ClientError::WrongPassphrase(dir.to_path_buf()));
                }
            }
            None => {
                let sealed = profile.seal(ns::META, "check", CHECK_PLAINTEXT)?;
                profile.db.put(ns::META, "check", &sealed)?;
            }
        }
        Ok(profile)
    }

    /// The profile folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying database (for history).
    pub fn db(&self) -> &ClientDb {
        &self.db
    }

    fn aad(ns: &str, key: &str) -> Vec<u8> {
        let mut a = Vec::with_capacity(ns.len() + key.len() + 1);
        a.extend_from_slice(ns.as_bytes());
        a.push(0);
        a.extend_from_slice(key.as_bytes());
        a
    }

    /// Seals `value` for storage under `(ns, key)`: nonce (12) || ciphertext.
    pub fn seal(&self, ns: &str, key: &str, value: &[u8]) -> Result<Vec<u8>> {
        let nonce: [u8; 12] = random_array(&mut SystemRng);
        let mut out = nonce.to_vec();
        out.extend_from_slice(&self.aead.seal(&nonce, &Self::aad(ns, key), value)?);
        Ok(out)
    }

    /// Opens a value sealed by [`Self::seal`] under `(ns, key)`.
    pub fn open_sealed(&self, ns: &str, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        if sealed.len() < 12 {
            return Err(ClientError::Malformed("sealed profile record"));
        }
        let (nonce, ct) = sealed.split_at(12);
        Ok(Zeroizing::new(self.aead.open(nonce, &Self::aad(ns, key), ct)?))
    }

    /// Runs `f` in one database transaction: all its writes land or none.
    pub fn atomically<T>(&self, f: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        self.db.begin()?;
        match f(self) {
            Ok(v) => {
                self.db.commit()?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.db.rollback();
                Err(e)
            }
        }
    }

    /// Stores a sealed record.
    pub fn put_sealed(&self, ns: &str, key: &str, value: &[u8]) -> Result<()> {
        let sealed = self.seal(ns, key, value)?;
        Ok(self.db.put(ns, key, &sealed)?)
    }

    /// Reads a sealed record.
    pub fn get_sealed(&self, ns: &str, key: &str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match self.db.get(ns, key)? {
            Some(s) => Ok(Some(self.open_sealed(ns, key, &s)?)),
            None => Ok(None),
        }
    }

    /// All sealed records of a namespace.
    pub fn list_sealed(&self, ns: &str) -> Result<Vec<(String, Zeroizing<Vec<u8>>)>> {
        self.db.list(ns)?.into_iter().map(|(k, v)| Ok((k.clone(), self.open_sealed(ns, &k, &v)?))).collect()
    }

    /// A plain setting.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        Ok(self.db.get(ns::META, key)?.and_then(|v| String::from_utf8(v).ok()))
    }

    /// Sets a plain setting.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        Ok(self.db.put(ns::META, key, value.as_bytes())?)
    }

    /// The registered user name, if any.
    pub fn username(&self) -> Result<Option<String>> {
        self.meta("username")
    }

    /// The identity key pair.
    pub fn identity(&self) -> Result<IdentityKeyPair> {
        let bytes = self.get_sealed(ns::IDENTITY, "self")?.ok_or(ClientError::NotRegistered)?;
        Ok(IdentityKeyPair::from_bytes(&bytes)?)
    }

    /// Stores the identity key pair.
    pub fn set_identity(&self, id: &IdentityKeyPair) -> Result<()> {
        self.put_sealed(ns::IDENTITY, "self", &id.to_bytes())
    }

    /// Allocates `n` consecutive prekey ids and returns the first.
    pub fn allocate_prekey_ids(&self, n: u32) -> Result<u32> {
        let next = self.meta("next_prekey_id")?.and_then(|s| s.parse::<u32>().ok()).unwrap_or(1);
        let after = next.checked_add(n).ok_or(ClientError::Usage("prekey ids exhausted".into()))?;
        self.set_meta("next_prekey_id", &after.to_string())?;
        Ok(next)
    }

    /// The sessions with `peer`, the active one first.
    pub fn sessions(&self, peer: &str) -> Result<Vec<Session>> {
        let Some(blob) = self.db.get(ns::SESSION, peer)? else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        let mut rest = blob.as_slice();
        while !rest.is_empty() {
            if rest.len() < 4 {
                return Err(ClientError::Malformed("session list"));
            }
            let (len, tail) = rest.split_at(4);
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if tail.len() < len {
                return Err(ClientError::Malformed("session list"));
            }
            let (p, tail) = tail.split_at(len);
            out.push(Session::from_pickle(p, &self.key)?);
            rest = tail;
        }
        Ok(out)
    }

    /// Stores the sessions with `peer` (active first; at most
    /// [`MAX_SESSIONS_PER_PEER`] are kept).
    pub fn save_sessions(&self, peer: &str, sessions: &[Session]) -> Result<()> {
        let mut blob = Vec::new();
        for s in sessions.iter().take(MAX_SESSIONS_PER_PEER) {
            let p = s.pickle(&self.key, &mut SystemRng)?;
            let len = u32::try_from(p.len()).map_err(|_| ClientError::Malformed("session pickle"))?;
            blob.extend_from_slice(&len.to_be_bytes());
            blob.extend_from_slice(&p);
        }
        Ok(self.db.put(ns::SESSION, peer, &blob)?)
    }

    /// The identity key pinned for `peer`.
    pub fn contact_key(&self, peer: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_sealed(ns::CONTACT, peer)?.map(|v| v.to_vec()))
    }

    /// Pins `peer`'s identity key.
    pub fn set_contact_key(&self, peer: &str, key: &[u8]) -> Result<()> {
        self.put_sealed(ns::CONTACT, peer, key)
    }

    /// Contacts with a pinned key.
    pub fn contacts(&self) -> Result<Vec<String>> {
        Ok(self.db.list(ns::CONTACT)?.into_iter().map(|(k, _)| k).collect())
    }

    /// Checks `key` against the key pinned for `peer`, pinning it on first
    /// contact (trust on first use).
    pub fn check_contact(&self, peer: &str, key: &[u8]) -> Result<()> {
        match self.contact_key(peer)? {
            Some(pinned) if pqc_crypto::kdf::ct_eq(&pinned, key) => Ok(()),
            Some(_) => Err(ClientError::IdentityChanged(peer.to_string())),
            None => self.set_contact_key(peer, key),
        }
    }

    /// The pinned certificate fingerprint of a server address.
    pub fn server_pin(&self, addr: &str) -> Result<Option<String>> {
        Ok(self.db.get(ns::SERVER, addr)?.and_then(|v| String::from_utf8(v).ok()))
    }

    /// Pins a server certificate fingerprint.
    pub fn set_server_pin(&self, addr: &str, fingerprint_hex: &str) -> Result<()> {
        Ok(self.db.put(ns::SERVER, addr, fingerprint_hex.as_bytes())?)
    }
}

#[cfg(unix)]
fn restrict_permissions(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

#[cfg(not(unix))]
fn restrict_permissions(_dir: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passphrase_is_checked_and_records_are_sealed() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path(), "correct horse", true).unwrap();
        p.put_sealed("x", "k", b"very secret text").unwrap();
        assert_eq!(p.get_sealed("x", "k").unwrap().unwrap().as_slice(), b"very secret text");
        drop(p);
        let raw = std::fs::read(dir.path().join("profile.sqlite")).unwrap();
        assert!(!raw.windows(16).any(|w| w == b"very secret text"));
        assert!(matches!(Profile::open(dir.path(), "wrong", false), Err(ClientError::WrongPassphrase(_))));
        let p = Profile::open(dir.path(), "correct horse", false).unwrap();
        assert_eq!(p.get_sealed("x", "k").unwrap().unwrap().as_slice(), b"very secret text");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(Profile::open(empty.path(), "x", false), Err(ClientError::NotRegistered)));
    }

    #[test]
    fn one_process_at_a_time_opens_a_profile() {
        let dir = tempfile::tempdir().unwrap();
        let p = Profile::open(dir.path(), "pw", true).unwrap();
        // A second opening (another command on the same profile) is refused
        // before the passphrase is even tried, naming the holder.
        let Err(err) = Profile::open(dir.path(), "not even the passphrase", false) else {
            panic!("a second opening of an open profile")
        };
        assert!(matches!(err, ClientError::ProfileInUse { .. }), "{err:?}");
        let text = err.to_string();
        assert!(text.contains(&format!("(process {})", std::process::id())), "{text}");
        assert!(text.contains("pqc-client chat"), "{text}");
        drop(p);
        Profile::open(dir.path(), "pw", false).unwrap();
    }
}
