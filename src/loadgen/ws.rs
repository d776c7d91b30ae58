//! WebSocket targets, `ws://HOST:PORT/PATH`: every message is one line.
//!
//! A connection to a `ws://` target is a TCP connection (opened like any
//! other, see [`super::net`]) that then does the HTTP upgrade with
//! tokio-tungstenite's client. From there each request line is one text
//! message (without its `\n`) and each text or binary message the server
//! sends is one reply line. Pings are answered by tungstenite; pongs are
//! ignored. `wss://` is not spoken: the load generator has no TLS.
//!
//! The scenarios keep a line path and a WebSocket path side by side and
//! pick one per connection ([`super::net::Conn`]), so a line target pays
//! nothing for this module.

use crate::error::describe;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message, Utf8Bytes};

/// An open WebSocket connection.
pub(super) type WsStream = WebSocketStream<TcpStream>;

/// Bytes tungstenite reads at once. Its default, 128 KiB, is zero-filled
/// before every read: a 16-deep pipeline of short replies needs far less,
/// and 10,000 held connections would cost the generator 1.3 GB.
const READ_BUFFER: usize = 8 * 1024;
/// Messages written before a flush stay in tungstenite's buffer until
/// this many bytes are waiting, so a pipeline goes out in one write.
const WRITE_BUFFER: usize = 64 * 1024;

/// A `ws://` URL, split for connecting and for the upgrade request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WsUrl {
    /// The URL as given: the request's `Host` header and path come from it.
    pub url: Arc<str>,
    /// `HOST:PORT` to connect to (port 80 when the URL has none).
    pub authority: String,
    /// The path and query, at least `/`.
    pub path: String,
}

/// `Some` for a `ws://` address, `None` for a line server's `HOST:PORT`;
/// an error for `wss://` and other URLs.
pub(super) fn parse(addr: &str) -> io::Result<Option<WsUrl>> {
    let Some((scheme, rest)) = addr.split_once("://") else {
        return Ok(None);
    };
    match scheme.to_ascii_lowercase().as_str() {
        "ws" => {}
        "wss" => {
            return Err(super::invalid(format!(
                "{addr}: wss:// needs TLS, which the load generator does not speak; use ws://"
            )));
        }
        _ => {
            return Err(super::invalid(format!(
                "{addr}: expected HOST:PORT or ws://HOST:PORT/PATH"
            )));
        }
    }
    let (host, path) = match rest.find(['/', '?']) {
        Some(at) if rest[at..].starts_with('/') => (&rest[..at], rest[at..].to_string()),
        Some(at) => (&rest[..at], format!("/{}", &rest[at..])),
        None => (rest, "/".to_string()),
    };
    if host.is_empty() || host.contains('@') {
        return Err(super::invalid(format!(
            "{addr}: expected ws://HOST:PORT/PATH"
        )));
    }
    // A port is there unless the host ends in `]` (IPv6) or has no colon.
    let has_port = match host.rfind(':') {
        Some(at) => !host[at..].contains(']'),
        None => false,
    };
    let authority = match has_port {
        true => host.to_string(),
        false => format!("{host}:80"),
    };
    Ok(Some(WsUrl {
        url: addr.into(),
        authority,
        path,
    }))
}

/// The upgrade, on a connected `stream`, within `timeout`.
pub(super) async fn handshake(
    stream: TcpStream,
    url: &WsUrl,
    timeout: Duration,
) -> io::Result<WsStream> {
    let request = (&*url.url).into_client_request().map_err(io_error)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    let upgrade = tokio_tungstenite::client_async_with_config(request, stream, Some(config));
    match tokio::time::timeout(timeout, upgrade).await {
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the WebSocket upgrade timed out",
        )),
        Ok(Err(e)) => Err(io::Error::other(format!(
            "the WebSocket upgrade failed: {}",
            describe_ws(e)
        ))),
        Ok(Ok((ws, _response))) => Ok(ws),
    }
}

/// A tungstenite error as an `io::Error` that [`describe`] words well.
pub(super) fn io_error(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::Http(response) => {
            io::Error::other(format!("the server answered HTTP {}", response.status()))
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::ConnectionAborted, "the WebSocket is closed")
        }
        e => io::Error::other(e.to_string()),
    }
}

/// A tungstenite error in the words of the rest of the report.
pub(super) fn describe_ws(e: WsError) -> String {
    describe(&io_error(e))
}

/// What one message from the server is to a line scenario.
pub(super) enum Incoming {
    /// A text or binary message: one line.
    Line(Payload),
    /// A ping, pong or raw frame: nothing to count.
    Control,
    /// The server closed the WebSocket (a close frame, with its code).
    Closed(Option<u16>),
}

impl From<Message> for Incoming {
    fn from(message: Message) -> Self {
        match message {
            Message::Text(text) => Incoming::Line(Payload::Text(text)),
            Message::Binary(data) => Incoming::Line(Payload::Binary(data)),
            Message::Close(frame) => Incoming::Closed(frame.map(|f| u16::from(f.code))),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
        }
    }
}

/// A received line's bytes, left in the message they came in.
pub(super) enum Payload {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Payload::Text(text) => text.as_bytes(),
            Payload::Binary(data) => data,
        }
    }
}

/// Why the server's close ended a connection, for an error message.
pub(super) fn closed(code: Option<u16>) -> String {
    match code {
        Some(code) => format!("the server closed the WebSocket ({code})"),
        None => "the server closed the WebSocket".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(addr: &str) -> WsUrl {
        parse(addr).unwrap().unwrap()
    }

    #[test]
    fn parses_ws_urls() {
        let u = url("ws://127.0.0.1:8080/ws");
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:8080", "/ws")
        );
        let u = url("ws://localhost:9");
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("localhost:9", "/")
        );
        let u = url("WS://example.com?room=a");
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("example.com:80", "/?room=a")
        );
        let u = url("ws://[::1]/chat");
        assert_eq!(u.authority, "[::1]:80");
        let u = url("ws://[::1]:81/");
        assert_eq!(u.authority, "[::1]:81");
    }

    #[test]
    fn lines_targets_are_not_urls() {
        assert_eq!(parse("127.0.0.1:5000").unwrap(), None);
        assert_eq!(parse("localhost:5000").unwrap(), None);
    }

    #[test]
    fn refuses_other_schemes() {
        let wss = parse("wss://example.com/ws").unwrap_err();
        assert!(wss.to_string().contains("TLS"), "{wss}");
        assert!(parse("http://example.com/").is_err());
        assert!(parse("ws:///ws").is_err());
    }
}
