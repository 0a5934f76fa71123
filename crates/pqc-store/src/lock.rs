//! One process at a time on a folder: the relay's data folder, a client's
//! profile. Both keep state that only works with one writer (the mailbox
//! log's end; a session's or a room's keys, advanced and saved).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::Path;

/// Why a folder could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds it; `holder` is " (process N)" when that
    /// process wrote its id, else empty.
    InUse {
        /// The holder, for a message.
        holder: String,
    },
    /// The lock file could not be opened, written or locked.
    Io(std::io::Error),
}

impl From<std::io::Error> for LockError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// Takes `dir` for this process: an exclusive lock (`flock`) on
/// `dir/name`, held as long as the returned file is open. The kernel lets
/// go of it when the process ends, however it ends (SIGKILL too), so a
/// crashed holder never leaves it stuck. The file holds the holder's
/// process id, for the message another process gets.
pub fn lock_folder(dir: &Path, name: &str) -> Result<File, LockError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(dir.join(name))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = match holder.trim() {
                "" => String::new(),
                pid => format!(" (process {pid})"),
            };
            return Err(LockError::InUse { holder });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
    }
    file.set_len(0)?;
    file.write_all(format!("{}\n", std::process::id()).as_bytes())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_held_by_one_opening_until_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_folder(dir.path(), "x.lock").unwrap();
        match lock_folder(dir.path(), "x.lock") {
            Err(LockError::InUse { holder }) => assert_eq!(holder, format!(" (process {})", std::process::id())),
            other => panic!("{other:?}"),
        }
        // Another name is another lock.
        let _other = lock_folder(dir.path(), "y.lock").unwrap();
        drop(held);
        lock_folder(dir.path(), "x.lock").unwrap();
        assert!(matches!(lock_folder(&dir.path().join("missing"), "x.lock"), Err(LockError::Io(_))));
    }
}
