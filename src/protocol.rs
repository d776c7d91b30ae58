//! The trait a line protocol implements: a line in, zero or more lines out.
//!
//! The server owns sockets, buffers and framing; a protocol only sees whole
//! lines (without `\n` or a trailing `\r`) and answers with lines (without
//! their `\n`) appended to an [`Output`], which frames them
//! ([`crate::framing`]). Everything a protocol appends while answering the
//! lines of one read leaves in a single write.
//!
//! Each event-loop thread gets its own clone of the protocol, so methods take
//! `&mut self`; state shared by all clients lives behind an `Arc`. A protocol
//! whose clients talk to each other (chat) sets [`Protocol::ONE_LOOP`], and
//! then reaches any other connection with [`Output::send`]: a [`Message`] is
//! encoded once and shared by all its recipients.

use crate::framing::Framing;
use crate::mailbox::Mailbox;
use std::net::SocketAddr;
use std::sync::Arc;

/// What the server does with a connection after a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading lines.
    Continue,
    /// Send what was written so far, then close the connection.
    Close,
    /// Answer no more of this connection's lines until mail for it
    /// ([`Protocol::event`]) returns [`Flow::Continue`]: the protocol
    /// waits for an answer from outside the loop (a claim, a query) and
    /// its next lines must come after it. They wait unread, in the
    /// connection's buffer and then the socket (TCP backpressure).
    Wait,
}

/// Names a connection within its event loop, for [`Output::send`] and
/// [`Mailbox::post`]: its slot, and the generation that tells it from
/// the connections that held the slot before and after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    key: u32,
    generation: u32,
}

impl ConnId {
    /// The connection in slot `key`, of the given generation.
    pub fn new(key: usize, generation: u32) -> Self {
        ConnId {
            key: key as u32,
            generation,
        }
    }

    /// Names no connection (the slot past any slab's).
    pub(crate) const fn nobody() -> Self {
        ConnId {
            key: u32::MAX,
            generation: 0,
        }
    }

    /// Its slot in the event loop.
    pub(crate) fn key(self) -> usize {
        self.key as usize
    }

    /// As one number (to carry it through another system and back).
    pub fn pack(self) -> u64 {
        (u64::from(self.key) << 32) | u64::from(self.generation)
    }

    /// From [`pack`](Self::pack)'s number.
    pub fn unpack(packed: u64) -> Self {
        ConnId {
            key: (packed >> 32) as u32,
            generation: packed as u32,
        }
    }
}

/// A line bound for several connections, encoded once and shared: its
/// payload, without the `\n`, which the framing adds as it is written.
pub type Message = Arc<[u8]>;

/// Why a connection ended, as told to [`Protocol::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The protocol asked for it ([`Flow::Close`]).
    Protocol,
    /// The client closed its side.
    Client,
    /// The connection was reset.
    Reset,
    /// Its line was longer than `max_line`.
    TooLong,
    /// Its queue of undelivered messages outgrew `max_queue`, or it took
    /// none of its pending bytes for `write_timeout`.
    TooSlow,
    /// It sent no complete line for `idle_timeout`.
    Idle,
    /// The server is shutting down.
    Shutdown,
    /// A socket error.
    Error,
    /// The TLS handshake failed, or a TLS record was bad.
    Tls,
    /// The TLS handshake did not finish within its timeout.
    Handshake,
    /// A WebSocket frame broke the protocol (unmasked, out of order, a
    /// text message that is not UTF-8, ...).
    Malformed,
    /// `serve --exec`: the helper process exited and its output was
    /// delivered (or it could not be started).
    Child,
}

impl CloseReason {
    /// True for the closes the server decides while the client may still be
    /// sending: they end with a lingering close, so that the replies
    /// already written reach the client instead of being lost to a reset.
    pub fn lingers(self) -> bool {
        matches!(
            self,
            CloseReason::Protocol
                | CloseReason::TooLong
                | CloseReason::Idle
                | CloseReason::Shutdown
                | CloseReason::Malformed
                | CloseReason::Child
        )
    }

    /// Its metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Protocol => "closed_by_protocol",
            CloseReason::Client => "closed_by_client",
            CloseReason::Reset => "connection_reset",
            CloseReason::TooLong => "line_too_long",
            CloseReason::TooSlow => "too_slow",
            CloseReason::Idle => "idle_timeout",
            CloseReason::Shutdown => "server_shutdown",
            CloseReason::Error => "connection_error",
            CloseReason::Tls => "tls_error",
            CloseReason::Handshake => "tls_handshake_timeout",
            CloseReason::Malformed => "malformed_frame",
            CloseReason::Child => "child_exited",
        }
    }

    /// A few words for logs and notices.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Protocol => "closed by protocol",
            CloseReason::Client => "closed by client",
            CloseReason::Reset => "connection reset",
            CloseReason::TooLong => "line too long",
            CloseReason::TooSlow => "too slow",
            CloseReason::Idle => "idle timeout",
            CloseReason::Shutdown => "server shutdown",
            CloseReason::Error => "connection error",
            CloseReason::Tls => "TLS error",
            CloseReason::Handshake => "TLS handshake timeout",
            CloseReason::Malformed => "malformed frame",
            CloseReason::Child => "child exited",
        }
    }
}

/// A line protocol. Each event loop runs its own clone.
pub trait Protocol: Clone + Send + 'static {
    /// Per-connection state; `()` costs nothing per connection.
    type Session: Send + 'static;

    /// What other threads post to the event loop through its [`Mailbox`]
    /// (see [`start`](Protocol::start)); `()` for a protocol that takes no
    /// mail.
    type Event: Send + 'static;

    /// True when connections must reach each other through [`Output::send`]:
    /// the server then runs all of them on one event loop.
    const ONE_LOOP: bool = false;

    /// An event loop starts serving this clone; `mailbox` posts to that
    /// loop from any thread. Keep it (and hand clones to other threads) to
    /// answer from outside the loop.
    fn start(&mut self, _mailbox: Mailbox<Self::Event>) {}

    /// A client connected; may write a greeting.
    fn open(&mut self, peer: SocketAddr, out: &mut Output) -> Self::Session;

    /// One line arrived; append the replies to `out`.
    fn line(&mut self, session: &mut Self::Session, line: &[u8], out: &mut Output) -> Flow;

    /// The server is shutting down; a last word to this client.
    fn shutdown(&mut self, _session: &mut Self::Session, _out: &mut Output) {}

    /// Mail for one connection ([`Mailbox::post`]) arrived while it is
    /// still open; answers go to `out` as replies to a line do. Returns
    /// [`Flow::Wait`] to go on waiting (or start to), [`Flow::Continue`] to
    /// answer lines again.
    fn event(
        &mut self,
        _session: &mut Self::Session,
        _event: Self::Event,
        _out: &mut Output,
    ) -> Flow {
        Flow::Continue
    }

    /// Mail for the loop as a whole ([`Mailbox::post_loop`]) arrived; `out`
    /// reaches connections only through [`Output::send`].
    fn loop_event(&mut self, _event: Self::Event, _out: &mut Output) {}

    /// The connection is gone; `out` reaches only the other connections.
    fn close(&mut self, _session: Self::Session, _why: CloseReason, _out: &mut Output) {}
}

/// Where a protocol writes: replies to the current connection, and
/// messages to any other.
pub struct Output<'a> {
    id: ConnId,
    framing: Framing,
    buf: &'a mut Vec<u8>,
    post: &'a mut Vec<(ConnId, Message)>,
}

impl<'a> Output<'a> {
    pub(crate) fn new(
        id: ConnId,
        framing: Framing,
        buf: &'a mut Vec<u8>,
        post: &'a mut Vec<(ConnId, Message)>,
    ) -> Self {
        Output {
            id,
            framing,
            buf,
            post,
        }
    }

    /// The connection being served.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Appends the line `line` (without its `\n`: the framing adds it).
    pub fn line(&mut self, line: &[u8]) {
        self.framing.encode(line, self.buf);
    }

    /// Queues `msg` for connection `to` (on this event loop), after the
    /// current line's replies. Unknown connections are skipped.
    pub fn send(&mut self, to: ConnId, msg: &Message) {
        self.post.push((to, msg.clone()));
    }
}
