//! Rooms that span every sockline instance pointed at the same Redis.
//!
//! Redis is each room's ordering point. A member's message goes to a Lua
//! script that, in one atomic step, takes the room's next offset
//! (`HINCRBY`), appends the message to the room's capped stream (`XADD`,
//! for history and repairs) and publishes it (`PUBLISH`), as Centrifugo's
//! Redis engine does. Every node, the sender's own included, delivers a
//! room's messages only as they come back from the subscription, so every
//! member on every node sees them in the one order Redis gave them: there is
//! no local shortcut that could show a node's own lines early.
//!
//! The event loop never waits on Redis. Two threads of this module's own do
//! all Redis I/O: the publisher runs the script for messages handed to it
//! over a bounded queue, the subscriber reads the room channels; both reach
//! the loop only through its [`Mailbox`]. A message the publisher cannot take
//! (its queue is full) or cannot send (Redis is unreachable) comes back to
//! its sender as one `ERR not sent ...` line, never silence.
//!
//! Nothing lost, nothing doubled:
//! - The publisher retries a message until Redis takes it (for up to
//!   [`PUBLISH_PATIENCE`]; then its sender gets `ERR not sent`). Each
//!   message carries an id the script remembers for a few minutes, so a
//!   retry after a reply that was lost on the way is not published twice.
//! - The subscriber delivers each room's messages strictly by offset: one
//!   it has seen is dropped; after a gap (a subscription that was cut, a
//!   node that lagged) the missing offsets are read back from the room's
//!   stream, whose entries are keyed by offset, before going on; after it
//!   resubscribes, every room it knows is checked the same way.
//! - Redis restarted empty starts a new epoch (a random id the script sets
//!   when it finds none): nodes start counting again, and members are told
//!   the cluster's history was lost.
//! - Members are told when the link to Redis is lost and when it is back.
//!
//! History (`--history N`) comes from the same streams: each node keeps the
//! last N lines of every room as they are delivered, and at start (before
//! it serves) reads every room's last N lines from Redis, so a newcomer on
//! any node gets the same lines, also after the room emptied and after
//! every server restarted.
//!
//! Not done yet: names, `/who` and `/rooms` are per node; a node that dies
//! is not yet noticed by the others.

use super::rooms::{LocalRooms, MessageKind, Rooms};
use crate::mailbox::Refused;
use crate::protocol::ConnId;
use crate::{Mailbox, Message, Output};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::Duration;

/// Messages waiting for the publisher, at most.
const PUBLISH_QUEUE: usize = 1024;
/// Key prefix of everything sockline keeps in Redis.
const PREFIX: &str = "sockline";
/// How long a node waits at start for its subscription, before it serves
/// anyway (and tells members the link is down until it is up).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts to reach Redis again.
const RETRY: Duration = Duration::from_millis(200);

/// How long the publisher keeps trying one message before its sender is
/// told it was not sent (and the next one's turn comes).
pub const PUBLISH_PATIENCE: Duration = Duration::from_secs(30);
/// A room's stream keeps at least this many messages, for repairs.
const REPAIR_WINDOW: usize = 10_000;

/// The ordering step: epoch, offset, stream, publish, atomically; a message
/// id seen before returns its offset without publishing again.
/// KEYS: epoch, offsets hash, the room's stream, the room's channel, the
/// message id's key.
/// ARGV: room, the message (without epoch and offset), stream length, a
/// fresh epoch in case there is none.
const PUBLISH_SCRIPT: &str = r#"
local done = redis.call('GET', KEYS[5])
if done then return tonumber(done) end
local epoch = redis.call('GET', KEYS[1])
if not epoch then
  epoch = ARGV[4]
  redis.call('SET', KEYS[1], epoch)
end
local offset = redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
local message = epoch .. '\t' .. offset .. '\t' .. ARGV[2]
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], offset .. '-1', 'm', message)
redis.call('PUBLISH', KEYS[4], message)
redis.call('SET', KEYS[5], offset, 'EX', 300)
return offset
"#;

/// What the Redis threads post to the event loop.
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

/// A message for the publisher thread.
struct Publish {
    room: String,
    from: ConnId,
    /// `node \t from \t kind \t payload`, as published after the offset.
    body: Vec<u8>,
}

/// Rooms ordered by Redis; members are this node's, in [`LocalRooms`].
#[derive(Clone)]
pub struct RedisRooms {
    local: LocalRooms,
    url: Target,
    node: Arc<str>,
    history: usize,
    /// To the publisher; set by `start`.
    link: Option<SyncSender<Publish>>,
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
        }
    }

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
        let (link, queue) = sync_channel(PUBLISH_QUEUE);
        self.link = Some(link);
        let (subscribed, ready) = sync_channel(1);
        let (url, node) = (self.url.clone(), self.node.clone());
        let history = self.history;
        let posts = mailbox.clone();
        let spawned = std::thread::Builder::new()
            .name("redis-sub".into())
            .spawn(move || subscriber(&url, history, &posts, &subscribed))
            .and_then(|_| {
                let url = self.url.clone();
                std::thread::Builder::new()
                    .name("redis-pub".into())
                    .spawn(move || publisher(&url, &node, history, &queue, &mailbox))
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the Redis threads: {e}");
            return;
        }
        // Before serving (not while): a node that published before it
        // listened would miss its own first messages.
        if ready.recv_timeout(SUBSCRIBE_WAIT).is_err() {
            tracing::warn!(url = %self.url, "Redis not reachable yet; serving, and retrying");
        }
    }

    fn event(&mut self, event: ClusterEvent, out: &mut Output) {
        match event {
            ClusterEvent::Delivered(d) => {
                // Our own member's message: not back to its sender.
                let from = match *d.node == *self.node {
                    true => d.from,
                    false => ConnId::nobody(),
                };
                self.local.deliver(&d.room, from, d.kind, &d.msg, out);
            }
            ClusterEvent::NotSent { to, why } => {
                out.send(
                    to,
                    &Message::from(format!("ERR not sent: {why}").as_bytes()),
                );
            }
            ClusterEvent::Notice(text) => {
                let notice = Message::from(text.as_bytes());
                for (room, _) in self.local.list() {
                    for member in self.local.members(&room) {
                        out.send(member, &notice);
                    }
                }
            }
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
        let Some(link) = &self.link else {
            // Not started (a test without a loop): order here.
            self.local.deliver(room, from, kind, msg, out);
            return;
        };
        let body = encode(&self.node, from, kind, msg);
        let publish = Publish {
            room: room.to_owned(),
            from,
            body,
        };
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = link.try_send(publish) {
            let why = b"ERR not sent: the cluster link is busy";
            // In line with the sender's replies when it is the one served.
            match out.id() == from {
                true => out.line(why),
                false => out.send(from, &Message::from(&why[..])),
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

/// `node \t from \t kind \t payload`.
fn encode(node: &str, from: ConnId, kind: MessageKind, msg: &[u8]) -> Vec<u8> {
    let kind = match kind {
        MessageKind::Line => 'L',
        MessageKind::Notice => 'N',
    };
    let mut body = format!("{node}\t{}\t{kind}\t", from.pack()).into_bytes();
    body.extend_from_slice(msg);
    body
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

fn epoch_key() -> String {
    format!("{PREFIX}:epoch")
}

fn sent_key(id: &str) -> String {
    format!("{PREFIX}:sent:{id}")
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

/// Posts `event`, waiting (on this thread, not the loop's) while the
/// mailbox is full; false once the loop is gone.
fn post_loop(mailbox: &Mailbox<ClusterEvent>, mut event: ClusterEvent) -> bool {
    loop {
        match mailbox.post_loop(event) {
            Ok(()) => return true,
            Err(Refused::Full(back)) => {
                event = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Refused::Closed(_)) => return false,
        }
    }
}

/// The publisher thread: runs the ordering script for each message, in the
/// order they were handed over, retrying each until Redis takes it or
/// [`PUBLISH_PATIENCE`] runs out (then its sender is told).
fn publisher(
    url: &Target,
    node: &str,
    history: usize,
    queue: &Receiver<Publish>,
    mailbox: &Mailbox<ClusterEvent>,
) {
    let script = redis::Script::new(PUBLISH_SCRIPT);
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos());
    let length = history.max(REPAIR_WINDOW);
    let (mut connection, mut down) = (None, false);
    for (count, publish) in queue.iter().enumerate() {
        // Unique across restarts of a node of the same name.
        let id = format!("{node}:{started:x}:{count}");
        let deadline = std::time::Instant::now() + PUBLISH_PATIENCE;
        loop {
            if connection.is_none() {
                connection = connect(url, &mut down);
            }
            let sent: redis::RedisResult<u64> = match connection.as_mut() {
                Some(con) => script
                    .key(epoch_key())
                    .key(offsets_key())
                    .key(stream_key(&publish.room))
                    .key(channel(&publish.room))
                    .key(sent_key(&id))
                    .arg(&publish.room)
                    .arg(&publish.body)
                    .arg(length)
                    .arg(fresh_epoch())
                    .invoke(con),
                None => Err(redis::RedisError::from(std::io::Error::other(
                    "no connection",
                ))),
            };
            match sent {
                Ok(_) => break,
                Err(e) => {
                    if connection.take().is_some() {
                        tracing::warn!(node, "Redis: cannot publish: {e}");
                    }
                    if std::time::Instant::now() >= deadline {
                        let (to, why) = (publish.from, "the cluster link is down");
                        if !post_loop(mailbox, ClusterEvent::NotSent { to, why }) {
                            return;
                        }
                        break;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
    }
}

/// An epoch for the script to set if Redis has none (it started empty):
/// never one used before, so every node sees the change.
fn fresh_epoch() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos());
    format!("{now:x}-{:x}", std::process::id())
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
                    "Redis at {url}: {e}; retrying every {} ms",
                    RETRY.as_millis()
                );
            }
            None
        }
    }
}

/// The subscriber thread: every room channel; each room's messages posted
/// to the loop in offset order, exactly once, gaps repaired from the
/// room's stream; resubscribes after a failure (and checks every room it
/// knows for what it missed). `subscribed` hears once the first
/// subscription stands.
fn subscriber(
    url: &Target,
    history: usize,
    mailbox: &Mailbox<ClusterEvent>,
    subscribed: &SyncSender<()>,
) {
    let pattern = channel("*");
    let prefix = channel("");
    let mut order = Order::default();
    let mut lost = false;
    let mut loaded = false;
    let mut down = false;
    loop {
        let (Some(mut connection), Some(mut commands)) =
            (connect(url, &mut down), connect(url, &mut down))
        else {
            std::thread::sleep(RETRY);
            continue;
        };
        let mut pubsub = connection.as_pubsub();
        if let Err(e) = pubsub.psubscribe(&pattern) {
            tracing::warn!("Redis: cannot subscribe: {e}");
            std::thread::sleep(RETRY);
            continue;
        }
        // Once, before serving: every room's last lines, so that whoever
        // joins gets them, also after every server restarted.
        if !loaded && history > 0 {
            if !order.load_history(&mut commands, history, mailbox) {
                return;
            }
            loaded = true;
        }
        let _ = subscribed.try_send(());
        // What was published while we were not listening.
        if !order.catch_up(&mut commands, mailbox) {
            return;
        }
        if std::mem::take(&mut lost) && !post_loop(mailbox, ClusterEvent::Notice(LINK_BACK)) {
            return;
        }
        loop {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!("Redis: subscription lost: {e}");
                    break;
                }
            };
            let channel = message.get_channel_name();
            let Some(room) = channel.strip_prefix(&prefix) else {
                continue;
            };
            let Some((epoch, delivery)) = decode(room, message.get_payload_bytes()) else {
                tracing::warn!(channel, "Redis: a message sockline did not write");
                continue;
            };
            if !order.receive(&epoch, delivery, &mut commands, mailbox) {
                return;
            }
        }
        lost = true;
        if !post_loop(mailbox, ClusterEvent::Notice(LINK_LOST)) {
            return;
        }
        std::thread::sleep(RETRY);
    }
}

/// Where each room's order stands on this node.
#[derive(Default)]
struct Order {
    epoch: Option<String>,
    /// The last offset delivered, per room.
    last: std::collections::HashMap<String, u64>,
}

/// A stream entry as XRANGE returns it: its id, and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

impl Order {
    /// Delivers `delivery` in its place: drops one seen before, first
    /// repairs a gap before it. False once the loop is gone.
    fn receive(
        &mut self,
        epoch: &str,
        delivery: Delivery,
        commands: &mut redis::Connection,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        if self.epoch.as_deref() != Some(epoch) {
            let restarted = self.epoch.is_some();
            self.epoch = Some(epoch.to_owned());
            self.last.clear();
            if restarted && !post_loop(mailbox, ClusterEvent::Notice(HISTORY_LOST)) {
                return false;
            }
        }
        let offset = delivery.offset;
        let last = self.last.get(&delivery.room).copied();
        if last.is_some_and(|last| offset <= last) {
            return true; // seen before (a repair got it first)
        }
        if let Some(last) = last
            && offset > last + 1
            && !self.repair(&delivery.room, last, offset - 1, commands, mailbox)
        {
            return false;
        }
        self.last.insert(delivery.room.clone(), offset);
        post_loop(mailbox, ClusterEvent::Delivered(delivery))
    }

    /// Reads offsets `after + 1 ..= upto` of `room` back from its stream
    /// and delivers them.
    fn repair(
        &mut self,
        room: &str,
        after: u64,
        upto: u64,
        commands: &mut redis::Connection,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        let entries: redis::RedisResult<Vec<Entry>> = redis::cmd("XRANGE")
            .arg(stream_key(room))
            .arg(format!("{}-1", after + 1))
            .arg(format!("{upto}-1"))
            .query(commands);
        let entries = entries.unwrap_or_else(|e| {
            tracing::warn!(
                room,
                "Redis: cannot repair offsets {}..={upto}: {e}",
                after + 1
            );
            Vec::new()
        });
        let mut next = after + 1;
        for (_, fields) in entries {
            let Some((_, message)) = fields.into_iter().find(|(name, _)| name == "m") else {
                continue;
            };
            let Some((_, delivery)) = decode(room, &message) else {
                continue;
            };
            if delivery.offset < next {
                continue;
            }
            next = delivery.offset + 1;
            self.last.insert(room.to_owned(), delivery.offset);
            if !post_loop(mailbox, ClusterEvent::Delivered(delivery)) {
                return false;
            }
        }
        if next <= upto {
            tracing::warn!(
                room,
                "Redis: offsets {next}..={upto} are gone from the stream"
            );
            self.last.insert(room.to_owned(), upto);
        }
        true
    }

    /// Reads the last `history` messages of every room's stream and
    /// delivers them (there are no members yet: they become each room's
    /// history); live messages follow from there.
    fn load_history(
        &mut self,
        commands: &mut redis::Connection,
        history: usize,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        let prefix = stream_key("");
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let page: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(1000)
                .query(commands);
            let Ok((next, found)) = page else {
                tracing::warn!("Redis: cannot list the rooms' history");
                return true;
            };
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for key in keys {
            let Some(room) = key.strip_prefix(&prefix) else {
                continue;
            };
            // Newest first, a page at a time, until `history` lines (the
            // stream holds notices too).
            let (mut lines, mut newest, mut end) = (Vec::new(), None, "+".to_owned());
            while lines.len() < history {
                let page: redis::RedisResult<Vec<Entry>> = redis::cmd("XREVRANGE")
                    .arg(&key)
                    .arg(&end)
                    .arg("-")
                    .arg("COUNT")
                    .arg(256)
                    .query(commands);
                let page = page.unwrap_or_default();
                let Some((last_id, _)) = page.last() else {
                    break;
                };
                end = format!("({last_id}");
                for (_, fields) in page {
                    let message = fields.into_iter().find(|(name, _)| name == "m");
                    let Some((epoch, delivery)) = message.and_then(|(_, m)| decode(room, &m))
                    else {
                        continue;
                    };
                    self.epoch.get_or_insert(epoch);
                    newest.get_or_insert(delivery.offset);
                    if delivery.kind == MessageKind::Line && lines.len() < history {
                        lines.push(delivery);
                    }
                }
            }
            if let Some(newest) = newest {
                self.last.insert(room.to_owned(), newest);
            }
            for delivery in lines.into_iter().rev() {
                if !post_loop(mailbox, ClusterEvent::Delivered(delivery)) {
                    return false;
                }
            }
        }
        true
    }

    /// After (re)subscribing: each known room's current offset, and what
    /// was missed before it.
    fn catch_up(
        &mut self,
        commands: &mut redis::Connection,
        mailbox: &Mailbox<ClusterEvent>,
    ) -> bool {
        let epoch: redis::RedisResult<Option<String>> =
            redis::cmd("GET").arg(epoch_key()).query(commands);
        if let Ok(Some(epoch)) = epoch
            && self.epoch.as_ref().is_some_and(|known| *known != epoch)
        {
            // Restarted empty: counting starts again.
            self.epoch = Some(epoch);
            self.last.clear();
            return post_loop(mailbox, ClusterEvent::Notice(HISTORY_LOST));
        }
        let rooms: Vec<(String, u64)> = self.last.iter().map(|(r, o)| (r.clone(), *o)).collect();
        for (room, last) in rooms {
            let now: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
                .arg(offsets_key())
                .arg(&room)
                .query(commands);
            if let Ok(Some(now)) = now
                && now > last
                && !self.repair(&room, last, now, commands, mailbox)
            {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_round_trip_through_their_encoding() {
        let from = ConnId::new(7, 3);
        let body = encode("node-1", from, MessageKind::Line, b"bob: a\ttab and \xff");
        let mut published = b"e1\t42\t".to_vec();
        published.extend_from_slice(&body);
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
