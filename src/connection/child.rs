//! A connection handed to a helper process (`serve --exec`): the client's
//! bytes go to the child's stdin and its stdout comes back, byte for byte.
//!
//! [`Connection::pump`] moves bytes both ways as far as the other end
//! takes them, and no further: the child's output is read only once what
//! was read before has left for the client (the socket took it), and the
//! client is read only once what it sent before is in the child's stdin.
//! So a connection in this state holds at most one read's worth each way,
//! and a side that does not keep up holds back the other with a full pipe
//! or a full socket.
//!
//! Readiness is remembered per source (`ready`), as epoll reports it
//! (edge-triggered: once), and a source is read only while it may have
//! bytes; a short read or `WouldBlock` clears it. The connection closes
//! once the child has exited (reaped), its output has ended and all of it
//! reached the client.

use super::{Connection, READ_BUDGET, Scratch, State, Status, error_reason};
use crate::exec::{self, Child};
use crate::protocol::CloseReason;
use std::io::{self, Read, Write};

/// Where the client stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// Sending: its bytes go to the child.
    Reading,
    /// Its end came: the child's stdin is closed; its output still goes.
    Ended,
    /// Gone (an error), or ended by the server (a timeout, the drain):
    /// nothing goes either way; the child is waited for.
    Gone(CloseReason),
}

/// A connection's child, and what the loop knows of its sources.
pub(super) struct Piped {
    pub child: Child,
    pub client: Side,
    /// Sources that may have bytes or room (bit `1 << source`).
    ready: u8,
}

const SOCKET: u8 = 1;
const STDIN: u8 = 1 << exec::STDIN;
const STDOUT: u8 = 1 << exec::STDOUT;
const STDERR: u8 = 1 << exec::STDERR;
const EXIT: u8 = 1 << exec::EXIT;
/// The socket reported the client's end: read it until it says so.
const HUP: u8 = 1 << 7;
/// The child's stdout reported its end: the same.
const OUT_HUP: u8 = 1 << 6;

impl Piped {
    /// True once the client is gone or the server let it go.
    pub fn abandoned(&self) -> bool {
        matches!(self.client, Side::Gone(_))
    }

    pub fn new(child: Child) -> Box<Self> {
        Box::new(Piped {
            child,
            client: Side::Reading,
            // Events before the handover are unknown: read until dry.
            ready: SOCKET | HUP | STDIN | STDOUT | OUT_HUP | STDERR,
        })
    }
}

impl<S> Connection<S> {
    /// Hands the connection to `child` (after [`Status::Spawn`]): bytes the
    /// client sent before go to its stdin first.
    pub fn adopt(&mut self, child: Child) {
        let mut piped = Piped::new(child);
        piped.child.pending = self.inbox.held().to_vec();
        self.inbox.clear();
        self.state = State::Child(piped);
    }

    /// Source `source` of the child (see [`exec::STDIN`]...) or the socket
    /// (0) reported readiness; `hup`: the socket reported the client's end,
    /// so a short read is not the last.
    pub fn child_ready(&mut self, source: usize, hup: bool) {
        if let State::Child(piped) = &mut self.state {
            piped.ready |= 1 << source;
            match source {
                0 if hup => {
                    // The client's end (or an error), maybe behind bytes
                    // the child has not taken: its grace starts now.
                    piped.ready |= HUP;
                    piped.child.start_grace();
                }
                exec::STDOUT if hup => piped.ready |= OUT_HUP,
                _ => {}
            }
        }
    }

    /// True while its child has not been reaped.
    pub fn child_alive(&self) -> bool {
        matches!(&self.state, State::Child(piped) if piped.child.status().is_none())
    }

    /// The server ends the connection for `why` (a timeout, an error)
    /// while its child runs: the child's stdin closes and its output is
    /// dropped; the connection stays until it is reaped (see
    /// [`exec::Child::tick`] for the signals).
    pub fn abandon(&mut self, why: CloseReason) {
        if let State::Child(piped) = &mut self.state {
            gone(piped, why);
            self.outbox.clear();
            self.stream.shutdown_write();
        }
    }

    /// The server drains: the child's stdin closes now; its output still
    /// goes to the client until it exits or the signals end it within
    /// `drain`.
    pub fn drain_child(&mut self, drain: std::time::Duration) {
        if let State::Child(piped) = &mut self.state {
            piped.child.drain(drain);
            if piped.client == Side::Reading {
                piped.client = Side::Ended;
            }
        }
    }

    /// The child, while the connection has one.
    pub fn child(&mut self) -> Option<&mut Child> {
        match &mut self.state {
            State::Child(piped) => Some(&mut piped.child),
            _ => None,
        }
    }

    /// Moves bytes both ways until every side says wait or the budget is
    /// spent (then it yields); closes once the child is reaped and all its
    /// output reached the client.
    pub(super) fn pump(&mut self, scratch: &mut Scratch) -> Status {
        let State::Child(piped) = &mut self.state else {
            return Status::Close(CloseReason::Error);
        };
        let peer = self.peer;
        for _ in 0..READ_BUDGET {
            let mut moved = false;
            // The child's output, once the client took the last of it.
            let flushed = match piped.client {
                Side::Gone(_) => false,
                _ => match self.outbox.flush(&mut self.stream) {
                    Ok(done) => done,
                    Err(why) => {
                        gone(piped, why);
                        false
                    }
                },
            };
            if flushed
                && piped.ready & STDOUT != 0
                && let Some(stdout) = &mut piped.child.stdout
            {
                let buf = &mut scratch.input[..];
                match read_once(stdout, buf) {
                    Some(0) => piped.child.stdout = None,
                    Some(n) => {
                        piped.child.wrote = true;
                        self.idle = 0;
                        self.quiet = 0;
                        (self.outbox).send(&mut self.stream, &buf[..n], &mut scratch.counts);
                        if n < buf.len() && piped.ready & OUT_HUP == 0 {
                            piped.ready &= !STDOUT;
                        }
                    }
                    None => piped.ready &= !(STDOUT | OUT_HUP),
                }
                moved |= piped.ready & STDOUT != 0 || piped.child.stdout.is_none();
            }
            // The client's bytes, into the child's stdin.
            if !piped.child.pending.is_empty() && piped.ready & STDIN != 0 {
                match write_pending(&mut piped.child) {
                    Ok(true) => moved = true,
                    Ok(false) => piped.ready &= !STDIN,
                    // It closed its stdin: what the client sends is dropped.
                    Err(_) => {
                        piped.child.stdin = None;
                        piped.child.pending = Vec::new();
                        moved = true;
                    }
                }
            }
            if piped.client == Side::Reading
                && piped.child.pending.is_empty()
                && piped.ready & SOCKET != 0
            {
                let buf = &mut scratch.input[..];
                match self.stream.read(buf) {
                    Ok(0) => {
                        piped.client = Side::Ended;
                        piped.child.close_stdin();
                        moved = true;
                    }
                    Ok(n) => {
                        scratch.counts.bytes_in += n as u64;
                        self.idle = 0;
                        self.quiet = 0;
                        if n < buf.len() && !self.stream.is_tls() && piped.ready & HUP == 0 {
                            piped.ready &= !SOCKET;
                        }
                        // Straight to the pipe; only what it does not take
                        // waits (and holds the client back).
                        let child = &mut piped.child;
                        match child
                            .stdin
                            .as_mut()
                            .map(|stdin| write_some(stdin, &buf[..n]))
                        {
                            Some(Ok(wrote)) if wrote < n => {
                                child.pending.extend_from_slice(&buf[wrote..n]);
                                piped.ready &= !STDIN;
                            }
                            Some(Ok(_)) => {}
                            // It closed its stdin: what the client sends is dropped.
                            Some(Err(_)) | None => child.stdin = None,
                        }
                        moved = true;
                    }
                    // Dry: an end not yet read would have been a 0.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        piped.ready &= !(SOCKET | HUP)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => gone(piped, error_reason(&e)),
                }
            }
            if piped.ready & STDERR != 0 {
                match piped
                    .child
                    .log_stderr(&mut scratch.input, peer, READ_BUDGET)
                {
                    // The budget ran out first: more may wait (a child
                    // blocked in one long write), and no new edge will say.
                    true => moved = true,
                    false => piped.ready &= !STDERR,
                }
            }
            let maybe_exited = piped.ready & EXIT != 0
                || piped.child.stdout.is_none()
                || matches!(piped.client, Side::Gone(_));
            if maybe_exited && piped.child.reap() {
                piped.ready &= !EXIT;
                if let Side::Gone(why) = piped.client {
                    piped.child.last_stderr(&mut scratch.input, peer);
                    return Status::Close(why);
                }
                if piped.child.stdout.is_none() {
                    if !piped.child.wrote && piped.child.not_started() {
                        // A shell's "not found" (127) or "cannot execute"
                        // (126), with nothing said: the client is told.
                        piped.child.wrote = true;
                        let line = b"ERR cannot start the command\n";
                        (self.outbox).send(&mut self.stream, line, &mut scratch.counts);
                    }
                    if !self.outbox.has_unwritten() && !self.stream.tls_pending() {
                        piped.child.last_stderr(&mut scratch.input, peer);
                        return Status::Close(CloseReason::Child);
                    }
                }
            }
            if !moved {
                return Status::Wait {
                    want_write: self.outbox.has_unwritten() || self.stream.tls_pending(),
                };
            }
        }
        Status::Yield
    }
}

/// The client is gone: its child gets no more input and its output is
/// dropped.
fn gone(piped: &mut Piped, why: CloseReason) {
    piped.child.orphan();
    piped.client = Side::Gone(why);
}

/// One read of a pipe: `Some(0)` at its end (or on an error), `None` when
/// it is empty for now.
fn read_once(pipe: &mut impl Read, buf: &mut [u8]) -> Option<usize> {
    loop {
        match pipe.read(buf) {
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(_) => return Some(0),
        }
    }
}

/// Writes what waits for the child's stdin; `Ok(true)` if some went,
/// `Ok(false)` when the pipe is full, an error when it is closed.
fn write_pending(child: &mut Child) -> io::Result<bool> {
    let Some(stdin) = &mut child.stdin else {
        return Err(io::ErrorKind::BrokenPipe.into());
    };
    let wrote = write_some(stdin, &child.pending)?;
    child.pending.drain(..wrote);
    if child.pending.is_empty() {
        child.pending = Vec::new();
    }
    Ok(wrote > 0)
}

/// Writes `bytes` to a pipe as far as it takes them; how many it took.
fn write_some(pipe: &mut impl Write, bytes: &[u8]) -> io::Result<usize> {
    let mut wrote = 0;
    while wrote < bytes.len() {
        match pipe.write(&bytes[wrote..]) {
            Ok(n) => wrote += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(wrote)
}
