//! The client library: what `SP_connect`, `SP_join`, `SP_multicast`, `SP_receive` and
//! `SP_disconnect` are to a C program, over the same wire protocol, so it works with
//! nuage's daemon and with Spread's own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), nuage_group::client::SpError> {
//! use nuage_group::client::{Mailbox, ConnectOptions, Received, Service};
//! let mb = Mailbox::connect("4803", "alice", &ConnectOptions::default()).await?;
//! mb.join("chat").await?;
//! mb.multicast(Service::Agreed, &["chat"], 1, b"hello").await?;
//! match mb.receive().await? {
//!     Received::Message(m) => println!("{} says {:?}", m.sender, m.data),
//!     Received::Membership(m) => println!("{:?}", m),
//! }
//! # Ok(()) }
//! ```
//!
//! A [`Mailbox`] may be shared: sending and receiving take `&self` and may run at once
//! from different tasks. [`blocking::Mailbox`] wraps it for programs without tokio.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::Mutex;

use crate::wire::{
    self, FrameView, GroupId, HEADER_LEN, Header, MAX_GROUP_NAME, MembershipBody, PROTOCOL_VERSION,
    code, service,
};

/// Largest message (groups and body) this library accepts from a daemon; membership
/// messages list every member, so this is above the 144000-byte body limit.
pub const MAX_RECEIVED_LEN: usize = 16 << 20;
/// Default time allowed to connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// An error as Spread's library reports it: a code (see [`wire::code`]) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpError {
    pub code: i32,
    pub detail: String,
}

impl SpError {
    pub fn new(code: i32, detail: impl Into<String>) -> SpError {
        SpError {
            code,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for SpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", wire::code_text(self.code))?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        Ok(())
    }
}

impl std::error::Error for SpError {}

fn closed(e: std::io::Error) -> SpError {
    SpError::new(code::CONNECTION_CLOSED, e.to_string())
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Spread's priority flag (sent, not used by the daemon).
    pub priority: bool,
    /// Receive membership messages (Spread's `group_membership`).
    pub group_membership: bool,
    /// Directory of the daemon's Unix socket (default `$NUAGE_GROUP_RUNTIME_DIR` or /tmp).
    pub runtime_dir: Option<PathBuf>,
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            priority: false,
            group_membership: true,
            runtime_dir: None,
            timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

/// The service level of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Unreliable,
    Reliable,
    Fifo,
    Causal,
    Agreed,
    Safe,
}

impl Service {
    pub fn bits(self) -> u32 {
        match self {
            Service::Unreliable => service::UNRELIABLE_MESS,
            Service::Reliable => service::RELIABLE_MESS,
            Service::Fifo => service::FIFO_MESS,
            Service::Causal => service::CAUSAL_MESS,
            Service::Agreed => service::AGREED_MESS,
            Service::Safe => service::SAFE_MESS,
        }
    }

    /// The service of a received `type` field.
    pub fn from_bits(t: u32) -> Option<Service> {
        [
            Service::Unreliable,
            Service::Reliable,
            Service::Fifo,
            Service::Causal,
            Service::Agreed,
            Service::Safe,
        ]
        .into_iter()
        .find(|s| t & s.bits() != 0)
    }

    /// Spread's name for it (`SAFE`, `AGREED`…).
    pub fn name(self) -> &'static str {
        match self {
            Service::Unreliable => "UNRELIABLE",
            Service::Reliable => "RELIABLE",
            Service::Fifo => "FIFO",
            Service::Causal => "CAUSAL",
            Service::Agreed => "AGREED",
            Service::Safe => "SAFE",
        }
    }
}

impl std::str::FromStr for Service {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "unreliable" => Ok(Service::Unreliable),
            "reliable" => Ok(Service::Reliable),
            "fifo" => Ok(Service::Fifo),
            "causal" => Ok(Service::Causal),
            "agreed" => Ok(Service::Agreed),
            "safe" => Ok(Service::Safe),
            _ => Err(format!(
                "unknown service `{s}` (unreliable, reliable, fifo, causal, agreed, safe)"
            )),
        }
    }
}

/// A regular (data) message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The `type` field (service bits, endian bits removed).
    pub service_type: u32,
    /// The sender's private group.
    pub sender: String,
    /// The groups it was sent to.
    pub groups: Vec<String>,
    pub mess_type: i16,
    /// The sender's byte order differs from this machine's (as `SP_receive` reports).
    pub endian_mismatch: bool,
    pub data: Bytes,
}

impl Message {
    pub fn service(&self) -> Option<Service> {
        Service::from_bits(self.service_type)
    }
}

/// Why a group's membership changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Join,
    Leave,
    Disconnect,
    Network,
}

/// What kind of membership message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembershipKind {
    /// A new regular view of the group.
    Regular {
        cause: Cause,
        /// For JOIN/LEAVE/DISCONNECT: the member that changed.
        changed: Option<String>,
    },
    /// The old view's guarantees end here (a network change follows).
    Transitional,
    /// This client left the group.
    SelfLeave,
}

/// A membership message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub service_type: u32,
    pub group: String,
    pub kind: MembershipKind,
    /// Members' private groups, in the same order at every member (regular views only).
    pub members: Vec<String>,
    /// This client's index in `members` (regular views only).
    pub my_index: Option<usize>,
    pub group_id: Option<GroupId>,
    pub vs_sets: Vec<Vec<String>>,
    pub my_vs_set: usize,
}

/// What [`Mailbox::receive`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Message(Message),
    Membership(Membership),
}

type Reader = BufReader<Box<dyn AsyncRead + Unpin + std::marker::Send>>;
type Writer = Box<dyn AsyncWrite + Unpin + std::marker::Send>;

/// A connection to a daemon.
pub struct Mailbox {
    private_group: String,
    reader: Mutex<Reader>,
    writer: Mutex<Writer>,
}

/// Where a Spread name (`""`, `"PORT"`, `"PORT@HOST"`) points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    Tcp(String, u16),
}

/// Parses a Spread daemon name: `""` or `"PORT"` is the Unix socket `<dir>/PORT`
/// (default port 4803), `"PORT@HOST"` is TCP.
pub fn parse_target(
    spread: &str,
    runtime_dir: Option<&std::path::Path>,
) -> Result<Target, SpError> {
    let dir = runtime_dir.map_or_else(crate::daemon::default_runtime_dir, PathBuf::from);
    let illegal = || {
        SpError::new(
            code::ILLEGAL_SPREAD,
            format!("`{spread}` is not PORT or PORT@HOST"),
        )
    };
    let (port, host) = match spread.split_once('@') {
        Some((p, h)) => (p, Some(h)),
        None => (spread, None),
    };
    let port: u16 = if port.is_empty() {
        wire::DEFAULT_PORT
    } else {
        port.parse().ok().filter(|p| *p != 0).ok_or_else(illegal)?
    };
    match host {
        None => Ok(Target::Unix(dir.join(port.to_string()))),
        Some("") => Err(illegal()),
        Some(h) => Ok(Target::Tcp(h.to_owned(), port)),
    }
}

impl Mailbox {
    /// Connects to the daemon `spread` as `name` (empty: the daemon picks a name).
    pub async fn connect(
        spread: &str,
        name: &str,
        opts: &ConnectOptions,
    ) -> Result<Mailbox, SpError> {
        wire::check_private_name(name).map_err(|e| SpError::new(code::REJECT_ILLEGAL_NAME, e.0))?;
        let target = parse_target(spread, opts.runtime_dir.as_deref())?;
        tokio::time::timeout(opts.timeout, Self::connect_to(target, name, opts))
            .await
            .map_err(|_| SpError::new(code::COULD_NOT_CONNECT, "timed out"))?
    }

    async fn connect_to(
        target: Target,
        name: &str,
        opts: &ConnectOptions,
    ) -> Result<Mailbox, SpError> {
        let (rd, wr): (Box<dyn AsyncRead + Unpin + std::marker::Send>, Writer) = match &target {
            Target::Unix(p) => {
                let s = tokio::net::UnixStream::connect(p).await.map_err(|e| {
                    SpError::new(code::COULD_NOT_CONNECT, format!("{}: {e}", p.display()))
                })?;
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Target::Tcp(h, port) => {
                let s = tokio::net::TcpStream::connect((h.as_str(), *port))
                    .await
                    .map_err(|e| {
                        SpError::new(code::COULD_NOT_CONNECT, format!("{h}:{port}: {e}"))
                    })?;
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        };
        let mut rd = BufReader::new(rd);
        let mut wr = wr;
        wr.write_all(&wire::encode_connect(
            PROTOCOL_VERSION,
            name,
            u8::from(opts.priority),
            opts.group_membership,
        ))
        .await
        .map_err(closed)?;
        // The list of authentication methods, or an error byte.
        let len = rd.read_u8().await.map_err(closed)? as i8;
        if len <= 0 {
            return Err(SpError::new(i32::from(len), "refused by the daemon"));
        }
        let mut methods = vec![0u8; len as usize];
        rd.read_exact(&mut methods).await.map_err(closed)?;
        let offered = String::from_utf8_lossy(&methods);
        if !offered.split(' ').any(|m| m == wire::AUTH_NULL) {
            return Err(SpError::new(
                code::REJECT_AUTH,
                format!("the daemon offers only `{}`", offered.trim()),
            ));
        }
        wr.write_all(&wire::encode_auth_choice(wire::AUTH_NULL))
            .await
            .map_err(closed)?;
        let accept = rd.read_u8().await.map_err(closed)? as i8;
        if i32::from(accept) != code::ACCEPT_SESSION {
            return Err(SpError::new(i32::from(accept), "refused by the daemon"));
        }
        let major = rd.read_u8().await.map_err(closed)?;
        let minor = rd.read_u8().await.map_err(closed)?;
        if major < 3 {
            return Err(SpError::new(
                code::REJECT_VERSION,
                format!("daemon version {major}.{minor}"),
            ));
        }
        // Daemons of 3.15 and later send a patch byte to clients of 3.15 and later.
        if u32::from(major) * 100 + u32::from(minor) >= 315 {
            rd.read_u8().await.map_err(closed)?;
        }
        let glen = rd.read_u8().await.map_err(closed)? as usize;
        let mut group = vec![0u8; glen];
        rd.read_exact(&mut group).await.map_err(closed)?;
        let private_group = String::from_utf8(group)
            .map_err(|_| SpError::new(code::ILLEGAL_SESSION, "private group is not text"))?;
        Ok(Mailbox {
            private_group,
            reader: Mutex::new(rd),
            writer: Mutex::new(wr),
        })
    }

    /// This connection's private group (`#name#daemon`).
    pub fn private_group(&self) -> &str {
        &self.private_group
    }

    async fn send_frame(&self, frame: &[u8]) -> Result<(), SpError> {
        let mut w = self.writer.lock().await;
        w.write_all(frame).await.map_err(closed)
    }

    /// Joins `group`.
    pub async fn join(&self, group: &str) -> Result<(), SpError> {
        wire::check_group_name(group).map_err(|e| SpError::new(code::ILLEGAL_GROUP, e.0))?;
        let f = wire::encode_message(
            service::JOIN_MESS,
            &self.private_group,
            &[group],
            wire::hint_for(0),
            &[],
        );
        self.send_frame(&f).await
    }

    /// Leaves `group`.
    pub async fn leave(&self, group: &str) -> Result<(), SpError> {
        wire::check_group_name(group).map_err(|e| SpError::new(code::ILLEGAL_GROUP, e.0))?;
        let f = wire::encode_message(
            service::LEAVE_MESS,
            &self.private_group,
            &[group],
            wire::hint_for(0),
            &[],
        );
        self.send_frame(&f).await
    }

    /// Sends `data` to `groups` (group names or private groups).
    pub async fn multicast(
        &self,
        svc: Service,
        groups: &[&str],
        mess_type: i16,
        data: &[u8],
    ) -> Result<usize, SpError> {
        self.multicast_bits(svc.bits(), groups, mess_type, data)
            .await
    }

    /// Sends with raw service bits (one service bit, optionally `SELF_DISCARD`).
    pub async fn multicast_bits(
        &self,
        bits: u32,
        groups: &[&str],
        mess_type: i16,
        data: &[u8],
    ) -> Result<usize, SpError> {
        if (bits & wire::SERVICE_BITS_MASK).count_ones() != 1
            || bits & !(wire::SERVICE_BITS_MASK | service::SELF_DISCARD) != 0
        {
            return Err(SpError::new(
                code::ILLEGAL_SERVICE,
                format!("service bits 0x{bits:x}"),
            ));
        }
        if groups.len() > wire::MAX_GROUPS_PER_MESSAGE {
            return Err(SpError::new(
                code::ILLEGAL_GROUP,
                format!("{} groups", groups.len()),
            ));
        }
        for g in groups {
            wire::check_destination(g).map_err(|e| SpError::new(code::ILLEGAL_GROUP, e.0))?;
        }
        if data.len() + groups.len() * MAX_GROUP_NAME > wire::MAX_MESSAGE_BODY_LEN - HEADER_LEN {
            return Err(SpError::new(
                code::MESSAGE_TOO_LONG,
                format!("{} bytes", data.len()),
            ));
        }
        let f = wire::encode_message(
            bits,
            &self.private_group,
            groups,
            wire::hint_for(mess_type),
            data,
        );
        self.send_frame(&f).await?;
        Ok(data.len())
    }

    /// Waits for the next message.
    pub async fn receive(&self) -> Result<Received, SpError> {
        let mut r = self.reader.lock().await;
        let mut head = [0u8; HEADER_LEN];
        r.read_exact(&mut head).await.map_err(closed)?;
        let h = Header::decode(&head).map_err(|e| SpError::new(code::ILLEGAL_MESSAGE, e.0))?;
        let len = h
            .payload_len()
            .filter(|l| *l <= MAX_RECEIVED_LEN)
            .ok_or_else(|| {
                SpError::new(code::ILLEGAL_MESSAGE, "bad lengths in a message header")
            })?;
        let mut frame = vec![0u8; HEADER_LEN + len];
        frame[..HEADER_LEN].copy_from_slice(&head);
        r.read_exact(&mut frame[HEADER_LEN..])
            .await
            .map_err(closed)?;
        drop(r);
        decode_received(&frame, &self.private_group)
    }

    /// Bytes waiting to be read without blocking (`SP_poll`).
    pub async fn poll(&self) -> Result<usize, SpError> {
        let mut r = self.reader.lock().await;
        if !r.buffer().is_empty() {
            return Ok(r.buffer().len());
        }
        match tokio::time::timeout(Duration::ZERO, r.fill_buf()).await {
            Ok(Ok([])) => Err(SpError::new(code::CONNECTION_CLOSED, "")),
            Ok(Ok(b)) => Ok(b.len()),
            Ok(Err(e)) => Err(closed(e)),
            Err(_) => Ok(0),
        }
    }

    /// Disconnects (`SP_disconnect`): tells the daemon, then closes.
    pub async fn disconnect(self) -> Result<(), SpError> {
        let f = wire::encode_message(
            service::KILL_MESS,
            &self.private_group,
            &[&self.private_group],
            wire::hint_for(0),
            &[],
        );
        let mut w = self.writer.lock().await;
        w.write_all(&f).await.map_err(closed)?;
        let _ = w.shutdown().await;
        Ok(())
    }
}

/// Decodes a whole message as received by the client `me`.
pub fn decode_received(frame: &[u8], me: &str) -> Result<Received, SpError> {
    let illegal = |e: wire::WireError| SpError::new(code::ILLEGAL_MESSAGE, e.0);
    let v = FrameView::parse(frame).map_err(illegal)?;
    let t = v.header.service_type;
    let little = wire::is_little_endian(frame[0..4].try_into().expect("4"));
    let body = Bytes::copy_from_slice(&frame[v.body_at..]);
    if t & wire::SERVICE_BITS_MASK != 0 && t & service::MEMBERSHIP_MESS == 0 {
        return Ok(Received::Message(Message {
            service_type: t,
            sender: v.header.sender.clone(),
            mess_type: v.header.mess_type(),
            endian_mismatch: v.header.endian_mismatch(),
            groups: v.groups,
            data: body,
        }));
    }
    let group = v.header.sender.clone();
    if t & service::REG_MEMB_MESS != 0 {
        let b = MembershipBody::decode(&body, little).map_err(illegal)?;
        let cause = if t & service::CAUSED_BY_JOIN != 0 {
            Cause::Join
        } else if t & service::CAUSED_BY_LEAVE != 0 {
            Cause::Leave
        } else if t & service::CAUSED_BY_DISCONNECT != 0 {
            Cause::Disconnect
        } else {
            Cause::Network
        };
        let changed = (cause != Cause::Network)
            .then(|| b.vs_sets.first().and_then(|s| s.first()).cloned())
            .flatten();
        let my_index = v.groups.iter().position(|m| m == me);
        return Ok(Received::Membership(Membership {
            service_type: t,
            group,
            kind: MembershipKind::Regular { cause, changed },
            members: v.groups,
            my_index,
            group_id: Some(b.group_id),
            vs_sets: b.vs_sets,
            my_vs_set: b.my_vs_set,
        }));
    }
    let kind = if t & service::TRANSITION_MESS != 0 {
        MembershipKind::Transitional
    } else if t & service::CAUSED_BY_LEAVE != 0 {
        MembershipKind::SelfLeave
    } else {
        return Err(SpError::new(
            code::ILLEGAL_MESSAGE,
            format!("unknown message type 0x{t:x}"),
        ));
    };
    let group_id = (body.len() >= 12).then(|| {
        let r = |i: usize| {
            let b: [u8; 4] = body[i..i + 4].try_into().expect("4");
            if little {
                i32::from_le_bytes(b)
            } else {
                i32::from_be_bytes(b)
            }
        };
        GroupId([r(0), r(4), r(8)])
    });
    Ok(Received::Membership(Membership {
        service_type: t,
        group,
        kind,
        members: Vec::new(),
        my_index: None,
        group_id,
        vs_sets: Vec::new(),
        my_vs_set: 0,
    }))
}

/// The same client for programs without an async runtime.
pub mod blocking {
    use super::{ConnectOptions, Received, Service, SpError};

    /// A connection to a daemon, with blocking calls.
    pub struct Mailbox {
        rt: tokio::runtime::Runtime,
        inner: super::Mailbox,
    }

    impl Mailbox {
        pub fn connect(
            spread: &str,
            name: &str,
            opts: &ConnectOptions,
        ) -> Result<Mailbox, SpError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| SpError::new(super::code::COULD_NOT_CONNECT, e.to_string()))?;
            let inner = rt.block_on(super::Mailbox::connect(spread, name, opts))?;
            Ok(Mailbox { rt, inner })
        }
        pub fn private_group(&self) -> &str {
            self.inner.private_group()
        }
        pub fn join(&self, group: &str) -> Result<(), SpError> {
            self.rt.block_on(self.inner.join(group))
        }
        pub fn leave(&self, group: &str) -> Result<(), SpError> {
            self.rt.block_on(self.inner.leave(group))
        }
        pub fn multicast(
            &self,
            svc: Service,
            groups: &[&str],
            mess_type: i16,
            data: &[u8],
        ) -> Result<usize, SpError> {
            self.rt
                .block_on(self.inner.multicast(svc, groups, mess_type, data))
        }
        pub fn multicast_bits(
            &self,
            bits: u32,
            groups: &[&str],
            mess_type: i16,
            data: &[u8],
        ) -> Result<usize, SpError> {
            self.rt
                .block_on(self.inner.multicast_bits(bits, groups, mess_type, data))
        }
        pub fn receive(&self) -> Result<Received, SpError> {
            self.rt.block_on(self.inner.receive())
        }
        /// Waits at most `timeout` for a message.
        pub fn receive_timeout(
            &self,
            timeout: std::time::Duration,
        ) -> Result<Option<Received>, SpError> {
            self.rt
                .block_on(async { tokio::time::timeout(timeout, self.inner.receive()).await })
                .map_or(Ok(None), |r| r.map(Some))
        }
        pub fn poll(&self) -> Result<usize, SpError> {
            self.rt.block_on(self.inner.poll())
        }
        pub fn disconnect(self) -> Result<(), SpError> {
            let Mailbox { rt, inner } = self;
            rt.block_on(inner.disconnect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let d = std::path::Path::new("/run/x");
        assert_eq!(
            parse_target("", Some(d)).unwrap(),
            Target::Unix("/run/x/4803".into())
        );
        assert_eq!(
            parse_target("5000", Some(d)).unwrap(),
            Target::Unix("/run/x/5000".into())
        );
        assert_eq!(
            parse_target("4803@10.0.0.1", Some(d)).unwrap(),
            Target::Tcp("10.0.0.1".into(), 4803)
        );
        assert_eq!(
            parse_target("x@h", Some(d)).unwrap_err().code,
            code::ILLEGAL_SPREAD
        );
        assert_eq!(
            parse_target("4803@", Some(d)).unwrap_err().code,
            code::ILLEGAL_SPREAD
        );
    }

    #[test]
    fn received_messages_decode() {
        let f = wire::encode_message(
            service::SAFE_MESS,
            "#a#d",
            &["g"],
            wire::hint_for(-3),
            b"hey",
        );
        let Received::Message(m) = decode_received(&f, "#b#d").unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.mess_type, m.service(), &m.data[..]),
            (-3, Some(Service::Safe), &b"hey"[..])
        );
        let body = MembershipBody {
            group_id: GroupId([1, 2, 3]),
            vs_sets: vec![vec!["#b#d".into()]],
            my_vs_set: 0,
        };
        let f = wire::regular_membership("g", &["#a#d", "#b#d"], service::CAUSED_BY_JOIN, &body);
        let Received::Membership(m) = decode_received(&f, "#a#d").unwrap() else {
            panic!()
        };
        assert_eq!(m.my_index, Some(0));
        assert_eq!(
            m.kind,
            MembershipKind::Regular {
                cause: Cause::Join,
                changed: Some("#b#d".into())
            }
        );
        let f = wire::transitional_membership("g", GroupId([1, 2, 3]));
        let Received::Membership(m) = decode_received(&f, "#a#d").unwrap() else {
            panic!()
        };
        assert_eq!(
            (m.kind, m.group_id),
            (MembershipKind::Transitional, Some(GroupId([1, 2, 3])))
        );
    }
}
