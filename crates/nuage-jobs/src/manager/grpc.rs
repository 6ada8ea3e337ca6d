//! The gRPC services of the manager: thin handlers over [`Core`], plus the streams
//! (Watch, Logs, Assignments).

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status};

use super::store::{Stream, is_final};
use super::{Manager, not_found, status_internal, validate_submit};
use crate::config::{DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT};
use crate::proto::{self, Job, JobState, log_chunk};
use crate::trace::{self, Span};

/// Messages buffered per Watch or Logs stream before the sender waits.
const STREAM_BUFFER: usize = 256;
/// Output bytes per LogChunk.
const LOG_CHUNK_BYTES: usize = 64 << 10;

/// The services, sharing one manager.
#[derive(Clone)]
pub(crate) struct Grpc(pub Arc<Manager>);

#[tonic::async_trait]
impl proto::jobs_server::Jobs for Grpc {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitReply>, Status> {
        let parent = trace::from_metadata(request.metadata());
        let span = Span::child(parent, "manager.submit", "manager", || {
            format!("job {}", request.get_ref().name)
        });
        let job = validate_submit(request.get_ref())?;
        let job_id = self.0.core().submit(job, span.context())?;
        span.end();
        Ok(Response::new(proto::SubmitReply { job_id }))
    }

    async fn get(&self, request: Request<proto::GetRequest>) -> Result<Response<Job>, Status> {
        let r = request.into_inner();
        let job = self
            .0
            .core()
            .store
            .get(r.job_id, r.history)
            .map_err(status_internal)?
            .ok_or_else(|| not_found(r.job_id))?;
        Ok(Response::new(job))
    }

    async fn list(
        &self,
        request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListReply>, Status> {
        let r = request.into_inner();
        let mut states = Vec::new();
        for s in &r.states {
            match JobState::try_from(*s) {
                Ok(JobState::Unspecified) | Err(_) => {
                    return Err(Status::invalid_argument(format!("unknown job state {s}")));
                }
                Ok(s) => states.push(s),
            }
        }
        let limit = match r.limit {
            0 => DEFAULT_LIST_LIMIT,
            n => n.min(MAX_LIST_LIMIT),
        };
        let (jobs, total) = self
            .0
            .core()
            .store
            .list(&states, limit)
            .map_err(status_internal)?;
        Ok(Response::new(proto::ListReply { jobs, total }))
    }

    async fn cancel(
        &self,
        request: Request<proto::CancelRequest>,
    ) -> Result<Response<Job>, Status> {
        let id = request.into_inner().job_id;
        Ok(Response::new(self.0.core().cancel(id)?))
    }

    type WatchStream = ReceiverStream<Result<proto::JobEvent, Status>>;

    async fn watch(
        &self,
        request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let ids = request.into_inner().job_ids;
        // Subscribe before reading the current states, so no change falls between.
        let mut events = self.0.job_events.subscribe();
        let mut current = Vec::new();
        {
            let core = self.0.core();
            for &id in &ids {
                let job = core
                    .store
                    .get(id, false)
                    .map_err(status_internal)?
                    .ok_or_else(|| not_found(id))?;
                current.push(job);
            }
        }
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let manager = self.0.clone();
        tokio::spawn(async move {
            let all = ids.is_empty();
            let mut pending: HashSet<u64> = ids.iter().copied().collect();
            for job in current {
                if is_final(job.state()) {
                    pending.remove(&job.id);
                }
                if tx
                    .send(Ok(proto::JobEvent { job: Some(job) }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            while all || !pending.is_empty() {
                let event = tokio::select! {
                    _ = manager.stopping.cancelled() => return,
                    _ = tx.closed() => return,
                    e = events.recv() => e,
                };
                let jobs = match event {
                    Ok(job) if all || pending.contains(&job.id) => vec![job],
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        if all {
                            let _ = tx
                                .send(Err(Status::resource_exhausted(format!(
                                    "this watcher fell {n} changes behind; watch again"
                                ))))
                                .await;
                            return;
                        }
                        // Catch up from the store.
                        let core = manager.core();
                        pending
                            .iter()
                            .filter_map(|id| core.store.get(*id, false).ok().flatten())
                            .collect()
                    }
                };
                for job in jobs {
                    if !all && is_final(job.state()) {
                        pending.remove(&job.id);
                    }
                    if tx
                        .send(Ok(proto::JobEvent { job: Some(job) }))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type LogsStream = ReceiverStream<Result<proto::LogChunk, Status>>;

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let r = request.into_inner();
        let id = r.job_id;
        let mut logs = self.0.log_events.subscribe();
        let mut jobs = self.0.job_events.subscribe();
        let (job, (out, err)) = {
            let core = self.0.core();
            let job = core
                .store
                .get(id, false)
                .map_err(status_internal)?
                .ok_or_else(|| not_found(id))?;
            let output = core.store.output(id, 0, 0).map_err(status_internal)?;
            (job, output)
        };
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let manager = self.0.clone();
        tokio::spawn(async move {
            // The stored output is the current attempt's; each chunk says where it
            // starts and which attempt wrote it, so a client that reconnects skips what
            // it already has.
            let mut attempt = job.attempts;
            let mut sent = [out.len() as u64, err.len() as u64];
            if send_output(&tx, Stream::Stdout, 0, attempt, &out)
                .await
                .is_err()
                || send_output(&tx, Stream::Stderr, 0, attempt, &err)
                    .await
                    .is_err()
            {
                return;
            }
            let mut last = job;
            if r.follow {
                while !is_final(last.state()) {
                    tokio::select! {
                        _ = manager.stopping.cancelled() => return,
                        _ = tx.closed() => return,
                        e = logs.recv() => match e {
                            Ok(ev) if ev.job_id == id => {
                                if ev.attempt != attempt {
                                    attempt = ev.attempt;
                                    sent = [0, 0];
                                }
                                let i = usize::from(ev.stream == Stream::Stderr);
                                let end = ev.offset + ev.data.len() as u64;
                                if end > sent[i] && ev.offset <= sent[i] {
                                    let new = &ev.data[(sent[i] - ev.offset) as usize..];
                                    if send_output(&tx, ev.stream, sent[i], attempt, new).await.is_err() {
                                        return;
                                    }
                                    sent[i] = end;
                                }
                            }
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                if catch_up(&manager, &tx, id, &mut attempt, &mut sent).await.is_err() {
                                    return;
                                }
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                        e = jobs.recv() => match e {
                            Ok(job) if job.id == id => {
                                if job.state() == JobState::Queued && job.attempts > 0 {
                                    // Requeued: the next attempt's output starts afresh.
                                    sent = [0, 0];
                                }
                                last = job;
                            }
                            Ok(_) => {}
                            Err(broadcast::error::RecvError::Lagged(_)) => {
                                match manager.core().store.get(id, false) {
                                    Ok(Some(job)) => last = job,
                                    _ => return,
                                }
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        },
                    }
                }
                // The last output is stored before the final state is published.
                if catch_up(&manager, &tx, id, &mut attempt, &mut sent)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = tx
                .send(Ok(proto::LogChunk {
                    chunk: Some(log_chunk::Chunk::End(last)),
                }))
                .await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_workers(
        &self,
        _request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersReply>, Status> {
        Ok(Response::new(proto::ListWorkersReply {
            workers: self.0.core().workers(),
        }))
    }
}

type LogTx = mpsc::Sender<Result<proto::LogChunk, Status>>;

/// Sends `data`, which starts at `offset` in `stream` of `attempt`, in chunks.
async fn send_output(
    tx: &LogTx,
    stream: Stream,
    offset: u64,
    attempt: u32,
    data: &[u8],
) -> Result<(), ()> {
    let which = match stream {
        Stream::Stdout => proto::OutputStream::Stdout,
        Stream::Stderr => proto::OutputStream::Stderr,
    };
    let mut at = offset;
    for piece in data.chunks(LOG_CHUNK_BYTES) {
        let chunk = proto::LogChunk {
            chunk: Some(log_chunk::Chunk::Data(proto::OutputData {
                stream: which as i32,
                data: piece.to_vec(),
                offset: at,
                attempt,
            })),
        };
        tx.send(Ok(chunk)).await.map_err(|_| ())?;
        at += piece.len() as u64;
    }
    Ok(())
}

/// Sends what the store has beyond `sent` (all of it if the job has moved on to
/// another attempt since `attempt`).
async fn catch_up(
    manager: &Manager,
    tx: &LogTx,
    id: u64,
    attempt: &mut u32,
    sent: &mut [u64; 2],
) -> Result<(), ()> {
    let (out, err) = {
        let core = manager.core();
        let Ok(Some(job)) = core.store.get(id, false) else {
            return Err(());
        };
        if job.attempts != *attempt {
            *attempt = job.attempts;
            *sent = [0, 0];
        }
        let Ok(output) = core.store.output(id, sent[0], sent[1]) else {
            return Err(());
        };
        output
    };
    send_output(tx, Stream::Stdout, sent[0], *attempt, &out).await?;
    send_output(tx, Stream::Stderr, sent[1], *attempt, &err).await?;
    sent[0] += out.len() as u64;
    sent[1] += err.len() as u64;
    Ok(())
}

#[tonic::async_trait]
impl proto::workers_server::Workers for Grpc {
    async fn register(
        &self,
        request: Request<proto::RegisterRequest>,
    ) -> Result<Response<proto::RegisterReply>, Status> {
        let address = request
            .remote_addr()
            .map_or_else(|| "?".to_owned(), |a| a.to_string());
        let reply = self.0.core().register(request.into_inner(), address)?;
        Ok(Response::new(reply))
    }

    async fn heartbeat(
        &self,
        request: Request<proto::HeartbeatRequest>,
    ) -> Result<Response<proto::HeartbeatReply>, Status> {
        Ok(Response::new(
            self.0.core().heartbeat(request.into_inner())?,
        ))
    }

    type AssignmentsStream = UnboundedReceiverStream<Result<proto::Assignment, Status>>;

    async fn assignments(
        &self,
        request: Request<proto::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let rx = self
            .0
            .core()
            .open_assignments(&request.into_inner().session)?;
        Ok(Response::new(UnboundedReceiverStream::new(rx)))
    }

    async fn report(
        &self,
        request: Request<proto::ReportRequest>,
    ) -> Result<Response<proto::ReportReply>, Status> {
        let parent = trace::from_metadata(request.metadata());
        Ok(Response::new(
            self.0.core().report(request.into_inner(), parent)?,
        ))
    }
}
