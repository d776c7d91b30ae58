//! The output side of a connection: what waits for the client, in order.
//!
//! Replies are framed as the protocol writes them and leave in one `write`
//! per read; what the socket does not take waits in `replies`. Messages from
//! other connections (chat) are shared payloads: they wait in `mail` as
//! they are, and the framing's bytes around each are added as buffers of
//! their own when written, so a vectored write sends a message to each
//! recipient without a copy. Once mail waits, later replies queue behind it,
//! to keep the order things were said in.

use crate::framing::{Framing, Wrapping};
use crate::metrics::Counts;
use crate::protocol::{CloseReason, Message};
use crate::transport::Transport;
use std::collections::VecDeque;
use std::io::{self, IoSlice};

/// Most buffers handed to one vectored write.
const MAX_SLICES: usize = 64;
/// Up to this many bytes in several buffers are copied together and sent
/// by one plain `write`: for a few short messages (a chat line and its
/// `\n`) that is cheaper than the kernel walking an `iovec` (measured:
/// 10% of chat's CPU per delivery with one sender).
const COALESCE: usize = 2048;

/// What waits for the socket.
#[derive(Default)]
pub(super) struct Outbox {
    /// Framed replies the socket has not taken yet.
    replies: Vec<u8>,
    /// Taken on the first message from another connection.
    mail: Option<Box<Mail>>,
    /// Bytes left for the client since the last sweep.
    pub wrote: bool,
    /// Sweeps in a row with bytes pending and none taken.
    pub stalled: u32,
}

/// Messages (and replies queued behind them) waiting for the socket.
#[derive(Default)]
struct Mail {
    queue: VecDeque<Part>,
    /// Bytes of the front part's wire form already written.
    head: usize,
    /// Wire bytes waiting in all of `queue`, less `head`.
    bytes: usize,
}

/// One item of [`Mail`].
enum Part {
    /// A shared payload, and the framing that goes around it when it is
    /// written.
    Message(Message, Wrapping),
    /// Replies already framed, queued behind messages.
    Framed(Message),
}

impl Part {
    /// Its bytes as they go on the wire, as up to three buffers.
    fn wire(&self) -> [&[u8]; 3] {
        match self {
            Part::Message(msg, wrapping) => [wrapping.before.as_slice(), msg, wrapping.after],
            Part::Framed(bytes) => [bytes, &[], &[]],
        }
    }

    fn wire_len(&self) -> usize {
        self.wire().iter().map(|part| part.len()).sum()
    }
}

impl Outbox {
    /// Bytes of replies and messages waiting.
    pub fn queued(&self) -> usize {
        self.replies.len() + self.mail.as_ref().map_or(0, |m| m.bytes)
    }

    /// True while anything waits.
    pub fn has_unwritten(&self) -> bool {
        self.queued() > 0
    }

    /// Drops everything waiting and gives the buffers back.
    pub fn clear(&mut self) {
        self.replies = Vec::new();
        self.mail = None;
    }

    /// Writes `framed` (the replies to one read) once; what the socket does
    /// not take waits. Behind waiting mail, it waits in line.
    pub fn send(&mut self, stream: &mut Transport, framed: &[u8], counts: &mut Counts) {
        if framed.is_empty() {
            return;
        }
        counts.bytes_out += framed.len() as u64;
        if let Some(mail) = self.mail.as_mut().filter(|mail| mail.bytes > 0) {
            mail.bytes += framed.len();
            mail.queue.push_back(Part::Framed(Message::from(framed)));
            return;
        }
        if !self.replies.is_empty() {
            self.replies.extend_from_slice(framed);
            return;
        }
        let written = loop {
            match stream.write(framed) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock keeps it all; a real error shows again on the next write.
                Err(_) => break 0,
            }
        };
        self.wrote |= written > 0;
        self.replies.extend_from_slice(&framed[written..]);
    }

    /// Queues a message from another connection; false when, even after
    /// offering the socket what is queued, more than `max_queue` bytes wait
    /// (the client is not keeping up).
    pub fn deliver(
        &mut self,
        stream: &mut Transport,
        framing: Framing,
        msg: Message,
        max_queue: usize,
    ) -> bool {
        let wrapping = framing.wrap(&msg);
        let part = Part::Message(msg, wrapping);
        let mail = self.mail.get_or_insert_with(Box::default);
        mail.bytes += part.wire_len();
        mail.queue.push_back(part);
        if mail.bytes <= max_queue {
            return true;
        }
        // A socket error shows again on the next flush.
        let _ = self.flush(stream);
        self.mail
            .as_ref()
            .is_none_or(|mail| mail.bytes <= max_queue)
    }

    /// Writes replies, then mail, in as few vectored writes as the socket
    /// takes. True when nothing is left.
    pub fn flush(&mut self, stream: &mut Transport) -> Result<bool, CloseReason> {
        loop {
            match stream.flush_tls() {
                Ok(true) => {}
                Ok(false) => return Ok(false),
                Err(e) => return Err(super::error_reason(&e)),
            }
            if !self.has_unwritten() {
                return Ok(true);
            }
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            if !self.replies.is_empty() {
                slices[0] = IoSlice::new(&self.replies);
                count = 1;
            }
            if let Some(mail) = &self.mail {
                let mut skip = mail.head;
                'parts: for part in &mail.queue {
                    for bytes in part.wire() {
                        let cut = skip.min(bytes.len());
                        skip -= cut;
                        let bytes = &bytes[cut..];
                        if bytes.is_empty() {
                            continue;
                        }
                        if count == MAX_SLICES {
                            break 'parts;
                        }
                        slices[count] = IoSlice::new(bytes);
                        count += 1;
                    }
                }
            }
            // One buffer goes by plain write(2), a little cheaper than
            // writev(2); so do a few small ones, copied together.
            let total: usize = slices[..count].iter().map(|s| s.len()).sum();
            let result = match count {
                1 => stream.write(&slices[0]),
                _ if total <= COALESCE => {
                    let mut joined = [0; COALESCE];
                    let mut at = 0;
                    for slice in &slices[..count] {
                        joined[at..at + slice.len()].copy_from_slice(slice);
                        at += slice.len();
                    }
                    stream.write(&joined[..total])
                }
                _ => stream.write_vectored(&slices[..count]),
            };
            let written = match result {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(super::error_reason(&e)),
            };
            self.consume(written);
        }
    }

    /// Drops `n` written bytes from the front of replies, then mail.
    fn consume(&mut self, mut n: usize) {
        self.wrote |= n > 0;
        let from_replies = n.min(self.replies.len());
        self.replies.drain(..from_replies);
        if self.replies.is_empty() {
            self.replies = Vec::new();
        }
        n -= from_replies;
        let Some(mail) = &mut self.mail else { return };
        mail.bytes -= n;
        while n > 0 {
            let left = mail.queue[0].wire_len() - mail.head;
            if n < left {
                mail.head += n;
                return;
            }
            n -= left;
            mail.head = 0;
            mail.queue.pop_front();
        }
    }
}
