//! The node's data directory: one node at a time (an exclusive lock), SQLite databases
//! opened the same way everywhere, and schema migrations.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use nix::fcntl::{Flock, FlockArg};

/// Name of the lock file inside a data dir.
pub const LOCK_FILE: &str = "nuage.lock";
/// How long a SQLite statement waits for a lock held by another connection.
pub const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An opened and locked data directory. The lock is released when this is dropped.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: Flock<File>,
}

impl DataDir {
    /// Opens `path`, creating it if its parent exists, and takes the node lock.
    pub fn open(path: &Path) -> anyhow::Result<DataDir> {
        if !path.exists() {
            let parent = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                bail!(
                    "data dir {}: its parent {} does not exist; create it or choose another --data",
                    path.display(),
                    parent.display()
                );
            }
            std::fs::create_dir(path)
                .with_context(|| format!("cannot create data dir {}", path.display()))?;
        } else if !path.is_dir() {
            bail!(
                "data dir {} is not a directory; choose another --data",
                path.display()
            );
        }
        let path = path
            .canonicalize()
            .with_context(|| format!("data dir {}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .with_context(|| {
                format!(
                    "cannot open {} (is the data dir writable?)",
                    lock_path.display()
                )
            })?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((mut file, _)) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = holder.trim();
                let who = if holder.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {holder})")
                };
                return Err(anyhow!(
                    "data dir {} is in use by another nuage node{who}; stop it or choose another --data",
                    path.display()
                ));
            }
        };
        lock.set_len(0)?;
        lock.rewind()?;
        write!(lock, "{}", std::process::id())?;
        lock.flush()?;
        Ok(DataDir { path, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A subdirectory, created if missing (e.g. one per service).
    pub fn subdir(&self, name: &str) -> anyhow::Result<PathBuf> {
        assert!(
            !name.is_empty() && !name.contains('/'),
            "bad subdir name {name:?}"
        );
        let dir = self.path.join(name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(dir)
    }
}

/// Opens a SQLite database the way every nuage store does: WAL journal, a busy timeout,
/// foreign keys on, `synchronous=NORMAL` (durable at each checkpoint, safe against
/// corruption), then applies `migrations` (each one a batch of SQL, applied once, in
/// order, tracked by `PRAGMA user_version`).
pub fn open_sqlite(path: &Path, migrations: &[&str]) -> anyhow::Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)
        .with_context(|| format!("cannot open database {}", path.display()))?;
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&conn, migrations).with_context(|| format!("database {}", path.display()))?;
    Ok(conn)
}

fn migrate(conn: &rusqlite::Connection, migrations: &[&str]) -> anyhow::Result<()> {
    let current: usize =
        conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if current > migrations.len() {
        bail!(
            "its schema version {current} is newer than this nuage knows ({}); use a newer nuage",
            migrations.len()
        );
    }
    for (i, sql) in migrations.iter().enumerate().skip(current) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)
            .with_context(|| format!("migration {}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_is_refused_with_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let first = DataDir::open(&dir).unwrap();
        let err = DataDir::open(&dir).unwrap_err().to_string();
        assert!(err.contains("in use by another nuage node"), "{err}");
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        DataDir::open(&dir).unwrap();
    }

    #[test]
    fn missing_parent_is_explained() {
        let err = DataDir::open(Path::new("/nonexistent-nuage/x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn migrations_apply_once_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("t.db");
        let m1 = ["CREATE TABLE a(x INTEGER);"];
        let conn = open_sqlite(&db, &m1).unwrap();
        conn.execute("INSERT INTO a VALUES (1)", []).unwrap();
        drop(conn);
        let m2 = [
            "CREATE TABLE a(x INTEGER);",
            "ALTER TABLE a ADD COLUMN y TEXT;",
        ];
        let conn = open_sqlite(&db, &m2).unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM a", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        drop(conn);
        let err = open_sqlite(&db, &m1).unwrap_err();
        assert!(
            format!("{err:#}").contains("newer than this nuage knows"),
            "{err:#}"
        );
    }
}
