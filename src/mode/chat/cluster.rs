//! Rooms that span every sockline instance pointed at the same Redis.
//!
//! ```text
//!  members ── node A loop ─┐ ops (bounded queue)      ┌─ subscriber A ── mailbox ─→ node A loop ── members
//!                          └→ publisher A ─ EVALSHA ─→ Redis ─ PUBLISH ─┤
//!  members ── node B loop ─→ publisher B ─ EVALSHA ─→   (one script)    └─ subscriber B ── mailbox ─→ node B loop ── members
//! ```
//!
//! Redis is each room's ordering point and the cluster's one record of
//! who is where. Every change a node makes runs one Lua script
//! (`cluster/ops.lua`) that does it atomically: a line takes the room's
//! next offset (`HINCRBY`), goes into the room's capped stream (`XADD`,
//! for history and repairs) and is published (`PUBLISH`), as Centrifugo's
//! Redis engine does; a join, a leave or a rename changes the member
//! directory and orders its notice in the room in the same step. Every
//! node, the sender's own included, delivers a room's messages only as
//! they come back from the subscription, so every member on every node
//! sees them in the one order Redis gave them: there is no local shortcut
//! that could show a node's own lines early.
//!
//! Names are unique across the cluster: the script grants a `/nick` only
//! if nobody else has the name, and default `user-N` names come from one
//! counter in Redis, in blocks, so a newcomer is named without waiting.
//! `/who`, `/rooms` and `/msg` ask Redis. A member that asks (or renames)
//! waits for the answer before its next lines are read ([`Flow::Wait`]),
//! so its lines keep their order around it.
//!
//! The event loop never waits on Redis. Two threads of this module's own do
//! all Redis I/O ([`publisher`] runs the script for ops handed to it over
//! a bounded queue; [`subscriber`] reads the room channels and this node's
//! own channel); both reach the loop only through its [`Mailbox`]. An op
//! the publisher cannot take (its queue is full) or cannot run (Redis is
//! unreachable for [`PUBLISH_PATIENCE`]) comes back to its member as one
//! `ERR not sent ...` line, never silence.
//!
//! Nothing lost, nothing doubled:
//! - The publisher retries an op until Redis takes it. Each carries its
//!   number in this run of the node; the script remembers the last one per
//!   node, so a retry after a reply lost on the way runs once. Lines that
//!   waited together go in one run of the script (one round trip), each
//!   with its own number: if one of them fails, each is run again alone.
//! - The subscriber delivers each room's messages strictly by offset: one
//!   it has seen is dropped; after a gap (a subscription that was cut, a
//!   node that lagged) the missing offsets are read back from the room's
//!   stream before going on; after it resubscribes, every room it knows is
//!   checked the same way.
//! - Redis restarted empty starts a new epoch (a random id the script sets
//!   when it finds none): nodes start counting again, members are told the
//!   cluster's history was lost, and each node enters its members again.
//! - Members are told when the link to Redis is lost and when it is back.
//!
//! Nodes come and go: each beats every [`BEAT`] (the script records the
//! time by Redis's clock). A node that has not beaten for [`DEAD`] is taken
//! for dead by the next node to beat, whose script takes its members out
//! of every room (`* NAME left (server lost)`). A node shutting down does
//! the same for its own (`server shutting down`), and a node restarted
//! under the same name for its previous run's (`server restarted`). A
//! node that was only cut off, and finds itself forgotten, enters its
//! members again.
//!
//! History (`--history N`) comes from the same streams: each node keeps the
//! last N lines of every room as they are delivered, and at start (before
//! it serves) reads every room's last N lines from Redis, so a newcomer on
//! any node gets the same lines, also after the room emptied and after
//! every server restarted.

mod publisher;
mod subscriber;

use super::private_line;
use super::rooms::{Ask, Leaving, LocalRooms, MessageKind, Rooms, Settled, left_notice};
use crate::protocol::ConnId;
use crate::{Flow, Mailbox, Message, Output};
use publisher::{Link, Op};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

/// Ops waiting for the publisher, at most.
const PUBLISH_QUEUE: usize = 1024;
/// How long a node waits at start for its subscription, before it serves
/// anyway (and tells members the link is down until it is up).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts to reach Redis again.
const RETRY: Duration = Duration::from_millis(200);
/// How long the publisher keeps trying one op before its member is told
/// it was not sent (and the next one's turn comes).
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// A room's stream keeps at least this many messages, for repairs.
const REPAIR_WINDOW: usize = 10_000;
/// How often a node tells Redis it is alive.
pub const BEAT: Duration = Duration::from_secs(3);
/// A node silent this long is taken for dead, its members out of every
/// room: within `DEAD + BEAT` of its last beat.
pub const DEAD: Duration = Duration::from_secs(15);
/// Default names taken from Redis at a time; another block is asked for
/// when fewer than a quarter are left.
const USERS_BLOCK: u64 = 64;

/// What the Redis threads post to the event loop (or to one member).
#[derive(Debug)]
pub enum ClusterEvent {
    /// A message in its place in its room's order.
    Delivered(Delivery),
    /// A message that was not published: its sender is told why.
    NotSent {
        /// Who sent it.
        to: ConnId,
        /// Why, in a few words.
        why: &'static str,
    },
    /// Something every member on this node should know, as a `* ` line.
    Notice(&'static str),
    /// A private message for a member here.
    Private {
        /// For whom.
        to: ConnId,
        /// `*FROM* TEXT`.
        msg: Message,
    },
    /// The answer a member waited for (posted to that member).
    Answer(Answer),
    /// A member that entered found its name taken elsewhere, and got this
    /// one instead.
    Renamed {
        /// Whose name.
        member: ConnId,
        /// Its new name.
        name: String,
    },
    /// Default names `user-FIRST` to `user-LAST` are this node's to give.
    Users {
        /// The first.
        first: u64,
        /// The last (before `first`: none came).
        last: u64,
    },
    /// The cluster forgot this node (taken for dead, or Redis restarted
    /// empty): its members enter again.
    Reenter,
}

/// An answer from Redis to a member's question.
#[derive(Debug)]
pub enum Answer {
    /// Lines for the member.
    Lines(Vec<Vec<u8>>),
    /// Its `/nick` was granted.
    Named(String),
    /// Its `/nick` was refused: the name is someone else's.
    Taken,
}

/// A room message as it came back from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The room.
    pub room: String,
    /// Its offset in the room's order.
    pub offset: u64,
    /// The node its sender is on.
    pub node: String,
    /// Its sender, on that node.
    pub from: ConnId,
    /// Line or notice.
    pub kind: MessageKind,
    /// The payload.
    pub msg: Message,
}

/// Link notices.
const LINK_LOST: &str = "* cluster link lost: lines wait and go out when it is back";
const LINK_BACK: &str = "* cluster link back";
const HISTORY_LOST: &str = "* the cluster's store restarted empty: its history was lost";
const BUSY: &[u8] = b"ERR not sent: the cluster link is busy";

/// Rooms ordered by Redis; members are this node's, in [`LocalRooms`].
#[derive(Clone)]
pub struct RedisRooms {
    local: LocalRooms,
    url: Target,
    node: Arc<str>,
    history: usize,
    /// To the publisher; set by `start`.
    link: Option<SyncSender<Op>>,
    /// This node's members, by name and room: entered again if the
    /// cluster forgot this node.
    present: HashMap<ConnId, (String, String)>,
    /// Default names `user-N` left to give: `N` in `users.0 ..= users.1`.
    users: (u64, u64),
    /// A block of default names is on its way.
    asked_users: bool,
    /// This node is shutting down and said so: nothing more is delivered
    /// to its members (who are leaving).
    departed: bool,
}

impl RedisRooms {
    /// Rooms through the Redis at `url` (`redis://[user:password@]host:port[/db]`,
    /// or `rediss://` for TLS), as node `node`, keeping `history` lines per room.
    pub fn new(url: &str, node: &str, local: LocalRooms, history: usize) -> Self {
        RedisRooms {
            local,
            url: Target {
                url: url.to_owned(),
                tls: None,
            },
            node: node.into(),
            history,
            link: None,
            present: HashMap::new(),
            users: (1, 0),
            asked_users: false,
            departed: false,
        }
    }

    /// Hands `op` to the publisher; false if it cannot take it now.
    fn submit(&self, op: Op) -> bool {
        self.link
            .as_ref()
            .is_some_and(|link| link.try_send(op).is_ok())
    }

    /// `msg` to every member of this node.
    fn tell_all(&self, msg: &Message, out: &mut Output) {
        for member in self.present.keys() {
            out.send(*member, msg);
        }
    }
}

impl RedisRooms {
    /// With a `rediss://` URL: trust the CA in `certs` instead of the
    /// system's roots, and/or present its client certificate (mutual TLS).
    pub fn tls(mut self, certs: redis::TlsCertificates) -> Self {
        self.url.tls = Some(certs);
        self
    }
}

/// Checks `url` (and `tls`, as [`RedisRooms::tls`] takes it) without
/// connecting, for a clear error at start.
pub fn check_url(url: &str, tls: Option<&redis::TlsCertificates>) -> Result<(), String> {
    let target = Target {
        url: url.to_owned(),
        tls: tls.cloned(),
    };
    target
        .client()
        .map(drop)
        .map_err(|e| format!("bad Redis URL {url}: {e}"))
}

/// Where Redis is: its URL and, for `rediss://`, the certificates to trust
/// and to present. Shown as its URL.
#[derive(Clone)]
struct Target {
    url: String,
    tls: Option<redis::TlsCertificates>,
}

impl Target {
    fn client(&self) -> redis::RedisResult<redis::Client> {
        // redis-rs builds its rustls config with the process's default
        // provider: make that ring (our only one) before it looks.
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        match &self.tls {
            None => redis::Client::open(self.url.as_str()),
            Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs.clone()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Rooms for RedisRooms {
    type Event = ClusterEvent;

    fn start(&mut self, mailbox: Mailbox<ClusterEvent>) {
        let mut link = Link::new(
            self.url.clone(),
            &self.node,
            self.history.max(REPAIR_WINDOW),
        );
        // Before serving: this run of the node is known (and an earlier
        // run's members are gone), and it has default names to give.
        if let Some(first) = link.start() {
            self.users = (first, first + USERS_BLOCK - 1);
        }
        let (ops, queue) = sync_channel(PUBLISH_QUEUE);
        self.link = Some(ops);
        let (subscribed, ready) = sync_channel(1);
        let (url, node, history) = (self.url.clone(), self.node.clone(), self.history);
        let posts = mailbox.clone();
        let spawned = std::thread::Builder::new()
            .name("redis-sub".into())
            .spawn(move || subscriber::run(&url, &node, history, &posts, &subscribed))
            .and_then(|_| {
                std::thread::Builder::new()
                    .name("redis-pub".into())
                    .spawn(move || publisher::run(link, &queue, &mailbox))
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the Redis threads");
            return;
        }
        // Before serving (not while): a node that published before it
        // listened would miss its own first messages.
        if ready.recv_timeout(SUBSCRIBE_WAIT).is_err() {
            tracing::warn!(url = %self.url, "Redis not reachable yet; serving, and retrying");
        }
    }

    fn event(&mut self, event: ClusterEvent, out: &mut Output) -> Option<Settled> {
        match event {
            ClusterEvent::Delivered(d) if !self.departed => {
                // Our own member's message: not back to its sender.
                let from = match *d.node == *self.node {
                    true => d.from,
                    false => ConnId::nobody(),
                };
                self.local.deliver(&d.room, from, d.kind, &d.msg, out);
            }
            ClusterEvent::Delivered(_) => {}
            ClusterEvent::NotSent { to, why } => {
                let line = format!("ERR not sent: {why}");
                out.send(to, &Message::from(line.as_bytes()));
            }
            ClusterEvent::Notice(text) => self.tell_all(&Message::from(text.as_bytes()), out),
            ClusterEvent::Private { to, msg } => out.send(to, &msg),
            ClusterEvent::Answer(Answer::Lines(lines)) => {
                lines.iter().for_each(|line| out.line(line));
            }
            ClusterEvent::Answer(Answer::Named(name)) => {
                return self.renamed(out.id(), name);
            }
            ClusterEvent::Answer(Answer::Taken) => {
                return Some(Settled::Taken { member: out.id() });
            }
            ClusterEvent::Renamed { member, name } => return self.renamed(member, name),
            ClusterEvent::Users { first, last } => {
                self.asked_users = false;
                if first <= last {
                    self.users = (first, last);
                }
            }
            ClusterEvent::Reenter if !self.departed => {
                for (&from, (name, room)) in &self.present {
                    let (room, name) = (room.clone(), name.clone());
                    if !self.submit(Op::Enter { room, from, name }) {
                        tracing::warn!("the cluster link is busy: a member was not entered again");
                    }
                }
            }
            // Shutting down: its members are leaving.
            ClusterEvent::Reenter => {}
        }
        None
    }

    fn default_name(&mut self) -> Option<String> {
        let (next, last) = self.users;
        if next > last {
            return None; // the script renames it if it clashes
        }
        self.users.0 += 1;
        if !self.asked_users && last - next < USERS_BLOCK / 4 {
            self.asked_users = self.submit(Op::Users(USERS_BLOCK));
        }
        Some(format!("user-{next}"))
    }

    fn ask(&mut self, member: ConnId, ask: Ask<'_>, out: &mut Output) -> Option<Flow> {
        let op = match ask {
            Ask::Nick { room, old, new } => Op::Nick {
                room: room.to_owned(),
                from: member,
                old: old.to_owned(),
                new: new.to_owned(),
            },
            Ask::Who(room) => Op::Who {
                from: member,
                room: room.to_owned(),
            },
            Ask::Rooms => Op::Rooms { from: member },
            Ask::Msg { from, to, text } => Op::Msg {
                from: member,
                to: to.to_owned(),
                line: private_line(from, text),
            },
        };
        if self.submit(op) {
            return Some(Flow::Wait);
        }
        out.line(BUSY);
        Some(Flow::Continue)
    }

    fn enter(&mut self, room: &str, member: ConnId, name: &str, out: &mut Output) -> Vec<Message> {
        self.present
            .insert(member, (name.to_owned(), room.to_owned()));
        let (room, name) = (room.to_owned(), name.to_owned());
        let entered = Op::Enter {
            room: room.clone(),
            from: member,
            name,
        };
        if !self.submit(entered) {
            out.line(BUSY);
        }
        self.local.join(&room, member)
    }

    fn exit(&mut self, room: &str, member: ConnId, name: &str, why: Leaving, _out: &mut Output) {
        self.local.leave(room, member);
        self.present.remove(&member);
        let op = match why {
            // Once for all of this node's members, who all leave.
            Leaving::Shutdown if self.departed => return,
            Leaving::Shutdown => {
                self.departed = true;
                Op::Depart("server shutting down")
            }
            _ => Op::Exit {
                room: room.to_owned(),
                from: member,
                name: name.to_owned(),
                notice: left_notice(name, why),
            },
        };
        if !self.submit(op) {
            tracing::warn!(name, "the cluster link is busy: a leave was not told");
        }
    }

    fn join(&mut self, room: &str, member: ConnId) -> Vec<Message> {
        self.local.join(room, member)
    }

    fn leave(&mut self, room: &str, member: ConnId) {
        self.local.leave(room, member);
    }

    fn publish(
        &mut self,
        room: &str,
        from: ConnId,
        kind: MessageKind,
        msg: &Message,
        out: &mut Output,
    ) {
        if self.link.is_none() {
            // Not started (a test without a loop): order here.
            self.local.deliver(room, from, kind, msg, out);
            return;
        }
        let say = Op::Say {
            room: room.to_owned(),
            from,
            kind,
            msg: msg.clone(),
        };
        if !self.submit(say) {
            // In line with the sender's replies when it is the one served.
            match out.id() == from {
                true => out.line(BUSY),
                false => out.send(from, &Message::from(BUSY)),
            }
        }
    }

    fn deliver(
        &mut self,
        room: &str,
        from: ConnId,
        kind: MessageKind,
        msg: &Message,
        out: &mut Output,
    ) {
        self.local.deliver(room, from, kind, msg, out);
    }

    fn members(&self, room: &str) -> Vec<ConnId> {
        self.local.members(room)
    }

    fn list(&self) -> Vec<(String, usize)> {
        self.local.list()
    }
}

impl RedisRooms {
    /// Member `member` is now called `name` in the cluster.
    fn renamed(&mut self, member: ConnId, name: String) -> Option<Settled> {
        if let Some((known, _)) = self.present.get_mut(&member) {
            known.clone_from(&name);
        }
        Some(Settled::Named { member, name })
    }
}

/// A published message: `epoch \t offset \t node \t from \t kind \t
/// payload`; the epoch goes apart.
fn decode(room: &str, message: &[u8]) -> Option<(String, Delivery)> {
    let mut fields = message.splitn(6, |&b| b == b'\t');
    let mut text = || std::str::from_utf8(fields.next()?).ok();
    let epoch = text()?.to_owned();
    let offset = text()?.parse().ok()?;
    let node = text()?.to_owned();
    let from = ConnId::unpack(text()?.parse().ok()?);
    let kind = match text()? {
        "L" => MessageKind::Line,
        "N" => MessageKind::Notice,
        _ => return None,
    };
    let msg = Message::from(fields.next()?);
    let delivery = Delivery {
        room: room.to_owned(),
        offset,
        node,
        from,
        kind,
        msg,
    };
    Some((epoch, delivery))
}

/// Key prefix of everything sockline keeps in Redis.
const PREFIX: &str = "sockline";

fn epoch_key() -> String {
    format!("{PREFIX}:epoch")
}

fn offsets_key() -> String {
    format!("{PREFIX}:offsets")
}

fn stream_key(room: &str) -> String {
    format!("{PREFIX}:stream:{room}")
}

fn channel(room: &str) -> String {
    format!("{PREFIX}:room:{room}")
}

/// The channel of private messages to `node`'s members.
fn node_channel(node: &str) -> String {
    format!("{PREFIX}:node:{node}")
}

/// Posts `event` (to `to`, or to the loop), waiting on this thread, not
/// the loop's, while the mailbox is full; false once the loop is gone.
fn post(mailbox: &Mailbox<ClusterEvent>, to: Option<ConnId>, mut event: ClusterEvent) -> bool {
    use crate::mailbox::Refused;
    loop {
        let posted = match to {
            Some(to) => mailbox.post(to, event),
            None => mailbox.post_loop(event),
        };
        match posted {
            Ok(()) => return true,
            Err(Refused::Full(back)) => {
                event = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Refused::Closed(_)) => return false,
        }
    }
}

/// A connection to Redis; a failure is logged only when `down` is false
/// (then set), so that retrying every 200 ms does not flood the log.
fn connect(url: &Target, down: &mut bool) -> Option<redis::Connection> {
    let client = url.client().ok()?;
    match client.get_connection_with_timeout(Duration::from_secs(2)) {
        Ok(connection) => {
            *down = false;
            Some(connection)
        }
        Err(e) => {
            if !std::mem::replace(down, true) {
                tracing::warn!(
                    %url,
                    error = %e,
                    retry_ms = RETRY.as_millis() as u64,
                    "Redis unreachable; retrying"
                );
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_round_trip_through_their_encoding() {
        let from = ConnId::new(7, 3);
        let mut published = format!("e1\t42\tnode-1\t{}\tL\t", from.pack()).into_bytes();
        published.extend_from_slice(b"bob: a\ttab and \xff");
        let (epoch, got) = decode("lobby", &published).unwrap();
        assert_eq!(epoch, "e1");
        assert_eq!(
            got,
            Delivery {
                room: "lobby".into(),
                offset: 42,
                node: "node-1".into(),
                from,
                kind: MessageKind::Line,
                msg: Message::from(&b"bob: a\ttab and \xff"[..]),
            }
        );
        assert_eq!(decode("lobby", b"garbage"), None);
    }
}
