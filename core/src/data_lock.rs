//! One server per data directory.
//!
//! Two servers on one `--data-dir` would both append to `log.txt` and
//! `state.journal` and each rebuild a different state from them: clients
//! would get wrong answers and the files would interleave. So
//! [`ChatServer::open`](crate::ChatServer::open) takes an exclusive lock on
//! `<data dir>/server.lock` and holds it for as long as the server lives; a
//! second server is refused at start with a message that says so.
//!
//! The lock is the OS's advisory file lock (`flock` on Unix, `LockFileEx` on
//! Windows) through std's `File::try_lock`: the OS drops it when the process
//! ends, however it ends (`kill -9` included), so a crash never leaves a
//! stale lock behind. The file itself stays; its presence means nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::Path;

use crate::error::ChatError;

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "server.lock";

/// Takes the data directory's lock, or says who holds it. The lock lasts as
/// long as the returned file is open.
pub fn lock(dir: &Path) -> Result<File, ChatError> {
    std::fs::create_dir_all(dir).map_err(|e| ChatError::storage(dir, e))?;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ChatError::storage(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(ChatError::DataDirInUse {
            dir: dir.display().to_string(),
            lock: path.display().to_string(),
        }),
        Err(TryLockError::Error(e)) => Err(ChatError::storage(&path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("is in use by another server"),
            "{err}"
        );
        drop(first);
        lock(dir.path()).unwrap();
    }
}
