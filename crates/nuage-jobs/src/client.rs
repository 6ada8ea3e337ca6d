//! The client library behind `nuage jobs submit/ls/show/cancel/logs/workers`.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::config::{CALL_TIMEOUT, CONNECT_TIMEOUT, MAX_MAX_OUTPUT_BYTES, format_duration};
use crate::manager::store::is_final;
use crate::proto::{self, Job, JobState, jobs_client::JobsClient, log_chunk};
use crate::trace::{self, TraceContext};

/// A connection to the manager.
#[derive(Clone)]
pub struct Client {
    url: String,
    jobs: JobsClient<Channel>,
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
        })
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
    pub async fn wait(
        &self,
        ids: &[u64],
        timeout: Option<Duration>,
        mut on_change: impl FnMut(&Job),
    ) -> anyhow::Result<Vec<Job>> {
        let mut done: std::collections::HashMap<u64, Job> = Default::default();
        let wait = async {
            let mut stream = self
                .jobs
                .clone()
                .watch(proto::WatchRequest {
                    job_ids: ids.to_vec(),
                })
                .await
                .map_err(|s| self.error(s))?
                .into_inner();
            while done.len() < ids.len() {
                match stream.message().await.map_err(|s| self.error(s))? {
                    Some(proto::JobEvent { job: Some(job) }) => {
                        on_change(&job);
                        if is_final(job.state()) {
                            done.insert(job.id, job);
                        }
                    }
                    Some(_) => {}
                    None => bail!(
                        "the jobs manager at {} closed the watch before the jobs ended (did it stop?)",
                        self.url
                    ),
                }
            }
            Ok::<_, anyhow::Error>(())
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
    /// `on_data` as it arrives; returns the job as it was at the end.
    pub async fn logs(
        &self,
        id: u64,
        follow: bool,
        mut on_data: impl FnMut(proto::OutputStream, &[u8]),
    ) -> anyhow::Result<Job> {
        let mut stream = self
            .jobs
            .clone()
            .logs(proto::LogsRequest { job_id: id, follow })
            .await
            .map_err(|s| self.error(s))?
            .into_inner();
        while let Some(chunk) = stream.message().await.map_err(|s| self.error(s))? {
            match chunk.chunk {
                Some(log_chunk::Chunk::Data(d)) => on_data(d.stream(), &d.data),
                Some(log_chunk::Chunk::End(job)) => return Ok(job),
                None => {}
            }
        }
        bail!(
            "the jobs manager at {} ended the log stream early (did it stop?)",
            self.url
        )
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
