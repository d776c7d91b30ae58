//! A connection's byte stream: plain TCP, or TLS over it.
//!
//! [`Connection`](crate::connection::Connection) reads and writes through
//! this type and needs to know only two things TLS adds: encrypted records
//! may wait inside rustls after a write ([`Transport::flush_tls`] sends them),
//! and a short read does not prove the socket is drained. rustls is driven by
//! hand (`read_tls`, `process_new_packets`, `write_tls`) because the server's
//! sockets are non-blocking `mio` sockets, not tokio ones.
//!
//! TLS state is boxed, so a plain connection pays one pointer's worth for it.
//! Unit tests use a third kind, [`Memory`], to drive a connection's states
//! and partial writes without sockets.

use crate::framing::Framing;
use mio::net::TcpStream;
use rustls::{InvalidMessage, ServerConnection};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

/// The line a plain-text client gets from a TLS server (framed as a line:
/// it never got as far as a connection with a framing of its own).
pub const NOT_TLS: &[u8] = b"ERR this server speaks TLS (try sockline connect --tls)";

/// Plain TCP or TLS.
pub enum Transport {
    /// Bytes as they are.
    Plain(TcpStream),
    /// A rustls server session over the socket.
    Tls(Box<Tls>),
    /// Bytes in memory, for unit tests.
    #[cfg(test)]
    Memory(Box<Memory>),
}

/// An in-memory stream: what the client sent, what it received, and how
/// much more it will take before a write would block.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Memory {
    /// Bytes the client sent that were not read yet.
    pub input: std::collections::VecDeque<u8>,
    /// The client closed its side once `input` is read.
    pub eof: bool,
    /// Bytes the client received.
    pub output: Vec<u8>,
    /// Bytes writes may still take; at 0 a write would block.
    pub room: usize,
    /// Our side was shut down.
    pub shut: bool,
}

#[cfg(test)]
impl Memory {
    fn peek(&self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return match self.eof {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(self.input.len());
        for (to, from) in buf.iter_mut().zip(self.input.iter()) {
            *to = *from;
        }
        Ok(n)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            return match self.eof {
                true => Ok(0),
                false => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(self.input.len());
        for (to, from) in buf.iter_mut().zip(self.input.drain(..n)) {
            *to = from;
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice]) -> io::Result<usize> {
        if self.room == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(self.room - n);
            self.output.extend_from_slice(&buf[..take]);
            n += take;
        }
        self.room -= n;
        Ok(n)
    }
}

/// A TLS session and its socket.
pub struct Tls {
    tcp: TcpStream,
    session: ServerConnection,
    /// The client does not speak TLS: send it no records.
    mute: bool,
    /// Records went out since [`Transport::take_progress`] last asked.
    sent: bool,
}

impl Transport {
    /// Starts a TLS server session on `tcp`.
    pub fn tls(tcp: TcpStream, config: std::sync::Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let session = ServerConnection::new(config).map_err(io::Error::other)?;
        Ok(Transport::Tls(Box::new(Tls {
            tcp,
            session,
            mute: false,
            sent: false,
        })))
    }

    /// The socket, for registration with the event loop.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(tcp) => tcp,
            Transport::Tls(tls) => &mut tls.tcp,
            #[cfg(test)]
            Transport::Memory(_) => panic!("an in-memory stream has no socket"),
        }
    }

    /// True for TLS: a short read may leave records in the socket.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// True while a TLS handshake is under way.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Tls(tls) => tls.session.is_handshaking(),
            _ => false,
        }
    }

    /// The subject of the client's certificate (with `--tls-client-ca`),
    /// as `CN=alice, O=Example`.
    pub fn peer_subject(&self) -> Option<String> {
        let Transport::Tls(tls) = self else {
            return None;
        };
        let der = tls.session.peer_certificates()?.first()?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        Some(cert.subject().to_string())
    }

    /// True when encrypted records wait for the socket.
    pub fn tls_pending(&self) -> bool {
        match self {
            Transport::Tls(tls) => tls.session.wants_write() && !tls.mute,
            _ => false,
        }
    }

    /// True when TLS records went out since the last call: the client is
    /// reading, even if no new plaintext was taken.
    pub fn take_progress(&mut self) -> bool {
        match self {
            Transport::Tls(tls) => std::mem::take(&mut tls.sent),
            _ => false,
        }
    }

    /// Sends the records rustls holds; true when none is left.
    pub fn flush_tls(&mut self) -> io::Result<bool> {
        match self {
            Transport::Tls(tls) => tls.flush(),
            _ => Ok(true),
        }
    }

    /// Reads plaintext. `Ok(0)` is the end of the stream, whether the client
    /// said `close_notify` or just closed the socket.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.read(buf),
            #[cfg(test)]
            Transport::Memory(memory) => memory.read(buf),
        }
    }

    /// Reads the bytes as they come off the wire, past any TLS: for a
    /// connection that only throws away what it still receives, or takes
    /// its PROXY protocol header.
    pub fn read_raw(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.read(buf),
            Transport::Tls(tls) => tls.tcp.read(buf),
            #[cfg(test)]
            Transport::Memory(memory) => memory.read(buf),
        }
    }

    /// Copies the bytes waiting in the socket, as they came off the wire,
    /// without taking them: the PROXY protocol header is looked at before
    /// TLS or the lines may see anything.
    pub fn peek(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.peek(buf),
            Transport::Tls(tls) => tls.tcp.peek(buf),
            #[cfg(test)]
            Transport::Memory(memory) => memory.peek(buf),
        }
    }

    /// Writes plaintext; with TLS, accepted bytes may still wait as records
    /// (see [`tls_pending`](Self::tls_pending)).
    pub fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write(buf),
            Transport::Tls(tls) => tls.write(|session| session.writer().write(buf)),
            #[cfg(test)]
            Transport::Memory(memory) => memory.write_vectored(&[IoSlice::new(buf)]),
        }
    }

    /// [`write`](Self::write) for several buffers.
    pub fn write_vectored(&mut self, bufs: &[IoSlice]) -> io::Result<usize> {
        match self {
            Transport::Plain(tcp) => tcp.write_vectored(bufs),
            Transport::Tls(tls) => tls.write(|session| session.writer().write_vectored(bufs)),
            #[cfg(test)]
            Transport::Memory(memory) => memory.write_vectored(bufs),
        }
    }

    /// Ends our side: `close_notify` (TLS, once a session exists), then a FIN.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(tcp) => {
                let _ = tcp.shutdown(Shutdown::Write);
            }
            Transport::Tls(tls) => {
                if !tls.session.is_handshaking() {
                    tls.session.send_close_notify();
                    let _ = tls.flush();
                }
                let _ = tls.tcp.shutdown(Shutdown::Write);
            }
            #[cfg(test)]
            Transport::Memory(memory) => memory.shut = true,
        }
    }
}

impl Tls {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.session.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The socket closed without close_notify: an end all the same.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            // No plaintext yet: take records from the socket. WouldBlock
            // from here means the socket is dry, as the event loop needs.
            self.session.read_tls(&mut self.tcp)?;
            if let Err(e) = self.session.process_new_packets() {
                // Tell the client why, then give up on it: a TLS client
                // reads an alert; a plain one (text is never a TLS record)
                // reads a line.
                let plain = rustls::Error::InvalidMessage(InvalidMessage::InvalidContentType);
                if self.session.is_handshaking() && e == plain {
                    let _ = self.tcp.write(&Framing::Line.frame(NOT_TLS));
                    self.mute = true;
                } else {
                    let _ = self.flush();
                }
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake replies must not wait for the next write.
            self.flush()?;
        }
    }

    fn write(
        &mut self,
        put: impl FnOnce(&mut ServerConnection) -> io::Result<usize>,
    ) -> io::Result<usize> {
        // Older records first; while the socket is full, take no more.
        if !self.flush()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = put(&mut self.session)?;
        if n == 0 {
            // rustls's buffer is full (e.g. waiting for the handshake).
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<bool> {
        while self.session.wants_write() && !self.mute {
            match self.session.write_tls(&mut self.tcp) {
                Ok(n) => self.sent |= n > 0,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}
