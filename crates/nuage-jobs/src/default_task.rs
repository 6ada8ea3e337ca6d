//! The worker's default task, run for a job submitted with a bare name (`nuage jobs
//! submit tache45`): it works for a while, then prints the task's name, the worker's
//! name and its timing, as the servers of the classic lab exercise did. It runs as its
//! own process (`nuage jobs default-task`), so it is captured, cancelled and traced
//! like any other task.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::config::format_duration;
use crate::timefmt::timestamp;

/// Runs the default task; returns its exit status.
pub fn run(name: &str, worker: &str, duration: Duration) -> i32 {
    let started = crate::now_us();
    let clock = Instant::now();
    std::thread::sleep(duration);
    let took = clock.elapsed();
    let finished = crate::now_us();
    let mut out = std::io::stdout().lock();
    let text = format!(
        "task {name} done by worker {worker} (pid {})\nstarted   {}\nfinished  {}\ntook      {}\n",
        std::process::id(),
        timestamp(started),
        timestamp(finished),
        format_duration(took)
    );
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}
