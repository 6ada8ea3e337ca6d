//! The client library behind `nuage jobs submit/ls/show/cancel/logs/workers`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{
    CALL_TIMEOUT, CONNECT_TIMEOUT, MAX_MAX_OUTPUT_BYTES, RECONNECT_FIRST, RECONNECT_MAX,
    RECONNECT_TIMEOUT, format_duration,
};
use crate::manager::store::is_final;
use crate::proto::{self, Job, JobState, jobs_client::JobsClient, log_chunk};
use crate::trace::{self, TraceContext};

/// A connection to the manager.
#[derive(Clone)]
pub struct Client {
    url: String,
    jobs: JobsClient<Channel>,
    /// Told when a stream loses the manager and when it reaches it again.
    notice: Option<fn(&str)>,
}

/// How to reach the manager, for error messages.
fn hint() -> &'static str {
    "is `nuage jobs manager` running there? pass --manager or set NUAGE_MANAGER"
}

/// The innermost cause of an error, which says what happened (refused, timed out…).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

impl Client {
    /// Connects to `url` (already normalized, see [`crate::config::manager_url`]).
    pub async fn connect(url: &str) -> anyhow::Result<Client> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .with_context(|| format!("`{url}` is not a manager URL"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true);
        let channel = match tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => bail!(
                "cannot reach the jobs manager at {url}: {} ({})",
                root_cause(&e),
                hint()
            ),
            Err(_) => bail!(
                "cannot reach the jobs manager at {url}: no connection within {} ({})",
                format_duration(CONNECT_TIMEOUT),
                hint()
            ),
        };
        let limit = 2 * MAX_MAX_OUTPUT_BYTES as usize + (1 << 20);
        Ok(Client {
            url: url.to_owned(),
            jobs: JobsClient::new(channel)
                .max_decoding_message_size(limit)
                .max_encoding_message_size(limit),
            notice: None,
        })
    }

    /// Calls `f` with a sentence when a stream (`logs`, `wait`) loses the manager and
    /// when it reaches it again.
    pub fn with_notices(mut self, f: fn(&str)) -> Client {
        self.notice = Some(f);
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn error(&self, status: Status) -> anyhow::Error {
        match status.code() {
            Code::Unavailable | Code::Unknown => anyhow!(
                "cannot reach the jobs manager at {}: {} ({})",
                self.url,
                status.message(),
                hint()
            ),
            Code::DeadlineExceeded => anyhow!(
                "the jobs manager at {} did not answer within {}",
                self.url,
                format_duration(CALL_TIMEOUT)
            ),
            _ => anyhow!("{}", status.message()),
        }
    }

    fn unary<T>(message: T, trace: Option<TraceContext>) -> Request<T> {
        let mut r = Request::new(message);
        r.set_timeout(CALL_TIMEOUT);
        trace::inject(&mut r, trace);
        r
    }

    /// Queues a job; `argv` None runs the worker's default task.
    pub async fn submit(
        &self,
        name: &str,
        argv: Option<Vec<String>>,
        array_index: Option<u32>,
        trace: Option<TraceContext>,
    ) -> anyhow::Result<u64> {
        use proto::submit_request::Task;
        let task = match argv {
            None => Task::DefaultTask(proto::DefaultTask {}),
            Some(argv) => Task::Command(proto::Command { argv }),
        };
        let request = proto::SubmitRequest {
            name: name.to_owned(),
            task: Some(task),
            array_index,
        };
        let reply = self
            .jobs
            .clone()
            .submit(Self::unary(request, trace))
            .await
            .map_err(|s| self.error(s))?;
        Ok(reply.into_inner().job_id)
    }

    pub async fn get(&self, id: u64, history: bool) -> anyhow::Result<Job> {
        let r = proto::GetRequest {
            job_id: id,
            history,
        };
        Ok(self
            .jobs
            .clone()
            .get(Self::unary(r, None))
            .await
            .map_err(|s| self.error(s))?
            .into_inner())
    }

    /// The newest `limit` jobs in `states` (all when empty), oldest first, and how many
    /// there are in all.
    pub async fn list(&self, states: &[JobState], limit: u32) -> anyhow::Result<(Vec<Job>, u64)> {
        let r = proto::ListRequest {
            states: states.iter().map(|s| *s as i32).collect(),
            limit,
        };
        let reply = self
            .jobs
            .clone()
            .list(Self::unary(r, None))
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        Ok((reply.jobs, reply.total))
    }

    pub async fn cancel(&self, id: u64) -> anyhow::Result<Job> {
        let r = proto::CancelRequest { job_id: id };
        Ok(self
            .jobs
            .clone()
            .cancel(Self::unary(r, None))
            .await
            .map_err(|s| self.error(s))?
            .into_inner())
    }

    pub async fn workers(&self) -> anyhow::Result<Vec<proto::WorkerInfo>> {
        Ok(self
            .jobs
            .clone()
            .list_workers(Self::unary(proto::ListWorkersRequest {}, None))
            .await
            .map_err(|s| self.error(s))?
            .into_inner()
            .workers)
    }

    /// Waits until every job of `ids` has reached a final state; `on_change` sees each
    /// change. Returns the final jobs in the order of `ids`. `timeout` bounds the wait.
    /// A manager that goes away meanwhile (a restart) is watched again, for up to
    /// [`RECONNECT_TIMEOUT`] of silence.
    pub async fn wait(
        &self,
        ids: &[u64],
        timeout: Option<Duration>,
        mut on_change: impl FnMut(&Job),
    ) -> anyhow::Result<Vec<Job>> {
        let mut done: HashMap<u64, Job> = HashMap::new();
        let wait = async {
            let mut outage: Option<Outage> = None;
            loop {
                let pending: Vec<u64> = ids
                    .iter()
                    .copied()
                    .filter(|id| !done.contains_key(id))
                    .collect();
                if pending.is_empty() {
                    return Ok::<(), anyhow::Error>(());
                }
                let broken = match self
                    .jobs
                    .clone()
                    .watch(proto::WatchRequest { job_ids: pending })
                    .await
                {
                    Err(s) => Broken::from_status(s),
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        loop {
                            match stream.message().await {
                                Ok(Some(proto::JobEvent { job: Some(job) })) => {
                                    self.back(&mut outage);
                                    on_change(&job);
                                    if is_final(job.state()) {
                                        done.insert(job.id, job);
                                    }
                                }
                                Ok(Some(_)) => {}
                                Ok(None) if done.len() == ids.len() => return Ok(()),
                                Ok(None) => break Broken::Transient("it closed the watch".into()),
                                Err(s) => break Broken::from_status(s),
                            }
                        }
                    }
                };
                self.reconnect_pause(&mut outage, broken).await?;
            }
        };
        match timeout {
            Some(t) => tokio::time::timeout(t, wait).await.map_err(|_| {
                anyhow!(
                    "{} of {} job(s) still not finished after {}",
                    ids.len() - done.len(),
                    ids.len(),
                    format_duration(t)
                )
            })??,
            None => wait.await?,
        }
        Ok(ids
            .iter()
            .map(|id| done.remove(id).expect("waited for"))
            .collect())
    }

    /// The output of a job (and with `follow`, new output until it ends), given to
    /// `on_data` as it arrives; returns the job as it was at the end. A manager that
    /// goes away meanwhile (a restart) is asked again, for up to [`RECONNECT_TIMEOUT`]
    /// of silence; output already given to `on_data` is not given twice.
    pub async fn logs(
        &self,
        id: u64,
        follow: bool,
        mut on_data: impl FnMut(proto::OutputStream, &[u8]),
    ) -> anyhow::Result<Job> {
        let mut seen = OutputSeen::default();
        let mut outage: Option<Outage> = None;
        loop {
            let broken = match self
                .jobs
                .clone()
                .logs(proto::LogsRequest { job_id: id, follow })
                .await
            {
                // The first request: an unreachable manager or an unknown job is an
                // error at once.
                Err(s) if outage.is_none() && !seen.any => return Err(self.error(s)),
                Err(s) => Broken::from_status(s),
                Ok(stream) => {
                    let mut stream = stream.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(chunk)) => {
                                self.back(&mut outage);
                                seen.any = true;
                                match chunk.chunk {
                                    Some(log_chunk::Chunk::Data(d)) => {
                                        let new = seen.new_part(&d);
                                        if !new.is_empty() {
                                            on_data(d.stream(), new);
                                        }
                                    }
                                    Some(log_chunk::Chunk::End(job)) => return Ok(job),
                                    None => {}
                                }
                            }
                            Ok(None) => {
                                break Broken::Transient("it ended the log stream early".into());
                            }
                            Err(s) => break Broken::from_status(s),
                        }
                    }
                }
            };
            self.reconnect_pause(&mut outage, broken).await?;
        }
    }

    /// The manager answers again: the outage (if any) is over.
    fn back(&self, outage: &mut Option<Outage>) {
        if outage.take().is_some() {
            if let Some(notice) = self.notice {
                notice(&format!("reached the jobs manager at {} again", self.url));
            }
        }
    }

    /// After a broken stream: a final error, or a pause before asking again (doubling,
    /// until [`RECONNECT_TIMEOUT`] since the manager was lost).
    async fn reconnect_pause(
        &self,
        outage: &mut Option<Outage>,
        broken: Broken,
    ) -> anyhow::Result<()> {
        let why = match broken {
            Broken::Fatal(s) => return Err(self.error(s)),
            Broken::Transient(why) => why,
        };
        let o = outage.get_or_insert_with(|| {
            if let Some(notice) = self.notice {
                notice(&format!(
                    "lost the jobs manager at {} ({why}); reconnecting for up to {}",
                    self.url,
                    format_duration(RECONNECT_TIMEOUT)
                ));
            }
            Outage {
                since: Instant::now(),
                delay: RECONNECT_FIRST,
            }
        });
        if o.since.elapsed() >= RECONNECT_TIMEOUT {
            bail!(
                "lost the jobs manager at {} for {}: {why} ({})",
                self.url,
                format_duration(RECONNECT_TIMEOUT),
                hint()
            );
        }
        tokio::time::sleep(o.delay).await;
        o.delay = (o.delay * 2).min(RECONNECT_MAX);
        Ok(())
    }
}

/// Why a stream from the manager stopped before its end.
enum Broken {
    /// The manager went away (stopped, restarting, unreachable): ask again.
    Transient(String),
    /// The manager answered with an error: give up.
    Fatal(Status),
}

impl Broken {
    fn from_status(s: Status) -> Broken {
        match s.code() {
            // A connection refused or reset, a stream cut by a dying server (h2 errors
            // surface as Internal or Unknown), a server shutting down.
            Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted => Broken::Transient(s.message().to_owned()),
            _ => Broken::Fatal(s),
        }
    }
}

/// Since when the manager is unreachable, and the next pause.
struct Outage {
    since: Instant,
    delay: Duration,
}

/// How much of a job's output `logs` has given out, to skip it when a new stream
/// (after a reconnection) sends it again.
#[derive(Default)]
struct OutputSeen {
    attempt: u32,
    bytes: [u64; 2],
    /// The manager has answered at least once.
    any: bool,
}

impl OutputSeen {
    /// The part of `d` not given out yet (empty if all of it was).
    fn new_part<'a>(&mut self, d: &'a proto::OutputData) -> &'a [u8] {
        if d.attempt != self.attempt {
            // A new attempt's output starts afresh.
            self.attempt = d.attempt;
            self.bytes = [0, 0];
        }
        let i = usize::from(d.stream() == proto::OutputStream::Stderr);
        let end = d.offset + d.data.len() as u64;
        if end <= self.bytes[i] {
            return &[];
        }
        let skip = self.bytes[i].saturating_sub(d.offset) as usize;
        self.bytes[i] = end;
        &d.data[skip..]
    }
}

/// Notes on output that was cut at the bound, for the end of `logs` and `--wait`.
pub fn truncation_notes(job: &Job) -> Vec<String> {
    let mut notes = Vec::new();
    for (name, kept, total) in [
        ("stdout", job.stdout_kept, job.stdout_total),
        ("stderr", job.stderr_kept, job.stderr_total),
    ] {
        if total > kept {
            notes.push(format!(
                "nuage: job {}: {name} truncated: kept the first {kept} of {total} bytes (the manager's max_output_bytes)",
                job.id
            ));
        }
    }
    notes
}

/// The exit status `submit --wait` ends with: the task's own, 128+signal if killed,
/// 1 if it never ran to an exit.
pub fn exit_status(job: &Job) -> i32 {
    match (job.state(), job.exit_code, job.signal) {
        (JobState::Succeeded, _, _) => 0,
        (_, Some(code), _) => code,
        (_, None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(
        stream: proto::OutputStream,
        offset: u64,
        attempt: u32,
        text: &str,
    ) -> proto::OutputData {
        proto::OutputData {
            stream: stream as i32,
            data: text.as_bytes().to_vec(),
            offset,
            attempt,
        }
    }

    #[test]
    fn output_seen_skips_what_a_new_stream_sends_again() {
        use proto::OutputStream::{Stderr, Stdout};
        let mut seen = OutputSeen::default();
        assert_eq!(seen.new_part(&data(Stdout, 0, 1, "abc")), b"abc");
        assert_eq!(seen.new_part(&data(Stderr, 0, 1, "e")), b"e");
        assert_eq!(seen.new_part(&data(Stdout, 3, 1, "de")), b"de");
        // A reconnection: the stored output from the start, then new output.
        assert_eq!(seen.new_part(&data(Stdout, 0, 1, "abcdefg")), b"fg");
        assert_eq!(seen.new_part(&data(Stderr, 0, 1, "e")), b"");
        assert_eq!(seen.new_part(&data(Stdout, 7, 1, "h")), b"h");
        // The job was requeued: the next attempt's output is all new.
        assert_eq!(seen.new_part(&data(Stdout, 0, 2, "ab")), b"ab");
        assert_eq!(seen.new_part(&data(Stderr, 0, 2, "x")), b"x");
    }
}
