//! Mailboxes: the envelopes waiting for their recipients, kept in memory and
//! in an append-only log file (`mailbox.log` beside the database).
//!
//! An envelope lives a few milliseconds to a few days: written once when its
//! sender's request arrives, deleted when its recipient acknowledges it. In a
//! B-tree that is an insert and a delete, each rewriting whole pages of the
//! database's write-ahead log (several KiB per envelope of a few hundred
//! bytes); here it is one record appended when it comes and a 13-byte record
//! when it goes, made durable together with everything else of the same
//! group commit by one `fdatasync` of the log ([`Mailboxes::flush`]).
//!
//! # The log
//! A sequence of records, `u32 BE body length || u32 BE CRC-32 of the body ||
//! body`, the body one of:
//! - `1 || id u64 || queued at u64 (Unix seconds) || max_views u32 (0: none)
//!   || views_left u32 || recipient (u8 length || name) || sender (same) ||
//!   payload (the rest)`: an envelope;
//! - `2 || id u64`: the envelope was acknowledged, or seen for the last time;
//! - `3 || id u64 || views_left u32`: a limited-view envelope was fetched;
//! - `4 || next id u64`: the first id not yet given (a compacted log starts with it).
//!
//! Replaying the log from its start rebuilds the mailboxes. A crash can
//! leave a torn record at the end: replay stops at the first record that
//! does not check out and the file is cut back to the records before it,
//! all of which were complete when their group commit was acknowledged.
//! When the log holds four times more than its live envelopes (and at least
//! [`COMPACT_MIN`]), the live envelopes are copied to a new file that
//! replaces it atomically.
//!
//! Envelope ids keep increasing across restarts and compactions (clients
//! drop an id they already have): the log keeps the next id, and a store
//! upgraded from the database table keeps counting after its last id.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use pqc_wire::codec::Reader;
use pqc_wire::{Envelope, EnvelopeId, Username, WireError};

use crate::StoreError;

/// A log smaller than this is never compacted.
pub const COMPACT_MIN: u64 = 32 << 20;

/// Largest record body replay accepts (an envelope is bounded by the
/// server's frame limit, far below this).
const MAX_RECORD: usize = 1 << 30;

const PUT: u8 = 1;
const DELETE: u8 = 2;
const VIEWS: u8 = 3;
const NEXT_ID: u8 = 4;

/// Bytes of zeros written ahead of the records. A group commit then
/// overwrites blocks the file already has, and its `fdatasync` flushes the
/// data alone, not also the file's new size and block map: about half the
/// CPU and two thirds of the time of an appending one on this project's
/// machines. Replay reads a zero header as the end of the log. Half a MiB at
/// a time: the commit that writes them waits for them too (4 MiB held one
/// commit 3.5-5 ms, and every message in flight with it).
const PREALLOCATE: u64 = 512 << 10;

/// Record header: body length and CRC.
const HEADER: usize = 8;

/// One record of the log, as replay reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// An envelope.
    Put {
        /// Its id.
        id: u64,
        /// When it was queued (Unix seconds).
        queued_at: u64,
        /// Limited-view limit.
        max_views: Option<u32>,
        /// Fetches left (limited-view envelopes).
        views_left: Option<u32>,
        /// Recipient.
        recipient: Username,
        /// Sender.
        sender: Username,
        /// Ciphertext.
        payload: &'a [u8],
    },
    /// Envelope `id` is gone.
    Delete(u64),
    /// Envelope `id` has `views_left` fetches left.
    Views(u64, u32),
    /// The first id not given yet.
    NextId(u64),
}

/// Decodes the record at the start of `buf`: the record and its length in
/// bytes, `Ok(None)` if `buf` ends before the record does (a torn tail), or
/// an error if it is damaged or malformed. Never panics, whatever `buf` is.
pub fn decode_record(buf: &[u8]) -> Result<Option<(Record<'_>, usize)>, StoreError> {
    let Some(header) = buf.get(..HEADER) else { return Ok(None) };
    let mut r = Reader::new(header);
    let len = r.u32().map_err(damaged)? as usize;
    let crc = r.u32().map_err(damaged)?;
    if len > MAX_RECORD {
        return Err(StoreError::Invalid("mailbox log: record too long".into()));
    }
    let Some(body) = buf.get(HEADER..HEADER + len) else { return Ok(None) };
    if crc32fast::hash(body) != crc {
        return Err(StoreError::Invalid("mailbox log: record checksum mismatch".into()));
    }
    decode_body(body).map(|r| Some((r, HEADER + len))).map_err(damaged)
}

fn damaged(e: WireError) -> StoreError {
    StoreError::Invalid(format!("mailbox log: malformed record: {e}"))
}

fn decode_body(body: &[u8]) -> Result<Record<'_>, WireError> {
    let mut r = Reader::new(body);
    let none_if_zero = |v: u32| (v != 0).then_some(v);
    let record = match r.u8()? {
        PUT => {
            let id = r.u64()?;
            let queued_at = r.u64()?;
            let max_views = none_if_zero(r.u32()?);
            let views_left = r.u32()?;
            let recipient = Username::read(&mut r)?;
            let sender = Username::read(&mut r)?;
            let payload = r.take(r.remaining())?;
            Record::Put {
                id,
                queued_at,
                max_views,
                views_left: max_views.map(|_| views_left),
                recipient,
                sender,
                payload,
            }
        }
        DELETE => Record::Delete(r.u64()?),
        VIEWS => Record::Views(r.u64()?, r.u32()?),
        NEXT_ID => Record::NextId(r.u64()?),
        other => return Err(WireError::UnknownType(other)),
    };
    r.finish()?;
    Ok(record)
}

/// Replays `data` as a mailbox log, as opening one does (records into
/// mailboxes in memory, stopping at the first damaged or torn one), and
/// returns the length of its good part. The fuzz target's entry point.
#[doc(hidden)]
pub fn fuzz_replay(data: &[u8]) -> usize {
    let (_, at) = Mailboxes::replay_from(data, data.len() as u64);
    usize::try_from(at).unwrap_or(usize::MAX)
}

/// Appends one record, `body` written by `f`, to `out`.
fn append_record(out: &mut Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    f(out);
    let body = out.get(start + HEADER..).unwrap_or_default();
    let (len, crc) = (u32::try_from(body.len()).unwrap_or(u32::MAX), crc32fast::hash(body));
    if let Some(h) = out.get_mut(start..start + HEADER) {
        h[..4].copy_from_slice(&len.to_be_bytes());
        h[4..].copy_from_slice(&crc.to_be_bytes());
    }
}

/// Appends the PUT record of envelope `id` (its fields in `q`, its
/// ciphertext `payload`) to `out`; returns the record's length.
fn append_put(out: &mut Vec<u8>, id: u64, q: &Queued, payload: &[u8]) -> u64 {
    let start = out.len();
    append_record(out, |o| {
        o.push(PUT);
        o.extend_from_slice(&id.to_be_bytes());
        o.extend_from_slice(&q.queued_at.to_be_bytes());
        o.extend_from_slice(&q.max_views.unwrap_or(0).to_be_bytes());
        o.extend_from_slice(&q.views_left.unwrap_or(0).to_be_bytes());
        put_name(o, &q.recipient);
        put_name(o, &q.sender);
        o.extend_from_slice(payload);
    });
    (out.len() - start) as u64
}

fn put_name(out: &mut Vec<u8>, name: &Username) {
    // At most Username::MAX_LEN (32) bytes.
    out.push(u8::try_from(name.as_str().len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_str().as_bytes());
}

/// Where an envelope's ciphertext is.
#[derive(Debug)]
enum Body {
    /// In memory (a store without a file).
    Memory(Vec<u8>),
    /// In the log, at this offset (past the committed length: still in the
    /// batch's buffer).
    Log { offset: u64, len: u32 },
}

impl Body {
    /// The ciphertext's length.
    fn len(&self) -> u64 {
        match self {
            Self::Memory(v) => v.len() as u64,
            Self::Log { len, .. } => u64::from(*len),
        }
    }
}

#[derive(Debug)]
struct Queued {
    recipient: Username,
    sender: Username,
    max_views: Option<u32>,
    views_left: Option<u32>,
    body: Body,
    /// When it was queued (Unix seconds).
    queued_at: u64,
    /// Bytes of its record in the log (0 in memory).
    record_len: u64,
}

/// How to take back one change of the open batch.
#[derive(Debug)]
enum Undo {
    Put(u64),
    Delete(u64, Queued),
    Views(u64, Option<u32>),
}

#[derive(Debug)]
struct LogFile {
    file: File,
    path: PathBuf,
    /// Bytes of records on disk (every group commit that succeeded).
    len: u64,
    /// Size of the file: past `len`, zeros written ahead (see [`PREALLOCATE`]).
    allocated: u64,
    /// The last write was not synced (deletions only).
    unsynced: bool,
}

impl LogFile {
    /// Makes room for `n` more bytes past `len`, zeros written ahead.
    fn reserve(&mut self, n: u64) -> std::io::Result<()> {
        let need = self.len + n;
        if need <= self.allocated {
            return Ok(());
        }
        let target = need.max(self.allocated + PREALLOCATE);
        let zeros = [0u8; 64 << 10];
        let mut at = self.allocated;
        while at < target {
            let k = (target - at).min(zeros.len() as u64);
            self.file.write_all_at(zeros.get(..k as usize).unwrap_or(&zeros), at)?;
            at += k;
        }
        self.allocated = target;
        Ok(())
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        // A clean stop leaves no deletion only in the page cache.
        if self.unsynced {
            let _ = self.file.sync_data();
        }
    }
}

/// One recipient's envelopes.
#[derive(Debug, Default)]
struct Mailbox {
    ids: BTreeSet<u64>,
    /// Their ciphertext bytes.
    bytes: u64,
}

/// The envelopes of every mailbox; see the [module](self) documentation.
#[derive(Debug)]
pub(crate) struct Mailboxes {
    log: Option<LogFile>,
    envelopes: HashMap<u64, Queued>,
    by_recipient: HashMap<Username, Mailbox>,
    next_id: u64,
    /// Records of the open batch, written at [`Mailboxes::flush`].
    pending: Vec<u8>,
    /// `pending` holds an envelope or a view count, which must be on disk
    /// before the batch is answered; deletions alone need not be (see
    /// [`Mailboxes::flush`]).
    must_sync: bool,
    undo: Vec<Undo>,
    /// Bytes of the live envelopes' records.
    live: u64,
}

impl Mailboxes {
    /// Mailboxes without a file (tests, an in-memory store).
    pub(crate) fn in_memory() -> Self {
        Self {
            log: None,
            envelopes: HashMap::new(),
            by_recipient: HashMap::new(),
            next_id: 1,
            pending: Vec::new(),
            must_sync: false,
            undo: Vec::new(),
            live: 0,
        }
    }

    /// Opens (creating) the log at `path` and replays it; cuts a torn tail.
    pub(crate) fn open(path: &Path) -> Result<Self, StoreError> {
        // A compaction that did not finish left its new file: the old one is whole.
        let _ = std::fs::remove_file(compact_path(path));
        let created = !path.exists();
        // Owner-only: the log holds who wrote to whom, and when.
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(path)?;
        if created {
            file.sync_all()?;
            sync_dir(path)?;
        }
        let size = file.metadata()?.len();
        let (mut m, at) = Self::replay_from(std::io::BufReader::with_capacity(1 << 20, &file), size);
        let ahead = at < size && zeros_from(&file, at, size)?;
        if at < size && !ahead {
            tracing::warn!(
                "mailbox log {}: cut {} bytes of an unfinished record at its end (a crash during a write)",
                path.display(),
                size - at
            );
            file.set_len(at)?;
            file.sync_all()?;
        }
        let allocated = if ahead { size } else { at };
        m.log = Some(LogFile { file, path: path.to_owned(), len: at, allocated, unsynced: false });
        Ok(m)
    }

    /// Replays the log that `reader` reads (`size` bytes) into mailboxes in
    /// memory, a record at a time (a log may be far larger than memory
    /// should hold at once): header, then body into a reused buffer.
    /// Returns them and the length of the good part: the records before the
    /// first torn or damaged one (or the zeros written ahead).
    fn replay_from(mut reader: impl std::io::Read, size: u64) -> (Self, u64) {
        let mut m = Self::in_memory();
        let mut at = 0u64;
        let mut record = Vec::new();
        loop {
            record.resize(HEADER, 0);
            if reader.read_exact(&mut record).is_err() {
                break;
            }
            let len = u32::from_be_bytes([record[0], record[1], record[2], record[3]]) as usize;
            if len > MAX_RECORD || at + (HEADER + len) as u64 > size {
                break;
            }
            record.resize(HEADER + len, 0);
            if reader.read_exact(&mut record[HEADER..]).is_err() {
                break;
            }
            match decode_record(&record) {
                Ok(Some((r, n))) => {
                    m.replay(r, at, n as u64);
                    at += n as u64;
                }
                Ok(None) | Err(_) => break,
            }
        }
        (m, at)
    }

    fn replay(&mut self, record: Record<'_>, offset: u64, n: u64) {
        match record {
            Record::Put { id, queued_at, max_views, views_left, recipient, sender, payload } => {
                let body_offset = offset + n - payload.len() as u64;
                let body = Body::Log { offset: body_offset, len: u32::try_from(payload.len()).unwrap_or(u32::MAX) };
                // A Put of an id seen before (an import repeated after a crash) replaces it.
                self.remove(id);
                self.insert(id, Queued { recipient, sender, max_views, views_left, body, queued_at, record_len: n });
                self.next_id = self.next_id.max(id.saturating_add(1));
            }
            Record::Delete(id) => {
                self.remove(id);
            }
            Record::Views(id, v) => {
                if let Some(q) = self.envelopes.get_mut(&id) {
                    q.views_left = Some(v);
                }
            }
            Record::NextId(id) => self.next_id = self.next_id.max(id),
        }
    }

    fn insert(&mut self, id: u64, q: Queued) {
        self.live += q.record_len;
        let mailbox = self.by_recipient.entry(q.recipient.clone()).or_default();
        mailbox.ids.insert(id);
        mailbox.bytes += q.body.len();
        self.envelopes.insert(id, q);
    }

    fn remove(&mut self, id: u64) -> Option<Queued> {
        let q = self.envelopes.remove(&id)?;
        self.live = self.live.saturating_sub(q.record_len);
        if let Some(mailbox) = self.by_recipient.get_mut(&q.recipient) {
            mailbox.ids.remove(&id);
            mailbox.bytes = mailbox.bytes.saturating_sub(q.body.len());
            if mailbox.ids.is_empty() {
                self.by_recipient.remove(&q.recipient);
            }
        }
        Some(q)
    }

    /// Ids are given from here on at least (an upgraded store's last id + 1).
    pub(crate) fn ids_from(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Envelopes queued for `user`.
    pub(crate) fn len_of(&self, user: &Username) -> usize {
        self.by_recipient.get(user).map_or(0, |m| m.ids.len())
    }

    /// Ciphertext bytes queued for `user`.
    pub(crate) fn bytes_of(&self, user: &Username) -> u64 {
        self.by_recipient.get(user).map_or(0, |m| m.bytes)
    }

    /// Envelopes queued for everyone.
    pub(crate) fn total(&self) -> usize {
        self.envelopes.len()
    }

    /// Queues an envelope with the next id (the caller checked the
    /// recipient and the mailbox limit).
    pub(crate) fn put(
        &mut self,
        recipient: &Username,
        sender: &Username,
        max_views: Option<u32>,
        payload: &[u8],
    ) -> Result<EnvelopeId, StoreError> {
        // Ids never come near the end of u64 but from a damaged log: then
        // refuse (the sender gets an error) rather than reuse an id, which
        // would replace a queued envelope.
        let id = self.next_id;
        self.next_id = id
            .checked_add(1)
            .ok_or_else(|| StoreError::Invalid("no envelope ids left: the mailbox log is damaged".into()))?;
        self.put_with_id(id, unix_now(), recipient, sender, max_views, max_views, payload)?;
        Ok(EnvelopeId(id))
    }

    /// Queues an envelope under `id` (also the import of an older store's rows).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn put_with_id(
        &mut self,
        id: u64,
        queued_at: u64,
        recipient: &Username,
        sender: &Username,
        max_views: Option<u32>,
        views_left: Option<u32>,
        payload: &[u8],
    ) -> Result<(), StoreError> {
        let len = u32::try_from(payload.len()).map_err(|_| StoreError::Invalid("envelope too large".into()))?;
        self.next_id = self.next_id.max(id.saturating_add(1));
        let mut q = Queued {
            recipient: recipient.clone(),
            sender: sender.clone(),
            max_views,
            views_left,
            body: Body::Log { offset: 0, len },
            queued_at,
            record_len: 0,
        };
        match &self.log {
            None => q.body = Body::Memory(payload.to_vec()),
            Some(log) => {
                q.record_len = append_put(&mut self.pending, id, &q, payload);
                self.must_sync = true;
                q.body = Body::Log { offset: log.len + self.pending.len() as u64 - u64::from(len), len };
            }
        }
        if let Some(old) = self.remove(id) {
            self.undo.push(Undo::Delete(id, old));
        }
        self.insert(id, q);
        self.undo.push(Undo::Put(id));
        Ok(())
    }

    fn record(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.log.is_some() {
            append_record(&mut self.pending, f);
        }
    }

    fn payload(&self, body: &Body) -> Result<Vec<u8>, StoreError> {
        match (body, &self.log) {
            (Body::Memory(v), _) => Ok(v.clone()),
            (Body::Log { offset, len }, Some(log)) => {
                let len = *len as usize;
                if *offset >= log.len {
                    let at = usize::try_from(offset - log.len).unwrap_or(usize::MAX);
                    return self
                        .pending
                        .get(at..at.saturating_add(len))
                        .map(<[u8]>::to_vec)
                        .ok_or_else(|| StoreError::Invalid("envelope past the mailbox log's end".into()));
                }
                let mut buf = vec![0; len];
                log.file.read_exact_at(&mut buf, *offset)?;
                Ok(buf)
            }
            (Body::Log { .. }, None) => Err(StoreError::Invalid("envelope in a log that is not open".into())),
        }
    }

    /// `user`'s envelopes, oldest first, up to about `max_bytes` (at least
    /// one), and whether more remain. Counts a view of each limited-view
    /// envelope; the last one deletes it.
    pub(crate) fn fetch(&mut self, user: &Username, max_bytes: usize) -> Result<(Vec<Envelope>, bool), StoreError> {
        let ids: Vec<u64> = self.by_recipient.get(user).map(|m| m.ids.iter().copied().collect()).unwrap_or_default();
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut more = false;
        for id in ids {
            let Some(q) = self.envelopes.get(&id) else { continue };
            let size = usize::try_from(q.body.len()).unwrap_or(usize::MAX);
            if !out.is_empty() && used + size + 64 > max_bytes {
                more = true;
                break;
            }
            used += size + 64;
            let payload = self.payload(&q.body)?;
            let (from, max_views, views_left) = (q.sender.clone(), q.max_views, q.views_left);
            let left = views_left.map(|v| v.saturating_sub(1));
            match left {
                Some(0) => {
                    self.delete(id);
                }
                Some(v) => {
                    self.must_sync = true;
                    self.record(|out| {
                        out.push(VIEWS);
                        out.extend_from_slice(&id.to_be_bytes());
                        out.extend_from_slice(&v.to_be_bytes());
                    });
                    if let Some(q) = self.envelopes.get_mut(&id) {
                        self.undo.push(Undo::Views(id, q.views_left));
                        q.views_left = Some(v);
                    }
                }
                None => {}
            }
            out.push(Envelope { id: EnvelopeId(id), from, max_views, views_left: left, payload });
        }
        Ok((out, more))
    }

    /// Deletes those of `ids` that are `user`'s; returns how many.
    pub(crate) fn ack(&mut self, user: &Username, ids: &[EnvelopeId]) -> u32 {
        let mut n = 0;
        for &EnvelopeId(id) in ids {
            if self.envelopes.get(&id).is_some_and(|q| &q.recipient == user) && self.delete(id) {
                n += 1;
            }
        }
        n
    }

    /// Deletes the envelopes queued before `before` (Unix seconds) that
    /// their recipients never took; returns how many.
    pub(crate) fn expire(&mut self, before: u64) -> u32 {
        let old: Vec<u64> = self.envelopes.iter().filter(|(_, q)| q.queued_at < before).map(|(&id, _)| id).collect();
        let mut n = 0;
        for id in old {
            if self.delete(id) {
                n += 1;
            }
        }
        n
    }

    /// Deletes envelope `id` in the open batch (a record, and a way back);
    /// whether there was one.
    fn delete(&mut self, id: u64) -> bool {
        let Some(q) = self.remove(id) else { return false };
        self.record(|out| {
            out.push(DELETE);
            out.extend_from_slice(&id.to_be_bytes());
        });
        self.undo.push(Undo::Delete(id, q));
        true
    }

    /// Makes the open batch's changes durable: appends its records and
    /// `fdatasync`s the log. On failure the file is cut back and the batch's
    /// changes are taken back in memory too (what is on disk is the truth).
    pub(crate) fn flush(&mut self) -> Result<(), StoreError> {
        let Some(log) = &mut self.log else {
            self.undo.clear();
            self.must_sync = false;
            return Ok(());
        };
        if self.pending.is_empty() {
            self.undo.clear();
            return Ok(());
        }
        // Deletions alone are written but not synced: the next batch that
        // syncs (any envelope sent) makes them durable with its own records.
        // One lost in a crash brings an acknowledged envelope back once,
        // which its recipient drops (clients keep the ids they have), while
        // an `fdatasync` costs the relay more than the rest of a batch of
        // acknowledgements.
        let must_sync = std::mem::take(&mut self.must_sync);
        let written = log
            .reserve(self.pending.len() as u64)
            .and_then(|()| log.file.write_all_at(&self.pending, log.len))
            .and_then(|()| if must_sync { log.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // The records that may be partly written go; what follows is
            // written ahead again when needed.
            if log.file.set_len(log.len).is_ok() {
                log.allocated = log.len;
            }
            self.rollback();
            return Err(e.into());
        }
        log.len += self.pending.len() as u64;
        log.unsynced = !must_sync;
        self.pending.clear();
        self.undo.clear();
        if log.len >= COMPACT_MIN && log.len > self.live.saturating_mul(4) {
            // A failed compaction leaves the log as it was: it is retried at
            // the next commit, and the envelopes stay where they are.
            if let Err(e) = self.compact() {
                self.compact_failed(e);
            }
        }
        Ok(())
    }

    /// Whether the open batch holds records that must be synced before it
    /// is answered (an envelope or a view count; not deletions alone).
    pub(crate) fn must_sync(&self) -> bool {
        self.must_sync && self.log.is_some()
    }

    /// Takes back the open batch's changes.
    pub(crate) fn rollback(&mut self) {
        self.pending.clear();
        self.must_sync = false;
        while let Some(u) = self.undo.pop() {
            match u {
                Undo::Put(id) => {
                    self.remove(id);
                }
                Undo::Delete(id, q) => self.insert(id, q),
                Undo::Views(id, v) => {
                    if let Some(q) = self.envelopes.get_mut(&id) {
                        q.views_left = v;
                    }
                }
            }
        }
    }

    /// Writes the live envelopes to a new log and puts it in the old one's place.
    fn compact(&mut self) -> Result<(), StoreError> {
        let Some(log) = &self.log else { return Ok(()) };
        let tmp = compact_path(&log.path);
        let mut out =
            BufWriter::new(OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?);
        let mut at = 0u64;
        let mut record = Vec::new();
        append_record(&mut record, |o| {
            o.push(NEXT_ID);
            o.extend_from_slice(&self.next_id.to_be_bytes());
        });
        out.write_all(&record)?;
        at += record.len() as u64;
        let mut ids: Vec<u64> = self.envelopes.keys().copied().collect();
        ids.sort_unstable();
        let mut moved = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(q) = self.envelopes.get(&id) else { continue };
            let payload = self.payload(&q.body)?;
            record.clear();
            let record_len = append_put(&mut record, id, q, &payload);
            out.write_all(&record)?;
            at += record_len;
            moved.push((id, at - payload.len() as u64, record_len));
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &log.path)?;
        sync_dir(&log.path)?;
        let file = OpenOptions::new().read(true).write(true).open(&log.path)?;
        for (id, offset, record_len) in moved {
            if let Some(q) = self.envelopes.get_mut(&id)
                && let Body::Log { offset: o, .. } = &mut q.body
            {
                *o = offset;
                q.record_len = record_len;
            }
        }
        self.live = self.envelopes.values().map(|q| q.record_len).sum();
        if let Some(log) = &mut self.log {
            log.file = file;
            log.len = at;
            log.allocated = at;
            log.unsynced = false;
        }
        Ok(())
    }

    fn compact_failed(&self, e: StoreError) {
        if let Some(log) = &self.log {
            let _ = std::fs::remove_file(compact_path(&log.path));
            tracing::warn!("mailbox log {}: compaction failed (retried at the next commit): {e}", log.path.display());
        }
    }
}

/// Seconds since the Unix epoch (0 if the clock is before it): the unit of
/// [`crate::server::ServerStore::expire_envelopes`]'s cutoff.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Whether bytes `from..to` of `file` are all zeros (written ahead, no record).
fn zeros_from(file: &File, from: u64, to: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    let mut at = from;
    while at < to {
        let k = (to - at).min(buf.len() as u64) as usize;
        let chunk = buf.get_mut(..k).unwrap_or_default();
        file.read_exact_at(chunk, at)?;
        if chunk.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        at += k as u64;
    }
    Ok(true)
}

fn compact_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".compact");
    PathBuf::from(p)
}

/// Makes a created or renamed file's directory entry durable.
pub(crate) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> Username {
        Username::new(s).unwrap()
    }

    #[test]
    fn records_round_trip_and_damage_is_refused() {
        let mut buf = Vec::new();
        append_record(&mut buf, |o| {
            o.push(PUT);
            o.extend_from_slice(&7u64.to_be_bytes());
            o.extend_from_slice(&1_700_000_000u64.to_be_bytes());
            o.extend_from_slice(&2u32.to_be_bytes());
            o.extend_from_slice(&1u32.to_be_bytes());
            put_name(o, &u("bob"));
            put_name(o, &u("alice"));
            o.extend_from_slice(b"ct");
        });
        let (r, n) = decode_record(&buf).unwrap().unwrap();
        assert_eq!(n, buf.len());
        assert_eq!(
            r,
            Record::Put {
                id: 7,
                queued_at: 1_700_000_000,
                max_views: Some(2),
                views_left: Some(1),
                recipient: u("bob"),
                sender: u("alice"),
                payload: b"ct"
            }
        );
        // Every shorter prefix is a torn tail, not an error.
        for cut in 0..buf.len() {
            assert_eq!(decode_record(&buf[..cut]).unwrap(), None, "cut at {cut}");
        }
        // Any flipped bit is caught.
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(!matches!(decode_record(&bad), Ok(Some((ref r2, _))) if *r2 == r), "flip at {i}");
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_ids_keep_increasing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbox.log");
        let mut m = Mailboxes::open(&path).unwrap();
        let a = m.put(&u("bob"), &u("alice"), None, b"one").unwrap();
        let b = m.put(&u("bob"), &u("alice"), Some(2), b"two").unwrap();
        m.flush().unwrap();
        assert_eq!(m.ack(&u("bob"), &[a]), 1);
        m.flush().unwrap();
        // The records end where the zeros written ahead begin: reopening
        // keeps both.
        let good = m.log.as_ref().unwrap().len;
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(size, PREALLOCATE);
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "owner only");
        drop(m);
        let m = Mailboxes::open(&path).unwrap();
        assert_eq!((m.log.as_ref().unwrap().len, std::fs::metadata(&path).unwrap().len()), (good, size));
        // Half a record after them, as a crash in the middle of a write leaves it.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0, 0, 0, 40, 1, 2, 3], good).unwrap();
        drop((f, m));
        let mut m = Mailboxes::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good, "cut after the last whole record");
        let (e, _) = m.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(
            e.iter().map(|e| (e.id, e.payload.clone(), e.views_left)).collect::<Vec<_>>(),
            vec![(b, b"two".to_vec(), Some(1))]
        );
        m.flush().unwrap();
        // Even with every envelope gone, a new one gets a new id.
        assert_eq!(m.ack(&u("bob"), &[b]), 1);
        m.flush().unwrap();
        drop(m);
        let mut m = Mailboxes::open(&path).unwrap();
        assert_eq!(m.total(), 0);
        assert!(m.put(&u("bob"), &u("alice"), None, b"three").unwrap().0 > b.0);
    }

    /// A log whose records put the next id at the end of u64 (damaged, or
    /// written by hand) makes sends fail with an error; no queued envelope
    /// is replaced by reusing its id.
    #[test]
    fn ids_at_the_end_of_their_range_are_refused_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbox.log");
        let mut m = Mailboxes::open(&path).unwrap();
        m.put_with_id(u64::MAX - 1, 1_700_000_000, &u("bob"), &u("alice"), None, None, b"kept").unwrap();
        m.flush().unwrap();
        drop(m);
        let mut m = Mailboxes::open(&path).unwrap();
        let err = m.put(&u("carol"), &u("alice"), None, b"one too many").unwrap_err();
        assert!(err.to_string().contains("no envelope ids left"), "{err}");
        assert_eq!(m.total(), 1);
        let (e, _) = m.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(e[0].payload, b"kept");
    }

    #[test]
    fn a_rolled_back_batch_leaves_memory_as_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbox.log");
        let mut m = Mailboxes::open(&path).unwrap();
        let a = m.put(&u("bob"), &u("alice"), Some(3), b"one").unwrap();
        m.flush().unwrap();
        m.put(&u("bob"), &u("alice"), None, b"two").unwrap();
        m.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!(m.ack(&u("bob"), &[a]), 1);
        m.rollback();
        assert_eq!(m.len_of(&u("bob")), 1);
        let (e, _) = m.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!((e.len(), e[0].views_left), (1, Some(2)));
        m.flush().unwrap();
        drop(m);
        let mut m = Mailboxes::open(&path).unwrap();
        let (e, _) = m.fetch(&u("bob"), 1 << 20).unwrap();
        assert_eq!((e.len(), e[0].views_left), (1, Some(1)));
    }

    #[test]
    fn compaction_keeps_the_live_envelopes_and_the_next_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mailbox.log");
        let mut m = Mailboxes::open(&path).unwrap();
        let keep = m.put(&u("carol"), &u("alice"), Some(5), b"kept").unwrap();
        m.flush().unwrap();
        // Past COMPACT_MIN of envelopes that come and go.
        let big = vec![7u8; 1 << 20];
        let mut last = keep;
        for _ in 0..(COMPACT_MIN >> 20) + 2 {
            last = m.put(&u("bob"), &u("alice"), None, &big).unwrap();
            m.flush().unwrap();
            assert_eq!(m.ack(&u("bob"), &[last]), 1);
            m.flush().unwrap();
        }
        // 34 MiB went through the log; it was compacted on the way.
        let size = m.log.as_ref().unwrap().len;
        assert!(size < 4 << 20, "the log holds {size} bytes");
        assert!(!compact_path(&path).exists());
        let (e, _) = m.fetch(&u("carol"), 1 << 20).unwrap();
        assert_eq!((e[0].id, e[0].payload.as_slice()), (keep, &b"kept"[..]));
        m.flush().unwrap();
        drop(m);
        let mut m = Mailboxes::open(&path).unwrap();
        let (e, _) = m.fetch(&u("carol"), 1 << 20).unwrap();
        assert_eq!((e[0].id, e[0].views_left), (keep, Some(3)));
        assert!(m.put(&u("bob"), &u("alice"), None, b"x").unwrap().0 > last.0);
    }
}
