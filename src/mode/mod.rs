//! The built-in protocols, one file each.

mod ack;
mod chat;
mod echo;

pub use ack::Ack;
pub use chat::{
    Chat, ClusterEvent, Delivery, HISTORY_ROOMS, LOBBY, LocalRooms, MessageKind, RedisRooms, Rooms,
    check_url,
};
pub use echo::Echo;

/// True when `line` is the tutorial's quit word, `BYE` in any ASCII case.
pub fn is_bye(line: &[u8]) -> bool {
    line.eq_ignore_ascii_case(b"BYE")
}
