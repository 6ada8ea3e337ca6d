//! What finger says about people: gathered from the user database, login records,
//! terminals, the mail spool and the users' own files, and laid out as finger(1) lays
//! it out (BSD finger 0.17, as Debian ships it), so clients see the same report.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::localtime;
use super::passwd::{Account, Gecos, format_phone, read_accounts};
use super::records::{self, Login};

/// Most bytes shown of one user file (`.plan`, `.project`, `.pgpkey`, `.forward`).
pub const MAX_USER_FILE_BYTES: u64 = 64 << 10;
/// finger(1) lays out for an 80-column screen when it answers the network.
const SCREEN_WIDTH: usize = 80;
/// Six months: older logins show the year instead of the time of day.
const HALF_YEAR: i64 = 86_400 * 365 / 2;
/// `/bin/sh` stands in for an empty shell field.
const DEFAULT_SHELL: &str = "/bin/sh";

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

/// The parts of `gmtime(seconds)` finger uses for idle times: day of the year, hours,
/// minutes, seconds.
fn idle_parts(seconds: i64) -> (i64, i64, i64, i64) {
    let mut days = seconds.div_euclid(86_400);
    let rem = seconds.rem_euclid(86_400);
    let mut year = 1970;
    loop {
        let len = if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 {
            366
        } else {
            365
        };
        if days < len {
            break;
        }
        days -= len;
        year += 1;
    }
    (days, rem / 3600, rem % 3600 / 60, rem % 60)
}

fn plural(n: i64, unit: &str) -> String {
    format!("{n} {unit}{} ", if n == 1 { "" } else { "s" })
}

fn long_format(out: &mut String, p: &Person, now: i64) {
    let real = p.gecos.real_name.as_deref().unwrap_or("");
    let shell = if p.account.shell.is_empty() {
        DEFAULT_SHELL
    } else {
        &p.account.shell
    };
    out.push_str(&format!(
        "Login: {:<15}\t\t\tName: {real}\nDirectory: {:<25}\tShell: {shell}\n",
        p.account.name, p.account.dir
    ));
    office_lines(out, &p.gecos);

    let maxlen = p.wheres.iter().map(|w| w.tty.len()).max().unwrap_or(0);
    for w in &p.wheres {
        match w.seen {
            Seen::LoggedIn { idle, tty } => {
                // finger(1) says "messages off" for a terminal it cannot look at too.
                let writable = tty.is_some_and(|t| t.writable);
                out.push_str(&format!(
                    "On since {} on {}",
                    localtime::format(w.login_at, c"%a %b %e %R (%Z)"),
                    w.tty
                ));
                if !w.host.is_empty() {
                    out.push_str(&format!(" from {}", w.host));
                }
                let (days, hours, minutes, seconds) = idle_parts(idle);
                let is_idle = days != 0 || hours != 0 || minutes != 0 || seconds != 0;
                if is_idle {
                    if !w.host.is_empty() {
                        out.push('\n');
                    }
                    out.push_str(&" ".repeat(maxlen - w.tty.len() + 3));
                    if days > 0 {
                        out.push_str(&plural(days, "day"));
                    }
                    if hours > 0 {
                        out.push_str(&plural(hours, "hour"));
                    }
                    if minutes > 0 && days == 0 {
                        out.push_str(&plural(minutes, "minute"));
                    }
                    if seconds > 0 && days == 0 && hours == 0 {
                        out.push_str(&plural(seconds, "second"));
                    }
                    out.push_str("idle");
                }
                if !writable {
                    if is_idle {
                        out.push_str("\n    ");
                    }
                    out.push_str(" (messages off)");
                }
            }
            Seen::LastLogin => {
                if w.login_at == 0 {
                    out.push_str("Never logged in.");
                } else {
                    let fmt = if now - w.login_at < HALF_YEAR {
                        c"%a %b %e %R (%Z)"
                    } else {
                        c"%a %b %e %R %Y (%Z)"
                    };
                    out.push_str(&format!(
                        "Last login {} on {}",
                        localtime::format(w.login_at, fmt),
                        w.tty
                    ));
                    if !w.host.is_empty() {
                        out.push_str(&format!(" from {}", w.host));
                    }
                }
            }
        }
        out.push('\n');
    }

    let dir = Path::new(&p.account.dir);
    show_file(out, dir, ".forward", "Mail forwarded to ");
    match p.mail {
        None => out.push_str("No mail.\n"),
        Some((received, read)) if received > read => {
            out.push_str(&format!(
                "New mail received {}\n     Unread since {}\n",
                localtime::format(received, c"%a %b %e %R %Y (%Z)"),
                localtime::format(read, c"%a %b %e %R %Y (%Z)")
            ));
        }
        Some((_, read)) => out.push_str(&format!(
            "Mail last read {}\n",
            localtime::format(read, c"%a %b %e %R %Y (%Z)")
        )),
    }
    show_file(out, dir, ".pgpkey", "PGP key:\n");
    show_file(out, dir, ".project", "Project:\n");
    if !show_file(out, dir, ".plan", "Plan:\n") {
        out.push_str("No Plan.\n");
    }
}

/// Office and phones, two to a line when they fit (finger's `demi_print`).
fn office_lines(out: &mut String, g: &Gecos) {
    const TAB: usize = 8;
    let mut fields = Vec::new();
    match (&g.office, &g.office_phone) {
        (Some(o), Some(ph)) if o.len() + ph.len() + "Office".len() + 1 + 2 <= 5 * TAB => {
            fields.push(format!("Office: {o}, {}", format_phone(ph)));
        }
        (o, ph) => {
            if let Some(o) = o {
                fields.push(format!("Office: {o}"));
            }
            if let Some(ph) = ph {
                fields.push(format!("Office Phone: {}", format_phone(ph)));
            }
        }
    }
    if let Some(h) = &g.home_phone {
        fields.push(format!("Home Phone: {}", format_phone(h)));
    }
    let mut odd = false;
    let mut last_len = 0usize;
    for field in &fields {
        if odd {
            let maxlen = (5 * TAB).max(last_len);
            if (maxlen / TAB + 1) * TAB + field.len() <= SCREEN_WIDTH {
                while last_len < 4 * TAB {
                    out.push('\t');
                    last_len += TAB;
                }
                out.push_str(&format!("\t{field}\n"));
            } else {
                out.push_str(&format!("\n{field}"));
                odd = !odd;
            }
        } else {
            out.push_str(field);
        }
        odd = !odd;
        last_len = field.len();
    }
    if odd {
        out.push('\n');
    }
}

/// Appends `header` and the file `dir/name` if anyone may read it: a regular file (not
/// a symbolic link), readable by all, in a home directory all may enter. This is what
/// fingerd, running as `nobody`, can show; it keeps a server running as root from
/// disclosing files through links. Returns whether it was shown.
fn show_file(out: &mut String, dir: &Path, name: &str, header: &str) -> bool {
    let Some(bytes) = read_public_file(dir, name) else {
        return false;
    };
    out.push_str(header);
    let text = String::from_utf8_lossy(&bytes);
    out.push_str(&text);
    if !text.ends_with('\n') {
        out.push('\n');
    }
    true
}

/// Whether anyone may reach into `dir`: it and every directory above it are
/// searchable by others (as `nobody` needs to open a file inside).
fn searchable_by_all(dir: &Path) -> bool {
    dir.is_absolute()
        && dir
            .ancestors()
            .all(|d| std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.mode() & 0o001 != 0))
}

fn read_public_file(dir: &Path, name: &str) -> Option<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    if !searchable_by_all(dir) {
        return None;
    }
    let path = dir.join(name);
    let link_meta = std::fs::symlink_metadata(&path).ok()?;
    if !link_meta.file_type().is_file() || link_meta.mode() & 0o004 == 0 {
        return None;
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .ok()?;
    let meta = file.metadata().ok()?;
    // The file opened must be the one checked (no swap in between).
    if meta.dev() != link_meta.dev() || meta.ino() != link_meta.ino() {
        return None;
    }
    let mut bytes = Vec::new();
    file.take(MAX_USER_FILE_BYTES)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// The list of logged-in users, one line per login, sorted by login name.
fn short_format(out: &mut String, people: &mut [Person], now: i64) {
    people.sort_by(|a, b| a.account.name.cmp(&b.account.name));
    let width = |s: &str| s.chars().count();
    let mut maxl = "Login  ".len() + 1;
    let mut maxr = maxl;
    for p in people.iter() {
        maxl = maxl.max(width(&p.account.name));
        maxr = maxr.max(p.gecos.real_name.as_deref().map_or(1, width));
    }
    let space = SCREEN_WIDTH - 50;
    if maxl + maxr > space {
        maxr = space.saturating_sub(maxl);
    }
    if maxl + maxr < space - 2 {
        maxl += 1;
        maxr += 1;
    }
    let cell = |s: &str, w: usize| {
        let cut: String = s.chars().take(w).collect();
        format!("{cut:<w$}")
    };
    out.push_str(&format!(
        "{} {} {}\n",
        cell("Login", maxl),
        cell("Name", maxr),
        " Tty      Idle  Login Time   Office     Office Phone"
    ));
    for p in people.iter() {
        for w in &p.wheres {
            out.push_str(&format!(
                "{} {} ",
                cell(&p.account.name, maxl),
                cell(p.gecos.real_name.as_deref().unwrap_or(""), maxr)
            ));
            if w.login_at == 0 {
                out.push_str("  *     *  No logins   ");
            } else {
                let (logged_in, idle, writable) = match w.seen {
                    // ... but in the short list it stars only a device that says so.
                    Seen::LoggedIn { idle, tty } => (true, idle, tty.is_none_or(|t| t.writable)),
                    Seen::LastLogin => (false, 0, true),
                };
                out.push(if logged_in && !writable { '*' } else { ' ' });
                if w.tty.is_empty() {
                    out.push_str("        ");
                } else {
                    out.push_str(&format!("{} ", cell(&w.tty, 7)));
                }
                if logged_in {
                    let (days, hours, minutes, _) = idle_parts(idle);
                    out.push_str(&if days > 0 {
                        format!("{days:4}d")
                    } else if hours > 0 {
                        format!("{hours:2}:{minutes:02}")
                    } else if minutes > 0 {
                        format!("{minutes:5}")
                    } else {
                        "     ".to_owned()
                    });
                    out.push_str("  ");
                } else {
                    out.push_str("    *  ");
                }
                out.push_str(&localtime::format(w.login_at, c"%b %e"));
                if now - w.login_at >= HALF_YEAR {
                    out.push_str(&localtime::format(w.login_at, c"  %Y"));
                } else {
                    out.push_str(&localtime::format(w.login_at, c" %H:%M"));
                }
            }
            if !w.host.is_empty() {
                out.push_str(&format!(" ({})", w.host));
            } else {
                if let Some(o) = &p.gecos.office {
                    out.push_str(&format!(" {}", cell(o, 10)));
                } else if p.gecos.office_phone.is_some() {
                    out.push_str(&format!(" {}", cell(" ", 10)));
                }
                if let Some(ph) = &p.gecos.office_phone {
                    let ph: String = format_phone(ph).chars().take(14).collect();
                    out.push_str(&format!(" {ph}"));
                }
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests;
