//! `nuage jobs` across lab machines (needs root; CI runs as root): one manager, three
//! workers, and 100 tasks during which one worker is killed, one paused and one cut
//! off by a partition. Every task must end exactly once in the manager's history.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use nuage_lab::Lab;

const NUAGE: &str = env!("CARGO_BIN_EXE_nuage");
const TASKS: usize = 100;
const MANAGER_URL: &str = "http://127.0.0.1:50051";

fn spawn_quiet(lab: &Lab, machine: &str, args: &[&str]) -> Child {
    let mut cmd = lab.command(machine, NUAGE).unwrap();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let out = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || for _ in out.lines() {});
    child
}

fn worker(lab: &Lab, machine: &str, manager: &str) -> Child {
    spawn_quiet(
        lab,
        machine,
        &["jobs", "worker", "--manager", manager, "--name", machine],
    )
}

/// `nuage jobs ARGS…` run on the manager's machine.
fn jobs(lab: &Lab, args: &[&str]) -> Output {
    let mut cmd = lab.command("n1", NUAGE).unwrap();
    cmd.arg("jobs")
        .args(args)
        .env("NUAGE_MANAGER", MANAGER_URL)
        .stdin(Stdio::null());
    cmd.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        common::stdout(out),
        common::stderr(out)
    );
    common::stdout(out)
}

/// How many jobs are in each state, from `ls`.
fn states(lab: &Lab) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for line in ok(&jobs(lab, &["ls"])).lines().skip(1) {
        let state = line.split_whitespace().nth(2).unwrap().to_owned();
        *m.entry(state).or_default() += 1;
    }
    m
}

fn wait_for(lab: &Lab, what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() > deadline {
            let ls = jobs(lab, &["ls"]);
            let workers = jobs(lab, &["workers"]);
            panic!(
                "timed out waiting for {what}\n{}{}{}",
                common::stdout(&ls),
                common::stderr(&ls),
                common::stdout(&workers)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the children we started, even when an assertion fails midway (the lab's own
/// drop then removes the machines).
struct Children(Vec<Child>);
impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn a_hundred_tasks_complete_once_despite_a_kill_a_pause_and_a_partition() {
    let mut lab = Lab::create(&format!("jobs-{}", std::process::id()), 4).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("manager");
    let mut children = Children(Vec::new());
    children.0.push(spawn_quiet(
        &lab,
        "n1",
        &[
            "jobs",
            "manager",
            "--listen",
            "0.0.0.0:50051",
            "--data",
            data.to_str().unwrap(),
            "--worker-timeout",
            "3s",
            "--max-attempts",
            "10",
        ],
    ));
    let manager = format!("http://{}:50051", lab.addr("n1").unwrap());
    wait_for(&lab, "the manager", Duration::from_secs(30), || {
        jobs(&lab, &["ls"]).status.success()
    });
    for m in ["n2", "n3", "n4"] {
        children.0.push(worker(&lab, m, &manager));
    }
    wait_for(&lab, "three idle workers", Duration::from_secs(30), || {
        ok(&jobs(&lab, &["workers"])).matches(" idle ").count() == 3
    });

    let ids: Vec<u64> = ok(&jobs(
        &lab,
        &[
            "submit",
            "t",
            "--array",
            &TASKS.to_string(),
            "--",
            "sleep",
            "0.4",
        ],
    ))
    .lines()
    .map(|l| l.parse().unwrap())
    .collect();
    assert_eq!(ids.len(), TASKS);

    // Faults while the run goes on: a crash, a hang, a partition.
    let done = |lab: &Lab| states(lab).get("succeeded").copied().unwrap_or(0);
    wait_for(&lab, "some progress", Duration::from_secs(60), || {
        done(&lab) >= 10
    });
    assert!(lab.kill("n2").unwrap() > 0);
    wait_for(&lab, "more progress", Duration::from_secs(60), || {
        done(&lab) >= 20
    });
    assert!(lab.pause("n3").unwrap() > 0);
    std::thread::sleep(Duration::from_secs(1));
    lab.partition(&[vec!["n1", "n2", "n3"], vec!["n4"]])
        .unwrap();
    // Long enough for the manager to declare all three lost (timeout 3 s).
    std::thread::sleep(Duration::from_secs(6));
    let lost = ok(&jobs(&lab, &["workers"]));
    assert_eq!(lost.matches(" lost ").count(), 3, "{lost}");
    // Back: a new worker on the crashed machine, the hung one resumed, the cut healed.
    children.0.push(worker(&lab, "n2", &manager));
    lab.resume("n3").unwrap();
    lab.heal().unwrap();

    wait_for(&lab, "every task to end", Duration::from_secs(180), || {
        done(&lab) + states(&lab).get("failed").copied().unwrap_or(0) == TASKS
    });
    assert_eq!(done(&lab), TASKS, "{:?}", states(&lab));
    // Exactly once per the manager's history: one `finished` per job, and some jobs
    // show how they were taken back from a lost worker.
    let mut requeued = 0;
    for id in &ids {
        let show = ok(&jobs(&lab, &["show", &id.to_string()]));
        let finished = show
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("finished"))
            .count();
        assert_eq!(finished, 1, "{show}");
        assert!(show.contains("state      succeeded"), "{show}");
        if show.contains("requeued") {
            requeued += 1;
        }
    }
    assert!(requeued >= 2, "only {requeued} job(s) were ever requeued");
    // Every worker is back.
    wait_for(
        &lab,
        "three idle workers again",
        Duration::from_secs(30),
        || ok(&jobs(&lab, &["workers"])).matches(" idle ").count() == 3,
    );
}
