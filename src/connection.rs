//! One client connection: its stream, its framing, and the stages of its
//! life as one explicit state machine.
//!
//! Memory is the point of this file. An idle connection holds only its
//! stream, its peer address, its state and empty buffers: bytes are read
//! into the worker's shared [`Scratch`] buffer, and a connection takes a
//! buffer of its own only for what must outlive one wake-up (a partial
//! line, or replies the socket would not take yet), giving it back as soon
//! as it is empty. The input side ([`inbox`]) cuts received bytes into lines
//! and has the protocol answer them; the output side ([`outbox`]) holds
//! what waits for the client.
//!
//! Every complete line of one read is answered into one output buffer, which
//! leaves in one `write`. A connection whose replies the client does not read
//! stops being read (TCP backpressure), so its memory stays bounded by about
//! `max_line` plus one read and one output cap. Messages from other
//! connections (chat) wait in a queue of shared buffers, written with one
//! vectored write per round and bounded by `max_queue`.
//!
//! # Life
//!
//! ```text
//! accept --(--proxy-protocol)--> Proxy --(header read, or bad)--> Admitting
//!   |                                                                  |
//!   |   +------(the server admits the client's address, or refuses)---+
//!   v   v
//! Handshake --(refused)--> Refusing --------------------+
//!   | TLS done (at once for plain TCP)                  |
//!   v                                                   |
//! Open --(BYE, line too long, idle timeout)--> Closing -+
//!   |  \                                                |
//!   |   +--(shutdown)--> Emptying --+                   |
//!   |                               v                   |
//!   +--(the client's EOF)-------> Draining -------------+
//!                                                       | all flushed
//!                                                       v
//!                     the server's decision: Lingering --> closed
//!              the client's EOF or an error: closed at once
//! ```
//!
//! With `serve --exec`, `Open` is replaced by a helper process: once the
//! handshake is done, `Spawning` (the server starts the child, see
//! [`Status::Spawn`]), then `Child` (bytes both ways, see `child`) until
//! the child is reaped and its output delivered; then `Lingering`.
//!
//! [`State`] is that picture; a new stage (a WebSocket upgrade, a child
//! process) is one more state.
//!
//! Within `Open`, answering pauses in two cases, both limits of the inbox
//! rather than stages of a life: the line budget is spent (`--rate`), or
//! the protocol waits for an answer from outside the loop
//! ([`Flow::Wait`], until mail for the connection says go on). Either way
//! its next lines stay unread, behind TCP backpressure.
//!
//! With the PROXY protocol, the header comes before anything else (before
//! TLS too) and only the header is read: the connection peeks at its
//! socket until [`proxy::parse`] finds a whole header, then takes exactly
//! its bytes, so the ClientHello or the first lines stay in the socket for
//! the next state. Then `peer` is the client's address, and the server
//! admits it or not ([`Status::Admit`], [`Connection::admit`]).

mod child;
mod inbox;
mod outbox;

use crate::admission::Refusal;
use crate::framing::{Framing, websocket};
use crate::metrics::Counts;
use crate::protocol::{CloseReason, ConnId, Flow, Message, Output, Protocol};
use crate::proxy::{self, Parsed};
use crate::transport::Transport;
use crate::web::{self, Origins};
use child::Piped;
use inbox::{Answered, Answerer, Inbox};
use mio::net::TcpStream;
use outbox::Outbox;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::framing::split_line;

/// Bytes read per `read` call.
pub const READ_CHUNK: usize = 16 * 1024;
/// Answering stops for a while once this many reply bytes are waiting.
pub const OUTPUT_CAP: usize = 64 * 1024;
// A whole PROXY header fits in the read buffer, where it is peeked.
const _: () = assert!(proxy::MAX_LEN <= READ_CHUNK);

/// Reads one `drive` may do before letting other connections have a turn.
const READ_BUDGET: usize = 4;
/// Bytes a lingering connection's socket is read for, at most, between two
/// sweeps: past that it is left unread until the next one (TCP
/// backpressure), so a client that floods after its close costs little.
pub const LINGER_BYTES: u32 = 1 << 20;

/// Per-worker buffers shared by all of its connections.
pub struct Scratch {
    input: Box<[u8]>,
    output: Vec<u8>,
    /// Messages protocols sent to other connections, not yet queued.
    pub(crate) post: Vec<(ConnId, Message)>,
    /// Tallies for the metrics, published once per round.
    pub(crate) counts: Counts,
    /// The line budget of the connection being driven.
    budget: u32,
    /// Bytes a lingering connection may read per sweep: [`LINGER_BYTES`],
    /// or no limit in a drain (which its timeout bounds), so that clients
    /// still sending do not hold the shutdown.
    pub(crate) linger_bytes: u32,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            input: vec![0; READ_CHUNK].into_boxed_slice(),
            output: Vec::with_capacity(OUTPUT_CAP + READ_CHUNK),
            post: Vec::new(),
            counts: Counts::default(),
            budget: u32::MAX,
            linger_bytes: LINGER_BYTES,
        }
    }
}

impl Scratch {
    /// An [`Output`] for connection `id` whose replies are thrown away (the
    /// connection is gone) but whose messages to others still go out.
    pub(crate) fn detached(&mut self, id: ConnId) -> Output<'_> {
        self.output(id, Framing::default())
    }

    /// An [`Output`] for connection `id` into the cleared reply buffer.
    fn output(&mut self, id: ConnId, framing: Framing) -> Output<'_> {
        self.output.clear();
        Output::new(id, framing, &mut self.output, &mut self.post)
    }
}

/// What the event loop should do with a connection after [`Connection::drive`].
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Wait for the next readiness event.
    Wait {
        /// Bytes are pending: also wake on writability.
        want_write: bool,
    },
    /// More input may be waiting: drive it again once the others had a turn.
    Yield,
    /// Close it now, for this reason.
    Close(CloseReason),
    /// Its PROXY protocol header was read (`Ok`: [`Connection::peer`] is
    /// now the client's address), or is not valid (`Err`: why): the server
    /// decides, calls [`Connection::admit`], then drives it again.
    Admit(Result<(), &'static str>),
    /// Ready for its helper process (`serve --exec`): the server starts
    /// it, hands it over ([`Connection::adopt`]) or tells the client it
    /// could not ([`Connection::end_with`]), then drives it again.
    Spawn,
}

/// The stages of a connection's life (see the module docs for the picture).
enum State<S> {
    /// Reading the PROXY protocol header, and nothing after it. A TLS
    /// client refused at accept (server full) is told once its header and
    /// its handshake are done.
    Proxy { refusal: Option<Refusal> },
    /// The header is read (or is bad): waiting for the server to admit or
    /// refuse the client ([`Connection::admit`]).
    Admitting,
    /// Before the protocol may talk: a TLS handshake under way. A client
    /// refused at accept gets its reason once the handshake is done.
    Handshake { refusal: Option<Refusal> },
    /// On the `--web` listener: reading the HTTP request, which is answered
    /// with the page or an error (then `Closing`), or upgraded to
    /// WebSocket (then back through `Handshake`, done, with the WebSocket
    /// framing: the session opens, or a refused client gets its reason).
    Http { refusal: Option<Refusal> },
    /// Refused at accept: sending the reason, then the server closes it.
    /// It never had a session.
    Refusing,
    /// Reading lines and answering them.
    Open(S),
    /// With `serve --exec`, instead of `Open`: waiting for the server to
    /// start the helper process (see [`Status::Spawn`]).
    Spawning,
    /// Its bytes go to its helper process and back (see `child`), until
    /// the child has exited and its output is delivered; then `Lingering`.
    Child(Box<Piped>),
    /// Server shutdown: reading only the bytes that were in the socket at
    /// the signal (`left`; `u32::MAX` when unknown: until dry), answering
    /// them, then `Draining`. A client that keeps sending cannot hold it.
    Emptying { session: S, left: u32 },
    /// No more reads: answering the complete lines already buffered, then
    /// flushing, then the server closes it.
    Draining { session: S, why: CloseReason },
    /// No more answers: flushing what is pending, then the server closes
    /// it. No session for a refused client.
    Closing {
        session: Option<S>,
        why: CloseReason,
    },
    /// Closed by the server, everything pending handed to the kernel and
    /// our side shut down: reading and throwing away what the client still
    /// sends until its EOF (see [`Connection::linger`]). No buffers.
    Lingering {
        /// Bytes thrown away since the last sweep.
        discarded: u32,
    },
}

impl<S> State<S> {
    /// The reason it is ending, once it no longer reads.
    fn ending(&self) -> Option<CloseReason> {
        match self {
            State::Draining { why, .. } | State::Closing { why, .. } => Some(*why),
            State::Refusing => Some(CloseReason::Protocol),
            _ => None,
        }
    }

    /// The protocol's session, while lines may still be answered.
    fn session(&mut self) -> Option<&mut S> {
        match self {
            State::Open(session)
            | State::Emptying { session, .. }
            | State::Draining { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Takes the session out, leaving `Closing` without one.
    fn take_session(&mut self, why: CloseReason) -> Option<S> {
        let was = std::mem::replace(self, State::Closing { session: None, why });
        match was {
            State::Open(session)
            | State::Emptying { session, .. }
            | State::Draining { session, .. } => Some(session),
            State::Closing { session, .. } => session,
            State::Proxy { .. }
            | State::Admitting
            | State::Handshake { .. }
            | State::Http { .. }
            | State::Refusing
            | State::Spawning
            | State::Child(_)
            | State::Lingering { .. } => None,
        }
    }
}

/// An accepted stream, and what the server decided about it.
pub struct Accepted {
    /// Its name in the event loop.
    pub id: ConnId,
    /// The stream (TLS or not).
    pub stream: Transport,
    /// The client's address (the proxy's, until a PROXY header says).
    pub peer: SocketAddr,
    /// Refused at accept: told why as soon as it can be.
    pub refusal: Option<Refusal>,
    /// Lines per sweep it may have answered (`--max-lines-per-sec`).
    pub budget: Option<u32>,
    /// From the `--web` listener: HTTP first, then WebSocket, for pages
    /// from these origins.
    pub web: Option<Arc<Origins>>,
    /// Handed to a helper process once the handshake is done, instead of
    /// the protocol (`serve --exec`).
    pub exec: bool,
}

/// A client connection.
pub struct Connection<S> {
    id: ConnId,
    stream: Transport,
    peer: SocketAddr,
    framing: Framing,
    /// From the `--web` listener (see [`Accepted::web`]).
    web: Option<Arc<Origins>>,
    /// See [`Accepted::exec`].
    exec: bool,
    state: State<S>,
    /// Sweeps since the last complete line (lingering: since the client
    /// last sent anything).
    idle: u32,
    /// Sweeps since the client last sent anything (WebSocket keepalive).
    quiet: u32,
    inbox: Inbox,
    outbox: Outbox,
}

impl<S> Connection<S> {
    /// Wraps an accepted stream; runs the protocol's greeting (for TLS,
    /// once the handshake is done; on the web listener, once the HTTP
    /// upgrade is done), or for a client refused at accept, sends it the
    /// refusal's reason instead.
    pub fn open<P: Protocol<Session = S>>(
        accepted: Accepted,
        proto: &mut P,
        scratch: &mut Scratch,
    ) -> Self {
        let refusal = accepted.refusal;
        let mut conn = Connection::new(State::Handshake { refusal }, accepted);
        conn.greet(proto, scratch);
        conn
    }

    /// Wraps an accepted stream that starts with a PROXY protocol header
    /// (`peer` is the proxy's address until the header is read). A client
    /// refused at accept is told at once over plain TCP (its header is
    /// thrown away with the rest), over TLS once its header and handshake
    /// are done.
    pub fn proxied<P: Protocol<Session = S>>(
        accepted: Accepted,
        proto: &mut P,
        scratch: &mut Scratch,
    ) -> Self {
        let refusal = accepted.refusal;
        if refusal.is_some() && !accepted.stream.is_tls() && accepted.web.is_none() {
            return Connection::open(accepted, proto, scratch);
        }
        Connection::new(State::Proxy { refusal }, accepted)
    }

    fn new(state: State<S>, accepted: Accepted) -> Self {
        Connection {
            id: accepted.id,
            stream: accepted.stream,
            peer: accepted.peer,
            framing: Framing::default(),
            web: accepted.web,
            exec: accepted.exec,
            state,
            idle: 0,
            quiet: 0,
            inbox: Inbox::new(accepted.budget.unwrap_or(u32::MAX)),
            outbox: Outbox::default(),
        }
    }

    /// The server's word on a client whose PROXY header was read (after
    /// [`Status::Admit`]): `None` admits it (its session opens, over TLS
    /// once the handshake is done), a refusal is told to it.
    pub fn admit<P: Protocol<Session = S>>(
        &mut self,
        refusal: Option<Refusal>,
        proto: &mut P,
        scratch: &mut Scratch,
    ) {
        if let State::Admitting = self.state {
            self.state = State::Handshake { refusal };
            self.greet(proto, scratch);
        }
    }

    /// Leaves `Handshake` once the stream is ready for the protocol: opens
    /// its session, or tells a refused client why.
    fn greet<P: Protocol<Session = S>>(&mut self, proto: &mut P, scratch: &mut Scratch) {
        let State::Handshake { refusal } = self.state else {
            return;
        };
        if self.stream.handshaking() {
            return;
        }
        if self.web.is_some() && self.framing == Framing::Line {
            // HTTP first; the upgrade comes back here.
            self.state = State::Http { refusal };
            return;
        }
        scratch.output.clear();
        match refusal {
            Some(why) => {
                self.state = State::Refusing;
                match self.framing {
                    Framing::Line => self.framing.encode(&why.line(), &mut scratch.output),
                    Framing::WebSocket => {
                        websocket::close(
                            websocket::code::POLICY,
                            why.reason(),
                            &mut scratch.output,
                        );
                        self.inbox.closed = true;
                    }
                }
                self.send(scratch);
                // Never admitted, never served: its line is no output.
                scratch.counts.bytes_out -= scratch.output.len() as u64;
            }
            None if self.exec => self.state = State::Spawning,
            None => {
                let mut out = scratch.output(self.id, self.framing);
                self.state = State::Open(proto.open(self.peer, &mut out));
                self.send(scratch);
            }
        }
    }

    /// Its name in the event loop.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// Mail for this connection: the protocol answers it as it answers a
    /// line (its replies queue behind the replies before them); a
    /// connection that no longer answers drops it.
    pub fn event<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        event: P::Event,
    ) -> Status {
        let Some(session) = self.state.session() else {
            return self.flush_only();
        };
        let mut out = scratch.output(self.id, self.framing);
        let flow = proto.event(session, event, &mut out);
        self.send(scratch);
        let waited = std::mem::replace(&mut self.inbox.waiting, flow == Flow::Wait);
        if flow == Flow::Close {
            let session = self.state.take_session(CloseReason::Protocol);
            self.inbox.clear();
            self.state = State::Closing {
                session,
                why: CloseReason::Protocol,
            };
        }
        match self.flush_only() {
            // It may answer and read again: the server drives it.
            Status::Wait { .. } if waited && flow == Flow::Continue => Status::Yield,
            status => status,
        }
    }

    /// True for a connection from the `--web` listener.
    pub fn is_web(&self) -> bool {
        self.web.is_some()
    }

    /// True before the protocol may talk: while the PROXY header is read,
    /// a TLS handshake is under way or an HTTP request is read.
    pub fn handshaking(&self) -> bool {
        matches!(
            self.state,
            State::Proxy { .. } | State::Admitting | State::Handshake { .. } | State::Http { .. }
        )
    }

    /// The client's address: with the PROXY protocol, the one its header
    /// gave (the proxy's own until then, or with a header that gave none).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// With TLS and a client certificate: its subject.
    pub fn client_subject(&self) -> Option<String> {
        self.stream.peer_subject()
    }

    /// The socket, for (re)registration with the event loop.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.stream.tcp()
    }

    /// Ends the connection: half-closes so replies are followed by a FIN,
    /// and hands back the session (none if it never had one).
    pub fn finish(mut self) -> Option<S> {
        self.stream.shutdown_write();
        self.state.take_session(CloseReason::Error)
    }

    /// Starts a lingering close, as nginx's `lingering_close` does: our
    /// side is shut down (after everything pending, which the kernel sends
    /// before the FIN), and what the client still sends is read and thrown
    /// away until its EOF. Closing a socket with unread input would make the
    /// kernel reset the connection and drop replies still on their way.
    /// Buffers are freed; the session is handed back to be closed.
    pub fn linger(&mut self) -> Option<S> {
        self.close_frame();
        self.stream.shutdown_write();
        let session = self.state.take_session(CloseReason::Error);
        self.state = State::Lingering { discarded: 0 };
        self.inbox.clear();
        self.outbox.clear();
        self.idle = 0;
        self.outbox.stalled = 0;
        session
    }

    /// True once [`linger`](Self::linger) was called.
    pub fn lingering(&self) -> bool {
        matches!(self.state, State::Lingering { .. })
    }

    /// Bytes the server still held for the client (replies and messages
    /// not yet taken by the kernel, and TLS records).
    pub fn unsent(&self) -> usize {
        self.queued() + usize::from(self.stream.tls_pending())
    }

    /// Bytes of replies and messages waiting for the client.
    pub fn queued(&self) -> usize {
        self.outbox.queued()
    }

    /// Server shutdown: the protocol's last word, then reading only the
    /// `unread` bytes that were in the socket at the signal (or, if `None`,
    /// until it is dry); every line that reached it gets its reply, a
    /// partial line is dropped.
    pub fn stop_reading<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        unread: Option<u64>,
    ) {
        if let State::Proxy { .. } | State::Admitting | State::Http { .. } = self.state {
            // Never served: nothing to answer, just close.
            self.state = State::Closing {
                session: None,
                why: CloseReason::Shutdown,
            };
            return;
        }
        let State::Open(session) = &mut self.state else {
            return;
        };
        let mut out = scratch.output(self.id, self.framing);
        proto.shutdown(session, &mut out);
        let Some(session) = self.state.take_session(CloseReason::Shutdown) else {
            return;
        };
        self.state = match unread {
            Some(0) => State::Draining {
                session,
                why: CloseReason::Shutdown,
            },
            Some(n) => State::Emptying {
                session,
                left: u32::try_from(n).unwrap_or(u32::MAX - 1),
            },
            None => State::Emptying {
                session,
                left: u32::MAX,
            },
        };
        self.send(scratch);
    }

    /// True when it stopped reading until the next sweep (a line budget or
    /// a lingering close's byte budget spent): it must be driven again.
    pub fn take_throttled(&mut self) -> bool {
        std::mem::take(&mut self.inbox.throttled)
    }

    /// Gives it `budget` more lines; true when it was waiting for them.
    pub fn refill(&mut self, budget: u32) -> bool {
        self.inbox.budget = budget;
        self.take_throttled()
    }

    /// Counts one sweep; returns the sweeps since the last complete line,
    /// and the sweeps in a row in which pending bytes did not move at all
    /// (a client that does not read).
    ///
    /// While lingering: the sweeps since the client last sent anything, and
    /// since the lingering began.
    pub fn sweep(&mut self) -> (u32, u32) {
        self.idle += 1;
        self.quiet += 1;
        if let State::Lingering { discarded } = &mut self.state {
            *discarded = 0;
            self.outbox.stalled += 1;
            return (self.idle, self.outbox.stalled);
        }
        let moved = std::mem::take(&mut self.outbox.wrote) | self.stream.take_progress();
        let stuck = self.has_pending() && !moved;
        self.outbox.stalled = if stuck { self.outbox.stalled + 1 } else { 0 };
        (self.idle, self.outbox.stalled)
    }

    /// True for a WebSocket member (upgraded, session open).
    pub fn is_websocket_member(&self) -> bool {
        self.framing == Framing::WebSocket && matches!(self.state, State::Open(_))
    }

    /// A WebSocket member silent for a multiple of `every` sweeps gets a
    /// ping; true if bytes now wait to be flushed.
    pub fn keepalive(&mut self, every: u32, scratch: &mut Scratch) -> bool {
        let due = self.quiet > 0 && self.quiet.is_multiple_of(every);
        if !due || !self.is_websocket_member() {
            return false;
        }
        let mut ping = Vec::new();
        websocket::ping(&mut ping);
        (self.outbox).send(&mut self.stream, &ping, &mut scratch.counts);
        self.has_pending()
    }

    /// Closes the connection with a last line of the server's own (e.g. an
    /// idle timeout): nothing more is answered; what is pending still goes.
    pub fn end_with(&mut self, notice: &[u8], why: CloseReason, scratch: &mut Scratch) -> Status {
        if let State::Child(piped) = &self.state {
            if piped.abandoned() {
                // Told already; waiting for the child to be reaped.
                return Status::Wait { want_write: false };
            }
            // The notice, then the child is let go (see `abandon`).
            let mut line = notice.to_vec();
            line.push(b'\n');
            (self.outbox).send(&mut self.stream, &line, &mut scratch.counts);
            let _ = self.outbox.flush(&mut self.stream);
            self.abandon(why);
            return Status::Wait { want_write: false };
        }
        let session = self.state.take_session(why);
        self.state = State::Closing { session, why };
        self.inbox.clear();
        scratch.output.clear();
        self.framing.encode(notice, &mut scratch.output);
        self.send(scratch);
        self.flush_only()
    }

    /// Queues a message from another connection; false when, even after
    /// offering the socket what is queued, more than `max_queue` bytes wait
    /// (the client is not keeping up).
    pub fn deliver(&mut self, msg: Message, max_queue: usize) -> bool {
        if matches!(
            self.state,
            State::Closing { .. } | State::Refusing | State::Lingering { .. } | State::Child(_)
        ) {
            return true;
        }
        (self.outbox).deliver(&mut self.stream, self.framing, msg, max_queue)
    }

    /// Writes what is pending, without reading. Call after [`deliver`](Self::deliver).
    pub fn flush_only(&mut self) -> Status {
        match self.outbox.flush(&mut self.stream) {
            Ok(true) => match self.state {
                State::Closing { why, .. } => Status::Close(why),
                State::Refusing => Status::Close(CloseReason::Protocol),
                _ => Status::Wait { want_write: false },
            },
            Ok(false) => Status::Wait { want_write: true },
            Err(why) => Status::Close(why),
        }
    }

    /// Does all the work the socket allows now: flush pending bytes, read,
    /// answer, write. Call on every readiness event; `hup` says the event
    /// reported the peer's end of stream, so a short read is not the last.
    pub fn drive<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
        hup: bool,
    ) -> Status {
        match self.state {
            State::Lingering { .. } => return self.discard(scratch),
            State::Proxy { refusal } => return self.proxy_header(refusal, scratch, hup),
            State::Admitting => return Status::Wait { want_write: false },
            State::Http { refusal } => return self.http(refusal, proto, scratch, max_line, hup),
            State::Spawning => return Status::Spawn,
            State::Child(_) => return self.pump(scratch),
            _ => {}
        }
        scratch.budget = self.inbox.budget;
        let status = self.work(proto, scratch, max_line, hup);
        self.inbox.budget = scratch.budget;
        status
    }

    /// Flush, answer what is buffered, read: until the socket or a limit
    /// says wait, or the connection is done.
    fn work<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
        hup: bool,
    ) -> Status {
        let mut reads = 0;
        loop {
            match self.outbox.flush(&mut self.stream) {
                Ok(true) => {}
                Ok(false) => return Status::Wait { want_write: true },
                Err(why) => return Status::Close(why),
            }
            if self.inbox.waiting {
                // Until mail for it says go on (see `event`).
                return Status::Wait { want_write: false };
            }
            if self.inbox.backlog {
                if self.inbox.throttled {
                    return Status::Wait { want_write: false };
                }
                self.answer(proto, scratch, max_line, None);
                continue;
            }
            if let Some(why) = self.state.ending() {
                return Status::Close(why);
            }
            // Fairness: a client that sends without pause, or whose lines
            // fan out to others, must not hold the loop.
            if reads == READ_BUDGET || !scratch.post.is_empty() {
                return Status::Yield;
            }
            reads += 1;
            if let Some(status) = self.read(proto, scratch, max_line, hup) {
                return status;
            }
        }
    }

    /// One read, and what follows from it; `None` to go on working.
    fn read<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
        hup: bool,
    ) -> Option<Status> {
        let want = match self.state {
            State::Emptying { left, .. } => scratch.input.len().min(left as usize),
            _ => scratch.input.len(),
        };
        let read = self.stream.read(&mut scratch.input[..want]);
        self.greet(proto, scratch);
        if let (State::Http { refusal }, Ok(n)) = (&self.state, &read) {
            // The TLS handshake just ended on the web listener: HTTP.
            let (refusal, n) = (*refusal, *n);
            self.inbox.hold(&scratch.input[..n]);
            return Some(self.http(refusal, proto, scratch, max_line, hup));
        }
        if let State::Spawning = self.state {
            // The TLS handshake just ended: its first bytes are the
            // child's (an end or an error shows again on the next read).
            if let Ok(n) = read {
                self.inbox.hold(&scratch.input[..n]);
            }
            return Some(Status::Spawn);
        }
        match read {
            Ok(0) => {
                self.inbox.end_of_stream(self.framing);
                if let Some(session) = self.state.take_session(CloseReason::Client) {
                    self.state = State::Draining {
                        session,
                        why: CloseReason::Client,
                    };
                }
                None
            }
            Ok(n) => {
                scratch.counts.bytes_in += n as u64;
                self.quiet = 0;
                self.answer(proto, scratch, max_line, Some(n));
                if let State::Emptying { left, .. } = &mut self.state
                    && *left != u32::MAX
                {
                    *left = left.saturating_sub(n as u32);
                    if *left == 0 {
                        // All that was there at the signal is read.
                        self.drain(CloseReason::Shutdown);
                    }
                }
                let dry = n < want && !self.stream.is_tls();
                if !hup && dry && !self.has_pending() && !self.inbox.backlog {
                    // A short read drained the socket; epoll will tell us
                    // when more arrives, so skip the read that would fail.
                    return Some(match &self.state {
                        State::Emptying { .. } => Status::Close(CloseReason::Shutdown),
                        state => match state.ending() {
                            Some(why) => Status::Close(why),
                            None => Status::Wait { want_write: false },
                        },
                    });
                }
                None
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => match self.state {
                // All that reached us is read: answer it, then close.
                State::Emptying { .. } => {
                    self.drain(CloseReason::Shutdown);
                    None
                }
                State::Handshake { .. } | State::Open(_) => Some(Status::Wait {
                    want_write: self.has_pending(),
                }),
                // Refused after a handshake: flush the reason, then close.
                _ => None,
            },
            Err(e) if e.kind() == io::ErrorKind::Interrupted => None,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    tracing::debug!(peer = %self.peer, error = %e, "TLS error");
                }
                Some(Status::Close(error_reason(&e)))
            }
        }
    }

    /// Reads and answers the HTTP request on the web listener: the page
    /// or an error, then the connection closes; or the WebSocket upgrade,
    /// then the session opens (or a refused client gets its close frame)
    /// and any bytes after the request are its first frames.
    fn http<P: Protocol<Session = S>>(
        &mut self,
        refusal: Option<Refusal>,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
        hup: bool,
    ) -> Status {
        let origins = self.web.clone().unwrap_or_default();
        let (request, used) = loop {
            if let Some(parsed) = web::parse(self.inbox.held(), &origins) {
                break parsed;
            }
            match self.stream.read(&mut scratch.input) {
                Ok(0) => return Status::Close(CloseReason::Client),
                Ok(n) => {
                    scratch.counts.bytes_in += n as u64;
                    self.inbox.hold(&scratch.input[..n]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return match hup {
                        true => Status::Close(CloseReason::Client),
                        false => Status::Wait { want_write: false },
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Status::Close(error_reason(&e)),
            }
        };
        self.inbox.take_held(used);
        scratch.output.clear();
        let refused = refusal.map(|why| why.reason());
        scratch.output.extend(web::response(&request, refused));
        self.send(scratch);
        // An answer, not output of the protocol's.
        scratch.counts.bytes_out -= scratch.output.len() as u64;
        let answer = match request {
            web::Request::Page => 0,
            web::Request::Upgrade(_) => 1,
            web::Request::Error(..) => 2,
        };
        scratch.counts.web[answer] += 1;
        match request {
            web::Request::Upgrade(_) => {
                tracing::debug!(peer = %self.peer, "WebSocket upgrade");
                self.framing = Framing::WebSocket;
                self.state = State::Handshake { refusal };
                self.greet(proto, scratch);
                self.inbox.backlog = !self.inbox.held().is_empty();
            }
            web::Request::Page => {
                self.inbox.clear();
                self.state = State::Closing {
                    session: None,
                    why: CloseReason::Protocol,
                };
            }
            web::Request::Error(code, _, why) => {
                tracing::debug!(peer = %self.peer, status = code, reason = why, "HTTP error");
                self.inbox.clear();
                self.state = State::Closing {
                    session: None,
                    why: CloseReason::Malformed,
                };
            }
        }
        self.work(proto, scratch, max_line, hup)
    }

    /// A WebSocket connection the server ends says so with a close frame
    /// (unless one went out already), when nothing else is pending.
    fn close_frame(&mut self) {
        if self.framing != Framing::WebSocket || self.inbox.closed || self.has_pending() {
            return;
        }
        let (code, reason) = match self.state.ending() {
            Some(CloseReason::Shutdown) => (websocket::code::GOING_AWAY, "server shutting down"),
            Some(CloseReason::TooLong) => (websocket::code::TOO_BIG, "message too long"),
            Some(CloseReason::TooSlow) => (websocket::code::POLICY, "too slow"),
            Some(CloseReason::Idle) => (websocket::code::NORMAL, "idle timeout"),
            _ => (websocket::code::NORMAL, ""),
        };
        let mut frame = Vec::new();
        websocket::close(code, reason, &mut frame);
        self.inbox.closed = true;
        // A fresh socket buffer takes a few bytes; if not, no frame.
        let _ = self.stream.write(&frame);
        let _ = self.stream.flush_tls();
    }

    /// Reads the PROXY header, and only the header: peeks until the socket
    /// holds a whole one, then takes its bytes, leaving what follows. A
    /// partial header waits for more (the handshake timeout bounds it); the
    /// client's end before a whole one closes it.
    fn proxy_header(
        &mut self,
        refusal: Option<Refusal>,
        scratch: &mut Scratch,
        hup: bool,
    ) -> Status {
        let peek = &mut scratch.input[..proxy::MAX_LEN];
        let n = loop {
            match self.stream.peek(peek) {
                Ok(0) => return Status::Close(CloseReason::Client),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Status::Wait { want_write: false };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Status::Close(error_reason(&e)),
            }
        };
        let (len, client) = match proxy::parse(&peek[..n]) {
            // The client's end came, and no more will.
            Parsed::Incomplete if hup => return Status::Close(CloseReason::Client),
            Parsed::Incomplete => return Status::Wait { want_write: false },
            Parsed::Invalid(why) => {
                if refusal.is_some() {
                    // Refused already; no header to tell it after.
                    return Status::Close(CloseReason::Protocol);
                }
                self.state = State::Admitting;
                return Status::Admit(Err(why));
            }
            Parsed::Header { len, source, .. } => (len, Some(source)),
            Parsed::Local { len } => (len, None),
        };
        // The bytes are in the socket: take exactly the header's.
        let mut left = len;
        while left > 0 {
            match self.stream.read_raw(&mut scratch.input[..left]) {
                Ok(0) => return Status::Close(CloseReason::Client),
                Ok(n) => left -= n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Status::Close(error_reason(&e)),
            }
        }
        if let Some(client) = client {
            self.peer = client;
        }
        match refusal {
            None => {
                self.state = State::Admitting;
                Status::Admit(Ok(()))
            }
            Some(why) => {
                // On to the handshake, after which it is told.
                self.state = State::Handshake { refusal: Some(why) };
                Status::Yield
            }
        }
    }

    /// Stops reading: the buffered lines are answered, then it closes.
    fn drain(&mut self, why: CloseReason) {
        if let Some(session) = self.state.take_session(why) {
            self.state = State::Draining { session, why };
        }
    }

    /// Answers lines: the `n` bytes just read into the scratch buffer, or
    /// with `None` the backlog in the connection's own buffer. The replies
    /// are written, and a protocol's close or a line too long ends it.
    fn answer<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
        read: Option<usize>,
    ) {
        let Some(session) = self.state.session() else {
            // Nobody to answer (a refused client): its bytes go unread.
            self.inbox.clear();
            return;
        };
        let mut answerer = Answerer {
            proto,
            session,
            id: self.id,
            peer: self.peer,
            framing: self.framing,
            max_line,
        };
        let how = match read {
            Some(n) => self.inbox.receive(&mut answerer, scratch, n),
            None => {
                scratch.output.clear();
                self.inbox.answer_buffered(&mut answerer, scratch)
            }
        };
        self.send(scratch);
        if std::mem::take(&mut self.inbox.progressed) {
            self.idle = 0;
        }
        if let Answered::Close(why) = how {
            let session = self.state.take_session(why);
            self.state = State::Closing { session, why };
        }
    }

    /// A lingering connection's turn: reads and discards until the socket is
    /// dry or [`LINGER_BYTES`] were read since the last sweep (wait; no
    /// limit in a drain), or until the client's EOF or an error (close; the
    /// reason says which). Like [`drive`](Self::drive), it yields after a
    /// few reads so a flood does not hold the loop.
    fn discard(&mut self, scratch: &mut Scratch) -> Status {
        let State::Lingering { discarded } = &mut self.state else {
            return Status::Close(CloseReason::Error);
        };
        for _ in 0..READ_BUDGET {
            if *discarded >= scratch.linger_bytes {
                self.inbox.throttled = true;
                return Status::Wait { want_write: false };
            }
            match self.stream.read_raw(&mut scratch.input) {
                Ok(0) => return Status::Close(CloseReason::Client),
                Ok(n) => {
                    self.idle = 0;
                    *discarded = discarded.saturating_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Status::Wait { want_write: false };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Status::Close(error_reason(&e)),
            }
        }
        Status::Yield
    }

    fn has_pending(&self) -> bool {
        self.outbox.has_unwritten() || self.stream.tls_pending()
    }

    /// Writes the scratch output (framed replies) once; what the socket
    /// does not take waits.
    fn send(&mut self, scratch: &mut Scratch) {
        (self.outbox).send(&mut self.stream, &scratch.output, &mut scratch.counts);
    }
}

fn error_reason(e: &io::Error) -> CloseReason {
    match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => CloseReason::Reset,
        // Only TLS reports bad data.
        io::ErrorKind::InvalidData => CloseReason::Tls,
        _ => CloseReason::Error,
    }
}

#[cfg(test)]
mod tests;
