//! A server's durable state, in one SQLite database (`mail.db` in the data dir):
//! mailboxes, the matrix clock, the outbound queue and the hold-back queue.
//!
//! SQLite rather than plain files because every step changes several of them at once
//! and must do so atomically: a submission counts the message in the clock, queues one
//! copy per remote domain and fills local mailboxes; an arriving copy is held back or
//! delivered and the clock merged. One transaction each, committed with
//! `synchronous=FULL` before the client or the peer server hears `OK`, so an `OK`
//! means the mail is on disk, and a crash at any point leaves either all of a step or
//! none of it. Mail is never dropped: a copy leaves the outbound queue only when the
//! destination has answered `OK`, that is, after the destination committed it.

use std::path::Path;

use anyhow::{Context, bail};
use nuage_coord::clock::MatrixClock;
use rusqlite::{Connection, OptionalExtension, params};

use crate::address::Address;
use crate::causal::{self, Order, Verdict};
use crate::protocol::{Forward, Message, Submission};
use crate::servers::Directory;

/// File name of the database in the data dir.
pub const DB_FILE: &str = "mail.db";
/// Most messages a server holds back at once; beyond, peers are told to retry later.
pub const MAX_HOLDBACK: usize = 10_000;

const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- The matrix clock by domain names, so adding a domain keeps the counts.
CREATE TABLE clock (
  from_domain TEXT NOT NULL, to_domain TEXT NOT NULL, count INTEGER NOT NULL,
  PRIMARY KEY (from_domain, to_domain));
-- Delivered mail; seq is the delivery order, which is causal.
CREATE TABLE mailbox (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, owner TEXT NOT NULL, msg_id TEXT NOT NULL,
  sender TEXT NOT NULL, recipients TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
  body TEXT NOT NULL, delivered_at_ms INTEGER NOT NULL);
CREATE INDEX mailbox_by_owner ON mailbox (owner, seq);
-- Copies waiting to be forwarded, oldest first per destination.
CREATE TABLE outbox (
  qid INTEGER PRIMARY KEY AUTOINCREMENT, dest TEXT NOT NULL, msg_id TEXT NOT NULL,
  sender TEXT NOT NULL, recipients TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
  stamp BLOB NOT NULL, body TEXT NOT NULL, queued_at_ms INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE INDEX outbox_by_dest ON outbox (dest, qid);
-- Copies received but not deliverable yet; (origin, link_seq) identifies a copy.
CREATE TABLE holdback (
  origin TEXT NOT NULL, link_seq INTEGER NOT NULL, msg_id TEXT NOT NULL,
  sender TEXT NOT NULL, recipients TEXT NOT NULL, sent_at_ms INTEGER NOT NULL,
  stamp BLOB NOT NULL, body TEXT NOT NULL, received_at_ms INTEGER NOT NULL,
  PRIMARY KEY (origin, link_seq));
"#];

/// The outcome of a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub id: String,
    /// Recipients of this domain, delivered at once.
    pub local: usize,
    /// Remote domains a copy was queued for.
    pub queued: Vec<String>,
}

/// The outcome of an arriving copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Delivered now (with `released` held-back messages it unblocked).
    Delivered { released: usize },
    /// Stored in the hold-back queue until what it depends on arrives.
    Held,
    /// Delivered before: a retry whose acknowledgement was lost.
    Duplicate,
}

/// A copy waiting in the outbound queue.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub qid: i64,
    pub dest: String,
    pub queued_at_ms: u64,
    pub attempts: u64,
    pub forward: Forward,
}

/// What waits in the outbound queue for one domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueStatus {
    pub dest: String,
    pub messages: u64,
    /// When the oldest copy was queued (ms since the epoch).
    pub oldest_queued_at_ms: u64,
    /// Failed attempts to forward the oldest copy, and the last failure.
    pub attempts: u64,
    pub last_error: Option<String>,
}

/// A refusal the sender must hear (`ERR`), as opposed to an internal failure.
pub type Refusal = String;

pub struct Store {
    conn: Connection,
    directory: Directory,
    domain: String,
    order: Order,
    clock: MatrixClock,
    next_id: u64,
    /// [`MAX_HOLDBACK`], lowered by tests.
    holdback_limit: usize,
}

impl Store {
    /// Opens (or creates) the database of `domain`'s server at `path`.
    pub fn open(
        path: &Path,
        directory: Directory,
        domain: &str,
        order: Order,
    ) -> anyhow::Result<Store> {
        let me = directory.index(domain).with_context(|| {
            format!(
                "domain `{domain}` is not in the servers file (domains: {})",
                directory.domain_list()
            )
        })?;
        let conn = nuage_core::datadir::open_sqlite(path, MIGRATIONS)?;
        // An OK to a client or a peer promises the mail is on disk.
        conn.pragma_update(None, "synchronous", "FULL")?;
        let meta = |key: &str| -> anyhow::Result<Option<String>> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        if let Some(stored) = meta("domain")?
            && stored != domain
        {
            bail!(
                "{} holds the mail of domain `{stored}`, not `{domain}`; choose another --data-dir",
                path.display()
            );
        }
        let fingerprint = directory.fingerprint();
        if let Some(stored) = meta("fingerprint")?
            && stored != fingerprint
        {
            let in_transit: i64 = conn.query_row(
                "SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM holdback)",
                [],
                |r| r.get(0),
            )?;
            if in_transit > 0 {
                bail!(
                    "the set of domains in the servers file changed while {in_transit} message(s) are in transit (queued or held back), and their clock stamps number the domains the old way; start with the old servers file until they are delivered"
                );
            }
        }
        let next_id: u64 = meta("next_id")?
            .map(|v| v.parse())
            .transpose()
            .context("meta next_id")?
            .unwrap_or(1);
        let mut clock = MatrixClock::new(directory.len(), me);
        {
            let mut stmt = conn.prepare("SELECT from_domain, to_domain, count FROM clock")?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })?;
            for row in rows {
                let (from, to, count) = row?;
                if let (Some(k), Some(l)) = (directory.index(&from), directory.index(&to)) {
                    clock.set(k, l, count as u64);
                }
            }
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta VALUES ('domain', ?1), ('fingerprint', ?2)",
            params![domain, fingerprint],
        )?;
        Ok(Store {
            conn,
            directory,
            domain: domain.to_owned(),
            order,
            clock,
            next_id,
            holdback_limit: MAX_HOLDBACK,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    pub fn clock(&self) -> &MatrixClock {
        &self.clock
    }

    /// Accepts a message from a user of this domain: delivers it to the local
    /// recipients and queues one stamped copy per remote domain, atomically.
    pub fn submit(
        &mut self,
        sub: &Submission,
        now_ms: u64,
    ) -> anyhow::Result<Result<Submitted, Refusal>> {
        if sub.from.domain() != self.domain {
            return Ok(Err(format!(
                "this server sends mail for domain `{}` only; send as {} from the server of `{}`",
                self.domain,
                sub.from,
                sub.from.domain()
            )));
        }
        let mut recipients: Vec<&Address> = Vec::new();
        for to in &sub.to {
            if self.directory.index(to.domain()).is_none() {
                return Ok(Err(format!(
                    "unknown domain `{}` (recipient {to}): it is not in the servers file (domains: {}); nothing was sent",
                    to.domain(),
                    self.directory.domain_list()
                )));
            }
            if !recipients.contains(&to) {
                recipients.push(to);
            }
        }
        let mut remote: Vec<usize> = recipients
            .iter()
            .filter(|a| a.domain() != self.domain)
            .map(|a| self.directory.index(a.domain()).expect("checked above"))
            .collect();
        remote.sort_unstable();
        remote.dedup();
        let id = format!("{}-{}", self.domain, self.next_id);
        let to_text = join(&sub.to);
        let mut clock = self.clock.clone();
        let tx = self.conn.transaction()?;
        let mut queued = Vec::new();
        if !remote.is_empty() {
            let stamp = causal::stamp_send(&mut clock, &remote).to_bytes();
            for &d in &remote {
                let dest = self.directory.domain(d);
                tx.execute(
                    "INSERT INTO outbox (dest, msg_id, sender, recipients, sent_at_ms, stamp, body, queued_at_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?5)",
                    params![dest, id, sub.from.to_string(), to_text, now_ms as i64, stamp, sub.text],
                )?;
                queued.push(dest.to_owned());
            }
        }
        let mut local = 0;
        for to in recipients.iter().filter(|a| a.domain() == self.domain) {
            tx.execute(
                "INSERT INTO mailbox (owner, msg_id, sender, recipients, sent_at_ms, body, delivered_at_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?5)",
                params![to.to_string(), id, sub.from.to_string(), to_text, now_ms as i64, sub.text],
            )?;
            local += 1;
        }
        save_clock(&tx, &self.directory, &self.clock, &clock)?;
        tx.execute(
            "INSERT OR REPLACE INTO meta VALUES ('next_id', ?1)",
            [(self.next_id + 1).to_string()],
        )?;
        tx.commit()?;
        self.clock = clock;
        self.next_id += 1;
        Ok(Ok(Submitted { id, local, queued }))
    }

    /// Takes in a copy forwarded by another server: drops it if delivered before,
    /// otherwise holds it back and delivers everything that has become deliverable.
    pub fn accept(
        &mut self,
        fwd: &Forward,
        now_ms: u64,
    ) -> anyhow::Result<Result<Accepted, Refusal>> {
        let fingerprint = self.directory.fingerprint();
        if fwd.fingerprint != fingerprint {
            return Ok(Err(format!(
                "the servers files differ: `{}` numbers the domains as {} (fingerprint {}) but the sender's fingerprint is {}; give every server the same set of domains",
                self.domain,
                self.directory.domain_list(),
                fingerprint,
                fwd.fingerprint
            )));
        }
        let Some(from) = self.directory.index(&fwd.origin) else {
            return Ok(Err(format!("unknown origin domain `{}`", fwd.origin)));
        };
        let stamp = match MatrixClock::decode(&fwd.stamp) {
            Ok(s) => s,
            Err(e) => return Ok(Err(e.to_string())),
        };
        if let Err(why) = causal::check_stamp(&self.clock, from, &stamp) {
            return Ok(Err(why));
        }
        let me = self.clock.me();
        let link_seq = stamp.get(from, me);
        let verdict = causal::verdict(self.order, &self.clock, from, &stamp);
        if verdict == Verdict::Duplicate {
            return Ok(Ok(Accepted::Duplicate));
        }
        // Only a copy that would wait is refused when the hold-back is full: a copy
        // deliverable now is always taken, so the copies the held ones wait for get in
        // and the hold-back drains (refusing those would deadlock).
        if verdict == Verdict::Hold {
            let held: i64 = self
                .conn
                .query_row("SELECT count(*) FROM holdback", [], |r| r.get(0))?;
            if held as usize >= self.holdback_limit {
                return Ok(Err(format!(
                    "{held} messages are held back here (the limit is {}); retry later",
                    self.holdback_limit
                )));
            }
        }
        let tx = self.conn.transaction()?;
        tx.execute(
            "INSERT OR IGNORE INTO holdback (origin, link_seq, msg_id, sender, recipients, sent_at_ms, stamp, body, received_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                fwd.origin,
                link_seq as i64,
                fwd.id,
                fwd.from.to_string(),
                join(&fwd.to),
                fwd.sent_at_ms as i64,
                fwd.stamp,
                fwd.text,
                now_ms as i64
            ],
        )?;
        let mut clock = self.clock.clone();
        let delivered = deliver_ready(
            &tx,
            &self.directory,
            &self.domain,
            self.order,
            &mut clock,
            now_ms,
        )?;
        save_clock(&tx, &self.directory, &self.clock, &clock)?;
        tx.commit()?;
        self.clock = clock;
        let this = delivered
            .iter()
            .any(|(origin, seq)| *origin == fwd.origin && *seq == link_seq);
        Ok(Ok(if this {
            Accepted::Delivered {
                released: delivered.len() - 1,
            }
        } else {
            Accepted::Held
        }))
    }

    /// The mailbox of `owner`, in delivery order, and how many messages for it are
    /// held back.
    pub fn read(&self, owner: &Address) -> anyhow::Result<Result<(Vec<Message>, usize), Refusal>> {
        if owner.domain() != self.domain {
            let at = self
                .directory
                .entry(owner.domain())
                .map(|e| format!(" ({}:{})", e.host, e.port))
                .unwrap_or_default();
            return Ok(Err(format!(
                "this server keeps the mail of domain `{}` only; read {owner}'s mail at the server of `{}`{at}",
                self.domain,
                owner.domain()
            )));
        }
        let mut stmt = self.conn.prepare(
            "SELECT msg_id, sender, recipients, sent_at_ms, body FROM mailbox WHERE owner = ?1 ORDER BY seq",
        )?;
        let rows = stmt.query_map([owner.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut messages = Vec::new();
        for (i, row) in rows.enumerate() {
            let (id, sender, recipients, sent_at_ms, text) = row?;
            messages.push(Message {
                number: i as u64 + 1,
                id,
                from: parse_stored(&sender)?,
                to: split(&recipients)?,
                sent_at_ms: sent_at_ms as u64,
                text,
            });
        }
        let mut held = 0;
        let mut stmt = self.conn.prepare("SELECT recipients FROM holdback")?;
        for row in stmt.query_map([], |r| r.get::<_, String>(0))? {
            if split(&row?)?.contains(owner) {
                held += 1;
            }
        }
        Ok(Ok((messages, held)))
    }

    /// The oldest copy queued for `dest`.
    pub fn next_outbound(&self, dest: &str) -> anyhow::Result<Option<Outbound>> {
        Ok(self.outbound_batch(dest, 1)?.pop())
    }

    /// The `limit` oldest copies queued for `dest`, oldest first.
    pub fn outbound_batch(&self, dest: &str, limit: usize) -> anyhow::Result<Vec<Outbound>> {
        let mut stmt = self.conn.prepare(
            "SELECT qid, msg_id, sender, recipients, sent_at_ms, stamp, body, queued_at_ms, attempts
             FROM outbox WHERE dest = ?1 ORDER BY qid LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![dest, limit as i64], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, i64>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, String>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, i64>(8)?,
            ))
        })?;
        let mut batch = Vec::new();
        for row in rows {
            let (qid, id, sender, recipients, sent_at_ms, stamp, text, queued_at_ms, attempts) =
                row?;
            batch.push(Outbound {
                qid,
                dest: dest.to_owned(),
                queued_at_ms: queued_at_ms as u64,
                attempts: attempts as u64,
                forward: Forward {
                    origin: self.domain.clone(),
                    fingerprint: self.directory.fingerprint(),
                    id,
                    from: parse_stored(&sender)?,
                    to: split(&recipients)?,
                    sent_at_ms: sent_at_ms as u64,
                    stamp,
                    text,
                },
            });
        }
        Ok(batch)
    }

    /// The destination committed the copy: it leaves the queue.
    pub fn outbound_done(&mut self, qid: i64) -> anyhow::Result<()> {
        self.outbound_done_many(&[qid])
    }

    /// The destination committed these copies: they leave the queue, in one transaction.
    pub fn outbound_done_many(&mut self, qids: &[i64]) -> anyhow::Result<()> {
        let tx = self.conn.transaction()?;
        for qid in qids {
            tx.execute("DELETE FROM outbox WHERE qid = ?1", [qid])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A forwarding attempt failed; the copy stays queued. Returns the attempts so far.
    pub fn outbound_failed(&self, qid: i64, error: &str) -> anyhow::Result<u64> {
        self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2 WHERE qid = ?1",
            params![qid, error],
        )?;
        let n: i64 = self
            .conn
            .query_row("SELECT attempts FROM outbox WHERE qid = ?1", [qid], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        Ok(n as u64)
    }

    /// The outbound queue per destination domain, for `nuage mail queue`.
    pub fn queue_status(&self) -> anyhow::Result<Vec<QueueStatus>> {
        let mut stmt = self.conn.prepare(
            "SELECT o.dest, q.n, o.queued_at_ms, o.attempts, o.last_error
             FROM (SELECT dest, count(*) AS n, min(qid) AS first FROM outbox GROUP BY dest) q
             JOIN outbox o ON o.qid = q.first ORDER BY o.dest",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(QueueStatus {
                dest: r.get(0)?,
                messages: r.get::<_, i64>(1)? as u64,
                oldest_queued_at_ms: r.get::<_, i64>(2)? as u64,
                attempts: r.get::<_, i64>(3)? as u64,
                last_error: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Messages held back, in all.
    pub fn held_back(&self) -> anyhow::Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM holdback", [], |r| r.get(0))?;
        Ok(n as u64)
    }
}

/// Delivers every held-back copy that has become deliverable, repeatedly (one delivery
/// can unblock others). Returns the (origin, link_seq) of each delivered copy.
fn deliver_ready(
    tx: &rusqlite::Transaction<'_>,
    directory: &Directory,
    domain: &str,
    order: Order,
    clock: &mut MatrixClock,
    now_ms: u64,
) -> anyhow::Result<Vec<(String, u64)>> {
    struct Held {
        origin: String,
        from: usize,
        link_seq: u64,
        stamp: MatrixClock,
    }
    let mut held = Vec::new();
    {
        let mut stmt =
            tx.prepare("SELECT origin, link_seq, stamp FROM holdback ORDER BY received_at_ms")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        for row in rows {
            let (origin, link_seq, stamp) = row?;
            // Accepted copies were checked on arrival with the same servers file.
            let from = directory
                .index(&origin)
                .with_context(|| format!("held-back copy from unknown domain `{origin}`"))?;
            let stamp = MatrixClock::decode(&stamp)
                .map_err(|e| anyhow::anyhow!("held-back copy from `{origin}`: {e}"))?;
            held.push(Held {
                origin,
                from,
                link_seq: link_seq as u64,
                stamp,
            });
        }
    }
    let mut delivered = Vec::new();
    while let Some(pos) = held
        .iter()
        .position(|h| causal::verdict(order, clock, h.from, &h.stamp) != Verdict::Hold)
    {
        let h = held.remove(pos);
        if causal::verdict(order, clock, h.from, &h.stamp) == Verdict::Deliver {
            causal::absorb(order, clock, h.from, &h.stamp);
            let recipients: String = tx.query_row(
                "SELECT recipients FROM holdback WHERE origin = ?1 AND link_seq = ?2",
                params![h.origin, h.link_seq as i64],
                |r| r.get(0),
            )?;
            for owner in split(&recipients)?.iter().filter(|a| a.domain() == domain) {
                tx.execute(
                    "INSERT INTO mailbox (owner, msg_id, sender, recipients, sent_at_ms, body, delivered_at_ms)
                     SELECT ?3, msg_id, sender, recipients, sent_at_ms, body, ?4 FROM holdback
                     WHERE origin = ?1 AND link_seq = ?2",
                    params![h.origin, h.link_seq as i64, owner.to_string(), now_ms as i64],
                )?;
            }
            delivered.push((h.origin.clone(), h.link_seq));
        }
        tx.execute(
            "DELETE FROM holdback WHERE origin = ?1 AND link_seq = ?2",
            params![h.origin, h.link_seq as i64],
        )?;
    }
    Ok(delivered)
}

/// Writes the cells of `new` that differ from `old`.
fn save_clock(
    tx: &rusqlite::Transaction<'_>,
    directory: &Directory,
    old: &MatrixClock,
    new: &MatrixClock,
) -> anyhow::Result<()> {
    let n = new.n();
    for k in 0..n {
        for l in 0..n {
            if old.get(k, l) != new.get(k, l) {
                tx.execute(
                    "INSERT OR REPLACE INTO clock VALUES (?1, ?2, ?3)",
                    params![
                        directory.domain(k),
                        directory.domain(l),
                        new.get(k, l) as i64
                    ],
                )?;
            }
        }
    }
    Ok(())
}

/// Recipients are stored one per line (an address has no line break).
fn join(list: &[Address]) -> String {
    let names: Vec<String> = list.iter().map(ToString::to_string).collect();
    names.join("\n")
}

fn split(text: &str) -> anyhow::Result<Vec<Address>> {
    text.lines().map(parse_stored).collect()
}

fn parse_stored(text: &str) -> anyhow::Result<Address> {
    Address::parse(text).map_err(|e| anyhow::anyhow!("stored address: {e}"))
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    fn directory() -> Directory {
        Directory::parse("h:1:a\nh:2:b\nh:3:n\n", "test").unwrap()
    }

    struct World {
        _tmp: tempfile::TempDir,
        a: Store,
        b: Store,
        n: Store,
    }

    fn world(order: Order) -> World {
        let tmp = tempfile::tempdir().unwrap();
        let open = |d: &str| {
            Store::open(&tmp.path().join(format!("{d}.db")), directory(), d, order).unwrap()
        };
        World {
            a: open("a"),
            b: open("b"),
            n: open("n"),
            _tmp: tmp,
        }
    }

    fn send(store: &mut Store, from: &str, to: &[&str], text: &str) -> Submitted {
        let sub = Submission::new(
            addr(from),
            to.iter().map(|t| addr(t)).collect(),
            text.to_owned(),
        )
        .unwrap();
        store.submit(&sub, 1000).unwrap().unwrap()
    }

    /// Moves the oldest copy from `from`'s queue for `dest` into `to`.
    fn forward(from: &mut Store, to: &mut Store) -> Accepted {
        let out = from
            .next_outbound(to.domain())
            .unwrap()
            .expect("a queued copy");
        let accepted = to.accept(&out.forward, 2000).unwrap().unwrap();
        from.outbound_done(out.qid).unwrap();
        accepted
    }

    fn senders(store: &Store, owner: &str) -> Vec<String> {
        let (messages, _) = store.read(&addr(owner)).unwrap().unwrap();
        messages.iter().map(|m| m.from.to_string()).collect()
    }

    #[test]
    fn the_scenario_is_held_back_in_causal_mode() {
        let mut w = world(Order::Causal);
        let s = send(&mut w.a, "afida@a", &["brandon@b", "nabilla@n"], "hi both");
        assert_eq!(s.queued, vec!["b", "n"]);
        assert_eq!(
            forward(&mut w.a, &mut w.b),
            Accepted::Delivered { released: 0 }
        );
        send(&mut w.b, "brandon@b", &["afida@a", "nabilla@n"], "hi back");
        // The reply reaches n before Afida's message: held back.
        assert_eq!(forward(&mut w.b, &mut w.n), Accepted::Held);
        assert!(senders(&w.n, "nabilla@n").is_empty());
        assert_eq!(w.n.read(&addr("nabilla@n")).unwrap().unwrap().1, 1);
        assert_eq!(
            forward(&mut w.a, &mut w.n),
            Accepted::Delivered { released: 1 }
        );
        assert_eq!(senders(&w.n, "nabilla@n"), ["afida@a", "brandon@b"]);
        assert_eq!(w.n.held_back().unwrap(), 0);
    }

    #[test]
    fn held_back_copies_and_queues_survive_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let path = |d: &str| tmp.path().join(format!("{d}.db"));
        let open = |d: &str| Store::open(&path(d), directory(), d, Order::Causal).unwrap();
        let (mut a, mut b, mut n) = (open("a"), open("b"), open("n"));
        send(&mut a, "afida@a", &["brandon@b", "nabilla@n"], "hi both");
        forward(&mut a, &mut b);
        send(&mut b, "brandon@b", &["nabilla@n"], "hi back");
        assert_eq!(forward(&mut b, &mut n), Accepted::Held);
        let out = a.next_outbound("n").unwrap().unwrap();
        a.outbound_failed(out.qid, "no route").unwrap();
        let status = a.queue_status().unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!((status[0].dest.as_str(), status[0].messages), ("n", 1));
        assert_eq!(status[0].attempts, 1);
        assert_eq!(status[0].last_error.as_deref(), Some("no route"));
        drop((a, n));
        let (mut a, mut n) = (open("a"), open("n"));
        assert_eq!(n.held_back().unwrap(), 1);
        assert_eq!(forward(&mut a, &mut n), Accepted::Delivered { released: 1 });
        assert_eq!(senders(&n, "nabilla@n"), ["afida@a", "brandon@b"]);
        assert!(a.queue_status().unwrap().is_empty());
    }

    #[test]
    fn a_full_hold_back_still_takes_what_it_waits_for() {
        let mut w = world(Order::Causal);
        w.n.holdback_limit = 1;
        send(&mut w.a, "afida@a", &["brandon@b", "nabilla@n"], "one");
        forward(&mut w.a, &mut w.b);
        send(&mut w.b, "brandon@b", &["nabilla@n"], "reply 1");
        send(&mut w.b, "brandon@b", &["nabilla@n"], "reply 2");
        assert_eq!(forward(&mut w.b, &mut w.n), Accepted::Held);
        // Full: another copy that would wait is refused (and stays queued at b)…
        let out = w.b.next_outbound("n").unwrap().unwrap();
        let err = w.n.accept(&out.forward, 1).unwrap().unwrap_err();
        assert!(err.contains("the limit is 1"), "{err}");
        // …but the copy everything waits for is taken, and releases the held one.
        assert_eq!(
            forward(&mut w.a, &mut w.n),
            Accepted::Delivered { released: 1 }
        );
        assert_eq!(
            forward(&mut w.b, &mut w.n),
            Accepted::Delivered { released: 0 }
        );
        assert_eq!(
            senders(&w.n, "nabilla@n"),
            ["afida@a", "brandon@b", "brandon@b"]
        );
    }

    #[test]
    fn the_scenario_goes_wrong_in_fifo_mode() {
        let mut w = world(Order::Fifo);
        send(&mut w.a, "afida@a", &["brandon@b", "nabilla@n"], "hi both");
        forward(&mut w.a, &mut w.b);
        send(&mut w.b, "brandon@b", &["afida@a", "nabilla@n"], "hi back");
        assert_eq!(
            forward(&mut w.b, &mut w.n),
            Accepted::Delivered { released: 0 }
        );
        assert_eq!(
            forward(&mut w.a, &mut w.n),
            Accepted::Delivered { released: 0 }
        );
        assert_eq!(senders(&w.n, "nabilla@n"), ["brandon@b", "afida@a"]);
    }

    #[test]
    fn retries_are_duplicates_and_state_survives_reopening() {
        let tmp = tempfile::tempdir().unwrap();
        let path = |d: &str| tmp.path().join(format!("{d}.db"));
        let mut a = Store::open(&path("a"), directory(), "a", Order::Causal).unwrap();
        let mut b = Store::open(&path("b"), directory(), "b", Order::Causal).unwrap();
        let text = "colons: @ signs\nand « non-ASCII »";
        send(&mut a, "afida@a", &["brandon@b", "afida@a"], text);
        let out = a.next_outbound("b").unwrap().unwrap();
        assert_eq!(
            b.accept(&out.forward, 5).unwrap().unwrap(),
            Accepted::Delivered { released: 0 }
        );
        // The OK was lost: the sender retries after a restart of both servers.
        assert_eq!(a.outbound_failed(out.qid, "connection reset").unwrap(), 1);
        drop((a, b));
        let mut a = Store::open(&path("a"), directory(), "a", Order::Causal).unwrap();
        let mut b = Store::open(&path("b"), directory(), "b", Order::Causal).unwrap();
        let again = a.next_outbound("b").unwrap().unwrap();
        assert_eq!(again.attempts, 1);
        assert_eq!(
            b.accept(&again.forward, 6).unwrap().unwrap(),
            Accepted::Duplicate
        );
        a.outbound_done(again.qid).unwrap();
        assert!(a.next_outbound("b").unwrap().is_none());
        let (mail, _) = b.read(&addr("brandon@b")).unwrap().unwrap();
        assert_eq!(mail.len(), 1);
        assert_eq!(mail[0].text, text);
        assert_eq!(mail[0].id, "a-1");
        assert_eq!(mail[0].to, vec![addr("brandon@b"), addr("afida@a")]);
        // Local mail was delivered at once, and ids go on after the restart.
        assert_eq!(senders(&a, "afida@a"), ["afida@a"]);
        assert_eq!(send(&mut a, "afida@a", &["nabilla@n"], "x").id, "a-2");
        assert_eq!(a.clock().get(0, 1), 1);
        assert_eq!(a.clock().get(0, 2), 1);
    }

    #[test]
    fn refusals_explain() {
        let mut w = world(Order::Causal);
        let sub = Submission::new(addr("brandon@b"), vec![addr("x@a")], "t".into()).unwrap();
        assert!(
            w.a.submit(&sub, 1)
                .unwrap()
                .unwrap_err()
                .contains("send as brandon@b from the server of `b`")
        );
        let sub = Submission::new(
            addr("afida@a"),
            vec![addr("x@b"), addr("y@nowhere")],
            "t".into(),
        )
        .unwrap();
        let err = w.a.submit(&sub, 1).unwrap().unwrap_err();
        assert!(err.contains("unknown domain `nowhere`"), "{err}");
        assert!(
            w.a.next_outbound("b").unwrap().is_none(),
            "nothing may be sent"
        );
        let err = w.a.read(&addr("brandon@b")).unwrap().unwrap_err();
        assert!(err.contains("at the server of `b` (h:2)"), "{err}");
        // A peer with another servers file is refused.
        send(&mut w.a, "afida@a", &["brandon@b"], "t");
        let mut out = w.a.next_outbound("b").unwrap().unwrap();
        out.forward.fingerprint = "0".into();
        assert!(
            w.b.accept(&out.forward, 1)
                .unwrap()
                .unwrap_err()
                .contains("servers files differ")
        );
        out.forward.fingerprint = directory().fingerprint();
        out.forward.stamp = vec![1];
        assert!(w.b.accept(&out.forward, 1).unwrap().is_err());
    }

    #[test]
    fn a_data_dir_belongs_to_one_domain_and_one_domain_set() {
        let tmp = tempfile::tempdir().unwrap();
        let db = tmp.path().join("m.db");
        let mut a = Store::open(&db, directory(), "a", Order::Causal).unwrap();
        drop(Store::open(&tmp.path().join("x.db"), directory(), "b", Order::Causal).unwrap());
        send(&mut a, "afida@a", &["brandon@b"], "queued");
        drop(a);
        let err = Store::open(&db, directory(), "b", Order::Causal)
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("holds the mail of domain `a`"),
            "{err}"
        );
        let other = Directory::parse("h:1:a\nh:2:b\nh:3:n\nh:4:z\n", "t").unwrap();
        let err = Store::open(&db, other, "a", Order::Causal).err().unwrap();
        assert!(err.to_string().contains("in transit"), "{err}");
        let err = Store::open(&db, directory(), "q", Order::Causal)
            .err()
            .unwrap();
        assert!(err.to_string().contains("not in the servers file"), "{err}");
    }
}
