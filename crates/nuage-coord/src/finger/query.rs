//! RFC 1288 queries: `[/W] [name …]` ended by CRLF.
//!
//! `{Q1} ::= [{W}|{W}{S}{U}]{C}` asks about local users; `{Q2}` adds `@host…` to ask
//! this server to forward the query, which RFC 1288 §3.2.1 advises refusing by default
//! and this server always refuses.

use super::report::Request;

/// Longest query accepted (bytes, CRLF excluded). fingerd reads 1024; names are short.
pub const MAX_QUERY: usize = 512;
/// Most names in one query.
pub const MAX_NAMES: usize = 16;

/// Why a query is refused; each becomes one error line to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    TooLong,
    ControlCharacters,
    NotText,
    Forwarding,
    Option(String),
    TooManyNames,
}

impl std::fmt::Display for QueryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueryError::TooLong => write!(f, "finger: query too long (at most {MAX_QUERY} bytes)"),
            QueryError::ControlCharacters => write!(f, "finger: query contains control characters"),
            QueryError::NotText => write!(f, "finger: query is not UTF-8 text"),
            QueryError::Forwarding => write!(f, "finger: forwarding service denied"),
            QueryError::Option(o) => {
                write!(
                    f,
                    "finger: `{o}` is not a login name (options are not accepted)"
                )
            }
            QueryError::TooManyNames => {
                write!(
                    f,
                    "finger: too many names in one query (at most {MAX_NAMES})"
                )
            }
        }
    }
}

impl QueryError {
    /// A short word for the log.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::TooLong => "too-long",
            QueryError::ControlCharacters => "control-characters",
            QueryError::NotText => "not-text",
            QueryError::Forwarding => "forwarding-refused",
            QueryError::Option(_) => "option-refused",
            QueryError::TooManyNames => "too-many-names",
        }
    }
}

/// Parses one query line, its CRLF (or LF) already removed.
pub fn parse(line: &[u8]) -> Result<Request, QueryError> {
    if line.len() > MAX_QUERY {
        return Err(QueryError::TooLong);
    }
    if line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(QueryError::ControlCharacters);
    }
    let text = std::str::from_utf8(line).map_err(|_| QueryError::NotText)?;
    let mut request = Request::default();
    for word in text.split([' ', '\t']).filter(|w| !w.is_empty()) {
        if word.eq_ignore_ascii_case("/W") {
            request.long = true;
        } else if word.contains('@') {
            return Err(QueryError::Forwarding);
        } else if word.starts_with('-') || word.starts_with('/') {
            return Err(QueryError::Option(word.to_owned()));
        } else {
            if request.names.len() == MAX_NAMES {
                return Err(QueryError::TooManyNames);
            }
            request.names.push(word.to_owned());
        }
    }
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(q: &str) -> Vec<String> {
        parse(q.as_bytes()).unwrap().names
    }

    #[test]
    fn rfc1288_queries() {
        assert_eq!(parse(b"").unwrap(), Request::default());
        assert_eq!(names("alice"), ["alice"]);
        let w = parse(b"/W alice").unwrap();
        assert!(w.long);
        assert_eq!(w.names, ["alice"]);
        assert!(parse(b"/w").unwrap().long);
        assert_eq!(names("  alice \t bob "), ["alice", "bob"]);
        assert_eq!(names("José"), ["José"]);
    }

    #[test]
    fn refusals() {
        assert_eq!(parse(b"alice@elsewhere"), Err(QueryError::Forwarding));
        assert_eq!(parse(b"@a@b"), Err(QueryError::Forwarding));
        assert_eq!(parse(b"alice\x1b[2J"), Err(QueryError::ControlCharacters));
        assert_eq!(parse(b"al\0ice"), Err(QueryError::ControlCharacters));
        assert_eq!(parse(&[b'a'; MAX_QUERY + 1]), Err(QueryError::TooLong));
        assert!(parse(&[b'a'; MAX_QUERY]).is_ok());
        assert_eq!(parse(b"\xff"), Err(QueryError::NotText));
        assert_eq!(parse(b"-l alice"), Err(QueryError::Option("-l".into())));
        let many = vec!["a"; MAX_NAMES + 1].join(" ");
        assert_eq!(parse(many.as_bytes()), Err(QueryError::TooManyNames));
    }

    proptest::proptest! {
        /// Whatever the bytes, parsing ends in a request or an error, and a request holds
        /// only plain words: no control characters, no spaces, no `@`, no options.
        #[test]
        fn any_bytes_parse_to_plain_names_or_an_error(
            line in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..700)
        ) {
            if let Ok(request) = parse(&line) {
                proptest::prop_assert!(line.len() <= MAX_QUERY);
                proptest::prop_assert!(request.names.len() <= MAX_NAMES);
                for name in &request.names {
                    proptest::prop_assert!(!name.is_empty());
                    proptest::prop_assert!(!name.chars().any(|c| c.is_control() || c == ' ' || c == '@'));
                    proptest::prop_assert!(!name.starts_with('-') && !name.starts_with('/'));
                }
            }
        }
    }
}
