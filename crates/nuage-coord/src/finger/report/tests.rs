//! The report against a fake system: a passwd file, login records, terminals and home
//! directories in a temporary directory. (The lab test compares with finger(1) itself.)

use std::os::unix::fs::PermissionsExt;

use super::layout::idle_parts;
use super::*;
use crate::finger::localtime;
use crate::finger::records::{encode_lastlog_record, encode_utmp_record};

const NOW: i64 = 1_800_000_000;

struct Fake {
    _dir: tempfile::TempDir,
    sources: Sources,
    home: PathBuf,
}

fn set_times(path: &Path, atime: i64, mtime: i64) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let t = |s: i64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s as u64);
    f.set_times(
        std::fs::FileTimes::new()
            .set_accessed(t(atime))
            .set_modified(t(mtime)),
    )
    .unwrap();
}

fn fake() -> Fake {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
    let home = root.join("home");
    for user in ["alice", "bob", "carol", "dave", "erin"] {
        std::fs::create_dir_all(home.join(user)).unwrap();
        std::fs::set_permissions(home.join(user), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let h = home.display();
    std::fs::write(
        root.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/bin/bash\n\
             alice:x:1:1:Alice Liddell,Room 12,555-1234,5559876:{h}/alice:/bin/bash\n\
             bob:x:2:2:& Builder:{h}/bob:/bin/sh\n\
             carol:x:3:3:Carol,,5551234567,:{h}/carol:\n\
             dave:x:4:4::{h}/dave:/bin/bash\n\
             erin:x:5:5:Erin Liddell:{h}/erin:/bin/bash\n"
        ),
    )
    .unwrap();
    let login = |user: &str, line: &str, host: &str, time: i64| Login {
        user: user.into(),
        line: line.into(),
        host: host.into(),
        time,
    };
    let mut utmp = encode_utmp_record(&login("alice", "pts/5", "10.0.0.9", NOW - 3600), 1);
    utmp.extend(encode_utmp_record(
        &login("alice", "tty3", "", NOW - 7200),
        2,
    ));
    utmp.extend(encode_utmp_record(&login("bob", "pts/6", "", NOW - 60), 3));
    utmp.extend(encode_utmp_record(
        &login("ghost", "pts/7", "", NOW - 60),
        4,
    ));
    std::fs::write(root.join("utmp"), utmp).unwrap();
    let mut lastlog = vec![0u8; LASTLOG * 6];
    lastlog[LASTLOG * 3..LASTLOG * 4].copy_from_slice(&encode_lastlog_record(
        NOW - 86_400 * 200,
        "pts/9",
        "old.example",
    ));
    std::fs::write(root.join("lastlog"), lastlog).unwrap();
    std::fs::write(root.join("wtmp"), b"").unwrap();
    let dev = root.join("dev");
    std::fs::create_dir_all(dev.join("pts")).unwrap();
    for (tty, mode, idle) in [
        ("pts/5", 0o620, 0),
        ("tty3", 0o600, 86_400 * 3 + 5 * 3600 + 1800),
        ("pts/6", 0o620, 125),
    ] {
        let p = dev.join(tty);
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        set_times(&p, NOW - idle, NOW - idle);
    }
    let mail = root.join("mail");
    std::fs::create_dir_all(&mail).unwrap();
    std::fs::write(mail.join("bob"), b"From x\n").unwrap();
    set_times(&mail.join("bob"), NOW - 500, NOW - 100);
    let plan = home.join("alice/.plan");
    std::fs::write(&plan, "Write a finger daemon.\nThen mail.").unwrap();
    std::fs::set_permissions(&plan, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(home.join("alice/.project"), "nuage\n").unwrap();
    std::fs::set_permissions(
        home.join("alice/.project"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    std::fs::write(home.join("erin/.nofinger"), "").unwrap();
    Fake {
        sources: Sources {
            passwd: root.join("passwd"),
            utmp: root.join("utmp"),
            wtmp: root.join("wtmp"),
            lastlog: root.join("lastlog"),
            dev,
            mail_dir: mail,
        },
        home,
        _dir: dir,
    }
}

const LASTLOG: usize = crate::finger::records::LASTLOG_RECORD;

fn ask(f: &Fake, long: bool, names: &[&str]) -> Report {
    let request = Request {
        long,
        names: names.iter().map(|s| s.to_string()).collect(),
    };
    report(&request, &f.sources, NOW).unwrap()
}

fn t(at: i64, fmt: &std::ffi::CStr) -> String {
    localtime::format(at, fmt)
}

#[test]
fn long_format_of_a_logged_in_user() {
    let f = fake();
    let r = ask(&f, false, &["alice"]);
    let h = f.home.display();
    let expected = format!(
        "Login: alice          \t\t\tName: Alice Liddell\n\
         Directory: {:<25}\tShell: /bin/bash\n\
         Office: Room 12, 555-1234\t\tHome Phone: 555-9876\n\
         On since {} on pts/5 from 10.0.0.9\n\
         On since {} on tty3    3 days 5 hours idle\n     (messages off)\n\
         No mail.\n\
         Project:\nnuage\n\
         Plan:\nWrite a finger daemon.\nThen mail.\n",
        format!("{h}/alice"),
        t(NOW - 3600, c"%a %b %e %R (%Z)"),
        t(NOW - 7200, c"%a %b %e %R (%Z)"),
    );
    assert_eq!(r.text, expected);
    assert_eq!(r.people, 1);
}

#[test]
fn names_match_real_names_and_nofinger_hides() {
    let f = fake();
    // "liddell" matches alice by her real name; erin too, but she has ~/.nofinger.
    let r = ask(&f, false, &["liddell", "zed"]);
    assert!(
        r.text.starts_with("finger: zed: no such user.\n"),
        "{}",
        r.text
    );
    assert_eq!(r.people, 1);
    assert_eq!(r.unknown, ["zed"]);
    let r = ask(&f, false, &["erin"]);
    assert_eq!(r.text, "finger: erin: no such user.\n");
}

#[test]
fn last_login_mail_and_gecos_variants() {
    let f = fake();
    let r = ask(&f, false, &["carol", "dave", "bob"]);
    let text = &r.text;
    // Carol: empty shell → /bin/sh; office phone alone; last login over six months ago.
    assert!(
        text.contains("Shell: /bin/sh\nOffice Phone: 555-123-4567\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Last login {} on pts/9 from old.example\n",
            t(NOW - 86_400 * 200, c"%a %b %e %R %Y (%Z)")
        )),
        "{text}"
    );
    // Dave: empty GECOS, never logged in.
    assert!(text.contains("Name: \n"), "{text}");
    assert!(
        text.contains("Never logged in.\nNo mail.\nNo Plan.\n"),
        "{text}"
    );
    // Bob: & expands to the capitalised login; idle 2 minutes 5 seconds; unread mail.
    assert!(text.contains("Name: Bob Builder\n"), "{text}");
    assert!(
        text.contains("on pts/6   2 minutes 5 seconds idle\n"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "New mail received {}\n     Unread since {}\n",
            t(NOW - 100, c"%a %b %e %R %Y (%Z)"),
            t(NOW - 500, c"%a %b %e %R %Y (%Z)")
        )),
        "{text}"
    );
    // People come in passwd order, separated by a blank line.
    let order: Vec<usize> = ["Login: bob", "Login: carol", "Login: dave"]
        .iter()
        .map(|l| text.find(l).unwrap())
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]));
    assert!(text.contains("No Plan.\n\nLogin: carol"));
}

#[test]
fn short_list_of_logged_in_users() {
    let f = fake();
    let r = ask(&f, false, &[]);
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(
        lines[0],
        "Login     Name            Tty      Idle  Login Time   Office     Office Phone"
    );
    assert_eq!(
        lines[1],
        format!(
            "alice     Alice Liddell   pts/5          {} (10.0.0.9)",
            t(NOW - 3600, c"%b %e %H:%M")
        )
    );
    assert_eq!(
        lines[2],
        format!(
            "alice     Alice Liddell  *tty3       3d  {} Room 12    555-1234",
            t(NOW - 7200, c"%b %e %H:%M")
        )
    );
    assert_eq!(
        lines[3],
        format!(
            "bob       Bob Builder     pts/6       2  {}",
            t(NOW - 60, c"%b %e %H:%M")
        )
    );
    // `ghost` is logged in but has no account: not shown.
    assert_eq!(lines.len(), 4);
    // /W: the long format for everyone logged in, in login order.
    let r = ask(&f, true, &[]);
    assert!(r.text.starts_with("Login: alice"), "{}", r.text);
    assert!(r.text.contains("\nLogin: bob"));
}

#[test]
fn a_terminal_without_a_device() {
    // As finger(1): the long form says "(messages off)", the short list stars nothing.
    let f = fake();
    let login = |line: &str| Login {
        user: "bob".into(),
        line: line.into(),
        host: String::new(),
        time: NOW - 60,
    };
    std::fs::write(&f.sources.utmp, encode_utmp_record(&login("pts/77"), 9)).unwrap();
    let text = ask(&f, false, &["bob"]).text;
    assert!(
        text.contains(&format!(
            "On since {} on pts/77 (messages off)\n",
            t(NOW - 60, c"%a %b %e %R (%Z)")
        )),
        "{text}"
    );
    let text = ask(&f, false, &[]).text;
    assert!(
        text.contains(" pts/77 ") && !text.contains("*pts/77"),
        "{text}"
    );
    // An X display is never looked for, and starred.
    std::fs::write(&f.sources.utmp, encode_utmp_record(&login(":0"), 9)).unwrap();
    assert!(ask(&f, false, &[]).text.contains("*:0  "));
    assert!(
        ask(&f, false, &["bob"])
            .text
            .contains("on :0 (messages off)\n")
    );
}

#[test]
fn nobody_logged_on() {
    let f = fake();
    std::fs::write(&f.sources.utmp, b"").unwrap();
    assert_eq!(ask(&f, false, &[]).text, "No one logged on.\n");
    std::fs::remove_file(&f.sources.utmp).unwrap();
    assert_eq!(ask(&f, false, &[]).text, "No one logged on.\n");
}

#[test]
fn only_files_anyone_may_read_are_shown() {
    let f = fake();
    let alice = f.home.join("alice");
    // A symbolic link to a private file is never followed.
    std::fs::remove_file(alice.join(".plan")).unwrap();
    std::os::unix::fs::symlink(&f.sources.passwd, alice.join(".plan")).unwrap();
    assert!(ask(&f, false, &["alice"]).text.ends_with("No Plan.\n"));
    // A private file is not shown.
    std::fs::remove_file(alice.join(".plan")).unwrap();
    std::fs::write(alice.join(".plan"), "secret").unwrap();
    std::fs::set_permissions(alice.join(".plan"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = ask(&f, false, &["alice"]).text;
    assert!(
        !text.contains("secret") && text.ends_with("No Plan.\n"),
        "{text}"
    );
    // Nor a readable file in a home directory others may not enter.
    std::fs::set_permissions(alice.join(".plan"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(&alice, std::fs::Permissions::from_mode(0o700)).unwrap();
    assert!(!ask(&f, false, &["alice"]).text.contains("secret"));
    std::fs::set_permissions(&alice, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(ask(&f, false, &["alice"]).text.contains("Plan:\nsecret\n"));
    // Nor when a directory above the home directory is closed to others.
    std::fs::set_permissions(&f.home, std::fs::Permissions::from_mode(0o750)).unwrap();
    assert!(!ask(&f, false, &["alice"]).text.contains("secret"));
    std::fs::set_permissions(&f.home, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn idle_parts_follow_gmtime() {
    assert_eq!(idle_parts(0), (0, 0, 0, 0));
    assert_eq!(idle_parts(86_400 * 3 + 3600 * 5 + 61), (3, 5, 1, 1));
    // gmtime's day of the year wraps at a year (finger's quirk, kept).
    assert_eq!(idle_parts(86_400 * 366), (1, 0, 0, 0));
}
