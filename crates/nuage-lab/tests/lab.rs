//! The lab against the real kernel: needs root, iproute2, nftables and socat (CI installs
//! them). Timing is only ever waited for, with margins of seconds, never asserted.

use std::io::Write;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use nuage_lab::Lab;

/// A lab name unique to this test process (tests run in parallel, one process each).
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn run_with_input(lab: &Lab, machine: &str, program: &str, args: &[&str], input: &str) -> Output {
    let mut cmd = lab.command(machine, program).unwrap();
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Starts socat echo servers (TCP and UDP, port 9000) on `machine`.
fn echo_servers(lab: &Lab, machine: &str) -> Vec<Child> {
    let quiet = |args: &[&str]| {
        let mut cmd = lab.command(machine, "socat").unwrap();
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd.spawn().unwrap()
    };
    vec![
        quiet(&["TCP-LISTEN:9000,reuseaddr,fork", "EXEC:cat"]),
        quiet(&["UDP-RECVFROM:9000,fork", "EXEC:cat"]),
    ]
}

/// Whether `from` gets an echo from `to` over `proto` (tcp or udp) within ~2 s.
fn echoes(lab: &Lab, from: &str, to: &str, proto: &str) -> bool {
    let addr = lab.addr(to).unwrap();
    let target = match proto {
        "tcp" => format!("TCP:{addr}:9000,connect-timeout=2"),
        _ => format!("UDP:{addr}:9000"),
    };
    let out = run_with_input(lab, from, "socat", &["-T", "2", "-", &target], "ping\n");
    text(&out) == "ping"
}

/// Retries a positive check while servers start: true as soon as it holds, within 10 s.
fn eventually(mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn ip_output(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn nft_tables() -> String {
    let out = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn three_machine_lab_is_a_real_network_with_faults() {
    let name = unique("net");
    let mut lab = Lab::create(&name, 3).expect("create lab (are you root?)");
    let subnet = lab.subnet();
    let bridge = lab.bridge();
    let table = format!("nuage-{name}");

    // Each machine: its own hostname, its own address, no default route.
    for m in ["n1", "n2", "n3"] {
        assert_eq!(text(&lab.exec(m, "hostname", &[]).unwrap()), m);
        let addrs = text(
            &lab.exec(m, "ip", &["-4", "-o", "addr", "show", "dev", "eth0"])
                .unwrap(),
        );
        assert!(
            addrs.contains(&format!("{}/24", lab.addr(m).unwrap())),
            "{m}: {addrs}"
        );
        let routes = text(&lab.exec(m, "ip", &["route"]).unwrap());
        assert!(
            !routes.contains("default"),
            "{m} has a default route: {routes}"
        );
    }
    assert_ne!(lab.addr("n1").unwrap(), lab.addr("n2").unwrap());
    assert!(ip_output(&["route", "show", "type", "unreachable"]).contains("10.213.0.0/16"));

    // n1 reaches n3 over TCP and UDP; n3 reaches n1.
    let mut servers = echo_servers(&lab, "n3");
    servers.extend(echo_servers(&lab, "n1"));
    assert!(
        eventually(|| echoes(&lab, "n1", "n3", "tcp")),
        "n1 -> n3 tcp"
    );
    assert!(
        eventually(|| echoes(&lab, "n1", "n3", "udp")),
        "n1 -> n3 udp"
    );
    assert!(
        eventually(|| echoes(&lab, "n3", "n1", "tcp")),
        "n3 -> n1 tcp"
    );
    assert!(
        eventually(|| echoes(&lab, "n2", "n3", "tcp")),
        "n2 -> n3 tcp"
    );

    // {n1} | {n2, n3}: n1 and n3 are cut apart both ways, n2 and n3 are not.
    lab.partition(&[vec!["n1"], vec!["n2", "n3"]]).unwrap();
    assert!(nft_tables().contains(&table));
    assert!(
        !echoes(&lab, "n1", "n3", "tcp"),
        "partition let n1 -> n3 tcp through"
    );
    assert!(
        !echoes(&lab, "n1", "n3", "udp"),
        "partition let n1 -> n3 udp through"
    );
    assert!(
        !echoes(&lab, "n3", "n1", "tcp"),
        "partition let n3 -> n1 tcp through"
    );
    // What must get through is retried, as above: on a loaded machine one exchange may
    // miss socat's 2 s timeout (a datagram has no retransmission).
    assert!(
        eventually(|| echoes(&lab, "n2", "n3", "tcp")),
        "partition cut n2 -> n3"
    );
    assert!(
        eventually(|| echoes(&lab, "n2", "n3", "udp")),
        "partition cut n2 -> n3 udp"
    );
    assert_eq!(lab.partition_sides().unwrap().len(), 2);

    // Heal restores everything.
    lab.heal().unwrap();
    assert!(!nft_tables().contains(&table));
    assert!(
        eventually(|| echoes(&lab, "n1", "n3", "tcp")),
        "heal: n1 -> n3 tcp"
    );
    assert!(
        eventually(|| echoes(&lab, "n1", "n3", "udp")),
        "heal: n1 -> n3 udp"
    );
    assert!(lab.partition_sides().is_none());
    for mut s in servers {
        let _ = s.kill();
        let _ = s.wait();
    }

    // Pause stops a counter, resume continues it, kill ends it.
    let tmp = std::env::temp_dir().join(format!("nuage-lab-counter-{}", std::process::id()));
    let counter_file = tmp.to_str().unwrap().to_owned();
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i > {counter_file}.tmp; mv {counter_file}.tmp {counter_file}; sleep 0.05; done"
    );
    let mut counter = lab.spawn("n2", "sh", &["-c", &script]).unwrap();
    let read = || {
        std::fs::read_to_string(&tmp)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    assert!(
        eventually(|| read().is_some_and(|v| v > 3)),
        "counter never started"
    );
    assert!(lab.pause("n2").unwrap() >= 1);
    std::thread::sleep(Duration::from_millis(500));
    let frozen = read().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(read().unwrap(), frozen, "counter advanced while paused");
    // A stop signal is acted on when each process next runs, so give the kernel a moment.
    assert!(
        eventually(|| lab.processes("n2").unwrap().iter().all(|p| p.stopped)),
        "a process of n2 is still running"
    );
    lab.resume("n2").unwrap();
    assert!(
        eventually(|| read().is_some_and(|v| v > frozen + 3)),
        "counter did not resume"
    );
    assert!(
        eventually(|| lab.processes("n2").unwrap().iter().all(|p| !p.stopped)),
        "a process of n2 is still stopped"
    );
    assert!(lab.kill("n2").unwrap() >= 1);
    let status = counter.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(lab.processes("n2").unwrap().is_empty());
    let _ = std::fs::remove_file(&tmp);

    // Teardown leaves nothing behind.
    let dir = lab.dir();
    lab.down().unwrap();
    let netns = ip_output(&["netns", "list"]);
    assert!(
        !netns.contains(&format!("nuage-{name}-")),
        "namespaces left: {netns}"
    );
    assert!(
        !std::path::Path::new("/sys/class/net")
            .join(&bridge)
            .exists(),
        "bridge {bridge} left"
    );
    let links = ip_output(&["-o", "link"]);
    assert!(
        !links.contains(&format!("{bridge}m")),
        "veths left: {links}"
    );
    assert!(!nft_tables().contains(&table));
    assert!(
        !ip_output(&["route"]).contains(&subnet),
        "route to {subnet} left"
    );
    assert!(!dir.exists(), "lab directory left");
    if Lab::list().unwrap().is_empty() {
        assert!(!ip_output(&["route", "show", "type", "unreachable"]).contains("10.213.0.0/16"));
    }
    // Idempotent: removing it again is fine.
    assert!(!Lab::destroy(&name).unwrap());
}

#[test]
fn labs_coexist_and_stay_apart() {
    let a = Lab::create(&unique("a"), 1).unwrap();
    let b = Lab::create(&unique("b"), 1).unwrap();
    assert_ne!(a.index(), b.index());
    assert_ne!(a.addr("n1").unwrap(), b.addr("n1").unwrap());
    assert!(
        Lab::create(&unique("a"), 1)
            .unwrap_err()
            .to_string()
            .contains("already exists")
    );
    // No route leads from one lab to another.
    let target = format!("TCP:{}:9000,connect-timeout=1", b.addr("n1").unwrap());
    let out = a.exec("n1", "socat", &["-T", "1", "-", &target]).unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unreachable"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn dropping_a_lab_tears_it_down_even_with_processes_running() {
    let name = unique("drop");
    let lab = Lab::create(&name, 2).unwrap();
    let mut sleeper = lab.spawn("n1", "sleep", &["300"]).unwrap();
    // A daemon that escapes its parent is still found through its namespace.
    lab.exec(
        "n2",
        "sh",
        &["-c", "setsid sleep 300 </dev/null >/dev/null 2>&1 &"],
    )
    .unwrap();
    assert!(eventually(|| !lab.processes("n2").unwrap().is_empty()));
    drop(lab);
    let status = sleeper.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!ip_output(&["netns", "list"]).contains(&format!("nuage-{name}-")));
    assert!(Lab::open(&name).is_err());
}

#[test]
fn errors_name_what_is_wrong() {
    let lab = Lab::create(&unique("err"), 1).unwrap();
    let e = lab.exec("n7", "true", &[]).unwrap_err().to_string();
    assert!(e.contains("no machine `n7`") && e.contains("n1"), "{e}");
    let e = Lab::open("nosuchlab").err().unwrap().to_string();
    assert!(e.contains("no lab named `nosuchlab`"), "{e}");
    let e = Lab::create("Bad_Name", 1).err().unwrap().to_string();
    assert!(e.contains("lab name"), "{e}");
    let e = Lab::create(&unique("zero"), 0).err().unwrap().to_string();
    assert!(e.contains("1 to 253"), "{e}");
}
