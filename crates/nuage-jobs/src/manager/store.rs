//! The manager's SQLite database (`jobs.db` in its data directory): every job with its
//! state, output and history. It is the truth: the in-memory queue and assignments are
//! rebuilt from it at start. Each change of a job and its history line are written in
//! one transaction.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

use crate::proto::{HistoryEvent, Job, JobState};

/// Schema migrations (see `nuage_core::datadir::open_sqlite`).
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    name             TEXT NOT NULL,
    argv             TEXT,              -- JSON array; NULL for the default task
    array_index      INTEGER,
    state            TEXT NOT NULL,     -- queued running succeeded failed cancelled
    queue_seq        INTEGER,           -- position in the queue while queued
    attempts         INTEGER NOT NULL DEFAULT 0,
    worker           TEXT NOT NULL DEFAULT '',
    submitted_us     INTEGER NOT NULL,
    dispatched_us    INTEGER NOT NULL DEFAULT 0,
    started_us       INTEGER NOT NULL DEFAULT 0,
    finished_us      INTEGER NOT NULL DEFAULT 0,
    exit_code        INTEGER,
    signal           INTEGER,
    reason           TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    pid              INTEGER NOT NULL DEFAULT 0,
    stdout           BLOB NOT NULL DEFAULT x'',
    stderr           BLOB NOT NULL DEFAULT x'',
    stdout_total     INTEGER NOT NULL DEFAULT 0,
    stderr_total     INTEGER NOT NULL DEFAULT 0,
    traceparent      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_by_state ON jobs(state, id);
CREATE TABLE history (
    seq     INTEGER PRIMARY KEY,
    job_id  INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    at_us   INTEGER NOT NULL,
    event   TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX history_by_job ON history(job_id, seq);
"#];

const JOB_COLUMNS: &str = "id, name, argv, array_index, state, attempts, worker, submitted_us, \
     dispatched_us, started_us, finished_us, exit_code, signal, reason, cancel_requested, \
     length(stdout), length(stderr), stdout_total, stderr_total, pid, traceparent";

pub fn state_name(s: JobState) -> &'static str {
    match s {
        JobState::Queued => "queued",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Unspecified => "unspecified",
    }
}

pub fn parse_state(s: &str) -> Option<JobState> {
    Some(match s {
        "queued" => JobState::Queued,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" => JobState::Cancelled,
        _ => return None,
    })
}

pub fn is_final(s: JobState) -> bool {
    matches!(
        s,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// Which output stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn column(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub struct Ending {
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
    pub started_us: i64,
    pub finished_us: i64,
    pub stdout_total: u64,
    pub stderr_total: u64,
}

pub struct Store {
    conn: Connection,
    /// Declared after `conn`: dropped (stopped, joined) once the main connection closed.
    _checkpointer: Checkpointer,
}

/// How often the checkpointer copies the WAL into the database.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// The WAL file is truncated back to this size after a checkpoint that emptied it.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// Checkpoints the WAL from a thread of its own, with its own connection.
///
/// SQLite's automatic checkpoint runs inside the commit that crosses 1000 WAL pages,
/// and with `synchronous=NORMAL` a checkpoint is where the fsyncs happen: every ~80
/// jobs one scheduling step (a submit, a dispatch) would wait for two fsyncs while
/// holding the scheduler's lock — tens of ms on a busy disk, the tail of the
/// queue-to-start latency. A PASSIVE checkpoint never blocks the writer, so here it
/// runs beside the scheduler instead. Commits stay as durable as before (the WAL is
/// written at each commit; a power loss may lose what was not checkpointed, as with
/// `synchronous=NORMAL` anyway).
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> anyhow::Result<Checkpointer> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open database {} (checkpointer)", path.display()))?;
        conn.busy_timeout(nuage_core::datadir::SQLITE_BUSY_TIMEOUT)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("jobs-checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        Ok(()) => failing = false,
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!("jobs manager: checkpointing {shown}: {e}");
                        }
                        Err(_) => {}
                    }
                }
            })
            .context("cannot start the checkpoint thread")?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn job_from_row(r: &rusqlite::Row) -> rusqlite::Result<Job> {
    let argv: Option<String> = r.get(2)?;
    let state: String = r.get(4)?;
    Ok(Job {
        id: r.get::<_, i64>(0)? as u64,
        name: r.get(1)?,
        argv: argv
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        array_index: r.get::<_, Option<i64>>(3)?.map(|i| i as u32),
        state: parse_state(&state).unwrap_or(JobState::Unspecified) as i32,
        attempts: r.get::<_, i64>(5)? as u32,
        worker: r.get(6)?,
        submitted_at_us: r.get(7)?,
        dispatched_at_us: r.get(8)?,
        started_at_us: r.get(9)?,
        finished_at_us: r.get(10)?,
        exit_code: r.get::<_, Option<i64>>(11)?.map(|v| v as i32),
        signal: r.get::<_, Option<i64>>(12)?.map(|v| v as i32),
        reason: r.get(13)?,
        cancel_requested: r.get::<_, i64>(14)? != 0,
        stdout_kept: r.get::<_, i64>(15)? as u64,
        stderr_kept: r.get::<_, i64>(16)? as u64,
        stdout_total: r.get::<_, i64>(17)? as u64,
        stderr_total: r.get::<_, i64>(18)? as u64,
        pid: r.get::<_, i64>(19)? as u32,
        trace_id: {
            let tp: String = r.get(20)?;
            crate::trace::TraceContext::parse(&tp)
                .map(|c| c.trace_hex())
                .unwrap_or_default()
        },
        history: Vec::new(),
    })
}

impl Store {
    pub fn open(path: &Path) -> anyhow::Result<Store> {
        let conn = nuage_core::datadir::open_sqlite(path, MIGRATIONS)?;
        // The checkpointer does it, off the scheduling path (see [`Checkpointer`]).
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        let checkpointer = Checkpointer::start(path)?;
        Ok(Store {
            conn,
            _checkpointer: checkpointer,
        })
    }

    fn history(
        tx: &rusqlite::Transaction,
        job: u64,
        attempt: u32,
        worker: &str,
        event: &str,
        detail: &str,
        now: i64,
    ) -> rusqlite::Result<()> {
        tx.prepare_cached(
            "INSERT INTO history (job_id, at_us, event, attempt, worker, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![job as i64, now, event, attempt, worker, detail])?;
        Ok(())
    }

    /// A history line without a change of the job.
    pub fn note(
        &mut self,
        job: u64,
        attempt: u32,
        worker: &str,
        event: &str,
        detail: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        Self::history(&tx, job, attempt, worker, event, detail, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Stores a new queued job; returns its id.
    pub fn insert(
        &mut self,
        name: &str,
        argv: Option<&[String]>,
        array_index: Option<u32>,
        traceparent: &str,
        queue_seq: i64,
        now: i64,
    ) -> anyhow::Result<u64> {
        let tx = self.conn.transaction()?;
        let argv = argv.map(|a| serde_json::to_string(a).expect("strings serialize"));
        tx.prepare_cached(
            "INSERT INTO jobs (name, argv, array_index, state, queue_seq, submitted_us, traceparent) \
             VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?6)",
        )?
        .execute(params![name, argv, array_index, queue_seq, now, traceparent])?;
        let id = tx.last_insert_rowid() as u64;
        Self::history(&tx, id, 0, "", "submitted", "", now)?;
        tx.commit()?;
        Ok(id)
    }

    /// Queued → running on `worker` as attempt `attempt`.
    pub fn dispatched(
        &mut self,
        id: u64,
        worker: &str,
        attempt: u32,
        now: i64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        let n = tx
            .prepare_cached(
                "UPDATE jobs SET state = 'running', queue_seq = NULL, attempts = ?2, worker = ?3, \
                 dispatched_us = ?4, started_us = 0, pid = 0 WHERE id = ?1 AND state = 'queued'",
            )?
            .execute(params![id as i64, attempt, worker, now])?;
        assert_eq!(n, 1, "dispatching job {id} that is not queued");
        Self::history(&tx, id, attempt, worker, "dispatched", "", now)?;
        tx.commit()?;
        Ok(())
    }

    pub fn started(
        &mut self,
        id: u64,
        attempt: u32,
        worker: &str,
        at_us: i64,
        pid: u32,
        now: i64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("UPDATE jobs SET started_us = ?2, pid = ?3 WHERE id = ?1")?
            .execute(params![id as i64, at_us, pid])?;
        Self::history(
            &tx,
            id,
            attempt,
            worker,
            "started",
            &format!("pid {pid}"),
            now,
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Appends output received at byte `offset` of `stream`, keeping at most `limit`
    /// bytes; bytes already stored (a retried report) are skipped. Returns the bytes
    /// newly stored and the offset they start at.
    pub fn append_output(
        &mut self,
        id: u64,
        stream: Stream,
        offset: u64,
        data: &[u8],
        limit: u64,
    ) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        if data.is_empty() {
            return Ok(None);
        }
        let col = stream.column();
        // Read, extend, write back: SQLite's `||` turns blobs into text, and the kept
        // output is bounded (max_output_bytes), so the copy is cheap.
        let mut kept: Vec<u8> = self
            .conn
            .prepare_cached(&format!("SELECT {col} FROM jobs WHERE id = ?1"))?
            .query_row([id as i64], |r| r.get(0))?;
        let have = kept.len() as u64;
        let end = offset.saturating_add(data.len() as u64);
        if end <= have || offset > have || have >= limit {
            // Already stored, a gap (should not happen: reports are ordered), or full.
            return Ok(None);
        }
        let skip = (have - offset) as usize;
        let room = (limit - have) as usize;
        let new = &data[skip..(skip + room).min(data.len())];
        kept.extend_from_slice(new);
        self.conn
            .prepare_cached(&format!("UPDATE jobs SET {col} = ?2 WHERE id = ?1"))?
            .execute(params![id as i64, kept])?;
        Ok(Some((have, new.to_vec())))
    }

    /// Running → a final state.
    pub fn finished(
        &mut self,
        id: u64,
        attempt: u32,
        worker: &str,
        end: &Ending,
        now: i64,
    ) -> anyhow::Result<()> {
        assert!(is_final(end.state));
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "UPDATE jobs SET state = ?2, exit_code = ?3, signal = ?4, reason = ?5, \
             started_us = CASE WHEN ?6 > 0 THEN ?6 ELSE started_us END, finished_us = ?7, \
             stdout_total = ?8, stderr_total = ?9, queue_seq = NULL WHERE id = ?1",
        )?
        .execute(params![
            id as i64,
            state_name(end.state),
            end.exit_code,
            end.signal,
            end.reason,
            end.started_us,
            end.finished_us,
            end.stdout_total as i64,
            end.stderr_total as i64
        ])?;
        let detail = if end.reason.is_empty() {
            state_name(end.state).to_owned()
        } else {
            format!("{}: {}", state_name(end.state), end.reason)
        };
        Self::history(&tx, id, attempt, worker, "finished", &detail, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Ends a job that did not finish on a worker (cancelled while queued, failed after
    /// its last attempt was lost).
    #[allow(clippy::too_many_arguments)]
    pub fn ended(
        &mut self,
        id: u64,
        attempt: u32,
        worker: &str,
        state: JobState,
        event: &str,
        reason: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        assert!(is_final(state));
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "UPDATE jobs SET state = ?2, reason = ?3, finished_us = ?4, queue_seq = NULL WHERE id = ?1",
        )?
        .execute(params![id as i64, state_name(state), reason, now])?;
        Self::history(&tx, id, attempt, worker, event, reason, now)?;
        tx.commit()?;
        Ok(())
    }

    /// Running → queued again at `queue_seq` (the head), its output of the lost attempt
    /// dropped.
    pub fn requeued(
        &mut self,
        id: u64,
        attempt: u32,
        worker: &str,
        queue_seq: i64,
        detail: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached(
            "UPDATE jobs SET state = 'queued', queue_seq = ?2, started_us = 0, pid = 0, \
             stdout = x'', stderr = x'', stdout_total = 0, stderr_total = 0 WHERE id = ?1",
        )?
        .execute(params![id as i64, queue_seq])?;
        Self::history(&tx, id, attempt, worker, "requeued", detail, now)?;
        tx.commit()?;
        Ok(())
    }

    pub fn cancel_requested(
        &mut self,
        id: u64,
        attempt: u32,
        worker: &str,
        now: i64,
    ) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")?
            .execute([id as i64])?;
        Self::history(&tx, id, attempt, worker, "cancel", "cancel requested", now)?;
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, id: u64, with_history: bool) -> anyhow::Result<Option<Job>> {
        let mut job = self
            .conn
            .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?
            .query_row([id as i64], job_from_row)
            .optional()?;
        if let (Some(job), true) = (&mut job, with_history) {
            let mut stmt = self.conn.prepare_cached(
                "SELECT at_us, event, attempt, worker, detail FROM history WHERE job_id = ?1 ORDER BY seq",
            )?;
            job.history = stmt
                .query_map([id as i64], |r| {
                    Ok(HistoryEvent {
                        at_us: r.get(0)?,
                        event: r.get(1)?,
                        attempt: r.get::<_, i64>(2)? as u32,
                        worker: r.get(3)?,
                        detail: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
        }
        Ok(job)
    }

    /// The newest `limit` jobs in `states` (all when empty), oldest first, and how many
    /// match in all.
    pub fn list(&self, states: &[JobState], limit: u32) -> anyhow::Result<(Vec<Job>, u64)> {
        let filter = if states.is_empty() {
            String::new()
        } else {
            let names: Vec<String> = states
                .iter()
                .map(|s| format!("'{}'", state_name(*s)))
                .collect();
            format!("WHERE state IN ({})", names.join(","))
        };
        let total: i64 =
            self.conn
                .query_row(&format!("SELECT count(*) FROM jobs {filter}"), [], |r| {
                    r.get(0)
                })?;
        let mut stmt = self.conn.prepare(&format!(
            "SELECT * FROM (SELECT {JOB_COLUMNS} FROM jobs {filter} ORDER BY id DESC LIMIT ?1) ORDER BY id"
        ))?;
        let jobs = stmt
            .query_map([limit], job_from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((jobs, total as u64))
    }

    /// Queued jobs in queue order: (id, queue_seq).
    pub fn queued(&self) -> anyhow::Result<Vec<(u64, i64)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, queue_seq FROM jobs WHERE state = 'queued' ORDER BY queue_seq, id",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Running jobs: (id, worker, attempt).
    pub fn running(&self) -> anyhow::Result<Vec<(u64, String, u32)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT id, worker, attempts FROM jobs WHERE state = 'running' ORDER BY id")?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u32,
                ))
            })?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// The task fields of a job: (name, argv or None for the default task, array index,
    /// traceparent, attempts so far).
    #[allow(clippy::type_complexity)]
    pub fn task(
        &self,
        id: u64,
    ) -> anyhow::Result<(String, Option<Vec<String>>, Option<u32>, String, u32)> {
        self.conn
            .prepare_cached(
                "SELECT name, argv, array_index, traceparent, attempts FROM jobs WHERE id = ?1",
            )?
            .query_row([id as i64], |r| {
                let argv: Option<String> = r.get(1)?;
                Ok((
                    r.get(0)?,
                    argv.and_then(|a| serde_json::from_str(&a).ok()),
                    r.get::<_, Option<i64>>(2)?.map(|i| i as u32),
                    r.get(3)?,
                    r.get::<_, i64>(4)? as u32,
                ))
            })
            .with_context(|| format!("reading job {id}"))
    }

    /// The stored output of a job from the given offsets.
    pub fn output(
        &self,
        id: u64,
        stdout_from: u64,
        stderr_from: u64,
    ) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let (out, err): (Vec<u8>, Vec<u8>) = self
            .conn
            .prepare_cached("SELECT stdout, stderr FROM jobs WHERE id = ?1")?
            .query_row([id as i64], |r| Ok((r.get(0)?, r.get(1)?)))
            .with_context(|| format!("reading the output of job {id}"))?;
        let from = |v: Vec<u8>, at: u64| v.get(at as usize..).map_or_else(Vec::new, <[u8]>::to_vec);
        Ok((from(out, stdout_from), from(err, stderr_from)))
    }

    /// Deletes the oldest finished jobs beyond `keep`; returns how many.
    pub fn prune(&mut self, keep: usize) -> anyhow::Result<usize> {
        let n = self.conn.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('succeeded','failed','cancelled') \
             ORDER BY id DESC LIMIT -1 OFFSET ?1)",
            [keep as i64],
        )?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, Store) {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(&tmp.path().join("jobs.db")).unwrap();
        (tmp, s)
    }

    #[test]
    fn commits_do_not_checkpoint_the_thread_does() {
        let (tmp, mut s) = store();
        let db = tmp.path().join("jobs.db");
        let wal = tmp.path().join("jobs.db-wal");
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let before = size(&db);
        // Well past SQLite's automatic checkpoint (1000 pages).
        for i in 0..3000 {
            s.insert(&"x".repeat(200), None, None, "", i, i).unwrap();
        }
        // 3000 rows of ~250 bytes: ~750 KB of data, written many times over in the WAL.
        assert!(size(&wal) > 1000 * 4096, "wal {}", size(&wal));
        // No commit copied the WAL into the database: it is the thread's job.
        assert!(
            size(&db) <= before + 4096 * 4,
            "db {} -> {}",
            before,
            size(&db)
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while size(&db) < 500_000 {
            assert!(std::time::Instant::now() < deadline, "never checkpointed");
            std::thread::sleep(Duration::from_millis(50));
        }
        // Dropping the store stops the thread; the data is all there on reopening.
        drop(s);
        let s = Store::open(&db).unwrap();
        assert_eq!(s.queued().unwrap().len(), 3000);
    }

    #[test]
    fn a_job_goes_through_its_states() {
        let (_tmp, mut s) = store();
        let argv = vec!["echo".to_owned(), "hi".to_owned()];
        let id = s.insert("t", Some(&argv), None, "", 1, 100).unwrap();
        assert_eq!(s.queued().unwrap(), vec![(id, 1)]);
        s.dispatched(id, "w1", 1, 200).unwrap();
        assert_eq!(s.running().unwrap(), vec![(id, "w1".to_owned(), 1)]);
        s.started(id, 1, "w1", 210, 77, 220).unwrap();
        s.finished(
            id,
            1,
            "w1",
            &Ending {
                state: JobState::Succeeded,
                exit_code: Some(0),
                signal: None,
                reason: String::new(),
                started_us: 0,
                finished_us: 300,
                stdout_total: 3,
                stderr_total: 0,
            },
            310,
        )
        .unwrap();
        let job = s.get(id, true).unwrap().unwrap();
        assert_eq!(job.state(), JobState::Succeeded);
        assert_eq!(job.argv, argv);
        assert_eq!((job.started_at_us, job.pid), (210, 77));
        let events: Vec<&str> = job.history.iter().map(|h| h.event.as_str()).collect();
        assert_eq!(events, ["submitted", "dispatched", "started", "finished"]);
        assert!(s.get(999, false).unwrap().is_none());
    }

    #[test]
    fn output_is_bounded_and_idempotent() {
        let (_tmp, mut s) = store();
        let id = s.insert("t", None, None, "", 1, 1).unwrap();
        assert_eq!(
            s.append_output(id, Stream::Stdout, 0, b"hello", 8).unwrap(),
            Some((0, b"hello".to_vec()))
        );
        // Retried: nothing new.
        assert_eq!(
            s.append_output(id, Stream::Stdout, 0, b"hello", 8).unwrap(),
            None
        );
        // Overlapping, cut at the limit.
        assert_eq!(
            s.append_output(id, Stream::Stdout, 3, b"lo world", 8)
                .unwrap(),
            Some((5, b" wo".to_vec()))
        );
        assert_eq!(
            s.append_output(id, Stream::Stdout, 11, b"x", 8).unwrap(),
            None
        );
        let (out, err) = s.output(id, 0, 0).unwrap();
        assert_eq!(
            (out.as_slice(), err.as_slice()),
            (&b"hello wo"[..], &b""[..])
        );
        assert_eq!(s.output(id, 6, 0).unwrap().0, b"wo");
        // Binary output (NUL, invalid UTF-8) is kept byte for byte.
        let bin = [0u8, 0xff, 0xfe, b'\n', 0];
        s.append_output(id, Stream::Stderr, 0, &bin, 8).unwrap();
        s.append_output(id, Stream::Stderr, 5, &bin, 8).unwrap();
        assert_eq!(
            s.output(id, 0, 0).unwrap().1,
            [&bin[..], &bin[..3]].concat()
        );
    }

    #[test]
    fn requeue_goes_to_the_head_and_prune_keeps_the_newest() {
        let (_tmp, mut s) = store();
        let a = s.insert("a", None, None, "", 1, 1).unwrap();
        let b = s.insert("b", None, None, "", 2, 1).unwrap();
        s.dispatched(b, "w", 1, 2).unwrap();
        s.requeued(b, 1, "w", 0, "lost", 3).unwrap();
        assert_eq!(s.queued().unwrap(), vec![(b, 0), (a, 1)]);
        for id in [a, b] {
            s.ended(id, 0, "", JobState::Cancelled, "cancelled", "by test", 4)
                .unwrap();
        }
        assert_eq!(s.prune(1).unwrap(), 1);
        assert!(s.get(a, false).unwrap().is_none());
        assert!(s.get(b, true).unwrap().is_some());
        let (jobs, total) = s.list(&[JobState::Cancelled], 10).unwrap();
        assert_eq!((jobs.len(), total), (1, 1));
    }
}
