//! Rooms: who is in which room, and the one place a room's messages are
//! put in order and fanned out.
//!
//! [`Chat`](super::Chat) talks to rooms only through [`Rooms`], so that
//! rooms spanning several sockline instances (through Redis pub/sub, say)
//! can be a second implementation next to [`LocalRooms`], the in-process one.

use crate::{ConnId, Message, Output};
use std::collections::{HashMap, VecDeque};

/// What a published message is; decides whether later joiners see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A member's `NAME: text` line: kept in the room's history.
    Line,
    /// A `* ...` notice (joins, leaves, renames, actions): delivered once.
    Notice,
}

/// Room membership and the ordering point of each room's messages.
///
/// Every member of a room must receive the room's messages in one and the
/// same order: the order of [`publish`](Rooms::publish) calls, for
/// [`LocalRooms`].
pub trait Rooms: Clone + Send + 'static {
    /// Puts `member` in `room` (created on first join) and returns the
    /// room's history, oldest first, for the newcomer to catch up on.
    fn join(&mut self, room: &str, member: ConnId) -> Vec<Message>;

    /// Takes `member` out of `room`; a room left empty is forgotten.
    fn leave(&mut self, room: &str, member: ConnId);

    /// Sends `msg` to every member of `room` except `from`.
    fn publish(
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

/// Rooms within one event loop: plain maps, no locks, since
/// [`Chat`](super::Chat) runs every connection on one loop.
#[derive(Debug, Clone, Default)]
pub struct LocalRooms {
    rooms: HashMap<String, Room>,
    /// Lines of history kept per room.
    history: usize,
}

#[derive(Debug, Clone, Default)]
struct Room {
    /// A `Vec` because fan-out (every line) is hot and leaving is rare.
    members: Vec<ConnId>,
    /// The last `history` lines, oldest first.
    history: VecDeque<Message>,
}

impl LocalRooms {
    /// Rooms that replay their last `history` lines to each newcomer.
    pub fn new(history: usize) -> Self {
        LocalRooms {
            rooms: HashMap::new(),
            history,
        }
    }
}

impl Rooms for LocalRooms {
    fn join(&mut self, room: &str, member: ConnId) -> Vec<Message> {
        let room = self.rooms.entry(room.to_owned()).or_default();
        room.members.push(member);
        room.history.iter().cloned().collect()
    }

    fn leave(&mut self, name: &str, member: ConnId) {
        let Some(room) = self.rooms.get_mut(name) else {
            return;
        };
        if let Some(at) = room.members.iter().position(|&m| m == member) {
            room.members.swap_remove(at);
        }
        if room.members.is_empty() {
            // Its history goes too: memory stays bounded by the live rooms.
            self.rooms.remove(name);
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
        let (a, b, c) = (ConnId(1), ConnId(2), ConnId(3));
        let mut rooms = LocalRooms::new(2);
        let (mut buf, mut post) = (Vec::new(), Vec::new());
        let mut out = Output::new(a, &mut buf, &mut post);
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
        assert_eq!(rooms.list().len(), 1, "an empty room is forgotten");
        assert!(rooms.members("dev").is_empty());
    }
}
