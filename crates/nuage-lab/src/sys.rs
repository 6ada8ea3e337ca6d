//! Running the system's network tools (iproute2's `ip`, `nft`) with fixed argument lists,
//! never through a shell.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, anyhow, bail};

/// Runs `program args…`; on failure the error carries the command and its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| missing_tool(program, e))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    bail!(
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// Like [`run`], but a failure whose stderr contains one of `benign` (e.g. "Cannot find
/// device") counts as success: teardown must be idempotent.
pub fn run_tolerant(program: &str, args: &[&str], benign: &[&str]) -> anyhow::Result<()> {
    match run(program, args) {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = e.to_string();
            if benign.iter().any(|b| text.contains(b)) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// Applies an nftables script in one transaction (`nft -f -`).
pub fn nft_apply(script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| missing_tool("nft", e))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(script.as_bytes())
        .context("writing to nft")?;
    let out = child.wait_with_output().context("waiting for nft")?;
    if !out.status.success() {
        bail!(
            "nft failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Whether a network interface of this name exists in the host's namespace.
pub fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn missing_tool(program: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        let package = match program {
            "ip" => "iproute2",
            "nft" => "nftables",
            other => other,
        };
        anyhow!("`{program}` is not installed; install it with `apt-get install {package}`")
    } else {
        anyhow!("cannot run `{program}`: {e}")
    }
}
