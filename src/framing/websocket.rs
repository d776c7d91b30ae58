//! WebSocket frames (RFC 6455, section 5), both ways, without buffers of
//! their own: a client's frame is parsed and unmasked where it lies in the
//! connection's input, and a server frame is a header of at most 10 bytes
//! before an unmasked payload, so a shared [`Message`](crate::Message)
//! goes out to WebSocket members without a copy, as it does to TCP ones.
//!
//! Reassembling a fragmented message, and answering pings and closes, is
//! the connection's business (it has the state); this file only says what
//! each frame is.

/// Frame opcodes.
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes (RFC 6455, section 7.4.1).
pub mod code {
    /// The purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The server goes away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// A frame broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// Refused or dropped by policy (server full, denied, too slow).
    pub const POLICY: u16 = 1008;
    /// A message larger than `--max-line`.
    pub const TOO_BIG: u16 = 1009;
}

/// A client's frame, its payload unmasked in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text or binary frame, or a continuation of one; `fin` ends the
    /// message.
    Data {
        /// The message's first frame (text or binary), not a continuation.
        first: bool,
        /// A text message (meaningful on the first frame only).
        text: bool,
        /// The message's last frame.
        fin: bool,
        /// The frame's payload, unmasked.
        payload: &'a [u8],
    },
    /// A ping: answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (to our keepalive ping): nothing to do.
    Pong,
    /// The client closes: its code, if it gave one.
    Close(Option<u16>),
}

/// What the start of the received bytes holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A whole frame, and the bytes it took.
    Frame(Frame<'a>, usize),
    /// Not a whole frame yet.
    Incomplete,
    /// A data frame whose payload alone is over the limit.
    TooLong,
    /// A frame that breaks the protocol: close with this code and reason.
    Invalid(u16, &'static str),
}

/// A frame's header, read without touching its payload.
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    /// Where its payload starts and ends in the received bytes.
    start: usize,
    end: usize,
}

/// The header of the frame at the start of `data`, or what stands in the
/// way (`Incomplete` until the whole frame is in).
fn head(data: &[u8], max: usize) -> Result<Head, Parsed<'static>> {
    let [b0, b1, ..] = *data else {
        return Err(Parsed::Incomplete);
    };
    let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
    if b0 & 0x70 != 0 {
        return Err(Parsed::Invalid(code::PROTOCOL_ERROR, "reserved bits set"));
    }
    if b1 & 0x80 == 0 {
        let why = "client frames must be masked";
        return Err(Parsed::Invalid(code::PROTOCOL_ERROR, why));
    }
    let control = opcode & 0x08 != 0;
    let (len, at) = match b1 & 0x7F {
        126 => match data.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Err(Parsed::Incomplete),
        },
        127 => match data.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().expect("8 bytes")), 10),
            None => return Err(Parsed::Incomplete),
        },
        n => (u64::from(n), 2),
    };
    if control && (len > 125 || !fin) {
        return Err(Parsed::Invalid(code::PROTOCOL_ERROR, "bad control frame"));
    }
    if !control && len > max as u64 {
        return Err(Parsed::TooLong);
    }
    let Some(mask) = data.get(at..at + 4) else {
        return Err(Parsed::Incomplete);
    };
    let start = at + 4;
    let end = start + len as usize;
    if data.len() < end {
        return Err(Parsed::Incomplete);
    }
    let mask = mask.try_into().expect("4 bytes");
    Ok(Head {
        fin,
        opcode,
        mask,
        start,
        end,
    })
}

/// True when the start of `data` holds something to act on: a whole
/// frame, or one that cannot be taken. Touches nothing.
pub fn ready(data: &[u8], max: usize) -> bool {
    !matches!(head(data, max), Err(Parsed::Incomplete))
}

/// The frame at the start of `data`, whose data payload may hold at most
/// `max` bytes; a whole frame's payload is unmasked in place.
pub fn parse(data: &mut [u8], max: usize) -> Parsed<'_> {
    let head = match head(data, max) {
        Ok(head) => head,
        Err(parsed) => return parsed,
    };
    unmask(&mut data[head.start..head.end], head.mask);
    let payload = &data[head.start..head.end];
    let frame = match head.opcode {
        TEXT | BINARY | CONTINUATION => Frame::Data {
            first: head.opcode != CONTINUATION,
            text: head.opcode == TEXT,
            fin: head.fin,
            payload,
        },
        PING => Frame::Ping(payload),
        PONG => Frame::Pong,
        CLOSE => match payload {
            [] => Frame::Close(None),
            [a, b, ..] => Frame::Close(Some(u16::from_be_bytes([*a, *b]))),
            [_] => return Parsed::Invalid(code::PROTOCOL_ERROR, "bad close frame"),
        },
        _ => return Parsed::Invalid(code::PROTOCOL_ERROR, "unknown opcode"),
    };
    Parsed::Frame(frame, head.end)
}

/// XORs `payload` with the 4-byte `mask`, a word at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes(chunk.try_into().expect("4 bytes")) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i];
    }
}

/// A server frame's header: FIN, the opcode and the payload's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Header {
    bytes: [u8; 10],
    len: u8,
}

impl Header {
    /// No header (line framing).
    pub const NONE: Header = Header {
        bytes: [0; 10],
        len: 0,
    };

    /// The header of an unfragmented, unmasked frame of `len` bytes.
    fn new(opcode: u8, len: usize) -> Header {
        let mut bytes = [0; 10];
        bytes[0] = 0x80 | opcode;
        let used = match len {
            0..=125 => {
                bytes[1] = len as u8;
                2
            }
            126..=0xFFFF => {
                bytes[1] = 126;
                bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
                4
            }
            _ => {
                bytes[1] = 127;
                bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
                10
            }
        };
        Header { bytes, len: used }
    }

    /// For a data message: text when `payload` is UTF-8, else binary.
    pub fn data(payload: &[u8]) -> Header {
        let opcode = match std::str::from_utf8(payload) {
            Ok(_) => TEXT,
            Err(_) => BINARY,
        };
        Header::new(opcode, payload.len())
    }

    /// Its bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A pong answering a ping with `payload`.
pub fn pong(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(Header::new(PONG, payload.len()).as_slice());
    out.extend_from_slice(payload);
}

/// A keepalive ping.
pub fn ping(out: &mut Vec<u8>) {
    out.extend_from_slice(Header::new(PING, 0).as_slice());
}

/// A close frame with `code` and a reason (cut to fit a control frame).
pub fn close(code: u16, reason: &str, out: &mut Vec<u8>) {
    let mut reason = &reason.as_bytes()[..reason.len().min(123)];
    while std::str::from_utf8(reason).is_err() {
        reason = &reason[..reason.len() - 1];
    }
    out.extend_from_slice(Header::new(CLOSE, 2 + reason.len()).as_slice());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with `mask`.
    pub fn client_frame(first_byte: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![first_byte];
        match payload.len() {
            n @ 0..=125 => frame.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn a_masked_text_frame_is_unmasked_in_place() {
        let mut data = client_frame(0x81, b"hello, world", [1, 2, 3, 4]);
        data.extend_from_slice(b"rest");
        let whole = data.len() - 4;
        let frame = Frame::Data {
            first: true,
            text: true,
            fin: true,
            payload: b"hello, world",
        };
        assert_eq!(parse(&mut data, 100), Parsed::Frame(frame, whole));
        // Every length encoding, and every cut is incomplete.
        for len in [0, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let mut data = client_frame(0x82, &payload, [9, 8, 7, 6]);
            let whole = data.len();
            for cut in [1, 2, 3, data.len() - 1] {
                assert_eq!(
                    parse(&mut data[..cut].to_vec(), 1 << 20),
                    Parsed::Incomplete
                );
            }
            let Parsed::Frame(
                Frame::Data {
                    payload: got, text, ..
                },
                used,
            ) = parse(&mut data, 1 << 20)
            else {
                panic!("len {len}");
            };
            assert_eq!((got.len(), text, used), (len, false, whole));
            assert!(got.iter().all(|&b| b == b'x'));
        }
    }

    #[test]
    fn broken_frames_are_refused_with_their_close_code() {
        let unmasked = &mut [0x81, 0x02, b'h', b'i'];
        assert!(matches!(parse(unmasked, 100), Parsed::Invalid(1002, _)));
        let reserved = &mut client_frame(0xC1, b"hi", [0; 4]);
        assert!(matches!(parse(reserved, 100), Parsed::Invalid(1002, _)));
        let long_ping = &mut client_frame(0x89, &[0; 126], [0; 4]);
        assert!(matches!(parse(long_ping, 1000), Parsed::Invalid(1002, _)));
        let fragmented_ping = &mut client_frame(0x09, b"", [0; 4]);
        assert!(matches!(
            parse(fragmented_ping, 100),
            Parsed::Invalid(1002, _)
        ));
        let unknown = &mut client_frame(0x83, b"", [0; 4]);
        assert!(matches!(parse(unknown, 100), Parsed::Invalid(1002, _)));
        // Too long is known from the header alone.
        let big = &mut client_frame(0x82, &[0; 200], [0; 4])[..10];
        assert_eq!(parse(big, 100), Parsed::TooLong);
    }

    #[test]
    fn control_frames() {
        let ping = &mut client_frame(0x89, b"abc", [5; 4]);
        assert_eq!(parse(ping, 0), Parsed::Frame(Frame::Ping(b"abc"), 9));
        let close = &mut client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e'], [5; 4]);
        assert_eq!(parse(close, 0), Parsed::Frame(Frame::Close(Some(1000)), 11));
        let mut out = Vec::new();
        pong(b"abc", &mut out);
        assert_eq!(out, [0x8A, 3, b'a', b'b', b'c']);
        out.clear();
        close_frame_of(&mut out);
        assert_eq!(&out[..4], [0x88, 11, 0x03, 0xF1]);
    }

    fn close_frame_of(out: &mut Vec<u8>) {
        close(code::TOO_BIG, "too long!", out);
        assert_eq!(&out[4..], b"too long!");
    }

    #[test]
    fn server_headers_say_text_or_binary_and_the_length() {
        assert_eq!(Header::data(b"hi").as_slice(), [0x81, 2]);
        assert_eq!(Header::data(b"\xff").as_slice(), [0x82, 1]);
        assert_eq!(Header::data(&[b'a'; 300]).as_slice(), [0x81, 126, 1, 44]);
        let big = Header::data(&vec![b'a'; 70_000]);
        assert_eq!(big.as_slice()[..2], [0x81, 127]);
        assert_eq!(big.as_slice().len(), 10);
        assert_eq!(Header::NONE.as_slice(), b"");
    }
}
