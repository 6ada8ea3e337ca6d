//! The user database: `/etc/passwd` lines and the GECOS field.

use std::path::Path;

use anyhow::{Context, bail};

/// Largest passwd file read.
pub const MAX_PASSWD_BYTES: u64 = 16 << 20;

/// One line of the passwd file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gecos: String,
    pub dir: String,
    pub shell: String,
}

/// The GECOS field's four comma-separated parts, as finger(1) reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gecos {
    /// With each `&` replaced by the login name, capitalised.
    pub real_name: Option<String>,
    pub office: Option<String>,
    pub office_phone: Option<String>,
    pub home_phone: Option<String>,
}

/// Reads every well-formed account of a passwd file, in file order. Lines that are not
/// `name:password:uid:gid:gecos:dir:shell` (and NIS `+`/`-` lines) are skipped, as
/// getpwent(3) skips them.
pub fn read_accounts(path: &Path) -> anyhow::Result<Vec<Account>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_PASSWD_BYTES {
        bail!("{} is larger than {MAX_PASSWD_BYTES} bytes", path.display());
    }
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(parse_accounts(&String::from_utf8_lossy(&bytes)))
}

pub fn parse_accounts(text: &str) -> Vec<Account> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Account> {
    if line.starts_with('+') || line.starts_with('-') || line.starts_with('#') {
        return None;
    }
    let fields: Vec<&str> = line.split(':').collect();
    if fields.len() != 7 || fields[0].is_empty() {
        return None;
    }
    Some(Account {
        name: fields[0].to_owned(),
        uid: fields[2].parse().ok()?,
        gecos: fields[4].to_owned(),
        dir: fields[5].to_owned(),
        shell: fields[6].to_owned(),
    })
}

impl Account {
    /// The GECOS parts. A leading `*` is skipped; empty parts are absent.
    pub fn gecos(&self) -> Gecos {
        let g = self.gecos.strip_prefix('*').unwrap_or(&self.gecos);
        let mut parts = g.split(',').map(|p| (!p.is_empty()).then(|| p.to_owned()));
        Gecos {
            real_name: parts.next().flatten().map(|n| self.expand_ampersand(&n)),
            office: parts.next().flatten(),
            office_phone: parts.next().flatten(),
            home_phone: parts.next().flatten(),
        }
    }

    fn expand_ampersand(&self, name: &str) -> String {
        let mut login = self.name.clone();
        if let Some(first) = login.get(0..1) {
            let upper = first.to_ascii_uppercase();
            login.replace_range(0..1, &upper);
        }
        name.replace('&', &login)
    }

    /// Whether a finger query word names this account, as finger(1) matches without
    /// `-m`: its login exactly, or one word of its real name in any case — except the
    /// login itself in another case (`ALICE` names nobody called `alice`, even if her
    /// real name is `Alice …`). finger(1) folds case in ASCII only; this folds every
    /// letter, so `émile` finds `Émile`.
    pub fn matches(&self, word: &str) -> bool {
        if self.name == word {
            return true;
        }
        if self.name.to_lowercase() == word.to_lowercase() {
            return false;
        }
        let Some(real) = self.gecos().real_name else {
            return false;
        };
        let word = word.to_lowercase();
        real.split([' ', '\t'])
            .filter(|w| !w.is_empty())
            .any(|w| w.to_lowercase() == word)
    }
}

/// How finger(1) prints a phone number: digits only get dashes by their count
/// (`5551234567` → `555-123-4567`, `1234` → `x1234`); anything else as written.
pub fn format_phone(num: &str) -> String {
    if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
        return num.to_owned();
    }
    let d = num.as_bytes();
    let s =
        |r: std::ops::Range<usize>| std::str::from_utf8(&d[r]).expect("ASCII digits").to_owned();
    match d.len() {
        11 => format!("+{}-{}-{}-{}", s(0..1), s(1..4), s(4..7), s(7..11)),
        10 => format!("{}-{}-{}", s(0..3), s(3..6), s(6..10)),
        7 => format!("{}-{}", s(0..3), s(3..7)),
        5 => format!("x{}-{}", s(0..1), s(1..5)),
        4 => format!("x{}", s(0..4)),
        _ => num.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/bash
alice:x:1001:1001:Alice Liddell,Room 12,555-1234,5559876:/home/alice:/bin/bash
bob:x:1002:1002:& Builder:/home/bob:/bin/sh
broken line
carol:x:1003:1003:Carol,,5551234567,:/home/carol:
+nis::::::
erin:x:1005:1005:*Erin Liddell,,,:/home/erin:/bin/bash
";

    #[test]
    fn parses_accounts_and_skips_bad_lines() {
        let a = parse_accounts(PASSWD);
        let names: Vec<&str> = a.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["root", "alice", "bob", "carol", "erin"]);
        assert_eq!(a[1].uid, 1001);
        assert_eq!(a[3].shell, "");
    }

    #[test]
    fn gecos_parts_keep_their_position() {
        let a = parse_accounts(PASSWD);
        let alice = a[1].gecos();
        assert_eq!(alice.real_name.as_deref(), Some("Alice Liddell"));
        assert_eq!(alice.office.as_deref(), Some("Room 12"));
        assert_eq!(alice.home_phone.as_deref(), Some("5559876"));
        assert_eq!(a[2].gecos().real_name.as_deref(), Some("Bob Builder"));
        let carol = a[3].gecos();
        assert_eq!(carol.office, None);
        assert_eq!(carol.office_phone.as_deref(), Some("5551234567"));
        assert_eq!(a[4].gecos().real_name.as_deref(), Some("Erin Liddell"));
    }

    #[test]
    fn matching_is_by_login_or_real_name_word() {
        let a = parse_accounts(PASSWD);
        assert!(a[1].matches("alice"));
        // Logins are case-sensitive (as getpwnam); real-name words are not, but the
        // login in another case is not taken for a real-name word.
        assert!(!a[1].matches("ALICE") && !a[1].matches("Alice"));
        assert!(!a[2].matches("Bob") && a[2].matches("BUILDER"));
        let yy = &parse_accounts("yy:x:7:7:&-san Alice:/:/bin/sh\n")[0];
        assert!(yy.matches("ALICE") && yy.matches("yy-SAN"));
        assert!(a[1].matches("liddell") && a[1].matches("LIDDELL"));
        assert!(a[4].matches("liddell"));
        assert!(a[2].matches("bob") && a[2].matches("builder"));
        assert!(!a[1].matches("lid"));
    }

    #[test]
    fn phones_are_formatted_like_finger() {
        assert_eq!(format_phone("5551234567"), "555-123-4567");
        assert_eq!(format_phone("15551234567"), "+1-555-123-4567");
        assert_eq!(format_phone("5551234"), "555-1234");
        assert_eq!(format_phone("12345"), "x1-2345");
        assert_eq!(format_phone("1234"), "x1234");
        assert_eq!(format_phone("555-1234"), "555-1234");
        assert_eq!(format_phone("123"), "123");
    }
}
