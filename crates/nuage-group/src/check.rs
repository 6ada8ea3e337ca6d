//! The checker of the group guarantees over what every member of a group received: one
//! checker for the deterministic simulation (`sim`, group mode) and the fault tests on lab
//! machines (`crates/nuage/tests/groups_lab.rs`), so both assert the same properties.
//!
//! Input: for each member (each connection; a restarted client is a new member), the
//! sequence of regular views, TRANSITIONAL signals and messages it received in one group,
//! what it sent, and whether it ended by crashing (its process, its daemon or its
//! connection) rather than staying to the end. A message is named by its sender (a
//! private group name) and a number that grows with each message of that sender.
//!
//! [`check`] asserts, and names the first violation it finds:
//!
//! 1. no message before the first view, and none twice at one member;
//! 2. FIFO: a member gets each sender's messages in the order they were sent;
//! 3. a message is delivered in the same view (group id) at every member that delivers
//!    it (so never in two views), and a group id always names the same member list;
//! 4. one order: any two members deliver the messages they both deliver in the same
//!    order (every service level is totally ordered by nuage, AGREED and SAFE included);
//! 5. virtual synchrony: members that go from one view to the next together delivered
//!    the same messages in between, and members that end in the same view without
//!    crashing delivered the same messages after it (so every message sent in a view is
//!    delivered to all members that survive that view);
//! 6. SAFE: a SAFE message delivered in a regular view, before that view's TRANSITIONAL
//!    signal, is delivered in that view by every member of it that does not crash in it;
//! 7. self-delivery: a member that does not crash delivers every message it sent;
//! 8. vs-sets name who came from where: in a view caused by the network, the vs-sets
//!    partition the members, and the vs-set holding a member holds only members (among
//!    those logged) whose previous view was the same as its own — so, with property 5,
//!    members of one vs-set delivered the same messages since their common view. (Not
//!    the converse: nuage draws vs-sets by daemon configuration, and when a
//!    configuration change is interrupted before the clients are shown it, members that
//!    left one view together may be placed in different vs-sets. The sets are then finer
//!    than needed, which costs an application a state transfer, never correctness.)

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::wire::GroupId;

/// One thing a member received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rec {
    /// A REGULAR membership; `network` when caused by a configuration change (then its
    /// `vs_sets` are checked; otherwise they are not looked at).
    View {
        id: GroupId,
        members: Vec<String>,
        network: bool,
        vs_sets: Vec<Vec<String>>,
    },
    /// A TRANSITIONAL membership: the view is ending; what follows until the next view is
    /// delivered in the transitional configuration.
    Transitional,
    /// A message: its sender's private group, its number, whether it was sent SAFE.
    Msg { sender: String, n: u64, safe: bool },
}

/// Everything one member received, and what it sent.
#[derive(Debug, Clone)]
pub struct MemberLog {
    /// How errors name this member (unique among the logs).
    pub label: String,
    /// Its private group name, as senders and member lists name it.
    pub private_group: String,
    pub recs: Vec<Rec>,
    /// Numbers of the messages it sent to the group, in order.
    pub sent: Vec<u64>,
    /// It crashed (or lost its connection) instead of staying to the end.
    pub crashed: bool,
}

type Key = (String, u64);

/// Where a member delivered a message: its position in the log, the view, and whether
/// it came before the view's TRANSITIONAL signal.
#[derive(Clone, Copy)]
struct Placed {
    pos: usize,
    view: GroupId,
    regular: bool,
}

/// Checks the properties listed in the module documentation over all members' logs.
pub fn check(logs: &[MemberLog]) -> Result<(), String> {
    let placed = place(logs)?;
    same_view_and_one_order(logs, &placed)?;
    virtual_synchrony(logs)?;
    safe_delivery(logs, &placed)?;
    self_delivery(logs, &placed)?;
    vs_sets(logs)
}

/// Properties 1–3 (per member, and group ids): where each member delivered each message.
fn place(logs: &[MemberLog]) -> Result<Vec<HashMap<Key, Placed>>, String> {
    let mut members_of: HashMap<GroupId, (&[String], &str)> = HashMap::new();
    let mut all = Vec::with_capacity(logs.len());
    for log in logs {
        let who = &log.label;
        let mut view: Option<GroupId> = None;
        let mut regular = false;
        let mut here: HashMap<Key, Placed> = HashMap::new();
        let mut last_n: HashMap<&str, u64> = HashMap::new();
        for (pos, r) in log.recs.iter().enumerate() {
            match r {
                Rec::View { id, members, .. } => {
                    match members_of.get(id) {
                        Some((m, other)) if *m != members.as_slice() => {
                            return Err(format!(
                                "group id {id} names {m:?} at {other} but {members:?} at {who}"
                            ));
                        }
                        Some(_) => {}
                        None => {
                            members_of.insert(*id, (members, who));
                        }
                    }
                    if view == Some(*id) {
                        return Err(format!("{who} got view {id} twice in a row"));
                    }
                    view = Some(*id);
                    regular = true;
                }
                Rec::Transitional => regular = false,
                Rec::Msg { sender, n, .. } => {
                    let v = view.ok_or(format!("{who} got {sender}:{n} before any view"))?;
                    let p = Placed {
                        pos,
                        view: v,
                        regular,
                    };
                    if here.insert((sender.clone(), *n), p).is_some() {
                        return Err(format!("{who} got {sender}:{n} twice"));
                    }
                    if let Some(prev) = last_n.insert(sender, *n)
                        && prev >= *n
                    {
                        return Err(format!(
                            "{who} got {sender}:{n} after {sender}:{prev} (FIFO)"
                        ));
                    }
                }
            }
        }
        all.push(here);
    }
    Ok(all)
}

/// Properties 3 and 4 between every pair of members.
fn same_view_and_one_order(
    logs: &[MemberLog],
    placed: &[HashMap<Key, Placed>],
) -> Result<(), String> {
    for a in 0..logs.len() {
        for b in a + 1..logs.len() {
            let mut common: Vec<(usize, usize)> = Vec::new();
            for (k, pa) in &placed[a] {
                if let Some(pb) = placed[b].get(k) {
                    if pa.view != pb.view {
                        return Err(format!(
                            "{}:{} is in view {} at {} but {} at {}",
                            k.0, k.1, pa.view, logs[a].label, pb.view, logs[b].label
                        ));
                    }
                    common.push((pa.pos, pb.pos));
                }
            }
            common.sort_unstable();
            if let Some(w) = common.windows(2).find(|w| w[0].1 > w[1].1) {
                return Err(format!(
                    "{} and {} disagree on the order (positions {:?} and {:?})",
                    logs[a].label, logs[b].label, w[0], w[1]
                ));
            }
        }
    }
    Ok(())
}

/// Property 5: the same messages between two views for members that go from one to the
/// other, and after the last view for members that end in it.
fn virtual_synchrony(logs: &[MemberLog]) -> Result<(), String> {
    // A stretch between two views: from a view to the next, or to the end (None).
    type Stretch = (GroupId, Option<GroupId>);
    // Each stretch → the messages delivered in it, and who delivered them first.
    let mut between: HashMap<Stretch, (BTreeSet<Key>, &str)> = HashMap::new();
    for log in logs {
        let mut from: Option<GroupId> = None;
        let mut set: BTreeSet<Key> = BTreeSet::new();
        let mut compare = |from: GroupId, to: Option<GroupId>, set: &BTreeSet<Key>| match between
            .get(&(from, to))
        {
            Some((s, other)) if s != set => {
                let only_here: Vec<&Key> = set.difference(s).take(3).collect();
                let only_there: Vec<&Key> = s.difference(set).take(3).collect();
                let to = to.map_or("the end".to_owned(), |t| format!("view {t}"));
                Err(format!(
                    "{} and {other} go from view {from} to {to} together but got different messages (only at {}: {only_here:?}; only at {other}: {only_there:?})",
                    log.label, log.label
                ))
            }
            Some(_) => Ok(()),
            None => {
                between.insert((from, to), (set.clone(), &log.label));
                Ok(())
            }
        };
        for r in &log.recs {
            match r {
                Rec::View { id, .. } => {
                    if let Some(f) = from {
                        compare(f, Some(*id), &set)?;
                    }
                    from = Some(*id);
                    set.clear();
                }
                Rec::Msg { sender, n, .. } => {
                    set.insert((sender.clone(), *n));
                }
                Rec::Transitional => {}
            }
        }
        if let (Some(f), false) = (from, log.crashed) {
            compare(f, None, &set)?;
        }
    }
    Ok(())
}

/// Property 6.
fn safe_delivery(logs: &[MemberLog], placed: &[HashMap<Key, Placed>]) -> Result<(), String> {
    // For each view: the members that installed it, and whether it was their last view
    // before a crash (they are excused from what they did not get).
    let mut installed: BTreeMap<GroupId, Vec<(usize, bool)>> = BTreeMap::new();
    for (k, log) in logs.iter().enumerate() {
        let views: Vec<GroupId> = log
            .recs
            .iter()
            .filter_map(|r| match r {
                Rec::View { id, .. } => Some(*id),
                _ => None,
            })
            .collect();
        for (i, v) in views.iter().enumerate() {
            let crashed_in_it = log.crashed && i + 1 == views.len();
            installed.entry(*v).or_default().push((k, crashed_in_it));
        }
    }
    for (a, log) in logs.iter().enumerate() {
        for r in &log.recs {
            let Rec::Msg {
                sender,
                n,
                safe: true,
            } = r
            else {
                continue;
            };
            let key = (sender.clone(), *n);
            let p = placed[a][&key];
            if !p.regular {
                continue;
            }
            for &(b, crashed_in_it) in &installed[&p.view] {
                if b != a && !crashed_in_it && !placed[b].contains_key(&key) {
                    return Err(format!(
                        "SAFE {sender}:{n} was delivered at {} in the regular view {}, but {} (a member of it that did not crash) never got it",
                        log.label, p.view, logs[b].label
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Property 7.
fn self_delivery(logs: &[MemberLog], placed: &[HashMap<Key, Placed>]) -> Result<(), String> {
    for (k, log) in logs.iter().enumerate() {
        if log.crashed {
            continue;
        }
        for n in &log.sent {
            if !placed[k].contains_key(&(log.private_group.clone(), *n)) {
                return Err(format!("{} never got its own message {n}", log.label));
            }
        }
    }
    Ok(())
}

/// Property 8.
fn vs_sets(logs: &[MemberLog]) -> Result<(), String> {
    // Each logged member's view before each view it installed (None: its first).
    let mut previous: HashMap<(&str, GroupId), Option<GroupId>> = HashMap::new();
    for log in logs {
        let mut prev = None;
        for r in &log.recs {
            if let Rec::View { id, .. } = r {
                previous.insert((&log.private_group, *id), prev);
                prev = Some(*id);
            }
        }
    }
    for log in logs {
        let me = log.private_group.as_str();
        for r in &log.recs {
            let Rec::View {
                id,
                members,
                network: true,
                vs_sets,
            } = r
            else {
                continue;
            };
            let mut all: Vec<&String> = vs_sets.iter().flatten().collect();
            all.sort();
            let mut want: Vec<&String> = members.iter().collect();
            want.sort();
            if all != want {
                return Err(format!(
                    "the vs-sets {vs_sets:?} of view {id} at {} do not partition its members {members:?}",
                    log.label
                ));
            }
            let mine_before = previous[&(me, *id)];
            let Some(mine) = vs_sets.iter().find(|v| v.iter().any(|m| m == me)) else {
                return Err(format!("no vs-set of view {id} at {} holds it", log.label));
            };
            for other in members {
                let Some(theirs_before) = previous.get(&(other.as_str(), *id)) else {
                    continue; // not logged
                };
                let together = mine_before.is_some() && *theirs_before == mine_before;
                if mine.contains(other) && !together && other != me {
                    return Err(format!(
                        "view {id} at {}: {other} is in its vs-set {mine:?}, but came from view {theirs_before:?} while it came from {mine_before:?}",
                        log.label
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: i32, members: &[&str]) -> Rec {
        Rec::View {
            id: GroupId([0, id, 1]),
            members: members.iter().map(|s| (*s).to_owned()).collect(),
            network: false,
            vs_sets: Vec::new(),
        }
    }

    fn network_view(id: i32, vs_sets: &[&[&str]]) -> Rec {
        let vs_sets: Vec<Vec<String>> = vs_sets
            .iter()
            .map(|v| v.iter().map(|s| (*s).to_owned()).collect())
            .collect();
        let mut members: Vec<String> = vs_sets.iter().flatten().cloned().collect();
        members.sort();
        Rec::View {
            id: GroupId([0, id, 1]),
            members,
            network: true,
            vs_sets,
        }
    }

    fn msg(sender: &str, n: u64, safe: bool) -> Rec {
        Rec::Msg {
            sender: sender.to_owned(),
            n,
            safe,
        }
    }

    fn member(name: &str, recs: Vec<Rec>, sent: &[u64], crashed: bool) -> MemberLog {
        MemberLog {
            label: name.to_owned(),
            private_group: name.to_owned(),
            recs,
            sent: sent.to_vec(),
            crashed,
        }
    }

    /// Two members, a view, their messages: the good history passes.
    fn good() -> Vec<MemberLog> {
        let ab = ["a", "b"];
        vec![
            member(
                "a",
                vec![view(1, &ab), msg("a", 1, true), msg("b", 1, false)],
                &[1],
                false,
            ),
            member(
                "b",
                vec![view(1, &ab), msg("a", 1, true), msg("b", 1, false)],
                &[1],
                false,
            ),
        ]
    }

    #[test]
    fn a_good_history_passes() {
        check(&good()).unwrap();
    }

    #[test]
    fn each_violation_is_found() {
        let expect = |logs: Vec<MemberLog>, what: &str| {
            let e = check(&logs).expect_err(what);
            assert!(e.contains(what), "{e}");
        };
        let mut l = good();
        l[1].recs.swap(1, 2);
        expect(l, "disagree on the order");

        let mut l = good();
        l[0].recs.push(msg("a", 1, true));
        expect(l, "twice");

        let mut l = good();
        l[0].recs.insert(1, msg("b", 5, false));
        expect(l, "(FIFO)");

        let mut l = good();
        l[1].recs.insert(1, view(2, &["a", "b"]));
        expect(l, "is in view");

        let mut l = good();
        l[1].recs[0] = view(1, &["b"]);
        expect(l, "names");

        // b misses a's message: virtual synchrony at the end.
        let mut l = good();
        l[1].recs.remove(1);
        l[1].sent.clear();
        l[0].recs
            .retain(|r| !matches!(r, Rec::Msg { sender, .. } if sender == "b"));
        l[0].recs.push(msg("c", 1, false));
        expect(l, "to the end together");

        // A SAFE message delivered before the transitional signal is owed to a member
        // that left the view by a partition; one delivered after it is not.
        let ab = ["a", "b"];
        let partitioned = |safe_before: bool| {
            let mut a = vec![view(1, &ab)];
            if safe_before {
                a.push(msg("a", 1, true));
                a.push(Rec::Transitional);
            } else {
                a.push(Rec::Transitional);
                a.push(msg("a", 1, true));
            }
            a.push(view(2, &["a"]));
            vec![
                member("a", a, &[1], false),
                member(
                    "b",
                    vec![view(1, &ab), Rec::Transitional, view(3, &["b"])],
                    &[],
                    false,
                ),
            ]
        };
        check(&partitioned(false)).unwrap();
        expect(partitioned(true), "SAFE a:1");
        // ... unless that member crashed in the view.
        let mut l = partitioned(true);
        l[1].recs.truncate(2);
        l[1].crashed = true;
        check(&l).unwrap();

        let mut l = good();
        l[0].sent.push(2);
        expect(l, "never got its own message 2");

        // A merge: a and b were together, c apart.
        let merge = |sets: &[&[&str]]| {
            let ab = ["a", "b"];
            vec![
                member("a", vec![view(1, &ab), network_view(3, sets)], &[], false),
                member("b", vec![view(1, &ab), network_view(3, sets)], &[], false),
                member(
                    "c",
                    vec![view(2, &["c"]), network_view(3, sets)],
                    &[],
                    false,
                ),
            ]
        };
        check(&merge(&[&["a", "b"], &["c"]])).unwrap();
        // Finer than needed is allowed (see the module documentation).
        check(&merge(&[&["a"], &["b"], &["c"]])).unwrap();
        expect(merge(&[&["a", "b", "c"]]), "is in its vs-set");
        let mut l = merge(&[&["a", "b"], &["c"]]);
        for m in &mut l {
            if let Rec::View { vs_sets, .. } = &mut m.recs[1] {
                vs_sets.pop();
            }
        }
        expect(l, "do not partition");
        let mut l = merge(&[&["a", "b"], &["c"]]);
        if let Rec::View { members, .. } = &mut l[2].recs[1] {
            members.push("d".into());
        }
        expect(l, "names");
    }
}
