//! `nuage up` as a user runs it: start, answer, stop cleanly, refuse bad input in one line.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn up_answers_and_stops_cleanly_on_sigterm_then_sigint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let data = data.to_str().unwrap();
    let mut node = start_up(&["--api", "127.0.0.1:0", "--data", data, "--name", "t1"]);
    assert!(
        node.stdout_lines[0].contains("node `t1`"),
        "{:?}",
        node.stdout_lines
    );

    let (status, body) = http_get(&node.api, "/v1/node");
    assert_eq!(status, 200);
    let info = json(&body);
    assert_eq!(info["name"], "t1");
    assert_eq!(info["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(info["runs"], 1);
    assert_eq!(info["peers"].as_array().unwrap().len(), 0);
    assert_eq!(info["services"][0]["name"], "api");
    assert_eq!(
        info["services"][0]["endpoints"][0]["address"],
        node.api.as_str()
    );
    assert!(info["uptime_seconds"].as_f64().unwrap() >= 0.0);
    assert!(info["data_dir"].as_str().unwrap().ends_with("/data"));

    let (status, metrics) = http_get(&node.api, "/metrics");
    assert_eq!(status, 200);
    assert!(
        metrics.contains("# TYPE nuage_uptime_seconds gauge"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nuage_api_requests_total{method=\"GET\",code=\"200\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nuage_build_info{node=\"t1\""),
        "{metrics}"
    );

    let (status, body) = http_get(&node.api, "/v1/nothing");
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"]["code"], "not_found");

    // The CLI finds the node through --api and through NUAGE_API.
    let out = run(&["node", "info", "--api", &node.api]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("name      t1"), "{}", stdout(&out));
    let out = nuage()
        .args(["node", "info", "--json"])
        .env("NUAGE_API", format!("http://{}", node.api))
        .output()
        .unwrap();
    assert_eq!(json(&stdout(&out))["name"], "t1");

    signal(&node.child, Signal::SIGTERM);
    let status = wait_exit(&mut node.child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "SIGTERM must stop the node cleanly");

    // The clean stop was recorded: the next start reports no unclean run. SIGINT works too.
    let mut node = start_up(&["--api", "127.0.0.1:0", "--data", data, "--name", "t1"]);
    assert_eq!(json(&http_get(&node.api, "/v1/node").1)["runs"], 2);
    signal(&node.child, Signal::SIGINT);
    assert_eq!(
        wait_exit(&mut node.child, Duration::from_secs(15)).code(),
        Some(0)
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut node.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!err.contains("did not stop cleanly"), "{err}");
    assert!(err.contains("stopped cleanly"), "{err}");
}

#[test]
fn a_killed_node_is_noticed_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let data = data.to_str().unwrap();
    let mut node = start_up(&["--api", "127.0.0.1:0", "--data", data, "--name", "k"]);
    node.child.kill().unwrap();
    node.child.wait().unwrap();
    let mut node = start_up(&["--api", "127.0.0.1:0", "--data", data, "--name", "k"]);
    signal(&node.child, Signal::SIGTERM);
    assert_eq!(
        wait_exit(&mut node.child, Duration::from_secs(15)).code(),
        Some(0)
    );
    let mut err = String::new();
    std::io::Read::read_to_string(&mut node.child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("did not stop cleanly"), "{err}");
}

#[test]
fn config_file_sets_name_peers_and_address() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("nuage.toml");
    std::fs::write(
        &config,
        "name = \"alpha\"\naddress = \"127.0.0.1\"\ndata_dir = \"state\"\n\n[listen]\napi = \"127.0.0.1:0\"\n\n[peers]\nbeta = \"10.213.9.2\"\ngamma = \"10.213.9.3:7171\"\n",
    )
    .unwrap();
    let mut node = start_up(&["--config", config.to_str().unwrap()]);
    let info = json(&http_get(&node.api, "/v1/node").1);
    assert_eq!(info["name"], "alpha");
    assert_eq!(info["peers"][0]["name"], "beta");
    assert_eq!(info["peers"][0]["address"], "10.213.9.2:7070");
    assert_eq!(info["peers"][1]["address"], "10.213.9.3:7171");
    assert!(
        tmp.path().join("state/node.db").exists(),
        "data_dir is relative to the config file"
    );
    signal(&node.child, Signal::SIGTERM);
    assert_eq!(
        wait_exit(&mut node.child, Duration::from_secs(15)).code(),
        Some(0)
    );
}

/// A user mistake: exit status 1 and exactly one line on stderr, no panic.
fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {} stderr: {}",
        stdout(out),
        stderr(out)
    );
    let err = stderr(out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_input_is_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("bad.toml");
    std::fs::write(&config, "name = \"n1\"\n[listen]\napii = \"127.0.0.1:1\"\n").unwrap();
    let err = one_line_error(&run(&["up", "--config", config.to_str().unwrap()]));
    assert!(
        err.contains("bad.toml:3: key `listen.apii`: unknown key"),
        "{err}"
    );

    std::fs::write(&config, "[peers]\nn2 = \"10.0.0.2:99999\"\n").unwrap();
    let err = one_line_error(&run(&[
        "up",
        "--config",
        config.to_str().unwrap(),
        "--name",
        "n1",
    ]));
    assert!(err.contains("bad.toml:2: key `peers.n2`"), "{err}");

    let err = one_line_error(&run(&["up", "--config", "/nonexistent/nuage.toml"]));
    assert!(
        err.contains("/nonexistent/nuage.toml: cannot read it"),
        "{err}"
    );

    let err = one_line_error(&run(&[
        "up",
        "--data",
        "/nonexistent/deeper/data",
        "--api",
        "127.0.0.1:0",
        "--name",
        "x",
    ]));
    assert!(err.contains("does not exist"), "{err}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = tmp.path().join("d");
    let err = one_line_error(&run(&[
        "up",
        "--api",
        &addr,
        "--data",
        data.to_str().unwrap(),
        "--name",
        "x",
    ]));
    assert!(
        err.contains("already in use") && err.contains("--api"),
        "{err}"
    );

    let err = one_line_error(&run(&["up", "--name", "bad name", "--api", "127.0.0.1:0"]));
    assert!(err.contains("--name"), "{err}");

    drop(busy);
    let err = one_line_error(&run(&["node", "info", "--api", &addr]));
    assert!(err.contains("is `nuage up` running"), "{err}");

    // clap's own usage errors: status 2, a message, no panic.
    let out = run(&["up", "--api", "nowhere"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("invalid value"), "{}", stderr(&out));
}

#[test]
fn every_command_answers_help() {
    for args in [
        vec!["--help"],
        vec!["up", "--help"],
        vec!["node", "--help"],
        vec!["node", "info", "--help"],
        vec!["lab", "--help"],
        vec!["lab", "partition", "--help"],
        vec!["lab", "exec", "--help"],
    ] {
        let out = run(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert!(stdout(&out).contains("Usage: nuage"), "{args:?}");
    }
}
