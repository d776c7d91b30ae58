//! The `--web` listener's HTTP: one request per connection, answered with
//! the built-in chat page, a WebSocket upgrade, or a clean error.
//!
//! A browser loads `GET /` (the page, [`PAGE`]), whose script opens
//! `GET /ws`, which upgrades to WebSocket (RFC 6455, section 4): from then
//! on the connection is a member like any TCP one, its messages framed by
//! [`Framing::WebSocket`](crate::framing::Framing). Nothing else is served;
//! anything else gets 404, 405 or 400 and the connection closes. A request
//! is read into the connection's own buffer, at most [`MAX_REQUEST`]
//! bytes, and parsed by `httparse`.
//!
//! The page's `Origin` must be allowed ([`Origins`]): by default the host
//! the request was sent to, so another site's page cannot open a
//! WebSocket to this server in its visitors' browsers.

use std::sync::OnceLock;

/// The chat page: HTML, CSS and script in one file, embedded.
pub const PAGE: &str = include_str!("web/page.html");

/// Largest request head read; past it, 431.
pub const MAX_REQUEST: usize = 8192;

/// The GUID of RFC 6455's accept key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Which pages may open a WebSocket (`--web-origin`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    /// Allowed `Origin` values (`https://chat.example.com`), or `*` for
    /// any; empty: the request's own host only.
    pub allowed: Vec<String>,
}

impl Origins {
    /// Whether a request to `host` from a page at `origin` may upgrade.
    /// Without an `Origin` header (not a browser), it may.
    fn allow(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.allowed.is_empty() {
            // Same host: `scheme://HOST[:PORT]` against the Host header.
            let origin_host = origin.split_once("://").map(|(_, rest)| rest);
            return origin_host.is_some() && origin_host == host;
        }
        (self.allowed.iter()).any(|allowed| allowed == "*" || allowed.eq_ignore_ascii_case(origin))
    }
}

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /`: the page.
    Page,
    /// `GET /ws` with a valid upgrade: the `Sec-WebSocket-Accept` value.
    Upgrade(String),
    /// Anything else: the status line's code and reason, and why.
    Error(u16, &'static str, &'static str),
}

/// Parses the request head at the start of `data`: the request and the
/// bytes it took, or `None` while incomplete.
pub fn parse(data: &[u8], origins: &Origins) -> Option<(Request, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut request = httparse::Request::new(&mut headers);
    let used = match request.parse(data) {
        Ok(httparse::Status::Complete(used)) => used,
        Ok(httparse::Status::Partial) if data.len() < MAX_REQUEST => return None,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            let error = Request::Error(431, "Request Header Fields Too Large", "request too large");
            return Some((error, data.len()));
        }
        Err(_) => {
            let error = Request::Error(400, "Bad Request", "not an HTTP request");
            return Some((error, data.len()));
        }
    };
    Some((decide(&request, origins), used))
}

/// The answer to a whole request.
fn decide(request: &httparse::Request, origins: &Origins) -> Request {
    let header = |name: &str| {
        (request.headers.iter())
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if request.method != Some("GET") {
        return Request::Error(405, "Method Not Allowed", "only GET is served");
    }
    let path = request.path.unwrap_or("/");
    let path = path.split_once('?').map_or(path, |(path, _)| path);
    match path {
        "/" => Request::Page,
        "/ws" => {
            let upgrade = has_token("Upgrade", "websocket") && has_token("Connection", "upgrade");
            let key = header("Sec-WebSocket-Key").filter(|key| key.len() == 24);
            match key {
                _ if !upgrade || request.version != Some(1) => {
                    Request::Error(400, "Bad Request", "expected a WebSocket upgrade")
                }
                _ if header("Sec-WebSocket-Version") != Some("13") => {
                    Request::Error(400, "Bad Request", "WebSocket version 13 only")
                }
                None => Request::Error(400, "Bad Request", "no valid Sec-WebSocket-Key"),
                _ if !origins.allow(header("Origin"), header("Host")) => {
                    Request::Error(403, "Forbidden", "origin not allowed")
                }
                Some(key) => Request::Upgrade(accept_key(key)),
            }
        }
        _ => Request::Error(404, "Not Found", "no such page"),
    }
}

/// `Sec-WebSocket-Accept` for `key`: base64 of SHA-1 of the key and the
/// GUID.
pub fn accept_key(key: &str) -> String {
    let digest = ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        format!("{key}{GUID}").as_bytes(),
    );
    base64(digest.as_ref())
}

/// The response to `request` (`refused`: the server refuses the client,
/// for this reason).
pub fn response(request: &Request, refused: Option<&str>) -> Vec<u8> {
    match (request, refused) {
        (Request::Upgrade(accept), _) => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes(),
        (Request::Page, None) => {
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n\
                 Content-Length: {}\r\nCache-Control: no-cache\r\n\
                 X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
                 Content-Security-Policy: {}\r\nConnection: close\r\n\r\n",
                PAGE.len(),
                policy()
            );
            [head.as_bytes(), PAGE.as_bytes()].concat()
        }
        (Request::Page, Some(why)) => error(503, "Service Unavailable", why),
        (Request::Error(code, reason, why), _) => error(*code, reason, why),
    }
}

/// A plain-text error response.
fn error(code: u16, reason: &str, why: &str) -> Vec<u8> {
    let allow = match code {
        405 => "Allow: GET\r\n",
        _ => "",
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\n{allow}Connection: close\r\n\r\n{why}\n",
        why.len() + 1
    )
    .into_bytes()
}

/// The page's Content-Security-Policy: its own inline script and style
/// (by hash) and WebSockets to this server; nothing else, so that even a
/// line that got into the page as HTML could not run or load anything.
fn policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| {
        let hash = |tag: &str| {
            let open = format!("<{tag}>");
            let close = format!("</{tag}>");
            let body = PAGE
                .split_once(&open)
                .and_then(|(_, rest)| rest.split_once(&close))
                .map_or("", |(body, _)| body);
            let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
            format!("'sha256-{}'", base64(digest.as_ref()))
        };
        format!(
            "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; \
             img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            hash("script"),
            hash("style")
        )
    })
}

/// Standard base64, with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Option<(Request, usize)> {
        parse(text.as_bytes(), &Origins::default())
    }

    const UPGRADE: &str = "GET /ws HTTP/1.1\r\nHost: chat.example:8080\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n";

    #[test]
    fn the_rfc_s_example_key() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b"ab"), "YWI=");
        assert_eq!(base64(b"a"), "YQ==");
    }

    #[test]
    fn requests_and_their_answers() {
        assert_eq!(request("GET / HTTP/1.1\r\nHost: x\r\n"), None);
        let page = "GET /?x=1 HTTP/1.1\r\nHost: x\r\n\r\nmore";
        assert_eq!(request(page), Some((Request::Page, page.len() - 4)));
        let upgrade = format!("{UPGRADE}Origin: http://chat.example:8080\r\n\r\n");
        let accept = Request::Upgrade("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into());
        assert_eq!(request(&upgrade), Some((accept.clone(), upgrade.len())));
        // Not a browser: no Origin, no check.
        let bare = format!("{UPGRADE}\r\n");
        assert_eq!(request(&bare).unwrap().0, accept);
        let code = |text: &str| match request(text) {
            Some((Request::Error(code, ..), _)) => code,
            other => panic!("{other:?}"),
        };
        let evil = format!("{UPGRADE}Origin: https://evil.example\r\n\r\n");
        assert_eq!(code(&evil), 403);
        assert_eq!(code("POST / HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(code("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(code("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n"), 400);
        let version_8 = format!("{}\r\n", UPGRADE.replace("Version: 13", "Version: 8"));
        assert_eq!(code(&version_8), 400);
        assert_eq!(code("\x16\x03\x01garbage\r\n\r\n"), 400);
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "y".repeat(MAX_REQUEST));
        assert_eq!(code(&huge), 431);
        // Allowed origins, when given.
        let origins = Origins {
            allowed: vec!["https://evil.example".into()],
        };
        assert!(matches!(
            parse(evil.as_bytes(), &origins),
            Some((Request::Upgrade(_), _))
        ));
    }

    #[test]
    fn the_page_is_served_with_a_policy_that_allows_only_itself() {
        let response = String::from_utf8(response(&Request::Page, None)).unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(response.contains("script-src 'sha256-"));
        assert!(response.ends_with(PAGE));
        let full = String::from_utf8(response_refused()).unwrap();
        assert!(full.starts_with("HTTP/1.1 503 "), "{full}");
    }

    fn response_refused() -> Vec<u8> {
        response(&Request::Page, Some("server full"))
    }
}
