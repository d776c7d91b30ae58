//! Rooms: who is in which room, and the one place a room's messages are
//! put in order and fanned out.
//!
//! [`Chat`](super::Chat) talks to rooms only through [`Rooms`], so that
//! rooms spanning several sockline instances (through Redis pub/sub, say)
//! can be a second implementation next to [`LocalRooms`], the in-process one.
//!
//! A room's history outlives its last member: otherwise a conversation
//! between people who come and go one at a time would never reach anyone.
//! What an emptied room keeps is its history, and only that; to keep memory
//! bounded however many distinct rooms are created and left,
//! [`LocalRooms`] keeps at most a fixed number of emptied rooms and forgets
//! the one that emptied longest ago first. Rooms with members keep their
//! history regardless (they are bounded by the connections).

use crate::{ConnId, Flow, Mailbox, Message, Output};
use std::collections::{HashMap, VecDeque};

/// What a published message is; decides whether later joiners see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A member's `NAME: text` line: kept in the room's history.
    Line,
    /// A `* ...` notice (joins, leaves, renames, actions): delivered once.
    Notice,
}

/// Why a member leaves its room, for the notice the room gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaving<'a> {
    /// `/quit`, `BYE` or `/join`: `* NAME left`.
    Plain,
    /// The connection ended otherwise: `* NAME left (REASON)`.
    Because(&'a str),
    /// The server shuts down, and has told its members: no notice to them.
    Shutdown,
}

/// A question about the members of every instance: asked of rooms that
/// span several ([`Rooms::ask`]), answered later through the mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask<'a> {
    /// May the member in `room` named `old` take the name `new`?
    Nick {
        /// Its room, told `* OLD is now NEW` if so.
        room: &'a str,
        /// Its name now.
        old: &'a str,
        /// The name it asks for.
        new: &'a str,
    },
    /// `/who`: the members of `room`.
    Who(&'a str),
    /// `/rooms`: every room with members, and how many.
    Rooms,
    /// `/msg TO TEXT` from the member named `from`.
    Msg {
        /// The sender's name.
        from: &'a str,
        /// The name it is for.
        to: &'a str,
        /// What it says.
        text: &'a [u8],
    },
}

/// What an answer from outside the loop settles, for the chat's own
/// record of its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// `member` is now named `name` (a `/nick` granted, or a name found
    /// taken as it entered).
    Named {
        /// Whose name.
        member: ConnId,
        /// Its new name.
        name: String,
    },
    /// `member`'s `/nick` was refused: someone elsewhere has the name.
    Taken {
        /// Who asked.
        member: ConnId,
    },
}

/// Room membership and the ordering point of each room's messages.
///
/// Every member of a room must receive the room's messages in one and the
/// same order: the order of [`publish`](Rooms::publish) calls, for
/// [`LocalRooms`].
pub trait Rooms: Clone + Send + 'static {
    /// What reaches these rooms from outside the event loop (messages
    /// coming back from a remote ordering point); `()` for none.
    type Event: Send + 'static;

    /// The event loop starts; `mailbox` posts [`Rooms::Event`]s to it.
    fn start(&mut self, _mailbox: Mailbox<Self::Event>) {}

    /// An event posted through the mailbox arrived on the loop (`out` is
    /// the member's own when it was posted to one). Answers go to `out`;
    /// what changes the chat's record of its members is returned.
    fn event(&mut self, _event: Self::Event, _out: &mut Output) -> Option<Settled> {
        None
    }

    /// A default name (`user-N`) for a newcomer that is unique across
    /// instances; `None` leaves it to the chat (unique on this loop).
    fn default_name(&mut self) -> Option<String> {
        None
    }

    /// Asks about the members of every instance. `None`: these rooms span
    /// only this loop, and the chat answers from its own record. Else what
    /// the member's connection does next: [`Flow::Wait`] for the answer,
    /// which comes later through the mailbox to `member` (a name it settles
    /// comes back from [`event`](Rooms::event)); [`Flow::Continue`] when
    /// it could not be asked and `out` says so.
    fn ask(&mut self, _member: ConnId, _ask: Ask<'_>, _out: &mut Output) -> Option<Flow> {
        None
    }

    /// `member`, named `name`, enters `room`: the room is told `* NAME
    /// joined`. Returns the room's history for the newcomer.
    fn enter(&mut self, room: &str, member: ConnId, name: &str, out: &mut Output) -> Vec<Message> {
        let joined = Message::from(format!("* {name} joined").as_bytes());
        self.publish(room, member, MessageKind::Notice, &joined, out);
        self.join(room, member)
    }

    /// `member`, named `name`, leaves `room`, which is told why.
    fn exit(&mut self, room: &str, member: ConnId, name: &str, why: Leaving, out: &mut Output) {
        self.leave(room, member);
        if let Some(left) = left_notice(name, why) {
            self.publish(room, member, MessageKind::Notice, &left, out);
        }
    }

    /// Puts `member` in `room` (created on first join) and returns the
    /// room's history, oldest first, for the newcomer to catch up on.
    fn join(&mut self, room: &str, member: ConnId) -> Vec<Message>;

    /// Takes `member` out of `room`. A room left empty has no members (it
    /// is not [`list`](Rooms::list)ed) but may keep its history for the
    /// next to join it.
    fn leave(&mut self, room: &str, member: ConnId);

    /// Hands `msg` to the ordering point of `room`. Once it has its place
    /// in the room's order, it comes back to [`deliver`](Rooms::deliver) on
    /// every instance with members in the room: at once for [`LocalRooms`],
    /// whose ordering point is this call; later, through the event loop's
    /// mailbox, for rooms whose ordering point is elsewhere (a Redis
    /// server). Nothing may be delivered ahead of its turn, not even to the
    /// sender's own neighbours.
    fn publish(
        &mut self,
        room: &str,
        from: ConnId,
        kind: MessageKind,
        msg: &Message,
        out: &mut Output,
    );

    /// Fans out a message in its place in the room's order: to every member
    /// of `room` on this loop except `from`, and into the room's history
    /// (kept for a room with no member here too, as for an emptied one).
    fn deliver(
        &mut self,
        room: &str,
        from: ConnId,
        kind: MessageKind,
        msg: &Message,
        out: &mut Output,
    );

    /// The members of `room`, in no particular order.
    fn members(&self, room: &str) -> Vec<ConnId>;

    /// Every room that has members, with how many.
    fn list(&self) -> Vec<(String, usize)>;
}

/// `* NAME left`, with the reason if there is one; none at shutdown.
pub fn left_notice(name: &str, why: Leaving) -> Option<Message> {
    let text = match why {
        Leaving::Plain => format!("* {name} left"),
        Leaving::Because(reason) => format!("* {name} left ({reason})"),
        Leaving::Shutdown => return None,
    };
    Some(Message::from(text.as_bytes()))
}

/// Emptied rooms whose history [`LocalRooms::new`] keeps unless told
/// otherwise ([`LocalRooms::history_rooms`]).
pub const HISTORY_ROOMS: usize = 1000;

/// Rooms within one event loop: plain maps, no locks, since
/// [`Chat`](super::Chat) runs every connection on one loop.
///
/// An emptied room that has history stays in `rooms` (with no members) so
/// that the next to join gets it; at most `history_rooms` such rooms stay,
/// the one that emptied longest ago going first. Joining an emptied room
/// makes it a live room again: it leaves the count, and its entry in the
/// eviction queue goes stale.
#[derive(Debug, Clone)]
pub struct LocalRooms {
    /// Live rooms, and the emptied ones that kept their history.
    rooms: HashMap<String, Room>,
    /// Lines of history kept per room.
    history: usize,
    /// Most emptied rooms kept; 0 forgets a room as it empties.
    history_rooms: usize,
    /// Rooms in the order they emptied, oldest first, each with the stamp
    /// it got then. An entry is live while its room is still empty with
    /// that stamp; one whose room was joined since (or forgotten) is stale
    /// and skipped when met, which spares `join` a search of the queue.
    emptied: VecDeque<(String, u64)>,
    /// Live entries in `emptied`: the emptied rooms kept.
    empty: usize,
    /// The last stamp given out.
    stamp: u64,
}

#[derive(Debug, Clone, Default)]
struct Room {
    /// A `Vec` because fan-out (every line) is hot and leaving is rare.
    members: Vec<ConnId>,
    /// The last `history` lines, oldest first.
    history: VecDeque<Message>,
    /// When the room last emptied: the stamp of its live entry in
    /// `LocalRooms::emptied` while it has no members.
    emptied: u64,
}

impl Default for LocalRooms {
    fn default() -> Self {
        LocalRooms::new(0)
    }
}

impl LocalRooms {
    /// Rooms that replay their last `history` lines to each newcomer,
    /// keeping the history of up to [`HISTORY_ROOMS`] emptied rooms.
    pub fn new(history: usize) -> Self {
        LocalRooms {
            rooms: HashMap::new(),
            history,
            history_rooms: HISTORY_ROOMS,
            emptied: VecDeque::new(),
            empty: 0,
            stamp: 0,
        }
    }

    /// Keeps the history of at most `rooms` emptied rooms, forgetting the
    /// one that emptied longest ago first; 0 forgets a room as it empties.
    pub fn history_rooms(mut self, rooms: usize) -> Self {
        self.history_rooms = rooms;
        self
    }

    /// Puts the room `name`, just emptied, at the back of the eviction
    /// queue, then forgets emptied rooms from the front past the cap.
    fn keep(&mut self, name: &str) {
        self.stamp += 1;
        if let Some(room) = self.rooms.get_mut(name) {
            room.emptied = self.stamp;
        }
        self.emptied.push_back((name.to_owned(), self.stamp));
        self.empty += 1;
        while self.empty > self.history_rooms {
            let Some(entry) = self.emptied.pop_front() else {
                break;
            };
            if is_live(&self.rooms, &entry) {
                self.rooms.remove(&entry.0);
                self.empty -= 1;
            }
        }
        // Rooms joined again while still in the queue leave stale entries
        // behind, which the cap above never reaches while few rooms are
        // empty (one room emptied and rejoined over and over). Dropping
        // them once they outnumber the live ones keeps the queue within
        // twice the rooms kept, at amortized O(1) per leave.
        if self.emptied.len() > 2 * self.empty + 16 {
            let rooms = &self.rooms;
            self.emptied.retain(|entry| is_live(rooms, entry));
        }
    }
}

/// Whether `entry` of `LocalRooms::emptied` still stands for a kept room.
fn is_live(rooms: &HashMap<String, Room>, (name, stamp): &(String, u64)) -> bool {
    rooms
        .get(name)
        .is_some_and(|room| room.members.is_empty() && room.emptied == *stamp)
}

impl Rooms for LocalRooms {
    type Event = ();

    fn join(&mut self, name: &str, member: ConnId) -> Vec<Message> {
        let room = match self.rooms.get_mut(name) {
            Some(room) => {
                if room.members.is_empty() {
                    // A kept emptied room comes back to life; its queue
                    // entry is stale from now on.
                    self.empty -= 1;
                }
                room
            }
            None => self.rooms.entry(name.to_owned()).or_default(),
        };
        room.members.push(member);
        room.history.iter().cloned().collect()
    }

    fn leave(&mut self, name: &str, member: ConnId) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        let Some(at) = room.members.iter().position(|&m| m == member) else {
            return;
        };
        room.members.swap_remove(at);
        if !room.members.is_empty() {
            return;
        }
        if room.history.is_empty() || self.history_rooms == 0 {
            // Nothing worth keeping, or told to keep nothing.
            self.rooms.remove(name);
        } else {
            self.keep(name);
        }
    }

    fn publish(
        &mut self,
        room: &str,
        from: ConnId,
        kind: MessageKind,
        msg: &Message,
        out: &mut Output,
    ) {
        // This loop is the room's ordering point: its order is the order
        // of these calls.
        self.deliver(room, from, kind, msg, out);
    }

    fn deliver(
        &mut self,
        room: &str,
        from: ConnId,
        kind: MessageKind,
        msg: &Message,
        out: &mut Output,
    ) {
        let remember = kind == MessageKind::Line && self.history > 0 && self.history_rooms > 0;
        if remember && !self.rooms.contains_key(room) {
            // A room with no member here (its ordering point is elsewhere):
            // its history is kept as an emptied room's, for whoever joins.
            self.rooms.insert(room.to_owned(), Room::default());
            self.keep(room);
        }
        let Some(room) = self.rooms.get_mut(room) else {
            return;
        };
        for &member in &room.members {
            if member != from {
                out.send(member, msg);
            }
        }
        if kind == MessageKind::Line && self.history > 0 {
            if room.history.len() == self.history {
                room.history.pop_front();
            }
            room.history.push_back(msg.clone());
        }
    }

    fn members(&self, room: &str) -> Vec<ConnId> {
        self.rooms
            .get(room)
            .map_or_else(Vec::new, |room| room.members.clone())
    }

    fn list(&self) -> Vec<(String, usize)> {
        self.rooms
            .iter()
            .filter(|(_, room)| !room.members.is_empty())
            .map(|(name, room)| (name.clone(), room.members.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(text: &str) -> Message {
        Message::from(text.as_bytes())
    }

    #[test]
    fn publish_skips_the_sender_and_keeps_only_the_last_lines() {
        let (a, b, c) = (ConnId::new(1, 0), ConnId::new(2, 0), ConnId::new(3, 0));
        let mut rooms = LocalRooms::new(2);
        let (mut buf, mut post) = (Vec::new(), Vec::new());
        let mut out = Output::new(a, Default::default(), &mut buf, &mut post);
        rooms.join("lobby", a);
        rooms.join("lobby", b);
        rooms.join("dev", c);
        for text in ["1", "2", "3"] {
            rooms.publish("lobby", a, MessageKind::Line, &msg(text), &mut out);
        }
        rooms.publish("lobby", b, MessageKind::Notice, &msg("*"), &mut out);
        let sent: Vec<_> = post.iter().map(|(to, m)| (*to, &m[..])).collect();
        let want: [(ConnId, &[u8]); 4] = [(b, b"1"), (b, b"2"), (b, b"3"), (a, b"*")];
        assert_eq!(sent, want);
        let history = rooms.join("lobby", c);
        assert_eq!(history, [msg("2"), msg("3")]);

        let mut list = rooms.list();
        list.sort();
        assert_eq!(list, [("dev".to_owned(), 1), ("lobby".to_owned(), 3)]);
        rooms.leave("dev", c);
        assert_eq!(rooms.list().len(), 1, "an empty room is not listed");
        assert!(rooms.members("dev").is_empty());
        assert!(!rooms.rooms.contains_key("dev"), "nor kept: no history");
    }

    /// Joins `room` as `member`, says `text` there, and leaves it empty.
    fn say_and_leave(rooms: &mut LocalRooms, room: &str, member: ConnId, text: &str) {
        let (mut buf, mut post) = (Vec::new(), Vec::new());
        let mut out = Output::new(member, Default::default(), &mut buf, &mut post);
        rooms.join(room, member);
        rooms.publish(room, member, MessageKind::Line, &msg(text), &mut out);
        rooms.leave(room, member);
    }

    /// The emptied rooms kept, sorted.
    fn kept(rooms: &LocalRooms) -> Vec<&str> {
        let mut kept: Vec<&str> = (rooms.rooms.iter())
            .filter(|(_, room)| room.members.is_empty())
            .map(|(name, _)| name.as_str())
            .collect();
        kept.sort();
        assert_eq!(kept.len(), rooms.empty);
        kept
    }

    #[test]
    fn history_outlives_an_empty_room_but_the_room_is_not_listed() {
        let (a, b) = (ConnId::new(1, 0), ConnId::new(2, 0));
        let mut rooms = LocalRooms::new(2);
        say_and_leave(&mut rooms, "dev", a, "1");
        say_and_leave(&mut rooms, "dev", a, "2");
        assert!(rooms.list().is_empty());
        assert!(rooms.members("dev").is_empty());
        assert_eq!(rooms.join("dev", b), [msg("1"), msg("2")]);
        assert_eq!(rooms.list(), [("dev".to_owned(), 1)]);
    }

    #[test]
    fn emptied_rooms_past_the_cap_are_forgotten_least_recently_emptied_first() {
        let (a, b) = (ConnId::new(1, 0), ConnId::new(2, 0));
        let mut rooms = LocalRooms::new(2).history_rooms(2);
        for room in ["r1", "r2", "r3"] {
            say_and_leave(&mut rooms, room, a, room);
        }
        assert_eq!(kept(&rooms), ["r2", "r3"]);

        // r2 is joined and emptied again: it is now the most recent, and
        // its first (stale) place in the queue does not get it evicted.
        say_and_leave(&mut rooms, "r2", a, "again");
        say_and_leave(&mut rooms, "r4", a, "r4");
        assert_eq!(kept(&rooms), ["r2", "r4"]);
        assert_eq!(rooms.join("r2", b), [msg("r2"), msg("again")]);

        // A room with a member is not counted and never evicted.
        for room in ["r5", "r6", "r7"] {
            say_and_leave(&mut rooms, room, a, room);
        }
        assert_eq!(kept(&rooms), ["r6", "r7"]);
        assert_eq!(rooms.members("r2"), [b]);
        rooms.leave("r2", b);
        assert_eq!(kept(&rooms), ["r2", "r7"]);
        assert_eq!(rooms.join("r1", b), [], "r1 was forgotten");
    }

    #[test]
    fn cap_zero_forgets_a_room_as_it_empties() {
        let (a, b) = (ConnId::new(1, 0), ConnId::new(2, 0));
        let mut rooms = LocalRooms::new(2).history_rooms(0);
        say_and_leave(&mut rooms, "dev", a, "1");
        assert!(rooms.rooms.is_empty());
        assert_eq!(rooms.join("dev", b), []);
    }

    #[test]
    fn memory_stays_bounded_by_the_cap() {
        let (a, b) = (ConnId::new(1, 0), ConnId::new(2, 0));
        let mut rooms = LocalRooms::new(1).history_rooms(3);
        // Many distinct rooms: at most three kept.
        for i in 0..10_000 {
            say_and_leave(&mut rooms, &format!("room-{i}"), a, "hi");
            assert!(rooms.rooms.len() <= 3);
            assert!(rooms.emptied.len() <= 2 * 3 + 16);
        }
        // One room emptied and rejoined over and over, with another member
        // keeping a second room alive: the stale entries do not pile up.
        rooms.join("busy", b);
        for _ in 0..10_000 {
            say_and_leave(&mut rooms, "dev", a, "hi");
            assert!(rooms.emptied.len() <= 2 * 3 + 16);
        }
        assert_eq!(kept(&rooms).len(), 3);
        assert_eq!(rooms.list(), [("busy".to_owned(), 1)]);
    }
}
