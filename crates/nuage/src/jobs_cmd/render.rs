//! Jobs and workers as text: the tables of `ls` and `workers`, `show`'s page, the
//! one-line summary of `submit --wait`, and a job's output written as it arrives.

use std::io::Write;

use nuage_jobs::manager::store::state_name;
use nuage_jobs::proto::{Job, OutputStream, WorkerInfo};
use nuage_jobs::timefmt::{between, clock, timestamp};

use crate::table::Table;

/// Writes a piece of a job's output to our stdout or stderr, at once.
pub fn print_output(stream: OutputStream, data: &[u8]) {
    // A closed stdout (`| head`) is not an error worth a message.
    let _ = match stream {
        OutputStream::Stderr => {
            let mut e = std::io::stderr().lock();
            e.write_all(data).and_then(|()| e.flush())
        }
        _ => {
            let mut o = std::io::stdout().lock();
            o.write_all(data).and_then(|()| o.flush())
        }
    };
}

/// `job 12 (tache45) succeeded on w1 after 1 attempt: exit 0, ran 1.002s`.
pub fn summary(job: &Job) -> String {
    let how = match (job.exit_code, job.signal) {
        (Some(c), _) => format!("exit {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => job.reason.clone(),
    };
    let mut s = format!(
        "job {} ({}) {} on {} after {} attempt(s): {how}",
        job.id,
        job.name,
        state_name(job.state()),
        if job.worker.is_empty() {
            "-"
        } else {
            &job.worker
        },
        job.attempts
    );
    if !job.reason.is_empty() && job.exit_code.is_some() {
        s.push_str(&format!(" ({})", job.reason));
    }
    let ran = between(job.started_at_us, job.finished_at_us);
    if ran != "-" {
        s.push_str(&format!(", ran {ran}"));
    }
    s
}

fn command_text(job: &Job) -> String {
    if job.argv.is_empty() {
        "(default task)".to_owned()
    } else {
        job.argv.join(" ")
    }
}

pub fn render_list(jobs: &[Job]) -> String {
    let mut t = Table::new(&[
        "ID",
        "NAME",
        "STATE",
        "WORKER",
        "TRIES",
        "SUBMITTED",
        "WAITED",
        "RAN",
        "EXIT",
        "COMMAND",
    ]);
    for j in jobs {
        let exit = match (j.exit_code, j.signal) {
            (Some(c), _) => c.to_string(),
            (None, Some(s)) => format!("sig{s}"),
            _ => "-".into(),
        };
        let waited_until = if j.dispatched_at_us > 0 {
            j.dispatched_at_us
        } else {
            nuage_jobs::now_us()
        };
        t.row(vec![
            j.id.to_string(),
            j.name.clone(),
            state_name(j.state()).to_owned(),
            if j.worker.is_empty() {
                "-".into()
            } else {
                j.worker.clone()
            },
            j.attempts.to_string(),
            clock(j.submitted_at_us),
            between(j.submitted_at_us, waited_until),
            between(
                j.started_at_us,
                if j.finished_at_us > 0 {
                    j.finished_at_us
                } else {
                    nuage_jobs::now_us()
                },
            ),
            exit,
            command_text(j),
        ]);
    }
    t.render()
}

pub fn render_job(j: &Job) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<10} {v}\n"));
    line("id", j.id.to_string());
    line("name", j.name.clone());
    line("command", command_text(j));
    if let Some(i) = j.array_index {
        line("array", format!("index {i}"));
    }
    line("state", state_name(j.state()).to_owned());
    if !j.reason.is_empty() {
        line("reason", j.reason.clone());
    }
    if j.cancel_requested {
        line("cancel", "requested".into());
    }
    line(
        "worker",
        if j.worker.is_empty() {
            "-".into()
        } else {
            j.worker.clone()
        },
    );
    line("attempts", j.attempts.to_string());
    if j.pid != 0 {
        line("pid", j.pid.to_string());
    }
    line("submitted", timestamp(j.submitted_at_us));
    line("dispatched", timestamp(j.dispatched_at_us));
    line("started", timestamp(j.started_at_us));
    line("finished", timestamp(j.finished_at_us));
    if let Some(c) = j.exit_code {
        line("exit", c.to_string());
    }
    if let Some(s) = j.signal {
        line(
            "signal",
            format!("{s} ({})", nuage_jobs::manager::signal_name(s)),
        );
    }
    line(
        "stdout",
        format!("{} bytes ({} kept)", j.stdout_total, j.stdout_kept),
    );
    line(
        "stderr",
        format!("{} bytes ({} kept)", j.stderr_total, j.stderr_kept),
    );
    if !j.trace_id.is_empty() {
        line("trace", j.trace_id.clone());
    }
    out.push_str("history\n");
    let mut t = Table::new(&["  TIME", "EVENT", "ATTEMPT", "WORKER", "DETAIL"]);
    for h in &j.history {
        t.row(vec![
            format!("  {}", clock(h.at_us)),
            h.event.clone(),
            h.attempt.to_string(),
            if h.worker.is_empty() {
                "-".into()
            } else {
                h.worker.clone()
            },
            h.detail.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

/// `ls --tsv`: id, name, state, worker, attempts, submitted, dispatched, started,
/// finished (µs since the epoch), exit.
pub fn tsv_line(j: &Job) -> String {
    let exit = j
        .exit_code
        .map_or_else(|| "-".to_owned(), |c| c.to_string());
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{exit}",
        j.id,
        j.name,
        state_name(j.state()),
        j.worker,
        j.attempts,
        j.submitted_at_us,
        j.dispatched_at_us,
        j.started_at_us,
        j.finished_at_us
    )
}

pub fn render_workers(workers: Vec<WorkerInfo>) -> String {
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "JOB",
        "DONE",
        "ADDRESS",
        "SINCE",
        "HEARTBEAT",
    ]);
    for w in workers {
        t.row(vec![
            w.name,
            w.state,
            if w.job_id == 0 {
                "-".into()
            } else {
                w.job_id.to_string()
            },
            w.tasks_done.to_string(),
            w.address,
            clock(w.registered_at_us),
            clock(w.last_heartbeat_us),
        ]);
    }
    t.render()
}
