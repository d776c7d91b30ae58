//! `ack`: the tutorial's protocol, byte for byte. Every line is answered with
//! ` MSG Received` (leading space included); `BYE` is answered, then closes.

use super::is_bye;
use crate::{Flow, Output, Protocol};
use std::net::SocketAddr;

/// The reply to every line (the framing adds its `\n`).
pub const REPLY: &[u8] = b" MSG Received";

/// The tutorial's acknowledging server.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ack;

impl Protocol for Ack {
    type Session = ();
    type Event = ();

    fn open(&mut self, _peer: SocketAddr, _out: &mut Output) {}

    fn line(&mut self, _: &mut (), line: &[u8], out: &mut Output) -> Flow {
        out.line(REPLY);
        if is_bye(line) {
            Flow::Close
        } else {
            Flow::Continue
        }
    }
}
