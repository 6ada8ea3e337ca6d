//! The group layer: named groups, their members, and what each local client receives.
//!
//! It sits on the ring ([`crate::ring::Upper`]) and is a pure state machine: client
//! requests go into the ring as *operations*; every daemon applies the operations it is
//! delivered, in the ring's one total order, to the same group state, so all daemons
//! agree on every group view and deliver membership messages at the same place in the
//! message stream.
//!
//! Operations (the payload of one ring message, first byte = kind):
//!
//! | kind | content |
//! |---|---|
//! | JOIN (1) | id, client private group (32), group (32) |
//! | LEAVE (2) | id, client private group (32), group (32) |
//! | KILL (3) | id, client private group (32): the client disconnected |
//! | DATA (4) | id, a client message: Spread header, destination groups, body (little-endian header) |
//! | STATE (5) | ring seq u64, ring rep u8, n u32, n × (client (32), k u16, k × (group (32), id of the client's last view of it: 3 × i32)) |
//!
//! The id (boot id u64, sequence u64) lets a daemon send an operation again — when the
//! ring dropped it in a configuration change, or when the STATE exchange it was ordered in
//! was interrupted — and every daemon apply it once.
//!
//! **Configuration changes.** On a transitional configuration, every group that has
//! members on daemons that did not come along gets a TRANSITIONAL membership message, and
//! those members are removed. On a regular configuration every daemon broadcasts STATE:
//! its own clients and their groups, each with the id of the last view the client was
//! shown of it. Client operations wait (locally) until the STATE of
//! every daemon of the configuration has been delivered; any other operation delivered
//! meanwhile (sent before the change) is held and applied right after, at every daemon
//! alike (if another change interrupts the exchange, they are not applied: their senders
//! send them again). The group state is then rebuilt from the STATE messages, and each group whose
//! members changed gets (a TRANSITIONAL membership if it had none yet, then) a REGULAR
//! membership caused by the network, with one vs-set per view its members come from (the
//! ids in STATE). Not per old ring: a daemon's old ring can be one whose exchange was
//! interrupted before its clients were shown anything, entered by daemons whose clients
//! last saw different views (found by the simulator, seed 2000978 with token pacing).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use bytes::{BufMut, Bytes, BytesMut};

use crate::ring::{Event, NodeId, NodeSet, Outgoing, RingId, Upper};
use crate::wire::{
    self, FrameView, GroupId, MAX_GROUP_NAME, MembershipBody, put_name, read_name, service,
};

/// Most client operations waiting for the ring; beyond it the daemon stops reading from
/// its clients (back-pressure) until the ring has taken some.
pub const MAX_PENDING_OPS: usize = 4096;

const OP_JOIN: u8 = 1;
const OP_LEAVE: u8 = 2;
const OP_KILL: u8 = 3;
const OP_DATA: u8 = 4;
const OP_STATE: u8 = 5;

/// A client and its groups, each with the id of the last view the client was shown.
pub type ClientGroups = (String, Vec<(String, GroupId)>);

/// A client operation, as sent through the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Join {
        client: String,
        group: String,
    },
    Leave {
        client: String,
        group: String,
    },
    Kill {
        client: String,
    },
    /// A client message (frame as re-encoded by [`wire::decode_request`]).
    Data {
        frame: Bytes,
    },
    /// A daemon's clients after a configuration change: each client with its groups,
    /// each group with the id of the last view that client was shown (vs-sets are
    /// drawn by it).
    State {
        ring: RingId,
        clients: Vec<ClientGroups>,
    },
}

impl Op {
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::new();
        match self {
            Op::Join { client, group } | Op::Leave { client, group } => {
                out.put_u8(if matches!(self, Op::Join { .. }) {
                    OP_JOIN
                } else {
                    OP_LEAVE
                });
                put_name(&mut out, client);
                put_name(&mut out, group);
            }
            Op::Kill { client } => {
                out.put_u8(OP_KILL);
                put_name(&mut out, client);
            }
            Op::Data { frame } => {
                out.reserve(1 + frame.len());
                out.put_u8(OP_DATA);
                out.put_slice(frame);
            }
            Op::State { ring, clients } => {
                out.put_u8(OP_STATE);
                out.put_u64_le(ring.seq);
                out.put_u8(ring.rep);
                out.put_u32_le(clients.len() as u32);
                for (c, groups) in clients {
                    put_name(&mut out, c);
                    out.put_u16_le(u16::try_from(groups.len()).expect("bounded group count"));
                    for (g, id) in groups {
                        put_name(&mut out, g);
                        for x in id.0 {
                            out.put_i32_le(x);
                        }
                    }
                }
            }
        }
        out.freeze()
    }

    pub fn decode(b: &Bytes) -> Result<Op, String> {
        let name_at = |at: usize| -> Result<String, String> {
            let field = b
                .get(at..at + MAX_GROUP_NAME)
                .ok_or("operation too short")?;
            read_name(field).map_err(|e| e.0)
        };
        let kind = *b.first().ok_or("empty operation")?;
        match kind {
            OP_JOIN | OP_LEAVE => {
                if b.len() != 1 + 2 * MAX_GROUP_NAME {
                    return Err("join/leave operation of the wrong size".into());
                }
                let client = name_at(1)?;
                let group = name_at(1 + MAX_GROUP_NAME)?;
                Ok(if kind == OP_JOIN {
                    Op::Join { client, group }
                } else {
                    Op::Leave { client, group }
                })
            }
            OP_KILL => {
                if b.len() != 1 + MAX_GROUP_NAME {
                    return Err("kill operation of the wrong size".into());
                }
                Ok(Op::Kill {
                    client: name_at(1)?,
                })
            }
            OP_DATA => {
                let frame = b.slice(1..);
                FrameView::parse(&frame).map_err(|e| e.0)?;
                Ok(Op::Data { frame })
            }
            OP_STATE => {
                let get =
                    |at: usize, n: usize| b.get(at..at + n).ok_or("state operation too short");
                let seq = u64::from_le_bytes(get(1, 8)?.try_into().expect("8"));
                let rep = get(9, 1)?[0];
                let n = u32::from_le_bytes(get(10, 4)?.try_into().expect("4")) as usize;
                let mut at = 14;
                let mut clients = Vec::with_capacity(n.min(4096));
                for _ in 0..n {
                    let c = name_at(at)?;
                    at += MAX_GROUP_NAME;
                    let k = u16::from_le_bytes(get(at, 2)?.try_into().expect("2")) as usize;
                    at += 2;
                    let mut groups = Vec::with_capacity(k);
                    for _ in 0..k {
                        let g = name_at(at)?;
                        at += MAX_GROUP_NAME;
                        let mut id = [0i32; 3];
                        for x in &mut id {
                            *x = i32::from_le_bytes(get(at, 4)?.try_into().expect("4"));
                            at += 4;
                        }
                        groups.push((g, GroupId(id)));
                    }
                    clients.push((c, groups));
                }
                if at != b.len() {
                    return Err("state operation with trailing bytes".into());
                }
                Ok(Op::State {
                    ring: RingId { seq, rep },
                    clients,
                })
            }
            _ => Err(format!("unknown operation kind {kind}")),
        }
    }
}

/// A client operation's identity: the boot id of the daemon that sent it (with the
/// daemon's index, unique per daemon incarnation) and its sequence number there. An operation may be broadcast twice
/// (resubmitted after an interrupted STATE exchange); every daemon applies it once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId {
    pub boot: u64,
    pub seq: u64,
}

const OP_ID_LEN: usize = 16;

/// A ring message: the operation's kind byte, its id (all but STATE), then the rest.
fn encode_op(id: Option<OpId>, op: &Op) -> Bytes {
    let plain = op.encode();
    let Some(id) = id else {
        return plain;
    };
    let mut out = BytesMut::with_capacity(plain.len() + OP_ID_LEN);
    out.put_u8(plain[0]);
    out.put_u64_le(id.boot);
    out.put_u64_le(id.seq);
    out.put_slice(&plain[1..]);
    out.freeze()
}

fn decode_op(b: &Bytes) -> Result<(Option<OpId>, Op), String> {
    let kind = *b.first().ok_or("empty operation")?;
    if kind == OP_STATE {
        return Ok((None, Op::decode(b)?));
    }
    let head = b
        .get(1..1 + OP_ID_LEN)
        .ok_or("operation too short for its id")?;
    let id = OpId {
        boot: u64::from_le_bytes(head[..8].try_into().expect("8")),
        seq: u64::from_le_bytes(head[8..].try_into().expect("8")),
    };
    let mut plain = BytesMut::with_capacity(b.len() - OP_ID_LEN);
    plain.put_u8(kind);
    plain.put_slice(&b[1 + OP_ID_LEN..]);
    Ok((Some(id), Op::decode(&plain.freeze())?))
}

fn frame_is_safe(frame: &[u8]) -> bool {
    FrameView::parse(frame).is_ok_and(|v| v.header.service_type & service::SAFE_MESS != 0)
}

/// A member of a group: a client, on a daemon. Ordered by daemon, then name, which is
/// the order of the member list in membership messages (as in Spread).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Member {
    pub daemon: NodeId,
    pub name: String,
}

#[derive(Debug, Clone)]
struct Group {
    id: GroupId,
    members: BTreeSet<Member>,
}

/// A message for one local client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The client's private group.
    pub to: String,
    /// The whole message as the client receives it.
    pub frame: Bytes,
    /// A membership message (not sent to clients that asked for none).
    pub membership: bool,
}

/// The ongoing exchange of STATE after a regular configuration.
#[derive(Debug)]
struct Exchange {
    ring: RingId,
    members: NodeSet,
    states: BTreeMap<NodeId, Vec<ClientGroups>>,
    /// Operations delivered during the exchange (sent before it), applied after it.
    held: Vec<(NodeId, OpId, Op)>,
}

/// Counters shown by `nuage group status`.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GroupStats {
    pub messages_delivered: u64,
    pub memberships_delivered: u64,
    pub operations_sent: u64,
    pub malformed_operations: u64,
    pub duplicate_operations: u64,
    pub operations_resubmitted: u64,
}

/// The group layer of one daemon.
pub struct GroupLayer {
    me: NodeId,
    daemon_names: Vec<String>,
    groups: BTreeMap<String, Group>,
    /// Groups that got a TRANSITIONAL membership during the current configuration change.
    transitional_sent: BTreeSet<String>,
    ring: RingId,
    /// Group views changed in the current ring (third part of group ids).
    view_counter: i32,
    exchange: Option<Exchange>,
    /// STATE to send first in the new configuration.
    state_out: Option<Outgoing>,
    /// This daemon incarnation's id in operation ids, and the next sequence number.
    boot: u64,
    next_seq: u64,
    /// Client operations waiting for the ring, with their sequence numbers.
    pending: VecDeque<(u64, Outgoing)>,
    /// Bytes of the operations in `pending`.
    pending_bytes: usize,
    /// Operations the ring took and has not delivered back yet: the ring drops them if the
    /// configuration changes first, and they are sent again.
    inflight: VecDeque<(u64, Outgoing)>,
    /// Own operations delivered in an interrupted exchange, to send again.
    resubmit: Vec<(u64, Outgoing)>,
    /// Highest sequence number applied, per sending daemon and boot id.
    applied: HashMap<(NodeId, u64), u64>,
    outbox: Vec<Delivery>,
    stats: GroupStats,
}

impl GroupLayer {
    /// `boot` must differ between incarnations of every daemon (the daemon uses its
    /// start time in milliseconds, as for its ring ids).
    pub fn new(me: NodeId, daemon_names: Vec<String>, boot: u64) -> GroupLayer {
        assert!((me as usize) < daemon_names.len());
        GroupLayer {
            me,
            daemon_names,
            groups: BTreeMap::new(),
            transitional_sent: BTreeSet::new(),
            ring: RingId::default(),
            view_counter: 0,
            exchange: None,
            state_out: None,
            boot,
            next_seq: 1,
            pending: VecDeque::new(),
            pending_bytes: 0,
            inflight: VecDeque::new(),
            resubmit: Vec::new(),
            applied: HashMap::new(),
            outbox: Vec::new(),
            stats: GroupStats::default(),
        }
    }

    pub fn daemon_name(&self, d: NodeId) -> &str {
        &self.daemon_names[d as usize]
    }

    /// Whether another client operation may be queued (back-pressure).
    pub fn can_accept(&self) -> bool {
        self.pending.len() < MAX_PENDING_OPS
    }

    /// The client operations waiting for the ring that the next token visit could
    /// broadcast: how many, and their bytes. `(0, 0)` while a STATE exchange holds
    /// them back or this daemon's STATE is still to go (then nothing waits on volume).
    pub fn pending_load(&self) -> (usize, usize) {
        if self.state_out.is_some() || self.exchange.is_some() {
            return (0, 0);
        }
        (self.pending.len(), self.pending_bytes)
    }

    /// Queues a client operation for the ring (SAFE data is broadcast as a SAFE frame).
    pub fn submit(&mut self, op: &Op) {
        let safe = matches!(op, Op::Data { frame } if frame_is_safe(frame));
        let id = OpId {
            boot: self.boot,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        let data = encode_op(Some(id), op);
        self.pending_bytes += data.len();
        self.pending.push_back((id.seq, Outgoing { data, safe }));
    }

    /// Messages for local clients produced since the last call.
    pub fn take_deliveries(&mut self) -> Vec<Delivery> {
        std::mem::take(&mut self.outbox)
    }

    pub fn stats(&self) -> &GroupStats {
        &self.stats
    }

    /// Groups and their members (for status).
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        self.groups
            .iter()
            .map(|(g, grp)| {
                (
                    g.clone(),
                    grp.members.iter().map(|m| m.name.clone()).collect(),
                )
            })
            .collect()
    }

    /// Whether a configuration change is being settled (client operations wait).
    pub fn exchanging(&self) -> bool {
        self.exchange.is_some()
    }

    fn daemon_of(&self, private: &str) -> Option<NodeId> {
        let (_, d) = wire::split_private_group(private)?;
        self.daemon_names
            .iter()
            .position(|n| n == d)
            .map(|i| i as NodeId)
    }

    fn next_group_id(&mut self) -> GroupId {
        self.view_counter = self.view_counter.wrapping_add(1);
        GroupId([
            i32::from(self.ring.rep),
            self.ring.seq as i32,
            self.view_counter,
        ])
    }

    fn local_members(&self, group: &str) -> Vec<String> {
        self.groups.get(group).map_or_else(Vec::new, |g| {
            g.members
                .iter()
                .filter(|m| m.daemon == self.me)
                .map(|m| m.name.clone())
                .collect()
        })
    }

    fn deliver_membership(&mut self, to: &[String], frame: Bytes) {
        for c in to {
            self.stats.memberships_delivered += 1;
            self.outbox.push(Delivery {
                to: c.clone(),
                frame: frame.clone(),
                membership: true,
            });
        }
    }

    /// A REGULAR membership of `group` (current view) to its local members, with `vs_sets`
    /// built per receiver.
    fn announce(&mut self, group: &str, cause: u32, vs_sets: &[Vec<String>]) {
        let Some(g) = self.groups.get(group) else {
            return;
        };
        let members: Vec<&str> = g.members.iter().map(|m| m.name.as_str()).collect();
        let id = g.id;
        let mut out = Vec::new();
        for m in g.members.iter().filter(|m| m.daemon == self.me) {
            let my_vs_set = vs_sets
                .iter()
                .position(|s| s.contains(&m.name))
                .unwrap_or(0);
            let body = MembershipBody {
                group_id: id,
                vs_sets: vs_sets.to_vec(),
                my_vs_set,
            };
            out.push(Delivery {
                to: m.name.clone(),
                frame: wire::regular_membership(group, &members, cause, &body),
                membership: true,
            });
        }
        self.stats.memberships_delivered += out.len() as u64;
        self.outbox.extend(out);
    }

    /// Applies an operation unless this daemon already did (a resubmitted copy).
    fn apply_once(&mut self, origin: NodeId, id: OpId, op: Op) {
        let last = self.applied.entry((origin, id.boot)).or_insert(0);
        if id.seq <= *last {
            self.stats.duplicate_operations += 1;
            return;
        }
        *last = id.seq;
        self.apply(origin, op);
    }

    fn apply(&mut self, origin: NodeId, op: Op) {
        match op {
            Op::Join { client, group } => {
                let Some(d) = self.daemon_of(&client) else {
                    return;
                };
                if d != origin || wire::check_group_name(&group).is_err() {
                    return;
                }
                let member = Member {
                    daemon: d,
                    name: client.clone(),
                };
                let id = self.next_group_id();
                let g = self.groups.entry(group.clone()).or_insert_with(|| Group {
                    id,
                    members: BTreeSet::new(),
                });
                if !g.members.insert(member) {
                    self.view_counter = self.view_counter.wrapping_sub(1);
                    return; // already a member: nothing changes
                }
                g.id = id;
                self.announce(&group, service::CAUSED_BY_JOIN, &[vec![client]]);
            }
            Op::Leave { client, group } => {
                let Some(d) = self.daemon_of(&client) else {
                    return;
                };
                let member = Member {
                    daemon: d,
                    name: client.clone(),
                };
                let Some(g) = self.groups.get_mut(&group) else {
                    return;
                };
                if !g.members.remove(&member) {
                    return;
                }
                if d == self.me {
                    self.deliver_membership(
                        std::slice::from_ref(&client),
                        wire::self_leave(&group),
                    );
                }
                self.after_removal(&group, client, service::CAUSED_BY_LEAVE);
            }
            Op::Kill { client } => {
                let Some(d) = self.daemon_of(&client) else {
                    return;
                };
                let member = Member {
                    daemon: d,
                    name: client.clone(),
                };
                let names: Vec<String> = self
                    .groups
                    .iter_mut()
                    .filter_map(|(name, g)| g.members.remove(&member).then(|| name.clone()))
                    .collect();
                for group in names {
                    self.after_removal(&group, client.clone(), service::CAUSED_BY_DISCONNECT);
                }
            }
            Op::Data { frame } => self.deliver_data(frame),
            Op::State { .. } => unreachable!("STATE is handled by the exchange"),
        }
    }

    fn after_removal(&mut self, group: &str, client: String, cause: u32) {
        let id = self.next_group_id();
        let g = self.groups.get_mut(group).expect("present");
        if g.members.is_empty() {
            self.groups.remove(group);
            return;
        }
        g.id = id;
        self.announce(group, cause, &[vec![client]]);
    }

    fn deliver_data(&mut self, frame: Bytes) {
        let Ok(view) = FrameView::parse(&frame) else {
            self.stats.malformed_operations += 1;
            return;
        };
        let self_discard = view.header.service_type & service::SELF_DISCARD != 0;
        let sender = view.header.sender.as_str();
        // Each local client gets a message once, even if it is in several destinations.
        let mut to: BTreeSet<String> = BTreeSet::new();
        for g in &view.groups {
            if g.starts_with('#') {
                if self.daemon_of(g) == Some(self.me) {
                    to.insert(g.clone());
                }
            } else {
                to.extend(self.local_members(g));
            }
        }
        if self_discard {
            to.remove(sender);
        }
        // The client sees the service bits without SELF_DISCARD, as Spread delivers them.
        let frame = if self_discard {
            let mut f = BytesMut::from(&frame[..]);
            let t = u32::from_le_bytes(f[0..4].try_into().expect("4")) & !service::SELF_DISCARD;
            f[0..4].copy_from_slice(&t.to_le_bytes());
            f.freeze()
        } else {
            frame
        };
        for c in to {
            self.stats.messages_delivered += 1;
            self.outbox.push(Delivery {
                to: c,
                frame: frame.clone(),
                membership: false,
            });
        }
    }

    fn on_transitional(&mut self, trans: NodeSet) {
        // An exchange that never completed: its configuration was never installed for
        // the clients, so the operations ordered in it are not applied here (a daemon
        // outside it would never see them). This daemon's own go again in the next
        // configuration; a daemon that did complete the exchange skips the copies.
        if let Some(x) = self.exchange.take() {
            for (origin, id, op) in x.held {
                if origin == self.me && id.boot == self.boot {
                    let safe = matches!(&op, Op::Data { frame } if frame_is_safe(frame));
                    self.resubmit.push((
                        id.seq,
                        Outgoing {
                            data: encode_op(Some(id), &op),
                            safe,
                        },
                    ));
                }
            }
        }
        self.transitional_sent.clear();
        let names: Vec<String> = self.groups.keys().cloned().collect();
        for name in names {
            let g = self.groups.get_mut(&name).expect("listed");
            let lost = g.members.iter().any(|m| !trans.contains(m.daemon));
            if !lost {
                continue;
            }
            let id = g.id;
            g.members.retain(|m| trans.contains(m.daemon));
            let local = self.local_members(&name);
            if !local.is_empty() {
                self.deliver_membership(&local, wire::transitional_membership(&name, id));
                self.transitional_sent.insert(name.clone());
            }
            if self.groups[&name].members.is_empty() {
                self.groups.remove(&name);
            }
        }
    }

    fn on_regular(&mut self, ring: RingId, members: NodeSet) {
        // What the ring dropped, and own operations of an interrupted exchange, go first
        // in the new configuration, in their original order.
        let mut again: Vec<(u64, Outgoing)> = self.resubmit.drain(..).collect();
        again.extend(self.inflight.drain(..));
        again.sort_by_key(|(seq, _)| *seq);
        self.stats.operations_resubmitted += again.len() as u64;
        for item in again.into_iter().rev() {
            self.pending_bytes += item.1.data.len();
            self.pending.push_front(item);
        }
        self.ring = ring;
        self.view_counter = 0;
        let mine: Vec<ClientGroups> = {
            let mut per_client: BTreeMap<String, Vec<(String, GroupId)>> = BTreeMap::new();
            for (name, g) in &self.groups {
                for m in g.members.iter().filter(|m| m.daemon == self.me) {
                    per_client
                        .entry(m.name.clone())
                        .or_default()
                        .push((name.clone(), g.id));
                }
            }
            per_client.into_iter().collect()
        };
        self.state_out = Some(Outgoing {
            data: Op::State {
                ring,
                clients: mine,
            }
            .encode(),
            safe: false,
        });
        self.exchange = Some(Exchange {
            ring,
            members,
            states: BTreeMap::new(),
            held: Vec::new(),
        });
    }

    fn on_state(&mut self, origin: NodeId, ring: RingId, clients: Vec<ClientGroups>) {
        let Some(x) = &mut self.exchange else {
            return;
        };
        if ring != x.ring || !x.members.contains(origin) {
            return; // a STATE of an earlier configuration
        }
        x.states.insert(origin, clients);
        if x.states.len() < x.members.len() {
            return;
        }
        let x = self.exchange.take().expect("present");
        // Rebuild every group from the reports.
        let mut rebuilt: BTreeMap<String, BTreeSet<Member>> = BTreeMap::new();
        // The view each member was last shown, per group: its vs-set.
        let mut came_from: HashMap<(&str, &str), GroupId> = HashMap::new();
        for (d, clients) in &x.states {
            for (c, groups) in clients {
                if self.daemon_of(c) != Some(*d) {
                    continue;
                }
                for (g, id) in groups {
                    if wire::check_group_name(g).is_ok() {
                        rebuilt.entry(g.clone()).or_default().insert(Member {
                            daemon: *d,
                            name: c.clone(),
                        });
                        came_from.insert((g.as_str(), c.as_str()), *id);
                    }
                }
            }
        }
        // Every group gets a new id, in name order, so that ids (and the counter behind
        // them) are the same at every daemon whatever each saw before the change.
        self.view_counter = 0;
        let mut changed = Vec::new();
        let mut groups = BTreeMap::new();
        for (name, members) in rebuilt {
            let id = self.next_group_id();
            groups.insert(name, Group { id, members });
        }
        let names: BTreeSet<String> = groups.keys().chain(self.groups.keys()).cloned().collect();
        for name in names {
            let before = self.groups.get(&name);
            let after = groups.get(&name);
            let cut = self.transitional_sent.contains(&name);
            // Unchanged, and not cut by the transitional configuration: nothing to say.
            if before.map(|g| &g.members) == after.map(|g| &g.members) && !cut {
                continue;
            }
            // A group that only grows had no TRANSITIONAL yet: its members' old view ends here.
            if let Some(b) = before
                && !cut
            {
                let had: Vec<String> = b
                    .members
                    .iter()
                    .filter(|m| m.daemon == self.me)
                    .map(|m| m.name.clone())
                    .collect();
                self.deliver_membership(&had, wire::transitional_membership(&name, b.id));
            }
            if after.is_some_and(|g| g.members.iter().any(|m| m.daemon == self.me)) {
                changed.push(name);
            }
        }
        self.groups = groups;
        for name in changed {
            // One vs-set per view the members come from, in the order of their first
            // member (daemon, then name).
            let mut sets: Vec<(Option<GroupId>, Vec<String>)> = Vec::new();
            for m in &self.groups[&name].members {
                let old = came_from.get(&(name.as_str(), m.name.as_str())).copied();
                match sets.iter_mut().find(|(r, _)| *r == old) {
                    Some((_, s)) => s.push(m.name.clone()),
                    None => sets.push((old, vec![m.name.clone()])),
                }
            }
            let sets: Vec<Vec<String>> = sets.into_iter().map(|(_, s)| s).collect();
            self.announce(&name, service::CAUSED_BY_NETWORK, &sets);
        }
        self.transitional_sent.clear();
        for (origin, id, op) in x.held {
            self.apply_once(origin, id, op);
        }
    }

    fn on_message(&mut self, origin: NodeId, data: Bytes) {
        let (id, op) = match decode_op(&data) {
            Ok(x) => x,
            Err(e) => {
                self.stats.malformed_operations += 1;
                tracing::warn!("ignoring a malformed operation from daemon {origin}: {e}");
                return;
            }
        };
        match (id, op) {
            (_, Op::State { ring, clients }) => self.on_state(origin, ring, clients),
            (Some(id), op) => {
                if origin == self.me && id.boot == self.boot {
                    self.inflight.retain(|(seq, _)| *seq != id.seq);
                }
                match &mut self.exchange {
                    Some(x) => x.held.push((origin, id, op)),
                    None => self.apply_once(origin, id, op),
                }
            }
            (None, _) => self.stats.malformed_operations += 1,
        }
    }
}

impl Upper for GroupLayer {
    fn has_pending(&self) -> bool {
        self.state_out.is_some() || (self.exchange.is_none() && !self.pending.is_empty())
    }

    fn next_message(&mut self) -> Option<Outgoing> {
        if let Some(s) = self.state_out.take() {
            self.stats.operations_sent += 1;
            return Some(s);
        }
        if self.exchange.is_some() {
            return None;
        }
        let (seq, m) = self.pending.pop_front()?;
        self.pending_bytes -= m.data.len();
        self.inflight.push_back((seq, m.clone()));
        self.stats.operations_sent += 1;
        Some(m)
    }

    fn deliver(&mut self, event: Event) {
        match event {
            Event::Message { sender, data } => self.on_message(sender, data),
            Event::Transitional { members, .. } => self.on_transitional(members),
            // The vs-sets come from the STATE exchange (the view each member was last
            // shown), not from the daemons' old rings: see `on_state`.
            Event::Regular { ring, members, .. } => self.on_regular(ring, members),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{MembershipBody, hint_for};

    fn layer(me: NodeId) -> GroupLayer {
        GroupLayer::new(
            me,
            vec!["d0".into(), "d1".into(), "d2".into()],
            100 + u64::from(me),
        )
    }

    fn ring(seq: u64, rep: NodeId) -> RingId {
        RingId { seq, rep }
    }

    /// Installs a configuration of `members` (all coming from `old`), STATE exchange included.
    fn install(layers: &mut [&mut GroupLayer], members: NodeSet, r: RingId, old: RingId) {
        let old_rings: Vec<(NodeId, RingId)> = members.iter().map(|d| (d, old)).collect();
        for l in layers.iter_mut() {
            l.deliver(Event::Regular {
                ring: r,
                members,
                old_rings: old_rings.clone(),
            });
        }
        let states: Vec<(NodeId, Bytes)> = layers
            .iter_mut()
            .map(|l| (l.me, l.next_message().expect("STATE first").data))
            .collect();
        for (origin, s) in states {
            for l in layers.iter_mut() {
                l.deliver(Event::Message {
                    sender: origin,
                    data: s.clone(),
                });
            }
        }
    }

    /// Sends every pending operation of `from` through a perfect ring to all `layers`.
    fn pump(layers: &mut [&mut GroupLayer]) {
        loop {
            let mut any = false;
            for i in 0..layers.len() {
                while let Some(m) = layers[i].next_message() {
                    any = true;
                    let origin = layers[i].me;
                    for l in layers.iter_mut() {
                        l.deliver(Event::Message {
                            sender: origin,
                            data: m.data.clone(),
                        });
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    fn frames_for(d: &[Delivery], to: &str) -> Vec<FrameView> {
        d.iter()
            .filter(|x| x.to == to)
            .map(|x| FrameView::parse(&x.frame).unwrap())
            .collect()
    }

    #[test]
    fn ops_round_trip() {
        let ops = [
            Op::Join {
                client: "#a#d0".into(),
                group: "g".into(),
            },
            Op::Leave {
                client: "#a#d0".into(),
                group: "g".into(),
            },
            Op::Kill {
                client: "#a#d0".into(),
            },
            Op::Data {
                frame: wire::encode_message(
                    service::AGREED_MESS,
                    "#a#d0",
                    &["g"],
                    hint_for(3),
                    b"x",
                ),
            },
            Op::State {
                ring: ring(9, 1),
                clients: vec![(
                    "#a#d0".into(),
                    vec![
                        ("g".into(), GroupId([1, 2, 3])),
                        ("h".into(), GroupId([-1, 0, 7])),
                    ],
                )],
            },
        ];
        for op in ops {
            let enc = op.encode();
            assert_eq!(Op::decode(&enc).unwrap(), op);
            for cut in 0..enc.len() {
                assert!(
                    Op::decode(&enc.slice(..cut)).is_err(),
                    "{op:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn join_message_leave_disconnect_on_one_daemon() {
        let mut a = layer(0);
        let all = NodeSet::single(0);
        install(&mut [&mut a], all, ring(1, 0), ring(0, 0));
        a.submit(&Op::Join {
            client: "#alice#d0".into(),
            group: "g".into(),
        });
        a.submit(&Op::Join {
            client: "#bob#d0".into(),
            group: "g".into(),
        });
        pump(&mut [&mut a]);
        let d = a.take_deliveries();
        let alice = frames_for(&d, "#alice#d0");
        assert_eq!(alice.len(), 2);
        assert_eq!(
            alice[1].header.service_type,
            service::REG_MEMB_MESS | service::CAUSED_BY_JOIN
        );
        assert_eq!(alice[1].groups, ["#alice#d0", "#bob#d0"]);
        let body = MembershipBody::decode(&d[2].frame[alice[1].body_at..], true).unwrap();
        assert_eq!(body.vs_sets, [vec!["#bob#d0".to_string()]]);

        // A message with SELF_DISCARD reaches bob only; without it, both.
        let m = wire::encode_message(
            service::FIFO_MESS | service::SELF_DISCARD,
            "#alice#d0",
            &["g"],
            hint_for(5),
            b"hi",
        );
        a.submit(&Op::Data { frame: m });
        let m2 = wire::encode_message(
            service::SAFE_MESS,
            "#alice#d0",
            &["g", "#bob#d0"],
            hint_for(5),
            b"x",
        );
        a.submit(&Op::Data { frame: m2 });
        pump(&mut [&mut a]);
        let d = a.take_deliveries();
        assert_eq!(frames_for(&d, "#alice#d0").len(), 1);
        let bob = frames_for(&d, "#bob#d0");
        assert_eq!(bob.len(), 2, "one copy per client even when named twice");
        assert_eq!(bob[0].header.service_type, service::FIFO_MESS);

        a.submit(&Op::Leave {
            client: "#bob#d0".into(),
            group: "g".into(),
        });
        a.submit(&Op::Kill {
            client: "#alice#d0".into(),
        });
        pump(&mut [&mut a]);
        let d = a.take_deliveries();
        let bob = frames_for(&d, "#bob#d0");
        assert_eq!(bob.len(), 1);
        assert_eq!(bob[0].header.service_type, service::CAUSED_BY_LEAVE);
        let alice = frames_for(&d, "#alice#d0");
        assert_eq!(
            alice[0].header.service_type,
            service::REG_MEMB_MESS | service::CAUSED_BY_LEAVE
        );
        assert!(a.groups().is_empty(), "the group went with its last member");
    }

    #[test]
    fn partition_and_merge_give_network_memberships_with_vs_sets() {
        let (mut a, mut b, mut c) = (layer(0), layer(1), layer(2));
        let all = NodeSet::first(3);
        install(&mut [&mut a, &mut b, &mut c], all, ring(1, 0), ring(0, 0));
        for (l, name) in [(&mut a, "#x#d0"), (&mut b, "#y#d1"), (&mut c, "#z#d2")] {
            l.submit(&Op::Join {
                client: name.into(),
                group: "g".into(),
            });
        }
        pump(&mut [&mut a, &mut b, &mut c]);
        for l in [&mut a, &mut b, &mut c] {
            l.take_deliveries();
        }
        // {0,1} | {2}
        let left: NodeSet = [0, 1].into_iter().collect();
        for l in [&mut a, &mut b] {
            l.deliver(Event::Transitional {
                ring: ring(1, 0),
                members: left,
                old_members: all,
            });
        }
        c.deliver(Event::Transitional {
            ring: ring(1, 0),
            members: NodeSet::single(2),
            old_members: all,
        });
        install(&mut [&mut a, &mut b], left, ring(2, 0), ring(1, 0));
        install(&mut [&mut c], NodeSet::single(2), ring(2, 2), ring(1, 0));
        let da = a.take_deliveries();
        let x = frames_for(&da, "#x#d0");
        assert_eq!(x.len(), 2);
        assert_eq!(x[0].header.service_type, service::TRANSITION_MESS);
        assert_eq!(
            x[1].header.service_type,
            service::REG_MEMB_MESS | service::CAUSED_BY_NETWORK
        );
        assert_eq!(x[1].groups, ["#x#d0", "#y#d1"]);
        let dc = c.take_deliveries();
        assert_eq!(frames_for(&dc, "#z#d2")[1].groups, ["#z#d2"]);
        // Merge: the vs-sets say who came from where.
        for l in [&mut a, &mut b] {
            l.deliver(Event::Transitional {
                ring: ring(2, 0),
                members: left,
                old_members: left,
            });
        }
        c.deliver(Event::Transitional {
            ring: ring(2, 2),
            members: NodeSet::single(2),
            old_members: NodeSet::single(2),
        });
        let old_rings = vec![(0, ring(2, 0)), (1, ring(2, 0)), (2, ring(2, 2))];
        for l in [&mut a, &mut b, &mut c] {
            l.deliver(Event::Regular {
                ring: ring(3, 0),
                members: all,
                old_rings: old_rings.clone(),
            });
        }
        let states: Vec<(NodeId, Bytes)> = [&mut a, &mut b, &mut c]
            .into_iter()
            .map(|l| (l.me, l.next_message().unwrap().data))
            .collect();
        for (o, s) in states {
            for l in [&mut a, &mut b, &mut c] {
                l.deliver(Event::Message {
                    sender: o,
                    data: s.clone(),
                });
            }
        }
        let da = a.take_deliveries();
        let x = frames_for(&da, "#x#d0");
        assert_eq!(x.len(), 2, "{x:?}");
        assert_eq!(x[0].header.service_type, service::TRANSITION_MESS);
        assert_eq!(x[1].groups, ["#x#d0", "#y#d1", "#z#d2"]);
        let at = da.iter().filter(|d| d.to == "#x#d0").nth(1).unwrap();
        let body = MembershipBody::decode(&at.frame[x[1].body_at..], true).unwrap();
        assert_eq!(
            body.vs_sets,
            [
                vec!["#x#d0".to_string(), "#y#d1".to_string()],
                vec!["#z#d2".to_string()]
            ]
        );
        assert_eq!(body.my_vs_set, 0);
        let dc = c.take_deliveries();
        let z = frames_for(&dc, "#z#d2");
        let at = dc.iter().filter(|d| d.to == "#z#d2").nth(1).unwrap();
        let body_c = MembershipBody::decode(&at.frame[z[1].body_at..], true).unwrap();
        assert_eq!(body_c.my_vs_set, 1);
        assert_eq!(
            body_c.group_id, body.group_id,
            "one group id at every member"
        );
    }

    #[test]
    fn operations_wait_for_the_state_exchange() {
        let mut a = layer(0);
        install(&mut [&mut a], NodeSet::single(0), ring(1, 0), ring(0, 0));
        a.deliver(Event::Transitional {
            ring: ring(1, 0),
            members: NodeSet::single(0),
            old_members: NodeSet::single(0),
        });
        a.deliver(Event::Regular {
            ring: ring(2, 0),
            members: NodeSet::single(0),
            old_rings: vec![(0, ring(1, 0))],
        });
        a.submit(&Op::Join {
            client: "#a#d0".into(),
            group: "g".into(),
        });
        let first = a.next_message().unwrap();
        assert!(matches!(Op::decode(&first.data).unwrap(), Op::State { .. }));
        assert!(
            a.next_message().is_none(),
            "the join waits for the exchange"
        );
        a.deliver(Event::Message {
            sender: 0,
            data: first.data,
        });
        assert!(a.next_message().is_some());
    }
}
