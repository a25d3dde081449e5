//! One writer per database: an exclusive `flock` on `<database>.lock`, held from
//! [`crate::store::Db::open`] until the writer thread ends. SQLite's own locks are taken per
//! transaction, so two redlines on one data directory would both run and interleave their
//! flushes (and their flush sequence numbers); the lock file makes the second one stop at
//! start-up with a clear message. The kernel drops the lock when the process dies, `kill -9`
//! included.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex, MutexGuard};

use crate::store::StoreError;

/// The locks this process holds, by database path: a lock lives as long as its open file.
fn held() -> MutexGuard<'static, HashMap<PathBuf, File>> {
    static HELD: LazyLock<Mutex<HashMap<PathBuf, File>>> = LazyLock::new(Default::default);
    HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn lock_file_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock of `database` for this process's writer. Fails when another writer (of this
/// process or another) holds it.
pub fn claim(database: &Path) -> Result<(), StoreError> {
    let lock_file = lock_file_path(database);
    let in_use = || StoreError::InUse {
        path: database.to_path_buf(),
        lock_file: lock_file.clone(),
    };
    let mut held = held();
    if held.contains_key(database) {
        return Err(in_use());
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_file)
        .map_err(|source| StoreError::LockFile {
            path: lock_file.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => {
            held.insert(database.to_path_buf(), file);
            Ok(())
        }
        Err(TryLockError::WouldBlock) => Err(in_use()),
        Err(TryLockError::Error(source)) => Err(StoreError::LockFile {
            path: lock_file,
            source,
        }),
    }
}

/// Gives the lock of `database` up (closing its file unlocks it); nothing if it is not held.
pub fn release(database: &Path) {
    held().remove(database);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_claim_fails_until_the_first_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let database = dir.path().join("redline.db");
        claim(&database).unwrap();
        let second = claim(&database).unwrap_err().to_string();
        assert!(
            second.contains("is locked by another process")
                && second.contains("is another redline using this data directory?")
                && second.contains(&database.display().to_string()),
            "{second}"
        );
        // Another process's lock: a separate open file description, as another process has.
        let foreign = File::open(lock_file_path(&database)).unwrap();
        assert!(matches!(foreign.try_lock(), Err(TryLockError::WouldBlock)));
        release(&database);
        foreign.try_lock().unwrap();
        assert!(matches!(claim(&database), Err(StoreError::InUse { .. })));
        drop(foreign);
        claim(&database).unwrap();
        release(&database);
    }
}
