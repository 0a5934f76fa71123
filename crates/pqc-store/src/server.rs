//! Server-side storage.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use pqc_wire::{
    AttachmentId, Envelope, EnvelopeId, PreKeyId, PrekeyBundle, RoomId, RoomMessage, RoomMessageKind, Username,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::StoreError;
use crate::mailbox::Mailboxes;

/// Remaining one-time prekeys of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrekeyCounts {
    /// One-time classical prekeys left.
    pub one_time: u32,
    /// One-time KEM prekeys left.
    pub one_time_kem: u32,
}

/// Who may download an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Audience {
    /// One user.
    User(Username),
    /// The members of a room when the upload finished (its readers), but the sender.
    Room(RoomId),
}

/// Metadata of an attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachmentMeta {
    /// Id.
    pub id: AttachmentId,
    /// Uploader.
    pub from: Username,
    /// Who may download it.
    pub to: Audience,
    /// Announced size.
    pub total_len: u64,
    /// Bytes stored so far.
    pub received: u64,
    /// Upload finished.
    pub complete: bool,
}

/// What the directory tells about a user: its identity key and its current
/// signed prekeys blob (empty if none was uploaded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    /// `HybridVerifyingKey` bytes.
    pub identity_key: Vec<u8>,
    /// The signed prekeys blob.
    pub signed_prekeys: Vec<u8>,
}

/// Storage used by the relay server. Every method is one transaction.
pub trait ServerStore: Send {
    /// Creates an account.
    fn create_account(&mut self, user: &Username, identity_key: &[u8]) -> Result<(), StoreError>;
    /// An account's identity key.
    fn identity_key(&mut self, user: &Username) -> Result<Option<Vec<u8>>, StoreError>;
    /// An account's directory entry: identity key and current signed prekeys
    /// blob (empty if none was uploaded). Consumes nothing.
    fn directory_entry(&mut self, user: &Username) -> Result<Option<DirectoryEntry>, StoreError>;
    /// Replaces the signed prekey blob and adds (or replaces by id) one-time
    /// prekeys. An upload that would leave the user more one-time prekeys
    /// of a kind than the store's limit is refused whole (`Invalid`; nothing
    /// of it, the signed blob neither, is stored).
    fn upload_prekeys(
        &mut self,
        user: &Username,
        signed_prekeys: &[u8],
        one_time: &[(PreKeyId, Vec<u8>)],
        one_time_kem: &[(PreKeyId, Vec<u8>)],
    ) -> Result<PrekeyCounts, StoreError>;
    /// Returns the bundle and atomically consumes one one-time prekey of each
    /// kind. `None` if the user uploaded no prekeys; `UnknownUser` if no account.
    fn take_prekey_bundle(&mut self, user: &Username) -> Result<Option<(PrekeyBundle, PrekeyCounts)>, StoreError>;
    /// Queues an envelope; returns its id once committed.
    fn enqueue(
        &mut self,
        to: &Username,
        from: &Username,
        max_views: Option<u32>,
        payload: &[u8],
        max_mailbox: u32,
    ) -> Result<EnvelopeId, StoreError>;
    /// Returns queued envelopes (oldest first) up to about `max_bytes` of
    /// payload (at least one), and whether more remain. Counts a view for
    /// limited-view envelopes and deletes those whose last view this was.
    fn fetch(&mut self, user: &Username, max_bytes: usize) -> Result<(Vec<Envelope>, bool), StoreError>;
    /// Deletes the user's envelopes with these ids; returns how many.
    fn ack(&mut self, user: &Username, ids: &[EnvelopeId]) -> Result<u32, StoreError>;
    /// Envelopes queued for all users.
    fn queued_total(&mut self) -> Result<u64, StoreError>;
    /// Deletes the envelopes queued before `before` (Unix seconds) and never
    /// acknowledged (their recipient did not come back in time); returns how many.
    fn expire_envelopes(&mut self, before: u64) -> Result<u32, StoreError>;
    /// Deletes room entries stored before `before` (Unix seconds), read or
    /// not: a member who had not fetched them can no longer follow the room
    /// (its cursor moves past them and its fetches of the room answer
    /// `HistoryExpired` until it joins again). Returns how many went.
    fn expire_room_entries(&mut self, before: u64) -> Result<u32, StoreError>;
    /// Creates an attachment record.
    fn attachment_begin(&mut self, meta: &AttachmentMeta) -> Result<(), StoreError>;
    /// An attachment's metadata.
    fn attachment(&mut self, id: AttachmentId) -> Result<Option<AttachmentMeta>, StoreError>;
    /// Appends a chunk at `offset` (must equal the bytes received); returns the new total.
    fn attachment_append(&mut self, id: AttachmentId, offset: u64, data: &[u8]) -> Result<u64, StoreError>;
    /// Marks the upload complete (all bytes present). For a room attachment,
    /// the room's members other than the sender become its readers.
    fn attachment_finish(&mut self, id: AttachmentId) -> Result<(), StoreError>;
    /// Whether `user` is a reader of the room attachment `id`.
    fn attachment_is_reader(&mut self, id: AttachmentId, user: &Username) -> Result<bool, StoreError>;
    /// `user` is done with the room attachment `id`; deletes the attachment
    /// when no reader is left. Returns whether it was deleted.
    fn attachment_reader_done(&mut self, id: AttachmentId, user: &Username) -> Result<bool, StoreError>;
    /// Reads up to `max_len` bytes at `offset`.
    fn attachment_read(&mut self, id: AttachmentId, offset: u64, max_len: u32) -> Result<Vec<u8>, StoreError>;
    /// Deletes an attachment and its bytes.
    fn attachment_delete(&mut self, id: AttachmentId) -> Result<bool, StoreError>;
    /// Deletes `sender`'s unfinished uploads but the newest `keep`; returns
    /// how many went. Bounds what abandoned uploads can hold on disk.
    fn attachments_keep_unfinished(&mut self, sender: &Username, keep: u32) -> Result<u32, StoreError>;
    /// Bytes of the attachments `sender` began that are still here
    /// (unfinished, or waiting for their recipients), as announced.
    fn attachment_bytes_of(&mut self, sender: &Username) -> Result<u64, StoreError>;
    /// Deletes the unfinished uploads begun before `before` (Unix seconds);
    /// returns how many went.
    fn attachments_expire_unfinished(&mut self, before: i64) -> Result<u32, StoreError>;
    /// Deletes the finished attachments uploaded before `before` (Unix
    /// seconds) that are still here: a recipient who never took them (or,
    /// for a room's file, a member who never did). Returns how many went.
    fn attachments_expire_finished(&mut self, before: i64) -> Result<u32, StoreError>;

    /// Creates a room at epoch 0 with `owner` as its only member (`RoomExists` if taken).
    fn room_create(&mut self, room: &RoomId, owner: &Username, max: u32, group_info: &[u8]) -> Result<(), StoreError>;
    /// The room's sealed GroupInfo and epoch (`NotFound` if no such room).
    fn room_info(&mut self, room: &RoomId) -> Result<(Vec<u8>, u64), StoreError>;
    /// External join: checks the limit (`RoomFull`) and the epoch
    /// (`EpochConflict`), adds `user` as a member, appends the commit (the
    /// joiner's cursor starts at it), advances the epoch and replaces the
    /// GroupInfo. Returns the commit's sequence number. A member joining
    /// again (a resync: its external commit removes its old leaf, after its
    /// history expired) keeps its seat; its cursor moves to the commit.
    fn room_join(
        &mut self,
        room: &RoomId,
        user: &Username,
        epoch: u64,
        commit: &[u8],
        group_info: &[u8],
    ) -> Result<u64, StoreError>;
    /// Invited join: as [`ServerStore::room_join`], but the commit comes from
    /// `sender`, who must be a member (`NotAMember`), and adds `member`, who
    /// must have an account (`UnknownUser`).
    fn room_add(
        &mut self,
        room: &RoomId,
        sender: &Username,
        member: &Username,
        epoch: u64,
        commit: &[u8],
        group_info: &[u8],
    ) -> Result<u64, StoreError>;
    /// Adds opaque MLS key packages for `user`; refuses (`Invalid`) to hold
    /// more than `max_stored`. Returns how many are stored now.
    fn upload_key_packages(
        &mut self,
        user: &Username,
        packages: &[Vec<u8>],
        max_stored: u32,
    ) -> Result<u32, StoreError>;
    /// Takes (deletes) the oldest key package of `user` (`UnknownUser` if no
    /// such account); returns it and how many are left.
    fn take_key_package(&mut self, user: &Username) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Appends an entry from a member (`NotAMember` otherwise). Every entry
    /// must carry the room's current epoch (`EpochConflict`); a commit
    /// advances it and its `group_info` replaces the stored one. An
    /// application message is refused while a proposal appended since the
    /// last commit waits (`ProposalPending`). So a sender need not sync
    /// before it sends: the relay refuses what was built on a stale view.
    /// Returns the sequence number.
    fn room_append(
        &mut self,
        room: &RoomId,
        sender: &Username,
        epoch: u64,
        kind: RoomMessageKind,
        payload: &[u8],
        group_info: Option<&[u8]>,
    ) -> Result<u64, StoreError>;
    /// The room's members.
    fn room_members(&mut self, room: &RoomId) -> Result<Vec<Username>, StoreError>;
    /// Removes `user` from the room's routing; entries now read by all
    /// remaining members are deleted, and the room itself once nobody is left.
    fn room_leave(&mut self, room: &RoomId, user: &Username) -> Result<(), StoreError>;
    /// Entries after `user`'s cursor in each of its rooms (or only `room`),
    /// in room order, up to about `max_bytes` (at least one); and whether more remain.
    fn room_fetch(
        &mut self,
        user: &Username,
        room: Option<&RoomId>,
        max_bytes: usize,
    ) -> Result<(Vec<RoomMessage>, bool), StoreError>;
    /// Advances `user`'s cursor to `seq` (never backwards); deletes entries
    /// every member has read; returns how many were deleted.
    fn room_ack(&mut self, room: &RoomId, user: &Username, seq: u64) -> Result<u32, StoreError>;
}

/// The schema this build writes: one step of [`MIGRATIONS`] per version.
const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

const MIGRATION_1: &str = "
CREATE TABLE accounts (
    username TEXT PRIMARY KEY,
    identity_key BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE prekeys (
    username TEXT PRIMARY KEY REFERENCES accounts(username) ON DELETE CASCADE,
    signed_prekeys BLOB NOT NULL
);
CREATE TABLE one_time_prekeys (
    username TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
    kind INTEGER NOT NULL,           -- 0 = classical, 1 = KEM
    key_id INTEGER NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (username, kind, key_id)
);
CREATE TABLE envelopes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
    sender TEXT NOT NULL,
    max_views INTEGER,
    views_left INTEGER,
    payload BLOB NOT NULL
);
CREATE INDEX envelopes_by_recipient ON envelopes(recipient, id);
CREATE TABLE attachments (
    id INTEGER PRIMARY KEY,
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    total_len INTEGER NOT NULL,
    received INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE attachment_chunks (
    attachment_id INTEGER NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    offset INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (attachment_id, offset)
);
";

/// Rooms: only opaque ids, user names, counters and ciphertext.
const MIGRATION_2: &str = "
CREATE TABLE rooms (
    room_id BLOB PRIMARY KEY,
    owner TEXT NOT NULL,
    max_participants INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    next_seq INTEGER NOT NULL DEFAULT 1,
    group_info BLOB NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (unixepoch())
);
CREATE TABLE room_members (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    cursor INTEGER NOT NULL,         -- last sequence number read
    PRIMARY KEY (room_id, username)
);
CREATE INDEX room_members_by_user ON room_members(username);
CREATE TABLE room_log (
    room_id BLOB NOT NULL REFERENCES rooms(room_id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    sender TEXT NOT NULL,
    kind INTEGER NOT NULL,           -- 0 application, 1 commit, 2 proposal
    payload BLOB NOT NULL,
    PRIMARY KEY (room_id, seq)
);
";

/// Pruning a room log after an acknowledgement needs the lowest cursor of
/// the room's members: an index makes that one lookup instead of a scan of
/// every member on every acknowledgement. Room files: an attachment may
/// belong to a room, readable by the members it lists as readers.
const MIGRATION_3: &str = "
CREATE INDEX room_members_by_cursor ON room_members(room_id, cursor);
ALTER TABLE attachments ADD COLUMN room_id BLOB;
CREATE TABLE attachment_readers (
    attachment_id INTEGER NOT NULL REFERENCES attachments(id) ON DELETE CASCADE,
    username TEXT NOT NULL,
    PRIMARY KEY (attachment_id, username)
);
CREATE INDEX attachment_readers_by_user ON attachment_readers(username);
";

/// MLS key packages, published like one-time prekeys (opaque blobs).
const MIGRATION_4: &str = "
CREATE TABLE key_packages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL REFERENCES accounts(username) ON DELETE CASCADE,
    package BLOB NOT NULL
);
CREATE INDEX key_packages_by_user ON key_packages(username, id);
";

/// Unfinished uploads are bounded per sender: `begun` (microseconds since
/// the epoch) orders a sender's uploads, oldest first, where the random id
/// and the one-second `created_at` cannot.
const MIGRATION_5: &str = "
ALTER TABLE attachments ADD COLUMN begun INTEGER NOT NULL DEFAULT 0;
CREATE INDEX attachments_by_sender ON attachments(sender, complete, begun);
";

/// Proposals (a member's leave) appended since the room's last commit: an
/// application message waits until a member committed them. The GroupInfo
/// (≈ 146 KB at 100 members) moves out of the room's row, which every entry
/// updates (SQLite rebuilds a whole row, overflow pages included, to change
/// one column); only joins read it and commits replace it.
const MIGRATION_6: &str = "
CREATE TABLE room_group_info (
    room_id BLOB PRIMARY KEY REFERENCES rooms(room_id) ON DELETE CASCADE,
    group_info BLOB NOT NULL
);
INSERT INTO room_group_info (room_id, group_info) SELECT room_id, group_info FROM rooms;
ALTER TABLE rooms DROP COLUMN group_info;
ALTER TABLE rooms ADD COLUMN proposals INTEGER NOT NULL DEFAULT 0;
";

/// Room entries expire like envelopes: each records when it was stored
/// (entries from before this version count from the upgrade); a member whose
/// unread entries expired is `lost` until it joins the room again.
const MIGRATION_7: &str = "
ALTER TABLE room_log ADD COLUMN at INTEGER NOT NULL DEFAULT 0;
UPDATE room_log SET at = unixepoch();
CREATE INDEX room_log_by_time ON room_log(at);
ALTER TABLE room_members ADD COLUMN lost INTEGER NOT NULL DEFAULT 0;
";

/// The schema's steps, oldest first: version `n` is the first `n` of them.
/// A room's log is bounded in bytes: each room keeps the size of its
/// entries' ciphertext (counted from the log when upgrading).
const MIGRATION_8: &str = "
ALTER TABLE rooms ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET log_bytes = (SELECT COALESCE(SUM(length(payload)), 0) FROM room_log l WHERE l.room_id = rooms.room_id);
";

const MIGRATIONS: [&str; 8] =
    [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5, MIGRATION_6, MIGRATION_7, MIGRATION_8];

/// SQLite implementation of [`ServerStore`].
///
/// Attachment bodies of a store opened on a file live as files beside the
/// database (`attachments/<id as 16 hex digits>`), written as chunks arrive;
/// the database keeps their metadata. The `received` count in the database
/// advances only at *checkpoints*, after the file is fsynced: every
/// [`ATTACHMENT_CHECKPOINT`] bytes the file is fsynced on a thread of its
/// own while the upload goes on, and the length it made durable is recorded
/// at the next checkpoint; the last byte is fsynced and recorded at once.
/// The bytes written since are counted in memory, so after a crash an upload
/// resumes from a length whose bytes are on disk (the file is cut back to it
/// when the store opens). An in-memory store keeps bodies in the database.
#[derive(Debug)]
pub struct SqliteServerStore {
    conn: Connection,
    /// Folder of attachment bodies (`None`: bodies in the database).
    files: Option<PathBuf>,
    /// Uploads in progress: bytes written past the last checkpoint.
    written: HashMap<AttachmentId, u64>,
    /// Uploads in progress: the fsync of the last checkpoint, running on its
    /// own thread so the database thread goes on with other work, and the
    /// length it makes durable (recorded at the next checkpoint).
    syncing: HashMap<AttachmentId, (u64, JoinHandle<std::io::Result<()>>)>,
    /// The data folder's lock (`server.lock`), for a store on files.
    lock: Option<std::fs::File>,
    /// Attachments deleted by the current transaction: their files go once it commits.
    doomed: Vec<AttachmentId>,
    /// Inside [`SqliteServerStore::begin_batch`].
    in_batch: bool,
    /// The envelopes waiting for their recipients (`mailbox.log` beside
    /// the database; see [`crate::mailbox`]).
    mail: Mailboxes,
    /// Accounts known to exist (an envelope's recipient is checked against
    /// it before the database). Accounts are never deleted; cleared when a
    /// batch, which may have created one, is rolled back.
    accounts: HashSet<Username>,
    /// One-time prekeys (and, apart, one-time KEM prekeys) a user may hold.
    max_one_time_prekeys: u32,
    /// Ciphertext bytes queued per recipient.
    max_mailbox_bytes: u64,
    /// Ciphertext bytes of a room's log.
    max_room_log_bytes: u64,
    /// Rooms a user may be a member of.
    max_rooms_per_user: u32,
}

/// Default of [`SqliteServerStore::set_max_rooms_per_user`].
pub const MAX_ROOMS_PER_USER: u32 = 500;

/// Default of [`SqliteServerStore::set_max_room_log_bytes`] (256 MiB).
pub const MAX_ROOM_LOG_BYTES: u64 = 256 << 20;

/// Default of [`SqliteServerStore::set_max_mailbox_bytes`] (100 MiB):
/// files travel as attachments, so a mailbox holds messages and file
/// announcements.
pub const MAX_MAILBOX_BYTES: u64 = 100 << 20;

/// Default of [`SqliteServerStore::set_max_one_time_prekeys`]. A client
/// uploads 50 of each kind when it registers and 50 more each time the
/// relay reports that few are left: far below this.
pub const MAX_ONE_TIME_PREKEYS: u32 = 1000;

/// Takes the data folder `dir` for this process ([`crate::lock`]): a
/// second server on it would append to the same mailbox log from its own
/// idea of where it ends, and cut what it took for a torn tail; it is
/// refused instead, naming the process that holds the folder.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    crate::lock::lock_folder(dir, "server.lock").map_err(|e| match e {
        crate::lock::LockError::InUse { holder } => StoreError::InUse(format!(
            "the data folder {} is in use by another pqc-server{holder}; stop it first, or give this one another \
             folder (--data)",
            dir.display()
        )),
        crate::lock::LockError::Io(e) => e.into(),
    })
}

/// Bytes of an upload written between two fsyncs of its file (and updates
/// of its durable length in the database).
pub const ATTACHMENT_CHECKPOINT: u64 = 8 << 20;

/// Statements through rusqlite's per-connection cache: each SQL text is
/// compiled once and reused, which the hot paths (enqueue, fetch, ack, room
/// append and ack) run thousands of times a second.
trait Cached {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize>;
    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>;
}

impl Cached for Connection {
    fn exec<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.prepare_cached(sql)?.execute(params)
    }

    fn row<T, P, F>(&self, sql: &str, params: P, f: F) -> rusqlite::Result<T>
    where
        P: rusqlite::Params,
        F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    {
        self.prepare_cached(sql)?.query_row(params, f)
    }
}

fn user(s: String) -> Result<Username, StoreError> {
    Username::new(&s).map_err(|e| StoreError::Invalid(format!("stored username: {e}")))
}

fn i64_of(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Invalid("value out of range".into()))
}

impl SqliteServerStore {
    /// Opens (creating and migrating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let folder = path.parent().unwrap_or(Path::new("."));
        let lock = lock_data_dir(folder)?;
        let mut store = Self::init(Connection::open(path)?)?;
        store.lock = Some(lock);
        store.mail = Mailboxes::open(&folder.join("mailbox.log"))?;
        store.import_envelopes()?;
        let dir = folder.join("attachments");
        std::fs::create_dir_all(&dir)?;
        store.files = Some(dir);
        store.reconcile_files()?;
        Ok(store)
    }

    /// After a restart: deletes files of attachments that no longer exist,
    /// and cuts the file of each unfinished upload back to its durable length.
    fn reconcile_files(&mut self) -> Result<(), StoreError> {
        let Some(dir) = self.files.clone() else { return Ok(()) };
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let id = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| u64::from_str_radix(n, 16).ok())
                .map(AttachmentId);
            let row: Option<(i64, bool)> = match id {
                Some(id) => self
                    .conn
                    .row("SELECT received, complete FROM attachments WHERE id = ?1", params![i64_of(id.0)?], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })
                    .optional()?,
                None => None,
            };
            match row {
                None => std::fs::remove_file(&path)?,
                Some((received, false)) => {
                    let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                    f.set_len(u64::try_from(received).unwrap_or(0))?;
                    f.sync_all()?;
                }
                Some((_, true)) => {}
            }
        }
        Ok(())
    }

    /// Bytes of attachment `id` received: `durable` (the database's count) or
    /// more, written since its last checkpoint.
    fn received(written: &HashMap<AttachmentId, u64>, id: AttachmentId, durable: u64) -> u64 {
        durable.max(written.get(&id).copied().unwrap_or(0))
    }

    fn body_path(&self, id: AttachmentId) -> Option<PathBuf> {
        self.files.as_ref().map(|d| d.join(format!("{:016x}", id.0)))
    }

    /// Deletes the files of attachments whose rows are gone (after a commit).
    /// The unlinking runs on a thread of its own: freeing a large file takes
    /// the file system tens of milliseconds, which neither the operation's
    /// caller nor the next operations should wait for. A file left behind by
    /// a crash or a failed unlink is swept when the store next opens.
    fn remove_doomed(&mut self) -> Result<(), StoreError> {
        let mut paths = Vec::new();
        for id in std::mem::take(&mut self.doomed) {
            self.written.remove(&id);
            // A running fsync finishes on its own; its file is going anyway.
            self.syncing.remove(&id);
            let gone = self
                .conn
                .row("SELECT 1 FROM attachments WHERE id = ?1", params![i64_of(id.0)?], |_| Ok(()))
                .optional()?
                .is_none();
            if gone && let Some(p) = self.body_path(id) {
                paths.push(p);
            }
        }
        if paths.is_empty() {
            return Ok(());
        }
        let unlink = |paths: Vec<PathBuf>| {
            for p in paths {
                // Absent (an empty or database-stored attachment) or not: it is not ours to keep.
                let _ = std::fs::remove_file(&p);
            }
        };
        let background = paths.clone();
        if std::thread::Builder::new().name("pqc-unlink".into()).spawn(move || unlink(background)).is_err() {
            unlink(paths);
        }
        Ok(())
    }

    /// Deletes the attachments `select` names (their files go
    /// after the commit); returns how many.
    fn delete_attachments(&mut self, select: &str, args: impl rusqlite::Params) -> Result<u32, StoreError> {
        let tx = self.conn.savepoint()?;
        let ids: Vec<AttachmentId> = {
            let mut st = tx.prepare_cached(select)?;
            let rows: Vec<i64> = st.query_map(args, |r| r.get(0))?.collect::<Result<_, _>>()?;
            rows.into_iter().filter_map(|i| u64::try_from(i).ok().map(AttachmentId)).collect()
        };
        for id in &ids {
            Self::delete_attachment_rows(&tx, *id)?;
        }
        tx.commit()?;
        self.doomed.extend(ids.iter().copied());
        self.after_delete()?;
        Ok(u32::try_from(ids.len()).unwrap_or(u32::MAX))
    }

    /// Deletes attachment `id`'s rows (its file goes once the caller's
    /// transaction committed: push it to `doomed`); whether there was one.
    fn delete_attachment_rows(conn: &Connection, id: AttachmentId) -> Result<bool, StoreError> {
        conn.exec("DELETE FROM attachment_chunks WHERE attachment_id = ?1", params![i64_of(id.0)?])?;
        Ok(conn.exec("DELETE FROM attachments WHERE id = ?1", params![i64_of(id.0)?])? > 0)
    }

    /// Outside a batch, a mailbox change is its own commit.
    fn mail_autocommit(&mut self) -> Result<(), StoreError> {
        if self.in_batch { Ok(()) } else { self.mail.flush() }
    }

    /// Moves the envelopes an older version kept in the database's
    /// `envelopes` table to the mailbox log (same ids), and makes new ids
    /// follow the table's last one. Runs when the store opens; repeated
    /// after a crash in between, it puts the same envelopes again.
    fn import_envelopes(&mut self) -> Result<(), StoreError> {
        let last: Option<i64> =
            self.conn.row("SELECT seq FROM sqlite_sequence WHERE name = 'envelopes'", [], |r| r.get(0)).optional()?;
        self.mail.ids_from(last.and_then(|v| u64::try_from(v).ok()).unwrap_or(0).saturating_add(1));
        type Row = (i64, String, String, Option<u32>, Option<u32>, Vec<u8>);
        let rows: Vec<Row> = {
            let mut st = self
                .conn
                .prepare("SELECT id, recipient, sender, max_views, views_left, payload FROM envelopes ORDER BY id")?;
            st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))?
                .collect::<Result<_, _>>()?
        };
        if rows.is_empty() {
            return Ok(());
        }
        // The table kept no time: an imported envelope counts as queued now.
        let now = crate::mailbox::unix_now();
        for (id, to, from, max_views, views_left, payload) in rows {
            let id = u64::try_from(id).map_err(|_| StoreError::Invalid("negative envelope id".into()))?;
            self.mail.put_with_id(id, now, &user(to)?, &user(from)?, max_views, views_left, &payload)?;
        }
        self.mail.flush()?;
        self.conn.execute("DELETE FROM envelopes", [])?;
        Ok(())
    }

    /// Outside a batch, an operation's own commit is final: delete files now.
    fn after_delete(&mut self) -> Result<(), StoreError> {
        if self.in_batch { Ok(()) } else { self.remove_doomed() }
    }

    /// Starts a group commit: the store operations called until
    /// [`Self::commit_batch`] run inside one transaction, so they reach the
    /// disk with one `fsync`, each still all-or-nothing on its own (a
    /// savepoint each, or a single statement, which SQLite undoes by itself
    /// when it fails). Callers must not report any of them as durable before
    /// the batch commits.
    pub fn begin_batch(&mut self) -> Result<(), StoreError> {
        // Prepared once (every group commit runs it): not parsed each time.
        self.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        self.in_batch = true;
        Ok(())
    }

    /// Commits the batch started by [`Self::begin_batch`].
    ///
    /// The mailbox log is made durable first, then the database: an
    /// envelope to an account created in the same batch may outlive a failed
    /// database commit (it is never fetched), but no acknowledged envelope
    /// is lost when the log's write fails (the whole batch fails).
    pub fn commit_batch(&mut self) -> Result<(), StoreError> {
        self.mail.flush()?;
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        self.in_batch = false;
        self.remove_doomed()
    }

    /// Whether committing the open batch will `fdatasync` the mailbox log:
    /// it holds an envelope or a view count (deletions alone are written
    /// with the next batch that syncs).
    pub fn batch_must_sync(&self) -> bool {
        self.mail.must_sync()
    }

    /// Abandons the batch started by [`Self::begin_batch`]. Uploads resume
    /// from their last checkpoint (what the database still says).
    pub fn rollback_batch(&mut self) -> Result<(), StoreError> {
        self.in_batch = false;
        self.doomed.clear();
        self.written.clear();
        self.syncing.clear();
        self.mail.rollback();
        self.accounts.clear();
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    /// An in-memory database (tests).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(64);
        // One process has the database (the data folder's lock says which):
        // SQLite may hold its file locks for good and keep the WAL index in
        // its own memory, instead of taking and dropping `fcntl` locks on a
        // shared-memory file around every transaction. Set before the first
        // access, so the WAL is opened that way.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // FULL: every commit (an envelope before its Ack) is fsynced.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Each operation of a group commit is a savepoint, whose undo records
        // go to a statement journal: keep those in memory, not in temp files.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        let mut store = Self {
            conn,
            files: None,
            written: Default::default(),
            syncing: Default::default(),
            lock: None,
            doomed: Vec::new(),
            in_batch: false,
            mail: Mailboxes::in_memory(),
            accounts: HashSet::new(),
            max_one_time_prekeys: MAX_ONE_TIME_PREKEYS,
            max_mailbox_bytes: MAX_MAILBOX_BYTES,
            max_room_log_bytes: MAX_ROOM_LOG_BYTES,
            max_rooms_per_user: MAX_ROOMS_PER_USER,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let v: i64 = self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if v > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew { found: v, supported: SCHEMA_VERSION });
        }
        // Each step in its own transaction, recorded as it commits.
        for (to, sql) in (1..).zip(MIGRATIONS) {
            if v < to {
                let tx = self.conn.savepoint()?;
                tx.execute_batch(sql)?;
                tx.pragma_update(None, "user_version", to)?;
                tx.commit()?;
            }
        }
        Ok(())
    }

    /// Sets how many one-time prekeys of each kind a user may hold
    /// (default [`MAX_ONE_TIME_PREKEYS`]): an upload that would leave more is
    /// refused as a whole ([`StoreError::Invalid`]).
    pub fn set_max_one_time_prekeys(&mut self, max: u32) {
        self.max_one_time_prekeys = max;
    }

    /// Sets how many bytes of ciphertext may wait for one recipient
    /// (default [`MAX_MAILBOX_BYTES`]); past it `enqueue` answers
    /// [`StoreError::MailboxFull`], as past its count of envelopes. Without
    /// it, the envelope count alone let senders fill a mailbox with
    /// `max_mailbox` frames of the largest size.
    pub fn set_max_mailbox_bytes(&mut self, max: u64) {
        self.max_mailbox_bytes = max;
    }

    /// Sets how many bytes of ciphertext a room's log may hold (default
    /// [`MAX_ROOM_LOG_BYTES`]). An entry that takes the log past it pushes
    /// out the oldest entries, read or not, as `envelope_days` does: a
    /// member that had not read them can no longer follow the group and is
    /// told so at its next fetch ([`StoreError::HistoryExpired`]), and joins
    /// the room again. Without it, a member left behind (or alone) let the
    /// log grow without end.
    pub fn set_max_room_log_bytes(&mut self, max: u64) {
        self.max_room_log_bytes = max;
    }

    /// Sets how many rooms a user may be a member of (default
    /// [`MAX_ROOMS_PER_USER`]): creating or joining one more, or being
    /// added to one, is refused (`Invalid`, saying so). With rooms deleted
    /// once their last member left, this bounds what one account keeps on
    /// the relay in rooms (each holds a GroupInfo of up to `max_frame`).
    pub fn set_max_rooms_per_user(&mut self, max: u32) {
        self.max_rooms_per_user = max;
    }

    /// Refuses a new membership of `user` at the rooms-per-user limit;
    /// `who` names the user in the error ("you" or the name).
    fn check_room_count(conn: &Connection, user: &Username, max: u32, who: &str) -> Result<(), StoreError> {
        let n: i64 =
            conn.row("SELECT COUNT(*) FROM room_members WHERE username = ?1", params![user.as_str()], |r| r.get(0))?;
        if n >= i64::from(max) {
            return Err(StoreError::Invalid(format!(
                "{who} in {n} rooms, the most this server allows; leave one first"
            )));
        }
        Ok(())
    }

    /// Schema version of the open database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self.conn.pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn counts(conn: &Connection, user: &Username) -> Result<PrekeyCounts, StoreError> {
        let c = |kind: i64| -> Result<u32, StoreError> {
            let n: i64 = conn.row(
                "SELECT COUNT(*) FROM one_time_prekeys WHERE username = ?1 AND kind = ?2",
                params![user.as_str(), kind],
                |r| r.get(0),
            )?;
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        };
        Ok(PrekeyCounts { one_time: c(0)?, one_time_kem: c(1)? })
    }

    /// `(max_participants, epoch, next_seq)` of a room.
    fn room_row(conn: &Connection, room: &RoomId) -> Result<Option<(u32, u64, u64)>, StoreError> {
        Ok(Self::room_state(conn, room)?.map(|(m, e, n, _)| (m, e, n)))
    }

    /// `(max_participants, epoch, next_seq, proposals since the last commit)` of a room.
    fn room_state(conn: &Connection, room: &RoomId) -> Result<Option<(u32, u64, u64, u64)>, StoreError> {
        let row: Option<(i64, i64, i64, i64)> = conn
            .row(
                "SELECT max_participants, epoch, next_seq, proposals FROM rooms WHERE room_id = ?1",
                params![&room.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let u = |v: i64, default: u64| u64::try_from(v).unwrap_or(default);
        Ok(row.map(|(m, e, n, p)| (u32::try_from(m).unwrap_or(u32::MAX), u(e, 0), u(n, 1), u(p, 0))))
    }

    fn is_member(conn: &Connection, room: &RoomId, user: &Username) -> Result<bool, StoreError> {
        Ok(conn
            .row(
                "SELECT 1 FROM room_members WHERE room_id = ?1 AND username = ?2",
                params![&room.0[..], user.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// Appends one entry and bumps `next_seq` (and the epoch for a commit);
    /// past `max_log` bytes, the oldest entries go ([`Self::cut_room_log`]).
    #[allow(clippy::too_many_arguments)]
    fn room_push(
        conn: &Connection,
        room: &RoomId,
        seq: u64,
        sender: &Username,
        kind: RoomMessageKind,
        payload: &[u8],
        group_info: Option<&[u8]>,
        max_log: u64,
    ) -> Result<(), StoreError> {
        conn.exec(
            "INSERT INTO room_log (room_id, seq, sender, kind, payload, at) VALUES (?1, ?2, ?3, ?4, ?5, unixepoch())",
            params![&room.0[..], i64_of(seq)?, sender.as_str(), kind.to_u8(), payload],
        )?;
        // A commit starts a new epoch, in which earlier proposals are void.
        let sql = match kind {
            RoomMessageKind::Commit => {
                "UPDATE rooms SET next_seq = next_seq + 1, epoch = epoch + 1, proposals = 0,
                 log_bytes = log_bytes + ?2 WHERE room_id = ?1 RETURNING log_bytes"
            }
            RoomMessageKind::Proposal => {
                "UPDATE rooms SET next_seq = next_seq + 1, proposals = proposals + 1,
                 log_bytes = log_bytes + ?2 WHERE room_id = ?1 RETURNING log_bytes"
            }
            RoomMessageKind::Application => {
                "UPDATE rooms SET next_seq = next_seq + 1, log_bytes = log_bytes + ?2 WHERE room_id = ?1
                 RETURNING log_bytes"
            }
        };
        let log_bytes: i64 = conn.row(sql, params![&room.0[..], i64_of(payload.len() as u64)?], |r| r.get(0))?;
        if let Some(gi) = group_info {
            conn.exec("UPDATE room_group_info SET group_info = ?2 WHERE room_id = ?1", params![&room.0[..], gi])?;
        }
        if u64::try_from(log_bytes).unwrap_or(0) > max_log {
            Self::cut_room_log(conn, room, seq, u64::try_from(log_bytes).unwrap_or(0) - max_log)?;
        }
        Ok(())
    }

    /// Deletes the room's oldest entries, `excess` bytes of them or a little
    /// more, but never entry `newest` (the one just appended); members that
    /// had not read them are `lost` (see [`Self::set_max_room_log_bytes`]).
    fn cut_room_log(conn: &Connection, room: &RoomId, newest: u64, excess: u64) -> Result<(), StoreError> {
        let mut last: Option<i64> = None;
        {
            let mut st = conn.prepare_cached(
                "SELECT seq, length(payload) FROM room_log WHERE room_id = ?1 AND seq < ?2 ORDER BY seq",
            )?;
            let mut rows = st.query(params![&room.0[..], i64_of(newest)?])?;
            let mut cut = 0u64;
            while cut < excess {
                let Some(r) = rows.next()? else { break };
                last = Some(r.get(0)?);
                cut += u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0);
            }
        }
        if let Some(last) = last {
            conn.exec(
                "UPDATE room_members SET cursor = ?2, lost = 1 WHERE room_id = ?1 AND cursor < ?2",
                params![&room.0[..], last],
            )?;
            Self::delete_room_log(conn, room, last)?;
        }
        Ok(())
    }

    /// Deletes the room's entries up to `seq` and takes their bytes off the
    /// room's count; returns how many went.
    fn delete_room_log(conn: &Connection, room: &RoomId, seq: i64) -> Result<usize, StoreError> {
        let (n, bytes): (i64, i64) = conn.row(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM room_log WHERE room_id = ?1 AND seq <= ?2",
            params![&room.0[..], seq],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        if n == 0 {
            return Ok(0);
        }
        conn.exec("DELETE FROM room_log WHERE room_id = ?1 AND seq <= ?2", params![&room.0[..], seq])?;
        conn.exec(
            "UPDATE rooms SET log_bytes = MAX(0, log_bytes - ?2) WHERE room_id = ?1",
            params![&room.0[..], bytes],
        )?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Deletes a finished room attachment that has no reader left.
    fn prune_room_attachment(conn: &Connection, id: AttachmentId) -> Result<bool, StoreError> {
        let n = conn.exec(
            "DELETE FROM attachments WHERE id = ?1 AND room_id IS NOT NULL AND complete = 1
             AND NOT EXISTS (SELECT 1 FROM attachment_readers WHERE attachment_id = ?1)",
            params![i64_of(id.0)?],
        )?;
        Ok(n > 0)
    }

    /// Deletes the entries every member has read.
    fn room_prune(conn: &Connection, room: &RoomId) -> Result<u32, StoreError> {
        let min: Option<i64> =
            conn.row("SELECT MIN(cursor) FROM room_members WHERE room_id = ?1", params![&room.0[..]], |r| r.get(0))?;
        // Nobody left to read it: all of it.
        let n = Self::delete_room_log(conn, room, min.unwrap_or(i64::MAX))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Adds `member` to `room` by `commit` from `sender` (checks in the
    /// caller's transaction; see [`ServerStore::room_join`]).
    #[allow(clippy::too_many_arguments)]
    fn admit(
        tx: &Connection,
        room: &RoomId,
        sender: &Username,
        member: &Username,
        epoch: u64,
        commit: &[u8],
        group_info: &[u8],
        (max_log, max_rooms): (u64, u32),
    ) -> Result<u64, StoreError> {
        let (max, current, seq) = Self::room_row(tx, room)?.ok_or(StoreError::NotFound)?;
        // A member joining again is a resync: its external commit removes
        // its old leaf (the members check that), so it keeps its seat.
        let resync = Self::is_member(tx, room, member)?;
        if resync && sender != member {
            return Err(StoreError::Invalid("already a member of this room".into()));
        }
        if !resync {
            let who = if sender == member { "you are".to_string() } else { format!("{member} is") };
            Self::check_room_count(tx, member, max_rooms, &who)?;
            let members: i64 =
                tx.row("SELECT COUNT(*) FROM room_members WHERE room_id = ?1", params![&room.0[..]], |r| r.get(0))?;
            let members = u32::try_from(members).unwrap_or(u32::MAX);
            if members >= max {
                return Err(StoreError::RoomFull { members, max });
            }
        }
        if epoch != current {
            return Err(StoreError::EpochConflict { current, sent: epoch });
        }
        Self::room_push(tx, room, seq, sender, RoomMessageKind::Commit, commit, Some(group_info), max_log)?;
        let sql = if resync {
            "UPDATE room_members SET cursor = MAX(cursor, ?3), lost = 0 WHERE room_id = ?1 AND username = ?2"
        } else {
            "INSERT INTO room_members (room_id, username, cursor) VALUES (?1, ?2, ?3)"
        };
        tx.exec(sql, params![&room.0[..], member.as_str(), i64_of(seq)?])?;
        Ok(seq)
    }

    fn key_package_count(conn: &Connection, user: &Username) -> Result<u32, StoreError> {
        let n: i64 =
            conn.row("SELECT COUNT(*) FROM key_packages WHERE username = ?1", params![user.as_str()], |r| r.get(0))?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn account_exists(conn: &Connection, user: &Username) -> Result<bool, StoreError> {
        Ok(conn
            .row("SELECT 1 FROM accounts WHERE username = ?1", params![user.as_str()], |_| Ok(()))
            .optional()?
            .is_some())
    }
}

impl ServerStore for SqliteServerStore {
    fn create_account(&mut self, user: &Username, identity_key: &[u8]) -> Result<(), StoreError> {
        let r = self.conn.exec(
            "INSERT INTO accounts (username, identity_key) VALUES (?1, ?2)",
            params![user.as_str(), identity_key],
        );
        match r {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::UsernameTaken)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn identity_key(&mut self, user: &Username) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .conn
            .row("SELECT identity_key FROM accounts WHERE username = ?1", params![user.as_str()], |r| r.get(0))
            .optional()?)
    }

    fn directory_entry(&mut self, user: &Username) -> Result<Option<DirectoryEntry>, StoreError> {
        Ok(self
            .conn
            .row(
                "SELECT a.identity_key, COALESCE(p.signed_prekeys, x'') FROM accounts a
                 LEFT JOIN prekeys p ON p.username = a.username WHERE a.username = ?1",
                params![user.as_str()],
                |r| Ok(DirectoryEntry { identity_key: r.get(0)?, signed_prekeys: r.get(1)? }),
            )
            .optional()?)
    }

    fn upload_prekeys(
        &mut self,
        user: &Username,
        signed_prekeys: &[u8],
        one_time: &[(PreKeyId, Vec<u8>)],
        one_time_kem: &[(PreKeyId, Vec<u8>)],
    ) -> Result<PrekeyCounts, StoreError> {
        let tx = self.conn.savepoint()?;
        if !Self::account_exists(&tx, user)? {
            return Err(StoreError::UnknownUser);
        }
        tx.exec(
            "INSERT INTO prekeys (username, signed_prekeys) VALUES (?1, ?2)
             ON CONFLICT(username) DO UPDATE SET signed_prekeys = excluded.signed_prekeys",
            params![user.as_str(), signed_prekeys],
        )?;
        let max = self.max_one_time_prekeys;
        let before = Self::counts(&tx, user)?;
        // Refused before anything is written: no more can be held.
        for (name, list) in [("one-time prekeys", one_time), ("one-time KEM prekeys", one_time_kem)] {
            if list.len() > max as usize {
                return Err(StoreError::Invalid(format!(
                    "at most {max} {name} are kept per user ({} offered)",
                    list.len()
                )));
            }
        }
        {
            let mut st = tx.prepare_cached(
                "INSERT OR REPLACE INTO one_time_prekeys (username, kind, key_id, key) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (kind, list) in [(0i64, one_time), (1i64, one_time_kem)] {
                for (id, key) in list {
                    st.execute(params![user.as_str(), kind, id.0, key])?;
                }
            }
        }
        // Counted after the upload, as a key whose id is stored already
        // replaces it; over the limit, the savepoint is dropped (rolled back):
        // nothing of the upload stays, the signed prekeys neither.
        let counts = Self::counts(&tx, user)?;
        for (name, held, stored, offered) in [
            ("one-time prekeys", counts.one_time, before.one_time, one_time.len()),
            ("one-time KEM prekeys", counts.one_time_kem, before.one_time_kem, one_time_kem.len()),
        ] {
            if held > max {
                return Err(StoreError::Invalid(format!(
                    "at most {max} {name} are kept per user ({stored} stored, {offered} offered); upload more when \
                     the server reports few left"
                )));
            }
        }
        tx.commit()?;
        Ok(counts)
    }

    fn take_prekey_bundle(&mut self, user: &Username) -> Result<Option<(PrekeyBundle, PrekeyCounts)>, StoreError> {
        let tx = self.conn.savepoint()?;
        let identity_key: Option<Vec<u8>> = tx
            .row("SELECT identity_key FROM accounts WHERE username = ?1", params![user.as_str()], |r| r.get(0))
            .optional()?;
        let Some(identity_key) = identity_key else { return Err(StoreError::UnknownUser) };
        let signed: Option<Vec<u8>> = tx
            .row("SELECT signed_prekeys FROM prekeys WHERE username = ?1", params![user.as_str()], |r| r.get(0))
            .optional()?;
        let Some(signed_prekeys) = signed else { return Ok(None) };
        let take = |kind: i64| -> Result<Option<(PreKeyId, Vec<u8>)>, StoreError> {
            let row: Option<(u32, Vec<u8>)> = tx
                .row(
                    "SELECT key_id, key FROM one_time_prekeys WHERE username = ?1 AND kind = ?2
                     ORDER BY key_id LIMIT 1",
                    params![user.as_str(), kind],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            if let Some((id, _)) = &row {
                tx.exec(
                    "DELETE FROM one_time_prekeys WHERE username = ?1 AND kind = ?2 AND key_id = ?3",
                    params![user.as_str(), kind, id],
                )?;
            }
            Ok(row.map(|(id, k)| (PreKeyId(id), k)))
        };
        let one_time = take(0)?;
        let one_time_kem = take(1)?;
        let counts = Self::counts(&tx, user)?;
        tx.commit()?;
        Ok(Some((PrekeyBundle { identity_key, signed_prekeys, one_time, one_time_kem }, counts)))
    }

    fn enqueue(
        &mut self,
        to: &Username,
        from: &Username,
        max_views: Option<u32>,
        payload: &[u8],
        max_mailbox: u32,
    ) -> Result<EnvelopeId, StoreError> {
        if !self.accounts.contains(to) {
            let known = self.conn.row("SELECT 1 FROM accounts WHERE username = ?1", params![to.as_str()], |_| Ok(()));
            if known.optional()?.is_none() {
                return Err(StoreError::UnknownUser);
            }
            self.accounts.insert(to.clone());
        }
        if self.mail.len_of(to) >= max_mailbox as usize
            || self.mail.bytes_of(to).saturating_add(payload.len() as u64) > self.max_mailbox_bytes
        {
            return Err(StoreError::MailboxFull);
        }
        let id = self.mail.put(to, from, max_views, payload)?;
        self.mail_autocommit()?;
        Ok(id)
    }

    fn fetch(&mut self, user: &Username, max_bytes: usize) -> Result<(Vec<Envelope>, bool), StoreError> {
        let fetched = self.mail.fetch(user, max_bytes)?;
        self.mail_autocommit()?;
        Ok(fetched)
    }

    fn ack(&mut self, user: &Username, ids: &[EnvelopeId]) -> Result<u32, StoreError> {
        let n = self.mail.ack(user, ids);
        self.mail_autocommit()?;
        Ok(n)
    }

    fn queued_total(&mut self) -> Result<u64, StoreError> {
        Ok(self.mail.total() as u64)
    }

    fn expire_envelopes(&mut self, before: u64) -> Result<u32, StoreError> {
        let n = self.mail.expire(before);
        self.mail_autocommit()?;
        Ok(n)
    }

    fn expire_room_entries(&mut self, before: u64) -> Result<u32, StoreError> {
        let tx = self.conn.savepoint()?;
        // Entries are stored in sequence order, so those older than `before`
        // are a prefix of each room's log: up to its newest expired one.
        let cut: Vec<(Vec<u8>, i64)> = {
            let mut st = tx.prepare_cached("SELECT room_id, MAX(seq) FROM room_log WHERE at < ?1 GROUP BY room_id")?;
            st.query_map(params![i64_of(before)?], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
        };
        let mut n = 0usize;
        for (room, last) in cut {
            tx.exec(
                "UPDATE room_members SET cursor = ?2, lost = 1 WHERE room_id = ?1 AND cursor < ?2",
                params![&room[..], last],
            )?;
            n += Self::delete_room_log(&tx, &room_id_of(room)?, last)?;
        }
        tx.commit()?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    fn attachment_begin(&mut self, m: &AttachmentMeta) -> Result<(), StoreError> {
        // A room attachment has no single recipient: the column holds "".
        let (recipient, room): (&str, Option<&[u8]>) = match &m.to {
            Audience::User(u) => (u.as_str(), None),
            Audience::Room(r) => ("", Some(&r.0[..])),
        };
        let begun = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX));
        self.conn.exec(
            "INSERT INTO attachments (id, sender, recipient, room_id, total_len, received, complete, begun)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, ?6)",
            params![i64_of(m.id.0)?, m.from.as_str(), recipient, room, i64_of(m.total_len)?, begun],
        )?;
        Ok(())
    }

    fn attachment(&mut self, id: AttachmentId) -> Result<Option<AttachmentMeta>, StoreError> {
        type Row = (String, String, Option<Vec<u8>>, i64, i64, bool);
        let row: Option<Row> = self
            .conn
            .row(
                "SELECT sender, recipient, room_id, total_len, received, complete FROM attachments WHERE id = ?1",
                params![i64_of(id.0)?],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .optional()?;
        row.map(|(from, to, room, total, received, complete)| {
            Ok(AttachmentMeta {
                id,
                from: user_of(from)?,
                to: match room {
                    Some(r) => Audience::Room(room_id_of(r)?),
                    None => Audience::User(user_of(to)?),
                },
                total_len: u64::try_from(total).unwrap_or(0),
                received: Self::received(&self.written, id, u64::try_from(received).unwrap_or(0)),
                complete,
            })
        })
        .transpose()
    }

    fn attachment_append(&mut self, id: AttachmentId, offset: u64, data: &[u8]) -> Result<u64, StoreError> {
        let body = self.body_path(id);
        let tx = self.conn.savepoint()?;
        let row: Option<(i64, i64, bool)> = tx
            .row("SELECT total_len, received, complete FROM attachments WHERE id = ?1", params![i64_of(id.0)?], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((total, durable, complete)) = row else { return Err(StoreError::NotFound) };
        let (total, durable) = (u64::try_from(total).unwrap_or(0), u64::try_from(durable).unwrap_or(0));
        if complete {
            return Err(StoreError::Invalid("attachment already finished".into()));
        }
        let received = Self::received(&self.written, id, durable);
        if offset != received {
            return Err(StoreError::Invalid(format!(
                "chunk offset {offset} but {received} bytes received; resume there"
            )));
        }
        let new = received.saturating_add(data.len() as u64);
        if new > total {
            return Err(StoreError::Invalid("chunk goes past the announced total length".into()));
        }
        if data.is_empty() {
            return Ok(received);
        }
        // The file is created by the first chunk; an upload an earlier version
        // started in the database (no file) stays there.
        let file = match body {
            Some(path) => match std::fs::OpenOptions::new().create(received == 0).write(true).open(&path) {
                Ok(f) => {
                    // The new file's name is made durable too: the database
                    // will count bytes in it.
                    if received == 0 {
                        crate::mailbox::sync_dir(&path)?;
                    }
                    Some(f)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e.into()),
            },
            None => None,
        };
        let record = |at: u64| -> Result<(), StoreError> {
            tx.exec("UPDATE attachments SET received = ?2 WHERE id = ?1", params![i64_of(id.0)?, i64_of(at)?])?;
            Ok(())
        };
        match file {
            None => {
                tx.exec(
                    "INSERT INTO attachment_chunks (attachment_id, offset, data) VALUES (?1, ?2, ?3)",
                    params![i64_of(id.0)?, i64_of(received)?, data],
                )?;
                record(new)?;
            }
            Some(file) => {
                file.write_all_at(data, offset)?;
                // The database counts bytes only once they are on disk. The
                // last byte is synced here; a checkpoint before it is synced
                // on its own thread and recorded at the next checkpoint, so
                // the database thread does not wait for the disk mid-upload.
                let started = self.syncing.get(&id).map_or(durable, |(at, _)| *at);
                if new == total {
                    if let Some((_, sync)) = self.syncing.remove(&id) {
                        let _ = sync.join();
                    }
                    file.sync_data()?;
                    record(new)?;
                    self.written.remove(&id);
                } else {
                    if new - started >= ATTACHMENT_CHECKPOINT {
                        if let Some((at, sync)) = self.syncing.remove(&id)
                            && matches!(sync.join(), Ok(Ok(())))
                        {
                            record(at)?;
                        }
                        let sync = std::thread::Builder::new().name("pqc-fsync".into()).spawn(move || file.sync_data());
                        // No thread: the next chunk tries again.
                        if let Ok(handle) = sync {
                            self.syncing.insert(id, (new, handle));
                        }
                    }
                    self.written.insert(id, new);
                }
            }
        }
        tx.commit()?;
        Ok(new)
    }

    fn attachment_finish(&mut self, id: AttachmentId) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        let n = tx.exec(
            "UPDATE attachments SET complete = 1 WHERE id = ?1 AND received = total_len AND complete = 0",
            params![i64_of(id.0)?],
        )?;
        if n == 0 {
            return Err(StoreError::Invalid("attachment not fully uploaded, or already finished".into()));
        }
        tx.exec(
            "INSERT INTO attachment_readers (attachment_id, username)
             SELECT a.id, m.username FROM attachments a JOIN room_members m ON m.room_id = a.room_id
             WHERE a.id = ?1 AND m.username != a.sender",
            params![i64_of(id.0)?],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn attachment_is_reader(&mut self, id: AttachmentId, user: &Username) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .row(
                "SELECT 1 FROM attachment_readers WHERE attachment_id = ?1 AND username = ?2",
                params![i64_of(id.0)?, user.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn attachment_reader_done(&mut self, id: AttachmentId, user: &Username) -> Result<bool, StoreError> {
        let tx = self.conn.savepoint()?;
        let n = tx.exec(
            "DELETE FROM attachment_readers WHERE attachment_id = ?1 AND username = ?2",
            params![i64_of(id.0)?, user.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotFound);
        }
        let deleted = Self::prune_room_attachment(&tx, id)?;
        tx.commit()?;
        if deleted {
            self.doomed.push(id);
            self.after_delete()?;
        }
        Ok(deleted)
    }

    fn attachment_read(&mut self, id: AttachmentId, offset: u64, max_len: u32) -> Result<Vec<u8>, StoreError> {
        // No file: an empty attachment, or one stored in the database by an
        // earlier version.
        if let Some(path) = self.body_path(id) {
            match std::fs::File::open(&path) {
                Ok(mut file) => {
                    use std::io::{Read as _, Seek as _};
                    let len = file.metadata()?.len();
                    let n = len.saturating_sub(offset).min(u64::from(max_len));
                    // Read into spare capacity: the buffer is not zeroed first.
                    let mut out = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
                    file.seek(std::io::SeekFrom::Start(offset))?;
                    (&mut file).take(n).read_to_end(&mut out)?;
                    if (out.len() as u64) < n {
                        return Err(StoreError::Invalid("attachment file is shorter than recorded".into()));
                    }
                    return Ok(out);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let start = offset;
        let end = offset.saturating_add(u64::from(max_len));
        let mut st = self.conn.prepare_cached(
            "SELECT offset, data FROM attachment_chunks WHERE attachment_id = ?1
             AND offset < ?3 AND offset + length(data) > ?2 ORDER BY offset",
        )?;
        let mut rows = st.query(params![i64_of(id.0)?, i64_of(start)?, i64_of(end)?])?;
        let mut out = Vec::new();
        while let Some(r) = rows.next()? {
            let off = u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0);
            let data: Vec<u8> = r.get(1)?;
            let from = usize::try_from(start.saturating_sub(off)).unwrap_or(usize::MAX).min(data.len());
            let to = usize::try_from(end.saturating_sub(off)).unwrap_or(usize::MAX).min(data.len());
            if let Some(s) = data.get(from..to) {
                out.extend_from_slice(s);
            }
        }
        Ok(out)
    }

    fn attachment_delete(&mut self, id: AttachmentId) -> Result<bool, StoreError> {
        let tx = self.conn.savepoint()?;
        let deleted = Self::delete_attachment_rows(&tx, id)?;
        tx.commit()?;
        self.doomed.push(id);
        self.after_delete()?;
        Ok(deleted)
    }

    fn attachment_bytes_of(&mut self, sender: &Username) -> Result<u64, StoreError> {
        let total: i64 = self.conn.row(
            "SELECT COALESCE(SUM(total_len), 0) FROM attachments WHERE sender = ?1",
            params![sender.as_str()],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(total).unwrap_or(0))
    }

    fn attachments_keep_unfinished(&mut self, sender: &Username, keep: u32) -> Result<u32, StoreError> {
        self.delete_attachments(
            "SELECT id FROM attachments WHERE sender = ?1 AND complete = 0
             ORDER BY begun DESC LIMIT -1 OFFSET ?2",
            params![sender.as_str(), keep],
        )
    }

    fn attachments_expire_unfinished(&mut self, before: i64) -> Result<u32, StoreError> {
        self.delete_attachments("SELECT id FROM attachments WHERE complete = 0 AND created_at < ?1", params![before])
    }

    fn attachments_expire_finished(&mut self, before: i64) -> Result<u32, StoreError> {
        self.delete_attachments("SELECT id FROM attachments WHERE complete = 1 AND created_at < ?1", params![before])
    }

    fn room_create(&mut self, room: &RoomId, owner: &Username, max: u32, group_info: &[u8]) -> Result<(), StoreError> {
        let max_rooms = self.max_rooms_per_user;
        let tx = self.conn.savepoint()?;
        if Self::room_row(&tx, room)?.is_some() {
            return Err(StoreError::RoomExists);
        }
        Self::check_room_count(&tx, owner, max_rooms, "you are")?;
        tx.exec(
            "INSERT INTO rooms (room_id, owner, max_participants) VALUES (?1, ?2, ?3)",
            params![&room.0[..], owner.as_str(), max],
        )?;
        tx.exec("INSERT INTO room_group_info (room_id, group_info) VALUES (?1, ?2)", params![&room.0[..], group_info])?;
        tx.exec(
            "INSERT INTO room_members (room_id, username, cursor) VALUES (?1, ?2, 0)",
            params![&room.0[..], owner.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn room_info(&mut self, room: &RoomId) -> Result<(Vec<u8>, u64), StoreError> {
        let row: Option<(Vec<u8>, i64)> = self
            .conn
            .row(
                "SELECT g.group_info, r.epoch FROM rooms r JOIN room_group_info g ON g.room_id = r.room_id
                 WHERE r.room_id = ?1",
                params![&room.0[..]],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (gi, epoch) = row.ok_or(StoreError::NotFound)?;
        Ok((gi, u64::try_from(epoch).unwrap_or(0)))
    }

    fn room_join(
        &mut self,
        room: &RoomId,
        user: &Username,
        epoch: u64,
        commit: &[u8],
        group_info: &[u8],
    ) -> Result<u64, StoreError> {
        let limits = (self.max_room_log_bytes, self.max_rooms_per_user);
        let tx = self.conn.savepoint()?;
        let seq = Self::admit(&tx, room, user, user, epoch, commit, group_info, limits)?;
        tx.commit()?;
        Ok(seq)
    }

    fn room_add(
        &mut self,
        room: &RoomId,
        sender: &Username,
        member: &Username,
        epoch: u64,
        commit: &[u8],
        group_info: &[u8],
    ) -> Result<u64, StoreError> {
        let limits = (self.max_room_log_bytes, self.max_rooms_per_user);
        let tx = self.conn.savepoint()?;
        if Self::room_row(&tx, room)?.is_none() {
            return Err(StoreError::NotFound);
        }
        if !Self::is_member(&tx, room, sender)? {
            return Err(StoreError::NotAMember);
        }
        if !Self::account_exists(&tx, member)? {
            return Err(StoreError::UnknownUser);
        }
        let seq = Self::admit(&tx, room, sender, member, epoch, commit, group_info, limits)?;
        tx.commit()?;
        Ok(seq)
    }

    fn upload_key_packages(
        &mut self,
        user: &Username,
        packages: &[Vec<u8>],
        max_stored: u32,
    ) -> Result<u32, StoreError> {
        let tx = self.conn.savepoint()?;
        if !Self::account_exists(&tx, user)? {
            return Err(StoreError::UnknownUser);
        }
        let have = Self::key_package_count(&tx, user)?;
        let total = u64::from(have) + packages.len() as u64;
        if total > u64::from(max_stored) {
            return Err(StoreError::Invalid(format!(
                "at most {max_stored} key packages are kept per user ({have} stored, {} offered)",
                packages.len()
            )));
        }
        for p in packages {
            if p.is_empty() {
                return Err(StoreError::Invalid("empty key package".into()));
            }
            tx.exec("INSERT INTO key_packages (username, package) VALUES (?1, ?2)", params![user.as_str(), p])?;
        }
        tx.commit()?;
        Ok(u32::try_from(total).unwrap_or(u32::MAX))
    }

    fn take_key_package(&mut self, user: &Username) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        let tx = self.conn.savepoint()?;
        if !Self::account_exists(&tx, user)? {
            return Err(StoreError::UnknownUser);
        }
        let row: Option<(i64, Vec<u8>)> = tx
            .row(
                "SELECT id, package FROM key_packages WHERE username = ?1 ORDER BY id LIMIT 1",
                params![user.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((id, package)) = row else { return Ok(None) };
        tx.exec("DELETE FROM key_packages WHERE id = ?1", params![id])?;
        let left = Self::key_package_count(&tx, user)?;
        tx.commit()?;
        Ok(Some((package, left)))
    }

    fn room_append(
        &mut self,
        room: &RoomId,
        sender: &Username,
        epoch: u64,
        kind: RoomMessageKind,
        payload: &[u8],
        group_info: Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        let max_log = self.max_room_log_bytes;
        let tx = self.conn.savepoint()?;
        let (_, current, seq, proposals) = Self::room_state(&tx, room)?.ok_or(StoreError::NotAMember)?;
        if !Self::is_member(&tx, room, sender)? {
            return Err(StoreError::NotAMember);
        }
        // Every member applies the log in order: an entry is read in the
        // epoch the room was in when it was appended, which must be the one
        // it was made for.
        if epoch != current {
            return Err(StoreError::EpochConflict { current, sent: epoch });
        }
        if kind == RoomMessageKind::Application && proposals > 0 {
            return Err(StoreError::ProposalPending);
        }
        // Only a commit may replace the GroupInfo (it describes the new epoch).
        let gi = if kind == RoomMessageKind::Commit { group_info } else { None };
        Self::room_push(&tx, room, seq, sender, kind, payload, gi, max_log)?;
        tx.commit()?;
        Ok(seq)
    }

    fn room_members(&mut self, room: &RoomId) -> Result<Vec<Username>, StoreError> {
        let mut st =
            self.conn.prepare_cached("SELECT username FROM room_members WHERE room_id = ?1 ORDER BY username")?;
        let rows = st.query_map(params![&room.0[..]], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(user_of(r?)?);
        }
        Ok(out)
    }

    fn room_leave(&mut self, room: &RoomId, user: &Username) -> Result<(), StoreError> {
        let tx = self.conn.savepoint()?;
        let n = tx.exec(
            "DELETE FROM room_members WHERE room_id = ?1 AND username = ?2",
            params![&room.0[..], user.as_str()],
        )?;
        if n == 0 {
            return Err(StoreError::NotAMember);
        }
        Self::room_prune(&tx, room)?;
        // The leaver no longer reads the room's files; drop those nobody else
        // reads (their files go after the commit if their rows did).
        let candidates: Vec<i64> = {
            let mut st = tx.prepare_cached("SELECT id FROM attachments WHERE room_id = ?1 AND complete = 1")?;
            st.query_map(params![&room.0[..]], |r| r.get(0))?.collect::<Result<_, _>>()?
        };
        self.doomed.extend(candidates.into_iter().filter_map(|i| u64::try_from(i).ok().map(AttachmentId)));
        tx.exec(
            "DELETE FROM attachment_readers WHERE username = ?2
             AND attachment_id IN (SELECT id FROM attachments WHERE room_id = ?1)",
            params![&room.0[..], user.as_str()],
        )?;
        tx.exec(
            "DELETE FROM attachments WHERE room_id = ?1 AND complete = 1
             AND NOT EXISTS (SELECT 1 FROM attachment_readers r WHERE r.attachment_id = attachments.id)",
            params![&room.0[..]],
        )?;
        // The last member gone, nobody can commit in the group again: the
        // room goes (its log, members and GroupInfo with it), and its name
        // may be used for a new one.
        let left: i64 =
            tx.row("SELECT COUNT(*) FROM room_members WHERE room_id = ?1", params![&room.0[..]], |r| r.get(0))?;
        if left == 0 {
            tx.exec("DELETE FROM rooms WHERE room_id = ?1", params![&room.0[..]])?;
        }
        tx.commit()?;
        self.after_delete()
    }

    fn room_fetch(
        &mut self,
        user: &Username,
        room: Option<&RoomId>,
        max_bytes: usize,
    ) -> Result<(Vec<RoomMessage>, bool), StoreError> {
        // The rooms to read, in room order, with the member's cursor in each.
        // Each room's unread entries are then read along the log's primary
        // key (room, seq) and the reading stops once the budget is spent, so
        // a long backlog is neither sorted nor held in memory.
        let mut rooms: Vec<(Vec<u8>, i64)> = match room {
            Some(r) => {
                let row: Option<(bool, i64)> = self
                    .conn
                    .row(
                        "SELECT lost, cursor FROM room_members WHERE room_id = ?1 AND username = ?2",
                        params![&r.0[..], user.as_str()],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()?;
                match row {
                    Some((true, _)) => return Err(StoreError::HistoryExpired),
                    Some((false, cursor)) => vec![(r.0.to_vec(), cursor)],
                    None => Vec::new(),
                }
            }
            // A room whose unread entries expired is left out of a fetch of
            // every room (fetched alone, it says so).
            None => {
                let mut st = self
                    .conn
                    .prepare_cached("SELECT room_id, cursor FROM room_members WHERE username = ?1 AND lost = 0")?;
                st.query_map(params![user.as_str()], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?
            }
        };
        // Byte order, as SQLite orders blobs (room ids have one length).
        rooms.sort_unstable();
        let mut st = self.conn.prepare_cached(
            "SELECT seq, sender, kind, payload FROM room_log WHERE room_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let mut out = Vec::new();
        let mut used = 0usize;
        for (room_id, cursor) in rooms {
            let id = room_id_of(room_id)?;
            // Every entry counts at least 64 bytes: past the first, no more
            // than this many fit, and one more tells whether more remain.
            let limit = i64::try_from(max_bytes.saturating_sub(used) / 64).unwrap_or(i64::MAX).saturating_add(2);
            let mut rows = st.query(params![&id.0[..], cursor, limit])?;
            while let Some(r) = rows.next()? {
                let payload: Vec<u8> = r.get(3)?;
                if !out.is_empty() && used + payload.len() + 64 > max_bytes {
                    return Ok((out, true));
                }
                used += payload.len() + 64;
                let kind: u8 = r.get(2)?;
                out.push(RoomMessage {
                    room_id: id,
                    seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
                    sender: user_of(r.get(1)?)?,
                    kind: RoomMessageKind::from_u8(kind)
                        .map_err(|e| StoreError::Invalid(format!("stored kind: {e}")))?,
                    payload,
                });
            }
        }
        Ok((out, false))
    }

    fn room_ack(&mut self, room: &RoomId, user: &Username, seq: u64) -> Result<u32, StoreError> {
        let tx = self.conn.savepoint()?;
        let (_, _, next) = Self::room_row(&tx, room)?.ok_or(StoreError::NotAMember)?;
        if seq >= next {
            return Err(StoreError::Invalid(format!("acknowledged seq {seq} was never sent")));
        }
        let n = tx.exec(
            "UPDATE room_members SET cursor = MAX(cursor, ?3) WHERE room_id = ?1 AND username = ?2",
            params![&room.0[..], user.as_str(), i64_of(seq)?],
        )?;
        if n == 0 {
            return Err(StoreError::NotAMember);
        }
        let deleted = Self::room_prune(&tx, room)?;
        tx.commit()?;
        Ok(deleted)
    }
}

fn room_id_of(b: Vec<u8>) -> Result<RoomId, StoreError> {
    <[u8; pqc_wire::ROOM_ID_LEN]>::try_from(b.as_slice())
        .map(RoomId)
        .map_err(|_| StoreError::Invalid("stored room id has the wrong length".into()))
}

fn user_of(s: String) -> Result<Username, StoreError> {
    user(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Username {
        Username::new(s).unwrap()
    }

    #[test]
    fn group_commit_keeps_each_operation_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = SqliteServerStore::open(&path).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        s.begin_batch().unwrap();
        let a = s.enqueue(&u("bob"), &u("alice"), None, b"one", 10).unwrap();
        // A failing operation inside the batch leaves no trace and does not
        // spoil the others.
        assert!(matches!(s.create_account(&u("bob"), b"k"), Err(StoreError::UsernameTaken)));
        assert!(matches!(s.enqueue(&u("nobody"), &u("alice"), None, b"x", 10), Err(StoreError::UnknownUser)));
        let b = s.enqueue(&u("bob"), &u("alice"), None, b"two", 10).unwrap();
        s.commit_batch().unwrap();
        drop(s);
        let mut s = SqliteServerStore::open(&path).unwrap();
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a, b]);
        // A rolled-back batch leaves nothing.
        s.begin_batch().unwrap();
        s.enqueue(&u("bob"), &u("alice"), None, b"three", 10).unwrap();
        s.rollback_batch().unwrap();
        assert_eq!(s.queued_total().unwrap(), 2);
    }

    #[test]
    fn one_store_at_a_time_holds_a_data_folder() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = SqliteServerStore::open(&path).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        s.enqueue(&u("bob"), &u("alice"), None, b"kept", 10).unwrap();
        // A second open (a second server) is refused before it touches the
        // mailbox log, naming the holder.
        let Err(err) = SqliteServerStore::open(&path) else { panic!("a second store opened the folder") };
        let text = err.to_string();
        assert!(matches!(err, StoreError::InUse(_)), "{err:?}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(text.contains(&format!("process {}", std::process::id())), "{text}");
        // Let go when the store goes; the envelope is still there.
        drop(s);
        let mut s = SqliteServerStore::open(&path).unwrap();
        assert_eq!(s.queued_total().unwrap(), 1);
    }

    #[test]
    fn only_batches_with_envelopes_or_views_must_sync_the_mailbox_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteServerStore::open(&dir.path().join("server.db")).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        // Nothing but an account: the database's own commit, no log flush.
        s.begin_batch().unwrap();
        s.create_account(&u("carol"), b"k").unwrap();
        assert!(!s.batch_must_sync());
        s.commit_batch().unwrap();
        s.begin_batch().unwrap();
        let a = s.enqueue(&u("bob"), &u("alice"), None, b"one", 10).unwrap();
        s.enqueue(&u("bob"), &u("alice"), Some(2), b"two", 10).unwrap();
        assert!(s.batch_must_sync());
        s.commit_batch().unwrap();
        assert!(!s.batch_must_sync(), "a new batch starts clean");
        // A fetch counts a view of the limited envelope: that must be durable.
        s.begin_batch().unwrap();
        s.fetch(&u("bob"), 1 << 20).unwrap();
        assert!(s.batch_must_sync());
        s.commit_batch().unwrap();
        // Deletions alone wait for the next batch that syncs.
        s.begin_batch().unwrap();
        assert_eq!(s.ack(&u("bob"), &[a]).unwrap(), 1);
        assert!(!s.batch_must_sync());
        s.commit_batch().unwrap();
        // A refused envelope leaves nothing to sync; a rollback forgets.
        s.begin_batch().unwrap();
        assert!(s.enqueue(&u("nobody"), &u("alice"), None, b"x", 10).is_err());
        assert!(!s.batch_must_sync());
        s.enqueue(&u("bob"), &u("alice"), None, b"three", 10).unwrap();
        assert!(s.batch_must_sync());
        s.rollback_batch().unwrap();
        assert!(!s.batch_must_sync());
    }

    #[test]
    fn directory_entry_has_the_current_signed_prekeys_and_consumes_nothing() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        assert_eq!(s.directory_entry(&u("carol")).unwrap(), None);
        s.create_account(&u("carol"), b"ik").unwrap();
        let entry =
            |ik: &[u8], sp: &[u8]| Some(DirectoryEntry { identity_key: ik.to_vec(), signed_prekeys: sp.to_vec() });
        assert_eq!(s.directory_entry(&u("carol")).unwrap(), entry(b"ik", b""));
        let otk = vec![(PreKeyId(1), b"otk".to_vec())];
        s.upload_prekeys(&u("carol"), b"signed-1", &otk, &otk).unwrap();
        s.upload_prekeys(&u("carol"), b"signed-2", &[], &[]).unwrap();
        assert_eq!(s.directory_entry(&u("carol")).unwrap(), entry(b"ik", b"signed-2"));
        let (bundle, counts) = s.take_prekey_bundle(&u("carol")).unwrap().unwrap();
        assert!(bundle.one_time.is_some() && counts.one_time == 0);
    }

    #[test]
    fn a_mailbox_is_full_by_bytes_as_well_as_by_count() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        s.set_max_mailbox_bytes(10);
        s.create_account(&u("bob"), b"ik").unwrap();
        let a = s.enqueue(&u("bob"), &u("alice"), None, b"123456", 100).unwrap();
        assert!(matches!(s.enqueue(&u("bob"), &u("alice"), None, b"123456", 100), Err(StoreError::MailboxFull)));
        // Someone else's mailbox is not affected; bob's fills to the byte.
        s.create_account(&u("carol"), b"ik").unwrap();
        s.enqueue(&u("carol"), &u("alice"), None, b"1234567890", 100).unwrap();
        s.enqueue(&u("bob"), &u("alice"), None, b"1234", 100).unwrap();
        assert!(matches!(s.enqueue(&u("bob"), &u("alice"), None, b"1", 100), Err(StoreError::MailboxFull)));
        // Acknowledged envelopes free their bytes.
        assert_eq!(s.ack(&u("bob"), &[a]).unwrap(), 1);
        s.enqueue(&u("bob"), &u("alice"), None, b"123456", 100).unwrap();
    }

    #[test]
    fn one_time_prekeys_are_capped_and_an_upload_over_the_cap_stores_nothing() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        s.set_max_one_time_prekeys(5);
        s.create_account(&u("carol"), b"ik").unwrap();
        let keys = |ids: std::ops::Range<u32>| ids.map(|i| (PreKeyId(i), vec![1; 8])).collect::<Vec<_>>();
        let counts = s.upload_prekeys(&u("carol"), b"signed-1", &keys(0..3), &keys(0..5)).unwrap();
        assert_eq!(counts, PrekeyCounts { one_time: 3, one_time_kem: 5 });
        // Replacing keys by id holds no more of them: allowed at the cap.
        let counts = s.upload_prekeys(&u("carol"), b"signed-1", &keys(1..5), &keys(3..5)).unwrap();
        assert_eq!(counts, PrekeyCounts { one_time: 5, one_time_kem: 5 });
        // One more of either kind, or an oversized list, is refused whole.
        for (otk, kem) in [(keys(0..0), keys(5..6)), (keys(5..6), keys(0..0)), (keys(10..20), keys(0..0))] {
            let e = s.upload_prekeys(&u("carol"), b"signed-2", &otk, &kem).unwrap_err();
            assert!(matches!(&e, StoreError::Invalid(m) if m.contains("at most 5")), "{e}");
        }
        assert_eq!(s.directory_entry(&u("carol")).unwrap().unwrap().signed_prekeys, b"signed-1");
        // Taking one makes room for one.
        let (_, counts) = s.take_prekey_bundle(&u("carol")).unwrap().unwrap();
        assert_eq!(counts, PrekeyCounts { one_time: 4, one_time_kem: 4 });
        let counts = s.upload_prekeys(&u("carol"), b"signed-2", &keys(5..6), &keys(5..6)).unwrap();
        assert_eq!(counts, PrekeyCounts { one_time: 5, one_time_kem: 5 });
        // The default lets a client's registration and many top-ups (50 each) through.
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        s.create_account(&u("dave"), b"ik").unwrap();
        for batch in 0..MAX_ONE_TIME_PREKEYS / 50 {
            let k = keys(batch * 50..batch * 50 + 50);
            s.upload_prekeys(&u("dave"), b"signed", &k, &k).unwrap();
        }
        assert!(s.upload_prekeys(&u("dave"), b"signed", &keys(5000..5001), &[]).is_err());
    }

    #[test]
    fn room_attachments_are_read_by_the_members_at_finish_and_deleted_after_the_last() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        let r = RoomId([9; 16]);
        s.room_create(&r, &u("alice"), 10, b"gi").unwrap();
        s.room_join(&r, &u("bob"), 0, b"c1", b"gi1").unwrap();
        s.room_join(&r, &u("carol"), 1, b"c2", b"gi2").unwrap();
        let id = AttachmentId(77);
        let m =
            AttachmentMeta { id, from: u("alice"), to: Audience::Room(r), total_len: 3, received: 0, complete: false };
        s.attachment_begin(&m).unwrap();
        assert_eq!(s.attachment(id).unwrap().unwrap().to, Audience::Room(r));
        s.attachment_append(id, 0, b"abc").unwrap();
        s.attachment_finish(id).unwrap();
        // dave joins after the upload: not a reader.
        s.room_join(&r, &u("dave"), 2, b"c3", b"gi3").unwrap();
        assert!(s.attachment_is_reader(id, &u("bob")).unwrap());
        assert!(!s.attachment_is_reader(id, &u("alice")).unwrap(), "the sender is no reader");
        assert!(!s.attachment_is_reader(id, &u("dave")).unwrap());
        assert!(!s.attachment_reader_done(id, &u("bob")).unwrap());
        assert!(matches!(s.attachment_reader_done(id, &u("bob")), Err(StoreError::NotFound)));
        assert_eq!(s.attachment_read(id, 0, 10).unwrap(), b"abc");
        // carol leaves instead of downloading: the last reader is gone, so is the file.
        s.room_leave(&r, &u("carol")).unwrap();
        assert_eq!(s.attachment(id).unwrap(), None);
        assert!(s.attachment_read(id, 0, 10).unwrap().is_empty());
    }

    #[test]
    fn envelopes_views_and_ack() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        assert!(matches!(s.create_account(&u("bob"), b"k"), Err(StoreError::UsernameTaken)));
        let a = s.enqueue(&u("bob"), &u("alice"), None, b"one", 10).unwrap();
        let b = s.enqueue(&u("bob"), &u("alice"), Some(2), b"two", 10).unwrap();
        assert!(matches!(s.enqueue(&u("nobody"), &u("alice"), None, b"x", 10), Err(StoreError::UnknownUser)));
        let (e, more) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e.len(), 2);
        assert!(!more);
        assert_eq!(e[1].views_left, Some(1));
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e[1].views_left, Some(0));
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(s.ack(&u("bob"), &[a, b]).unwrap(), 1);
        assert_eq!(s.queued_total().unwrap(), 0);
        for _ in 0..2 {
            s.enqueue(&u("bob"), &u("alice"), None, b"x", 2).unwrap();
        }
        assert!(matches!(s.enqueue(&u("bob"), &u("alice"), None, b"x", 2), Err(StoreError::MailboxFull)));
    }

    /// The mailbox limit holds through everything that adds or removes
    /// envelopes: acks, a last view, a rolled-back batch, a reopened store.
    #[test]
    fn the_mailbox_limit_counts_what_is_queued() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = SqliteServerStore::open(&path).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        let full = |s: &mut SqliteServerStore| {
            matches!(s.enqueue(&u("bob"), &u("alice"), None, b"x", 3), Err(StoreError::MailboxFull))
        };
        let a = s.enqueue(&u("bob"), &u("alice"), None, b"a", 3).unwrap();
        s.enqueue(&u("bob"), &u("alice"), Some(1), b"b", 3).unwrap();
        s.enqueue(&u("bob"), &u("alice"), None, b"c", 3).unwrap();
        assert!(full(&mut s));
        // An ack of someone else's mailbox, or of an unknown id, frees nothing.
        assert_eq!(s.ack(&u("carol"), &[a]).unwrap(), 0);
        assert_eq!(s.ack(&u("bob"), &[EnvelopeId(999)]).unwrap(), 0);
        assert!(full(&mut s));
        assert_eq!(s.ack(&u("bob"), &[a]).unwrap(), 1);
        s.enqueue(&u("bob"), &u("alice"), None, b"d", 3).unwrap();
        assert!(full(&mut s));
        // The single view of "b" deletes it.
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e.len(), 3);
        s.enqueue(&u("bob"), &u("alice"), None, b"e", 3).unwrap();
        assert!(full(&mut s));
        // A batch that is rolled back leaves the count of what is on disk.
        let ids: Vec<EnvelopeId> = s.fetch(&u("bob"), 1 << 20).unwrap().0.iter().map(|e| e.id).collect();
        s.begin_batch().unwrap();
        assert_eq!(s.ack(&u("bob"), &ids).unwrap(), 3);
        s.enqueue(&u("bob"), &u("alice"), None, b"f", 3).unwrap();
        s.rollback_batch().unwrap();
        assert!(full(&mut s));
        // A reopened store counts again.
        drop(s);
        let mut s = SqliteServerStore::open(&path).unwrap();
        assert!(full(&mut s));
        assert_eq!(s.ack(&u("bob"), &ids[..1]).unwrap(), 1);
        s.enqueue(&u("bob"), &u("alice"), None, b"g", 3).unwrap();
        assert!(full(&mut s));
    }

    /// Envelopes nobody took within the retention time go; younger ones stay.
    #[test]
    fn envelopes_past_their_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = SqliteServerStore::open(&path).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        s.enqueue(&u("bob"), &u("alice"), None, b"old", 10).unwrap();
        s.enqueue(&u("bob"), &u("alice"), Some(2), b"old too", 10).unwrap();
        let now = crate::mailbox::unix_now();
        assert_eq!(s.expire_envelopes(now.saturating_sub(3600)).unwrap(), 0, "younger than an hour");
        assert_eq!(s.expire_envelopes(now + 1).unwrap(), 2);
        assert_eq!(s.queued_total().unwrap(), 0);
        let kept = s.enqueue(&u("bob"), &u("alice"), None, b"new", 10).unwrap();
        drop(s);
        let mut s = SqliteServerStore::open(&path).unwrap();
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), vec![kept]);
    }

    /// An older version kept envelopes in the database: they move to the
    /// mailbox log with their ids, and new ids follow the last one it gave.
    #[test]
    fn envelopes_of_an_older_version_move_to_the_mailbox_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let mut s = SqliteServerStore::open(&path).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        // As the older version left it: two envelopes queued, ids up to 41 given.
        s.conn
            .execute_batch(
                "INSERT INTO envelopes (id, recipient, sender, max_views, views_left, payload) VALUES
                     (40, 'bob', 'alice', NULL, NULL, x'0102'), (41, 'bob', 'carol', 3, 2, x'03');",
            )
            .unwrap();
        drop(s);
        std::fs::remove_file(dir.path().join("mailbox.log")).unwrap();
        let mut s = SqliteServerStore::open(&path).unwrap();
        let n: i64 = s.conn.row("SELECT COUNT(*) FROM envelopes", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 0, "moved out of the database");
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        let got: Vec<_> = e.iter().map(|e| (e.id.0, e.from.as_str(), e.views_left, e.payload.clone())).collect();
        assert_eq!(got, vec![(40, "alice", None, vec![1, 2]), (41, "carol", Some(1), vec![3])]);
        assert_eq!(s.enqueue(&u("bob"), &u("alice"), None, b"x", 10).unwrap(), EnvelopeId(42));
        drop(s);
        // Reopened: the log has them (with the view counted), the table stays empty.
        let mut s = SqliteServerStore::open(&path).unwrap();
        let (e, _) = s.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(
            e.iter().map(|e| (e.id.0, e.views_left)).collect::<Vec<_>>(),
            vec![(40, None), (41, Some(0)), (42, None)]
        );
    }

    #[test]
    fn rooms_order_epochs_limit_cursors() {
        use pqc_wire::RoomMessageKind::{Application, Commit, Proposal};
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        let r = RoomId([7; 16]);
        s.room_create(&r, &u("alice"), 3, b"gi0").unwrap();
        assert!(matches!(s.room_create(&r, &u("bob"), 3, b"x"), Err(StoreError::RoomExists)));
        assert_eq!(s.room_info(&r).unwrap(), (b"gi0".to_vec(), 0));
        assert!(matches!(s.room_info(&RoomId([8; 16])), Err(StoreError::NotFound)));
        // bob joins at epoch 0; a stale join is refused.
        assert_eq!(s.room_join(&r, &u("bob"), 0, b"join-bob", b"gi1").unwrap(), 1);
        assert!(matches!(
            s.room_join(&r, &u("carol"), 0, b"x", b"x"),
            Err(StoreError::EpochConflict { current: 1, sent: 0 })
        ));
        assert_eq!(s.room_info(&r).unwrap(), (b"gi1".to_vec(), 1));
        // Non-members cannot send; every entry must be made in the current epoch.
        assert!(matches!(s.room_append(&r, &u("eve"), 1, Application, b"x", None), Err(StoreError::NotAMember)));
        assert!(matches!(
            s.room_append(&r, &u("bob"), 0, Application, b"stale", None),
            Err(StoreError::EpochConflict { current: 1, sent: 0 })
        ));
        assert_eq!(s.room_append(&r, &u("bob"), 1, Application, b"m1", None).unwrap(), 2);
        assert!(matches!(s.room_append(&r, &u("alice"), 0, Commit, b"c", None), Err(StoreError::EpochConflict { .. })));
        assert_eq!(s.room_append(&r, &u("alice"), 1, Commit, b"c1", Some(b"gi2")).unwrap(), 3);
        assert_eq!(s.room_info(&r).unwrap(), (b"gi2".to_vec(), 2));
        // alice sees everything in order; bob only after his join.
        let (m, more) = s.room_fetch(&u("alice"), None, 1 << 20).unwrap();
        assert!(!more);
        assert_eq!(m.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(m[0].payload, b"join-bob");
        let (m, _) = s.room_fetch(&u("bob"), Some(&r), 1 << 20).unwrap();
        assert_eq!(m.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![2, 3]);
        // Entries read by all are deleted.
        assert_eq!(s.room_ack(&r, &u("alice"), 3).unwrap(), 1);
        assert_eq!(s.room_ack(&r, &u("bob"), 3).unwrap(), 2);
        assert!(s.room_ack(&r, &u("bob"), 99).is_err());
        assert!(s.room_fetch(&u("bob"), None, 1 << 20).unwrap().0.is_empty());
        // The limit: carol makes 3, dave is refused.
        s.room_join(&r, &u("carol"), 2, b"join-carol", b"gi3").unwrap();
        assert!(matches!(s.room_join(&r, &u("dave"), 3, b"x", b"x"), Err(StoreError::RoomFull { members: 3, max: 3 })));
        // bob leaves: his proposal is relayed, then he is out of routing.
        assert!(matches!(s.room_append(&r, &u("bob"), 2, Proposal, b"x", None), Err(StoreError::EpochConflict { .. })));
        let p = s.room_append(&r, &u("bob"), 3, Proposal, b"leave", None).unwrap();
        s.room_leave(&r, &u("bob")).unwrap();
        assert!(matches!(s.room_leave(&r, &u("bob")), Err(StoreError::NotAMember)));
        assert!(s.room_fetch(&u("bob"), None, 1 << 20).unwrap().0.is_empty());
        assert_eq!(s.room_members(&r).unwrap(), vec![u("alice"), u("carol")]);
        let (m, _) = s.room_fetch(&u("carol"), None, 1 << 20).unwrap();
        assert_eq!(m.last().map(|m| (m.seq, m.kind)), Some((p, Proposal)));
        // Until a member commits the leave, application messages are refused
        // (bob could still read them); the commit clears the way.
        assert!(matches!(s.room_append(&r, &u("alice"), 3, Application, b"x", None), Err(StoreError::ProposalPending)));
        s.room_append(&r, &u("carol"), 3, Commit, b"remove-bob", Some(b"gi4")).unwrap();
        s.room_append(&r, &u("alice"), 4, Application, b"m2", None).unwrap();
        // A proposal that nobody commits is void once another commit (here a
        // join) starts a new epoch: it does not hold up messages after it.
        s.room_append(&r, &u("alice"), 4, Proposal, b"void", None).unwrap();
        // Now dave fits.
        s.room_join(&r, &u("dave"), 4, b"join-dave", b"gi5").unwrap();
        s.room_append(&r, &u("dave"), 5, Application, b"m3", None).unwrap();
    }

    /// The query `room_fetch` ran before it read room by room: the order and
    /// `more` it gave are the reference.
    fn room_fetch_reference(
        s: &SqliteServerStore,
        user: &Username,
        room: Option<&RoomId>,
        max_bytes: usize,
    ) -> (Vec<(RoomId, u64, Vec<u8>)>, bool) {
        let mut st = s
            .conn
            .prepare(
                "SELECT l.room_id, l.seq, l.payload FROM room_log l
                 JOIN room_members m ON m.room_id = l.room_id AND m.username = ?1
                 WHERE l.seq > m.cursor AND m.lost = 0 AND (?2 IS NULL OR l.room_id = ?2)
                 ORDER BY l.room_id, l.seq",
            )
            .unwrap();
        let mut rows = st.query(params![user.as_str(), room.map(|r| r.0.to_vec())]).unwrap();
        let (mut out, mut used) = (Vec::new(), 0usize);
        while let Some(r) = rows.next().unwrap() {
            let payload: Vec<u8> = r.get(2).unwrap();
            if !out.is_empty() && used + payload.len() + 64 > max_bytes {
                return (out, true);
            }
            used += payload.len() + 64;
            out.push((
                room_id_of(r.get(0).unwrap()).unwrap(),
                u64::try_from(r.get::<_, i64>(1).unwrap()).unwrap(),
                payload,
            ));
        }
        (out, false)
    }

    #[test]
    fn a_long_room_backlog_is_fetched_in_order_in_bounded_pieces() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        // Three rooms, created out of id order; alice is in all, bob in two.
        let rooms = [RoomId([5; 16]), RoomId([2; 16]), RoomId([9; 16])];
        for r in &rooms {
            s.room_create(r, &u("alice"), 10, b"gi").unwrap();
        }
        s.room_join(&rooms[0], &u("bob"), 0, b"join", b"gi").unwrap();
        s.room_join(&rooms[2], &u("bob"), 0, b"join", b"gi").unwrap();
        let mut sent = 0usize;
        for (i, r) in rooms.iter().enumerate() {
            let epoch = if i == 1 { 0 } else { 1 };
            for n in 0..[500, 3, 40][i] {
                let payload = vec![u8::try_from(n % 251).unwrap(); 100 + (n * 37) % 300];
                s.room_append(r, &u("alice"), epoch, RoomMessageKind::Application, &payload, None).unwrap();
                sent += 1;
            }
        }
        // The same entries, order and `more` as the query it replaces, for
        // every member, room and budget (smaller than one entry too).
        for who in ["alice", "bob", "carol"] {
            for room in [None, Some(&rooms[0]), Some(&rooms[1]), Some(&rooms[2]), Some(&RoomId([1; 16]))] {
                for max in [0, 1, 64, 200, 450, 4096, 30_000, 1 << 20] {
                    let (got, more) = s.room_fetch(&u(who), room, max).unwrap();
                    let got: Vec<_> = got.into_iter().map(|m| (m.room_id, m.seq, m.payload)).collect();
                    assert_eq!((got, more), room_fetch_reference(&s, &u(who), room, max), "{who} {room:?} {max}");
                }
            }
        }
        // alice reads her 500-entry room in bounded pieces, acknowledging
        // each: every entry once, in order, no piece over its budget.
        let (mut seqs, mut pieces) = (Vec::new(), 0);
        loop {
            let (m, more) = s.room_fetch(&u("alice"), Some(&rooms[0]), 8192).unwrap();
            assert!(m.iter().map(|m| m.payload.len() + 64).sum::<usize>() <= 8192);
            seqs.extend(m.iter().map(|m| m.seq));
            pieces += 1;
            if let Some(last) = m.last() {
                s.room_ack(&rooms[0], &u("alice"), last.seq).unwrap();
            }
            if !more {
                break;
            }
        }
        // Seq 1 is bob's join in that room.
        assert_eq!(seqs, (1..=501).collect::<Vec<u64>>());
        assert!(pieces > 10, "{pieces}");
        // Across rooms: by room id, then seq, each entry once.
        let mut all = Vec::new();
        loop {
            let (m, more) = s.room_fetch(&u("alice"), None, 3000).unwrap();
            for e in &m {
                s.room_ack(&e.room_id, &u("alice"), e.seq).unwrap();
            }
            all.extend(m.into_iter().map(|m| (m.room_id, m.seq)));
            if !more {
                break;
            }
        }
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(all, sorted);
        assert_eq!(all.len(), 3 + 41);
        assert!(sent > 500);
    }

    #[test]
    fn room_fetch_walks_the_log_index_without_sorting() {
        let s = SqliteServerStore::open_in_memory().unwrap();
        let plan = |sql: &str| -> String {
            let mut st = s.conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let rows = st.query_map([], |r| r.get::<_, String>(3)).unwrap();
            rows.collect::<Result<Vec<_>, _>>().unwrap().join("; ")
        };
        let log = plan(
            "SELECT seq, sender, kind, payload FROM room_log WHERE room_id = x'00' AND seq > 0 ORDER BY seq LIMIT 10",
        );
        assert!(log.contains("sqlite_autoindex_room_log_1 (room_id=? AND seq>?)"), "{log}");
        let rooms = plan("SELECT room_id, cursor FROM room_members WHERE username = 'a' AND lost = 0");
        assert!(rooms.contains("room_members_by_user (username=?)"), "{rooms}");
        let one = plan("SELECT lost, cursor FROM room_members WHERE room_id = x'00' AND username = 'a'");
        for p in [log, rooms, one] {
            assert!(!p.contains("TEMP B-TREE"), "{p}");
        }
    }

    #[test]
    fn a_version_5_database_is_migrated_with_its_rooms() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let r = RoomId([3; 16]);
        {
            let c = Connection::open(&path).unwrap();
            for m in [MIGRATION_1, MIGRATION_2, MIGRATION_3, MIGRATION_4, MIGRATION_5] {
                c.execute_batch(m).unwrap();
            }
            c.execute_batch("PRAGMA user_version = 5").unwrap();
            c.execute(
                "INSERT INTO rooms (room_id, owner, max_participants, group_info) VALUES (?1, 'alice', 5, x'00')",
                [&r.0[..]],
            )
            .unwrap();
            c.execute("INSERT INTO room_members (room_id, username, cursor) VALUES (?1, 'alice', 0)", [&r.0[..]])
                .unwrap();
            c.execute(
                "INSERT INTO room_log (room_id, seq, sender, kind, payload) VALUES (?1, 1, 'alice', 0, x'01')",
                [&r.0[..]],
            )
            .unwrap();
            c.execute("UPDATE rooms SET next_seq = 2 WHERE room_id = ?1", [&r.0[..]]).unwrap();
        }
        let mut s = SqliteServerStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        // The log's bytes were counted when upgrading (version 8).
        assert_eq!(log_bytes(&s, &r), 1);
        // An entry from before room entries had a time counts from the upgrade.
        assert_eq!(s.expire_room_entries(crate::mailbox::unix_now() - 60).unwrap(), 0);
        assert_eq!(s.room_fetch(&u("alice"), Some(&r), 1 << 20).unwrap().0.len(), 1);
        assert_eq!(s.room_info(&r).unwrap(), (b"\x00".to_vec(), 0));
        assert_eq!(s.room_append(&r, &u("alice"), 0, RoomMessageKind::Application, b"m", None).unwrap(), 2);
        assert_eq!(log_bytes(&s, &r), 2);
    }

    #[test]
    fn invited_join_and_key_packages() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        for n in ["alice", "bob", "carol"] {
            s.create_account(&u(n), b"k").unwrap();
        }
        // Key packages: one-time, oldest first, bounded per user.
        assert!(matches!(s.take_key_package(&u("nobody")), Err(StoreError::UnknownUser)));
        assert_eq!(s.take_key_package(&u("bob")).unwrap(), None);
        assert_eq!(s.upload_key_packages(&u("bob"), &[b"kp1".to_vec(), b"kp2".to_vec()], 3).unwrap(), 2);
        assert!(matches!(
            s.upload_key_packages(&u("bob"), &[b"a".to_vec(), b"b".to_vec()], 3),
            Err(StoreError::Invalid(_))
        ));
        assert!(matches!(s.upload_key_packages(&u("bob"), &[vec![]], 3), Err(StoreError::Invalid(_))));
        assert_eq!(s.take_key_package(&u("bob")).unwrap(), Some((b"kp1".to_vec(), 1)));
        // Invited join: only a member adds, only an account is added, limit and epoch hold.
        let r = RoomId([9; 16]);
        s.room_create(&r, &u("alice"), 2, b"gi0").unwrap();
        assert!(matches!(s.room_add(&r, &u("carol"), &u("bob"), 0, b"c", b"g"), Err(StoreError::NotAMember)));
        assert!(matches!(s.room_add(&r, &u("alice"), &u("nobody"), 0, b"c", b"g"), Err(StoreError::UnknownUser)));
        assert!(matches!(
            s.room_add(&RoomId([1; 16]), &u("alice"), &u("bob"), 0, b"c", b"g"),
            Err(StoreError::NotFound)
        ));
        assert!(matches!(s.room_add(&r, &u("alice"), &u("bob"), 1, b"c", b"g"), Err(StoreError::EpochConflict { .. })));
        assert_eq!(s.room_add(&r, &u("alice"), &u("bob"), 0, b"add-bob", b"gi1").unwrap(), 1);
        assert_eq!(s.room_info(&r).unwrap(), (b"gi1".to_vec(), 1));
        assert!(matches!(s.room_add(&r, &u("alice"), &u("bob"), 1, b"c", b"g"), Err(StoreError::Invalid(_))));
        assert!(matches!(s.room_add(&r, &u("alice"), &u("carol"), 1, b"c", b"g"), Err(StoreError::RoomFull { .. })));
        // The commit is logged as alice's; bob reads from the entry after it.
        let (m, _) = s.room_fetch(&u("alice"), Some(&r), 1 << 20).unwrap();
        assert_eq!(m.iter().map(|m| (m.sender.as_str(), m.seq)).collect::<Vec<_>>(), vec![("alice", 1)]);
        assert!(s.room_fetch(&u("bob"), Some(&r), 1 << 20).unwrap().0.is_empty());
        s.room_append(&r, &u("alice"), 1, RoomMessageKind::Application, b"hi", None).unwrap();
        assert_eq!(s.room_fetch(&u("bob"), Some(&r), 1 << 20).unwrap().0.len(), 1);
    }

    #[test]
    fn expired_room_entries_cut_a_members_history_until_it_joins_again() {
        use RoomMessageKind::Application;
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteServerStore::open(&dir.path().join("server.db")).unwrap();
        let r = RoomId([4; 16]);
        let now = crate::mailbox::unix_now();
        s.create_account(&u("alice"), b"ka").unwrap();
        s.create_account(&u("bob"), b"kb").unwrap();
        s.room_create(&r, &u("alice"), 2, b"gi").unwrap();
        assert_eq!(s.room_join(&r, &u("bob"), 0, b"join-bob", b"gi1").unwrap(), 1);
        s.room_append(&r, &u("alice"), 1, Application, b"m1", None).unwrap();
        // bob read both entries, alice neither.
        s.room_ack(&r, &u("bob"), 2).unwrap();
        assert_eq!(s.expire_room_entries(now - 3600).unwrap(), 0, "nothing is an hour old");
        assert_eq!(s.expire_room_entries(now + 1).unwrap(), 2);
        // bob goes on as before.
        assert!(s.room_fetch(&u("bob"), Some(&r), 1 << 20).unwrap().0.is_empty());
        // alice's fetch of the room says why; a fetch of every room leaves it out.
        assert!(matches!(s.room_fetch(&u("alice"), Some(&r), 1 << 20), Err(StoreError::HistoryExpired)));
        s.room_append(&r, &u("bob"), 1, Application, b"m2", None).unwrap();
        assert!(s.room_fetch(&u("alice"), None, 1 << 20).unwrap().0.is_empty());
        // Adding her is refused (a member); her own join is a resync in her
        // seat (the room is full with her), on the current epoch only.
        assert!(matches!(s.room_add(&r, &u("bob"), &u("alice"), 1, b"c", b"g"), Err(StoreError::Invalid(_))));
        assert!(matches!(s.room_join(&r, &u("alice"), 0, b"old", b"g"), Err(StoreError::EpochConflict { .. })));
        let seq = s.room_join(&r, &u("alice"), 1, b"resync", b"gi2").unwrap();
        assert_eq!(seq, 4);
        assert_eq!(s.room_members(&r).unwrap().len(), 2);
        assert_eq!(s.room_info(&r).unwrap(), (b"gi2".to_vec(), 2));
        // From her commit on she reads the room again; bob sees her commit.
        assert!(s.room_fetch(&u("alice"), Some(&r), 1 << 20).unwrap().0.is_empty());
        s.room_append(&r, &u("bob"), 2, Application, b"m3", None).unwrap();
        let got: Vec<Vec<u8>> =
            s.room_fetch(&u("alice"), Some(&r), 1 << 20).unwrap().0.into_iter().map(|m| m.payload).collect();
        assert_eq!(got, [b"m3".to_vec()]);
        let got: Vec<Vec<u8>> =
            s.room_fetch(&u("bob"), Some(&r), 1 << 20).unwrap().0.into_iter().map(|m| m.payload).collect();
        assert_eq!(got, [b"m2".to_vec(), b"resync".to_vec(), b"m3".to_vec()]);
    }

    /// The room's byte count, checked against its log.
    fn log_bytes(s: &SqliteServerStore, r: &RoomId) -> i64 {
        let (kept, counted): (i64, i64) = s
            .conn
            .row(
                "SELECT (SELECT COALESCE(SUM(length(payload)), 0) FROM room_log WHERE room_id = ?1),
                        (SELECT log_bytes FROM rooms WHERE room_id = ?1)",
                params![&r.0[..]],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(kept, counted, "the room's byte count follows its log");
        kept
    }

    /// A room's log holds at most its byte limit: the entry that goes past it
    /// pushes out the oldest ones, read or not, and a member that had not
    /// read them is told at its next fetch (it joins again), while one that
    /// had goes on. The byte count follows acknowledgements and expiry.
    #[test]
    fn a_room_log_over_its_byte_limit_loses_its_oldest_entries() {
        use RoomMessageKind::Application;
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        s.set_max_room_log_bytes(100);
        let r = RoomId([5; 16]);
        for n in ["alice", "bob", "carol"] {
            s.create_account(&u(n), b"k").unwrap();
        }
        s.room_create(&r, &u("alice"), 3, b"gi").unwrap();
        assert_eq!(s.room_join(&r, &u("bob"), 0, b"join-bob", b"gi1").unwrap(), 1);
        assert_eq!(s.room_join(&r, &u("carol"), 1, b"join-carol", b"gi2").unwrap(), 2);
        assert_eq!(log_bytes(&s, &r), 18);
        // alice and carol read along; bob does not.
        for i in 0..4u8 {
            let seq = s.room_append(&r, &u("alice"), 2, Application, &[i; 30], None).unwrap();
            s.room_ack(&r, &u("alice"), seq).unwrap();
            s.room_ack(&r, &u("carol"), seq).unwrap();
            assert!(log_bytes(&s, &r) <= 100);
        }
        // 18 + 120 bytes: the two joins and the first message went.
        assert_eq!(log_bytes(&s, &r), 90);
        assert!(matches!(s.room_fetch(&u("bob"), Some(&r), 1 << 20), Err(StoreError::HistoryExpired)));
        assert!(s.room_fetch(&u("carol"), Some(&r), 1 << 20).unwrap().0.is_empty());
        // bob joins again; then everyone reads up: nothing is kept.
        let seq = s.room_join(&r, &u("bob"), 2, b"resync", b"gi3").unwrap();
        assert_eq!(s.room_fetch(&u("bob"), Some(&r), 1 << 20).unwrap().0.len(), 0);
        s.room_ack(&r, &u("alice"), seq).unwrap();
        s.room_ack(&r, &u("carol"), seq).unwrap();
        assert_eq!(log_bytes(&s, &r), 0);
        // Entries that expire take their bytes off too.
        s.room_append(&r, &u("alice"), 3, Application, b"later", None).unwrap();
        assert_eq!(log_bytes(&s, &r), 5);
        assert_eq!(s.expire_room_entries(crate::mailbox::unix_now() + 1).unwrap(), 1);
        assert_eq!(log_bytes(&s, &r), 0);
    }

    /// A user is in at most `max_rooms_per_user` rooms, counting those it
    /// created, joined or was added to; a room goes with its last member,
    /// which frees both the count and the room's name.
    #[test]
    fn rooms_per_user_are_capped_and_an_empty_room_is_deleted() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        s.set_max_rooms_per_user(2);
        for n in ["alice", "bob"] {
            s.create_account(&u(n), b"k").unwrap();
        }
        let (r1, r2, r3) = (RoomId([1; 16]), RoomId([2; 16]), RoomId([3; 16]));
        s.room_create(&r1, &u("alice"), 5, b"gi").unwrap();
        s.room_create(&r2, &u("alice"), 5, b"gi").unwrap();
        let e = s.room_create(&r3, &u("alice"), 5, b"gi").unwrap_err();
        assert!(e.to_string().contains("you are in 2 rooms"), "{e}");
        s.room_create(&r3, &u("bob"), 5, b"gi").unwrap();
        s.room_join(&r1, &u("bob"), 0, b"join", b"gi1").unwrap();
        let e = s.room_add(&r2, &u("alice"), &u("bob"), 0, b"add", b"gi1").unwrap_err();
        assert!(e.to_string().contains("bob is in 2 rooms"), "{e}");
        let e = s.room_join(&r3, &u("alice"), 0, b"join", b"gi1").unwrap_err();
        assert!(e.to_string().contains("you are in 2 rooms"), "{e}");
        // bob leaves the room he made alone: it is gone, and its name free.
        s.room_leave(&r3, &u("bob")).unwrap();
        assert!(matches!(s.room_info(&r3), Err(StoreError::NotFound)));
        s.room_create(&r3, &u("bob"), 5, b"gi-new").unwrap();
        // A room with members left stays.
        s.room_leave(&r1, &u("alice")).unwrap();
        assert_eq!(s.room_members(&r1).unwrap(), vec![u("bob")]);
        s.room_create(&RoomId([4; 16]), &u("alice"), 5, b"gi").unwrap();
    }

    #[test]
    fn room_tables_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let r = RoomId([1; 16]);
        {
            let mut s = SqliteServerStore::open(&path).unwrap();
            s.room_create(&r, &u("alice"), 2, b"gi").unwrap();
            s.room_append(&r, &u("alice"), 0, RoomMessageKind::Application, b"ct", None).unwrap();
        }
        let mut s = SqliteServerStore::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
        assert_eq!(s.room_fetch(&u("alice"), Some(&r), 1 << 20).unwrap().0.len(), 1);
    }

    #[test]
    fn abandoned_uploads_are_bounded_per_sender_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SqliteServerStore::open(&dir.path().join("server.db")).unwrap();
        s.create_account(&u("bob"), b"k").unwrap();
        let begin = |s: &mut SqliteServerStore, id: u64, from: &str| {
            let to = Audience::User(u("bob"));
            let m =
                AttachmentMeta { id: AttachmentId(id), from: u(from), to, total_len: 10, received: 0, complete: false };
            s.attachment_begin(&m).unwrap();
            s.attachment_append(AttachmentId(id), 0, b"12345").unwrap();
        };
        let file = |id: u64| dir.path().join("attachments").join(format!("{id:016x}"));
        // Begun in the order 5, 4, 3, 2, 1 (ids are random in real life).
        for id in (1..=5).rev() {
            begin(&mut s, id, "alice");
        }
        begin(&mut s, 6, "carol");
        // A finished one is never an abandoned upload.
        s.attachment_append(AttachmentId(1), 5, b"67890").unwrap();
        s.attachment_finish(AttachmentId(1)).unwrap();
        assert!(file(2).exists());
        // alice keeps her newest 2 unfinished uploads: 2 and 3 (1 is finished).
        assert_eq!(s.attachments_keep_unfinished(&u("alice"), 2).unwrap(), 2);
        let left: Vec<u64> = (1..=6).filter(|i| s.attachment(AttachmentId(*i)).unwrap().is_some()).collect();
        assert_eq!(left, [1, 2, 3, 6]);
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!file(4).exists() && !file(5).exists() && file(2).exists());
        // Expiry: none begun before the epoch; all unfinished begun before tomorrow.
        assert_eq!(s.attachments_expire_unfinished(0).unwrap(), 0);
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let tomorrow = i64::try_from(now).unwrap() + 86_400;
        assert_eq!(s.attachments_expire_unfinished(tomorrow).unwrap(), 3);
        let left: Vec<u64> = (1..=6).filter(|i| s.attachment(AttachmentId(*i)).unwrap().is_some()).collect();
        assert_eq!(left, [1]);
        assert_eq!(s.attachment_read(AttachmentId(1), 0, 10).unwrap(), b"1234567890");
        // A finished one its recipient never took goes after its own retention.
        assert_eq!(s.attachments_expire_finished(0).unwrap(), 0);
        assert_eq!(s.attachments_expire_finished(tomorrow).unwrap(), 1);
        assert!(s.attachment(AttachmentId(1)).unwrap().is_none());
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(!file(1).exists());
    }

    #[test]
    fn attachment_files_resume_from_the_last_checkpoint_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.db");
        let id = AttachmentId(0xABCDEF);
        let mib = 1usize << 20;
        let total = 17 * mib as u64 + 5;
        let byte = |i: u64| (i % 251) as u8;
        let chunk = |from: u64, len: usize| (from..from + len as u64).map(byte).collect::<Vec<u8>>();
        let file = dir.path().join("attachments").join(format!("{:016x}", id.0));
        {
            let mut s = SqliteServerStore::open(&path).unwrap();
            s.create_account(&u("bob"), b"k").unwrap();
            let m = AttachmentMeta {
                id,
                from: u("alice"),
                to: Audience::User(u("bob")),
                total_len: total,
                received: 0,
                complete: false,
            };
            s.attachment_begin(&m).unwrap();
            for i in 0..17u64 {
                assert_eq!(
                    s.attachment_append(id, i * mib as u64, &chunk(i * mib as u64, mib)).unwrap(),
                    (i + 1) * mib as u64
                );
            }
            assert_eq!(s.attachment(id).unwrap().unwrap().received, 17 * mib as u64);
            assert!(matches!(s.attachment_append(id, 0, b"x"), Err(StoreError::Invalid(_))));
            // "Crash": dropped without finishing. The fsync of the 8 MiB
            // checkpoint was recorded at the 16 MiB one, whose own fsync is
            // not recorded yet.
        }
        let mut s = SqliteServerStore::open(&path).unwrap();
        let durable = ATTACHMENT_CHECKPOINT;
        assert_eq!(s.attachment(id).unwrap().unwrap().received, durable);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), durable, "the file is cut back to the checkpoint");
        let mut at = durable;
        while at < total {
            let n = (total - at).min(mib as u64);
            assert_eq!(s.attachment_append(id, at, &chunk(at, n as usize)).unwrap(), at + n);
            at += n;
        }
        s.attachment_finish(id).unwrap();
        let all = s.attachment_read(id, 0, u32::MAX).unwrap();
        assert_eq!(all, chunk(0, total as usize));
        assert_eq!(s.attachment_read(id, total - 2, 10).unwrap(), chunk(total - 2, 2));
        // Deleted in a batch: the file goes after the commit (on a thread of
        // its own), not before.
        s.begin_batch().unwrap();
        assert!(s.attachment_delete(id).unwrap());
        assert!(file.exists());
        s.commit_batch().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while file.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(!file.exists());
        // A stray file without an attachment is swept at the next open.
        std::fs::write(&file, b"stray").unwrap();
        drop(s);
        SqliteServerStore::open(&path).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn attachments_in_chunks() {
        let mut s = SqliteServerStore::open_in_memory().unwrap();
        let id = AttachmentId(42);
        let m = AttachmentMeta {
            id,
            from: u("a"),
            to: Audience::User(u("b")),
            total_len: 10,
            received: 0,
            complete: false,
        };
        s.attachment_begin(&m).unwrap();
        assert_eq!(s.attachment_append(id, 0, b"0123").unwrap(), 4);
        assert!(s.attachment_append(id, 0, b"0123").is_err());
        assert!(s.attachment_finish(id).is_err());
        assert_eq!(s.attachment_append(id, 4, b"456789").unwrap(), 10);
        s.attachment_finish(id).unwrap();
        assert_eq!(s.attachment_read(id, 2, 5).unwrap(), b"23456");
        assert_eq!(s.attachment_read(id, 0, 100).unwrap(), b"0123456789");
        assert!(s.attachment_delete(id).unwrap());
        assert!(s.attachment(id).unwrap().is_none());
    }
}
