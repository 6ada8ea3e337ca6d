//! The hosts file: one host per line; blank lines and `#` comments are ignored; a line may
//! be repeated to start several processes on one host.

use anyhow::bail;

/// Most processes one run may start.
pub const MAX_PROCESSES: usize = 256;
/// Longest host name accepted (a DNS name is at most 253 bytes; `user@` may precede it).
pub const MAX_HOST: usize = 300;

/// One process to start: the host it runs on and the line that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostLine {
    pub line: usize,
    pub host: String,
}

/// Parses a hosts file; `origin` names it in errors (e.g. its path).
pub fn parse(text: &str, origin: &str) -> anyhow::Result<Vec<HostLine>> {
    let mut hosts = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split('#').next().unwrap_or("").trim();
        if content.is_empty() {
            continue;
        }
        if content.split_whitespace().count() > 1 {
            bail!("{origin}:{line}: `{content}` has several words; give one host per line");
        }
        if content.len() > MAX_HOST {
            bail!("{origin}:{line}: host name longer than {MAX_HOST} bytes");
        }
        let ok = |c: char| c.is_ascii_alphanumeric() || "-._@:[]".contains(c);
        if let Some(bad) = content.chars().find(|c| !ok(*c)) {
            bail!("{origin}:{line}: `{content}` is not a host name (character {bad:?})");
        }
        if content.starts_with('-') {
            bail!("{origin}:{line}: `{content}` is not a host name (starts with `-`)");
        }
        if hosts.len() == MAX_PROCESSES {
            bail!("{origin}:{line}: more than {MAX_PROCESSES} processes");
        }
        hosts.push(HostLine {
            line,
            host: content.to_owned(),
        });
    }
    if hosts.is_empty() {
        bail!("{origin}: no hosts (one per line; `#` starts a comment)");
    }
    Ok(hosts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blanks_and_repeats() {
        let hosts = parse("# lab\nn1\n\n  n2  # second\nn1\n", "h").unwrap();
        let names: Vec<_> = hosts.iter().map(|h| (h.line, h.host.as_str())).collect();
        assert_eq!(names, vec![(2, "n1"), (4, "n2"), (5, "n1")]);
    }

    #[test]
    fn errors_name_the_line() {
        let err = parse("n1\nn2 n3\n", "hosts.txt").unwrap_err().to_string();
        assert!(err.starts_with("hosts.txt:2:"), "{err}");
        let err = parse("n1\n\nn$(rm)\n", "f").unwrap_err().to_string();
        assert!(err.starts_with("f:3:"), "{err}");
        let err = parse("-oProxyCommand=x\n", "f").unwrap_err().to_string();
        assert!(err.starts_with("f:1:"), "{err}");
        assert!(parse("# nothing\n\n", "f").is_err());
        let many = "n1\n".repeat(MAX_PROCESSES + 1);
        let err = parse(&many, "f").unwrap_err().to_string();
        assert!(err.contains(&format!("f:{}:", MAX_PROCESSES + 1)), "{err}");
        assert!(parse("user@host.example\n[::1]\n", "f").is_ok());
    }
}
