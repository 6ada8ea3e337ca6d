//! `spread.conf`: the daemons of a configuration and the daemon's options, in Spread's
//! own syntax, so an existing Spread configuration file works unchanged.
//!
//! ```text
//! Spread_Segment 10.213.0.255:4803 {
//!     n1  10.213.0.1
//!     n2  10.213.0.2
//! }
//! MaxSessionMessages = 1000
//! DebugFlags = { PRINT EXIT }
//! ```
//!
//! A daemon line is `name address` or `address` alone (the name is then the address),
//! optionally followed by a `{ … }` block of interfaces (`D`, `C`, `M` or `A` then an
//! address), which is accepted and not used. Keys this daemon does not know are accepted
//! with a warning naming the line; a syntax error or a bad value is an error naming the
//! line.

use std::collections::BTreeSet;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::wire::{DEFAULT_PORT, check_daemon_name};

/// Largest configuration file read.
pub const MAX_CONF_BYTES: u64 = 1 << 20;
/// Most daemons in one configuration (the ring protocol's sets are 128-bit).
pub const MAX_DAEMONS: usize = 128;
/// Default bound on messages queued for a client that does not read (`MaxSessionMessages`).
pub const DEFAULT_MAX_SESSION_MESSAGES: usize = 1000;
/// Default frames broadcast per token rotation, all daemons together (`Window`).
pub const DEFAULT_WINDOW: u32 = 60;
/// Default frames one daemon broadcasts per token visit (`PersonalWindow`).
pub const DEFAULT_PERSONAL_WINDOW: u32 = 15;
/// Default places tried for the file when `-c` is not given.
pub const DEFAULT_PATHS: &[&str] = &["./spread.conf", "/etc/spread.conf"];

/// One daemon of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonEntry {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
}

/// The protocol timeouts (Spread's names, LAN defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// No token for this long: the ring is declared broken (`TokenTimeout`, 1250 ms).
    pub token: Duration,
    /// A token sent and not seen again for this long is sent again (`HurryTimeout`, 500 ms).
    pub hurry: Duration,
    /// Interval of presence probes to daemons outside the ring (`AliveTimeout`, 250 ms).
    pub alive: Duration,
    /// Interval of join messages while gathering (`JoinTimeout`, 250 ms).
    pub join: Duration,
    /// Accepted for compatibility, not used (`RepTimeout`, 625 ms).
    pub rep: Duration,
    /// Accepted for compatibility, not used (`SegTimeout`, 500 ms).
    pub seg: Duration,
    /// Gathering without consensus for this long: the silent are declared failed
    /// (`GatherTimeout`, 1250 ms).
    pub gather: Duration,
    /// Forming a ring (commit and recovery) for longer fails it (`FormTimeout`, 1250 ms).
    pub form: Duration,
    /// Accepted for compatibility, not used (`LookupTimeout`, 30000 ms).
    pub lookup: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        let ms = Duration::from_millis;
        Timeouts {
            token: ms(1250),
            hurry: ms(500),
            alive: ms(250),
            join: ms(250),
            rep: ms(625),
            seg: ms(500),
            gather: ms(1250),
            form: ms(1250),
            lookup: ms(30_000),
        }
    }
}

/// A parsed spread.conf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpreadConf {
    pub daemons: Vec<DaemonEntry>,
    pub event_log_file: Option<PathBuf>,
    pub event_time_stamp: Option<String>,
    pub debug_flags: Vec<String>,
    pub runtime_dir: Option<PathBuf>,
    pub daemon_user: Option<String>,
    pub daemon_group: Option<String>,
    pub max_session_messages: usize,
    pub window: u32,
    pub personal_window: u32,
    pub timeouts: Timeouts,
    /// One line per key accepted but not understood, naming the line.
    pub warnings: Vec<String>,
}

impl Default for SpreadConf {
    fn default() -> Self {
        SpreadConf {
            daemons: Vec::new(),
            event_log_file: None,
            event_time_stamp: None,
            debug_flags: Vec::new(),
            runtime_dir: None,
            daemon_user: None,
            daemon_group: None,
            max_session_messages: DEFAULT_MAX_SESSION_MESSAGES,
            window: DEFAULT_WINDOW,
            personal_window: DEFAULT_PERSONAL_WINDOW,
            timeouts: Timeouts::default(),
            warnings: Vec::new(),
        }
    }
}

/// A configuration that cannot be used: where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfError {
    pub origin: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.origin, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for ConfError {}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Quoted(String),
    Open,
    Close,
    Equals,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
}

fn tokenize(text: &str) -> Result<Vec<Token>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let mut chars = raw.char_indices().peekable();
        while let Some(&(at, c)) = chars.peek() {
            match c {
                '#' => break,
                c if c.is_whitespace() => {
                    chars.next();
                }
                '{' | '}' | '=' => {
                    chars.next();
                    out.push(Token {
                        tok: match c {
                            '{' => Tok::Open,
                            '}' => Tok::Close,
                            _ => Tok::Equals,
                        },
                        line,
                    });
                }
                '"' => {
                    chars.next();
                    let mut s = String::new();
                    let mut closed = false;
                    for (_, c) in chars.by_ref() {
                        if c == '"' {
                            closed = true;
                            break;
                        }
                        s.push(c);
                    }
                    if !closed {
                        return Err((line, "unterminated quoted string".into()));
                    }
                    out.push(Token {
                        tok: Tok::Quoted(s),
                        line,
                    });
                }
                _ => {
                    let start = at;
                    let mut end = raw.len();
                    while let Some(&(j, c)) = chars.peek() {
                        if c.is_whitespace() || matches!(c, '{' | '}' | '=' | '"' | '#') {
                            end = j;
                            break;
                        }
                        chars.next();
                    }
                    out.push(Token {
                        tok: Tok::Word(raw[start..end].to_owned()),
                        line,
                    });
                }
            }
        }
    }
    Ok(out)
}

struct Parser<'a> {
    toks: &'a [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.toks.get(self.at)
    }
    fn next(&mut self) -> Option<Token> {
        let t = self.toks.get(self.at).cloned();
        self.at += 1;
        t
    }
}

/// The address and port of a `Spread_Segment` line: `ADDR[:PORT]`.
fn parse_segment_addr(text: &str) -> Result<(IpAddr, u16), String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok((ip, DEFAULT_PORT));
    }
    if let Ok(sa) = text.parse::<std::net::SocketAddr>() {
        if sa.port() == 0 {
            return Err(format!("`{text}`: port 0 is not a daemon port"));
        }
        return Ok((sa.ip(), sa.port()));
    }
    let (ip, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not an address or address:port"))?;
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("`{ip}` is not an IP address"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("`{port}` is not a port (1-65535)"))?;
    Ok((ip, port))
}

fn value_text(t: &Tok) -> Option<&str> {
    match t {
        Tok::Word(w) | Tok::Quoted(w) => Some(w),
        _ => None,
    }
}

impl SpreadConf {
    /// Reads `path`.
    pub fn load(path: &Path) -> Result<SpreadConf, ConfError> {
        let origin = path.display().to_string();
        let whole = |message: String| ConfError {
            origin: origin.clone(),
            line: None,
            message,
        };
        let meta = std::fs::metadata(path).map_err(|e| whole(format!("cannot read it: {e}")))?;
        if meta.len() > MAX_CONF_BYTES {
            return Err(whole(format!(
                "file is {} bytes, more than the limit of {MAX_CONF_BYTES}",
                meta.len()
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read it: {e}")))?;
        Self::parse(&text, &origin)
    }

    /// Finds the file as Spread does when `-c` is not given: `./spread.conf`, then
    /// `/etc/spread.conf`.
    pub fn find_default() -> Option<PathBuf> {
        DEFAULT_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<SpreadConf, ConfError> {
        let err = |line: usize, message: String| ConfError {
            origin: origin.to_owned(),
            line: Some(line),
            message,
        };
        let toks = tokenize(text).map_err(|(l, m)| err(l, m))?;
        let mut p = Parser { toks: &toks, at: 0 };
        let mut conf = SpreadConf::default();
        let mut seen_keys: BTreeSet<String> = BTreeSet::new();
        while let Some(t) = p.next() {
            let line = t.line;
            let Tok::Word(key) = t.tok else {
                return Err(err(line, "expected a key or Spread_Segment".into()));
            };
            if key.eq_ignore_ascii_case("Spread_Segment") {
                conf.parse_segment(&mut p, line)
                    .map_err(|(l, m)| err(l, m))?;
                continue;
            }
            // KEY [= VALUE | = { WORDS }]; a bare KEY (e.g. EventTimeStamp) is allowed.
            let mut values: Vec<String> = Vec::new();
            let mut braced = false;
            if matches!(
                p.peek(),
                Some(Token {
                    tok: Tok::Equals,
                    ..
                })
            ) {
                p.next();
                match p.next() {
                    Some(Token { tok: Tok::Open, .. }) => {
                        braced = true;
                        loop {
                            match p.next() {
                                Some(Token {
                                    tok: Tok::Close, ..
                                }) => break,
                                Some(Token {
                                    tok: Tok::Word(w) | Tok::Quoted(w),
                                    ..
                                }) => values.push(w),
                                Some(t) => {
                                    return Err(err(
                                        t.line,
                                        format!("unexpected `{:?}` in the list of {key}", t.tok),
                                    ));
                                }
                                None => {
                                    return Err(err(
                                        line,
                                        format!("the list of {key} is not closed with `}}`"),
                                    ));
                                }
                            }
                        }
                    }
                    Some(t) => match value_text(&t.tok) {
                        Some(v) if t.line == line => values.push(v.to_owned()),
                        _ => {
                            return Err(err(
                                line,
                                format!("{key} = needs a value on the same line"),
                            ));
                        }
                    },
                    None => return Err(err(line, format!("{key} = needs a value"))),
                }
            }
            if !seen_keys.insert(key.to_ascii_lowercase()) {
                conf.warnings.push(format!(
                    "{origin}:{line}: {key} is set again; the last value wins"
                ));
            }
            conf.apply_key(&key, &values, braced, line, origin)
                .map_err(|m| err(line, m))?;
        }
        if conf.daemons.is_empty() {
            return Err(ConfError {
                origin: origin.to_owned(),
                line: None,
                message:
                    "no daemon is configured; add a Spread_Segment block naming at least one daemon"
                        .into(),
            });
        }
        Ok(conf)
    }

    fn parse_segment(&mut self, p: &mut Parser<'_>, line: usize) -> Result<(), (usize, String)> {
        let addr_tok = p
            .next()
            .ok_or((line, "Spread_Segment needs an address".to_owned()))?;
        let Some(addr) = value_text(&addr_tok.tok) else {
            return Err((
                addr_tok.line,
                "Spread_Segment needs an address before `{`".into(),
            ));
        };
        let (_, port) = parse_segment_addr(addr).map_err(|m| (addr_tok.line, m))?;
        match p.next() {
            Some(Token { tok: Tok::Open, .. }) => {}
            _ => {
                return Err((
                    line,
                    "Spread_Segment address must be followed by `{`".into(),
                ));
            }
        }
        loop {
            let Some(t) = p.next() else {
                return Err((line, "Spread_Segment block is not closed with `}`".into()));
            };
            let first = match t.tok {
                Tok::Close => break,
                Tok::Word(w) => w,
                other => return Err((t.line, format!("unexpected `{other:?}` in Spread_Segment"))),
            };
            // `name address` or `address`, on one line.
            let (name, addr_text) = match p.peek() {
                Some(Token {
                    tok: Tok::Word(w),
                    line: l,
                }) if *l == t.line => {
                    let w = w.clone();
                    p.next();
                    (first, w)
                }
                _ => (first.clone(), first),
            };
            let addr: IpAddr = addr_text.parse().map_err(|_| {
                (
                    t.line,
                    format!(
                        "`{addr_text}` is not an IP address (write `name address` or `address`)"
                    ),
                )
            })?;
            check_daemon_name(&name).map_err(|e| (t.line, e.0))?;
            if self.daemons.iter().any(|d| d.name == name) {
                return Err((t.line, format!("daemon `{name}` is listed twice")));
            }
            if self
                .daemons
                .iter()
                .any(|d| d.addr == addr && d.port == port)
            {
                return Err((
                    t.line,
                    format!("two daemons have the address {addr}:{port}"),
                ));
            }
            if self.daemons.len() == MAX_DAEMONS {
                return Err((t.line, format!("more than {MAX_DAEMONS} daemons")));
            }
            self.daemons.push(DaemonEntry { name, addr, port });
            // Optional interface block: accepted, not used.
            if matches!(p.peek(), Some(Token { tok: Tok::Open, .. })) {
                p.next();
                loop {
                    match p.next() {
                        Some(Token {
                            tok: Tok::Close, ..
                        }) => break,
                        Some(Token {
                            tok: Tok::Word(_), ..
                        }) => {}
                        Some(t) => {
                            return Err((
                                t.line,
                                format!("unexpected `{:?}` in an interface block", t.tok),
                            ));
                        }
                        None => {
                            return Err((line, "interface block is not closed with `}`".into()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn apply_key(
        &mut self,
        key: &str,
        values: &[String],
        braced: bool,
        line: usize,
        origin: &str,
    ) -> Result<(), String> {
        let one = || -> Result<&str, String> {
            match values {
                [v] if !braced => Ok(v.as_str()),
                _ => Err(format!("{key} takes one value")),
            }
        };
        let number = |min: u64, max: u64| -> Result<u64, String> {
            let v = one()?;
            v.parse::<u64>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| format!("{key} = {v}: expected a whole number from {min} to {max}"))
        };
        let ms =
            |max: u64| -> Result<Duration, String> { Ok(Duration::from_millis(number(1, max)?)) };
        match key.to_ascii_lowercase().as_str() {
            "eventlogfile" => self.event_log_file = Some(PathBuf::from(one()?)),
            "eventtimestamp" => {
                self.event_time_stamp = Some(values.first().cloned().unwrap_or_default())
            }
            "debugflags" => self.debug_flags = values.to_vec(),
            "runtimedir" => self.runtime_dir = Some(PathBuf::from(one()?)),
            "daemonuser" => self.daemon_user = Some(one()?.to_owned()),
            "daemongroup" => self.daemon_group = Some(one()?.to_owned()),
            "maxsessionmessages" => self.max_session_messages = number(1, 1_000_000)? as usize,
            "window" => self.window = number(1, 10_000)? as u32,
            "personalwindow" => self.personal_window = number(1, 10_000)? as u32,
            "tokentimeout" => self.timeouts.token = ms(600_000)?,
            "hurrytimeout" => self.timeouts.hurry = ms(600_000)?,
            "alivetimeout" => self.timeouts.alive = ms(600_000)?,
            "jointimeout" => self.timeouts.join = ms(600_000)?,
            "reptimeout" => self.timeouts.rep = ms(600_000)?,
            "segtimeout" => self.timeouts.seg = ms(600_000)?,
            "gathertimeout" => self.timeouts.gather = ms(600_000)?,
            "formtimeout" => self.timeouts.form = ms(600_000)?,
            "lookuptimeout" => self.timeouts.lookup = ms(3_600_000)?,
            _ => self
                .warnings
                .push(format!("{origin}:{line}: unknown key `{key}` is ignored")),
        }
        Ok(())
    }

    /// Checks relations between values (after all keys are read).
    pub fn check(&self) -> Result<(), String> {
        if self.personal_window > self.window {
            return Err(format!(
                "PersonalWindow ({}) is larger than Window ({})",
                self.personal_window, self.window
            ));
        }
        let t = &self.timeouts;
        if t.hurry >= t.token {
            return Err(format!(
                "HurryTimeout ({} ms) must be shorter than TokenTimeout ({} ms)",
                t.hurry.as_millis(),
                t.token.as_millis()
            ));
        }
        Ok(())
    }

    /// The daemon named `name`.
    pub fn daemon(&self, name: &str) -> Option<&DaemonEntry> {
        self.daemons.iter().find(|d| d.name == name)
    }

    /// Which daemon this machine runs: the one named `name`, else the only one whose
    /// address belongs to this machine (found by binding to it).
    pub fn pick_self(&self, name: Option<&str>) -> Result<&DaemonEntry, String> {
        if let Some(name) = name {
            return self.daemon(name).ok_or_else(|| {
                let names: Vec<&str> = self.daemons.iter().map(|d| d.name.as_str()).collect();
                format!(
                    "no daemon named `{name}` in the configuration (it has: {})",
                    names.join(", ")
                )
            });
        }
        let local: Vec<&DaemonEntry> = self
            .daemons
            .iter()
            .filter(|d| std::net::UdpSocket::bind((d.addr, 0)).is_ok())
            .collect();
        match local.as_slice() {
            [one] => Ok(one),
            [] => Err(
                "no configured daemon has an address of this machine; name this daemon with -n"
                    .into(),
            ),
            many => Err(format!(
                "several configured daemons have addresses of this machine ({}); name this daemon with -n",
                many.iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
# Spread's sample file, shortened.
Spread_Segment  127.0.0.255:4803 {
	localhost		127.0.0.1
}

EventLogFile = testlog.out
EventTimeStamp
EventTimeStamp = "[%a %d %b %Y %H:%M:%S]"
DebugFlags = { PRINT EXIT }
DangerousMonitor = false
RuntimeDir = /var/run/spread
DaemonUser = spread
MaxSessionMessages = 5000
"#;

    #[test]
    fn spread_sample_parses_with_warnings() {
        let c = SpreadConf::parse(SAMPLE, "spread.conf").unwrap();
        assert_eq!(
            c.daemons,
            vec![DaemonEntry {
                name: "localhost".into(),
                addr: "127.0.0.1".parse().unwrap(),
                port: 4803
            }]
        );
        assert_eq!(c.event_log_file, Some(PathBuf::from("testlog.out")));
        assert_eq!(
            c.event_time_stamp.as_deref(),
            Some("[%a %d %b %Y %H:%M:%S]")
        );
        assert_eq!(c.debug_flags, ["PRINT", "EXIT"]);
        assert_eq!(c.runtime_dir, Some(PathBuf::from("/var/run/spread")));
        assert_eq!(c.max_session_messages, 5000);
        assert!(
            c.warnings
                .iter()
                .any(|w| w == "spread.conf:11: unknown key `DangerousMonitor` is ignored"),
            "{:?}",
            c.warnings
        );
        assert!(c.warnings.iter().any(|w| w.starts_with("spread.conf:9:")));
    }

    #[test]
    fn segments_ports_names_and_interfaces() {
        let text = "Spread_Segment 10.0.0.255 {\n  a 10.0.0.1\n  10.0.0.2 { D 10.0.0.2\n C 10.0.0.2 }\n}\nSpread_Segment 10.1.0.255:5000 {\n b 10.1.0.1\n}\nTokenTimeout = 3000\n";
        let c = SpreadConf::parse(text, "x").unwrap();
        let d: Vec<(&str, u16)> = c
            .daemons
            .iter()
            .map(|d| (d.name.as_str(), d.port))
            .collect();
        assert_eq!(d, [("a", 4803), ("10.0.0.2", 4803), ("b", 5000)]);
        assert_eq!(c.timeouts.token, Duration::from_millis(3000));
        assert!(c.warnings.is_empty());
    }

    #[test]
    fn errors_name_the_line() {
        let cases = [
            (
                "Spread_Segment 1.2.3.4 {\n a 1.2.3\n}\n",
                2,
                "not an IP address",
            ),
            ("Spread_Segment 1.2.3.4:0 {\n a 1.2.3.4\n}\n", 1, "port"),
            (
                "Spread_Segment 1.2.3.4 {\n a 1.2.3.4\n a 1.2.3.5\n}\n",
                3,
                "listed twice",
            ),
            ("Spread_Segment 1.2.3.4 {\n a 1.2.3.4\n", 1, "not closed"),
            (
                "Spread_Segment 1.2.3.4 {\n a 1.2.3.4\n}\nWindow = lots\n",
                4,
                "whole number",
            ),
            (
                "Spread_Segment 1.2.3.4 {\n a 1.2.3.4\n}\nMaxSessionMessages =\n",
                4,
                "value",
            ),
            (
                "Spread_Segment 1.2.3.4 {\n averyveryverylongdaemonname 1.2.3.4\n}\n",
                2,
                "1 to 19",
            ),
            ("= 3\n", 1, "expected a key"),
            (
                "Spread_Segment 1.2.3.4 {\n a 1.2.3.4\n}\nEventLogFile = \"x\n",
                4,
                "unterminated",
            ),
        ];
        for (text, line, what) in cases {
            let e = SpreadConf::parse(text, "s.conf").unwrap_err();
            assert_eq!(e.line, Some(line), "{text:?}: {e}");
            assert!(e.message.contains(what), "{text:?}: {e}");
            assert!(
                e.to_string().starts_with(&format!("s.conf:{line}: ")),
                "{e}"
            );
        }
        let e = SpreadConf::parse("# nothing\n", "s.conf").unwrap_err();
        assert!(e.message.contains("no daemon"), "{e}");
    }

    #[test]
    fn relations_are_checked() {
        let c = SpreadConf::parse(
            "Spread_Segment 1.2.3.4 {\n a 1.2.3.4\n}\nWindow = 10\nPersonalWindow = 20\n",
            "x",
        )
        .unwrap();
        assert!(c.check().unwrap_err().contains("PersonalWindow"));
    }

    #[test]
    fn pick_self() {
        let c = SpreadConf::parse(
            "Spread_Segment 127.0.0.255 {\n me 127.0.0.1\n other 192.0.2.7\n}\n",
            "x",
        )
        .unwrap();
        assert_eq!(c.pick_self(None).unwrap().name, "me");
        assert_eq!(c.pick_self(Some("other")).unwrap().name, "other");
        assert!(c.pick_self(Some("nope")).unwrap_err().contains("me, other"));
    }
}
