//! The daemon-to-daemon protocol: a Totem-style single ring (Amir, Moser,
//! Melliar-Smith, Agarwal, Ciarfella, ACM TOCS 1995) giving Extended Virtual Synchrony.
//!
//! This module is a pure, deterministic state machine. Its inputs are packets, timer
//! ticks (the caller passes the time, in milliseconds) and "the upper layer has
//! something to send"; its outputs are packets to send and, through [`Upper`], the
//! ordered deliveries and configuration changes. The real daemon drives it over UDP;
//! the simulator ([`crate::sim`]) drives thousands of seeded runs of it.
//!
//! **Ordering.** The members of a ring pass a token around in order of their index.
//! Only the holder broadcasts: each frame gets the next sequence number from the token.
//! Receivers deliver frames in sequence order, so every member delivers the same
//! messages in the same order. The token carries, per member, the highest sequence
//! number up to which that member has everything (`arus`); their minimum is the *safe
//! line*: frames under it are held by every member, which is what SAFE needs and when
//! frames can be discarded. Missing frames are requested in the token (`rtr`) and
//! rebroadcast by whoever holds them. Flow control: at most `personal_window` frames per
//! visit and `window` per rotation (`fcc`). An idle token is held a moment at each
//! member; a member with something to send wakes the ring with a WAKE packet.
//!
//! **Membership.** A lost token (no token for `token` ms), a packet from a daemon outside
//! the ring, or a JOIN starts the *gather* state: daemons broadcast JOIN packets with the
//! set of daemons they hear (`proc_set`) and the set they gave up on (`fail_set`) until
//! all live daemons send identical sets (consensus); daemons silent for `gather` ms are
//! moved to the fail set. The lowest live daemon then sends a COMMIT token around the new
//! ring twice: the first rotation collects each member's old ring, `aru`, highest frame
//! and safe line; the second tells everyone the result. Then *recovery*: the new ring's
//! token circulates and members rebroadcast, wrapped in new-ring frames, every old-ring
//! frame that a member coming from the same old ring may lack, until all have them all.
//! Each member then delivers, for its old ring: the frames it can still deliver in the
//! old regular configuration, the *transitional configuration* (the members that came
//! from the same old ring), the rest of the old frames (after a missing frame, only
//! those of senders in the transitional configuration), then the new *regular
//! configuration*. Members that move together deliver exactly the same old messages, in
//! the same order, in the same configuration.

pub mod nodeset;
pub mod order;
pub mod packet;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

pub use nodeset::{NodeId, NodeSet};
use order::{Delivered, Frame, Order};
pub use packet::RingId;
use packet::{
    Body, CHUNK_FIRST, CHUNK_HEADER_LEN, CHUNK_LAST, CHUNK_MIDDLE, CHUNK_WHOLE, Commit,
    DATA_OVERHEAD, Data, Join, MemberInfo, Packet, Recovered, TOKEN_RECOVERY_COMPLETE, Token,
};

/// Most retransmission requests one token carries.
pub const MAX_RTR: usize = 200;
/// Smallest fragment worth starting at the end of a partly filled frame.
const MIN_FRAGMENT: usize = 512;
/// Longest an idle token is held at one member, in ms (less for large rings, so that an
/// idle rotation stays well under the token timeout).
pub const MAX_TOKEN_HOLD_MS: u64 = 20;

/// Protocol parameters; times in milliseconds.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Number of configured daemons (indices `0..nodes`).
    pub nodes: usize,
    pub me: NodeId,
    /// Hash of the configuration; packets from other configurations are ignored.
    pub config_hash: u32,
    pub token_timeout: u64,
    pub hurry_timeout: u64,
    pub alive_timeout: u64,
    pub join_timeout: u64,
    pub gather_timeout: u64,
    pub form_timeout: u64,
    pub window: u32,
    pub personal_window: u32,
    /// Largest datagram sent.
    pub max_datagram: usize,
    /// A ring sequence number greater than any this daemon used before (its clock at
    /// start-up), so packets of an earlier incarnation are never taken for current ones.
    pub initial_ring_seq: u64,
}

impl RingConfig {
    /// Parameters with Spread's LAN defaults.
    pub fn new(nodes: usize, me: NodeId, config_hash: u32, initial_ring_seq: u64) -> RingConfig {
        RingConfig {
            nodes,
            me,
            config_hash,
            token_timeout: 1250,
            hurry_timeout: 500,
            alive_timeout: 250,
            join_timeout: 250,
            gather_timeout: 1250,
            form_timeout: 1250,
            window: crate::conf::DEFAULT_WINDOW,
            personal_window: crate::conf::DEFAULT_PERSONAL_WINDOW,
            max_datagram: DEFAULT_MAX_DATAGRAM,
            initial_ring_seq,
        }
    }
}

/// Default largest datagram. Frames pack several client messages (or fragments of a
/// large one). A message that fits a frame whole starts a new frame rather than being
/// split, so with 32000 bytes a frame held only three 8000-byte messages (76% full);
/// with 64000 it holds seven (88%), halving the datagrams and system calls per byte.
/// Under IPv4's 65507-byte limit; a visit's burst (`personal_window` frames, ~1 MB)
/// stays well within the daemons' 4 MiB socket buffers.
pub const DEFAULT_MAX_DATAGRAM: usize = 64_000;

/// A message the upper layer wants broadcast.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub data: Bytes,
    /// Delivered only once every member holds it.
    pub safe: bool,
}

/// What the ring tells the upper layer, in delivery order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A message, in the agreed order.
    Message { sender: NodeId, data: Bytes },
    /// The end of the old configuration's guarantees: `members` are the daemons that
    /// come with this one from the old ring `ring` (whose members were `old_members`).
    Transitional {
        ring: RingId,
        members: NodeSet,
        old_members: NodeSet,
    },
    /// A new regular configuration, with the old ring each member comes from.
    Regular {
        ring: RingId,
        members: NodeSet,
        old_rings: Vec<(NodeId, RingId)>,
    },
}

/// The layer above the ring (the group layer).
///
/// Contract: every message the ring takes with `next_message` is either delivered back
/// to this daemon (in the ring's order) before the next [`Event::Regular`], or dropped
/// because the configuration changed before it was wholly broadcast; the upper layer
/// sends the dropped ones again (they were delivered nowhere).
pub trait Upper {
    /// Whether `next_message` would return something.
    fn has_pending(&self) -> bool;
    /// The next message to broadcast, taken when this daemon holds the token.
    fn next_message(&mut self) -> Option<Outgoing>;
    fn deliver(&mut self, event: Event);
}

/// A packet to send to every daemon of `to`.
#[derive(Debug, Clone)]
pub struct Send {
    pub to: NodeSet,
    pub packet: Bytes,
}

/// Counters, for status and tests.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RingStats {
    pub frames_sent: u64,
    pub frames_received: u64,
    pub retransmissions: u64,
    pub tokens: u64,
    pub token_retransmissions: u64,
    pub gathers: u64,
    pub rings_formed: u64,
    pub messages_delivered: u64,
}

#[derive(Debug)]
struct Gather {
    proc_set: NodeSet,
    fail_set: NodeSet,
    consensus: NodeSet,
    join_at: u64,
    consensus_at: u64,
}

#[derive(Debug)]
struct Forming {
    ring: RingId,
    members: NodeSet,
    /// The gather sets, kept in case forming fails.
    proc_set: NodeSet,
    fail_set: NodeSet,
    deadline: u64,
}

#[derive(Debug)]
struct Recovery {
    forming: Forming,
    infos: Vec<MemberInfo>,
    new: Order,
    /// Old-ring frames this daemon still has to rebroadcast.
    queue: VecDeque<u64>,
    /// The transitional configuration: members that come from this daemon's old ring.
    trans: NodeSet,
    high: u64,
    old_safe: u64,
    token_started: bool,
}

#[derive(Debug)]
enum State {
    Operational,
    Gather(Gather),
    Commit(Forming),
    Recovery(Box<Recovery>),
}

/// A token this daemon sent and sends again until it sees a later one.
#[derive(Debug)]
struct Retransmit {
    ring: RingId,
    stage: u64,
    to: NodeSet,
    packet: Bytes,
    at: u64,
}

/// A message being broadcast in fragments.
#[derive(Debug)]
struct Pending {
    msg: Outgoing,
    offset: usize,
}

/// The ring protocol state machine of one daemon.
pub struct Ring {
    cfg: RingConfig,
    all: NodeSet,
    state: State,
    /// The current ring (Operational), or the old ring being left (other states).
    cur: Order,
    max_ring_seq: u64,
    last_tseq: u64,
    token_deadline: u64,
    retransmit: Option<Retransmit>,
    /// An idle token held until the given time (or until there is something to send).
    held: Option<(Token, u64)>,
    /// Whether the last token seen was idle (then a WAKE is worth sending).
    ring_idle: bool,
    /// Consecutive idle tokens seen here. The token is held only from the second: after
    /// one whole idle rotation every member has seen the final `aru`s, so holding delays
    /// no SAFE delivery anywhere.
    idle_streak: u32,
    woke: bool,
    no_hold_until: u64,
    my_prev_sent: u32,
    presence_at: u64,
    outgoing: Option<Pending>,
    stats: RingStats,
}

/// What the status page shows of the ring.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RingStatus {
    pub state: &'static str,
    pub ring: String,
    pub members: Vec<NodeId>,
    pub aru: u64,
    pub high: u64,
    pub delivered: u64,
    pub safe_line: u64,
    pub stats: RingStats,
}

impl Ring {
    /// A daemon that starts alone (as the only member of its own boot ring) and looks
    /// for the others at once; call [`Ring::start`] next.
    pub fn new(cfg: RingConfig) -> Ring {
        assert!(cfg.nodes >= 1 && cfg.nodes <= nodeset::MAX_NODES);
        assert!((cfg.me as usize) < cfg.nodes);
        assert!(cfg.personal_window >= 1 && cfg.window >= cfg.personal_window);
        assert!(cfg.max_datagram >= DATA_OVERHEAD + 2 * MIN_FRAGMENT);
        let me = cfg.me;
        let boot = RingId {
            seq: cfg.initial_ring_seq,
            rep: me,
        };
        Ring {
            all: NodeSet::first(cfg.nodes),
            state: State::Operational,
            cur: Order::new(boot, NodeSet::single(me)),
            max_ring_seq: cfg.initial_ring_seq,
            last_tseq: 0,
            token_deadline: u64::MAX,
            retransmit: None,
            held: None,
            ring_idle: false,
            idle_streak: 0,
            woke: false,
            no_hold_until: 0,
            my_prev_sent: 0,
            presence_at: 0,
            outgoing: None,
            stats: RingStats::default(),
            cfg,
        }
    }

    /// Starts looking for the other daemons (the boot gather).
    pub fn start(&mut self, now: u64, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        self.enter_gather(now, NodeSet::EMPTY, upper, out);
    }

    pub fn me(&self) -> NodeId {
        self.cfg.me
    }

    /// Whether the ring is operational (not forming a new configuration).
    pub fn is_operational(&self) -> bool {
        matches!(self.state, State::Operational)
    }

    /// The current ring and its members (while forming: the old ring).
    pub fn ring(&self) -> (RingId, NodeSet) {
        (self.cur.ring, self.cur.members)
    }

    pub fn stats(&self) -> &RingStats {
        &self.stats
    }

    pub fn status(&self) -> RingStatus {
        RingStatus {
            state: match self.state {
                State::Operational => "operational",
                State::Gather(_) => "gather",
                State::Commit(_) => "commit",
                State::Recovery(_) => "recovery",
            },
            ring: self.cur.ring.to_string(),
            members: self.cur.members.iter().collect(),
            aru: self.cur.aru,
            high: self.cur.high,
            delivered: self.cur.delivered,
            safe_line: self.cur.safe_line,
            stats: self.stats.clone(),
        }
    }

    /// The earliest time at which [`Ring::tick`] has work.
    pub fn next_deadline(&self) -> u64 {
        let mut d = u64::MAX;
        if let Some(r) = &self.retransmit {
            d = d.min(r.at);
        }
        match &self.state {
            State::Operational => {
                if let Some((_, until)) = &self.held {
                    d = d.min(*until);
                }
                if self.cur.members.len() > 1 {
                    d = d.min(self.token_deadline);
                }
                if self.is_rep() && self.all != self.cur.members {
                    d = d.min(self.presence_at);
                }
            }
            State::Gather(g) => d = d.min(g.join_at).min(g.consensus_at),
            State::Commit(f) => d = d.min(f.deadline),
            State::Recovery(r) => {
                d = d.min(r.forming.deadline);
                if let Some((_, until)) = &self.held {
                    d = d.min(*until);
                }
            }
        }
        d
    }

    fn is_rep(&self) -> bool {
        self.cur.members.min() == Some(self.cfg.me)
    }

    /// The upper layer has something new to send.
    pub fn notify_pending(&mut self, now: u64, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        if !matches!(self.state, State::Operational) {
            return;
        }
        if let Some((tok, _)) = self.held.take() {
            self.visit(now, tok, upper, out);
        } else if self.ring_idle && !self.woke && self.cur.members.len() > 1 {
            self.woke = true;
            let packet = self.encode(Body::Wake(self.cur.ring));
            out.push(Send {
                to: self.cur.members.without(self.cfg.me),
                packet,
            });
        }
    }

    /// Runs every timer that has expired at `now`.
    pub fn tick(&mut self, now: u64, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        if let Some(r) = &mut self.retransmit
            && now >= r.at
        {
            r.at = now + self.cfg.hurry_timeout;
            self.stats.token_retransmissions += 1;
            out.push(Send {
                to: r.to,
                packet: r.packet.clone(),
            });
        }
        match &mut self.state {
            State::Operational => {
                if let Some((_, until)) = &self.held
                    && now >= *until
                {
                    let (tok, _) = self.held.take().expect("held");
                    self.visit(now, tok, upper, out);
                    return;
                }
                if self.cur.members.len() > 1 && now >= self.token_deadline {
                    self.enter_gather(now, NodeSet::EMPTY, upper, out);
                    return;
                }
                if self.is_rep() && self.all != self.cur.members && now >= self.presence_at {
                    self.presence_at = now + self.cfg.alive_timeout;
                    let packet = self.encode(Body::Presence {
                        ring: self.cur.ring,
                        members: self.cur.members,
                    });
                    out.push(Send {
                        to: self.all.minus(self.cur.members),
                        packet,
                    });
                }
            }
            State::Gather(g) => {
                if now >= g.consensus_at {
                    let live = g.proc_set.minus(g.fail_set);
                    if !live.is_subset(g.consensus) {
                        g.fail_set = g.fail_set.union(live.minus(g.consensus));
                    }
                    g.consensus = NodeSet::single(self.cfg.me);
                    g.consensus_at = now + self.cfg.gather_timeout;
                    g.join_at = now;
                }
                if now >= g.join_at {
                    g.join_at = now + self.cfg.join_timeout;
                    self.send_join(out);
                    self.check_consensus(now, upper, out);
                }
            }
            State::Commit(f) => {
                if now >= f.deadline {
                    self.enter_gather(now, NodeSet::EMPTY, upper, out);
                }
            }
            State::Recovery(r) => {
                if let Some((_, until)) = &self.held
                    && now >= *until
                {
                    let (tok, _) = self.held.take().expect("held");
                    self.visit(now, tok, upper, out);
                    return;
                }
                if now >= r.forming.deadline {
                    self.enter_gather(now, NodeSet::EMPTY, upper, out);
                }
            }
        }
    }

    /// Handles one packet (already checked to come from daemon `packet.sender`).
    pub fn handle(&mut self, now: u64, packet: Packet, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        let from = packet.sender;
        if from == self.cfg.me || !self.all.contains(from) {
            return;
        }
        match packet.body {
            Body::Data(d) => self.on_data(now, from, d, upper, out),
            Body::Token(t) => self.on_token(now, from, t, upper, out),
            Body::Join(j) => self.on_join(now, from, j, upper, out),
            Body::Commit(c) => self.on_commit(now, c, upper, out),
            Body::Wake(ring) => {
                if matches!(self.state, State::Operational) && ring == self.cur.ring {
                    self.no_hold_until = now + self.cfg.hurry_timeout;
                    if let Some((tok, _)) = self.held.take() {
                        self.visit(now, tok, upper, out);
                    }
                }
            }
            Body::Presence { ring, .. } => match &self.state {
                State::Operational if !self.cur.members.contains(from) => {
                    self.enter_gather(now, NodeSet::single(from), upper, out);
                }
                State::Operational => self.foreign(now, from, ring, upper, out),
                State::Gather(_) => self.enter_gather(now, NodeSet::single(from), upper, out),
                _ => {}
            },
        }
    }

    fn encode(&self, body: Body) -> Bytes {
        packet::encode(
            self.cfg.config_hash,
            &Packet {
                sender: self.cfg.me,
                body,
            },
        )
    }

    /// A packet of another ring: a daemon outside the ring means a merge; a member in a
    /// newer ring means this daemon was left behind.
    fn foreign(
        &mut self,
        now: u64,
        from: NodeId,
        ring: RingId,
        upper: &mut dyn Upper,
        out: &mut Vec<Send>,
    ) {
        self.max_ring_seq = self.max_ring_seq.max(ring.seq);
        if !self.cur.members.contains(from) || ring.seq > self.cur.ring.seq {
            self.enter_gather(now, NodeSet::single(from), upper, out);
        }
    }

    // ----------------------------------------------------------------------------------
    // Data

    fn on_data(
        &mut self,
        now: u64,
        from: NodeId,
        d: Data,
        upper: &mut dyn Upper,
        out: &mut Vec<Send>,
    ) {
        let frame = Frame {
            sender: d.origin,
            safe: d.safe,
            recovered: d.recovered.clone(),
            chunks: d.chunks,
        };
        match &mut self.state {
            State::Operational => {
                if d.ring == self.cur.ring {
                    if self.cur.insert(d.seq, frame) {
                        self.stats.frames_received += 1;
                        self.deliver_ready(upper);
                    }
                } else {
                    self.foreign(now, from, d.ring, upper, out);
                }
            }
            State::Gather(g) => {
                if d.ring == self.cur.ring {
                    if !self.cur.frozen && self.cur.insert(d.seq, frame) {
                        self.stats.frames_received += 1;
                    }
                } else if !g.proc_set.contains(from) && !g.fail_set.contains(from) {
                    self.enter_gather(now, NodeSet::single(from), upper, out);
                }
            }
            State::Commit(_) => {}
            State::Recovery(r) => {
                if d.ring != r.forming.ring {
                    return;
                }
                if r.new.insert(d.seq, frame.clone()) {
                    self.stats.frames_received += 1;
                    if let Some(rec) = &frame.recovered
                        && rec.ring == self.cur.ring
                    {
                        self.cur.insert(
                            rec.seq,
                            Frame {
                                sender: rec.sender,
                                safe: rec.safe,
                                recovered: None,
                                chunks: frame.chunks,
                            },
                        );
                    }
                }
            }
        }
    }

    fn deliver_ready(&mut self, upper: &mut dyn Upper) {
        let mut msgs = Vec::new();
        self.cur.deliver_in_order(self.cur.safe_line, &mut msgs);
        self.hand_up(msgs, upper);
    }

    fn hand_up(&mut self, msgs: Vec<Delivered>, upper: &mut dyn Upper) {
        self.stats.messages_delivered += msgs.len() as u64;
        for m in msgs {
            upper.deliver(Event::Message {
                sender: m.sender,
                data: m.data,
            });
        }
    }

    // ----------------------------------------------------------------------------------
    // Token

    fn on_token(
        &mut self,
        now: u64,
        from: NodeId,
        tok: Token,
        upper: &mut dyn Upper,
        out: &mut Vec<Send>,
    ) {
        let ring = match &self.state {
            State::Operational => self.cur.ring,
            State::Recovery(r) => r.forming.ring,
            State::Gather(_) | State::Commit(_) => return,
        };
        if tok.ring != ring {
            if matches!(self.state, State::Operational) {
                self.foreign(now, from, tok.ring, upper, out);
            }
            return;
        }
        if tok.tseq <= self.last_tseq {
            return; // a duplicate (retransmitted) token
        }
        let n = match &self.state {
            State::Recovery(r) => r.forming.members.len(),
            _ => self.cur.members.len(),
        };
        if tok.arus.len() != n || tok.pend.len() != n {
            return; // not a token of this ring's shape: ignore it
        }
        self.stats.tokens += 1;
        self.last_tseq = tok.tseq;
        self.token_deadline = now + self.cfg.token_timeout;
        self.clear_retransmit(ring, 3 + tok.tseq);
        if let State::Recovery(r) = &mut self.state {
            r.forming.deadline = now + self.cfg.token_timeout;
        }
        // Safe line first: an idle token can still make SAFE frames deliverable.
        if matches!(self.state, State::Operational) {
            let min = tok.arus.iter().copied().min().unwrap_or(0);
            self.cur.observe_safe_line(min);
            self.deliver_ready(upper);
        }
        let idle = tok.fcc == 0
            && tok.rtr.is_empty()
            && tok.flags & TOKEN_RECOVERY_COMPLETE == 0
            && tok.arus.iter().all(|&a| a == tok.seq)
            && tok.pend.iter().all(|&p| p == 0);
        self.ring_idle = idle;
        self.idle_streak = if idle {
            self.idle_streak.saturating_add(1)
        } else {
            0
        };
        self.woke = false;
        if idle
            && self.idle_streak >= 2
            && matches!(self.state, State::Operational)
            && self.cur.aru == tok.seq
            && !upper.has_pending()
            && self.outgoing.is_none()
            && now >= self.no_hold_until
        {
            self.held = Some((tok, now + self.hold_ms()));
            return;
        }
        self.visit(now, tok, upper, out);
    }

    /// Whether `tok`, a token this daemon has just received, may be held back a moment
    /// before it is handled (the daemon's token pacing: see `crate::daemon::pace`).
    ///
    /// Only a plain token of the current operational ring in the middle of this
    /// daemon's own stream qualifies: this daemon broadcast in its last visit and nobody
    /// else broadcast or retransmitted anything in the rotation since (`fcc`), no other
    /// member has anything waiting (`pend`), nobody asks for a retransmission (`rtr`),
    /// this daemon lacks no frame, no recovery flag is set, and no message is half
    /// broadcast. Holding such a token back is indistinguishable, for every member, from
    /// the network taking longer to carry it, which the protocol tolerates up to the
    /// token timeouts (and the simulator exercises): pacing changes no guarantee.
    pub fn may_pace(&self, tok: &Token) -> bool {
        let State::Operational = self.state else {
            return false;
        };
        let Some(rank) = self.cur.members.index_of(self.cfg.me) else {
            return false;
        };
        self.cur.members.len() > 1
            && tok.ring == self.cur.ring
            && tok.tseq > self.last_tseq
            && tok.flags == 0
            && tok.rtr.is_empty()
            && self.my_prev_sent > 0
            && tok.fcc <= self.my_prev_sent
            && tok.pend.len() == self.cur.members.len()
            && tok
                .pend
                .iter()
                .enumerate()
                .all(|(r, &p)| r == rank || p == 0)
            && self.cur.aru == tok.seq
            && self.outgoing.is_none()
    }

    fn hold_ms(&self) -> u64 {
        let n = self.cur.members.len().max(1) as u64;
        MAX_TOKEN_HOLD_MS
            .min(self.cfg.token_timeout / (4 * n))
            .max(1)
    }

    fn clear_retransmit(&mut self, ring: RingId, stage: u64) {
        if let Some(r) = &self.retransmit
            && (r.ring != ring || stage > r.stage)
        {
            self.retransmit = None;
        }
    }

    /// One visit of the token: retransmit what others lack, broadcast new frames, report
    /// what this daemon holds, deliver, and pass the token on.
    fn visit(&mut self, now: u64, mut tok: Token, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        let me = self.cfg.me;
        let recovering = matches!(self.state, State::Recovery(_));
        let members = if let State::Recovery(r) = &self.state {
            r.forming.members
        } else {
            self.cur.members
        };
        let rank = members
            .index_of(me)
            .expect("a member visits its ring's token");
        let others = members.without(me);

        // 1. Retransmit what others asked for and this daemon holds.
        let mut sent = 0u32;
        let requests = std::mem::take(&mut tok.rtr);
        for s in requests {
            if sent < self.cfg.personal_window && self.token_order().frames.contains_key(&s) {
                out.push(self.data_packet_for(s, others));
                sent += 1;
                self.stats.retransmissions += 1;
            } else {
                tok.rtr.push(s);
            }
        }

        // 2. New frames, within the flow-control budget.
        let others_sent = tok.fcc.saturating_sub(self.my_prev_sent);
        let mut budget = self
            .cfg
            .personal_window
            .min(self.cfg.window.saturating_sub(others_sent))
            .saturating_sub(sent);
        if recovering {
            let n = self.send_recovery_frames(&mut tok, budget, others, out);
            sent += n;
            budget -= n;
        }

        // 3. Report what this daemon holds; ask for what it lacks.
        self.report(&mut tok, rank, upper);

        // 4. Recovery ends once every member holds every rebroadcast frame.
        if recovering {
            if tok.flags & TOKEN_RECOVERY_COMPLETE == 0
                && tok.pend.iter().all(|&p| p == 0)
                && tok.arus.iter().all(|&a| a == tok.seq)
            {
                tok.flags |= TOKEN_RECOVERY_COMPLETE;
                tok.complete_by = me;
            }
            if tok.flags & TOKEN_RECOVERY_COMPLETE != 0 {
                self.finish_recovery(now, upper);
            }
        } else if tok.flags & TOKEN_RECOVERY_COMPLETE != 0 && tok.complete_by == me {
            tok.flags &= !TOKEN_RECOVERY_COMPLETE;
        }

        // 5. Operational: broadcast the upper layer's messages.
        if matches!(self.state, State::Operational) {
            let n = self.send_upper_frames(&mut tok, budget, others, upper, out);
            sent += n;
            if n > 0 {
                self.report(&mut tok, rank, upper);
            }
            let min = tok.arus.iter().copied().min().unwrap_or(0);
            self.cur.observe_safe_line(min);
            self.deliver_ready(upper);
        }
        tok.fcc = others_sent + sent;
        self.my_prev_sent = sent;
        self.stats.frames_sent += u64::from(sent);

        // 6. Pass the token on.
        tok.tseq += 1;
        self.last_tseq = tok.tseq;
        let next = members.successor(me).expect("non-empty ring");
        if next == me {
            // Alone: keep the token, and visit again at once if there is more to do.
            let busy = upper.has_pending() || self.outgoing.is_some() || recovering;
            let until = if busy { now } else { now + self.hold_ms() };
            self.held = Some((tok, until));
            return;
        }
        let ring = tok.ring;
        let stage = 3 + tok.tseq;
        let packet = self.encode(Body::Token(tok));
        out.push(Send {
            to: NodeSet::single(next),
            packet: packet.clone(),
        });
        self.retransmit = Some(Retransmit {
            ring,
            stage,
            to: NodeSet::single(next),
            packet,
            at: now + self.cfg.hurry_timeout,
        });
    }

    /// The order whose ring the token belongs to.
    fn token_order(&self) -> &Order {
        match &self.state {
            State::Recovery(r) => &r.new,
            _ => &self.cur,
        }
    }

    fn token_order_mut(&mut self) -> &mut Order {
        match &mut self.state {
            State::Recovery(r) => &mut r.new,
            _ => &mut self.cur,
        }
    }

    /// A DATA packet for frame `seq` of the token's ring, as held here (the frame keeps
    /// its original sender; the packet header names this daemon as the transmitter).
    fn data_packet_for(&self, seq: u64, to: NodeSet) -> Send {
        let order = self.token_order();
        let f = &order.frames[&seq];
        let packet = packet::encode_data(
            self.cfg.config_hash,
            self.cfg.me,
            &Data {
                ring: order.ring,
                seq,
                origin: f.sender,
                safe: f.safe,
                recovered: f.recovered.clone(),
                chunks: f.chunks.clone(),
            },
        );
        Send { to, packet }
    }

    fn report(&mut self, tok: &mut Token, rank: usize, upper: &dyn Upper) {
        let pend = match &self.state {
            State::Recovery(r) => r.queue.len() as u32,
            _ => u32::from(upper.has_pending() || self.outgoing.is_some()),
        };
        let seq = tok.seq;
        let order = self.token_order_mut();
        let room = MAX_RTR.saturating_sub(tok.rtr.len());
        for s in order.missing(seq, room) {
            if !tok.rtr.contains(&s) {
                tok.rtr.push(s);
            }
        }
        tok.arus[rank] = order.aru;
        tok.pend[rank] = pend;
    }

    fn send_recovery_frames(
        &mut self,
        tok: &mut Token,
        budget: u32,
        to: NodeSet,
        out: &mut Vec<Send>,
    ) -> u32 {
        let me = self.cfg.me;
        let hash = self.cfg.config_hash;
        let old_ring = self.cur.ring;
        let State::Recovery(r) = &mut self.state else {
            unreachable!("recovering")
        };
        let mut n = 0;
        while n < budget {
            let Some(old_seq) = r.queue.pop_front() else {
                break;
            };
            let Some(old) = self.cur.frames.get(&old_seq) else {
                continue;
            };
            tok.seq += 1;
            let rec = Recovered {
                ring: old_ring,
                seq: old_seq,
                sender: old.sender,
                safe: old.safe,
            };
            let data = Data {
                ring: r.forming.ring,
                seq: tok.seq,
                origin: me,
                safe: false,
                recovered: Some(rec.clone()),
                chunks: old.chunks.clone(),
            };
            out.push(Send {
                to,
                packet: packet::encode_data(hash, me, &data),
            });
            r.new.insert(
                tok.seq,
                Frame {
                    sender: me,
                    safe: false,
                    recovered: Some(rec),
                    chunks: data.chunks,
                },
            );
            n += 1;
        }
        n
    }

    fn send_upper_frames(
        &mut self,
        tok: &mut Token,
        budget: u32,
        to: NodeSet,
        upper: &mut dyn Upper,
        out: &mut Vec<Send>,
    ) -> u32 {
        let cap = self.cfg.max_datagram - DATA_OVERHEAD;
        let mut n = 0;
        while n < budget {
            let mut buf = BytesMut::with_capacity(cap);
            let mut safe = false;
            loop {
                if self.outgoing.is_none() {
                    match upper.next_message() {
                        Some(msg) => self.outgoing = Some(Pending { msg, offset: 0 }),
                        None => break,
                    }
                }
                let p = self.outgoing.as_mut().expect("set above");
                let len = p.msg.data.len();
                let room = cap - buf.len();
                if room <= CHUNK_HEADER_LEN {
                    break;
                }
                let remaining = len - p.offset;
                if p.offset == 0 && CHUNK_HEADER_LEN + remaining <= room {
                    packet::put_chunk(&mut buf, CHUNK_WHOLE, &p.msg.data);
                    safe |= p.msg.safe;
                    self.outgoing = None;
                    continue;
                }
                if p.offset == 0
                    && !buf.is_empty()
                    && (CHUNK_HEADER_LEN + remaining <= cap || room < MIN_FRAGMENT)
                {
                    break; // starts in the next frame
                }
                let take = (room - CHUNK_HEADER_LEN).min(remaining);
                let kind = if p.offset == 0 {
                    CHUNK_FIRST
                } else if p.offset + take == len {
                    CHUNK_LAST
                } else {
                    CHUNK_MIDDLE
                };
                packet::put_chunk(&mut buf, kind, &p.msg.data[p.offset..p.offset + take]);
                safe |= p.msg.safe;
                p.offset += take;
                if p.offset == len {
                    self.outgoing = None;
                } else {
                    break; // this frame is full
                }
            }
            if buf.is_empty() {
                break;
            }
            tok.seq += 1;
            let data = Data {
                ring: self.cur.ring,
                seq: tok.seq,
                origin: self.cfg.me,
                safe,
                recovered: None,
                chunks: buf.freeze(),
            };
            out.push(Send {
                to,
                packet: packet::encode_data(self.cfg.config_hash, self.cfg.me, &data),
            });
            let inserted = self.cur.insert(
                tok.seq,
                Frame {
                    sender: self.cfg.me,
                    safe,
                    recovered: None,
                    chunks: data.chunks,
                },
            );
            assert!(inserted, "a fresh sequence number");
            n += 1;
        }
        n
    }

    // ----------------------------------------------------------------------------------
    // Membership

    fn my_info(&self) -> MemberInfo {
        MemberInfo {
            old_ring: self.cur.ring,
            aru: self.cur.aru,
            high: self.cur.high,
            safe_line: self.cur.safe_line,
        }
    }

    fn enter_gather(&mut self, now: u64, add: NodeSet, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        let me = self.cfg.me;
        let add = add.intersect(self.all);
        let (proc_set, fail_set) = match &mut self.state {
            State::Gather(g) => {
                let grown = g.proc_set.union(add.minus(g.fail_set));
                if grown != g.proc_set {
                    g.proc_set = grown;
                    g.consensus = NodeSet::single(me);
                    g.consensus_at = now + self.cfg.gather_timeout;
                    self.send_join(out);
                    self.check_consensus(now, upper, out);
                }
                return;
            }
            State::Operational => (self.cur.members.union(add), NodeSet::EMPTY),
            State::Commit(f) => (f.proc_set.union(add).union(self.cur.members), f.fail_set),
            State::Recovery(r) => (
                r.forming.proc_set.union(add).union(self.cur.members),
                r.forming.fail_set,
            ),
        };
        self.stats.gathers += 1;
        self.cur.frozen = false;
        self.held = None;
        self.retransmit = None;
        self.last_tseq = 0;
        // A message not wholly broadcast is dropped (its fragments in the old ring are
        // discarded as incomplete); the upper layer sends it again (see [`Upper`]).
        self.outgoing = None;
        self.state = State::Gather(Gather {
            proc_set: proc_set.with(me).minus(fail_set.without(me)),
            fail_set: fail_set.without(me),
            consensus: NodeSet::single(me),
            join_at: now + self.cfg.join_timeout,
            consensus_at: now + self.cfg.gather_timeout,
        });
        self.send_join(out);
        self.check_consensus(now, upper, out);
    }

    fn send_join(&self, out: &mut Vec<Send>) {
        let State::Gather(g) = &self.state else {
            return;
        };
        let packet = self.encode(Body::Join(Join {
            ring_seq: self.max_ring_seq.max(self.cur.ring.seq),
            proc_set: g.proc_set,
            fail_set: g.fail_set,
        }));
        let to = self.all.without(self.cfg.me);
        if !to.is_empty() {
            out.push(Send { to, packet });
        }
    }

    fn on_join(
        &mut self,
        now: u64,
        from: NodeId,
        j: Join,
        upper: &mut dyn Upper,
        out: &mut Vec<Send>,
    ) {
        let me = self.cfg.me;
        self.max_ring_seq = self.max_ring_seq.max(j.ring_seq);
        match &self.state {
            State::Operational => {
                if self.cur.members.contains(from) && j.ring_seq < self.cur.ring.seq {
                    return; // sent before the current ring formed
                }
                self.enter_gather(now, j.proc_set.with(from), upper, out);
            }
            State::Commit(_) | State::Recovery(_) => {
                let f = match &self.state {
                    State::Commit(f) => f,
                    State::Recovery(r) => &r.forming,
                    _ => unreachable!(),
                };
                if !f.members.contains(from) || j.ring_seq < f.ring.seq {
                    return;
                }
                // A member of the ring being formed gave up on it.
                self.enter_gather(now, j.proc_set.with(from), upper, out);
            }
            State::Gather(_) => {}
        }
        let State::Gather(g) = &mut self.state else {
            return;
        };
        if j.proc_set == g.proc_set && j.fail_set == g.fail_set {
            g.consensus.insert(from);
            self.check_consensus(now, upper, out);
        } else if j.proc_set.is_subset(g.proc_set) && j.fail_set.is_subset(g.fail_set) {
            // An older view of the same gathering.
        } else if g.fail_set.contains(from) {
            // Given up on; it will merge later, once this daemon's ring is operational.
        } else {
            g.proc_set = g.proc_set.union(j.proc_set.intersect(self.all));
            if j.fail_set.contains(me) {
                g.fail_set.insert(from);
            } else {
                g.fail_set = g.fail_set.union(j.fail_set.intersect(self.all));
            }
            g.fail_set = g.fail_set.without(me);
            g.consensus = NodeSet::single(me);
            g.consensus_at = now + self.cfg.gather_timeout;
            self.send_join(out);
            self.check_consensus(now, upper, out);
        }
    }

    fn check_consensus(&mut self, now: u64, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        let me = self.cfg.me;
        let State::Gather(g) = &self.state else {
            return;
        };
        let live = g.proc_set.minus(g.fail_set);
        if !live.is_subset(g.consensus) || live.min() != Some(me) {
            return;
        }
        // This daemon is the representative of the new ring: send the commit token.
        let ring = RingId {
            seq: self.max_ring_seq.max(self.cur.ring.seq) + 1,
            rep: me,
        };
        self.max_ring_seq = ring.seq;
        let forming = Forming {
            ring,
            members: live,
            proc_set: g.proc_set,
            fail_set: g.fail_set,
            deadline: now + self.cfg.form_timeout,
        };
        let mut infos = vec![None; live.len()];
        infos[0] = Some(self.my_info());
        self.cur.frozen = true;
        let mut commit = Commit {
            ring,
            members: live,
            rotation: 0,
            infos,
        };
        self.state = State::Commit(forming);
        if live.len() == 1 {
            commit.rotation = 1;
            self.enter_recovery(now, &commit);
            self.start_token(now, upper, out);
        } else {
            self.forward_commit(now, commit, out);
        }
    }

    fn forward_commit(&mut self, now: u64, commit: Commit, out: &mut Vec<Send>) {
        let next = commit
            .members
            .successor(self.cfg.me)
            .expect("non-empty ring");
        let stage = u64::from(commit.rotation) * 2 + u64::from(commit.complete());
        let ring = commit.ring;
        let packet = self.encode(Body::Commit(commit));
        out.push(Send {
            to: NodeSet::single(next),
            packet: packet.clone(),
        });
        self.retransmit = Some(Retransmit {
            ring,
            stage,
            to: NodeSet::single(next),
            packet,
            at: now + self.cfg.hurry_timeout,
        });
    }

    fn on_commit(&mut self, now: u64, mut c: Commit, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        let me = self.cfg.me;
        self.max_ring_seq = self.max_ring_seq.max(c.ring.seq);
        let Some(rank) = c.members.index_of(me) else {
            return;
        };
        if c.infos.len() != c.members.len() {
            return;
        }
        let stage = u64::from(c.rotation) * 2 + u64::from(c.complete());
        self.clear_retransmit(c.ring, stage);
        match &self.state {
            State::Gather(g) => {
                if c.rotation != 0
                    || c.members != g.proc_set.minus(g.fail_set)
                    || c.ring.seq <= self.cur.ring.seq
                    || c.ring.rep == me
                    || c.infos[rank].is_some()
                {
                    return;
                }
                c.infos[rank] = Some(self.my_info());
                self.cur.frozen = true;
                self.state = State::Commit(Forming {
                    ring: c.ring,
                    members: c.members,
                    proc_set: g.proc_set,
                    fail_set: g.fail_set,
                    deadline: now + self.cfg.form_timeout,
                });
                self.forward_commit(now, c, out);
            }
            State::Commit(f) => {
                if c.ring != f.ring || !c.complete() {
                    return;
                }
                if me == c.ring.rep && c.rotation == 0 {
                    c.rotation = 1;
                    self.enter_recovery(now, &c);
                    self.forward_commit(now, c, out);
                } else if me != c.ring.rep && c.rotation == 1 {
                    self.enter_recovery(now, &c);
                    self.forward_commit(now, c, out);
                }
            }
            State::Recovery(r) => {
                if c.ring == r.forming.ring
                    && me == c.ring.rep
                    && c.rotation == 1
                    && !r.token_started
                {
                    self.start_token(now, upper, out);
                }
            }
            State::Operational => {}
        }
    }

    fn enter_recovery(&mut self, now: u64, c: &Commit) {
        let State::Commit(forming) = std::mem::replace(&mut self.state, State::Operational) else {
            unreachable!("recovery follows commit")
        };
        let infos: Vec<MemberInfo> = c.infos.iter().map(|i| i.expect("complete")).collect();
        let old = self.cur.ring;
        let mut trans = NodeSet::EMPTY;
        let (mut low, mut high, mut safe) = (u64::MAX, 0, 0);
        for (p, info) in c.members.iter().zip(&infos) {
            if info.old_ring == old {
                trans.insert(p);
                low = low.min(info.aru);
                high = high.max(info.high);
                safe = safe.max(info.safe_line);
            }
        }
        assert!(
            trans.contains(self.cfg.me),
            "this daemon comes from its own old ring"
        );
        // If every member of the old ring is here, after recovery each holds every old
        // frame, so all of them are safe.
        let old_safe = if trans == self.cur.members {
            u64::MAX
        } else {
            safe
        };
        // Old frames some member of the transitional configuration may lack.
        let queue = if low < high {
            self.cur
                .frames
                .range(low + 1..=high)
                .map(|(s, _)| *s)
                .collect()
        } else {
            VecDeque::new()
        };
        self.last_tseq = 0;
        self.held = None;
        self.my_prev_sent = 0;
        self.state = State::Recovery(Box::new(Recovery {
            new: Order::new(c.ring, c.members),
            forming: Forming {
                deadline: now + self.cfg.form_timeout,
                ..forming
            },
            infos,
            queue,
            trans,
            high,
            old_safe,
            token_started: false,
        }));
    }

    fn start_token(&mut self, now: u64, upper: &mut dyn Upper, out: &mut Vec<Send>) {
        let State::Recovery(r) = &mut self.state else {
            unreachable!("the token starts in recovery")
        };
        r.token_started = true;
        let n = r.forming.members.len();
        let tok = Token {
            ring: r.forming.ring,
            tseq: 1,
            seq: 0,
            fcc: 0,
            flags: 0,
            complete_by: 0,
            arus: vec![0; n],
            pend: vec![u32::MAX; n],
            rtr: Vec::new(),
        };
        self.last_tseq = 1;
        self.token_deadline = now + self.cfg.token_timeout;
        self.visit(now, tok, upper, out);
    }

    fn finish_recovery(&mut self, now: u64, upper: &mut dyn Upper) {
        let State::Recovery(r) = std::mem::replace(&mut self.state, State::Operational) else {
            unreachable!("recovering")
        };
        let r = *r;
        assert!(self.cur.high <= r.high, "the old ring was frozen at commit");
        // Old messages still deliverable in the old regular configuration.
        let mut msgs = Vec::new();
        self.cur.deliver_in_order(r.old_safe, &mut msgs);
        self.hand_up(msgs, upper);
        upper.deliver(Event::Transitional {
            ring: self.cur.ring,
            members: r.trans,
            old_members: self.cur.members,
        });
        let mut msgs = Vec::new();
        self.cur.deliver_transitional(r.high, r.trans, &mut msgs);
        self.hand_up(msgs, upper);
        let old_rings = r
            .forming
            .members
            .iter()
            .zip(&r.infos)
            .map(|(p, i)| (p, i.old_ring))
            .collect();
        upper.deliver(Event::Regular {
            ring: r.forming.ring,
            members: r.forming.members,
            old_rings,
        });
        self.stats.rings_formed += 1;
        self.cur = r.new;
        self.presence_at = now + self.cfg.alive_timeout;
        self.no_hold_until = 0;
        self.deliver_ready(upper);
    }
}
