//! Framing: where one message ends and the next begins on the wire.
//!
//! Everything above this file deals in payloads: a [`Protocol`] gets a line
//! without its `\n` (or a `\r` before it) and answers with payloads; a
//! shared [`Message`] holds a payload once for all its recipients. This file
//! is the one place that knows the terminator, both ways: [`Framing::decode`]
//! finds the next frame in received bytes, [`Framing::encode`] appends a
//! payload with its framing to a reply buffer, and [`Framing::wrap`] gives
//! the bytes around a shared payload as separate buffers, so a message
//! leaves by a vectored write without being copied per recipient.
//!
//! Two framings, chosen per connection: lines (TCP) and WebSocket messages
//! ([`websocket`], after an HTTP upgrade on the `--web` listener). A
//! WebSocket message is one line; its frames are parsed by the connection,
//! which has the state reassembly and control frames need.
//!
//! [`Protocol`]: crate::Protocol
//! [`Message`]: crate::Message

pub mod websocket;

use websocket::Header;

/// A frame at the start of received bytes, or why there is none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame: its payload, and the bytes it took.
    Frame(&'a [u8], usize),
    /// The bytes so far are the start of a frame that fits the limit.
    Incomplete,
    /// A frame longer than the limit: the connection cannot go on. Its
    /// bytes up to the end, or all of them if it has no end yet.
    TooLong(usize),
}

/// The bytes to put before and after a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wrapping {
    /// Before the payload (a frame header; empty for lines).
    pub before: Header,
    /// After the payload (the terminator).
    pub after: &'static [u8],
}

/// How a connection's messages are delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Framing {
    /// Lines: a payload, then `\n`; a `\r` right before the `\n` is not part
    /// of a received line.
    #[default]
    Line,
    /// WebSocket messages (RFC 6455): one message, one line. Sent as text
    /// when the payload is UTF-8, as binary otherwise.
    WebSocket,
}

impl Framing {
    /// The first line in `data`, which may hold at most `max` bytes (line
    /// framing; WebSocket frames are parsed by [`websocket::parse`]).
    pub fn decode(self, data: &[u8], max: usize) -> Decoded<'_> {
        match split_line(data) {
            Some((line, used)) if line.len() > max => Decoded::TooLong(used),
            Some((line, used)) => Decoded::Frame(line, used),
            // One byte over for a `\r` whose `\n` has not arrived yet.
            None if data.len() > max + 1 => Decoded::TooLong(data.len()),
            None => Decoded::Incomplete,
        }
    }

    /// Appends `payload`, framed, to `out`. On the hot path (every reply),
    /// so lines take the shortest way.
    pub fn encode(self, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            Framing::Line => {
                out.extend_from_slice(payload);
                out.push(b'\n');
            }
            Framing::WebSocket => {
                out.extend_from_slice(Header::data(payload).as_slice());
                out.extend_from_slice(payload);
            }
        }
    }

    /// What goes around `payload`.
    pub fn wrap(self, payload: &[u8]) -> Wrapping {
        match self {
            Framing::Line => Wrapping {
                before: Header::NONE,
                after: b"\n",
            },
            Framing::WebSocket => Wrapping {
                before: Header::data(payload),
                after: b"",
            },
        }
    }

    /// `payload`, framed, in a buffer of its own.
    pub fn frame(self, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(payload, &mut out);
        out
    }
}

/// The line framing's decoder: the first line of `data` without its `\n` or
/// a `\r` before it, and the bytes it used; `None` until a `\n` arrives.
pub fn split_line(data: &[u8]) -> Option<(&[u8], usize)> {
    let end = memchr::memchr(b'\n', data)?;
    let line = &data[..end];
    Some((line.strip_suffix(b"\r").unwrap_or(line), end + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_lines_and_refuses_long_ones() {
        let line = Framing::Line;
        assert_eq!(line.decode(b"ab\r\ncd", 4), Decoded::Frame(b"ab", 4));
        assert_eq!(line.decode(b"abcd\r", 4), Decoded::Incomplete);
        assert_eq!(line.decode(b"abcde\n", 4), Decoded::TooLong(6));
        assert_eq!(line.decode(b"abcdef", 4), Decoded::TooLong(6));
    }

    #[test]
    fn encodes_a_payload_with_its_terminator() {
        let mut out = b"x\n".to_vec();
        Framing::Line.encode(b"hello", &mut out);
        assert_eq!(out, b"x\nhello\n");
        assert_eq!(Framing::Line.frame(b"ERR full"), b"ERR full\n");
        let wrapping = Framing::Line.wrap(b"hello");
        assert_eq!(
            (wrapping.before.as_slice(), wrapping.after),
            (&b""[..], &b"\n"[..])
        );
        let mut out = Vec::new();
        Framing::WebSocket.encode(b"hello", &mut out);
        assert_eq!(out, b"\x81\x05hello");
        let wrapping = Framing::WebSocket.wrap(b"\xff");
        assert_eq!(wrapping.before.as_slice(), b"\x82\x01");
    }
}
