//! The client's profile database: one SQLite file per profile.
//!
//! It stores opaque blobs only. The client seals every secret and every piece
//! of user content (keys, session pickles, history) with its profile key
//! before handing it here; the plain columns are namespaces, keys and
//! timestamps.
//!
//! Tables:
//! - `kv(ns, key, value)`: sealed records by namespace (identity, prekeys,
//!   sessions, contacts, known servers, outbox, ...);
//! - `history(id, conv, ts, body)`: sealed conversation lines in arrival order;
//! - `seen(envelope)`: server envelope ids already delivered to the user, so a
//!   redelivery after a crash never shows a message twice.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

/// Errors of the client profile database.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientStoreError {
    /// SQLite reported an error (disk full, locked, corrupt file).
    #[error("profile database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The file was written by a newer pqc-chat.
    #[error("profile database schema version {0} is newer than this build understands (1); upgrade pqc-chat")]
    TooNew(i64),
}

const SCHEMA_VERSION: i64 = 1;

/// A profile database.
#[derive(Debug)]
pub struct ClientDb {
    conn: Connection,
}

/// One sealed history line.
#[derive(Debug, Clone)]
pub struct HistoryRow {
    /// Row id (increasing).
    pub id: i64,
    /// Conversation key (a contact's user name or a room id).
    pub conv: String,
    /// Unix milliseconds.
    pub ts: i64,
    /// Sealed body.
    pub body: Vec<u8>,
}

impl ClientDb {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, ClientStoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(ClientStoreError::TooNew(version));
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                                                PRIMARY KEY (ns, key));
                 CREATE TABLE IF NOT EXISTS history (id INTEGER PRIMARY KEY AUTOINCREMENT, conv TEXT NOT NULL,
                                                     ts INTEGER NOT NULL, body BLOB NOT NULL);
                 CREATE INDEX IF NOT EXISTS history_conv ON history (conv, id);
                 CREATE TABLE IF NOT EXISTS seen (envelope INTEGER PRIMARY KEY, ts INTEGER NOT NULL);
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        Ok(Self { conn })
    }

    /// Reads a record.
    pub fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, ClientStoreError> {
        Ok(self
            .conn
            .query_row("SELECT value FROM kv WHERE ns = ?1 AND key = ?2", params![ns, key], |r| r.get(0))
            .optional()?)
    }

    /// Writes (inserts or replaces) a record, durably.
    pub fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), ClientStoreError> {
        self.conn.execute(
            "INSERT INTO kv (ns, key, value) VALUES (?1, ?2, ?3)
             ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value",
            params![ns, key, value],
        )?;
        Ok(())
    }

    /// Deletes a record; says whether it existed.
    pub fn delete(&self, ns: &str, key: &str) -> Result<bool, ClientStoreError> {
        Ok(self.conn.execute("DELETE FROM kv WHERE ns = ?1 AND key = ?2", params![ns, key])? > 0)
    }

    /// All records of a namespace, ordered by key.
    pub fn list(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>, ClientStoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT key, value FROM kv WHERE ns = ?1 ORDER BY key")?;
        let rows = stmt.query_map(params![ns], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Runs `f` inside one transaction: all of its writes land, or none.
    pub fn atomically<T, E: From<ClientStoreError>>(&mut self, f: impl FnOnce(&Self) -> Result<T, E>) -> Result<T, E> {
        self.conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| E::from(e.into()))?;
        match f(self) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(|e| E::from(e.into()))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Starts a transaction (pair with [`Self::commit`] or [`Self::rollback`]).
    pub fn begin(&self) -> Result<(), ClientStoreError> {
        Ok(self.conn.execute_batch("BEGIN IMMEDIATE")?)
    }

    /// Commits the transaction started by [`Self::begin`].
    pub fn commit(&self) -> Result<(), ClientStoreError> {
        Ok(self.conn.execute_batch("COMMIT")?)
    }

    /// Abandons the transaction started by [`Self::begin`].
    pub fn rollback(&self) -> Result<(), ClientStoreError> {
        Ok(self.conn.execute_batch("ROLLBACK")?)
    }

    /// Appends a sealed history line.
    pub fn add_history(&self, conv: &str, ts: i64, body: &[u8]) -> Result<i64, ClientStoreError> {
        self.conn.execute("INSERT INTO history (conv, ts, body) VALUES (?1, ?2, ?3)", params![conv, ts, body])?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The last `limit` history lines of a conversation, oldest first.
    pub fn history(&self, conv: &str, limit: usize) -> Result<Vec<HistoryRow>, ClientStoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT id, conv, ts, body FROM (SELECT * FROM history WHERE conv = ?1 ORDER BY id DESC LIMIT ?2)
             ORDER BY id ASC",
        )?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = stmt.query_map(params![conv, limit], |r| {
            Ok(HistoryRow { id: r.get(0)?, conv: r.get(1)?, ts: r.get(2)?, body: r.get(3)? })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Replaces a history line's body (a limited-view message counting down).
    pub fn update_history(&self, id: i64, body: &[u8]) -> Result<(), ClientStoreError> {
        self.conn.execute("UPDATE history SET body = ?2 WHERE id = ?1", params![id, body])?;
        Ok(())
    }

    /// Conversations with history, most recent first.
    pub fn conversations(&self) -> Result<Vec<String>, ClientStoreError> {
        let mut stmt = self.conn.prepare_cached("SELECT conv FROM history GROUP BY conv ORDER BY MAX(id) DESC")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Whether a server envelope was already delivered to the user.
    pub fn is_seen(&self, envelope: u64) -> Result<bool, ClientStoreError> {
        let id = i64::from_ne_bytes(envelope.to_ne_bytes());
        Ok(self.conn.query_row("SELECT 1 FROM seen WHERE envelope = ?1", params![id], |_| Ok(())).optional()?.is_some())
    }

    /// Records a delivered envelope id.
    pub fn mark_seen(&self, envelope: u64, ts: i64) -> Result<(), ClientStoreError> {
        let id = i64::from_ne_bytes(envelope.to_ne_bytes());
        self.conn.execute("INSERT OR IGNORE INTO seen (envelope, ts) VALUES (?1, ?2)", params![id, ts])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_history_seen_and_transactions() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = ClientDb::open(&dir.path().join("p.sqlite")).unwrap();
        db.put("a", "k", b"v1").unwrap();
        db.put("a", "k", b"v2").unwrap();
        assert_eq!(db.get("a", "k").unwrap().unwrap(), b"v2");
        assert_eq!(db.list("a").unwrap().len(), 1);
        let r: Result<(), ClientStoreError> = db.atomically(|db| {
            db.put("a", "x", b"1")?;
            Err(ClientStoreError::TooNew(99))
        });
        assert!(r.is_err());
        assert!(db.get("a", "x").unwrap().is_none(), "rolled back");
        db.add_history("bob", 1, b"one").unwrap();
        db.add_history("bob", 2, b"two").unwrap();
        db.add_history("carol", 3, b"three").unwrap();
        let h = db.history("bob", 10).unwrap();
        assert_eq!(h.iter().map(|r| r.body.clone()).collect::<Vec<_>>(), vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(db.conversations().unwrap(), vec!["carol".to_string(), "bob".to_string()]);
        assert!(!db.is_seen(u64::MAX).unwrap());
        db.mark_seen(u64::MAX, 5).unwrap();
        assert!(db.is_seen(u64::MAX).unwrap());
        assert!(db.delete("a", "k").unwrap());
        drop(db);
        let db = ClientDb::open(&dir.path().join("p.sqlite")).unwrap();
        assert!(db.is_seen(u64::MAX).unwrap());
    }
}
