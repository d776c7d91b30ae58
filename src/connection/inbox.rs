//! The input side of a connection: received bytes, cut into frames by the
//! framing and answered by the protocol.
//!
//! Bytes are answered straight from the worker's scratch buffer; only what
//! must outlive one wake-up (a partial line, or complete lines left for
//! later because enough replies wait or the line budget is spent) is copied
//! into the connection's own buffer, which is given back once empty.

use super::{OUTPUT_CAP, Scratch};
use crate::escape::escape_lossy;
use crate::framing::websocket::{self, Frame, Parsed};
use crate::framing::{Decoded, Framing};
use crate::protocol::{CloseReason, ConnId, Flow, Output, Protocol};
use std::net::SocketAddr;

/// Received bytes not answered yet, and the limits on answering.
pub(super) struct Inbox {
    /// A partial line, or lines not answered yet.
    buf: Vec<u8>,
    /// WebSocket: the fragmented message being reassembled, if any (boxed:
    /// one pointer on every connection that has none).
    partial: Option<Box<Partial>>,
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
    /// WebSocket: a close frame went out (so none more as it ends).
    pub closed: bool,
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
            partial: None,
            backlog: false,
            progressed: false,
            budget,
            throttled: false,
            waiting: false,
            closed: false,
        }
    }

    /// Keeps `bytes` (an HTTP request being read) for later.
    pub fn hold(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// What is held.
    pub fn held(&self) -> &[u8] {
        &self.buf
    }

    /// Drops the first `n` bytes held (and the buffer, once empty).
    pub fn take_held(&mut self, n: usize) {
        self.buf.drain(..n);
        if self.buf.is_empty() {
            self.buf = Vec::new();
        }
    }

    /// Drops what is buffered.
    pub fn clear(&mut self) {
        self.buf = Vec::new();
        self.partial = None;
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
            let mut input = std::mem::take(&mut scratch.input);
            let (used, how) = answerer.answer(&mut input[..n], self.talk(), scratch);
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
        let talk = Talk {
            partial: &mut self.partial,
            closed: &mut self.closed,
        };
        let (used, how) = answerer.answer(&mut self.buf, talk, scratch);
        self.buf.drain(..used);
        self.after(how, used)
    }

    /// The WebSocket state answering needs.
    fn talk(&mut self) -> Talk<'_> {
        Talk {
            partial: &mut self.partial,
            closed: &mut self.closed,
        }
    }

    /// The connection's EOF: an unterminated last line is answered like any
    /// other (a WebSocket frame cut short is not).
    pub fn end_of_stream(&mut self, framing: Framing) {
        if !self.buf.is_empty() && framing == Framing::Line {
            self.buf.push(b'\n');
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

/// A WebSocket connection's state between reads.
pub(super) struct Talk<'a> {
    /// The fragmented message so far.
    partial: &'a mut Option<Box<Partial>>,
    /// A close frame went out.
    closed: &'a mut bool,
}

/// A fragmented WebSocket message being reassembled.
pub(super) struct Partial {
    text: bool,
    bytes: Vec<u8>,
}

/// What one frame or line came to.
enum Step {
    /// Go on with the next.
    Next,
    /// Stop here.
    Stop(Answered),
}

impl<P: Protocol> Answerer<'_, P> {
    /// Answers the complete lines (or WebSocket messages) at the start of
    /// `data` into `scratch.output`. Returns the bytes consumed and why it
    /// stopped. WebSocket frames are unmasked in place as they are taken.
    pub fn answer(
        &mut self,
        data: &mut [u8],
        mut talk: Talk,
        scratch: &mut Scratch,
    ) -> (usize, Answered) {
        let mut pos = 0;
        while scratch.output.len() < OUTPUT_CAP && scratch.budget > 0 {
            let (used, step) = match self.framing {
                Framing::Line => self.line(&data[pos..], scratch),
                Framing::WebSocket => self.frame(&mut data[pos..], &mut talk, scratch),
            };
            pos += used;
            if let Step::Stop(how) = step {
                return (pos, how);
            }
        }
        // Stopped early; lines may be left.
        let more = match self.framing {
            Framing::Line => {
                self.framing.decode(&data[pos..], self.max_line) != Decoded::Incomplete
            }
            Framing::WebSocket => websocket::ready(&data[pos..], self.max_line),
        };
        let how = match more {
            false => Answered::AllLines,
            true if scratch.budget == 0 => {
                scratch.counts.throttled += 1;
                Answered::Throttled
            }
            true => Answered::OutputFull,
        };
        (pos, how)
    }

    /// The next line of `data`, answered.
    fn line(&mut self, data: &[u8], scratch: &mut Scratch) -> (usize, Step) {
        match self.framing.decode(data, self.max_line) {
            Decoded::Frame(line, used) => (used, self.one(line, scratch)),
            Decoded::Incomplete => (0, Step::Stop(Answered::AllLines)),
            Decoded::TooLong(used) => {
                self.too_long(scratch);
                (used, Step::Stop(Answered::Close(CloseReason::TooLong)))
            }
        }
    }

    /// The next WebSocket frame of `data`: a message is answered when its
    /// last frame is in; pings are answered; a close or a broken frame
    /// ends the connection with a close frame.
    fn frame(&mut self, data: &mut [u8], talk: &mut Talk, scratch: &mut Scratch) -> (usize, Step) {
        let all = data.len();
        let (frame, used) = match websocket::parse(data, self.max_line) {
            Parsed::Frame(frame, used) => (frame, used),
            Parsed::Incomplete => return (0, Step::Stop(Answered::AllLines)),
            Parsed::TooLong => {
                self.too_long(scratch);
                return (all, Step::Stop(Answered::Close(CloseReason::TooLong)));
            }
            Parsed::Invalid(code, why) => return (all, self.refuse(code, why, talk, scratch)),
        };
        let step = match frame {
            Frame::Ping(payload) => {
                websocket::pong(payload, &mut scratch.output);
                Step::Next
            }
            Frame::Pong => Step::Next,
            Frame::Close(code) => {
                // Echo its code (RFC 6455, 5.5.1), then our side closes.
                let code = code.unwrap_or(websocket::code::NORMAL);
                websocket::close(code, "", &mut scratch.output);
                *talk.closed = true;
                Step::Stop(Answered::Close(CloseReason::Client))
            }
            Frame::Data {
                first,
                text,
                fin,
                payload,
            } => match (first, talk.partial.as_mut()) {
                (true, Some(_)) | (false, None) => {
                    let why = "a message's frames are out of order";
                    return (
                        used,
                        self.refuse(websocket::code::PROTOCOL_ERROR, why, talk, scratch),
                    );
                }
                (true, None) if fin => self.message(text, payload, talk, scratch),
                (true, None) => {
                    let bytes = payload.to_vec();
                    *talk.partial = Some(Box::new(Partial { text, bytes }));
                    Step::Next
                }
                (false, Some(partial)) => {
                    if partial.bytes.len() + payload.len() > self.max_line {
                        self.too_long(scratch);
                        return (all, Step::Stop(Answered::Close(CloseReason::TooLong)));
                    }
                    partial.bytes.extend_from_slice(payload);
                    match fin {
                        false => Step::Next,
                        true => {
                            let whole = talk.partial.take().expect("a partial message");
                            self.message(whole.text, &whole.bytes, talk, scratch)
                        }
                    }
                }
            },
        };
        (used, step)
    }

    /// A whole WebSocket message: one line. A text message must be UTF-8;
    /// a line break in a message is refused (it would end a line for the
    /// TCP members it reaches).
    fn message(
        &mut self,
        text: bool,
        payload: &[u8],
        talk: &mut Talk,
        scratch: &mut Scratch,
    ) -> Step {
        if text && std::str::from_utf8(payload).is_err() {
            let why = "a text message that is not UTF-8";
            return self.refuse(websocket::code::INVALID_DATA, why, talk, scratch);
        }
        if memchr::memchr2(b'\n', b'\r', payload).is_some() {
            let notice = b"ERR a message is one line: no line breaks";
            self.framing.encode(notice, &mut scratch.output);
            return Step::Next;
        }
        self.one(payload, scratch)
    }

    /// A close frame with `code` and `why`, then the connection ends.
    fn refuse(&mut self, code: u16, why: &str, talk: &mut Talk, scratch: &mut Scratch) -> Step {
        tracing::debug!(peer = %self.peer, reason = why, code, "WebSocket message refused");
        websocket::close(code, why, &mut scratch.output);
        *talk.closed = true;
        *talk.partial = None;
        Step::Stop(Answered::Close(CloseReason::Malformed))
    }

    /// `ERR line too long` (a WebSocket connection then gets a close frame
    /// 1009 as it ends).
    fn too_long(&mut self, scratch: &mut Scratch) {
        let notice = format!("ERR line too long (max {} bytes)", self.max_line);
        self.framing.encode(notice.as_bytes(), &mut scratch.output);
    }

    /// One line, answered by the protocol.
    fn one(&mut self, line: &[u8], scratch: &mut Scratch) -> Step {
        // `%`: the text format prints a field as it is, so the line is escaped
        // first (control bytes never reach the operator's terminal).
        tracing::debug!(peer = %self.peer, line = %escape_lossy(line), "line received");
        scratch.counts.lines_in += 1;
        if self.framing == Framing::WebSocket {
            scratch.counts.ws_lines_in += 1;
        }
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
            Flow::Continue => Step::Next,
            Flow::Close => Step::Stop(Answered::Close(CloseReason::Protocol)),
            Flow::Wait => Step::Stop(Answered::Waiting),
        }
    }
}
