//! A deterministic, seeded simulator of the ring protocol, and the checker of Extended
//! Virtual Synchrony run over what every daemon delivered.
//!
//! The simulator runs N [`Ring`] state machines over a simulated network with random
//! loss, delay (hence reordering), partitions, crashes with restarts, and pauses, all
//! drawn from one seed: a failing seed replays exactly. The workload submits messages
//! (AGREED and SAFE, some larger than a datagram so they are fragmented) from random
//! daemons. At the end the network heals and goes quiet, and [`check`] verifies:
//!
//! - no daemon delivers a message twice;
//! - every message is delivered in the same view (a regular configuration and the
//!   transitional configuration that ends it) at every daemon that delivers it;
//! - any two daemons deliver the messages they both deliver in the same order;
//! - messages of one sender are delivered in the order it sent them;
//! - daemons that move together from one regular configuration to the next deliver
//!   the same set of messages in between (virtual synchrony);
//! - a SAFE message delivered in a regular configuration is delivered by every member of
//!   that configuration that is still alive at the end;
//! - every daemon delivers its own messages (unless it crashed);
//! - once the network heals, all live daemons end in one configuration.

use std::cmp::{Ordering, Reverse};
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use bytes::{BufMut, Bytes, BytesMut};

use crate::client::{MembershipKind, Received};
use crate::group::{GroupLayer, Op};
use crate::ring::packet;
use crate::ring::{Event, NodeId, NodeSet, Outgoing, Ring, RingConfig, RingId, Send, Upper};
use crate::wire::{self, service};

const CONFIG_HASH: u32 = 0x5157;

/// The simulator and checker hash small integer keys millions of times per CI run;
/// SipHash dominated their profile. This multiply-rotate hash (FxHash's) is enough for
/// keys that are not attacker-chosen, and being unseeded it keeps iteration order the
/// same from run to run.
#[derive(Default)]
struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A small, fast, seedable generator (SplitMix64).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// One simulated run's knobs.
#[derive(Debug, Clone)]
pub struct SimParams {
    pub nodes: usize,
    /// Simulated time with faults, then the same again healed and quiet, in ms.
    pub fault_ms: u64,
    pub quiet_ms: u64,
    pub messages: usize,
    /// Run the group layer above the ring, with two clients per daemon in group `g`.
    pub group_mode: bool,
}

impl Default for SimParams {
    fn default() -> Self {
        SimParams {
            nodes: 3,
            fault_ms: 8_000,
            quiet_ms: 8_000,
            messages: 600,
            group_mode: false,
        }
    }
}

/// A message's identity, carried in its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MsgId {
    pub node: NodeId,
    pub incarnation: u32,
    pub n: u32,
}

/// What a daemon delivered, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    Message { id: MsgId, safe: bool },
    Transitional { ring: RingId, members: NodeSet },
    Regular { ring: RingId, members: NodeSet },
}

/// What a client received (group mode): the checker's record.
pub use crate::check::Rec as ClientRec;

/// The layer above a simulated ring: raw messages, or (group mode) the real group layer
/// with two clients per daemon.
struct SimUpper {
    queue: VecDeque<Outgoing>,
    /// Raw mode: messages taken by the ring and not yet delivered back here.
    inflight: VecDeque<(MsgId, Outgoing)>,
    log: Vec<Delivered>,
    group: Option<GroupLayer>,
    /// Group mode: what each local client received.
    clients: BTreeMap<String, Vec<ClientRec>>,
    /// Group mode: the numbers of the messages each local client sent, in order.
    client_sent: BTreeMap<String, Vec<u64>>,
}

impl SimUpper {
    fn record_group_deliveries(&mut self) {
        let Some(g) = self.group.as_mut() else {
            return;
        };
        for d in g.take_deliveries() {
            let rec = match crate::client::decode_received(&d.frame, &d.to) {
                Ok(Received::Message(m)) => ClientRec::Msg {
                    n: u64::from(u32::from_le_bytes(m.data[..4].try_into().expect("4"))),
                    safe: m.service() == Some(crate::client::Service::Safe),
                    sender: m.sender,
                },
                Ok(Received::Membership(m)) => match m.kind {
                    MembershipKind::Regular { cause, .. } => ClientRec::View {
                        id: m.group_id.expect("regular views have ids"),
                        members: m.members,
                        network: cause == crate::client::Cause::Network,
                        vs_sets: m.vs_sets,
                    },
                    MembershipKind::Transitional => ClientRec::Transitional,
                    MembershipKind::SelfLeave => continue,
                },
                Err(e) => panic!("the group layer produced an undecodable message: {e}"),
            };
            self.clients.entry(d.to).or_default().push(rec);
        }
    }
}

impl Upper for SimUpper {
    fn has_pending(&self) -> bool {
        match &self.group {
            Some(g) => g.has_pending(),
            None => !self.queue.is_empty(),
        }
    }
    fn next_message(&mut self) -> Option<Outgoing> {
        match &mut self.group {
            Some(g) => g.next_message(),
            None => {
                let m = self.queue.pop_front()?;
                self.inflight.push_back((msg_id(&m.data), m.clone()));
                Some(m)
            }
        }
    }
    fn deliver(&mut self, event: Event) {
        if let Some(g) = self.group.as_mut() {
            g.deliver(event);
            self.record_group_deliveries();
            return;
        }
        self.log.push(match event {
            Event::Message { data, .. } => {
                let id = msg_id(&data);
                self.inflight.retain(|(i, _)| *i != id);
                Delivered::Message {
                    id,
                    safe: data[9] == 1,
                }
            }
            Event::Transitional { ring, members, .. } => Delivered::Transitional { ring, members },
            Event::Regular { ring, members, .. } => {
                // What the ring dropped in the change goes again, first, in order.
                for (_, m) in self.inflight.drain(..).rev() {
                    self.queue.push_front(m);
                }
                Delivered::Regular { ring, members }
            }
        });
    }
}

fn msg_id(data: &[u8]) -> MsgId {
    MsgId {
        node: data[0],
        incarnation: u32::from_le_bytes(data[1..5].try_into().expect("4")),
        n: u32::from_le_bytes(data[5..9].try_into().expect("4")),
    }
}

/// One incarnation of a daemon (a restart is a new incarnation).
pub struct Incarnation {
    pub node: NodeId,
    pub incarnation: u32,
    pub log: Vec<Delivered>,
    pub sent: Vec<MsgId>,
    pub crashed: bool,
    /// Group mode: what each client of this incarnation received.
    pub clients: BTreeMap<String, Vec<ClientRec>>,
    /// Group mode: the numbers of the messages each client of this incarnation sent.
    pub client_sent: BTreeMap<String, Vec<u64>>,
}

struct Node {
    ring: Ring,
    upper: SimUpper,
    incarnation: u32,
    sent: Vec<MsgId>,
    paused_until: u64,
}

/// An event due at `at`; `seq` breaks ties in scheduling order, so runs are
/// deterministic. Ordered by `(at, seq)` only.
struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Debug)]
enum Ev {
    Packet {
        from: NodeId,
        to: NodeId,
        data: Bytes,
        /// Already held back once by token pacing (not held again).
        paced: bool,
    },
    Submit,
    Fault,
    FinalHeal,
}

/// The outcome of a run: every incarnation's deliveries, for the checker.
pub struct Outcome {
    pub incarnations: Vec<Incarnation>,
    pub final_members: Vec<(NodeId, RingId, NodeSet)>,
    pub trace: Vec<String>,
    /// Tokens held back by (simulated) token pacing.
    pub tokens_paced: u64,
}

struct Sim {
    rng: Rng,
    now: u64,
    seq: u64,
    events: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Option<Node>>,
    dead: Vec<Incarnation>,
    /// Which side of a partition each node is on.
    side: Vec<u8>,
    loss: f64,
    max_delay: u64,
    msg_counter: u32,
    trace: Vec<String>,
    group_mode: bool,
    tokens_paced: u64,
}

fn ring_config(n: usize, me: NodeId, boot: u64) -> RingConfig {
    let mut c = RingConfig::new(n, me, CONFIG_HASH, boot);
    // Smaller datagrams than the daemon's, so fragmentation is common.
    c.max_datagram = 2048;
    c.personal_window = 4;
    c.window = 12;
    c
}

impl Sim {
    fn schedule(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.events.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            ev,
        }));
    }

    fn connected(&self, a: NodeId, b: NodeId) -> bool {
        self.side[a as usize] == self.side[b as usize]
    }

    fn route(&mut self, from: NodeId, sends: Vec<Send>) {
        for s in sends {
            for to in s.to.iter() {
                if to == from || !self.connected(from, to) || self.rng.chance(self.loss) {
                    continue;
                }
                let delay = 1 + self.rng.below(self.max_delay);
                let at = self.now + delay;
                self.schedule(
                    at,
                    Ev::Packet {
                        from,
                        to,
                        data: s.packet.clone(),
                        paced: false,
                    },
                );
            }
        }
    }

    fn with_node(&mut self, i: usize, f: impl FnOnce(&mut Node, u64, &mut Vec<Send>)) {
        let now = self.now;
        let mut sends = Vec::new();
        if let Some(n) = self.nodes[i].as_mut() {
            f(n, now, &mut sends);
        }
        self.route(i as NodeId, sends);
    }

    fn boot(&mut self, i: usize, incarnation: u32) {
        let n = self.nodes.len();
        let cfg = ring_config(
            n,
            i as NodeId,
            1_000_000 + self.now * 10 + u64::from(incarnation),
        );
        let group = self.group_mode.then(|| {
            let names = (0..n).map(|d| format!("d{d}")).collect();
            let boot = 1_000_000 + self.now * 10 + u64::from(incarnation);
            let mut g = GroupLayer::new(i as NodeId, names, boot);
            for c in 0..2 {
                g.submit(&Op::Join {
                    client: format!("#c{c}#d{i}"),
                    group: "g".into(),
                });
            }
            g
        });
        self.nodes[i] = Some(Node {
            ring: Ring::new(cfg),
            upper: SimUpper {
                queue: VecDeque::new(),
                inflight: VecDeque::new(),
                log: Vec::new(),
                group,
                clients: BTreeMap::new(),
                client_sent: BTreeMap::new(),
            },
            incarnation,
            sent: Vec::new(),
            paused_until: 0,
        });
        self.with_node(i, |n, now, out| n.ring.start(now, &mut n.upper, out));
    }

    fn crash(&mut self, i: usize) {
        if let Some(n) = self.nodes[i].take() {
            self.trace.push(format!("{} crash {i}", self.now));
            self.dead.push(Incarnation {
                node: i as NodeId,
                incarnation: n.incarnation,
                log: n.upper.log,
                sent: n.sent,
                crashed: true,
                clients: n.upper.clients,
                client_sent: n.upper.client_sent,
            });
        }
    }

    fn submit(&mut self) {
        let live: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].is_some())
            .collect();
        if live.is_empty() {
            return;
        }
        let i = live[self.rng.below(live.len() as u64) as usize];
        let safe = self.rng.chance(0.4);
        let len = if self.rng.chance(0.15) {
            3000 + self.rng.below(6000) as usize
        } else {
            10 + self.rng.below(300) as usize
        };
        self.msg_counter += 1;
        let n_id = self.msg_counter;
        let fill = self.rng.next_u64() as u8;
        let client = self.rng.below(2);
        let group_mode = self.group_mode;
        self.with_node(i, |n, now, out| {
            if group_mode {
                let mut body = n_id.to_le_bytes().to_vec();
                body.resize(len.max(4), fill);
                let svc = if safe {
                    service::SAFE_MESS
                } else {
                    service::AGREED_MESS
                };
                let sender = format!("#c{client}#d{i}");
                let frame = wire::encode_message(svc, &sender, &["g"], wire::hint_for(0), &body);
                let g = n.upper.group.as_mut().expect("group mode");
                g.submit(&Op::Data { frame });
                n.upper
                    .client_sent
                    .entry(sender)
                    .or_default()
                    .push(u64::from(n_id));
                if now >= n.paused_until {
                    n.ring.notify_pending(now, &mut n.upper, out);
                }
                return;
            }
            let id = MsgId {
                node: i as NodeId,
                incarnation: n.incarnation,
                n: n_id,
            };
            let mut b = BytesMut::with_capacity(len);
            b.put_u8(id.node);
            b.put_u32_le(id.incarnation);
            b.put_u32_le(id.n);
            b.put_u8(u8::from(safe));
            b.resize(len.max(10), fill);
            n.sent.push(id);
            n.upper.queue.push_back(Outgoing {
                data: b.freeze(),
                safe,
            });
            if now >= n.paused_until {
                n.ring.notify_pending(now, &mut n.upper, out);
            }
        });
    }

    fn fault(&mut self, p: &SimParams) {
        let n = self.nodes.len();
        match self.rng.below(6) {
            0 => {
                // A partition into two random sides.
                for s in &mut self.side {
                    *s = 0;
                }
                let cut = 1 + self.rng.below(n as u64 - 1) as usize;
                let mut order: Vec<usize> = (0..n).collect();
                for k in (1..n).rev() {
                    order.swap(k, self.rng.below(k as u64 + 1) as usize);
                }
                for &i in &order[..cut] {
                    self.side[i] = 1;
                }
                self.trace
                    .push(format!("{} partition {:?}", self.now, self.side));
            }
            1 => {
                self.side.iter_mut().for_each(|s| *s = 0);
                self.trace.push(format!("{} heal", self.now));
            }
            2 => {
                let live = self.nodes.iter().filter(|x| x.is_some()).count();
                if live > 1 {
                    let i = self.rng.below(n as u64) as usize;
                    self.crash(i);
                }
            }
            3 => {
                for i in 0..n {
                    if self.nodes[i].is_none() {
                        let inc = self.dead.iter().filter(|d| d.node as usize == i).count() as u32;
                        self.trace.push(format!("{} restart {i}", self.now));
                        self.boot(i, inc);
                        break;
                    }
                }
            }
            4 => {
                let i = self.rng.below(n as u64) as usize;
                let d = 500 + self.rng.below(2500);
                if let Some(node) = self.nodes[i].as_mut() {
                    node.paused_until = self.now + d;
                    self.trace.push(format!("{} pause {i} for {d}", self.now));
                }
            }
            _ => {
                self.loss = [0.0, 0.02, 0.1, 0.3][self.rng.below(4) as usize];
                self.trace.push(format!("{} loss {}", self.now, self.loss));
            }
        }
        let next = self.now + 300 + self.rng.below(1500);
        if next < p.fault_ms {
            self.schedule(next, Ev::Fault);
        }
    }

    /// The next node timer, as (time, node).
    fn next_timer(&self) -> Option<(u64, usize)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| {
                let n = n.as_ref()?;
                Some((n.ring.next_deadline().max(n.paused_until), i))
            })
            .min()
    }

    fn final_heal(&mut self) {
        self.side.iter_mut().for_each(|s| *s = 0);
        self.loss = 0.0;
        for i in 0..self.nodes.len() {
            if let Some(n) = self.nodes[i].as_mut() {
                n.paused_until = n.paused_until.min(self.now);
            } else {
                let inc = self.dead.iter().filter(|d| d.node as usize == i).count() as u32;
                self.boot(i, inc);
            }
        }
        self.trace.push(format!("{} final heal", self.now));
    }

    fn run(&mut self, p: &SimParams) {
        let end = p.fault_ms + p.quiet_ms;
        loop {
            let ev_at = self.events.peek().map(|Reverse(s)| s.at);
            let timer = self.next_timer();
            let t = match (ev_at, timer) {
                (Some(e), Some((tt, _))) => e.min(tt),
                (Some(e), None) => e,
                (None, Some((tt, _))) => tt,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            if ev_at == Some(t) {
                let Reverse(Scheduled { ev, .. }) = self.events.pop().expect("peeked");
                match ev {
                    Ev::Packet {
                        from,
                        to,
                        data,
                        paced,
                    } => self.packet(from, to, data, paced),
                    Ev::Submit => self.submit(),
                    Ev::Fault => self.fault(p),
                    Ev::FinalHeal => self.final_heal(),
                }
            } else if let Some((_, i)) = timer {
                let paused_until = self.nodes[i].as_ref().map_or(0, |n| n.paused_until);
                if paused_until > 0 && paused_until <= self.now {
                    // Resumed: what was asked meanwhile goes out now.
                    self.with_node(i, |n, now, out| {
                        n.paused_until = 0;
                        n.ring.notify_pending(now, &mut n.upper, out);
                    });
                }
                self.with_node(i, |n, now, out| n.ring.tick(now, &mut n.upper, out));
            }
        }
    }

    fn packet(&mut self, from: NodeId, to: NodeId, data: Bytes, paced: bool) {
        let paused_until = self.nodes[to as usize]
            .as_ref()
            .map_or(0, |n| n.paused_until);
        if paused_until > self.now {
            // A paused process finds the datagram in its socket buffer when it resumes.
            self.schedule(
                paused_until,
                Ev::Packet {
                    from,
                    to,
                    data,
                    paced,
                },
            );
            return;
        }
        if !self.connected(from, to) {
            return;
        }
        let pk = packet::decode(data.clone(), CONFIG_HASH)
            .expect("the simulator carries well-formed packets");
        // Token pacing (crate::pace): the daemon may hold back a token its ring accepts
        // for pacing. Here every such token is held with probability 1/2, for 1–2 ms
        // (longer than the daemon's sub-millisecond hold), whatever the load.
        if !paced
            && let packet::Body::Token(t) = &pk.body
            && self.nodes[to as usize]
                .as_ref()
                .is_some_and(|n| n.ring.may_pace(t))
            && self.rng.chance(0.5)
        {
            let at = self.now + 1 + self.rng.below(2);
            self.tokens_paced += 1;
            self.schedule(
                at,
                Ev::Packet {
                    from,
                    to,
                    data,
                    paced: true,
                },
            );
            return;
        }
        self.with_node(to as usize, |n, now, out| {
            n.ring.handle(now, pk, &mut n.upper, out)
        });
    }
}

/// Runs one seeded simulation.
pub fn simulate(seed: u64, p: &SimParams) -> Outcome {
    let mut sim = Sim {
        rng: Rng::new(seed),
        now: 0,
        seq: 0,
        events: BinaryHeap::new(),
        nodes: (0..p.nodes).map(|_| None).collect(),
        dead: Vec::new(),
        side: vec![0; p.nodes],
        loss: 0.0,
        max_delay: 3,
        msg_counter: 0,
        trace: Vec::new(),
        group_mode: p.group_mode,
        tokens_paced: 0,
    };
    for i in 0..p.nodes {
        sim.boot(i, 0);
    }
    for _ in 0..p.messages {
        let at = sim.rng.below(p.fault_ms + p.quiet_ms / 2);
        sim.schedule(at, Ev::Submit);
    }
    if p.fault_ms > 0 {
        let first_fault = 200 + sim.rng.below(1000);
        sim.schedule(first_fault.min(p.fault_ms), Ev::Fault);
    }
    sim.schedule(p.fault_ms, Ev::FinalHeal);
    sim.run(p);
    let mut incarnations = std::mem::take(&mut sim.dead);
    let mut final_members = Vec::new();
    for (i, n) in sim.nodes.into_iter().enumerate() {
        if let Some(n) = n {
            let (ring, members) = n.ring.ring();
            final_members.push((i as NodeId, ring, members));
            incarnations.push(Incarnation {
                node: i as NodeId,
                incarnation: n.incarnation,
                log: n.upper.log,
                sent: n.sent,
                crashed: false,
                clients: n.upper.clients,
                client_sent: n.upper.client_sent,
            });
        }
    }
    Outcome {
        incarnations,
        final_members,
        trace: sim.trace,
        tokens_paced: sim.tokens_paced,
    }
}

/// The view a message was delivered in: the regular configuration, whose tail is its
/// transitional configuration (a message that one daemon delivers in the regular
/// configuration may be delivered by another, that lacked a predecessor from a daemon
/// that left, in the transitional configuration that follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Conf {
    None,
    Regular(RingId),
}

/// Checks the properties listed at the top of this module. Returns the first violation.
pub fn check(o: &Outcome) -> Result<(), String> {
    let name = |x: &Incarnation| format!("daemon {} (incarnation {})", x.node, x.incarnation);
    // Where each incarnation delivered each message.
    let mut placed: Vec<HashMap<MsgId, (usize, Conf)>> = Vec::new();
    let mut first_conf: HashMap<MsgId, (Conf, String)> = HashMap::default();
    let mut safe_in_regular: Vec<(MsgId, RingId, NodeSet, String)> = Vec::new();
    for x in &o.incarnations {
        let mut conf = Conf::None;
        let mut members = NodeSet::EMPTY;
        let mut in_transitional = false;
        let mut here = HashMap::default();
        let mut last_from: HashMap<(NodeId, u32), u32> = HashMap::default();
        for (pos, d) in x.log.iter().enumerate() {
            match d {
                Delivered::Regular { ring, members: m } => {
                    conf = Conf::Regular(*ring);
                    members = *m;
                    in_transitional = false;
                }
                Delivered::Transitional { ring, .. } => {
                    // The first transitional ends the daemon's boot ring, never announced.
                    if conf != Conf::None && conf != Conf::Regular(*ring) {
                        return Err(format!(
                            "{} delivered a transitional configuration of ring {ring} outside it ({conf:?})",
                            name(x)
                        ));
                    }
                    in_transitional = true;
                }
                Delivered::Message { id, safe } => {
                    if here.insert(*id, (pos, conf)).is_some() {
                        return Err(format!("{} delivered {id:?} twice", name(x)));
                    }
                    if conf == Conf::None {
                        return Err(format!(
                            "{} delivered {id:?} before any configuration",
                            name(x)
                        ));
                    }
                    match first_conf.get(id) {
                        Some((c, who)) if *c != conf => {
                            return Err(format!(
                                "{id:?} delivered in {c:?} at {who} but in {conf:?} at {}",
                                name(x)
                            ));
                        }
                        Some(_) => {}
                        None => {
                            first_conf.insert(*id, (conf, name(x)));
                        }
                    }
                    let key = (id.node, id.incarnation);
                    if let Some(prev) = last_from.get(&key)
                        && *prev > id.n
                    {
                        return Err(format!(
                            "{} delivered message {} of daemon {} after its later message {prev} (FIFO)",
                            name(x),
                            id.n,
                            id.node
                        ));
                    }
                    last_from.insert(key, id.n);
                    if *safe
                        && !in_transitional
                        && let Conf::Regular(r) = conf
                    {
                        safe_in_regular.push((*id, r, members, name(x)));
                    }
                }
            }
        }
        placed.push(here);
    }
    // Total order: any two incarnations order their common messages alike.
    for (a, placed_a) in placed.iter().enumerate() {
        for b in a + 1..o.incarnations.len() {
            let mut last: Option<(usize, MsgId)> = None;
            for d in &o.incarnations[b].log {
                let Delivered::Message { id, .. } = d else {
                    continue;
                };
                if let Some((pa, _)) = placed_a.get(id) {
                    if let Some((lp, lid)) = last
                        && lp > *pa
                    {
                        return Err(format!(
                            "{} and {} deliver {lid:?} and {id:?} in different orders",
                            name(&o.incarnations[a]),
                            name(&o.incarnations[b])
                        ));
                    }
                    last = Some((*pa, *id));
                }
            }
        }
    }
    // Virtual synchrony: the same messages between the same two regular configurations.
    let mut between: HashMap<(RingId, RingId), (BTreeSet<MsgId>, String)> = HashMap::default();
    for x in &o.incarnations {
        let mut from: Option<RingId> = None;
        let mut set = BTreeSet::new();
        for d in &x.log {
            match d {
                Delivered::Regular { ring, .. } => {
                    if let Some(f) = from {
                        let key = (f, *ring);
                        match between.get(&key) {
                            Some((s, who)) if *s != set => {
                                let only_here: Vec<_> = set.difference(s).take(3).collect();
                                let only_there: Vec<_> = s.difference(&set).take(3).collect();
                                return Err(format!(
                                    "{} and {who} move together from ring {} to {} but delivered different messages (only at the first: {only_here:?}; only at the second: {only_there:?})",
                                    name(x),
                                    f,
                                    ring
                                ));
                            }
                            Some(_) => {}
                            None => {
                                between.insert(key, (set.clone(), name(x)));
                            }
                        }
                    }
                    from = Some(*ring);
                    set.clear();
                }
                Delivered::Message { id, .. } => {
                    set.insert(*id);
                }
                Delivered::Transitional { .. } => {}
            }
        }
    }
    // SAFE: delivered in a regular configuration ⇒ delivered by every member of it that
    // installed it and lives at the end.
    for (id, ring, members, who) in &safe_in_regular {
        for (k, x) in o.incarnations.iter().enumerate() {
            if x.crashed || !members.contains(x.node) {
                continue;
            }
            let installed = x
                .log
                .iter()
                .any(|d| matches!(d, Delivered::Regular { ring: r, .. } if r == ring));
            if installed && !placed[k].contains_key(id) {
                return Err(format!(
                    "SAFE {id:?} was delivered at {who} in ring {ring}, but {} (a member, alive) never delivered it",
                    name(x)
                ));
            }
        }
    }
    // Self-delivery of every message sent by a daemon that did not crash.
    for (k, x) in o.incarnations.iter().enumerate() {
        if x.crashed {
            continue;
        }
        for id in &x.sent {
            if !placed[k].contains_key(id) {
                return Err(format!("{} never delivered its own {id:?}", name(x)));
            }
        }
    }
    // One configuration at the end, holding every live daemon.
    let live: NodeSet = o.final_members.iter().map(|(n, _, _)| *n).collect();
    let rings: BTreeMap<RingId, NodeSet> =
        o.final_members.iter().map(|(_, r, m)| (*r, *m)).collect();
    if rings.len() != 1 || rings.values().next() != Some(&live) {
        return Err(format!(
            "after healing, the live daemons {live:?} are not in one configuration: {rings:?}"
        ));
    }
    Ok(())
}

/// Checks what the clients received (group mode) with [`crate::check`], the checker the
/// lab fault tests use: each client of each incarnation is one member; a client of an
/// incarnation that crashed crashed with it.
pub fn check_clients(o: &Outcome) -> Result<(), String> {
    let logs: Vec<crate::check::MemberLog> = o
        .incarnations
        .iter()
        .flat_map(|x| {
            x.clients
                .iter()
                .map(move |(c, recs)| crate::check::MemberLog {
                    label: format!("{c} (incarnation {})", x.incarnation),
                    private_group: c.clone(),
                    recs: recs.clone(),
                    sent: x.client_sent.get(c).cloned().unwrap_or_default(),
                    crashed: x.crashed,
                })
        })
        .collect();
    crate::check::check(&logs)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Environment variable: run only this seed (to replay a failure; the number as
    /// printed, family offset included).
    const SEED_ENV: &str = "NUAGE_GROUP_SIM_SEED";
    /// Environment variable: how many seeds each family runs (default below), spread
    /// over its shards.
    const SEEDS_ENV: &str = "NUAGE_GROUP_SIM_SEEDS";
    /// Seed families: the first seed number of each, and how many seeds CI runs. A
    /// family is split into [`SHARDS`] test functions so nextest runs them in parallel
    /// (one `…_k` function per shard k below: change both together).
    const RING3: (u64, u64) = (0, 1_600);
    const RING5: (u64, u64) = (1_000_000, 400);
    const GROUP3: (u64, u64) = (2_000_000, 1_000);
    const SHARDS: u64 = 4;
    /// Seeds of one family are below `base + FAMILY_SPAN`.
    const FAMILY_SPAN: u64 = 1_000_000;

    /// The seeds shard `shard` of a family runs: every SHARDS-th one, or the replayed
    /// seed alone (in shard 0) when [`SEED_ENV`] names a seed of this family.
    fn seeds((base, count): (u64, u64), shard: u64) -> Vec<u64> {
        if let Some(s) = std::env::var(SEED_ENV).ok().and_then(|s| s.parse().ok()) {
            let mine = (base..base + FAMILY_SPAN).contains(&s) && shard == 0;
            return if mine { vec![s] } else { Vec::new() };
        }
        let n = std::env::var(SEEDS_ENV)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(count);
        assert!(n < FAMILY_SPAN);
        (base..base + n)
            .skip(shard as usize)
            .step_by(SHARDS as usize)
            .collect()
    }

    fn replay_hint(seed: u64) -> String {
        format!("replay with {SEED_ENV}={seed} cargo nextest run -p nuage-group sim::")
    }

    /// Runs one ring-only seed and checks it; panics naming the seed.
    fn run_ring_seed(seed: u64, nodes: usize) {
        let p = SimParams {
            nodes,
            ..SimParams::default()
        };
        let o = simulate(seed, &p);
        if let Err(e) = check(&o) {
            panic!(
                "seed {seed} failed: {e}\nfaults: {:?}\n{}",
                o.trace,
                replay_hint(seed)
            );
        }
    }

    /// Runs one seed of the group layer over the ring, checked at daemons and clients.
    fn run_group_seed(seed: u64) {
        let p = SimParams {
            group_mode: true,
            messages: 300,
            ..SimParams::default()
        };
        let o = simulate(seed, &p);
        let views: usize = o
            .incarnations
            .iter()
            .flat_map(|x| x.clients.values())
            .map(|l| {
                l.iter()
                    .filter(|r| matches!(r, ClientRec::View { .. }))
                    .count()
            })
            .sum();
        assert!(views > 0, "seed {seed}: no client saw a view");
        if let Err(e) = check(&o).and_then(|()| check_clients(&o)) {
            panic!(
                "seed {seed} failed: {e}\nfaults: {:?}\n{}",
                o.trace,
                replay_hint(seed)
            );
        }
    }

    #[test]
    fn seed_families_are_disjoint_and_shards_cover_them() {
        for family in [RING3, RING5, GROUP3] {
            assert!(family.1 < FAMILY_SPAN);
            let mut all: Vec<u64> = (0..SHARDS).flat_map(|k| seeds(family, k)).collect();
            all.sort_unstable();
            if std::env::var(SEED_ENV).is_err() && std::env::var(SEEDS_ENV).is_err() {
                assert_eq!(all, (family.0..family.0 + family.1).collect::<Vec<_>>());
            }
        }
        assert!(RING3.0 + FAMILY_SPAN <= RING5.0 && RING5.0 + FAMILY_SPAN <= GROUP3.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_run() {
        let p = SimParams::default();
        let a = simulate(7, &p);
        let b = simulate(7, &p);
        assert_eq!(a.trace, b.trace);
        let logs = |o: &Outcome| {
            o.incarnations
                .iter()
                .map(|x| x.log.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(logs(&a), logs(&b));
    }

    #[test]
    fn a_quiet_network_delivers_everything_everywhere() {
        let p = SimParams {
            fault_ms: 0,
            quiet_ms: 6_000,
            ..SimParams::default()
        };
        let o = simulate(1, &p);
        check(&o).unwrap();
        let n = o.incarnations[0]
            .log
            .iter()
            .filter(|d| matches!(d, Delivered::Message { .. }))
            .count();
        assert_eq!(n, p.messages);
        for x in &o.incarnations {
            assert_eq!(x.log.len(), o.incarnations[0].log.len());
        }
        assert!(o.tokens_paced > 0, "the run exercises token pacing");
    }

    #[test]
    fn three_daemons_under_faults_0() {
        for seed in seeds(RING3, 0) {
            run_ring_seed(seed, 3);
        }
    }

    #[test]
    fn three_daemons_under_faults_1() {
        for seed in seeds(RING3, 1) {
            run_ring_seed(seed, 3);
        }
    }

    #[test]
    fn three_daemons_under_faults_2() {
        for seed in seeds(RING3, 2) {
            run_ring_seed(seed, 3);
        }
    }

    #[test]
    fn three_daemons_under_faults_3() {
        for seed in seeds(RING3, 3) {
            run_ring_seed(seed, 3);
        }
    }

    #[test]
    fn five_daemons_under_faults_0() {
        for seed in seeds(RING5, 0) {
            run_ring_seed(seed, 5);
        }
    }

    #[test]
    fn five_daemons_under_faults_1() {
        for seed in seeds(RING5, 1) {
            run_ring_seed(seed, 5);
        }
    }

    #[test]
    fn five_daemons_under_faults_2() {
        for seed in seeds(RING5, 2) {
            run_ring_seed(seed, 5);
        }
    }

    #[test]
    fn five_daemons_under_faults_3() {
        for seed in seeds(RING5, 3) {
            run_ring_seed(seed, 5);
        }
    }

    #[test]
    fn the_checker_catches_violations() {
        let ring = |s| RingId { seq: s, rep: 0 };
        let id = |n| MsgId {
            node: 0,
            incarnation: 0,
            n,
        };
        let reg = Delivered::Regular {
            ring: ring(1),
            members: NodeSet::first(2),
        };
        let m = |n| Delivered::Message {
            id: id(n),
            safe: false,
        };
        let inc = |node, log: Vec<Delivered>| Incarnation {
            node,
            incarnation: 0,
            log,
            sent: Vec::new(),
            crashed: false,
            clients: BTreeMap::new(),
            client_sent: BTreeMap::new(),
        };
        let outcome = |a: Vec<Delivered>, b: Vec<Delivered>| Outcome {
            incarnations: vec![inc(0, a), inc(1, b)],
            final_members: vec![
                (0, ring(1), NodeSet::first(2)),
                (1, ring(1), NodeSet::first(2)),
            ],
            trace: Vec::new(),
            tokens_paced: 0,
        };
        assert!(
            check(&outcome(
                vec![reg.clone(), m(1), m(2)],
                vec![reg.clone(), m(1), m(2)]
            ))
            .is_ok()
        );
        let e = check(&outcome(
            vec![reg.clone(), m(1), m(2)],
            vec![reg.clone(), m(2), m(1)],
        ))
        .unwrap_err();
        assert!(e.contains("FIFO") || e.contains("order"), "{e}");
        let e = check(&outcome(
            vec![reg.clone(), m(1), m(1)],
            vec![reg.clone(), m(1)],
        ))
        .unwrap_err();
        assert!(e.contains("twice"), "{e}");
        let reg2 = Delivered::Regular {
            ring: ring(2),
            members: NodeSet::first(2),
        };
        let e = check(&outcome(
            vec![reg.clone(), m(1), m(2), reg2.clone()],
            vec![reg.clone(), m(1), reg2.clone()],
        ))
        .unwrap_err();
        assert!(e.contains("move together"), "{e}");
    }

    /// Guards the simulator itself: its faults must really reconfigure rings and make
    /// daemons deliver in transitional configurations, or the checker proves little.
    #[test]
    fn faults_exercise_recovery() {
        let (mut regulars, mut in_transitional, mut crashed) = (0, 0, 0);
        for seed in 0..8 {
            let o = simulate(seed, &SimParams::default());
            for x in &o.incarnations {
                crashed += usize::from(x.crashed);
                let mut t = false;
                for d in &x.log {
                    match d {
                        Delivered::Transitional { .. } => t = true,
                        Delivered::Regular { .. } => {
                            t = false;
                            regulars += 1;
                        }
                        Delivered::Message { .. } if t => in_transitional += 1,
                        Delivered::Message { .. } => {}
                    }
                }
            }
        }
        assert!(regulars > 8 * 3 * 2, "{regulars} configurations");
        assert!(
            in_transitional > 0,
            "no message was delivered in a transitional configuration"
        );
        assert!(crashed > 0, "no crash happened");
    }

    /// The group layer over the simulated ring, checked at the clients. (Seed 2000027
    /// found interrupted STATE exchanges applying operations in the old view at some
    /// daemons only; operations now carry ids and are resubmitted instead.)
    #[test]
    fn the_group_layer_under_faults_0() {
        for seed in seeds(GROUP3, 0) {
            run_group_seed(seed);
        }
    }

    #[test]
    fn the_group_layer_under_faults_1() {
        for seed in seeds(GROUP3, 1) {
            run_group_seed(seed);
        }
    }

    #[test]
    fn the_group_layer_under_faults_2() {
        for seed in seeds(GROUP3, 2) {
            run_group_seed(seed);
        }
    }

    #[test]
    fn the_group_layer_under_faults_3() {
        for seed in seeds(GROUP3, 3) {
            run_group_seed(seed);
        }
    }
}
