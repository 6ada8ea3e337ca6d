//! The verbs of the mail protocol, as typed values, and their frames.
//!
//! | frame (fields in order)                                        | from → to       |
//! |----------------------------------------------------------------|-----------------|
//! | `SEND from text to…` (1 to [`MAX_RECIPIENTS`] recipients)      | client → server |
//! | `READ mailbox`                                                 | client → server |
//! | `QUIT`                                                         | client → server |
//! | `STAT` (answer: `OK report`, the queues and hold-back as text) | client → server |
//! | `FWD origin fingerprint id from sent_at stamp text to…`        | server → server |
//! | `MSG number id from sent_at text to…` (one per message)        | server → client |
//! | `OK info` / `ERR message`                                      | the answer      |
//!
//! `sent_at` is milliseconds since the Unix epoch in decimal; `stamp` is the binary
//! matrix clock (nuage-coord's encoding); addresses are `user@domain`.

use crate::address::Address;
use crate::frame::Frame;
use crate::servers::MAX_DOMAINS;

/// Most recipients of one message.
pub const MAX_RECIPIENTS: usize = 100;
/// Longest message text, in bytes (256 KiB).
pub const MAX_TEXT: usize = 256 * 1024;

/// A message a user submits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    pub from: Address,
    pub to: Vec<Address>,
    pub text: String,
}

/// A copy of a message that one server forwards to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The sending server's domain.
    pub origin: String,
    /// The sender's [`Directory::fingerprint`](crate::servers::Directory::fingerprint).
    pub fingerprint: String,
    /// The message's id (`domain-number`), the same in every mailbox it reaches.
    pub id: String,
    pub from: Address,
    /// Every recipient (also those of other domains), as the sender wrote them.
    pub to: Vec<Address>,
    pub sent_at_ms: u64,
    /// The encoded matrix clock.
    pub stamp: Vec<u8>,
    pub text: String,
}

/// A message in a mailbox, as READ returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Position in the mailbox, from 1, in delivery (causal) order.
    pub number: u64,
    pub id: String,
    pub from: Address,
    pub to: Vec<Address>,
    pub sent_at_ms: u64,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Send(Submission),
    Read(Address),
    Forward(Forward),
    /// The server's queues and hold-back (what `mailq` shows for sendmail).
    Status,
    Quit,
}

/// Checks a message text: at most [`MAX_TEXT`] bytes.
pub fn check_text(text: &str) -> Result<(), String> {
    if text.len() > MAX_TEXT {
        return Err(format!(
            "message text of {} bytes exceeds the limit of {MAX_TEXT} bytes",
            text.len()
        ));
    }
    Ok(())
}

fn check_recipients(to: &[Address]) -> Result<(), String> {
    if to.is_empty() {
        return Err("a message needs at least one recipient".into());
    }
    if to.len() > MAX_RECIPIENTS {
        return Err(format!(
            "{} recipients, more than the limit of {MAX_RECIPIENTS}",
            to.len()
        ));
    }
    Ok(())
}

fn address(frame: &Frame, i: usize, what: &str) -> Result<Address, String> {
    Address::parse(frame.text(i, what)?)
}

fn addresses(frame: &Frame, from: usize) -> Result<Vec<Address>, String> {
    (from..frame.fields.len())
        .map(|i| address(frame, i, "recipient"))
        .collect()
}

fn number(frame: &Frame, i: usize, what: &str) -> Result<u64, String> {
    let text = frame.text(i, what)?;
    text.parse()
        .map_err(|_| format!("the {what} `{}` is not a number", text.escape_debug()))
}

impl Submission {
    pub fn new(from: Address, to: Vec<Address>, text: String) -> Result<Submission, String> {
        check_recipients(&to)?;
        check_text(&text)?;
        Ok(Submission { from, to, text })
    }
}

impl Request {
    pub fn to_frame(&self) -> Frame {
        match self {
            Request::Send(s) => {
                let mut f = Frame::new("SEND")
                    .with(s.from.to_string())
                    .with(s.text.as_str());
                for to in &s.to {
                    f = f.with(to.to_string());
                }
                f
            }
            Request::Read(a) => Frame::new("READ").with(a.to_string()),
            Request::Quit => Frame::new("QUIT"),
            Request::Status => Frame::new("STAT"),
            Request::Forward(w) => {
                let mut f = Frame::new("FWD")
                    .with(w.origin.as_str())
                    .with(w.fingerprint.as_str())
                    .with(w.id.as_str())
                    .with(w.from.to_string())
                    .with(w.sent_at_ms.to_string())
                    .with(w.stamp.clone())
                    .with(w.text.as_str());
                for to in &w.to {
                    f = f.with(to.to_string());
                }
                f
            }
        }
    }

    /// Reads a request from a frame; the error says what is wrong with it.
    pub fn from_frame(frame: &Frame) -> Result<Request, String> {
        match frame.verb.as_str() {
            "SEND" => {
                frame.expect_fields(3, 2 + MAX_RECIPIENTS)?;
                let from = address(frame, 0, "sender")?;
                let text = frame.text(1, "text")?.to_owned();
                let to = addresses(frame, 2)?;
                Ok(Request::Send(Submission::new(from, to, text)?))
            }
            "READ" => {
                frame.expect_fields(1, 1)?;
                Ok(Request::Read(address(frame, 0, "mailbox")?))
            }
            "QUIT" => {
                frame.expect_fields(0, 0)?;
                Ok(Request::Quit)
            }
            "STAT" => {
                frame.expect_fields(0, 0)?;
                Ok(Request::Status)
            }
            "FWD" => {
                frame.expect_fields(8, 7 + MAX_RECIPIENTS)?;
                let text = frame.text(6, "text")?.to_owned();
                check_text(&text)?;
                let to = addresses(frame, 7)?;
                check_recipients(&to)?;
                Ok(Request::Forward(Forward {
                    origin: frame.text(0, "origin")?.to_owned(),
                    fingerprint: frame.text(1, "fingerprint")?.to_owned(),
                    id: frame.text(2, "id")?.to_owned(),
                    from: address(frame, 3, "sender")?,
                    sent_at_ms: number(frame, 4, "send time")?,
                    stamp: frame.bytes(5, "stamp")?.to_vec(),
                    text,
                    to,
                }))
            }
            other => Err(format!(
                "unknown verb `{other}` (SEND, READ, STAT, QUIT, or FWD between servers)"
            )),
        }
    }
}

impl Message {
    pub fn to_frame(&self) -> Frame {
        let mut f = Frame::new("MSG")
            .with(self.number.to_string())
            .with(self.id.as_str())
            .with(self.from.to_string())
            .with(self.sent_at_ms.to_string())
            .with(self.text.as_str());
        for to in &self.to {
            f = f.with(to.to_string());
        }
        f
    }

    pub fn from_frame(frame: &Frame) -> Result<Message, String> {
        if frame.verb != "MSG" {
            return Err(format!("expected MSG, got {}", frame.verb));
        }
        frame.expect_fields(6, 5 + MAX_RECIPIENTS)?;
        Ok(Message {
            number: number(frame, 0, "message number")?,
            id: frame.text(1, "id")?.to_owned(),
            from: address(frame, 2, "sender")?,
            sent_at_ms: number(frame, 3, "send time")?,
            text: frame.text(4, "text")?.to_owned(),
            to: addresses(frame, 5)?,
        })
    }
}

/// `OK info`.
pub fn ok(info: impl Into<Vec<u8>>) -> Frame {
    Frame::new("OK").with(info)
}

/// `ERR message`.
pub fn err(message: impl Into<Vec<u8>>) -> Frame {
    Frame::new("ERR").with(message)
}

/// The largest FWD frame body the bounds allow: addresses, a stamp (nuage-coord's
/// encoding: varints n and me, then n² counters of at most 10 bytes each), the text.
const MAX_FORWARD_BODY: usize = {
    let address = crate::address::MAX_USER + 1 + crate::address::MAX_DOMAIN;
    let stamp = 4 + MAX_DOMAINS * MAX_DOMAINS * 10;
    crate::address::MAX_DOMAIN
        + 16
        + 40
        + address
        + 20
        + stamp
        + MAX_TEXT
        + MAX_RECIPIENTS * address
};
// Every frame this protocol builds fits the framing's bounds (`Frame::to_bytes` asserts).
const _: () = assert!(MAX_FORWARD_BODY <= crate::frame::MAX_FRAME_BODY);
const _: () = assert!(7 + MAX_RECIPIENTS <= crate::frame::MAX_FIELDS);

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn requests_round_trip() {
        let text = "line: one\nline @ two\n« non-ASCII » ✓";
        let requests = [
            Request::Send(
                Submission::new(
                    addr("afida@a"),
                    vec![addr("brandon@b"), addr("nabilla@n")],
                    text.into(),
                )
                .unwrap(),
            ),
            Request::Read(addr("nabilla@n")),
            Request::Quit,
            Request::Status,
            Request::Forward(Forward {
                origin: "a".into(),
                fingerprint: "0123".into(),
                id: "a-1".into(),
                from: addr("afida@a"),
                to: vec![addr("brandon@b")],
                sent_at_ms: 1_700_000_000_000,
                stamp: vec![3, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0],
                text: text.into(),
            }),
        ];
        for r in requests {
            assert_eq!(Request::from_frame(&r.to_frame()).unwrap(), r);
        }
        let m = Message {
            number: 3,
            id: "b-7".into(),
            from: addr("brandon@b"),
            to: vec![addr("afida@a"), addr("nabilla@n")],
            sent_at_ms: 5,
            text: String::new(),
        };
        assert_eq!(Message::from_frame(&m.to_frame()).unwrap(), m);
    }

    #[test]
    fn bad_requests_say_why() {
        let cases = [
            (Frame::new("HELO"), "unknown verb `HELO`"),
            (Frame::new("SEND").with("a@a").with("t"), "has 2 fields"),
            (
                Frame::new("SEND").with("a").with("t").with("b@b"),
                "not an address",
            ),
            (
                Frame::new("SEND").with("a@a").with(vec![0xff]).with("b@b"),
                "text is not valid UTF-8",
            ),
            (
                Frame::new("SEND")
                    .with("a@a")
                    .with("x".repeat(MAX_TEXT + 1))
                    .with("b@b"),
                "exceeds the limit",
            ),
            (Frame::new("READ"), "has 0 fields"),
            (Frame::new("QUIT").with("x"), "has 1 fields"),
        ];
        for (frame, why) in cases {
            let err = Request::from_frame(&frame).unwrap_err();
            assert!(err.contains(why), "{frame:?}: {err}");
        }
    }
}
