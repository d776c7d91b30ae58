//! `chat`: one conversation for many clients, with names, rooms and a
//! slow-consumer policy.
//!
//! Every line a member sends goes to the other members of its room as
//! `NAME: text`; lines starting with `/` are commands. All connections run
//! on one event loop ([`Protocol::ONE_LOOP`]), so the state below is plain
//! maps, and a room's lines reach all its members in the order they were
//! read. Each line is encoded once and shared by its recipients
//! ([`Output::send`]); a member that does not read its share is
//! disconnected by the server once `max_queue` bytes wait for it, and the
//! room is told `* NAME left (too slow)`.
//!
//! # Wire format
//!
//! Every line ends with `\n`. To the member itself:
//!
//! | when | line |
//! |---|---|
//! | connected | `* welcome NAME, /help lists commands`, then the lobby's history |
//! | `/nick NEW` | `* you are now NEW` (`ERR nick taken` if someone has it, ignoring case, or if it starts with `user-`: those are the server's default names) |
//! | `/join ROOM` | `* you joined ROOM`, then the room's history |
//! | `/who` | `* members of ROOM: a, b, c` (sorted, ignoring case) |
//! | `/rooms` | `* rooms: lobby (3), dev (1)` (most members first; only rooms with members) |
//! | `/help` | two lines starting with `* ` |
//! | `/quit`, `BYE` | `* bye`, then the server closes |
//! | `/msg` from OTHER | `*OTHER* TEXT` |
//! | server shutdown | `* server shutting down` |
//! | errors | `ERR nick taken`, `ERR invalid nick: ...`, `ERR invalid room: ...`, `ERR already in ROOM`, `ERR no such member NAME`, `ERR usage: ...`, `ERR unknown command /x (try /help)` |
//!
//! To the other members of the room: `NAME: text` (also for `//text`,
//! which sends `/text`), `* NAME joined`, `* NAME left` (after `/quit`,
//! `BYE` or `/join`), `* NAME left (REASON)` when the connection ended
//! otherwise (`closed by client`, `too slow`, `line too long`,
//! `connection error`), `* OLD is now NEW` and `~ NAME ACTION` (`/me`).
//!
//! A line starting with `* ` is the server's own voice, and only the
//! server's. What members say always comes with their name in front
//! (`NAME: text`, `*NAME* text`, `~ NAME action`), and a name is made of
//! `A-Za-z0-9_-`, so no member can start a line with `* `: `/me left (too
//! slow)` reaches the room as `~ bob left (too slow)`, which cannot pass
//! for the server saying that bob was dropped.
//!
//! With rooms that span several servers ([`RedisRooms`]), names are
//! unique across all of them, `/who`, `/rooms` and `/msg` answer for all
//! of them, and a member waits for the answer to `/nick`, `/who`, `/rooms`
//! and `/msg` before its next lines are read ([`Flow::Wait`]).
//!
//! # History
//!
//! History is the room's last `NAME: text` lines (`--history N`), sent as
//! they were. It outlives the room's last member, so that people who come
//! and go one at a time still catch up on each other: whoever joins an
//! emptied room next gets it. So that many distinct rooms created and left
//! cannot grow memory without bound, only `--history-rooms` emptied rooms
//! (default [`HISTORY_ROOMS`]) keep theirs; past that, the room that
//! emptied longest ago forgets first, and `--history-rooms 0` forgets a
//! room as it empties. A room with members always keeps its history.
//! Emptied rooms thus hold at most `--history-rooms` × `--history` lines.

mod cluster;
mod command;
mod rooms;

pub use cluster::{ClusterEvent, Delivery, RedisRooms, check_url};
pub use rooms::{Ask, HISTORY_ROOMS, Leaving, LocalRooms, MessageKind, Rooms, Settled};

use crate::{CloseReason, ConnId, Flow, Mailbox, Message, Output, Protocol};
use command::{Input, parse, valid_name};
use std::collections::HashMap;
use std::net::SocketAddr;

/// The room every member starts in.
pub const LOBBY: &str = "lobby";

const HELP: [&[u8]; 2] = [
    b"* commands: /nick NAME, /join ROOM, /who, /rooms, /me ACTION, /msg NAME TEXT, /help, /quit (or BYE)",
    b"* any other line goes to your room; start it with // to send a line beginning with /",
];

/// The chat server. Rooms are behind [`Rooms`]; [`Chat::new`] keeps them
/// in this process.
#[derive(Debug, Clone)]
pub struct Chat<R: Rooms = LocalRooms> {
    rooms: R,
    members: HashMap<ConnId, Member>,
    /// Each nick in ASCII lower case, to its member: nicks are unique
    /// ignoring case, so `Bob` cannot pass for `bob`.
    nicks: HashMap<String, ConnId>,
    /// The last `N` given out as a default `user-N` name.
    last_user: u64,
}

#[derive(Debug, Clone)]
struct Member {
    name: String,
    room: String,
}

impl Chat<LocalRooms> {
    /// A chat whose rooms replay their last `history` lines to newcomers,
    /// also once they have emptied (up to [`HISTORY_ROOMS`] emptied rooms:
    /// see [`LocalRooms::history_rooms`] for another cap).
    pub fn new(history: usize) -> Self {
        Chat::with_rooms(LocalRooms::new(history))
    }
}

impl<R: Rooms> Chat<R> {
    /// A chat on the given rooms.
    pub fn with_rooms(rooms: R) -> Self {
        Chat {
            rooms,
            members: HashMap::new(),
            nicks: HashMap::new(),
            last_user: 0,
        }
    }

    /// A `user-N` name for a newcomer: from the rooms when they span
    /// several instances, else the next one nobody here has.
    fn fresh_name(&mut self) -> String {
        if let Some(name) = self.rooms.default_name() {
            return name;
        }
        loop {
            self.last_user += 1;
            let name = format!("user-{}", self.last_user);
            if !self.nicks.contains_key(&name) {
                return name;
            }
        }
    }

    /// Puts member `id` into the room it names: tells the room, then
    /// replays the room's history to the member.
    fn enter(&mut self, id: ConnId, member: &Member, out: &mut Output) {
        for line in self.rooms.enter(&member.room, id, &member.name, out) {
            out.line(&line);
        }
    }

    fn nick(&mut self, id: ConnId, name: &[u8], out: &mut Output) -> Flow {
        let Some(name) = valid_name(name) else {
            out.line(b"ERR invalid nick: use 1-32 of A-Z a-z 0-9 _ -");
            return Flow::Continue;
        };
        let Some(member) = self.members.get(&id) else {
            return Flow::Continue;
        };
        let key = name.to_ascii_lowercase();
        // `user-N` names are the server's to give: nobody takes one by
        // `/nick`, so a default name is never already someone's.
        let reserved = key.starts_with("user-") && key != member.name.to_ascii_lowercase();
        if reserved || self.nicks.get(&key).is_some_and(|&owner| owner != id) {
            out.line(b"ERR nick taken");
            return Flow::Continue;
        }
        let ask = Ask::Nick {
            room: &member.room,
            old: &member.name,
            new: name,
        };
        if let Some(flow) = self.rooms.ask(id, ask, out) {
            return flow;
        }
        let (room, old) = (member.room.clone(), member.name.clone());
        if self.renamed(id, name, out) && old != name {
            let renamed = notice(format!("* {old} is now {name}"));
            self.rooms
                .publish(&room, id, MessageKind::Notice, &renamed, out);
        }
        Flow::Continue
    }

    /// Records member `id`'s new name and tells it so; false if it is gone.
    fn renamed(&mut self, id: ConnId, name: &str, out: &mut Output) -> bool {
        let Some(member) = self.members.get_mut(&id) else {
            return false;
        };
        let old = std::mem::replace(&mut member.name, name.to_owned());
        self.nicks.remove(&old.to_ascii_lowercase());
        self.nicks.insert(name.to_ascii_lowercase(), id);
        out.send(id, &notice(format!("* you are now {name}")));
        true
    }

    /// What an answer from the rooms settled.
    fn settle(&mut self, settled: Settled, out: &mut Output) {
        match settled {
            Settled::Named { member, name } => {
                self.renamed(member, &name, out);
            }
            Settled::Taken { member } => out.send(member, &notice("ERR nick taken".into())),
        }
    }

    fn join(&mut self, id: ConnId, room: &[u8], out: &mut Output) {
        let Some(room) = valid_name(room) else {
            out.line(b"ERR invalid room: use 1-32 of A-Z a-z 0-9 _ -");
            return;
        };
        let Some(member) = self.members.get(&id).cloned() else {
            return;
        };
        if member.room == room {
            out.line(format!("ERR already in {room}").as_bytes());
            return;
        }
        (self.rooms).exit(&member.room, id, &member.name, Leaving::Plain, out);
        let member = Member {
            name: member.name,
            room: room.to_owned(),
        };
        out.line(format!("* you joined {room}").as_bytes());
        self.enter(id, &member, out);
        self.members.insert(id, member);
    }

    fn who(&mut self, id: ConnId, room: &str, out: &mut Output) -> Flow {
        if let Some(flow) = self.rooms.ask(id, Ask::Who(room), out) {
            return flow;
        }
        let names = (self.rooms.members(room).iter())
            .filter_map(|id| self.members.get(id))
            .map(|member| member.name.clone())
            .collect();
        out.line(&who_line(room, names));
        Flow::Continue
    }

    fn list_rooms(&mut self, id: ConnId, out: &mut Output) -> Flow {
        if let Some(flow) = self.rooms.ask(id, Ask::Rooms, out) {
            return flow;
        }
        out.line(&rooms_line(self.rooms.list()));
        Flow::Continue
    }

    fn private(&mut self, id: ConnId, to: &[u8], text: &[u8], out: &mut Output) -> Flow {
        let Some(from) = self.members.get(&id).map(|member| member.name.clone()) else {
            return Flow::Continue;
        };
        let Some(to) = valid_name(to) else {
            out.line(&[b"ERR no such member ", to].concat());
            return Flow::Continue;
        };
        if let Some(flow) = self.rooms.ask(
            id,
            Ask::Msg {
                from: &from,
                to,
                text,
            },
            out,
        ) {
            return flow;
        }
        match self.nicks.get(&to.to_ascii_lowercase()) {
            Some(&target) => out.send(target, &private_line(&from, text)),
            None => out.line(format!("ERR no such member {to}").as_bytes()),
        }
        Flow::Continue
    }
}

impl<R: Rooms> Protocol for Chat<R> {
    type Session = ();
    type Event = R::Event;
    const ONE_LOOP: bool = true;

    fn start(&mut self, mailbox: Mailbox<R::Event>) {
        self.rooms.start(mailbox);
    }

    fn event(&mut self, _: &mut (), event: R::Event, out: &mut Output) -> Flow {
        // The answer the member waited for: its lines go on.
        if let Some(settled) = self.rooms.event(event, out) {
            self.settle(settled, out);
        }
        Flow::Continue
    }

    fn loop_event(&mut self, event: R::Event, out: &mut Output) {
        if let Some(settled) = self.rooms.event(event, out) {
            self.settle(settled, out);
        }
    }

    fn open(&mut self, _peer: SocketAddr, out: &mut Output) {
        let id = out.id();
        let name = self.fresh_name();
        out.line(format!("* welcome {name}, /help lists commands").as_bytes());
        self.nicks.insert(name.to_ascii_lowercase(), id);
        let member = Member {
            name,
            room: LOBBY.to_owned(),
        };
        self.enter(id, &member, out);
        self.members.insert(id, member);
    }

    fn line(&mut self, _: &mut (), line: &[u8], out: &mut Output) -> Flow {
        let id = out.id();
        let Some(member) = self.members.get(&id) else {
            // Every connection was opened as a member; this cannot happen.
            return Flow::Close;
        };
        match parse(line) {
            Input::Empty => {}
            Input::Say(text) => {
                let msg = message(&[member.name.as_bytes(), b": ", text]);
                self.rooms
                    .publish(&member.room, id, MessageKind::Line, &msg, out);
            }
            Input::Me(action) => {
                let msg = message(&[b"~ ", member.name.as_bytes(), b" ", action]);
                self.rooms
                    .publish(&member.room, id, MessageKind::Notice, &msg, out);
            }
            Input::Msg(to, text) => return self.private(id, to, text, out),
            Input::Who => {
                let room = member.room.clone();
                return self.who(id, &room, out);
            }
            Input::Rooms => return self.list_rooms(id, out),
            Input::Nick(name) => return self.nick(id, name, out),
            Input::Join(room) => self.join(id, room, out),
            Input::Help => HELP.iter().for_each(|line| out.line(line)),
            Input::Quit => {
                out.line(b"* bye");
                return Flow::Close;
            }
            Input::Usage(usage) => out.line(usage.as_bytes()),
            Input::Unknown(word) => {
                out.line(&[b"ERR unknown command /", word, b" (try /help)"].concat());
            }
        }
        Flow::Continue
    }

    fn shutdown(&mut self, _: &mut (), out: &mut Output) {
        out.line(b"* server shutting down");
    }

    fn close(&mut self, _: (), why: CloseReason, out: &mut Output) {
        let id = out.id();
        let Some(member) = self.members.remove(&id) else {
            return;
        };
        self.nicks.remove(&member.name.to_ascii_lowercase());
        let why = match why {
            // A plain leave (`/quit`, `BYE`): no reason shown.
            CloseReason::Protocol => Leaving::Plain,
            // Everyone here is leaving and was told why.
            CloseReason::Shutdown => Leaving::Shutdown,
            other => Leaving::Because(other.as_str()),
        };
        (self.rooms).exit(&member.room, id, &member.name, why, out);
    }
}

/// `* members of ROOM: a, b, c`, sorted ignoring case.
pub fn who_line(room: &str, mut names: Vec<String>) -> Vec<u8> {
    names.sort_by_cached_key(|name| name.to_ascii_lowercase());
    format!("* members of {room}: {}", names.join(", ")).into_bytes()
}

/// `* rooms: lobby (3), dev (1)`, most members first.
pub fn rooms_line(mut rooms: Vec<(String, usize)>) -> Vec<u8> {
    rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let rooms: Vec<String> = rooms
        .iter()
        .map(|(name, count)| format!("{name} ({count})"))
        .collect();
    format!("* rooms: {}", rooms.join(", ")).into_bytes()
}

/// `*FROM* TEXT`, a private message as its recipient sees it.
pub fn private_line(from: &str, text: &[u8]) -> Message {
    message(&[b"*", from.as_bytes(), b"* ", text])
}

/// `parts` joined: one line, encoded once for all its recipients.
fn message(parts: &[&[u8]]) -> Message {
    parts.concat().into()
}

/// A `* ...` notice line.
fn notice(text: String) -> Message {
    message(&[text.as_bytes()])
}
