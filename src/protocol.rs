//! The trait a line protocol implements: a line in, zero or more lines out.
//!
//! The server owns sockets, buffers and framing; a protocol only sees whole
//! lines (without `\n` or a trailing `\r`) and appends replies to an
//! [`Output`]. Everything a protocol appends while answering the lines of one
//! read leaves in a single write.

use std::net::SocketAddr;

/// What the server does with a connection after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading lines.
    Continue,
    /// Send what was written so far, then close the connection.
    Close,
}

/// A line protocol. One value serves every connection, from several threads.
pub trait Protocol: Send + Sync + 'static {
    /// Per-connection state; `()` costs nothing per connection.
    type Session: Send + 'static;

    /// A client connected; may write a greeting.
    fn open(&self, peer: SocketAddr, out: &mut Output) -> Self::Session;

    /// One line arrived; append the replies to `out`.
    fn line(&self, session: &mut Self::Session, line: &[u8], out: &mut Output) -> Flow;

    /// The connection is gone (closed by either side, or reset).
    fn close(&self, _session: Self::Session) {}
}

/// Where a protocol writes its replies: bytes bound for one connection.
pub struct Output<'a> {
    buf: &'a mut Vec<u8>,
}

impl<'a> Output<'a> {
    pub(crate) fn new(buf: &'a mut Vec<u8>) -> Self {
        Output { buf }
    }

    /// Appends `line` and a `\n`.
    pub fn line(&mut self, line: &[u8]) {
        self.buf.extend_from_slice(line);
        self.buf.push(b'\n');
    }

    /// Appends raw bytes, which should end with `\n`.
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}
