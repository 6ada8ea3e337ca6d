//! The node's own state, in `<data>/node.db` (SQLite): its identity and a record of
//! every run, so an unclean stop is noticed at the next start.

use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, bail};
use nuage_core::datadir::open_sqlite;
use nuage_core::time::{rfc3339, unix_now};
use rusqlite::{OptionalExtension, params};

/// Schema of node.db, one entry per version (see `nuage_core::datadir::open_sqlite`).
const MIGRATIONS: &[&str] = &["
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        started_at REAL NOT NULL,
        stopped_at REAL,
        clean INTEGER NOT NULL DEFAULT 0,
        version TEXT NOT NULL,
        pid INTEGER NOT NULL
    );
"];

/// The open node database and the current run.
pub struct NodeState {
    conn: Mutex<rusqlite::Connection>,
    pub id: String,
    pub run_id: i64,
    pub started_at: f64,
    /// How many times this node has started, this run included.
    pub runs: u64,
}

impl NodeState {
    /// Opens `<data>/node.db`, checks the data dir belongs to node `name` (or claims it),
    /// and records the start of a run. An earlier run that never recorded its stop is
    /// reported through `on_unclean`.
    pub fn open(
        data_dir: &Path,
        name: &str,
        mut on_unclean: impl FnMut(String),
    ) -> anyhow::Result<NodeState> {
        let conn = open_sqlite(&data_dir.join("node.db"), MIGRATIONS)?;
        let get = |key: &str| -> anyhow::Result<Option<String>> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        match get("name")? {
            Some(owner) if owner != name => bail!(
                "data dir {} belongs to node `{owner}`, not `{name}`; pass --name {owner} or choose another --data",
                data_dir.display()
            ),
            Some(_) => {}
            None => {
                conn.execute("INSERT INTO meta(key, value) VALUES ('name', ?1)", [name])?;
            }
        }
        let id = match get("id")? {
            Some(id) => id,
            None => {
                let id = new_node_id()?;
                conn.execute("INSERT INTO meta(key, value) VALUES ('id', ?1)", [&id])?;
                id
            }
        };
        let unclean: Vec<(f64, i64)> = conn
            .prepare("SELECT started_at, pid FROM runs WHERE clean = 0 AND stopped_at IS NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (started, pid) in unclean {
            on_unclean(format!(
                "the run started {} (pid {pid}) did not stop cleanly",
                rfc3339(started)
            ));
        }
        conn.execute(
            "UPDATE runs SET stopped_at = started_at WHERE stopped_at IS NULL",
            [],
        )?;
        let started_at = unix_now();
        conn.execute(
            "INSERT INTO runs(started_at, version, pid) VALUES (?1, ?2, ?3)",
            params![started_at, nuage_core::VERSION, std::process::id()],
        )?;
        let run_id = conn.last_insert_rowid();
        let runs: i64 = conn.query_row("SELECT count(*) FROM runs", [], |r| r.get(0))?;
        Ok(NodeState {
            conn: Mutex::new(conn),
            id,
            run_id,
            started_at,
            runs: runs as u64,
        })
    }

    /// Records the end of this run and checkpoints the write-ahead log, so the database
    /// file alone holds everything.
    pub fn finish(&self, clean: bool) -> anyhow::Result<()> {
        let conn = self.conn.lock().expect("node db lock poisoned");
        conn.execute(
            "UPDATE runs SET stopped_at = ?1, clean = ?2 WHERE id = ?3",
            params![unix_now(), clean, self.run_id],
        )?;
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .context("checkpointing node.db")?;
        Ok(())
    }
}

/// 128 random bits from the kernel, in hex.
fn new_node_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_persists_and_unclean_runs_are_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let first = NodeState::open(tmp.path(), "n1", |_| panic!("no earlier run")).unwrap();
        assert_eq!(first.id.len(), 32);
        assert_eq!(first.runs, 1);
        let id = first.id.clone();
        drop(first); // never finished: an unclean stop

        let mut reports = Vec::new();
        let second = NodeState::open(tmp.path(), "n1", |m| reports.push(m)).unwrap();
        assert_eq!(second.id, id);
        assert_eq!(second.runs, 2);
        assert_eq!(reports.len(), 1, "{reports:?}");
        second.finish(true).unwrap();
        drop(second);

        let third =
            NodeState::open(tmp.path(), "n1", |m| panic!("unexpected report: {m}")).unwrap();
        assert_eq!(third.runs, 3);
    }

    #[test]
    fn data_dir_of_another_node_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        NodeState::open(tmp.path(), "n1", |_| {})
            .unwrap()
            .finish(true)
            .unwrap();
        let err = NodeState::open(tmp.path(), "n2", |_| {})
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("belongs to node `n1`"), "{err}");
    }
}
