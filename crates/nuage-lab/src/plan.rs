//! The pure part of the lab: names, addresses and rules, computed without touching the
//! system, so they can be unit-tested and reasoned about.
//!
//! Lab `K` (0–255) owns the subnet 10.213.K.0/24: machine `n<i>` is 10.213.K.i, the
//! bridge (the host's side) is 10.213.K.254. Interface names derive from K, namespace
//! and table names from the lab's name, so two labs never collide.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{bail, ensure};

/// The range every lab address comes from; the host routes all of it to `unreachable`.
pub const SUPERNET: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 213, 0, 0), 16);
/// Most machines in one lab: host numbers 1..=253 (254 is the bridge).
pub const MAX_MACHINES: usize = 253;
/// Host number of the bridge, the host's address on a lab's subnet.
pub const BRIDGE_HOST: u8 = 254;
/// Longest lab name.
pub const MAX_LAB_NAME: usize = 24;
/// The lab used when none is named.
pub const DEFAULT_LAB: &str = "lab";

/// Checks a lab name: 1 to 24 characters, lowercase letters, digits and `-`, starting
/// with a letter (it becomes part of namespace and nftables table names).
pub fn check_lab_name(name: &str) -> anyhow::Result<()> {
    ensure!(
        !name.is_empty() && name.len() <= MAX_LAB_NAME,
        "lab name `{name}` must have 1 to {MAX_LAB_NAME} characters"
    );
    ensure!(
        name.as_bytes()[0].is_ascii_lowercase(),
        "lab name `{name}` must start with a lowercase letter"
    );
    ensure!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "lab name `{name}` may only hold lowercase letters, digits and '-'"
    );
    Ok(())
}

/// Checks a machine count for `lab up N`.
pub fn check_machine_count(n: usize) -> anyhow::Result<()> {
    ensure!(
        (1..=MAX_MACHINES).contains(&n),
        "a lab has 1 to {MAX_MACHINES} machines, not {n}"
    );
    Ok(())
}

/// `n1`, `n2`, …
pub fn machine_name(i: usize) -> String {
    assert!((1..=MAX_MACHINES).contains(&i));
    format!("n{i}")
}

pub fn machine_addr(index: u8, i: usize) -> Ipv4Addr {
    assert!((1..=MAX_MACHINES).contains(&i));
    Ipv4Addr::new(10, 213, index, i as u8)
}

pub fn bridge_addr(index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 213, index, BRIDGE_HOST)
}

/// The bridge of lab K: `nlab<K>` (interface names have at most 15 bytes).
pub fn bridge_name(index: u8) -> String {
    format!("nlab{index}")
}

/// The host end of machine i's veth pair: `nlab<K>m<i>`.
pub fn veth_name(index: u8, i: usize) -> String {
    format!("nlab{index}m{i}")
}

/// The network namespace of a machine: `nuage-<lab>-<machine>`.
pub fn netns_name(lab: &str, machine: &str) -> String {
    format!("nuage-{lab}-{machine}")
}

/// The lab's nftables table (family bridge): `nuage-<lab>`.
pub fn nft_table(lab: &str) -> String {
    format!("nuage-{lab}")
}

/// The lowest lab index no lab uses.
pub fn pick_index(used: &BTreeSet<u8>) -> anyhow::Result<u8> {
    match (0..=u8::MAX).find(|k| !used.contains(k)) {
        Some(k) => Ok(k),
        None => bail!(
            "all 256 lab subnets of 10.213.0.0/16 are taken; remove a lab with `nuage lab down`"
        ),
    }
}

/// Parses partition sides such as `["n1,n2", "n3"]` against the lab's machines.
pub fn parse_sides(args: &[String], machines: &[String]) -> anyhow::Result<Vec<Vec<String>>> {
    ensure!(
        args.len() >= 2,
        "a partition needs two or more sides, e.g. `nuage lab partition n1,n2 n3`"
    );
    let mut seen = BTreeSet::new();
    let mut sides = Vec::with_capacity(args.len());
    for arg in args {
        let mut side = Vec::new();
        for name in arg.split(',').map(str::trim) {
            ensure!(!name.is_empty(), "empty machine name in side `{arg}`");
            ensure!(
                machines.iter().any(|m| m == name),
                "no machine `{name}` in this lab (it has {})",
                machines.join(", ")
            );
            ensure!(
                seen.insert(name.to_owned()),
                "machine `{name}` is on two sides"
            );
            side.push(name.to_owned());
        }
        sides.push(side);
    }
    Ok(sides)
}

/// The nftables script that makes exactly `sides` (as addresses) unable to talk to each
/// other, in one atomic transaction. Frames between two machines cross the lab's bridge,
/// so a `bridge` family filter on its forward hook sees all of them, in both directions,
/// whatever the protocol; traffic to and from the host (the bridge's own address) is not
/// forwarded and stays untouched, so the host can still watch every machine.
pub fn partition_script(table: &str, sides: &[Vec<Ipv4Addr>]) -> String {
    let mut script = format!(
        "table bridge {table} {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n  }}\n}}\nflush chain bridge {table} forward\n"
    );
    let set = |side: &[Ipv4Addr]| {
        let addrs: Vec<String> = side.iter().map(Ipv4Addr::to_string).collect();
        format!("{{ {} }}", addrs.join(", "))
    };
    for (a, side_a) in sides.iter().enumerate() {
        for (b, side_b) in sides.iter().enumerate() {
            if a != b && !side_a.is_empty() && !side_b.is_empty() {
                script.push_str(&format!(
                    "add rule bridge {table} forward ip saddr {} ip daddr {} drop\n",
                    set(side_a),
                    set(side_b)
                ));
            }
        }
    }
    script
}

/// The nftables script that removes the lab's table if it exists (declaring it first
/// makes the delete idempotent within one transaction).
pub fn remove_table_script(table: &str) -> String {
    format!("table bridge {table}\ndelete table bridge {table}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn lab_names() {
        for good in ["lab", "t-1", "a"] {
            check_lab_name(good).unwrap();
        }
        for bad in ["", "Lab", "1lab", "a_b", "a b", "abcdefghijklmnopqrstuvwxy"] {
            assert!(check_lab_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn addressing() {
        assert_eq!(machine_addr(3, 2), Ipv4Addr::new(10, 213, 3, 2));
        assert_eq!(bridge_addr(255), Ipv4Addr::new(10, 213, 255, 254));
        assert_eq!(veth_name(255, 253), "nlab255m253");
        assert!(veth_name(255, 253).len() <= 15);
        assert_eq!(netns_name("t", "n2"), "nuage-t-n2");
        assert_eq!(machine_name(12), "n12");
    }

    #[test]
    fn index_allocation() {
        let used: BTreeSet<u8> = [0, 1, 3].into();
        assert_eq!(pick_index(&used).unwrap(), 2);
        let full: BTreeSet<u8> = (0..=255).collect();
        assert!(pick_index(&full).is_err());
    }

    #[test]
    fn machine_counts() {
        assert!(check_machine_count(0).is_err());
        assert!(check_machine_count(254).is_err());
        check_machine_count(253).unwrap();
    }

    #[test]
    fn sides_are_checked() {
        let m = names(&["n1", "n2", "n3"]);
        assert_eq!(
            parse_sides(&names(&["n1,n2", "n3"]), &m).unwrap(),
            vec![names(&["n1", "n2"]), names(&["n3"])]
        );
        let err = parse_sides(&names(&["n1"]), &m).unwrap_err().to_string();
        assert!(err.contains("two or more sides"), "{err}");
        let err = parse_sides(&names(&["n1", "n9"]), &m)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("no machine `n9`") && err.contains("n1, n2, n3"),
            "{err}"
        );
        let err = parse_sides(&names(&["n1,n2", "n2"]), &m)
            .unwrap_err()
            .to_string();
        assert!(err.contains("on two sides"), "{err}");
        assert!(parse_sides(&names(&["n1,", "n2"]), &m).is_err());
    }

    #[test]
    fn partition_rules_cover_both_directions() {
        let a = Ipv4Addr::new(10, 213, 0, 1);
        let b = Ipv4Addr::new(10, 213, 0, 2);
        let c = Ipv4Addr::new(10, 213, 0, 3);
        let script = partition_script("nuage-t", &[vec![a], vec![b, c]]);
        assert!(script.contains("flush chain bridge nuage-t forward"));
        assert!(
            script.contains("ip saddr { 10.213.0.1 } ip daddr { 10.213.0.2, 10.213.0.3 } drop")
        );
        assert!(
            script.contains("ip saddr { 10.213.0.2, 10.213.0.3 } ip daddr { 10.213.0.1 } drop")
        );
        assert_eq!(script.matches("add rule").count(), 2);
        let three = partition_script("nuage-t", &[vec![a], vec![b], vec![c]]);
        assert_eq!(three.matches("add rule").count(), 6);
    }
}
