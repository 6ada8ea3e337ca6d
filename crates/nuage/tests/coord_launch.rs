//! `nuage launch`: programs started through daemonized agents, locally and in lab machines
//! (as root; CI runs as root); statuses, logs, stopping them all, and errors.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

fn hosts_file(dir: &Path, hosts: &[&str]) -> String {
    let path = dir.join("hosts");
    std::fs::write(&path, format!("# hosts\n{}\n", hosts.join("\n"))).unwrap();
    path.display().to_string()
}

#[test]
fn local_programs_report_their_status_and_log_to_their_own_file() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["a", "b", "c"]);
    let logs = dir.path().join("logs");
    // Each program prints its number, the launch size, its parent (the agent) and the
    // agent's session id: a daemonized agent leads its own session.
    let script = "echo \"index $NUAGE_LAUNCH_INDEX of $NUAGE_LAUNCH_SIZE parent $PPID session $(cut -d' ' -f6 /proc/$PPID/stat)\"";
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        script,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let agents = launch_table(&text);
    assert_eq!(agents.len(), 3, "{text}");
    for (i, host, pid) in &agents {
        let log = std::fs::read_to_string(logs.join(format!("{i}-{host}.log"))).unwrap();
        let expected = format!("index {i} of 3 parent {pid} session {pid}");
        assert!(log.contains(&expected), "{expected} not in {log}");
    }
    assert_eq!(text.matches(" exit 0 ").count(), 3, "{text}");
    // A failing program is reported, and the launch fails.
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "exit $NUAGE_LAUNCH_INDEX",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(" exit 2 "), "{}", stdout(&out));
    assert!(stderr(&out).contains("2 of 3 programs did not exit with status 0"));
}

#[test]
fn timeout_stops_every_program_and_agent() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["a", "a", "b"]);
    let logs = dir.path().join("logs");
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        logs.to_str().unwrap(),
        "--timeout",
        "1",
        "--",
        "sleep",
        "300",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        stderr(&out).contains("3 of 3 programs were stopped"),
        "{}",
        stderr(&out)
    );
    let program_pids: Vec<u32> = text
        .lines()
        .skip_while(|l| !header(l, &["PROCESS", "HOST", "PID", "RESULT", "LOG"]))
        .skip(1)
        .map(|l| l.split_whitespace().nth(2).unwrap().parse().unwrap())
        .collect();
    assert_eq!(program_pids.len(), 3, "{text}");
    // Nothing is left running: neither the programs nor the agents.
    let mut all: Vec<u32> = program_pids;
    all.extend(launch_table(&text).iter().map(|a| a.2));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for pid in all {
        let stat = format!("/proc/{pid}/stat");
        while std::fs::read_to_string(&stat).is_ok_and(|s| !s.contains(") Z ")) {
            assert!(std::time::Instant::now() < deadline, "pid {pid} still runs");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_program_that_cannot_run_is_an_error_naming_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["a", "b"]);
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--log-dir",
        dir.path().join("l").to_str().unwrap(),
        "--",
        "/nonexistent/program",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("cannot run `/nonexistent/program`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn lab_programs_run_in_the_machines_their_lines_name() {
    let name = format!("ln-{}", std::process::id());
    let lab = nuage_lab::Lab::create(&name, 3).expect("create lab (needs root)");
    let dir = tempfile::tempdir().unwrap();
    let hosts = hosts_file(dir.path(), &["n3", "n1", "n3"]);
    let logs = dir.path().join("logs");
    let out = run(&[
        "launch",
        "--hosts",
        &hosts,
        "--via",
        "lab",
        "--lab",
        &name,
        "--log-dir",
        logs.to_str().unwrap(),
        "--",
        "hostname",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (i, host) in ["n3", "n1", "n3"].iter().enumerate() {
        let log = std::fs::read_to_string(logs.join(format!("{i}-{host}.log"))).unwrap();
        assert!(log.lines().any(|l| l == *host), "{log}");
    }
    lab.down().unwrap();
}

/// `--via ssh` through the real OpenSSH: sshd (Debian's openssh-server) runs in each lab
/// machine with keys generated for this test; the launcher goes through the ssh client.
#[test]
fn lab_launch_and_ring_through_real_sshd() {
    let name = format!("ss-{}", std::process::id());
    let lab = nuage_lab::Lab::create(&name, 3).expect("create lab (needs root)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let keygen = |file: &str| {
        let out = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(d.join(file))
            .output()
            .expect("ssh-keygen (openssh-client)");
        assert!(out.status.success(), "{}", stderr(&out));
    };
    keygen("host_key");
    keygen("id");
    std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).unwrap();
    // sshd's privilege separation directory (the package's service creates it).
    std::fs::create_dir_all("/run/sshd").unwrap();
    let sshd_config = d.join("sshd_config");
    std::fs::write(
        &sshd_config,
        format!(
            "Port 22\nListenAddress 0.0.0.0\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile none\n",
            d.join("host_key").display(),
            d.join("authorized_keys").display()
        ),
    )
    .unwrap();
    let ssh_config = d.join("ssh_config");
    std::fs::write(
        &ssh_config,
        format!(
            "Host *\n  User root\n  IdentityFile {}\n  IdentitiesOnly yes\n  \
             StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n",
            d.join("id").display()
        ),
    )
    .unwrap();
    let mut sshds = Vec::new();
    for m in ["n1", "n2", "n3"] {
        let mut cmd = lab.command(m, "/usr/sbin/sshd").unwrap();
        cmd.arg("-D").arg("-e").arg("-f").arg(&sshd_config);
        cmd.stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        sshds.push(cmd.spawn().expect("sshd (openssh-server)"));
    }
    let addrs: Vec<String> = ["n1", "n2", "n3", "n2"]
        .iter()
        .map(|m| lab.addr(m).unwrap().to_string())
        .collect();
    let hosts = hosts_file(d, &addrs.iter().map(String::as_str).collect::<Vec<_>>());
    let nuage_bin = env!("CARGO_BIN_EXE_nuage");
    let advertise = lab.host_addr().to_string();
    let ssh_args = |logs: &str| {
        vec![
            "--hosts".to_owned(),
            hosts.clone(),
            "--via".into(),
            "ssh".into(),
            "--ssh-config".into(),
            ssh_config.display().to_string(),
            "--advertise".into(),
            advertise.clone(),
            "--remote-nuage".into(),
            nuage_bin.into(),
            "--log-dir".into(),
            d.join(logs).display().to_string(),
        ]
    };
    // sshd needs a moment to listen: retry the first launch for a few seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let out = loop {
        let mut args = vec!["launch".to_owned()];
        args.extend(ssh_args("launch"));
        args.extend(["--".into(), "hostname".into()]);
        let out = nuage().args(&args).output().unwrap();
        if out.status.success() || std::time::Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    for (i, m) in ["n1", "n2", "n3", "n2"].iter().enumerate() {
        let log = std::fs::read_to_string(d.join("launch").join(format!("{i}-{}.log", addrs[i])))
            .unwrap();
        assert!(log.lines().any(|l| l == *m), "{log}");
    }
    // A ring and an election over ssh-launched processes.
    let mut args = vec!["ring".to_owned()];
    args.extend(ssh_args("ring"));
    let out = nuage().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("the pid message came back"),
        "{}",
        stdout(&out)
    );
    let mut args = vec!["election".to_owned()];
    args.extend(ssh_args("election"));
    args.extend(["--initiators".into(), "4".into()]);
    let out = nuage().args(&args).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("; N = 4\n"), "{}", stdout(&out));
    // An unreachable host: sshd stops on n3. The launch fails naming the line, and the
    // processes already started on n1 and n2 do not stay: they find no launcher and exit.
    let _ = sshds[2].kill();
    let _ = sshds[2].wait();
    let hosts = hosts_file(
        d,
        &addrs[..3].iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let mut args = vec!["launch".to_owned()];
    args.extend(ssh_args("unreachable"));
    args[2] = hosts;
    args.extend(["--".into(), "sleep".into(), "300".into()]);
    let out = nuage().args(&args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!(
            "nuage: error: line 4: cannot start a process on {}",
            addrs[2]
        )),
        "{err}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    for m in ["n1", "n2"] {
        while lab
            .processes(m)
            .unwrap()
            .iter()
            .any(|p| p.command.starts_with("nuage") || p.command == "sleep")
        {
            assert!(
                std::time::Instant::now() < deadline,
                "{m}: {:?}",
                lab.processes(m)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for mut s in sshds {
        let _ = s.kill();
        let _ = s.wait();
    }
    lab.down().unwrap();
}
