//! Mail addresses: `user@domain`.

/// Longest user part, in bytes (as in RFC 5321).
pub const MAX_USER: usize = 64;
/// Longest domain, in bytes (as in RFC 1035).
pub const MAX_DOMAIN: usize = 253;

/// `user@domain`. The domain is kept in lower case (domains are case-insensitive); the
/// user part is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    user: String,
    domain: String,
}

impl Address {
    /// Parses `user@domain`: one `@`; a user part of 1 to [`MAX_USER`] bytes without
    /// spaces, control characters, `,` or `@`; a valid domain.
    pub fn parse(text: &str) -> Result<Address, String> {
        let shown = text.escape_debug();
        let Some((user, domain)) = text.split_once('@') else {
            return Err(format!(
                "`{shown}` is not an address of the form user@domain"
            ));
        };
        if user.is_empty() {
            return Err(format!("`{shown}` has no user before the @"));
        }
        if user.len() > MAX_USER {
            return Err(format!(
                "the user part of `{shown}` is longer than {MAX_USER} bytes"
            ));
        }
        if let Some(c) = user
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == ',' || *c == '@')
        {
            return Err(format!(
                "the user part of `{shown}` contains `{}` (no spaces, control characters, commas or @)",
                c.escape_debug()
            ));
        }
        let domain = parse_domain(domain).map_err(|why| format!("`{shown}`: {why}"))?;
        Ok(Address {
            user: user.to_owned(),
            domain,
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.user, self.domain)
    }
}

/// Checks a domain name (dot-separated labels of letters, digits and hyphens, 1 to 63
/// bytes each, at most [`MAX_DOMAIN`] bytes in all) and returns it in lower case.
pub fn parse_domain(domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Err("the domain is empty".into());
    }
    if domain.len() > MAX_DOMAIN {
        return Err(format!("the domain is longer than {MAX_DOMAIN} bytes"));
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "`{}` is not a domain name (labels of letters, digits and inner hyphens, separated by dots)",
                domain.escape_debug()
            ));
        }
    }
    Ok(domain.to_ascii_lowercase())
}

/// Parses a comma-separated list of addresses (spaces around commas allowed).
pub fn parse_list(text: &str) -> Result<Vec<Address>, String> {
    let list: Vec<Address> = text
        .split(',')
        .map(str::trim)
        .map(Address::parse)
        .collect::<Result<_, _>>()?;
    Ok(list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_normalise_the_domain() {
        let a = Address::parse("Afida@Lab.Example").unwrap();
        assert_eq!(a.user(), "Afida");
        assert_eq!(a.domain(), "lab.example");
        assert_eq!(a.to_string(), "Afida@lab.example");
        assert_eq!(Address::parse("élise@n").unwrap().user(), "élise");
        let list = parse_list("brandon@b, nabilla@n").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1].to_string(), "nabilla@n");
    }

    #[test]
    fn bad_addresses_say_why() {
        for (text, why) in [
            ("afida", "not an address"),
            ("@a", "no user"),
            ("a b@a", "contains ` `"),
            ("a\n@a", "contains `\\n`"),
            ("a@b@c", "not a domain"),
            ("a@", "domain is empty"),
            ("a@-x", "not a domain"),
            ("a@x..y", "not a domain"),
            ("a@x_y", "not a domain"),
        ] {
            let err = Address::parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        let long = format!("{}@a", "u".repeat(MAX_USER + 1));
        assert!(
            Address::parse(&long)
                .unwrap_err()
                .contains("longer than 64")
        );
        let long = format!("u@{}", "d".repeat(MAX_DOMAIN + 1));
        assert!(
            Address::parse(&long)
                .unwrap_err()
                .contains("longer than 253")
        );
        assert!(parse_list("a@b,,c@d").is_err());
    }
}
