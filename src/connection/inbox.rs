//! The input side of a connection: received bytes, cut into frames by the
//! framing and answered by the protocol.
//!
//! Bytes are answered straight from the worker's scratch buffer; only what
//! must outlive one wake-up (a partial line, or complete lines left for
//! later because enough replies wait or the line budget is spent) is copied
//! into the connection's own buffer, which is given back once empty.

use super::{OUTPUT_CAP, Scratch};
use crate::escape::escape_lossy;
use crate::framing::{Decoded, Framing};
use crate::protocol::{CloseReason, ConnId, Flow, Output, Protocol};
use std::net::SocketAddr;

/// Received bytes not answered yet, and the limits on answering.
pub(super) struct Inbox {
    /// A partial line, or lines not answered yet.
    buf: Vec<u8>,
    /// `buf` may hold complete lines not answered yet.
    pub backlog: bool,
    /// A complete line was answered since the connection last asked.
    pub progressed: bool,
    /// Lines it may still have answered before the next refill
    /// (`u32::MAX`: no limit).
    pub budget: u32,
    /// It ran out of budget with lines waiting: no reading until a refill.
    pub throttled: bool,
    /// The protocol waits for mail ([`Flow::Wait`]): no answering and no
    /// reading until it says go on.
    pub waiting: bool,
}

/// How far answering got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Answered {
    /// Every complete line was answered; what is left is a partial line.
    AllLines,
    /// Stopped early because enough replies are waiting.
    OutputFull,
    /// Stopped early: the connection's line budget is spent.
    Throttled,
    /// Stopped early: the protocol waits for mail ([`Flow::Wait`]).
    Waiting,
    /// The connection must close after the replies written so far.
    Close(CloseReason),
}

/// What answering a connection's lines takes, besides the lines.
pub(super) struct Answerer<'a, P: Protocol> {
    pub proto: &'a mut P,
    pub session: &'a mut P::Session,
    pub id: ConnId,
    pub peer: SocketAddr,
    pub framing: Framing,
    pub max_line: usize,
}

impl Inbox {
    pub fn new(budget: u32) -> Self {
        Inbox {
            buf: Vec::new(),
            backlog: false,
            progressed: false,
            budget,
            throttled: false,
            waiting: false,
        }
    }

    /// Drops what is buffered.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.backlog = false;
    }

    /// Answers the `n` bytes just read into `scratch.input`, keeping what is
    /// left for later. Replies go to `scratch.output`.
    pub fn receive<P: Protocol>(
        &mut self,
        answerer: &mut Answerer<P>,
        scratch: &mut Scratch,
        n: usize,
    ) -> Answered {
        scratch.output.clear();
        let how = if self.buf.is_empty() {
            // The common case: answer straight from the scratch buffer.
            let input = std::mem::take(&mut scratch.input);
            let (used, how) = answerer.answer(&input[..n], scratch);
            if !matches!(how, Answered::Close(_)) {
                self.buf.extend_from_slice(&input[used..n]);
            }
            scratch.input = input;
            self.after(how, used)
        } else {
            self.buf.extend_from_slice(&scratch.input[..n]);
            self.answer_buffered(answerer, scratch)
        };
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
        how
    }

    /// Answers the complete lines in the connection's own buffer into
    /// `scratch.output` (which the caller cleared).
    pub fn answer_buffered<P: Protocol>(
        &mut self,
        answerer: &mut Answerer<P>,
        scratch: &mut Scratch,
    ) -> Answered {
        let (used, how) = answerer.answer(&self.buf, scratch);
        self.buf.drain(..used);
        self.after(how, used)
    }

    /// The connection's EOF: an unterminated last line is answered like any
    /// other.
    pub fn end_of_stream(&mut self, framing: Framing) {
        if !self.buf.is_empty() {
            let wrapping = framing.wrap(0);
            self.buf.extend_from_slice(wrapping.after);
            self.backlog = true;
        }
    }

    fn after(&mut self, how: Answered, used: usize) -> Answered {
        self.progressed |= used > 0;
        match how {
            Answered::AllLines => self.backlog = false,
            Answered::OutputFull => self.backlog = true,
            Answered::Throttled => {
                self.backlog = true;
                self.throttled = true;
            }
            Answered::Waiting => {
                self.backlog = true;
                self.waiting = true;
            }
            Answered::Close(_) => self.clear(),
        }
        how
    }
}

impl<P: Protocol> Answerer<'_, P> {
    /// Answers the complete lines at the start of `data` into
    /// `scratch.output`. Returns the bytes consumed and why it stopped.
    pub fn answer(&mut self, data: &[u8], scratch: &mut Scratch) -> (usize, Answered) {
        let mut pos = 0;
        while scratch.output.len() < OUTPUT_CAP && scratch.budget > 0 {
            let (line, used) = match self.framing.decode(&data[pos..], self.max_line) {
                Decoded::Frame(line, used) => (line, used),
                Decoded::Incomplete => return (pos, Answered::AllLines),
                Decoded::TooLong(used) => {
                    let notice = format!("ERR line too long (max {} bytes)", self.max_line);
                    self.framing.encode(notice.as_bytes(), &mut scratch.output);
                    return (pos + used, Answered::Close(CloseReason::TooLong));
                }
            };
            pos += used;
            tracing::debug!("Client {}: {}", self.peer, escape_lossy(line));
            scratch.counts.lines_in += 1;
            if scratch.budget != u32::MAX {
                scratch.budget -= 1;
            }
            let mut out = Output::new(
                self.id,
                self.framing,
                &mut scratch.output,
                &mut scratch.post,
            );
            match self.proto.line(self.session, line, &mut out) {
                Flow::Continue => {}
                Flow::Close => return (pos, Answered::Close(CloseReason::Protocol)),
                Flow::Wait => return (pos, Answered::Waiting),
            }
        }
        // Stopped early; lines may be left.
        let how = match self.framing.decode(&data[pos..], self.max_line) {
            Decoded::Incomplete => Answered::AllLines,
            _ if scratch.budget == 0 => {
                scratch.counts.throttled += 1;
                Answered::Throttled
            }
            _ => Answered::OutputFull,
        };
        (pos, how)
    }
}
