//! The publisher thread: runs the cluster's one script (`ops.lua`) for
//! each op the loop hands over, in order (lines that wait together in one
//! run), retrying each until Redis takes it or [`PUBLISH_PATIENCE`] runs
//! out (then its member is told); and beats every [`BEAT`], which is also
//! when dead nodes are noticed.

use super::{
    Answer, BEAT, ClusterEvent, DEAD, PUBLISH_PATIENCE, RETRY, Target, USERS_BLOCK, connect, post,
};
use crate::mode::chat::{MessageKind, rooms_line, who_line};
use crate::protocol::ConnId;
use crate::{Mailbox, Message};
use redis::Value;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The script every op runs.
const OPS: &str = include_str!("ops.lua");
/// Ops taken from the queue at once, at most (so also lines in one `say`).
const BATCH: usize = 64;
/// A line's arguments to `say`.
const SAY_ARGS: usize = 4;

/// What the loop asks of the cluster.
#[derive(Debug)]
pub(super) enum Op {
    /// A line or notice for `room`'s order.
    Say {
        room: String,
        from: ConnId,
        kind: MessageKind,
        msg: Message,
    },
    /// A member enters `room` (the room is told): under `name`, or a fresh
    /// name if that one is someone else's.
    Enter {
        room: String,
        from: ConnId,
        name: String,
    },
    /// A member leaves `room`, which is told `notice`.
    Exit {
        room: String,
        from: ConnId,
        name: String,
        notice: Option<Message>,
    },
    /// `/nick`: answered to the member.
    Nick {
        room: String,
        from: ConnId,
        old: String,
        new: String,
    },
    /// `/who`: answered to the member.
    Who { from: ConnId, room: String },
    /// `/rooms`: answered to the member.
    Rooms { from: ConnId },
    /// `/msg`: `line` to the member named `to`, wherever it is.
    Msg {
        from: ConnId,
        to: String,
        line: Message,
    },
    /// A block of this many default names.
    Users(u64),
    /// This node stops: its members leave, for this reason.
    Depart(&'static str),
}

impl Op {
    /// The script's op name and arguments.
    fn args(&self) -> (&'static str, Vec<Vec<u8>>) {
        let text = |s: &str| s.as_bytes().to_vec();
        let id = |from: &ConnId| from.pack().to_string().into_bytes();
        match self {
            Op::Say {
                room,
                from,
                kind,
                msg,
            } => {
                let kind = match kind {
                    MessageKind::Line => "L",
                    MessageKind::Notice => "N",
                };
                ("say", vec![text(room), id(from), text(kind), msg.to_vec()])
            }
            Op::Enter { room, from, name } => ("enter", vec![text(room), id(from), text(name)]),
            Op::Exit {
                room,
                from,
                name,
                notice,
            } => {
                let notice = notice.as_deref().unwrap_or_default().to_vec();
                ("exit", vec![text(room), id(from), text(name), notice])
            }
            Op::Nick {
                room,
                from,
                old,
                new,
            } => ("nick", vec![text(room), id(from), text(old), text(new)]),
            Op::Who { room, .. } => ("who", vec![text(room)]),
            Op::Rooms { .. } => ("rooms", vec![]),
            Op::Msg { to, line, .. } => ("msg", vec![text(to), line.to_vec()]),
            Op::Users(n) => ("users", vec![n.to_string().into_bytes()]),
            Op::Depart(why) => ("depart", vec![text(why)]),
        }
    }

    /// The member waiting for the answer, if one is.
    fn asker(&self) -> Option<ConnId> {
        match self {
            Op::Nick { from, .. }
            | Op::Who { from, .. }
            | Op::Rooms { from }
            | Op::Msg { from, .. } => Some(*from),
            _ => None,
        }
    }
}

/// A node's connection to the script: who it is, and its ops' numbers.
pub(super) struct Link {
    url: Target,
    node: String,
    /// This start of the node, unique across its restarts.
    run: String,
    /// The last op's number in this run.
    count: u64,
    /// Stream length.
    length: usize,
    script: redis::Script,
    connection: Option<redis::Connection>,
    down: bool,
    /// Since when ops have failed (set as an op starts; cleared by a
    /// success).
    failing: Option<Instant>,
}

impl Link {
    pub fn new(url: Target, node: &str, length: usize) -> Link {
        Link {
            url,
            node: node.to_owned(),
            run: unique(),
            count: 0,
            length,
            script: redis::Script::new(OPS),
            connection: None,
            down: false,
            failing: None,
        }
    }

    /// At start, once: a first beat (which takes an earlier run's members
    /// out) and a first block of default names (its first number), if
    /// Redis answers.
    pub fn start(&mut self) -> Option<u64> {
        self.call("beat", &[]).ok()?;
        let last = self.call("users", &[USERS_BLOCK.to_string().into_bytes()]);
        match last {
            Ok(Value::Int(last)) => Some(last as u64 + 1 - USERS_BLOCK),
            _ => None,
        }
    }

    /// Runs `op` once. It takes the next number; a `say` of several
    /// lines takes one per line, and the script gets the last.
    fn call(&mut self, op: &str, args: &[Vec<u8>]) -> redis::RedisResult<Value> {
        if self.connection.is_none() {
            self.connection = connect(&self.url, &mut self.down);
        }
        let Some(connection) = self.connection.as_mut() else {
            return Err(std::io::Error::other("no connection").into());
        };
        self.count += match op {
            "say" => (args.len() / SAY_ARGS).max(1) as u64,
            _ => 1,
        };
        let mut invocation = self.script.prepare_invoke();
        invocation
            .arg(&self.node)
            .arg(&self.run)
            .arg(self.count)
            .arg(unique())
            .arg(self.length)
            .arg(op)
            .arg(DEAD.as_millis() as u64);
        for arg in args {
            invocation.arg(arg);
        }
        let result = invocation.invoke(connection);
        if let Err(e) = &result
            && self.connection.take().is_some()
        {
            tracing::warn!(node = self.node, op, error = %e, "Redis: cannot run a script op");
        }
        result
    }

    /// Runs `op` until Redis takes it or `patience` runs out, counted
    /// from when Redis was last reachable: once an outage has outlasted
    /// it, each op is tried once. A retry keeps its number (each line its
    /// own), so the script runs it once.
    fn call_until(&mut self, op: &str, args: &[Vec<u8>], patience: Duration) -> Option<Value> {
        let failing = *self.failing.get_or_insert_with(Instant::now);
        let count = self.count;
        loop {
            self.count = count;
            match self.call(op, args) {
                Ok(value) => {
                    self.failing = None;
                    return Some(value);
                }
                Err(_) if failing.elapsed() < patience => std::thread::sleep(RETRY),
                Err(_) => return None,
            }
        }
    }
}

/// The thread: ops in order, and a beat every [`BEAT`].
pub(super) fn run(mut link: Link, queue: &Receiver<Op>, mailbox: &Mailbox<ClusterEvent>) {
    let mut beat_at = Instant::now() + BEAT;
    let mut ops = Vec::with_capacity(BATCH);
    loop {
        match queue.recv_timeout(beat_at.saturating_duration_since(Instant::now())) {
            Ok(op) => {
                // The ops already waiting behind it go with it.
                ops.push(op);
                ops.extend(queue.try_iter().take(BATCH - 1));
                if !execute_all(&mut link, &mut ops, mailbox) {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if Instant::now() >= beat_at {
            beat_at = Instant::now() + BEAT;
            let beat = link.call_until("beat", &[], BEAT);
            if matches!(&beat, Some(Value::BulkString(b)) if b == b"new")
                && !post(mailbox, None, ClusterEvent::Reenter)
            {
                return;
            }
        }
    }
}

/// Runs `ops` (emptied) in order and posts what follows from each; false
/// once the loop is gone. Consecutive lines go in one `say`, which orders
/// them one after the other in one round trip, each line numbered in turn.
/// If that fails, each line is run alone with its number (as if they had
/// never gone together), and the script skips those that ran.
fn execute_all(link: &mut Link, ops: &mut Vec<Op>, mailbox: &Mailbox<ClusterEvent>) -> bool {
    let mut ops = ops.drain(..).peekable();
    while let Some(op) = ops.next() {
        let mut lines = Vec::new();
        while let Op::Say { .. } = op
            && let Some(line) = ops.next_if(|op| matches!(op, Op::Say { .. }))
        {
            lines.push(line);
        }
        if lines.is_empty() {
            if !execute(link, op, mailbox) {
                return false;
            }
            continue;
        }
        lines.insert(0, op);
        let before = link.count;
        let args: Vec<_> = lines.iter().flat_map(|line| line.args().1).collect();
        if link.call("say", &args).is_ok() {
            link.failing = None;
            continue;
        }
        for (number, line) in (before..).zip(lines) {
            link.count = number;
            if !execute(link, line, mailbox) {
                return false;
            }
        }
    }
    true
}

/// Runs one op (numbered after `link.count`) and posts what follows from
/// it; false once the loop is gone.
fn execute(link: &mut Link, op: Op, mailbox: &Mailbox<ClusterEvent>) -> bool {
    let (name, args) = op.args();
    match link.call_until(name, &args, PUBLISH_PATIENCE) {
        Some(value) => settle(op, value, mailbox),
        None => not_sent(op, mailbox),
    }
}

/// Posts what follows from `op`, which Redis answered `value`; false once
/// the loop is gone.
fn settle(op: Op, value: Value, mailbox: &Mailbox<ClusterEvent>) -> bool {
    let (to, event) = match op {
        Op::Say { .. } | Op::Exit { .. } | Op::Depart(_) => return true,
        Op::Enter { from, name, .. } => match text(&value) {
            Some(got) if got != name && !got.is_empty() => {
                let event = ClusterEvent::Renamed {
                    member: from,
                    name: got,
                };
                (None, event)
            }
            _ => return true,
        },
        Op::Nick { from, new, .. } => match text(&value).as_deref() {
            Some("ok") => (Some(from), ClusterEvent::Answer(Answer::Named(new))),
            _ => (Some(from), ClusterEvent::Answer(Answer::Taken)),
        },
        Op::Who { from, room } => {
            let names = strings(value);
            let line = who_line(&room, names);
            (Some(from), ClusterEvent::Answer(Answer::Lines(vec![line])))
        }
        Op::Rooms { from } => {
            let pairs = strings(value);
            let rooms = (pairs.chunks(2))
                .filter_map(|pair| Some((pair[0].clone(), pair.get(1)?.parse().ok()?)))
                .filter(|(_, count)| *count > 0)
                .collect();
            let lines = vec![rooms_line(rooms)];
            (Some(from), ClusterEvent::Answer(Answer::Lines(lines)))
        }
        Op::Msg { from, to, .. } => {
            let lines = match text(&value).as_deref() {
                Some("ok") => vec![],
                Some("lost") => {
                    vec![format!("ERR not sent: {to}'s server is not reachable").into_bytes()]
                }
                _ => vec![format!("ERR no such member {to}").into_bytes()],
            };
            (Some(from), ClusterEvent::Answer(Answer::Lines(lines)))
        }
        Op::Users(n) => match value {
            Value::Int(last) => {
                let last = last as u64;
                let first = last + 1 - n;
                (None, ClusterEvent::Users { first, last })
            }
            _ => (None, ClusterEvent::Users { first: 1, last: 0 }),
        },
    };
    post(mailbox, to, event)
}

/// Redis could not be reached for the op: whoever waits for it is told.
fn not_sent(op: Op, mailbox: &Mailbox<ClusterEvent>) -> bool {
    const WHY: &str = "the cluster link is down";
    if let Some(asker) = op.asker() {
        let line = format!("ERR not sent: {WHY}").into_bytes();
        return post(
            mailbox,
            Some(asker),
            ClusterEvent::Answer(Answer::Lines(vec![line])),
        );
    }
    match op {
        Op::Say { from, .. } => post(mailbox, None, ClusterEvent::NotSent { to: from, why: WHY }),
        Op::Users(_) => post(mailbox, None, ClusterEvent::Users { first: 1, last: 0 }),
        _ => {
            tracing::warn!("Redis unreachable: a join or leave was not told to the cluster");
            true
        }
    }
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn strings(value: Value) -> Vec<String> {
    match value {
        Value::Array(items) | Value::Set(items) => items.iter().filter_map(text).collect(),
        _ => Vec::new(),
    }
}

/// Never the same twice: this time, and this process.
pub(super) fn unique() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_nanos());
    format!("{now:x}-{:x}", std::process::id())
}
