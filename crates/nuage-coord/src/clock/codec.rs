//! The binary form of clocks: unsigned LEB128 varints (7 bits per byte, low bits
//! first, high bit set on every byte but the last).

/// Why bytes are not a clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end in the middle of a value.
    Truncated,
    /// A varint is longer than 10 bytes or does not fit in 64 bits.
    Overflow,
    /// More processes than the clock allows.
    TooManyProcesses { n: u64, max: usize },
    /// A process number outside `0..n`.
    BadProcess { process: u64, n: u64 },
    /// Bytes left after the clock.
    TrailingBytes(usize),
    /// The text form is not well formed.
    Syntax(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "clock stamp is truncated"),
            DecodeError::Overflow => write!(f, "clock stamp has a counter beyond 64 bits"),
            DecodeError::TooManyProcesses { n, max } => {
                write!(f, "clock stamp has {n} processes (at most {max})")
            }
            DecodeError::BadProcess { process, n } => {
                write!(f, "clock stamp names process {process} of {n}")
            }
            DecodeError::TrailingBytes(k) => write!(f, "clock stamp has {k} trailing bytes"),
            DecodeError::Syntax(why) => write!(f, "clock text: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Appends `v` as an unsigned LEB128 varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// Reads values from a byte slice, refusing to run past its end.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }

    pub(crate) fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value: u64 = 0;
        for i in 0..10 {
            let byte = *self.bytes.get(self.pos).ok_or(DecodeError::Truncated)?;
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            // The tenth byte may only carry the 64th bit.
            if i == 9 && bits > 1 {
                return Err(DecodeError::Overflow);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Overflow)
    }

    /// A process count, checked against `max` before anything is allocated for it.
    pub(crate) fn count(&mut self, max: usize) -> Result<usize, DecodeError> {
        let n = self.varint()?;
        if n > max as u64 {
            return Err(DecodeError::TooManyProcesses { n, max });
        }
        Ok(n as usize)
    }

    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.pos {
            0 => Ok(()),
            k => Err(DecodeError::TrailingBytes(k)),
        }
    }
}

/// Parses `[a,b,c]` (spaces allowed) into counters.
pub(crate) fn parse_list(text: &str, max: usize) -> Result<Vec<u64>, DecodeError> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| DecodeError::Syntax(format!("`{text}` is not of the form [a,b,…]")))?;
    if inner.trim().is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = inner.split(',').collect();
    if parts.len() > max {
        return Err(DecodeError::TooManyProcesses {
            n: parts.len() as u64,
            max,
        });
    }
    parts
        .iter()
        .map(|p| {
            p.trim()
                .parse::<u64>()
                .map_err(|_| DecodeError::Syntax(format!("`{}` is not a counter", p.trim())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_the_edges() {
        for v in [
            0,
            1,
            127,
            128,
            300,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut r = Reader::new(&buf);
            assert_eq!(r.varint().unwrap(), v);
            r.finish().unwrap();
        }
    }

    #[test]
    fn bad_varints_are_errors() {
        assert_eq!(Reader::new(&[0x80]).varint(), Err(DecodeError::Truncated));
        assert_eq!(Reader::new(&[]).varint(), Err(DecodeError::Truncated));
        let eleven = [0xff; 11];
        assert_eq!(Reader::new(&eleven).varint(), Err(DecodeError::Overflow));
        let mut too_big = vec![0xff; 9];
        too_big.push(0x02);
        assert_eq!(Reader::new(&too_big).varint(), Err(DecodeError::Overflow));
    }
}
