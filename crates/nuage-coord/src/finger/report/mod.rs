//! What finger says about people: gathered from the user database, login records,
//! terminals, the mail spool and the users' own files, and laid out as finger(1) lays
//! it out (BSD finger 0.17, as Debian ships it), so clients see the same report.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::passwd::{Account, Gecos, read_accounts};
use super::records::{self, Login};

mod files;
mod layout;

pub use files::MAX_USER_FILE_BYTES;
use layout::{long_format, short_format};

/// Where the information comes from (the system's files by default).
#[derive(Debug, Clone)]
pub struct Sources {
    pub passwd: PathBuf,
    pub utmp: PathBuf,
    pub wtmp: PathBuf,
    pub lastlog: PathBuf,
    /// Terminals are `dev/<line>`; their access time is the idle time.
    pub dev: PathBuf,
    /// Mailboxes are `mail_dir/<login>`.
    pub mail_dir: PathBuf,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            passwd: "/etc/passwd".into(),
            utmp: "/var/run/utmp".into(),
            wtmp: "/var/log/wtmp".into(),
            lastlog: "/var/log/lastlog".into(),
            dev: "/dev".into(),
            mail_dir: "/var/mail".into(),
        }
    }
}

/// A finger request, once parsed: long format or not, and the names asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Request {
    /// `/W`: the long format even for the list of logged-in users.
    pub long: bool,
    /// Empty: everyone logged in.
    pub names: Vec<String>,
}

/// The answer, with plain `\n` line ends (the server turns them into CRLF).
#[derive(Debug, Clone)]
pub struct Report {
    pub text: String,
    /// Names that matched nobody.
    pub unknown: Vec<String>,
    /// How many people the report describes.
    pub people: usize,
}

#[derive(Debug, Clone)]
enum Seen {
    /// `tty: None` when the terminal has no device to look at (a record naming
    /// something that is gone): no idle time then.
    LoggedIn {
        idle: i64,
        tty: Option<Tty>,
    },
    LastLogin,
}

/// What a terminal device says: how long since it was used, and whether others may
/// write to it (`mesg y`).
#[derive(Debug, Clone, Copy)]
struct Tty {
    writable: bool,
}

#[derive(Debug, Clone)]
struct Where {
    seen: Seen,
    tty: String,
    host: String,
    login_at: i64,
}

#[derive(Debug)]
struct Person {
    account: Account,
    gecos: Gecos,
    wheres: Vec<Where>,
    /// (received, read) times of a non-empty mailbox.
    mail: Option<(i64, i64)>,
}

/// Answers `request` from `sources` as of `now` (seconds since the epoch).
pub fn report(request: &Request, sources: &Sources, now: i64) -> anyhow::Result<Report> {
    let accounts = read_accounts(&sources.passwd)?;
    let utmp = records::read_utmp(&sources.utmp).unwrap_or_else(|e| {
        tracing::warn!("cannot read {}: {e}", sources.utmp.display());
        Vec::new()
    });
    let mut people: Vec<Person> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut unknown = Vec::new();
    let long;
    if request.names.is_empty() {
        long = request.long;
        for login in &utmp {
            let i = match index.get(&login.user) {
                Some(&i) => i,
                None => {
                    let Some(account) = accounts.iter().find(|a| a.name == login.user) else {
                        continue;
                    };
                    if hidden(account) {
                        continue;
                    }
                    index.insert(account.name.clone(), people.len());
                    people.push(person(account, sources));
                    people.len() - 1
                }
            };
            people[i].wheres.push(logged_in(login, sources, now));
        }
        if long {
            for p in &mut people {
                add_last_login(p, sources);
            }
        }
    } else {
        long = true;
        let mut used = vec![false; request.names.len()];
        for account in &accounts {
            for (i, name) in request.names.iter().enumerate() {
                if account.matches(name) && !hidden(account) {
                    used[i] = true;
                    if !index.contains_key(&account.name) {
                        index.insert(account.name.clone(), people.len());
                        people.push(person(account, sources));
                    }
                }
            }
        }
        unknown = request
            .names
            .iter()
            .zip(&used)
            .filter(|(_, u)| !**u)
            .map(|(n, _)| n.clone())
            .collect();
        for login in &utmp {
            if let Some(&i) = index.get(&login.user) {
                people[i].wheres.push(logged_in(login, sources, now));
            }
        }
        for p in &mut people {
            add_last_login(p, sources);
        }
    }

    let mut text = String::new();
    for name in &unknown {
        text.push_str(&format!("finger: {name}: no such user.\n"));
    }
    if request.names.is_empty() && people.is_empty() {
        text.push_str("No one logged on.\n");
    } else if long {
        for (i, p) in people.iter().enumerate() {
            if i > 0 {
                text.push('\n');
            }
            long_format(&mut text, p, now);
        }
    } else {
        short_format(&mut text, &mut people, now);
    }
    Ok(Report {
        text,
        unknown,
        people: people.len(),
    })
}

/// A user with `~/.nofinger` is invisible to network queries.
fn hidden(account: &Account) -> bool {
    Path::new(&account.dir).join(".nofinger").exists()
}

fn person(account: &Account, sources: &Sources) -> Person {
    let mail = std::fs::metadata(sources.mail_dir.join(&account.name))
        .ok()
        .filter(|m| m.len() != 0)
        .map(|m| (m.mtime(), m.atime()));
    Person {
        gecos: account.gecos(),
        account: account.clone(),
        wheres: Vec::new(),
        mail,
    }
}

fn logged_in(login: &Login, sources: &Sources, now: i64) -> Where {
    // A line that climbs out of the device directory is not looked at.
    let device = if login.line.split('/').any(|c| c == "..") {
        None
    } else {
        std::fs::metadata(sources.dev.join(&login.line)).ok()
    };
    let (idle, tty) = match device {
        // An X display (`:0`): finger(1) does not look for a device, and calls it
        // not writable.
        _ if login.line.starts_with(':') => (0, Some(Tty { writable: false })),
        Some(m) => (
            (now - m.atime()).max(0),
            Some(Tty {
                writable: m.mode() & 0o220 == 0o220,
            }),
        ),
        None => (0, None),
    };
    Where {
        seen: Seen::LoggedIn { idle, tty },
        tty: login.line.clone(),
        host: login.host.clone(),
        login_at: login.time,
    }
}

/// Adds the last login when finger(1) would show it: when the user is not logged in,
/// or when it is later than a current login and on another terminal. It comes from
/// lastlog, or (where lastlog is not kept) from the latest login in wtmp.
fn add_last_login(p: &mut Person, sources: &Sources) {
    let last = records::last_login(
        &sources.lastlog,
        &sources.wtmp,
        p.account.uid,
        &p.account.name,
    );
    let current = || {
        p.wheres
            .iter()
            .filter(|w| matches!(w.seen, Seen::LoggedIn { .. }))
    };
    let show = match &last {
        _ if p.wheres.is_empty() => true,
        None => false,
        Some(l) => current().any(|w| w.login_at < l.time) && !current().any(|w| w.tty == l.line),
    };
    if show {
        let (tty, host, login_at) = last.map_or((String::new(), String::new(), 0), |l| {
            (l.line, l.host, l.time)
        });
        p.wheres.push(Where {
            seen: Seen::LastLogin,
            tty,
            host,
            login_at,
        });
    }
}

#[cfg(test)]
mod tests;
