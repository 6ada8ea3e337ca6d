//! The finger server: one query per connection, answered from the system's files and
//! closed (RFC 1288). Queries are logged; a pid file marks the running server.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::query::{self, MAX_QUERY};
use super::report::{self, Sources};
use crate::net::printable;

/// The port nuage's finger server listens on by default (79 needs root).
pub const DEFAULT_PORT: u16 = 7979;
/// Queries answered at once; more connections wait to be accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send its query by default (fingerd's `-t` default).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest query timeout accepted.
pub const MAX_QUERY_TIMEOUT: Duration = Duration::from_secs(3600);
/// How long a client has to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// What the server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// Written with the server's pid at start, removed at exit.
    pub pid_file: Option<PathBuf>,
    /// Every query is appended here: time, client, query, result.
    pub log: Option<PathBuf>,
    pub sources: Sources,
    /// How long a client has to send its query ([`QUERY_TIMEOUT`] by default).
    pub query_timeout: Duration,
}

/// A started server: bound, logging, pid file written.
pub struct FingerServer {
    listener: TcpListener,
    sources: Arc<Sources>,
    log: Option<Arc<QueryLog>>,
    query_timeout: Duration,
    _pid_file: Option<PidFile>,
}

impl FingerServer {
    /// Checks the user database, binds the port, opens the log, then writes the pid
    /// file (last, so a failed start leaves no pid file behind).
    pub async fn start(config: ServerConfig) -> anyhow::Result<FingerServer> {
        if config.query_timeout.is_zero() || config.query_timeout > MAX_QUERY_TIMEOUT {
            bail!(
                "the query timeout must be between 1 and {} seconds",
                MAX_QUERY_TIMEOUT.as_secs()
            );
        }
        // Each query reads it afresh; a path that cannot be read is a mistake to report now.
        super::passwd::read_accounts(&config.sources.passwd)
            .context("the user database (--passwd)")?;
        let listener =
            nuage_core::net::bind_tcp(config.listen, "the finger server", "--port").await?;
        let log = match &config.log {
            Some(path) => Some(Arc::new(QueryLog::open(path)?)),
            None => None,
        };
        let pid_file = match &config.pid_file {
            Some(path) => Some(PidFile::create(path)?),
            None => None,
        };
        Ok(FingerServer {
            listener,
            sources: Arc::new(config.sources),
            log,
            query_timeout: config.query_timeout,
            _pid_file: pid_file,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Answers queries until `shutdown` is cancelled; the pid file is removed when this
    /// returns.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut sessions = JoinSet::new();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => break,
                p = slots.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (stream, peer) = tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            while sessions.try_join_next().is_some() {}
            let sources = self.sources.clone();
            let log = self.log.clone();
            let query_timeout = self.query_timeout;
            sessions.spawn(async move {
                let outcome = serve(stream, peer, sources, query_timeout).await;
                if let Some(log) = log {
                    log.record(peer, &outcome);
                }
                drop(permit);
            });
        }
        sessions.shutdown().await;
        Ok(())
    }
}

/// What happened to one connection, for the log.
#[derive(Debug)]
pub struct Outcome {
    pub query: Option<Vec<u8>>,
    pub result: String,
}

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    sources: Arc<Sources>,
    query_timeout: Duration,
) -> Outcome {
    let line = match read_query(&mut stream, query_timeout).await {
        Ok(Some(line)) => line,
        Ok(None) => {
            return Outcome {
                query: None,
                result: "hung-up".into(),
            };
        }
        Err(ReadError::TooLong(start)) => {
            let e = query::QueryError::TooLong;
            crate::net::tcp::close_with(&mut stream, format!("{e}\r\n").as_bytes()).await;
            return Outcome {
                query: Some(start),
                result: e.kind().into(),
            };
        }
        Err(ReadError::Timeout) => {
            let msg = format!("finger: no query within {query_timeout:?}\r\n");
            let _ = stream.write_all(msg.as_bytes()).await;
            return Outcome {
                query: None,
                result: "timeout".into(),
            };
        }
        Err(ReadError::Io(e)) => {
            return Outcome {
                query: None,
                result: format!("error: {e}"),
            };
        }
    };
    let (answer, result) = match query::parse(&line) {
        Err(e) => (format!("{e}\n"), e.kind().to_owned()),
        Ok(request) => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let task = tokio::task::spawn_blocking(move || report::report(&request, &sources, now));
            match task.await {
                Ok(Ok(r)) if r.people == 0 && !r.unknown.is_empty() => {
                    (r.text, "no-such-user".into())
                }
                Ok(Ok(r)) => {
                    let result = format!("ok ({} shown)", r.people);
                    (r.text, result)
                }
                Ok(Err(e)) => {
                    tracing::warn!("finger query from {peer}: {e:#}");
                    (
                        "finger: cannot read the user database\n".into(),
                        format!("error: {e:#}"),
                    )
                }
                Err(e) => ("finger: internal error\n".into(), format!("error: {e}")),
            }
        }
    };
    let bytes = to_wire(&answer);
    match tokio::time::timeout(
        WRITE_TIMEOUT,
        crate::net::tcp::close_with(&mut stream, &bytes),
    )
    .await
    {
        Ok(()) => Outcome {
            query: Some(line),
            result,
        },
        Err(_) => Outcome {
            query: Some(line),
            result: "write-timeout".into(),
        },
    }
}

enum ReadError {
    TooLong(Vec<u8>),
    Timeout,
    Io(std::io::Error),
}

/// Reads the query line: up to LF (CRLF or LF), at most [`MAX_QUERY`] bytes before it.
/// `None` if the client closed without sending anything.
async fn read_query(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<Vec<u8>>, ReadError> {
    let mut line = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return Err(ReadError::Timeout),
            Ok(Err(e)) => return Err(ReadError::Io(e)),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            // A client that half-closes without CRLF still gets its answer.
            return Ok((!line.is_empty()).then_some(line));
        }
        line.extend_from_slice(&buf[..n]);
        if let Some(end) = line.iter().position(|&b| b == b'\n') {
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return if line.len() > MAX_QUERY {
                Err(ReadError::TooLong(line[..64].to_vec()))
            } else {
                Ok(Some(line))
            };
        }
        if line.len() > MAX_QUERY + 1 {
            line.truncate(64);
            return Err(ReadError::TooLong(line));
        }
    }
}

/// The answer as sent: CRLF line ends (RFC 1288), tabs kept, and control characters
/// made visible as finger(1) shows them (`^[` for ESC, `M-^[` for the C1 CSI…), so a
/// `.plan` cannot drive the reader's terminal.
pub fn to_wire(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + text.len() / 16);
    for c in text.chars() {
        match c {
            '\n' => out.extend_from_slice(b"\r\n"),
            '\t' => out.push(b'\t'),
            c if (c as u32) < 0x20 => out.extend_from_slice(&[b'^', c as u8 + b'@']),
            '\u{7f}' => out.extend_from_slice(b"^?"),
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.extend_from_slice(&[b'M', b'-', b'^', (c as u32 as u8 & 0x7f) + b'@']);
            }
            c => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out
}

/// The query log: one line per connection, appended.
pub struct QueryLog {
    file: Mutex<std::fs::File>,
}

impl QueryLog {
    pub fn open(path: &Path) -> anyhow::Result<QueryLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the log file {}", path.display()))?;
        Ok(QueryLog {
            file: Mutex::new(file),
        })
    }

    /// `2026-11-23T09:50:01Z client=10.213.0.3:41234 query="alice" result=ok (1 shown)`
    pub fn record(&self, peer: SocketAddr, outcome: &Outcome) {
        let time = nuage_core::time::rfc3339(nuage_core::time::unix_now());
        let query = match &outcome.query {
            Some(q) => format!("\"{}\"", printable(q).replace('"', "\\\"")),
            None => "-".to_owned(),
        };
        let line = format!(
            "{time} client={peer} query={query} result={}\n",
            outcome.result
        );
        let mut file = self.file.lock().expect("log lock poisoned");
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::warn!("cannot write the finger log: {e}");
        }
    }
}

/// A pid file: holds this process's pid while the server runs.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes the pid file, refusing if it names another live process.
    pub fn create(path: &Path) -> anyhow::Result<PidFile> {
        let me = std::process::id();
        if let Ok(old) = std::fs::read_to_string(path) {
            if let Ok(pid) = old.trim().parse::<i32>() {
                let alive = pid > 0
                    && pid as u32 != me
                    && !matches!(
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                        Err(nix::errno::Errno::ESRCH)
                    );
                if alive {
                    bail!(
                        "pid file {} names a running process (pid {pid}): is another finger server running? stop it or choose another --pid-file",
                        path.display()
                    );
                }
            }
        }
        let tmp = path.with_extension(format!("tmp.{me}"));
        std::fs::write(&tmp, format!("{me}\n"))
            .and_then(|()| std::fs::rename(&tmp, path))
            .with_context(|| format!("cannot write the pid file {}", path.display()))?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Only our own: a later server may have replaced it.
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|s| s.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_uses_crlf_and_shows_controls() {
        assert_eq!(to_wire("a\nb\tc\n"), b"a\r\nb\tc\r\n");
        assert_eq!(to_wire("\x1b[2J"), b"^[[2J");
        assert_eq!(to_wire("\u{9b}"), b"M-^[");
        assert_eq!(to_wire("\x7f é"), "^? é".as_bytes());
    }

    proptest::proptest! {
        /// Whatever a report holds, the wire form has no control byte but CR LF (paired)
        /// and tab: nothing in a `.plan` can drive the reader's terminal.
        #[test]
        fn wire_form_has_no_control_bytes(text in "\\PC*|[\\x00-\\x{a0}]*") {
            let wire = to_wire(&text);
            for (i, &b) in wire.iter().enumerate() {
                proptest::prop_assert!(b >= 0x20 || b == b'\t' || b == b'\r' || b == b'\n');
                proptest::prop_assert!(b != 0x7f);
                if b == b'\n' {
                    proptest::prop_assert!(i > 0 && wire[i - 1] == b'\r');
                }
            }
            proptest::prop_assert!(std::str::from_utf8(&wire).is_ok());
            let c1 = std::str::from_utf8(&wire)
                .unwrap()
                .chars()
                .any(|c| ('\u{80}'..'\u{a0}').contains(&c));
            proptest::prop_assert!(!c1, "a C1 control character passed");
        }
    }

    #[test]
    fn pid_file_refuses_a_live_owner_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("finger.pid");
        // pid 1 is alive.
        std::fs::write(&path, "1\n").unwrap();
        let err = PidFile::create(&path).err().unwrap().to_string();
        assert!(err.contains("running process (pid 1)"), "{err}");
        // A pid that cannot exist is stale.
        std::fs::write(&path, "2147483646\n").unwrap();
        let pid = PidFile::create(&path).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        drop(pid);
        assert!(!path.exists());
    }
}
