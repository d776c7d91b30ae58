//! One client connection: its socket and its line framing.
//!
//! Memory is the point of this file. An idle connection holds only its
//! socket, its peer address and empty buffers: bytes are read into the
//! worker's shared [`Scratch`] buffer, and a connection takes a buffer of its
//! own only for what must outlive one wake-up (a partial line, or replies the
//! socket would not take yet), giving it back as soon as it is empty.
//!
//! Every complete line of one read is answered into one output buffer, which
//! leaves in one `write`. A connection whose replies the client does not read
//! stops being read (TCP backpressure), so its memory stays bounded by about
//! `max_line` plus one read and one output cap. Messages from other
//! connections (chat) wait in a queue of shared buffers, written with one
//! vectored write per round and bounded by `max_queue`.

use crate::metrics::{Counts, Refusal};
use crate::protocol::{CloseReason, ConnId, Flow, Message, Output, Protocol};
use crate::transport::Transport;
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, IoSlice, Read};
use std::net::SocketAddr;

/// Bytes read per `read` call.
pub const READ_CHUNK: usize = 16 * 1024;
/// Answering stops for a while once this many reply bytes are waiting.
pub const OUTPUT_CAP: usize = 64 * 1024;
/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 64;
/// Reads one `drive` may do before letting other connections have a turn.
const READ_BUDGET: usize = 4;

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
        self.output.clear();
        Output::new(id, &mut self.output, &mut self.post)
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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and answering.
    Open,
    /// Server shutdown: reading only what already reached the socket
    /// (until a read finds it dry), answering it, then `Draining`.
    Emptying {
        /// Bytes that were in the socket at the signal and are not read
        /// yet (`u32::MAX`: unknown, read until dry). A client that keeps
        /// sending must not keep the drain going.
        left: u32,
    },
    /// No more reads: answer the complete lines already buffered, flush, close.
    Draining(CloseReason),
    /// No more answers: flush, close.
    Closing(CloseReason),
    /// Closed by the server, all replies handed to the kernel and the write
    /// side shut down: reading and discarding what the client still sends
    /// until its EOF (see [`Connection::linger`]). No buffer, no session.
    Lingering {
        /// Bytes thrown away since the last sweep.
        discarded: u32,
    },
}

/// Bytes a lingering connection's socket is read for, at most, between two
/// sweeps: past that it is left unread until the next one (TCP
/// backpressure), so a client that floods after its close costs little.
pub const LINGER_BYTES: u32 = 1 << 20;

/// Messages from other connections waiting for the socket.
#[derive(Default)]
struct Mail {
    queue: VecDeque<Message>,
    /// Bytes of the front message already written.
    head: usize,
    /// Bytes waiting in all of `queue`, less `head`.
    bytes: usize,
}

/// A client connection.
pub struct Connection<S> {
    id: ConnId,
    stream: Transport,
    peer: SocketAddr,
    /// A partial line, or lines not yet answered because the output was full.
    input: Vec<u8>,
    /// Replies the socket has not taken yet.
    output: Vec<u8>,
    /// Taken on the first message from another connection.
    mail: Option<Box<Mail>>,
    /// `input` may hold complete lines that were not answered yet.
    backlog: bool,
    phase: Phase,
    /// Idle sweeps since the last complete line.
    idle: u32,
    /// Lines it may still have answered before the next refill
    /// (`u32::MAX`: no limit).
    budget: u32,
    /// It ran out of budget with lines waiting: no reading until a refill.
    throttled: bool,
    /// Bytes left for the client since the last sweep.
    wrote: bool,
    /// Sweeps in a row with bytes pending and none taken by the socket.
    stalled: u32,
    /// `None` until a TLS handshake is done: the protocol opens the
    /// session only for a client it can talk to.
    session: Option<S>,
    /// Refused at accept: after the TLS handshake it gets this reason
    /// instead of a session.
    refusal: Option<Refusal>,
}

impl<S> Connection<S> {
    /// Wraps an accepted stream; runs the protocol's greeting (for TLS,
    /// once the handshake is done).
    pub fn open<P: Protocol<Session = S>>(
        refusal: Option<Refusal>,
        budget: Option<u32>,
        id: ConnId,
        stream: Transport,
        peer: SocketAddr,
        proto: &mut P,
        scratch: &mut Scratch,
    ) -> Self {
        let mut conn = Connection {
            id,
            stream,
            peer,
            input: Vec::new(),
            output: Vec::new(),
            mail: None,
            backlog: false,
            phase: Phase::Open,
            idle: 0,
            budget: budget.unwrap_or(u32::MAX),
            throttled: false,
            wrote: false,
            stalled: 0,
            session: None,
            refusal,
        };
        conn.greet(proto, scratch);
        conn
    }

    /// Opens the protocol's session once the stream is ready for it.
    fn greet<P: Protocol<Session = S>>(&mut self, proto: &mut P, scratch: &mut Scratch) {
        if self.session.is_some() || self.stream.handshaking() {
            return;
        }
        scratch.output.clear();
        if let Some(why) = self.refusal {
            if self.phase == Phase::Open {
                scratch.output.extend_from_slice(why.line());
                self.send(scratch);
                // Never admitted, never served: its line is no output.
                scratch.counts.bytes_out -= why.line().len() as u64;
                self.phase = Phase::Closing(CloseReason::Protocol);
            }
            return;
        }
        let out = &mut Output::new(self.id, &mut scratch.output, &mut scratch.post);
        self.session = Some(proto.open(self.peer, out));
        self.send(scratch);
    }

    /// True while a TLS handshake is under way.
    pub fn handshaking(&self) -> bool {
        self.stream.handshaking()
    }

    /// True for a connection refused at accept, kept only to say why.
    pub fn refused(&self) -> bool {
        self.refusal.is_some()
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket, for (re)registration with the event loop.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.stream.tcp()
    }

    /// Ends the connection: half-closes so replies are followed by a FIN,
    /// and hands back the session (none if a TLS handshake never finished).
    pub fn finish(mut self) -> Option<S> {
        self.stream.shutdown_write();
        self.session
    }

    /// Starts a lingering close, as nginx's `lingering_close` does: our
    /// side is shut down (after everything pending, which the kernel sends
    /// before the FIN), and what the client still sends is read and thrown
    /// away until its EOF. Closing a socket with unread input would make the
    /// kernel reset the connection and drop replies still on their way.
    /// Buffers are freed; the session is handed back to be closed.
    pub fn linger(&mut self) -> Option<S> {
        self.stream.shutdown_write();
        self.phase = Phase::Lingering { discarded: 0 };
        self.input = Vec::new();
        self.output = Vec::new();
        self.mail = None;
        self.backlog = false;
        self.idle = 0;
        self.stalled = 0;
        self.session.take()
    }

    /// True once [`linger`](Self::linger) was called.
    pub fn lingering(&self) -> bool {
        matches!(self.phase, Phase::Lingering { .. })
    }

    /// Bytes the server still held for the client (replies and messages
    /// not yet taken by the kernel, and TLS records).
    pub fn unsent(&self) -> usize {
        self.queued() + usize::from(self.stream.tls_pending())
    }

    /// A lingering connection's turn: reads and discards until the socket is
    /// dry or [`LINGER_BYTES`] were read since the last sweep (wait; no
    /// limit in a drain), or until the client's EOF or an error (close; the
    /// reason says which). Like [`drive`](Self::drive), it yields after a
    /// few reads so a flood does not hold the loop.
    fn discard(&mut self, scratch: &mut Scratch) -> Status {
        let Phase::Lingering { discarded } = &mut self.phase else {
            return Status::Close(CloseReason::Error);
        };
        for _ in 0..READ_BUDGET {
            if *discarded >= scratch.linger_bytes {
                self.throttled = true;
                return Status::Wait { want_write: false };
            }
            match self.stream.tcp().read(&mut scratch.input) {
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
        if self.phase != Phase::Open {
            return;
        }
        self.phase = match unread {
            Some(0) => Phase::Draining(CloseReason::Shutdown),
            Some(n) => Phase::Emptying {
                left: u32::try_from(n).unwrap_or(u32::MAX - 1),
            },
            None => Phase::Emptying { left: u32::MAX },
        };
        let Some(session) = &mut self.session else {
            return;
        };
        scratch.output.clear();
        proto.shutdown(
            session,
            &mut Output::new(self.id, &mut scratch.output, &mut scratch.post),
        );
        self.send(scratch);
    }

    /// True when it stopped reading until the next sweep (a line budget or
    /// a lingering close's byte budget spent): it must be driven again.
    pub fn take_throttled(&mut self) -> bool {
        std::mem::take(&mut self.throttled)
    }

    /// Gives it `budget` more lines; true when it was waiting for them.
    pub fn refill(&mut self, budget: u32) -> bool {
        self.budget = budget;
        std::mem::take(&mut self.throttled)
    }

    /// Counts one sweep; returns the sweeps since the last complete line,
    /// and the sweeps in a row in which pending bytes did not move at all
    /// (a client that does not read).
    ///
    /// While lingering: the sweeps since the client last sent anything, and
    /// since the lingering began.
    pub fn sweep(&mut self) -> (u32, u32) {
        self.idle += 1;
        if let Phase::Lingering { discarded } = &mut self.phase {
            *discarded = 0;
            self.stalled += 1;
            return (self.idle, self.stalled);
        }
        let moved = std::mem::take(&mut self.wrote) | self.stream.take_progress();
        let stuck = self.has_pending() && !moved;
        self.stalled = if stuck { self.stalled + 1 } else { 0 };
        (self.idle, self.stalled)
    }

    /// Closes the connection with a last line of the server's own (e.g. an
    /// idle timeout): nothing more is answered; what is pending still goes.
    pub fn end_with(&mut self, notice: &[u8], why: CloseReason, scratch: &mut Scratch) -> Status {
        self.phase = Phase::Closing(why);
        self.backlog = false;
        scratch.output.clear();
        scratch.output.extend_from_slice(notice);
        self.send(scratch);
        self.flush_only()
    }

    /// Queues a message from another connection; false when, even after
    /// offering the socket what is queued, more than `max_queue` bytes wait
    /// (the client is not keeping up).
    pub fn deliver(&mut self, msg: Message, max_queue: usize) -> bool {
        if matches!(self.phase, Phase::Closing(_) | Phase::Lingering { .. }) {
            return true;
        }
        let mail = self.mail.get_or_insert_with(Box::default);
        mail.bytes += msg.len();
        mail.queue.push_back(msg);
        if mail.bytes <= max_queue {
            return true;
        }
        // A socket error shows again on the next flush.
        let _ = self.flush();
        self.mail
            .as_ref()
            .is_none_or(|mail| mail.bytes <= max_queue)
    }

    /// Writes what is pending, without reading. Call after [`deliver`](Self::deliver).
    pub fn flush_only(&mut self) -> Status {
        match self.flush() {
            Ok(true) => match self.phase {
                Phase::Closing(why) => Status::Close(why),
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
        if self.lingering() {
            return self.discard(scratch);
        }
        scratch.budget = self.budget;
        let status = self.work(proto, scratch, max_line, hup);
        self.budget = scratch.budget;
        status
    }

    fn work<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
        hup: bool,
    ) -> Status {
        let mut reads = 0;
        loop {
            match self.flush() {
                Ok(true) => {}
                Ok(false) => return Status::Wait { want_write: true },
                Err(why) => return Status::Close(why),
            }
            if self.backlog {
                if self.throttled {
                    return Status::Wait { want_write: false };
                }
                scratch.output.clear();
                self.answer_buffered(proto, scratch, max_line);
                self.send(scratch);
                continue;
            }
            match self.phase {
                Phase::Closing(why) | Phase::Draining(why) => return Status::Close(why),
                Phase::Lingering { .. } => return Status::Close(CloseReason::Error),
                Phase::Open | Phase::Emptying { .. } => {}
            }
            // Fairness: a client that sends without pause, or whose lines
            // fan out to others, must not hold the loop.
            if reads == READ_BUDGET || !scratch.post.is_empty() {
                return Status::Yield;
            }
            reads += 1;
            let want = match self.phase {
                Phase::Emptying { left } => scratch.input.len().min(left as usize),
                _ => scratch.input.len(),
            };
            let read = self.stream.read(&mut scratch.input[..want]);
            self.greet(proto, scratch);
            match read {
                Ok(0) => {
                    // EOF: an unterminated last line is answered like any other.
                    self.phase = Phase::Draining(CloseReason::Client);
                    if !self.input.is_empty() {
                        self.input.push(b'\n');
                        self.backlog = true;
                    }
                }
                Ok(n) => {
                    scratch.counts.bytes_in += n as u64;
                    self.receive(proto, scratch, n, max_line);
                    if let Phase::Emptying { left } = &mut self.phase
                        && *left != u32::MAX
                    {
                        *left = left.saturating_sub(n as u32);
                        if *left == 0 {
                            // All that was there at the signal is read.
                            self.phase = Phase::Draining(CloseReason::Shutdown);
                        }
                    }
                    let dry = n < want && !self.stream.is_tls();
                    if !hup && dry && !self.has_pending() && !self.backlog {
                        // A short read drained the socket; epoll will tell us
                        // when more arrives, so skip the read that would fail.
                        return match self.phase {
                            Phase::Open => Status::Wait { want_write: false },
                            Phase::Emptying { .. } => Status::Close(CloseReason::Shutdown),
                            Phase::Closing(why) | Phase::Draining(why) => Status::Close(why),
                            Phase::Lingering { .. } => Status::Close(CloseReason::Error),
                        };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if matches!(self.phase, Phase::Emptying { .. }) {
                        // All that reached us is read: answer it, then close.
                        self.phase = Phase::Draining(CloseReason::Shutdown);
                        continue;
                    }
                    if self.phase != Phase::Open {
                        // `greet` refused it: flush the reason, then close.
                        continue;
                    }
                    return Status::Wait {
                        want_write: self.has_pending(),
                    };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() == io::ErrorKind::InvalidData {
                        tracing::info!(peer = %self.peer, "TLS: {e}");
                    }
                    return Status::Close(error_reason(&e));
                }
            }
        }
    }

    fn has_pending(&self) -> bool {
        self.has_unwritten() || self.stream.tls_pending()
    }

    /// Bytes of replies and messages waiting for the client.
    pub fn queued(&self) -> usize {
        self.output.len() + self.mail.as_ref().map_or(0, |m| m.bytes)
    }

    /// Replies or messages not yet handed to the transport.
    fn has_unwritten(&self) -> bool {
        !self.output.is_empty() || self.mail.as_ref().is_some_and(|m| m.bytes > 0)
    }

    /// Writes pending replies, then queued messages, in as few vectored
    /// writes as the socket takes. True when nothing is left.
    fn flush(&mut self) -> Result<bool, CloseReason> {
        loop {
            match self.stream.flush_tls() {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err(error_reason(&e)),
            }
            if !self.has_unwritten() {
                return Ok(true);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            if !self.output.is_empty() {
                slices[0] = IoSlice::new(&self.output);
                count = 1;
            }
            if let Some(mail) = &self.mail {
                for (i, msg) in mail.queue.iter().take(MAX_SLICES - count).enumerate() {
                    let skip = if i == 0 { mail.head } else { 0 };
                    slices[count] = IoSlice::new(&msg[skip..]);
                    count += 1;
                }
            }
            // One buffer goes by plain write(2), a little cheaper than writev(2).
            let result = match count {
                1 => self.stream.write(&slices[0]),
                _ => self.stream.write_vectored(&slices[..count]),
            };
            let written = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(error_reason(&e)),
            };
            self.consume(written);
        }
    }

    /// Drops `n` written bytes from the front of output, then mail.
    fn consume(&mut self, mut n: usize) {
        self.wrote |= n > 0;
        let from_output = n.min(self.output.len());
        self.output.drain(..from_output);
        if self.output.is_empty() {
            self.output = Vec::new();
        }
        n -= from_output;
        let Some(mail) = &mut self.mail else { return };
        mail.bytes -= n;
        while n > 0 {
            let left = mail.queue[0].len() - mail.head;
            if n < left {
                mail.head += n;
                return;
            }
            n -= left;
            mail.head = 0;
            mail.queue.pop_front();
        }
    }

    /// Answers the `n` bytes just read into the scratch buffer, keeping any
    /// partial line in the connection's own buffer.
    fn receive<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        n: usize,
        max_line: usize,
    ) {
        scratch.output.clear();
        if self.input.is_empty() {
            // The common case: answer straight from the scratch buffer.
            let input = std::mem::take(&mut scratch.input);
            let data = &input[..n];
            let (used, how) = answer(
                proto,
                self.id,
                self.session.as_mut(),
                self.peer,
                data,
                scratch,
                max_line,
            );
            self.after_answer(how, used);
            if matches!(self.phase, Phase::Open | Phase::Emptying { .. }) {
                self.input.extend_from_slice(&data[used..]);
            }
            scratch.input = input;
        } else {
            self.input.extend_from_slice(&scratch.input[..n]);
            self.answer_buffered(proto, scratch, max_line);
        }
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        self.send(scratch);
    }

    /// Answers the complete lines in the connection's own buffer.
    fn answer_buffered<P: Protocol<Session = S>>(
        &mut self,
        proto: &mut P,
        scratch: &mut Scratch,
        max_line: usize,
    ) {
        let (used, how) = answer(
            proto,
            self.id,
            self.session.as_mut(),
            self.peer,
            &self.input,
            scratch,
            max_line,
        );
        self.input.drain(..used);
        self.after_answer(how, used);
    }

    fn after_answer(&mut self, how: Answered, used: usize) {
        if used > 0 {
            self.idle = 0;
        }
        match how {
            Answered::AllLines => self.backlog = false,
            Answered::OutputFull => self.backlog = true,
            Answered::Throttled => {
                self.backlog = true;
                self.throttled = true;
            }
            Answered::Close(why) => {
                self.phase = Phase::Closing(why);
                self.backlog = false;
                self.input = Vec::new();
            }
        }
    }

    /// Writes the scratch output once; what the socket does not take waits
    /// in the connection's own buffer.
    fn send(&mut self, scratch: &mut Scratch) {
        let out = &scratch.output;
        if out.is_empty() {
            return;
        }
        scratch.counts.bytes_out += out.len() as u64;
        if let Some(mail) = self.mail.as_mut().filter(|mail| mail.bytes > 0) {
            // Behind messages already queued, to keep the order they were made in.
            mail.bytes += out.len();
            mail.queue.push_back(Message::from(&out[..]));
            return;
        }
        if !self.output.is_empty() {
            self.output.extend_from_slice(out);
            return;
        }
        let written = loop {
            match self.stream.write(out) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock keeps it all; a real error shows again on the next write.
                Err(_) => break 0,
            }
        };
        self.wrote |= written > 0;
        self.output.extend_from_slice(&out[written..]);
    }
}

/// The framing: the first line of `data` without its `\n` or a `\r`
/// before it, and the bytes it used; `None` until a `\n` arrives.
pub fn split_line(data: &[u8]) -> Option<(&[u8], usize)> {
    let end = memchr::memchr(b'\n', data)?;
    let line = &data[..end];
    Some((line.strip_suffix(b"\r").unwrap_or(line), end + 1))
}

/// How far [`answer`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    /// Every complete line was answered; what is left is a partial line.
    AllLines,
    /// Stopped early because enough replies are waiting.
    OutputFull,
    /// Stopped early: the connection's line budget is spent.
    Throttled,
    /// The connection must close after the replies written so far.
    Close(CloseReason),
}

/// Answers the complete lines at the start of `data` into `scratch.output`.
/// Returns the bytes consumed and why it stopped.
fn answer<P: Protocol>(
    proto: &mut P,
    id: ConnId,
    session: Option<&mut P::Session>,
    peer: SocketAddr,
    data: &[u8],
    scratch: &mut Scratch,
    max_line: usize,
) -> (usize, Answered) {
    // Lines come only after a TLS handshake, which opens the session.
    let Some(session) = session else {
        return (data.len(), Answered::Close(CloseReason::Error));
    };
    let out = &mut scratch.output;
    let mut pos = 0;
    while out.len() < OUTPUT_CAP && scratch.budget > 0 {
        let rest = &data[pos..];
        let Some((line, used)) = split_line(rest) else {
            // Allow one byte over for a `\r` whose `\n` has not arrived.
            if rest.len() > max_line + 1 {
                return (data.len(), too_long(out, max_line));
            }
            return (pos, Answered::AllLines);
        };
        pos += used;
        if line.len() > max_line {
            return (pos, too_long(out, max_line));
        }
        tracing::debug!("Client {peer}: {}", crate::escape::escape_lossy(line));
        scratch.counts.lines_in += 1;
        if scratch.budget != u32::MAX {
            scratch.budget -= 1;
        }
        let mut output = Output::new(id, out, &mut scratch.post);
        if proto.line(session, line, &mut output) == Flow::Close {
            return (pos, Answered::Close(CloseReason::Protocol));
        }
    }
    let complete = memchr::memchr(b'\n', &data[pos..]).is_some();
    let how = if !complete {
        Answered::AllLines
    } else if scratch.budget == 0 {
        scratch.counts.throttled += 1;
        Answered::Throttled
    } else {
        Answered::OutputFull
    };
    (pos, how)
}

fn too_long(out: &mut Vec<u8>, max_line: usize) -> Answered {
    out.extend_from_slice(format!("ERR line too long (max {max_line} bytes)\n").as_bytes());
    Answered::Close(CloseReason::TooLong)
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
mod tests {
    use super::*;
    use crate::mode::Echo;

    fn lines(data: &[u8], max: usize) -> (Vec<u8>, usize, Answered) {
        let mut scratch = Scratch::default();
        let peer = "127.0.0.1:1".parse().unwrap();
        let (used, how) = answer(
            &mut Echo,
            ConnId(0),
            Some(&mut ()),
            peer,
            data,
            &mut scratch,
            max,
        );
        (scratch.output, used, how)
    }

    #[test]
    fn splits_lines_and_strips_cr() {
        let (out, used, how) = lines(b"a\r\nb\nc", 10);
        assert_eq!(out, b"a\nb\n");
        assert_eq!(used, 5);
        assert_eq!(how, Answered::AllLines);
    }

    #[test]
    fn only_one_trailing_cr_is_stripped_and_bytes_are_opaque() {
        let (out, _, _) = lines(b"x\r\r\n\xff\xfe\n", 10);
        assert_eq!(out, b"x\r\n\xff\xfe\n");
    }

    #[test]
    fn overlong_complete_and_partial_lines_are_refused() {
        let (out, _, how) = lines(b"ok\n12345\n", 4);
        assert_eq!(out, b"ok\nERR line too long (max 4 bytes)\n");
        assert_eq!(how, Answered::Close(CloseReason::TooLong));
        let (out, _, how) = lines(b"123456", 4);
        assert_eq!(out, b"ERR line too long (max 4 bytes)\n");
        assert_eq!(how, Answered::Close(CloseReason::TooLong));
        // Exactly max bytes, still waiting for "\r\n", is fine.
        let (_, used, how) = lines(b"1234\r", 4);
        assert_eq!((used, how), (0, Answered::AllLines));
    }

    #[test]
    fn bye_closes_after_its_reply() {
        let (out, used, how) = lines(b"hi\nbYe\nlater\n", 10);
        assert_eq!(out, b"hi\nbYe\n");
        assert_eq!(used, 7);
        assert_eq!(how, Answered::Close(CloseReason::Protocol));
    }

    #[test]
    fn output_cap_stops_answering_with_lines_left() {
        let data = b"x\n".repeat(OUTPUT_CAP);
        let (out, used, how) = lines(&data, 10);
        assert_eq!(out.len(), OUTPUT_CAP);
        assert_eq!(used, OUTPUT_CAP);
        assert_eq!(how, Answered::OutputFull);
    }
}
