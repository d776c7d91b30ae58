//! `echo`: every line comes back followed by `\n`; `BYE` is echoed, then closes.

use super::is_bye;
use crate::{Flow, Output, Protocol};
use std::net::SocketAddr;

/// The echo server.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Protocol for Echo {
    type Session = ();
    type Event = ();

    fn open(&mut self, _peer: SocketAddr, _out: &mut Output) {}

    fn line(&mut self, _: &mut (), line: &[u8], out: &mut Output) -> Flow {
        out.line(line);
        if is_bye(line) {
            Flow::Close
        } else {
            Flow::Continue
        }
    }
}
