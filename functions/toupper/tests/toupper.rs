//! toupper as a program: its output format and its end-of-input behaviour.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn toupper(delay_ms: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_toupper"))
        .env("TOUPPER_DELAY_MS", delay_ms)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn two_lines_then_exit_at_end_of_input() {
    let mut child = toupper("0");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello22\nbonjour12\n")
        .unwrap(); // stdin dropped: end of input
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text:?}");
    let host = hostname();
    for (line, want) in lines.iter().zip(["HELLO22", "BONJOUR12"]) {
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields.len(), 3, "{line}");
        assert_eq!(fields[0], host);
        assert!(fields[1].parse::<u32>().is_ok(), "{line}");
        assert_eq!(fields[2], want);
    }
}

#[test]
fn answers_each_line_as_it_comes_and_keeps_other_bytes() {
    let mut child = toupper("0");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    stdin.write_all(b"a\0b\xffc-\xc3\xa9\n").unwrap();
    stdin.flush().unwrap();
    // The answer arrives while stdin is still open: the function flushes per line.
    let mut buf = [0u8; 256];
    let n = stdout.read(&mut buf).unwrap();
    let answer = &buf[..n];
    assert!(
        answer.ends_with(b" A\0B\xffC-\xc3\xa9\n"),
        "{:?}",
        String::from_utf8_lossy(answer)
    );
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

#[test]
fn waits_the_delay_before_answering() {
    let mut child = toupper("300");
    let started = Instant::now();
    child.stdin.take().unwrap().write_all(b"x\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(String::from_utf8(out.stdout).unwrap().ends_with(" X\n"));
}

#[test]
fn bad_delay_is_refused() {
    let child = toupper("soon");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
