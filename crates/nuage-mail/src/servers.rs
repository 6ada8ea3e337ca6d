//! The servers file: which server keeps the mail of which domain.
//!
//! ```text
//! # host:port:domain — one server per line; blank lines and # comments are ignored
//! 10.213.1.1:2525:a
//! 10.213.1.2:2525:b
//! [::1]:2526:n        # IPv6 hosts in brackets
//! ```
//!
//! The domains, sorted by name, are also the processes of the matrix clock: domain `k`
//! of the sorted list is process `k`. Sorting makes the numbering independent of the
//! order of the lines; every server must still be given the same set of domains, which
//! the [`fingerprint`](Directory::fingerprint) sent with every forwarded message checks.

use std::path::Path;

use anyhow::{Context, bail};
use nuage_coord::clock::MAX_MATRIX_PROCESSES;

use crate::address::parse_domain;

/// Most domains in a servers file. The matrix clock has one row and one column per
/// domain and every forwarded message carries it, so its n² counters must stay small:
/// 64 domains make at most 40 KiB of stamp.
pub const MAX_DOMAINS: usize = 64;
const _: () = assert!(MAX_DOMAINS <= MAX_MATRIX_PROCESSES);
/// Largest servers file read, in bytes.
pub const MAX_SERVERS_FILE: u64 = 1 << 20;

/// One line of the servers file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    pub host: String,
    pub port: u16,
    pub domain: String,
    /// Line number in the file (1-based), for messages.
    pub line: usize,
}

/// Every domain and its server, sorted by domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directory {
    entries: Vec<ServerEntry>,
}

impl Directory {
    /// Reads and parses the servers file at `path`.
    pub fn load(path: &Path) -> anyhow::Result<Directory> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read servers file {}", path.display()))?;
        if meta.len() > MAX_SERVERS_FILE {
            bail!(
                "servers file {} is {} bytes, more than the limit of {MAX_SERVERS_FILE}",
                path.display(),
                meta.len()
            );
        }
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read servers file {}", path.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("servers file {} is not UTF-8 text", path.display()))?;
        Directory::parse(&text, &path.display().to_string())
    }

    /// Parses the text of a servers file; `source` names it in errors, which also give
    /// the line number.
    pub fn parse(text: &str, source: &str) -> anyhow::Result<Directory> {
        let mut entries: Vec<ServerEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let content = raw.split('#').next().unwrap_or_default().trim();
            if content.is_empty() {
                continue;
            }
            let entry = parse_line(content, line)
                .map_err(|why| anyhow::anyhow!("servers file {source} line {line}: {why}"))?;
            if let Some(first) = entries.iter().find(|e| e.domain == entry.domain) {
                bail!(
                    "servers file {source} line {line}: domain `{}` is already served by line {}",
                    entry.domain,
                    first.line
                );
            }
            if entries.len() == MAX_DOMAINS {
                bail!("servers file {source} line {line}: more than {MAX_DOMAINS} domains");
            }
            entries.push(entry);
        }
        if entries.is_empty() {
            bail!("servers file {source} lists no server (lines of the form host:port:domain)");
        }
        entries.sort_by(|a, b| a.domain.cmp(&b.domain));
        Ok(Directory { entries })
    }

    /// Number of domains (processes of the matrix clock).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The matrix-clock process number of `domain`.
    pub fn index(&self, domain: &str) -> Option<usize> {
        self.entries
            .binary_search_by(|e| e.domain.as_str().cmp(domain))
            .ok()
    }

    pub fn entry(&self, domain: &str) -> Option<&ServerEntry> {
        self.index(domain).map(|i| &self.entries[i])
    }

    /// The domain of process `i`.
    pub fn domain(&self, i: usize) -> &str {
        &self.entries[i].domain
    }

    pub fn entries(&self) -> &[ServerEntry] {
        &self.entries
    }

    /// The domains, comma-separated (for messages).
    pub fn domain_list(&self) -> String {
        let names: Vec<&str> = self.entries.iter().map(|e| e.domain.as_str()).collect();
        names.join(", ")
    }

    /// A short fingerprint of the set of domains (FNV-1a, 64 bits, in hex): two servers
    /// number the matrix clock the same way iff their fingerprints agree.
    pub fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for e in &self.entries {
            for b in e.domain.bytes().chain(std::iter::once(b'\n')) {
                hash ^= u64::from(b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        format!("{hash:016x}")
    }
}

fn parse_line(content: &str, line: usize) -> Result<ServerEntry, String> {
    let shape = || format!("`{content}` is not of the form host:port:domain");
    let mut parts = content.rsplitn(3, ':');
    let domain = parts.next().ok_or_else(shape)?.trim();
    let port = parts.next().ok_or_else(shape)?.trim();
    let host = parts.next().ok_or_else(shape)?.trim();
    if host.is_empty() || host.chars().any(char::is_whitespace) {
        return Err(format!("{}: the host is empty or has spaces", shape()));
    }
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.len() > crate::address::MAX_DOMAIN {
        return Err(format!(
            "the host is longer than {} bytes",
            crate::address::MAX_DOMAIN
        ));
    }
    if bare.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(format!(
            "`{content}`: write an IPv6 host in brackets, e.g. [::1]:2525:{domain}"
        ));
    }
    let port = match port.parse::<u16>() {
        Ok(p) if p > 0 => p,
        _ => return Err(format!("`{port}` is not a port number (1 to 65535)")),
    };
    let domain = parse_domain(domain)?;
    Ok(ServerEntry {
        host: bare.to_owned(),
        port,
        domain,
        line,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_comments_and_order() {
        let text = "# the lab\n\n10.0.0.3:2525:n\n  10.0.0.1:2525:A # Afida's\n[::1]:2600:b\nlocalhost:1:c.example\n";
        let d = Directory::parse(text, "f").unwrap();
        assert_eq!(d.len(), 4);
        assert_eq!(d.domain_list(), "a, b, c.example, n");
        assert_eq!(d.index("a"), Some(0));
        assert_eq!(d.index("n"), Some(3));
        assert_eq!(d.index("zz"), None);
        let b = d.entry("b").unwrap();
        assert_eq!((b.host.as_str(), b.port, b.line), ("::1", 2600, 5));
        // The numbering and the fingerprint do not depend on the order of the lines.
        let shuffled = "[::1]:2600:b\nlocalhost:1:c.example\n10.0.0.1:2525:a\n10.0.0.3:2525:n\n";
        let e = Directory::parse(shuffled, "g").unwrap();
        assert_eq!(e.fingerprint(), d.fingerprint());
        assert_eq!(e.index("n"), Some(3));
        let fewer = Directory::parse("h:1:a\nh:2:b\n", "h").unwrap();
        assert_ne!(fewer.fingerprint(), d.fingerprint());
    }

    #[test]
    fn errors_name_the_file_and_line() {
        for (text, line, why) in [
            ("h:1:a\nnonsense\n", 2, "not of the form host:port:domain"),
            ("h:1:a\n\n# c\nh:x:b\n", 4, "`x` is not a port number"),
            ("h:0:a\n", 1, "`0` is not a port number"),
            ("h:70000:a\n", 1, "`70000` is not a port"),
            ("h:1:a\nh:2:A\n", 2, "already served by line 1"),
            ("h:1:a_b\n", 1, "not a domain name"),
            ("::1:25:a\n", 1, "in brackets"),
            (":25:a\n", 1, "host is empty"),
            ("h:25:\n", 1, "domain is empty"),
            (
                &format!("{}:25:a\n", "h".repeat(300)),
                1,
                "host is longer than 253",
            ),
        ] {
            let err = Directory::parse(text, "servers.txt")
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("servers file servers.txt line {line}: ")),
                "{text:?}: {err}"
            );
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let err = Directory::parse("# only comments\n\n", "f").unwrap_err();
        assert!(err.to_string().contains("lists no server"), "{err}");
    }

    #[test]
    fn missing_and_oversized_files_are_explained() {
        let err = Directory::load(Path::new("/nonexistent/servers")).unwrap_err();
        assert!(
            format!("{err:#}").contains("cannot read servers file"),
            "{err:#}"
        );
        let tmp = tempfile::tempdir().unwrap();
        let big = tmp.path().join("big");
        std::fs::write(&big, vec![b'#'; MAX_SERVERS_FILE as usize + 1]).unwrap();
        let err = Directory::load(&big).unwrap_err().to_string();
        assert!(err.contains("more than the limit"), "{err}");
    }
}
