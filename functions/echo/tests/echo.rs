//! echo as a program: every line back, unchanged, then exit at end of input.

use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn lines_come_back_unchanged() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_echo"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"one\ntwo\0\xff\nlast")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"one\ntwo\0\xff\nlast\n");
}
