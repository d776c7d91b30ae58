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
//! What this first step does not do yet, and says so: names and `/who` are
//! per node; history is per node (the stream is written, not yet read); a
//! lost subscription is resubscribed, but messages published meanwhile are
//! not repaired from the stream.

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

/// The ordering step: offset, stream, publish, atomically.
/// KEYS: offsets hash, the room's stream, the room's channel.
/// ARGV: room, the message (without its offset), stream length (0: none).
const PUBLISH_SCRIPT: &str = r#"
local offset = redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
local message = offset .. '\t' .. ARGV[2]
if tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'm', message)
end
redis.call('PUBLISH', KEYS[3], message)
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
    url: String,
    node: Arc<str>,
    history: usize,
    /// To the publisher; set by `start`.
    link: Option<SyncSender<Publish>>,
}

impl RedisRooms {
    /// Rooms through the Redis at `url` (`redis://[user:password@]host:port[/db]`),
    /// as node `node`, keeping `history` lines per room.
    pub fn new(url: &str, node: &str, local: LocalRooms, history: usize) -> Self {
        RedisRooms {
            local,
            url: url.to_owned(),
            node: node.into(),
            history,
            link: None,
        }
    }
}

/// Checks `url` without connecting, for a clear error at start.
pub fn check_url(url: &str) -> Result<(), String> {
    redis::Client::open(url)
        .map(drop)
        .map_err(|e| format!("bad Redis URL {url}: {e}"))
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
            .spawn(move || subscriber(&url, &posts, &subscribed))
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
            let why = Message::from(&b"ERR not sent: the cluster link is busy"[..]);
            out.send(from, &why);
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

/// A published message: `offset \t node \t from \t kind \t payload`.
fn decode(room: &str, message: &[u8]) -> Option<Delivery> {
    let mut fields = message.splitn(5, |&b| b == b'\t');
    let mut text = || std::str::from_utf8(fields.next()?).ok();
    let offset = text()?.parse().ok()?;
    let node = text()?.to_owned();
    let from = ConnId::unpack(text()?.parse().ok()?);
    let kind = match text()? {
        "L" => MessageKind::Line,
        "N" => MessageKind::Notice,
        _ => return None,
    };
    let msg = Message::from(fields.next()?);
    Some(Delivery {
        room: room.to_owned(),
        offset,
        node,
        from,
        kind,
        msg,
    })
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
/// order they were handed over; a message it cannot publish is reported
/// to its sender.
fn publisher(
    url: &str,
    node: &str,
    history: usize,
    queue: &Receiver<Publish>,
    mailbox: &Mailbox<ClusterEvent>,
) {
    let script = redis::Script::new(PUBLISH_SCRIPT);
    let mut connection = None;
    for publish in queue {
        if connection.is_none() {
            connection = connect(url);
        }
        let Some(con) = connection.as_mut() else {
            let to = publish.from;
            let why = "the cluster link is down";
            if !post_loop(mailbox, ClusterEvent::NotSent { to, why }) {
                return;
            }
            continue;
        };
        let sent: redis::RedisResult<u64> = script
            .key(offsets_key())
            .key(stream_key(&publish.room))
            .key(channel(&publish.room))
            .arg(&publish.room)
            .arg(&publish.body)
            .arg(history)
            .invoke(con);
        if let Err(e) = sent {
            tracing::warn!(node, "Redis: cannot publish: {e}");
            connection = None;
            let (to, why) = (publish.from, "the cluster link failed");
            if !post_loop(mailbox, ClusterEvent::NotSent { to, why }) {
                return;
            }
        }
    }
}

fn connect(url: &str) -> Option<redis::Connection> {
    let client = redis::Client::open(url).ok()?;
    match client.get_connection_with_timeout(Duration::from_secs(2)) {
        Ok(connection) => Some(connection),
        Err(e) => {
            tracing::warn!("Redis at {url}: {e}");
            None
        }
    }
}

/// The subscriber thread: every room channel, each message posted to the
/// loop in the order Redis sends them; resubscribes after a failure.
/// `subscribed` hears once the first subscription stands.
fn subscriber(url: &str, mailbox: &Mailbox<ClusterEvent>, subscribed: &SyncSender<()>) {
    let pattern = channel("*");
    let prefix = channel("");
    loop {
        let Some(mut connection) = connect(url) else {
            std::thread::sleep(RETRY);
            continue;
        };
        let mut pubsub = connection.as_pubsub();
        if let Err(e) = pubsub.psubscribe(&pattern) {
            tracing::warn!("Redis: cannot subscribe: {e}");
            std::thread::sleep(RETRY);
            continue;
        }
        let _ = subscribed.try_send(());
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
            let Some(delivery) = decode(room, message.get_payload_bytes()) else {
                tracing::warn!(channel, "Redis: a message sockline did not write");
                continue;
            };
            if !post_loop(mailbox, ClusterEvent::Delivered(delivery)) {
                return;
            }
        }
        std::thread::sleep(RETRY);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_the_round_trip_through_their_encoding() {
        let from = ConnId::new(7, 3);
        let body = encode("node-1", from, MessageKind::Line, b"bob: a\ttab and \xff");
        let mut published = b"42\t".to_vec();
        published.extend_from_slice(&body);
        let got = decode("lobby", &published).unwrap();
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
