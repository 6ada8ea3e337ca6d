//! The Spread client wire protocol: what flows between a client program and its local
//! daemon over TCP or a Unix socket. Real Spread programs (spuser, libspread, the Java
//! and Python bindings) speak it, so every byte here follows Spread 4.x/5.x.
//!
//! - Connect: the client sends `major minor [patch] flags name_len name`; clients of
//!   3.16.0 and later then get the list of authentication methods (`05 "NULL "`) and
//!   answer with 90 bytes (3 × 30-byte method names); the daemon accepts with
//!   `ACCEPT_SESSION major minor [patch] len private_group` or refuses with one signed
//!   error byte.
//! - Messages, both ways: a 48-byte header (type, sender, num_groups, hint, data_len),
//!   `num_groups` 32-byte group names, then `data_len` bytes of body.
//!
//! Integers are in the *sender's* byte order; the bits `0x80000080` in `type` and
//! `hint` say the sender is little-endian. This daemon always writes little-endian and
//! reads both orders. `hint` is passed through untouched, bodies are never touched.

use bytes::{BufMut, Bytes, BytesMut};

/// Default daemon port (TCP for clients, UDP between daemons; Unix socket `/tmp/4803`).
pub const DEFAULT_PORT: u16 = 4803;
/// Size of a group name field on the wire, NUL included: names have 1 to 31 characters.
pub const MAX_GROUP_NAME: usize = 32;
/// Longest private (client) name.
pub const MAX_PRIVATE_NAME: usize = 10;
/// Size of a daemon name field, NUL included: daemon names have 1 to 19 characters, so
/// that `#private#daemon` fits in a group name.
pub const MAX_PROC_NAME: usize = 20;
/// Most destination groups of one message.
pub const MAX_GROUPS_PER_MESSAGE: usize = 100;
/// Largest body plus destination group names of one message: 100 × (1472 − 32).
pub const MAX_MESSAGE_BODY_LEN: usize = 144_000;
/// Size of the message header.
pub const HEADER_LEN: usize = 48;
/// Size of one authentication method name slot, and the number of slots.
pub const MAX_AUTH_NAME: usize = 30;
pub const MAX_AUTH_METHODS: usize = 3;
/// The only authentication method this daemon offers (it exchanges nothing).
pub const AUTH_NULL: &str = "NULL";

/// The protocol version this daemon and client library announce.
pub const PROTOCOL_VERSION: Version = Version {
    major: 5,
    minor: 0,
    patch: 1,
};

/// Byte-order flag bits in `type` and `hint`: all set means little-endian.
pub const ENDIAN_BITS: u32 = 0x8000_0080;

/// Service type bits (the `type` field).
pub mod service {
    pub const UNRELIABLE_MESS: u32 = 0x0000_0001;
    pub const RELIABLE_MESS: u32 = 0x0000_0002;
    pub const FIFO_MESS: u32 = 0x0000_0004;
    pub const CAUSAL_MESS: u32 = 0x0000_0008;
    pub const AGREED_MESS: u32 = 0x0000_0010;
    pub const SAFE_MESS: u32 = 0x0000_0020;
    pub const REGULAR_MESS: u32 = 0x0000_003f;
    pub const SELF_DISCARD: u32 = 0x0000_0040;
    pub const DROP_RECV: u32 = 0x0100_0000;
    pub const REG_MEMB_MESS: u32 = 0x0000_1000;
    pub const TRANSITION_MESS: u32 = 0x0000_2000;
    pub const CAUSED_BY_JOIN: u32 = 0x0000_0100;
    pub const CAUSED_BY_LEAVE: u32 = 0x0000_0200;
    pub const CAUSED_BY_DISCONNECT: u32 = 0x0000_0400;
    pub const CAUSED_BY_NETWORK: u32 = 0x0000_0800;
    pub const MEMBERSHIP_MESS: u32 = 0x0000_3f00;
    pub const JOIN_MESS: u32 = 0x0001_0000;
    pub const LEAVE_MESS: u32 = 0x0002_0000;
    pub const KILL_MESS: u32 = 0x0004_0000;
    pub const REJECT_MESS: u32 = 0x0040_0000;
}

/// Error codes (connect replies are one signed byte; the client library returns them).
pub mod code {
    pub const ACCEPT_SESSION: i32 = 1;
    pub const ILLEGAL_SPREAD: i32 = -1;
    pub const COULD_NOT_CONNECT: i32 = -2;
    pub const REJECT_QUOTA: i32 = -3;
    pub const REJECT_NO_NAME: i32 = -4;
    pub const REJECT_ILLEGAL_NAME: i32 = -5;
    pub const REJECT_NOT_UNIQUE: i32 = -6;
    pub const REJECT_VERSION: i32 = -7;
    pub const CONNECTION_CLOSED: i32 = -8;
    pub const REJECT_AUTH: i32 = -9;
    pub const ILLEGAL_SESSION: i32 = -11;
    pub const ILLEGAL_SERVICE: i32 = -12;
    pub const ILLEGAL_MESSAGE: i32 = -13;
    pub const ILLEGAL_GROUP: i32 = -14;
    pub const BUFFER_TOO_SHORT: i32 = -15;
    pub const GROUPS_TOO_SHORT: i32 = -16;
    pub const MESSAGE_TOO_LONG: i32 = -17;
    pub const NET_ERROR_ON_SESSION: i32 = -18;
}

/// Spread's text for an error code: what `SP_error` prints after `SP_error: (CODE) `,
/// word for word (programs and scripts match on these lines).
pub fn code_text(code: i32) -> &'static str {
    match code {
        code::ILLEGAL_SPREAD => "Illegal spread was provided",
        code::COULD_NOT_CONNECT => "Could not connect. Is Spread running?",
        code::REJECT_QUOTA => "Connection rejected, too many users",
        code::REJECT_NO_NAME => "Connection rejected, no name was supplied",
        code::REJECT_ILLEGAL_NAME => "Connection rejected, illegal name",
        code::REJECT_NOT_UNIQUE => "Connection rejected, name not unique",
        code::REJECT_VERSION => "Connection rejected, library does not fit daemon",
        code::CONNECTION_CLOSED => "Connection closed by spread",
        code::REJECT_AUTH => "Connection rejected, authentication failed",
        code::ILLEGAL_SESSION => "Illegal session was supplied",
        code::ILLEGAL_SERVICE => "Illegal service request",
        code::ILLEGAL_MESSAGE => "Illegal message",
        code::ILLEGAL_GROUP => "Illegal group",
        code::BUFFER_TOO_SHORT => "The supplied buffer was too short",
        code::GROUPS_TOO_SHORT => "The supplied groups list was too short",
        code::MESSAGE_TOO_LONG => {
            "The message body + group names was too large to fit in a message"
        }
        code::NET_ERROR_ON_SESSION => {
            "The network socket experienced an error. This Spread mailbox will no longer work until the connection is disconnected and then reconnected"
        }
        _ => "unrecognized error",
    }
}

/// A client library or daemon version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u8,
    pub minor: u8,
    pub patch: u8,
}

impl Version {
    /// `major*10000 + minor*100 + patch`, the number Spread compares.
    pub fn number(self) -> u32 {
        u32::from(self.major) * 10_000 + u32::from(self.minor) * 100 + u32::from(self.patch)
    }
    /// Whether the client sends a patch byte: only versions above 3.14 do (the daemon
    /// decides on major and minor alone, before it has read the patch).
    pub fn sends_patch(major: u8, minor: u8) -> bool {
        u32::from(major) * 10_000 + u32::from(minor) * 100 > 31_400
    }
    /// Oldest client accepted: 3.1.0.
    pub fn supported(self) -> bool {
        self.number() >= 30_100
    }
    /// Clients of 3.16.0 and later take part in the authentication exchange.
    pub fn authenticates(self) -> bool {
        self.number() >= 31_600
    }
    /// Clients of 3.15.0 and later expect the daemon's patch byte in the accept reply.
    pub fn expects_patch(self) -> bool {
        self.number() >= 31_500
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A protocol violation; the session that sent it is ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError(pub String);

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for WireError {}

fn bad(msg: impl Into<String>) -> WireError {
    WireError(msg.into())
}

// ---------------------------------------------------------------------------------------
// Names

/// Checks a group name a client may join or leave: 1 to 31 characters from `$` to `~`.
pub fn check_group_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() >= MAX_GROUP_NAME {
        return Err(bad(format!(
            "group name `{}` must have 1 to {} characters",
            name.escape_default(),
            MAX_GROUP_NAME - 1
        )));
    }
    if let Some(c) = name.bytes().find(|b| !(b'$'..=b'~').contains(b)) {
        return Err(bad(format!(
            "group name `{}` has the byte 0x{c:02x}; use characters from '$' to '~'",
            name.escape_default()
        )));
    }
    Ok(())
}

/// Checks a destination of a multicast: a group name, or a private group (`#name#daemon`).
pub fn check_destination(name: &str) -> Result<(), WireError> {
    if name.starts_with('#') {
        if name.len() >= MAX_GROUP_NAME || split_private_group(name).is_none() {
            return Err(bad(format!(
                "`{}` is not a private group name",
                name.escape_default()
            )));
        }
        Ok(())
    } else {
        check_group_name(name)
    }
}

/// Checks a private (client) name: at most 10 characters, each above `#` and up to `~`.
pub fn check_private_name(name: &str) -> Result<(), WireError> {
    if name.len() > MAX_PRIVATE_NAME {
        return Err(bad(format!(
            "private name `{}` is longer than {MAX_PRIVATE_NAME} characters",
            name.escape_default()
        )));
    }
    if let Some(c) = name.bytes().find(|b| *b <= b'#' || *b > b'~') {
        return Err(bad(format!(
            "private name `{}` has the byte 0x{c:02x}; use characters from '$' to '~'",
            name.escape_default()
        )));
    }
    Ok(())
}

/// Checks a daemon name: 1 to 19 characters from `$` to `~`.
pub fn check_daemon_name(name: &str) -> Result<(), WireError> {
    if name.is_empty() || name.len() >= MAX_PROC_NAME {
        return Err(bad(format!(
            "daemon name `{}` must have 1 to {} characters",
            name.escape_default(),
            MAX_PROC_NAME - 1
        )));
    }
    if let Some(c) = name.bytes().find(|b| *b <= b'#' || *b > b'~') {
        return Err(bad(format!(
            "daemon name `{}` has the byte 0x{c:02x}; use characters from '$' to '~'",
            name.escape_default()
        )));
    }
    Ok(())
}

/// `#name#daemon`, the private group of a client.
pub fn private_group(name: &str, daemon: &str) -> String {
    format!("#{name}#{daemon}")
}

/// Splits `#name#daemon` into its two parts.
pub fn split_private_group(group: &str) -> Option<(&str, &str)> {
    let rest = group.strip_prefix('#')?;
    let (name, daemon) = rest.split_once('#')?;
    if name.is_empty() || daemon.is_empty() || daemon.contains('#') {
        return None;
    }
    Some((name, daemon))
}

/// Reads a NUL-padded name field (at most 31 meaningful bytes, as Spread forces a NUL at
/// the end). Bytes that are not ASCII are an error.
pub fn read_name(field: &[u8]) -> Result<String, WireError> {
    let field = &field[..field.len().min(MAX_GROUP_NAME - 1)];
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    let bytes = &field[..end];
    if !bytes.is_ascii() {
        return Err(bad("a name field holds bytes that are not ASCII"));
    }
    Ok(String::from_utf8(bytes.to_vec()).expect("ASCII is UTF-8"))
}

/// Appends a name as a 32-byte NUL-padded field.
pub fn put_name(out: &mut BytesMut, name: &str) {
    let bytes = name.as_bytes();
    assert!(bytes.len() < MAX_GROUP_NAME, "name `{name}` does not fit");
    out.put_slice(bytes);
    out.put_bytes(0, MAX_GROUP_NAME - bytes.len());
}

// ---------------------------------------------------------------------------------------
// Byte order helpers

fn read_u32(b: &[u8], at: usize, little: bool) -> u32 {
    let raw: [u8; 4] = b[at..at + 4].try_into().expect("4 bytes");
    if little {
        u32::from_le_bytes(raw)
    } else {
        u32::from_be_bytes(raw)
    }
}

/// Whether a `type` or `hint` field, as the 4 bytes on the wire, was written by a
/// little-endian sender. The flag bits sit in the first and last byte, so they read the
/// same in either order.
pub fn is_little_endian(field: [u8; 4]) -> bool {
    u32::from_le_bytes(field) & ENDIAN_BITS == ENDIAN_BITS
}

// ---------------------------------------------------------------------------------------
// Message header

/// A message header, with its integers in host values and the endian bits removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Service type bits, endian bits cleared.
    pub service_type: u32,
    /// The sender's private group (regular message), or the group (membership message).
    pub sender: String,
    pub num_groups: i32,
    /// The hint as the sender wrote it (4 bytes in the sender's order, flags included).
    pub hint: [u8; 4],
    pub data_len: i32,
}

impl Header {
    /// Decodes a header in either byte order.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, WireError> {
        let little = is_little_endian([b[0], b[1], b[2], b[3]]);
        let service_type = read_u32(b, 0, little) & !ENDIAN_BITS;
        let sender = read_name(&b[4..36])?;
        let num_groups = read_u32(b, 36, little) as i32;
        let hint = [b[40], b[41], b[42], b[43]];
        let data_len = read_u32(b, 44, little) as i32;
        Ok(Header {
            service_type,
            sender,
            num_groups,
            hint,
            data_len,
        })
    }

    /// Encodes the header little-endian (the endian bits are set in `type`).
    pub fn encode(&self, out: &mut BytesMut) {
        out.put_u32_le(self.service_type | ENDIAN_BITS);
        put_name(out, &self.sender);
        out.put_i32_le(self.num_groups);
        out.put_slice(&self.hint);
        out.put_i32_le(self.data_len);
    }

    /// The hint's value in host order, flags removed.
    pub fn hint_value(&self) -> u32 {
        let v = if is_little_endian(self.hint) {
            u32::from_le_bytes(self.hint)
        } else {
            u32::from_be_bytes(self.hint)
        };
        v & !ENDIAN_BITS
    }

    /// The user's 16-bit message type carried in the hint.
    pub fn mess_type(&self) -> i16 {
        ((self.hint_value() >> 8) & 0xffff) as u16 as i16
    }

    /// Whether the hint's byte order differs from this host's (little-endian) order:
    /// what `SP_receive` reports as `endian_mismatch`.
    pub fn endian_mismatch(&self) -> bool {
        !is_little_endian(self.hint)
    }

    /// Size of the groups and body that follow, if the counts are sane.
    pub fn payload_len(&self) -> Option<usize> {
        let g = usize::try_from(self.num_groups).ok()?;
        let d = usize::try_from(self.data_len).ok()?;
        g.checked_mul(MAX_GROUP_NAME)?.checked_add(d)
    }
}

/// A hint for `mess_type`, little-endian with the flags set.
pub fn hint_for(mess_type: i16) -> [u8; 4] {
    let v = ((u32::from(mess_type as u16) << 8) & 0x00ff_ff00) | ENDIAN_BITS;
    v.to_le_bytes()
}

/// The hint of a daemon-made message (membership): only the endian flags.
pub const DAEMON_HINT: [u8; 4] = ENDIAN_BITS.to_le_bytes();

/// What a client may ask of its daemon, decoded from one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Join(String),
    Leave(String),
    /// Disconnect (`SP_disconnect` sends KILL naming the session's own private group).
    Kill,
    /// A message to groups, already re-encoded as the frame every receiver gets.
    Multicast(Multicast),
}

/// A regular message as the daemon delivers it: header, groups and body in one frame
/// (little-endian, the sender's hint untouched), plus what the daemon needs from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multicast {
    pub frame: Bytes,
}

/// Which part of a client message the daemon is waiting for.
pub const SERVICE_BITS_MASK: u32 = 0x3f;
const MEMB_REQUEST_BITS: u32 = service::JOIN_MESS | service::LEAVE_MESS | service::KILL_MESS;

/// Validates a header a client sent, as a Spread daemon does: exactly one service or
/// join/leave/kill bit, sender equal to the session's private group, 0..=100 groups, a
/// hint using only `0x80ffff80`, body plus groups within [`MAX_MESSAGE_BODY_LEN`].
pub fn validate_client_header(h: &Header, own_private_group: &str) -> Result<(), WireError> {
    let service_bits = (h.service_type & SERVICE_BITS_MASK).count_ones();
    let memb_bits = (h.service_type & MEMB_REQUEST_BITS).count_ones();
    if service_bits + memb_bits != 1 {
        return Err(bad(format!(
            "message has the illegal type field 0x{:x} (exactly one service, join, leave or kill bit must be set)",
            h.service_type
        )));
    }
    if h.sender != own_private_group {
        return Err(bad(format!(
            "message names the sender `{}`, not the session's private group `{own_private_group}`",
            h.sender.escape_default()
        )));
    }
    if h.num_groups < 0 || h.num_groups as usize > MAX_GROUPS_PER_MESSAGE {
        return Err(bad(format!(
            "message has {} groups; the limit is {MAX_GROUPS_PER_MESSAGE}",
            h.num_groups
        )));
    }
    let hint = if is_little_endian(h.hint) {
        u32::from_le_bytes(h.hint)
    } else {
        u32::from_be_bytes(h.hint)
    };
    if hint & !(ENDIAN_BITS | 0x00ff_ff00) != 0 {
        return Err(bad(format!(
            "message has the illegal hint field 0x{hint:x}"
        )));
    }
    if h.data_len < 0 || h.data_len as usize > MAX_MESSAGE_BODY_LEN {
        return Err(bad(format!(
            "message has a body of {} bytes; the limit is {MAX_MESSAGE_BODY_LEN}",
            h.data_len
        )));
    }
    let total = h.payload_len().expect("checked above");
    if total > MAX_MESSAGE_BODY_LEN - HEADER_LEN {
        return Err(bad(format!(
            "message body plus group names is {total} bytes; the limit is {}",
            MAX_MESSAGE_BODY_LEN - HEADER_LEN
        )));
    }
    Ok(())
}

/// Turns a validated header and what followed it into a request.
pub fn decode_request(h: &Header, payload: &[u8]) -> Result<Request, WireError> {
    let groups_len = h.num_groups as usize * MAX_GROUP_NAME;
    assert_eq!(payload.len(), h.payload_len().expect("validated header"));
    let groups: Vec<String> = payload[..groups_len]
        .chunks_exact(MAX_GROUP_NAME)
        .map(read_name)
        .collect::<Result<_, _>>()?;
    let body = &payload[groups_len..];
    let t = h.service_type;
    if t & MEMB_REQUEST_BITS != 0 {
        let [group] = groups.as_slice() else {
            return Err(bad(format!(
                "join, leave or kill request names {} groups instead of one",
                groups.len()
            )));
        };
        if t & service::KILL_MESS != 0 {
            return Ok(Request::Kill);
        }
        check_group_name(group)?;
        return Ok(if t & service::JOIN_MESS != 0 {
            Request::Join(group.clone())
        } else {
            Request::Leave(group.clone())
        });
    }
    for g in &groups {
        check_destination(g)?;
    }
    let mut frame = BytesMut::with_capacity(HEADER_LEN + payload.len());
    Header {
        service_type: t & (SERVICE_BITS_MASK | service::SELF_DISCARD),
        ..h.clone()
    }
    .encode(&mut frame);
    for g in &groups {
        put_name(&mut frame, g);
    }
    frame.put_slice(body);
    Ok(Request::Multicast(Multicast {
        frame: frame.freeze(),
    }))
}

/// A parsed view of a frame made by [`decode_request`] or [`encode_message`].
#[derive(Debug, Clone)]
pub struct FrameView {
    pub header: Header,
    pub groups: Vec<String>,
    /// Offset of the body in the frame.
    pub body_at: usize,
}

impl FrameView {
    pub fn parse(frame: &[u8]) -> Result<FrameView, WireError> {
        let head: &[u8; HEADER_LEN] = frame
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| bad("frame shorter than a header"))?;
        let header = Header::decode(head)?;
        let len = header
            .payload_len()
            .ok_or_else(|| bad("frame with negative counts"))?;
        if frame.len() != HEADER_LEN + len {
            return Err(bad(format!(
                "frame of {} bytes, its header says {}",
                frame.len(),
                HEADER_LEN + len
            )));
        }
        let groups_end = HEADER_LEN + header.num_groups as usize * MAX_GROUP_NAME;
        let groups = frame[HEADER_LEN..groups_end]
            .chunks_exact(MAX_GROUP_NAME)
            .map(read_name)
            .collect::<Result<_, _>>()?;
        Ok(FrameView {
            header,
            groups,
            body_at: groups_end,
        })
    }
}

/// Encodes a whole message (header, groups, body), little-endian.
pub fn encode_message(
    service_type: u32,
    sender: &str,
    groups: &[&str],
    hint: [u8; 4],
    body: &[u8],
) -> Bytes {
    let mut out = BytesMut::with_capacity(HEADER_LEN + groups.len() * MAX_GROUP_NAME + body.len());
    Header {
        service_type,
        sender: sender.to_owned(),
        num_groups: groups.len() as i32,
        hint,
        data_len: body.len() as i32,
    }
    .encode(&mut out);
    for g in groups {
        put_name(&mut out, g);
    }
    out.put_slice(body);
    out.freeze()
}

// ---------------------------------------------------------------------------------------
// Membership messages

/// A group view identifier, identical at every member for the same view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct GroupId(pub [i32; 3]);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.0[0], self.0[1], self.0[2])
    }
}

/// The body of a regular membership message: the group id, the vs-sets, and which one
/// is the receiver's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipBody {
    pub group_id: GroupId,
    pub vs_sets: Vec<Vec<String>>,
    /// Index in `vs_sets` of the receiver's own set.
    pub my_vs_set: usize,
}

impl MembershipBody {
    /// Encodes the body little-endian: group id, number of vs-sets, byte offset of the
    /// receiver's set counted from the first set, then each set (count, 32-byte names).
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.my_vs_set < self.vs_sets.len().max(1));
        let mut out = BytesMut::new();
        for v in self.group_id.0 {
            out.put_i32_le(v);
        }
        out.put_u32_le(self.vs_sets.len() as u32);
        let offset: usize = self.vs_sets[..self.my_vs_set.min(self.vs_sets.len())]
            .iter()
            .map(|s| 4 + s.len() * MAX_GROUP_NAME)
            .sum();
        out.put_u32_le(offset as u32);
        for set in &self.vs_sets {
            out.put_u32_le(set.len() as u32);
            for name in set {
                put_name(&mut out, name);
            }
        }
        out.to_vec()
    }

    /// Decodes a body written in either order (`little` is the order of the message's
    /// `type` field, which the daemon writes in its own order).
    pub fn decode(body: &[u8], little: bool) -> Result<MembershipBody, WireError> {
        let need = |n: usize| {
            if body.len() < n {
                Err(bad("membership body too short"))
            } else {
                Ok(())
            }
        };
        need(20)?;
        let group_id = GroupId([
            read_u32(body, 0, little) as i32,
            read_u32(body, 4, little) as i32,
            read_u32(body, 8, little) as i32,
        ]);
        let count = read_u32(body, 12, little) as usize;
        let my_offset = read_u32(body, 16, little) as usize;
        if count > MAX_MESSAGE_BODY_LEN / 4 {
            return Err(bad("membership body names too many vs-sets"));
        }
        let mut at = 20;
        let mut vs_sets = Vec::with_capacity(count);
        let mut my_vs_set = None;
        for i in 0..count {
            if at - 20 == my_offset {
                my_vs_set = Some(i);
            }
            need(at + 4)?;
            let n = read_u32(body, at, little) as usize;
            at += 4;
            if n > MAX_MESSAGE_BODY_LEN / MAX_GROUP_NAME {
                return Err(bad("vs-set too large"));
            }
            need(at + n * MAX_GROUP_NAME)?;
            let set = (0..n)
                .map(|k| read_name(&body[at + k * MAX_GROUP_NAME..at + (k + 1) * MAX_GROUP_NAME]))
                .collect::<Result<_, _>>()?;
            at += n * MAX_GROUP_NAME;
            vs_sets.push(set);
        }
        let my_vs_set = match my_vs_set {
            Some(i) => i,
            None if count == 0 => 0,
            None => return Err(bad("membership body: own vs-set offset points nowhere")),
        };
        Ok(MembershipBody {
            group_id,
            vs_sets,
            my_vs_set,
        })
    }
}

/// A regular membership message for `group` (sorted `members`), caused by `cause`
/// (one of the CAUSED_BY bits).
pub fn regular_membership(
    group: &str,
    members: &[&str],
    cause: u32,
    body: &MembershipBody,
) -> Bytes {
    encode_message(
        service::REG_MEMB_MESS | cause,
        group,
        members,
        DAEMON_HINT,
        &body.encode(),
    )
}

/// A transitional membership message: no groups, the group id as body.
pub fn transitional_membership(group: &str, group_id: GroupId) -> Bytes {
    let mut body = Vec::with_capacity(12);
    for v in group_id.0 {
        body.extend_from_slice(&v.to_le_bytes());
    }
    encode_message(service::TRANSITION_MESS, group, &[], DAEMON_HINT, &body)
}

/// The message telling a client it has left `group`.
pub fn self_leave(group: &str) -> Bytes {
    encode_message(service::CAUSED_BY_LEAVE, group, &[], DAEMON_HINT, &[])
}

// ---------------------------------------------------------------------------------------
// Connect handshake

/// Flags byte of a connect request.
pub fn connect_flags(priority: u8, group_membership: bool) -> u8 {
    (u8::from(priority >= 1) << 4) | u8::from(group_membership)
}

/// The connect request a client sends (with the patch byte: this library is 5.0.1).
pub fn encode_connect(
    version: Version,
    name: &str,
    priority: u8,
    group_membership: bool,
) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(MAX_PRIVATE_NAME)];
    let mut out = vec![
        version.major,
        version.minor,
        version.patch,
        connect_flags(priority, group_membership),
        name.len() as u8,
    ];
    out.extend_from_slice(name);
    out
}

/// The authentication list the daemon sends: a length byte, then `NULL `.
pub fn encode_auth_list() -> Vec<u8> {
    let list = format!("{AUTH_NULL} ");
    let mut out = vec![list.len() as u8];
    out.extend_from_slice(list.as_bytes());
    out
}

/// The client's choice of methods: 3 slots of 30 bytes.
pub fn encode_auth_choice(method: &str) -> Vec<u8> {
    let mut out = vec![0u8; MAX_AUTH_NAME * MAX_AUTH_METHODS];
    out[..method.len()].copy_from_slice(method.as_bytes());
    out
}

/// Reads the methods a client chose; only NULL is accepted.
pub fn check_auth_choice(slots: &[u8]) -> Result<(), WireError> {
    assert_eq!(slots.len(), MAX_AUTH_NAME * MAX_AUTH_METHODS);
    let mut chosen = 0;
    for slot in slots.chunks_exact(MAX_AUTH_NAME) {
        let end = slot.iter().position(|&b| b == 0).unwrap_or(slot.len());
        if end == 0 {
            break;
        }
        chosen += 1;
        if &slot[..end] != AUTH_NULL.as_bytes() {
            return Err(bad(format!(
                "authentication method `{}` is not offered (only NULL)",
                String::from_utf8_lossy(&slot[..end])
            )));
        }
    }
    if chosen == 0 {
        return Err(bad("no authentication method chosen"));
    }
    Ok(())
}

/// The daemon's accept reply for a client of version `client`.
pub fn encode_accept(client: Version, private_group: &str) -> Vec<u8> {
    let mut out = vec![
        code::ACCEPT_SESSION as u8,
        PROTOCOL_VERSION.major,
        PROTOCOL_VERSION.minor,
    ];
    if client.expects_patch() {
        out.push(PROTOCOL_VERSION.patch);
    }
    out.push(private_group.len() as u8);
    out.extend_from_slice(private_group.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_501_connect_bytes() {
        let bytes = encode_connect(PROTOCOL_VERSION, "raw1", 0, true);
        assert_eq!(bytes, b"\x05\x00\x01\x01\x04raw1");
        assert_eq!(
            encode_connect(PROTOCOL_VERSION, "r", 1, false),
            b"\x05\x00\x01\x10\x01r"
        );
    }

    #[test]
    fn accept_bytes_follow_the_client_version() {
        assert_eq!(
            encode_accept(PROTOCOL_VERSION, "#raw1#localhost"),
            b"\x01\x05\x00\x01\x0f#raw1#localhost"
        );
        let old = Version {
            major: 3,
            minor: 14,
            patch: 0,
        };
        assert_eq!(encode_accept(old, "#a#b"), b"\x01\x05\x00\x04#a#b");
        assert!(!Version::sends_patch(3, 14));
        assert!(Version::sends_patch(3, 15));
        assert!(!old.authenticates());
        assert_eq!(encode_auth_list(), b"\x05NULL ");
    }

    #[test]
    fn auth_choice() {
        let c = encode_auth_choice("NULL");
        assert_eq!(c.len(), 90);
        assert!(check_auth_choice(&c).is_ok());
        assert!(check_auth_choice(&encode_auth_choice("PWORD")).is_err());
        assert!(check_auth_choice(&[0; 90]).is_err());
    }

    #[test]
    fn header_round_trip_little_endian() {
        let frame = encode_message(
            service::AGREED_MESS,
            "#alice#d1",
            &["g1", "g2"],
            hint_for(7),
            b"hello",
        );
        assert_eq!(frame.len(), HEADER_LEN + 64 + 5);
        // AGREED with mess_type 7 from a little-endian daemon.
        assert_eq!(&frame[0..4], &0x8000_0090u32.to_le_bytes());
        assert_eq!(&frame[40..44], &0x8000_0780u32.to_le_bytes());
        let v = FrameView::parse(&frame).unwrap();
        assert_eq!(v.header.service_type, service::AGREED_MESS);
        assert_eq!(v.header.sender, "#alice#d1");
        assert_eq!(v.groups, ["g1", "g2"]);
        assert_eq!(v.header.mess_type(), 7);
        assert!(!v.header.endian_mismatch());
        assert_eq!(&frame[v.body_at..], b"hello");
    }

    #[test]
    fn big_endian_header_is_read() {
        // What the (big-endian) Java client sends: no endian bits, integers big-endian.
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&service::SAFE_MESS.to_be_bytes());
        b[4..9].copy_from_slice(b"#j#d1");
        b[36..40].copy_from_slice(&1i32.to_be_bytes());
        b[40..44].copy_from_slice(&(0x0000_0100u32 | (3 << 8)).to_be_bytes());
        b[44..48].copy_from_slice(&10i32.to_be_bytes());
        let h = Header::decode(&b).unwrap();
        assert_eq!(h.service_type, service::SAFE_MESS);
        assert_eq!((h.num_groups, h.data_len), (1, 10));
        assert_eq!(h.mess_type(), 3);
        assert!(h.endian_mismatch());
        validate_client_header(&h, "#j#d1").unwrap();
        // Re-encoded little-endian, the hint keeps its bytes.
        let mut out = BytesMut::new();
        h.encode(&mut out);
        let again = Header::decode(out[..].try_into().unwrap()).unwrap();
        assert_eq!(again, h);
        assert_eq!(&out[40..44], &b[40..44]);
    }

    #[test]
    fn negative_mess_type_round_trips() {
        let frame = encode_message(service::FIFO_MESS, "#a#b", &["g"], hint_for(-2), b"");
        assert_eq!(FrameView::parse(&frame).unwrap().header.mess_type(), -2);
    }

    #[test]
    fn client_header_validation() {
        let ok = Header {
            service_type: service::SAFE_MESS,
            sender: "#a#d".into(),
            num_groups: 1,
            hint: hint_for(1),
            data_len: 10,
        };
        validate_client_header(&ok, "#a#d").unwrap();
        let cases = [
            Header {
                service_type: service::SAFE_MESS | service::AGREED_MESS,
                ..ok.clone()
            },
            Header {
                service_type: 0,
                ..ok.clone()
            },
            Header {
                service_type: service::JOIN_MESS | service::RELIABLE_MESS,
                ..ok.clone()
            },
            Header {
                sender: "#b#d".into(),
                ..ok.clone()
            },
            Header {
                num_groups: 101,
                ..ok.clone()
            },
            Header {
                num_groups: -1,
                ..ok.clone()
            },
            Header {
                data_len: 144_001,
                ..ok.clone()
            },
            Header {
                data_len: 144_000 - 48 - 32 + 1,
                ..ok.clone()
            },
            Header {
                hint: 0x8000_0081u32.to_le_bytes(),
                ..ok.clone()
            },
        ];
        for h in cases {
            assert!(validate_client_header(&h, "#a#d").is_err(), "{h:?}");
        }
        // SELF_DISCARD is allowed alongside one service bit.
        validate_client_header(
            &Header {
                service_type: service::RELIABLE_MESS | service::SELF_DISCARD,
                ..ok
            },
            "#a#d",
        )
        .unwrap();
    }

    #[test]
    fn requests_decode() {
        let join = encode_message(service::JOIN_MESS, "#a#d", &["grp"], hint_for(0), b"");
        let h = Header::decode(join[..48].try_into().unwrap()).unwrap();
        assert_eq!(
            decode_request(&h, &join[48..]).unwrap(),
            Request::Join("grp".into())
        );
        let bad_join = encode_message(service::JOIN_MESS, "#a#d", &["a b"], hint_for(0), b"");
        let h = Header::decode(bad_join[..48].try_into().unwrap()).unwrap();
        assert!(decode_request(&h, &bad_join[48..]).is_err());
        let kill = encode_message(service::KILL_MESS, "#a#d", &["#a#d"], hint_for(0), b"");
        let h = Header::decode(kill[..48].try_into().unwrap()).unwrap();
        assert_eq!(decode_request(&h, &kill[48..]).unwrap(), Request::Kill);
        let m = encode_message(
            service::AGREED_MESS | service::SELF_DISCARD,
            "#a#d",
            &["g", "#b#d"],
            hint_for(9),
            b"xyz",
        );
        let h = Header::decode(m[..48].try_into().unwrap()).unwrap();
        let Request::Multicast(mc) = decode_request(&h, &m[48..]).unwrap() else {
            panic!()
        };
        assert_eq!(mc.frame, m);
    }

    #[test]
    fn membership_body_round_trip() {
        let body = MembershipBody {
            group_id: GroupId([1, 2, 3]),
            vs_sets: vec![vec!["#a#d1".into(), "#b#d1".into()], vec!["#c#d2".into()]],
            my_vs_set: 1,
        };
        let enc = body.encode();
        assert_eq!(enc.len(), 12 + 4 + 4 + (4 + 64) + (4 + 32));
        // The offset of the receiver's set counts from the first set.
        assert_eq!(&enc[16..20], &(4u32 + 64).to_le_bytes());
        assert_eq!(MembershipBody::decode(&enc, true).unwrap(), body);
        // A join seen by a member: data_len 56 = 12 + 4 + 4 + 4 + 32.
        let join = MembershipBody {
            group_id: GroupId([1, 2, 3]),
            vs_sets: vec![vec!["#b#d2".into()]],
            my_vs_set: 0,
        };
        let frame = regular_membership("g", &["#a#d1", "#b#d2"], service::CAUSED_BY_JOIN, &join);
        assert_eq!(&frame[0..4], &0x8000_1180u32.to_le_bytes());
        let v = FrameView::parse(&frame).unwrap();
        assert_eq!(v.header.data_len, 56);
        assert_eq!(v.groups, ["#a#d1", "#b#d2"]);
        assert!(MembershipBody::decode(&enc[..30], true).is_err());
    }

    #[test]
    fn names() {
        assert!(check_group_name("group_wh").is_ok());
        assert!(check_group_name("").is_err());
        assert!(check_group_name(&"g".repeat(32)).is_err());
        assert!(check_group_name(&"g".repeat(31)).is_ok());
        assert!(check_group_name("#priv").is_err());
        assert!(check_private_name("raw1").is_ok());
        assert!(check_private_name("").is_ok());
        assert!(check_private_name("elevenchars").is_err());
        assert!(check_private_name("a#b").is_err());
        assert!(check_daemon_name("localhost").is_ok());
        assert!(check_daemon_name(&"d".repeat(20)).is_err());
        assert_eq!(
            split_private_group("#raw1#localhost"),
            Some(("raw1", "localhost"))
        );
        assert_eq!(split_private_group("raw1"), None);
        assert!(check_destination("#a#b").is_ok());
        assert!(check_destination("#ab").is_err());
        assert_eq!(read_name(b"abc\0\0zz").unwrap(), "abc");
        assert!(read_name(b"\xff\0").is_err());
    }

    #[test]
    fn transitional_and_self_leave() {
        let t = transitional_membership("g", GroupId([4, 5, 6]));
        let v = FrameView::parse(&t).unwrap();
        assert_eq!(v.header.service_type, service::TRANSITION_MESS);
        assert_eq!(v.header.data_len, 12);
        assert_eq!(&t[0..4], &(0x2000u32 | ENDIAN_BITS).to_le_bytes());
        let l = self_leave("g");
        assert_eq!(&l[0..4], &0x8000_0280u32.to_le_bytes());
        assert_eq!(FrameView::parse(&l).unwrap().header.data_len, 0);
    }
}
