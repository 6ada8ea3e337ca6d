//! Reading one line with a bound: a line longer than the limit is skipped to its end and
//! reported, so the stream stays usable for the next line. Lines are bytes: any byte but
//! the newline, NUL included, passes through.

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// What one bounded read produced.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A line (its newline not included); the last line of a stream may lack one.
    Full(Vec<u8>),
    /// A line longer than the limit, skipped up to and including its newline.
    TooLong,
    /// End of input.
    End,
}

/// Reads the next line of at most `max` bytes, newline included.
pub async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Line> {
    assert!(max >= 1, "a line limit must leave room for the newline");
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            // End of input: a last line without newline still counts.
            return Ok(if too_long {
                Line::TooLong
            } else if line.is_empty() {
                Line::End
            } else {
                Line::Full(line)
            });
        }
        let (take, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        if !too_long {
            if line.len() + take > max {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(&available[..take]);
            }
        }
        reader.consume(take);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            line.pop(); // the newline
            return Ok(Line::Full(line));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Line> {
        let mut reader = tokio::io::BufReader::with_capacity(4, input);
        let mut out = Vec::new();
        loop {
            let l = read_line(&mut reader, max).await.unwrap();
            let end = l == Line::End;
            out.push(l);
            if end {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn splits_and_bounds_lines() {
        use Line::*;
        assert_eq!(
            lines(b"ab\n\ncdefgh\nij\0\xff\nlast", 6).await,
            vec![
                Full(b"ab".to_vec()),
                Full(vec![]),
                TooLong,
                Full(b"ij\0\xff".to_vec()),
                Full(b"last".to_vec()),
                End
            ]
        );
        // The limit counts the newline: 5 bytes + newline fit in 6, 6 + newline do not.
        assert_eq!(
            lines(b"abcde\n", 6).await,
            vec![Full(b"abcde".to_vec()), End]
        );
        assert_eq!(
            lines(b"abcdef\nx\n", 6).await,
            vec![TooLong, Full(b"x".to_vec()), End]
        );
        assert_eq!(lines(b"abcdefgh", 6).await, vec![TooLong, End]);
        assert_eq!(lines(b"", 6).await, vec![End]);
    }
}
