//! The report's text, laid out as finger(1) lays it out: the long form of one person,
//! and the short list of everyone logged in.

use std::path::Path;

use super::files::read_public_file;
use super::{Person, Seen};
use crate::finger::localtime;
use crate::finger::passwd::{Gecos, format_phone};

/// finger(1) lays out for an 80-column screen when it answers the network.
const SCREEN_WIDTH: usize = 80;
/// Six months: older logins show the year instead of the time of day.
const HALF_YEAR: i64 = 86_400 * 365 / 2;
/// `/bin/sh` stands in for an empty shell field.
const DEFAULT_SHELL: &str = "/bin/sh";

/// The parts of `gmtime(seconds)` finger uses for idle times: day of the year, hours,
/// minutes, seconds.
pub(super) fn idle_parts(seconds: i64) -> (i64, i64, i64, i64) {
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

pub(super) fn long_format(out: &mut String, p: &Person, now: i64) {
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

/// The list of logged-in users, one line per login, sorted by login name.
pub(super) fn short_format(out: &mut String, people: &mut [Person], now: i64) {
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
