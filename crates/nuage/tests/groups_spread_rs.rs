//! nuage's group daemon against a Spread client nuage did not write: spread-rs 0.0.1
//! (Evan Meagher, 2014, MIT; see spread_rs/mod.rs), written against real Spread 4.x
//! daemons and ported to today's Rust without changing a byte it sends. Debian 12
//! packages no Spread (neither the daemon, nor libspread, nor spuser), so this is the
//! independent client we can run (docs/groups.md, "Not done yet").

mod common;
mod spread_rs;

use std::net::SocketAddr;
use std::time::Duration;

use nuage_group::client::blocking::Mailbox;
use nuage_group::client::{Cause, ConnectOptions, Membership, MembershipKind, Received, Service};

use common::group::Daemon;

const WAIT: Duration = Duration::from_secs(10);
/// Spread's service bits, as spread-rs sees them after its own byte-order handling.
const RELIABLE_MESS: u32 = 0x2;
const AGREED_MESS: u32 = 0x10;

fn membership(mb: &Mailbox) -> Membership {
    match mb.receive_timeout(WAIT).unwrap().expect("within 10 s") {
        Received::Membership(m) => m,
        other => panic!("expected a membership, got {other:?}"),
    }
}

fn regular(m: &Membership, cause: Cause, changed: &str, members: &[&str]) {
    assert_eq!(m.group, "chat");
    assert_eq!(m.members, members, "{m:?}");
    match &m.kind {
        MembershipKind::Regular {
            cause: c,
            changed: ch,
        } => {
            assert_eq!(*c, cause, "{m:?}");
            assert_eq!(ch.as_deref(), Some(changed), "{m:?}");
        }
        k => panic!("expected a regular membership, got {k:?}"),
    }
}

/// A fixed-width name field as spread-rs returns it (NUL padding kept).
fn unpad(s: &str) -> &str {
    s.trim_end_matches('\0')
}

#[test]
fn an_independent_spread_client_joins_sends_receives_leaves_and_disconnects() {
    let d = Daemon::start("");
    let opts = ConnectOptions {
        runtime_dir: Some(d.dir.path().to_path_buf()),
        ..ConnectOptions::default()
    };
    let nu = Mailbox::connect(&d.port.to_string(), "nu", &opts).unwrap();
    nu.join("chat").unwrap();
    regular(&membership(&nu), Cause::Join, "#nu#d1", &["#nu#d1"]);

    // spread-rs connects over TCP (all it knows), as a 4.4.0 client.
    let addr = SocketAddr::from(([127, 0, 0, 1], d.port));
    let mut srs = spread_rs::connect(addr, "srs", true).expect("spread-rs connects");
    assert_eq!(srs.private_name, "#srs#d1");
    srs.stream().set_read_timeout(Some(WAIT)).unwrap();
    srs.join("chat").unwrap();
    regular(
        &membership(&nu),
        Cause::Join,
        "#srs#d1",
        &["#nu#d1", "#srs#d1"],
    );

    // spread-rs → nuage: its big-endian RELIABLE message.
    srs.multicast(&["chat"], b"hello from spread-rs").unwrap();
    let m = match nu.receive_timeout(WAIT).unwrap().expect("within 10 s") {
        Received::Message(m) => m,
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(m.sender, "#srs#d1");
    assert_eq!(m.groups, ["chat"]);
    assert_eq!(&m.data[..], b"hello from spread-rs");
    assert_eq!(m.service(), Some(Service::Reliable));
    assert!(m.endian_mismatch, "spread-rs writes big-endian headers");
    // It gets its own message back (no SELF_DISCARD), and no membership messages: its
    // "membership" flag is 0x10, which Spread reads as the priority bit.
    let own = srs.receive().expect("its own message");
    assert_eq!(unpad(&own.sender), "#srs#d1");
    assert_eq!(
        own.groups.iter().map(|g| unpad(g)).collect::<Vec<_>>(),
        ["chat"]
    );
    assert_eq!(own.data, b"hello from spread-rs");
    assert_ne!(
        own.service_type & RELIABLE_MESS,
        0,
        "{:#x}",
        own.service_type
    );

    // nuage → spread-rs: it decodes our little-endian header itself.
    nu.multicast(Service::Agreed, &["chat"], 7, b"hello from nuage")
        .unwrap();
    let got = srs.receive().expect("nuage's message");
    assert_eq!(unpad(&got.sender), "#nu#d1");
    assert_eq!(
        got.groups.iter().map(|g| unpad(g)).collect::<Vec<_>>(),
        ["chat"]
    );
    assert_eq!(got.data, b"hello from nuage");
    assert_ne!(got.service_type & AGREED_MESS, 0, "{:#x}", got.service_type);
    match nu.receive_timeout(WAIT).unwrap().expect("own copy") {
        Received::Message(m) => assert_eq!(&m.data[..], b"hello from nuage"),
        other => panic!("{other:?}"),
    }

    // A message to the private group of a nuage client, from spread-rs.
    srs.multicast(&["#nu#d1"], b"just for you").unwrap();
    match nu.receive_timeout(WAIT).unwrap().expect("within 10 s") {
        Received::Message(m) => {
            assert_eq!(m.groups, ["#nu#d1"]);
            assert_eq!(&m.data[..], b"just for you");
        }
        other => panic!("{other:?}"),
    }

    // Leave, join again, disconnect: nuage's member sees each.
    srs.leave("chat").unwrap();
    regular(&membership(&nu), Cause::Leave, "#srs#d1", &["#nu#d1"]);
    srs.join("chat").unwrap();
    regular(
        &membership(&nu),
        Cause::Join,
        "#srs#d1",
        &["#nu#d1", "#srs#d1"],
    );
    srs.disconnect().unwrap();
    regular(&membership(&nu), Cause::Disconnect, "#srs#d1", &["#nu#d1"]);

    // The name is free again, and the daemon serves on.
    let mut again = spread_rs::connect(addr, "srs", false).expect("reconnects");
    assert_eq!(again.private_name, "#srs#d1");
    again.disconnect().unwrap();
    nu.multicast(Service::Safe, &["chat"], 0, b"still here")
        .unwrap();
    match nu.receive_timeout(WAIT).unwrap().expect("within 10 s") {
        Received::Message(m) => assert_eq!(&m.data[..], b"still here"),
        other => panic!("{other:?}"),
    }
}
