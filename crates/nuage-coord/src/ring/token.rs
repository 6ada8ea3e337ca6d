//! Token-ring mutual exclusion: one token goes around; only its holder may enter the
//! critical section (here: append one record to a shared file), then it passes the token.
//!
//! Process 0 creates the single token. On each visit a process with records left appends
//! one; when it has written its last, it increments the token's `finished` count. The
//! process that makes `finished` reach N sends the token round once more so everyone
//! learns the run is over; each reports and the originator of that last round stops it.
//! Messages: one per hop, N per round; a process waits at most N − 1 hops to enter.
//! A lost token (holder killed) is **not** regenerated here: the others fail after
//! [`super::RUN_TIMEOUT`] or at once when the dead holder's links close.

use std::path::Path;

use anyhow::{Context, bail};
use tokio::io::AsyncWriteExt;

use super::{Link, Links, Task};
use crate::launch::ToLauncher;

/// Most records one process may be asked to write, and most lines per record.
pub const MAX_RECORDS: u32 = 100_000;
pub const MAX_LINES: u32 = 1_000;

/// One process of the token ring, as a state machine: the token's visits in, what to do
/// out.
#[derive(Debug, Clone)]
pub struct TokenProcess {
    n: u32,
    records: u32,
    written: u32,
    visits: u64,
    /// This process made `finished` reach N and sent the last round.
    announced_end: bool,
    done: bool,
}

/// What a process does with one visit of the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    /// Enter the critical section (write one record) before passing.
    pub enter: bool,
    /// Pass the token on with this `finished` count (`None`: the run is over, the token
    /// is retired).
    pub pass: Option<u32>,
    /// This process is done (it reports and expects nothing more).
    pub done: bool,
}

impl TokenProcess {
    pub fn new(n: u32, records: u32) -> Self {
        assert!(n >= 1);
        TokenProcess {
            n,
            records,
            written: 0,
            visits: 0,
            announced_end: false,
            done: false,
        }
    }

    pub fn written(&self) -> u32 {
        self.written
    }
    pub fn visits(&self) -> u64 {
        self.visits
    }

    /// Handles the token carrying `finished`.
    pub fn on_token(&mut self, finished: u32) -> anyhow::Result<Visit> {
        if self.done {
            bail!("the token came after the end (a duplicate token?)");
        }
        if finished > self.n {
            bail!(
                "the token counts {finished} finished processes out of {}",
                self.n
            );
        }
        self.visits += 1;
        if finished == self.n {
            // The last round: forward it, except back to where it started.
            self.done = true;
            let pass = (!self.announced_end).then_some(finished);
            return Ok(Visit {
                enter: false,
                pass,
                done: true,
            });
        }
        let mut finished = finished;
        let enter = self.written < self.records;
        if enter {
            self.written += 1;
            if self.written == self.records {
                finished += 1;
            }
        } else if self.records == 0 && self.visits == 1 {
            finished += 1;
        }
        if finished == self.n {
            self.announced_end = true;
        }
        Ok(Visit {
            enter,
            pass: Some(finished),
            done: false,
        })
    }
}

pub async fn run(
    task: &Task,
    file: &Path,
    records: u32,
    lines: u32,
    links: &mut Links,
) -> anyhow::Result<ToLauncher> {
    if records > MAX_RECORDS || lines == 0 || lines > MAX_LINES {
        bail!("records must be 0..={MAX_RECORDS} and lines 1..={MAX_LINES}");
    }
    let (host, pid) = super::me();
    let mut p = TokenProcess::new(task.n, records);
    if task.index == 0 {
        // Process 0 creates the one token.
        links.send(&Link::Token { finished: 0 }).await?;
    }
    loop {
        let finished = match links.recv().await? {
            Link::Token { finished } => finished,
            other => bail!("expected the token, got {other:?}"),
        };
        let visit = p.on_token(finished)?;
        if visit.enter {
            // The critical section: one record, written line by line.
            let record = p.written() - 1;
            for l in 1..=lines {
                append(file, &format!("{host} {pid} {} {record} {l}\n", task.index)).await?;
            }
        }
        if let Some(finished) = visit.pass {
            links.send(&Link::Token { finished }).await?;
        }
        if visit.done {
            return Ok(ToLauncher::TokenDone {
                records: p.written(),
                visits: p.visits(),
            });
        }
    }
}

/// One append: open, write, close (so a record of several lines is several writes, which
/// would interleave with other writers without mutual exclusion).
async fn append(file: &Path, line: &str) -> anyhow::Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .await
        .with_context(|| format!("cannot open the shared file {}", file.display()))?;
    f.write_all(line.as_bytes())
        .await
        .with_context(|| format!("cannot write to {}", file.display()))?;
    f.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    /// Passes the one token around a ring of processes with random record counts: every
    /// process writes all its records, one per visit while it holds the token; everyone
    /// ends; the token is retired exactly once, after exactly one extra round.
    #[test]
    fn every_process_writes_its_records_and_the_run_ends() {
        let mut rng = SplitMix64::new(17);
        for _ in 0..300 {
            let n = 1 + rng.below(12) as u32;
            let records: Vec<u32> = (0..n).map(|_| rng.below(6) as u32).collect();
            let mut ps: Vec<TokenProcess> =
                records.iter().map(|&r| TokenProcess::new(n, r)).collect();
            let mut token = Some((0usize, 0u32)); // (holder, finished)
            let mut entries: Vec<usize> = Vec::new();
            let mut hops = 0u64;
            while let Some((at, finished)) = token {
                let v = ps[at].on_token(finished).unwrap();
                if v.enter {
                    entries.push(at);
                }
                token = v.pass.map(|f| ((at + 1) % n as usize, f));
                hops += 1;
                assert!(hops < 10_000, "no end");
            }
            for (i, p) in ps.iter().enumerate() {
                assert!(p.done, "process {i} not done");
                assert_eq!(p.written(), records[i]);
                assert_eq!(
                    entries.iter().filter(|&&e| e == i).count() as u32,
                    records[i]
                );
            }
            // Rounds of writing (as many as the most records, at least one), then the end
            // round: at most one full round more than the writing needs.
            let max = u64::from(*records.iter().max().unwrap()).max(1);
            assert!(
                hops <= (max + 2) * u64::from(n),
                "{hops} hops for {records:?}"
            );
            // A token arriving after the end is refused (a duplicate).
            assert!(ps[0].on_token(0).is_err());
        }
    }

    #[test]
    fn impossible_counts_are_errors() {
        let mut p = TokenProcess::new(3, 1);
        assert!(p.on_token(4).is_err());
    }
}
