//! The wire framing shared by clients and servers: a header line that names the verb and
//! gives the length of every field, then the fields' bytes, back to back.
//!
//! ```text
//! frame  = verb *(SP length) LF *field
//! verb   = 1*16 ("A".."Z")
//! length = 1*10 DIGIT          ; decimal byte count of the matching field
//! field  = <exactly `length` bytes, any values: colons, @, newlines, NUL, UTF-8…>
//! ```
//!
//! Example: `SEND 7 5 9\nafida@ahellobrandon@b` is verb SEND with three fields of 7, 5
//! and 9 bytes: `afida@a`, `hello`, `brandon@b` (docs/mail.md lists the fields of every
//! verb). Because every field is counted, nothing inside a field is ever interpreted:
//! any text survives the trip unchanged. A CR before the LF of the header line is
//! tolerated (a person typing into `nc`), nothing else is.
//!
//! Bounds (each refused with a [`FrameError`] naming the limit): the header line is at
//! most [`MAX_HEADER_LINE`] bytes, a frame has at most [`MAX_FIELDS`] fields and at
//! most [`MAX_FRAME_BODY`] bytes of fields in all.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest header line, its LF included.
pub const MAX_HEADER_LINE: usize = 2048;
/// Most fields in one frame.
pub const MAX_FIELDS: usize = 128;
/// Most bytes of all fields of one frame together (1 MiB).
pub const MAX_FRAME_BODY: usize = 1 << 20;
/// Longest verb.
pub const MAX_VERB: usize = 16;

/// One frame: a verb and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub verb: String,
    pub fields: Vec<Vec<u8>>,
}

/// Why bytes on a connection are not a frame.
#[derive(Debug)]
pub enum FrameError {
    /// The peer closed the connection between two frames (a normal end).
    Closed,
    /// The peer closed the connection in the middle of a frame.
    Truncated,
    /// The header line is longer than [`MAX_HEADER_LINE`].
    HeaderTooLong,
    /// The header line is not `VERB len len…`.
    BadHeader(String),
    /// The fields add up to more than [`MAX_FRAME_BODY`] bytes.
    TooLarge {
        bytes: u64,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::Closed => write!(f, "the connection was closed"),
            FrameError::Truncated => {
                write!(f, "the connection was closed in the middle of a frame")
            }
            FrameError::HeaderTooLong => write!(
                f,
                "frame header line longer than {MAX_HEADER_LINE} bytes (over-long line)"
            ),
            FrameError::BadHeader(why) => write!(f, "malformed frame header: {why}"),
            FrameError::TooLarge { bytes } => write!(
                f,
                "frame of {bytes} bytes exceeds the limit of {MAX_FRAME_BODY} bytes"
            ),
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<std::io::Error> for FrameError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Truncated
        } else {
            FrameError::Io(e)
        }
    }
}

impl Frame {
    pub fn new(verb: &str) -> Frame {
        assert!(valid_verb(verb), "bad verb {verb:?}");
        Frame {
            verb: verb.to_owned(),
            fields: Vec::new(),
        }
    }

    /// Appends a field (builder style).
    pub fn with(mut self, field: impl Into<Vec<u8>>) -> Frame {
        self.fields.push(field.into());
        self
    }

    /// The header line and the fields, as they go on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        assert!(
            self.fields.len() <= MAX_FIELDS,
            "frame with too many fields"
        );
        let body: usize = self.fields.iter().map(Vec::len).sum();
        assert!(body <= MAX_FRAME_BODY, "frame of {body} bytes is too large");
        let mut out = Vec::with_capacity(self.verb.len() + 12 * self.fields.len() + body + 1);
        out.extend_from_slice(self.verb.as_bytes());
        for field in &self.fields {
            out.extend_from_slice(format!(" {}", field.len()).as_bytes());
        }
        out.push(b'\n');
        for field in &self.fields {
            out.extend_from_slice(field);
        }
        out
    }

    /// Field `i` as UTF-8 text; `what` names it in the error.
    pub fn text(&self, i: usize, what: &str) -> Result<&str, String> {
        let bytes = self
            .fields
            .get(i)
            .ok_or_else(|| format!("{} frame without its {what}", self.verb))?;
        std::str::from_utf8(bytes).map_err(|_| format!("the {what} is not valid UTF-8"))
    }

    /// Field `i` as raw bytes.
    pub fn bytes(&self, i: usize, what: &str) -> Result<&[u8], String> {
        self.fields
            .get(i)
            .map(Vec::as_slice)
            .ok_or_else(|| format!("{} frame without its {what}", self.verb))
    }

    /// Checks the number of fields is within `min..=max`.
    pub fn expect_fields(&self, min: usize, max: usize) -> Result<(), String> {
        let n = self.fields.len();
        if n < min || n > max {
            let want = if min == max {
                min.to_string()
            } else {
                format!("{min} to {max}")
            };
            return Err(format!(
                "{} frame has {n} fields, expected {want}",
                self.verb
            ));
        }
        Ok(())
    }
}

fn valid_verb(verb: &str) -> bool {
    !verb.is_empty() && verb.len() <= MAX_VERB && verb.bytes().all(|b| b.is_ascii_uppercase())
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, frame: &Frame) -> std::io::Result<()> {
    w.write_all(&frame.to_bytes()).await?;
    w.flush().await
}

/// Reads one frame, enforcing every bound before allocating for it.
pub async fn read_frame<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Frame, FrameError> {
    let mut header = Vec::new();
    let n = (&mut *r)
        .take(MAX_HEADER_LINE as u64)
        .read_until(b'\n', &mut header)
        .await?;
    if n == 0 {
        return Err(FrameError::Closed);
    }
    if header.last() != Some(&b'\n') {
        return Err(if n >= MAX_HEADER_LINE {
            FrameError::HeaderTooLong
        } else {
            FrameError::Truncated
        });
    }
    header.pop();
    if header.last() == Some(&b'\r') {
        header.pop();
    }
    let lengths = parse_header(&header)?;
    let (verb, lengths) = lengths;
    let mut fields = Vec::with_capacity(lengths.len());
    for len in lengths {
        let mut field = vec![0; len];
        r.read_exact(&mut field).await?;
        fields.push(field);
    }
    Ok(Frame { verb, fields })
}

/// `VERB len len…` → the verb and the lengths, checked against the bounds.
fn parse_header(header: &[u8]) -> Result<(String, Vec<usize>), FrameError> {
    let text = std::str::from_utf8(header)
        .map_err(|_| FrameError::BadHeader("the header line is not text".into()))?;
    let mut words = text.split(' ');
    let verb = words.next().unwrap_or_default();
    if !valid_verb(verb) {
        let shown: String = verb.chars().take(MAX_VERB + 1).collect();
        return Err(FrameError::BadHeader(format!(
            "`{}` is not a verb (1 to {MAX_VERB} capital letters)",
            shown.escape_debug()
        )));
    }
    let mut lengths = Vec::new();
    let mut total: u64 = 0;
    for word in words {
        if lengths.len() == MAX_FIELDS {
            return Err(FrameError::BadHeader(format!(
                "more than {MAX_FIELDS} fields"
            )));
        }
        if word.is_empty() || word.len() > 10 || !word.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FrameError::BadHeader(format!(
                "`{}` is not a field length (a decimal byte count)",
                word.escape_debug()
            )));
        }
        let len: u64 = word.parse().expect("at most 10 digits fit in u64");
        total += len;
        if total > MAX_FRAME_BODY as u64 {
            return Err(FrameError::TooLarge { bytes: total });
        }
        lengths.push(len as usize);
    }
    Ok((verb.to_owned(), lengths))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Frame, FrameError> {
        let mut r = tokio::io::BufReader::new(bytes);
        read_frame(&mut r).await
    }

    #[tokio::test]
    async fn any_bytes_survive_a_round_trip() {
        let text = "Dear Brandon:\nmeet @ 10:30, café «ô» 🎉\r\n.\n\0end";
        let frame = Frame::new("SEND")
            .with("afida@a")
            .with(text)
            .with(vec![0u8, 255, b'\n', b' '])
            .with("");
        let bytes = frame.to_bytes();
        assert!(bytes.starts_with(b"SEND 7 "));
        assert_eq!(parse(&bytes).await.unwrap(), frame);
        assert_eq!(frame.text(1, "text").unwrap(), text);
        assert!(frame.text(2, "stamp").is_err());
        assert!(
            frame
                .text(9, "nothing")
                .unwrap_err()
                .contains("without its")
        );
    }

    #[tokio::test]
    async fn consecutive_frames_are_read_one_at_a_time() {
        let mut bytes = Frame::new("QUIT").to_bytes();
        bytes.extend(b"OK 2\r\nhi");
        let mut r = tokio::io::BufReader::new(bytes.as_slice());
        assert_eq!(read_frame(&mut r).await.unwrap().verb, "QUIT");
        let ok = read_frame(&mut r).await.unwrap();
        assert_eq!(ok.fields, vec![b"hi".to_vec()]);
        assert!(matches!(read_frame(&mut r).await, Err(FrameError::Closed)));
    }

    #[tokio::test]
    async fn bounds_and_malformed_headers_are_errors() {
        let long = vec![b'A'; MAX_HEADER_LINE + 10];
        assert!(matches!(parse(&long).await, Err(FrameError::HeaderTooLong)));
        let huge = format!("SEND {}\n", MAX_FRAME_BODY + 1);
        assert!(matches!(
            parse(huge.as_bytes()).await,
            Err(FrameError::TooLarge { .. })
        ));
        let sum = format!("SEND {} {}\n", MAX_FRAME_BODY, 1);
        assert!(matches!(
            parse(sum.as_bytes()).await,
            Err(FrameError::TooLarge { .. })
        ));
        for bad in [
            &b"send 1\nx"[..],
            b"SEND x\n",
            b"SEND -1\n",
            b"SEND  1\nx",
            b"\n",
            b"SEND 99999999999\n",
            b"\xff\n",
        ] {
            assert!(
                matches!(parse(bad).await, Err(FrameError::BadHeader(_))),
                "{bad:?}"
            );
        }
        let many = format!("SEND{}\n", " 0".repeat(MAX_FIELDS + 1));
        assert!(matches!(
            parse(many.as_bytes()).await,
            Err(FrameError::BadHeader(_))
        ));
        assert!(matches!(
            parse(b"SEND 5\nab").await,
            Err(FrameError::Truncated)
        ));
        assert!(matches!(parse(b"SEND 5").await, Err(FrameError::Truncated)));
    }

    fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    proptest::proptest! {
        /// Any fields (any bytes, any lengths) come back exactly, however the stream
        /// is cut into reads.
        #[test]
        fn any_fields_round_trip(
            fields in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..20),
            chunk in 1usize..64,
        ) {
            let frame = Frame { verb: "MSG".into(), fields };
            let bytes = frame.to_bytes();
            let (client, mut server) = tokio::io::duplex(chunk);
            let got = block_on(async move {
                let writer = tokio::spawn(async move {
                    tokio::io::AsyncWriteExt::write_all(&mut server, &bytes).await.unwrap();
                });
                let mut r = tokio::io::BufReader::new(client);
                let got = read_frame(&mut r).await.unwrap();
                writer.await.unwrap();
                got
            });
            proptest::prop_assert_eq!(got, frame);
        }

        /// Arbitrary bytes are a frame or an error, never a panic.
        #[test]
        fn garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = block_on(parse(&bytes));
        }
    }

    #[test]
    fn field_counts_are_checked() {
        let f = Frame::new("READ").with("x");
        assert!(f.expect_fields(1, 1).is_ok());
        assert!(
            f.expect_fields(2, 3)
                .unwrap_err()
                .contains("expected 2 to 3")
        );
    }
}
