//! One client connection: its socket and its line framing.
//!
//! Memory is the point of this file. An idle connection holds only its
//! socket, its peer address and two empty `Vec`s: bytes are read into the
//! worker's shared [`Scratch`] buffer, and a connection takes a buffer of its
//! own only for what must outlive one wake-up (a partial line, or replies the
//! socket would not take yet), giving it back as soon as it is empty.
//!
//! Every complete line of one read is answered into one output buffer, which
//! leaves in one `write`. A connection whose replies the client does not read
//! stops being read (TCP backpressure), so its memory stays bounded by about
//! `max_line` plus one read and one output cap.

use crate::protocol::{Flow, Output, Protocol};
use mio::net::TcpStream;
use std::io::{self, Read, Write};
use std::net::{Shutdown as HalfClose, SocketAddr};

/// Bytes read per `read` call.
pub const READ_CHUNK: usize = 16 * 1024;
/// Answering stops for a while once this many reply bytes are waiting.
pub const OUTPUT_CAP: usize = 64 * 1024;

/// Per-worker buffers shared by all of its connections.
pub struct Scratch {
    input: Box<[u8]>,
    output: Vec<u8>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            input: vec![0; READ_CHUNK].into_boxed_slice(),
            output: Vec::with_capacity(OUTPUT_CAP + READ_CHUNK),
        }
    }
}

/// What the event loop should do with a connection after [`Connection::drive`].
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Wait for the next readiness event.
    Wait {
        /// Replies are pending: also wake on writability.
        want_write: bool,
    },
    /// Close it now, for this reason (for the log).
    Close(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading and answering.
    Open,
    /// No more reads: answer the complete lines already buffered, flush, close.
    Draining(&'static str),
    /// No more answers: flush, close.
    Closing(&'static str),
}

/// A client connection.
pub struct Connection<S> {
    stream: TcpStream,
    peer: SocketAddr,
    /// A partial line, or lines not yet answered because the output was full.
    input: Vec<u8>,
    /// Replies the socket has not taken yet.
    output: Vec<u8>,
    /// `input` may hold complete lines that were not answered yet.
    backlog: bool,
    phase: Phase,
    session: S,
}

impl<S> Connection<S> {
    /// Wraps an accepted stream; `open` runs the protocol's greeting.
    pub fn open<P: Protocol<Session = S>>(
        stream: TcpStream,
        peer: SocketAddr,
        proto: &P,
        scratch: &mut Scratch,
    ) -> Self {
        scratch.output.clear();
        let session = proto.open(peer, &mut Output::new(&mut scratch.output));
        let mut conn = Connection {
            stream,
            peer,
            input: Vec::new(),
            output: Vec::new(),
            backlog: false,
            phase: Phase::Open,
            session,
        };
        conn.send(scratch);
        conn
    }

    /// The client's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The socket, for (re)registration with the event loop.
    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Ends the connection: half-closes so replies are followed by a FIN,
    /// and hands back the session.
    pub fn finish(self) -> S {
        let _ = self.stream.shutdown(HalfClose::Write);
        self.session
    }

    /// Server shutdown: stop reading; lines already received still get their
    /// replies, a partial line is dropped.
    pub fn stop_reading(&mut self) {
        if self.phase == Phase::Open {
            self.phase = Phase::Draining("server shutdown");
        }
    }

    /// Does all the work the socket allows now: flush pending replies, read,
    /// answer, write. Call on every readiness event; `hup` says the event
    /// reported the peer's end of stream, so a short read is not the last.
    pub fn drive<P: Protocol<Session = S>>(
        &mut self,
        proto: &P,
        scratch: &mut Scratch,
        max_line: usize,
        hup: bool,
    ) -> Status {
        loop {
            if !self.output.is_empty() {
                match self.stream.write(&self.output) {
                    Ok(n) => {
                        self.output.drain(..n);
                        if self.output.is_empty() {
                            self.output = Vec::new();
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        return Status::Wait { want_write: true };
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Status::Close(error_reason(&e)),
                }
                continue;
            }
            if self.backlog {
                scratch.output.clear();
                let (used, flow) = answer(
                    proto,
                    &mut self.session,
                    self.peer,
                    &self.input,
                    &mut scratch.output,
                    max_line,
                );
                self.input.drain(..used);
                self.after_answer(flow);
                self.send(scratch);
                continue;
            }
            match self.phase {
                Phase::Closing(why) | Phase::Draining(why) => return Status::Close(why),
                Phase::Open => {}
            }
            match self.stream.read(&mut scratch.input) {
                Ok(0) => {
                    // EOF: an unterminated last line is answered like any other.
                    self.phase = Phase::Draining("closed by client");
                    if !self.input.is_empty() {
                        self.input.push(b'\n');
                        self.backlog = true;
                    }
                }
                Ok(n) => {
                    self.receive(proto, scratch, n, max_line);
                    if !hup && n < scratch.input.len() && self.output.is_empty() && !self.backlog {
                        // A short read drained the socket; epoll will tell us
                        // when more arrives, so skip the read that would fail.
                        return match self.phase {
                            Phase::Open => Status::Wait { want_write: false },
                            Phase::Closing(why) | Phase::Draining(why) => Status::Close(why),
                        };
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Status::Wait { want_write: false };
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Status::Close(error_reason(&e)),
            }
        }
    }

    /// Answers the `n` bytes just read into the scratch buffer, keeping any
    /// partial line in the connection's own buffer.
    fn receive<P: Protocol<Session = S>>(
        &mut self,
        proto: &P,
        scratch: &mut Scratch,
        n: usize,
        max_line: usize,
    ) {
        scratch.output.clear();
        if self.input.is_empty() {
            // The common case: answer straight from the scratch buffer.
            let data = &scratch.input[..n];
            let (used, flow) = answer(
                proto,
                &mut self.session,
                self.peer,
                data,
                &mut scratch.output,
                max_line,
            );
            self.after_answer(flow);
            if self.phase == Phase::Open {
                self.input.extend_from_slice(&data[used..]);
            }
        } else {
            self.input.extend_from_slice(&scratch.input[..n]);
            let (used, flow) = answer(
                proto,
                &mut self.session,
                self.peer,
                &self.input,
                &mut scratch.output,
                max_line,
            );
            self.input.drain(..used);
            self.after_answer(flow);
        }
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        self.send(scratch);
    }

    fn after_answer(&mut self, flow: Answered) {
        match flow {
            Answered::AllLines => self.backlog = false,
            Answered::OutputFull => self.backlog = true,
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
        self.output.extend_from_slice(&out[written..]);
    }
}

/// How far [`answer`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answered {
    /// Every complete line was answered; what is left is a partial line.
    AllLines,
    /// Stopped early because enough replies are waiting.
    OutputFull,
    /// The connection must close after the replies written so far.
    Close(&'static str),
}

/// Answers the complete lines at the start of `data`. Returns the bytes
/// consumed and why it stopped.
fn answer<P: Protocol>(
    proto: &P,
    session: &mut P::Session,
    peer: SocketAddr,
    data: &[u8],
    out: &mut Vec<u8>,
    max_line: usize,
) -> (usize, Answered) {
    let mut pos = 0;
    while out.len() < OUTPUT_CAP {
        let rest = &data[pos..];
        let Some(end) = memchr::memchr(b'\n', rest) else {
            // Allow one byte over for a `\r` whose `\n` has not arrived.
            if rest.len() > max_line + 1 {
                return (data.len(), too_long(out, max_line));
            }
            return (pos, Answered::AllLines);
        };
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        pos += end + 1;
        if line.len() > max_line {
            return (pos, too_long(out, max_line));
        }
        tracing::debug!("Client {peer}: {}", String::from_utf8_lossy(line));
        if proto.line(session, line, &mut Output::new(out)) == Flow::Close {
            return (pos, Answered::Close("closed by protocol"));
        }
    }
    let complete = memchr::memchr(b'\n', &data[pos..]).is_some();
    (
        pos,
        if complete {
            Answered::OutputFull
        } else {
            Answered::AllLines
        },
    )
}

fn too_long(out: &mut Vec<u8>, max_line: usize) -> Answered {
    out.extend_from_slice(format!("ERR line too long (max {max_line} bytes)\n").as_bytes());
    Answered::Close("line too long")
}

fn error_reason(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::BrokenPipe => "client stopped reading",
        _ => "i/o error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Echo;

    fn lines(data: &[u8], max: usize) -> (Vec<u8>, usize, Answered) {
        let mut out = Vec::new();
        let peer = "127.0.0.1:1".parse().unwrap();
        let (used, how) = answer(&Echo, &mut (), peer, data, &mut out, max);
        (out, used, how)
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
        assert_eq!(how, Answered::Close("line too long"));
        let (out, _, how) = lines(b"123456", 4);
        assert_eq!(out, b"ERR line too long (max 4 bytes)\n");
        assert_eq!(how, Answered::Close("line too long"));
        // Exactly max bytes, still waiting for "\r\n", is fine.
        let (_, used, how) = lines(b"1234\r", 4);
        assert_eq!((used, how), (0, Answered::AllLines));
    }

    #[test]
    fn bye_closes_after_its_reply() {
        let (out, used, how) = lines(b"hi\nbYe\nlater\n", 10);
        assert_eq!(out, b"hi\nbYe\n");
        assert_eq!(used, 7);
        assert_eq!(how, Answered::Close("closed by protocol"));
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
