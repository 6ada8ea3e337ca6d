//! spread-rs 0.0.1 (crates.io `spread`, <https://github.com/evnm/spread.rs>), Evan
//! Meagher's independent Rust client for the Spread toolkit (2014), written against real
//! Spread 4.x daemons: a client nuage did not write, to test nuage's daemon against.
//!
//! The published crate no longer compiles (pre-1.0 Rust: `std::io::net`, `uint`,
//! `try!`, `#![feature(phase)]`, 58 errors with today's compiler), so this is a port
//! that changes only the language and library calls: `std::net::TcpStream` and
//! `std::io::{Read, Write}` for the old I/O traits, `?` for `try!`, `usize` for `uint`,
//! byte loops for the `encoding` crate's ISO-8859-1 (one byte per character, as there),
//! and the `log` macros dropped. Every byte it sends and every check it makes on what it
//! receives is the original's: version 4.4.0, the connect flags (it sets 0x10 for
//! "membership messages", which Spread reads as the priority bit, so it gets none), the
//! 90-byte authentication choice computed from the daemon's list length, big-endian
//! headers without the endianness marker bits, reads of exactly the lengths announced.
//! The original's test module is not carried over.
//!
//! The MIT License (MIT)
//!
//! Copyright (c) 2014 Evan Meagher
//!
//! Permission is hereby granted, free of charge, to any person obtaining a copy
//! of this software and associated documentation files (the "Software"), to deal
//! in the Software without restriction, including without limitation the rights
//! to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
//! copies of the Software, and to permit persons to whom the Software is
//! furnished to do so, subject to the following conditions:
//!
//! The above copyright notice and this permission notice shall be included in all
//! copies or substantial portions of the Software.
//!
//! THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
//! IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
//! FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
//! AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
//! LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
//! OUT OF OR IN CONNECTION WITH THE USE OR OTHER DEALINGS IN THE SOFTWARE.

// Third-party code kept as written: no lint rewrites.
#![allow(dead_code, clippy::all)]

mod util;

use std::io::{Error, ErrorKind, Read, Result as IoResult, Write};
use std::net::{SocketAddr, TcpStream};

use util::{bytes_to_int, flip_endianness, int_to_bytes, same_endianness};

pub static DEFAULT_SPREAD_PORT: i16 = 4803;

static MAX_PRIVATE_NAME_LENGTH: usize = 10;
static DEFAULT_AUTH_NAME: &str = "NULL";
static MAX_AUTH_NAME_LENGTH: usize = 30;
static MAX_AUTH_METHOD_COUNT: usize = 3;
static MAX_GROUP_NAME_LENGTH: usize = 32;

// Control message types.
// NOTE: The only currently-implemented service type for messaging is "reliable".
enum ControlServiceType {
    JoinMessage = 0x00010000,
    LeaveMessage = 0x00020000,
    KillMessage = 0x00040000,
    ReliableMessage = 0x00000002,
}

static SPREAD_MAJOR_VERSION: u8 = 4;
static SPREAD_MINOR_VERSION: u8 = 4;
static SPREAD_PATCH_VERSION: u8 = 0;

// Error codes, as per http://www.spread.org/docs/spread_docs_4/docs/error_codes.html
pub enum SpreadError {
    AcceptSession = 1,
}

/// A message to be sent or received by a Spread client to/from a group.
pub struct SpreadMessage {
    pub service_type: u32,
    pub groups: Vec<String>,
    pub sender: String,
    pub data: Vec<u8>,
}

/// Representation of a client connection to a Spread daemon.
pub struct SpreadClient {
    stream: TcpStream,
    pub private_name: String,
    pub groups: Vec<String>,
    receive_membership_messages: bool,
}

// ISO-8859-1, as the `encoding` crate did it: one byte per character below 256.
fn latin1_encode(s: &str) -> Result<Vec<u8>, ()> {
    s.chars()
        .map(|c| u8::try_from(u32::from(c)).map_err(|_| ()))
        .collect()
}

fn latin1_decode(b: &[u8]) -> String {
    b.iter().map(|&c| char::from(c)).collect()
}

fn read_byte(stream: &mut TcpStream) -> IoResult<u8> {
    let mut b = [0u8; 1];
    stream.read_exact(&mut b)?;
    Ok(b[0])
}

fn read_exact(stream: &mut TcpStream, n: usize) -> IoResult<Vec<u8>> {
    let mut v = vec![0u8; n];
    stream.read_exact(&mut v)?;
    Ok(v)
}

fn failed(kind: ErrorKind, desc: &str, detail: Option<String>) -> Error {
    Error::new(kind, format!("{desc}: {}", detail.unwrap_or_default()))
}

// Construct a byte vector representation of a connect message for the given
// connection arguments.
fn encode_connect_message(
    private_name: &str,
    receive_membership_messages: bool,
) -> Result<Vec<u8>, String> {
    let mut vec: Vec<u8> = Vec::new();

    // Set Spread version.
    vec.push(SPREAD_MAJOR_VERSION);
    vec.push(SPREAD_MINOR_VERSION);
    vec.push(SPREAD_PATCH_VERSION);

    // Apply masks for group membership (and priority, which is unimplemented).
    let mask = if receive_membership_messages { 0x10 } else { 0 };
    vec.push(mask);

    let private_name_buf = latin1_encode(private_name)
        .map_err(|_| format!("Failed to encode private name: {}", private_name))?;

    vec.push(private_name.chars().count() as u8);
    vec.extend_from_slice(&private_name_buf);
    Ok(vec)
}

/// Establishes a named connection to a Spread daemon running at a given
/// `SocketAddr`.
pub fn connect(
    addr: SocketAddr,
    private_name: &str,
    receive_membership_messages: bool,
) -> IoResult<SpreadClient> {
    // Truncate (if necessary) and write `private_name`.
    let truncated_private_name = match private_name {
        too_long if too_long.chars().count() > MAX_PRIVATE_NAME_LENGTH => {
            &too_long[..MAX_PRIVATE_NAME_LENGTH]
        }
        just_fine => just_fine,
    };

    // Send the initial connect message.
    let connect_message =
        encode_connect_message(truncated_private_name, receive_membership_messages)
            .map_err(|error_msg| failed(ErrorKind::ConnectionAborted, "", Some(error_msg)))?;

    let mut stream = TcpStream::connect(addr)?;
    stream.write_all(&connect_message)?;

    // Read the authentication methods.
    let authname_len = read_byte(&mut stream)? as i32;
    if authname_len >= 128 {
        return Err(failed(
            ErrorKind::ConnectionRefused,
            "Connection attempt rejected",
            Some(format!("{}", (0xffffff00 | authname_len as u32) as i32)),
        ));
    }

    // Ignore the list.
    let authname_vec = read_exact(&mut stream, authname_len as usize)?;
    let _authname = latin1_decode(&authname_vec);

    // Send auth method choice.
    let mut authname_vec: Vec<u8> = latin1_encode(DEFAULT_AUTH_NAME)
        .map_err(|_| failed(ErrorKind::Other, "Failed to encode authname", None))?;

    for _ in (authname_len as usize)..(MAX_AUTH_NAME_LENGTH * MAX_AUTH_METHOD_COUNT + 1) {
        authname_vec.push(0);
    }

    stream.write_all(&authname_vec)?;

    // Check for an accept message.
    let accepted: u8 = read_byte(&mut stream)?;
    if accepted != SpreadError::AcceptSession as u8 {
        return Err(failed(
            ErrorKind::ConnectionAborted,
            "Connection attempt rejected",
            Some(format!("{}", (0xffffff00 | accepted as u32) as i32)),
        ));
    }

    // Read the version of Spread that the server is running.
    let (major, minor, patch) = (
        read_byte(&mut stream)? as i32,
        read_byte(&mut stream)? as i32,
        read_byte(&mut stream)? as i32,
    );

    let version_sum = (major * 10000) + (minor * 100) + patch;
    if version_sum < 30100 {
        return Err(failed(
            ErrorKind::ConnectionAborted,
            "Server is running old, unsupported version of Spread",
            Some(format!("{}.{}.{}", major, minor, patch)),
        ));
    }

    // Read the private group name.
    let group_name_len = read_byte(&mut stream)? as i32;
    let group_name_buf = read_exact(&mut stream, group_name_len as usize)?;
    let private_group_name = String::from_utf8(group_name_buf).map_err(|error| {
        failed(
            ErrorKind::ConnectionAborted,
            "Server sent invalid group name",
            Some(format!("{}", error)),
        )
    })?;

    Ok(SpreadClient {
        stream,
        private_name: private_group_name,
        groups: Vec::new(),
        receive_membership_messages,
    })
}

impl SpreadClient {
    // Encode a service message for dispatch to a Spread daemon.
    fn encode_message(
        service_type: u32,
        private_name: &str,
        groups: &[&str],
        data: &[u8],
    ) -> Result<Vec<u8>, String> {
        let mut vec: Vec<u8> = Vec::new();
        vec.extend_from_slice(&int_to_bytes(service_type));

        let private_name_buf = latin1_encode(private_name)
            .map_err(|_| format!("Failed to encode private name: {}", private_name))?;
        vec.extend_from_slice(&private_name_buf);
        for _ in private_name.len()..MAX_GROUP_NAME_LENGTH {
            vec.push(0);
        }

        vec.extend_from_slice(&int_to_bytes(groups.len() as u32));
        vec.extend_from_slice(&int_to_bytes(0));
        vec.extend_from_slice(&int_to_bytes(data.len() as u32));

        // Encode and push each group name, converting any encoding errors
        // to error message strings.
        for group in groups.iter() {
            let group_buf = latin1_encode(group)
                .map_err(|_| format!("Failed to encode group name: {}", group))?;
            vec.extend_from_slice(&group_buf);
            for _ in group.len()..MAX_GROUP_NAME_LENGTH {
                vec.push(0);
            }
        }

        vec.extend_from_slice(data);
        Ok(vec)
    }

    /// Disconnects the client from the Spread daemon.
    pub fn disconnect(&mut self) -> IoResult<()> {
        let name_slice = self.private_name.as_str();
        let kill_message = SpreadClient::encode_message(
            ControlServiceType::KillMessage as u32,
            name_slice,
            &[name_slice],
            &[],
        )
        .map_err(|error_msg| failed(ErrorKind::Other, "Disconnection failed", Some(error_msg)))?;

        self.stream.write_all(&kill_message)
    }

    /// Join a named Spread group.
    pub fn join(&mut self, group_name: &str) -> IoResult<()> {
        let join_message = SpreadClient::encode_message(
            ControlServiceType::JoinMessage as u32,
            &self.private_name,
            &[group_name],
            &[],
        )
        .map_err(|error_msg| failed(ErrorKind::Other, "Group join failed", Some(error_msg)))?;

        self.stream.write_all(&join_message)?;
        self.groups.push(group_name.to_string());
        Ok(())
    }

    /// Leave a named Spread group.
    pub fn leave(&mut self, group_name: &str) -> IoResult<()> {
        let leave_message = SpreadClient::encode_message(
            ControlServiceType::LeaveMessage as u32,
            &self.private_name,
            &[group_name],
            &[],
        )
        .map_err(|error_msg| failed(ErrorKind::Other, "Group leave failed", Some(error_msg)))?;

        self.stream.write_all(&leave_message)?;
        self.groups.push(group_name.to_string());
        Ok(())
    }

    /// Send a message to a set of named groups.
    pub fn multicast(&mut self, groups: &[&str], data: &[u8]) -> IoResult<()> {
        let message = SpreadClient::encode_message(
            ControlServiceType::ReliableMessage as u32,
            &self.private_name,
            groups,
            data,
        )
        .map_err(|error_msg| failed(ErrorKind::Other, "Multicast failed", Some(error_msg)))?;

        self.stream.write_all(&message)
    }

    /// Receive the next available message. If there are no messages available,
    /// the call will block until either a message is received or a timeout
    /// expires.
    pub fn receive(&mut self) -> IoResult<SpreadMessage> {
        // Header format (sizes in bytes):
        //   svc_type:   4
        //   sender:    32
        //   num_groups: 4
        //   hint:       4
        //   data_len:   4
        let header_vec = read_exact(&mut self.stream, MAX_GROUP_NAME_LENGTH + 16)?;
        let is_correct_endianness = same_endianness(bytes_to_int(&header_vec[0..4]));

        let svc_type = match (is_correct_endianness, bytes_to_int(&header_vec[0..4])) {
            (true, correct) => correct,
            (false, incorrect) => flip_endianness(incorrect),
        };

        let sender = latin1_decode(&header_vec[4..36]);

        let num_groups = match (is_correct_endianness, bytes_to_int(&header_vec[36..40])) {
            (true, correct) => correct,
            (false, incorrect) => flip_endianness(incorrect),
        };
        let data_len = match (is_correct_endianness, bytes_to_int(&header_vec[44..48])) {
            (true, correct) => correct,
            (false, incorrect) => flip_endianness(incorrect),
        };

        // Groups format (sizes in bytes):
        //   groups: num_groups
        let groups_vec = read_exact(
            &mut self.stream,
            MAX_GROUP_NAME_LENGTH * num_groups as usize,
        )?;
        let mut groups = Vec::new();

        for n in 0..num_groups {
            let i: usize = n as usize * MAX_GROUP_NAME_LENGTH;
            let group = latin1_decode(&groups_vec[i..i + MAX_GROUP_NAME_LENGTH]);
            groups.push(group);
        }

        // Data format (sizes in bytes):
        //   data: data_len
        let data_vec = read_exact(&mut self.stream, data_len as usize)?;

        Ok(SpreadMessage {
            service_type: svc_type,
            groups,
            sender,
            data: data_vec,
        })
    }

    /// The socket, for a read timeout in tests (not in the original).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}
