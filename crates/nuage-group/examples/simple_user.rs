//! simple_user: joins a group, sends a few messages, and prints everything it receives,
//! membership included (the shape of Spread's own `simple_user.c`).
//!
//! ```text
//! cargo run -p nuage-group --example simple_user -- [-s 4803|4803@host] [-u name] [-g group] [-n count]
//! ```

use std::time::Duration;

use nuage_group::client::blocking::Mailbox;
use nuage_group::client::{ConnectOptions, MembershipKind, Received, Service};

fn main() {
    let mut spread = "4803".to_owned();
    let mut user = format!("su{}", std::process::id() % 100_000);
    let mut group = "simple_group".to_owned();
    let mut count = 3u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "-s" => spread = value(),
            "-u" => user = value(),
            "-g" => group = value(),
            "-n" => count = value().parse().unwrap_or_else(|_| usage()),
            _ => usage(),
        }
    }
    let mb = match Mailbox::connect(&spread, &user, &ConnectOptions::default()) {
        Ok(mb) => mb,
        Err(e) => {
            eprintln!("simple_user: cannot connect to {spread}: {e}");
            std::process::exit(1);
        }
    };
    println!("connected to {spread} as {}", mb.private_group());
    let run = || -> Result<(), nuage_group::client::SpError> {
        mb.join(&group)?;
        for i in 0..count {
            let text = format!("message {i} from {}", mb.private_group());
            mb.multicast(Service::Agreed, &[&group], 0, text.as_bytes())?;
        }
        // Print what arrives until nothing has come for 5 seconds.
        while let Some(r) = mb.receive_timeout(Duration::from_secs(5))? {
            match r {
                Received::Message(m) => println!(
                    "{} message from {} to {:?}, type {}: {}",
                    m.service().map_or("?", |s| s.name()),
                    m.sender,
                    m.groups,
                    m.mess_type,
                    String::from_utf8_lossy(&m.data)
                ),
                Received::Membership(m) => match m.kind {
                    MembershipKind::Regular { cause, .. } => println!(
                        "membership of {} ({cause:?}): {:?}, I am {:?}, vs-sets {:?}",
                        m.group, m.members, m.my_index, m.vs_sets
                    ),
                    MembershipKind::Transitional => {
                        println!("transitional membership of {}", m.group)
                    }
                    MembershipKind::SelfLeave => println!("left {}", m.group),
                },
            }
        }
        Ok(())
    };
    if let Err(e) = run() {
        eprintln!("simple_user: {e}");
        std::process::exit(1);
    }
    let _ = mb.disconnect();
}

fn usage() -> ! {
    eprintln!("usage: simple_user [-s PORT|PORT@HOST] [-u NAME] [-g GROUP] [-n COUNT]");
    std::process::exit(2);
}
