//! What a function writes on stderr, and the lifecycle of its processes, kept per function
//! per machine in a bounded ring (`nuage fn logs`).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Lines kept per function on each machine; older ones are dropped.
pub const LOG_LINES: usize = 1000;
/// Longest line kept, in bytes; the rest is cut and marked with `…`.
pub const LOG_LINE_MAX: usize = 1024;

/// One line of a function's log on one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    /// Increases by one per line on this machine, from 1.
    pub seq: u64,
    /// Unix time, seconds.
    pub time: f64,
    /// The process: its pid.
    pub pid: u32,
    /// `stderr` for the function's own output, `nuage` for what nuage says about it.
    pub source: String,
    pub text: String,
}

#[derive(Default)]
pub struct LogRing {
    inner: Mutex<Ring>,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    last_seq: u64,
}

impl LogRing {
    pub fn push(&self, pid: u32, source: &str, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']).to_owned();
        if text.len() > LOG_LINE_MAX {
            let mut cut = LOG_LINE_MAX;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
        }
        let mut ring = self.inner.lock().expect("log lock poisoned");
        ring.last_seq += 1;
        let line = LogLine {
            seq: ring.last_seq,
            time: nuage_core::time::unix_now(),
            pid,
            source: source.to_owned(),
            text,
        };
        if ring.lines.len() == LOG_LINES {
            ring.lines.pop_front();
        }
        ring.lines.push_back(line);
    }

    /// Lines with a sequence number above `after`, oldest first, and the last number.
    pub fn after(&self, after: u64) -> (Vec<LogLine>, u64) {
        let ring = self.inner.lock().expect("log lock poisoned");
        let lines = ring
            .lines
            .iter()
            .filter(|l| l.seq > after)
            .cloned()
            .collect();
        (lines, ring.last_seq)
    }
}

/// Copies a process's stderr into `ring`, line by line, until it closes.
pub async fn collect_stderr(
    ring: std::sync::Arc<LogRing>,
    pid: u32,
    stderr: impl AsyncRead + Unpin,
) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Read at most LOG_LINE_MAX + 1 bytes per line so a flood without newlines stays
        // bounded; the remainder becomes the next line.
        let mut limited = (&mut reader).take(LOG_LINE_MAX as u64 + 1);
        match limited.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => ring.push(pid, "stderr", &String::from_utf8_lossy(&buf)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_is_bounded_and_ordered() {
        let ring = LogRing::default();
        for i in 0..LOG_LINES + 5 {
            ring.push(7, "stderr", &format!("line {i}\n"));
        }
        let (lines, last) = ring.after(0);
        assert_eq!(lines.len(), LOG_LINES);
        assert_eq!(last, (LOG_LINES + 5) as u64);
        assert_eq!(lines[0].text, "line 5");
        let (lines, _) = ring.after(last - 2);
        assert_eq!(lines.len(), 2);
        ring.push(7, "stderr", &"é".repeat(LOG_LINE_MAX));
        let (lines, _) = ring.after(last);
        assert!(lines[0].text.ends_with('…'));
        assert!(lines[0].text.len() <= LOG_LINE_MAX + '…'.len_utf8());
    }

    #[tokio::test]
    async fn stderr_lines_are_collected() {
        let ring = std::sync::Arc::new(LogRing::default());
        let input: &[u8] = b"first\nsecond\nno newline";
        collect_stderr(ring.clone(), 42, input).await;
        let texts: Vec<String> = ring.after(0).0.into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["first", "second", "no newline"]);
    }
}
