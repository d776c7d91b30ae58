//! The TLS side of `sockline connect`: the handshake, the line that says
//! what was negotiated and with whom, and the words for what went wrong.

use crate::error::describe;
use rustls::AlertDescription;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time;

/// Runs the TLS handshake on `tcp`, within `timeout`.
pub(super) async fn handshake(
    tcp: TcpStream,
    addr: &str,
    config: Arc<rustls::ClientConfig>,
    name: rustls::pki_types::ServerName<'static>,
    timeout: Duration,
) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let connector = tokio_rustls::TlsConnector::from(config);
    let failed = |why: String| io::Error::other(format!("TLS handshake with {addr} failed: {why}"));
    match time::timeout(timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(failed(explain(&e).unwrap_or_else(|| reason(&e)))),
        Err(_elapsed) => Err(failed(format!("no answer in {} s", timeout.as_secs_f64()))),
    }
}

/// rustls's own words for `e`, or failing that [`describe`]'s; a message
/// of ours (a `General` error, from our certificate checks) as it is.
fn reason(e: &io::Error) -> String {
    match e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::General(why)) => why.clone(),
        Some(e) => e.to_string(),
        None => describe(e),
    }
}

/// What a failed TLS session or handshake means to the user, if rustls
/// says why: the server refusing our certificate, or asking for one.
pub(super) fn explain(e: &io::Error) -> Option<String> {
    let e = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::AlertReceived(alert) = e else {
        return None;
    };
    let why = match alert {
        AlertDescription::CertificateRequired => {
            return Some(
                "the server requires a client certificate (connect with --cert FILE --key FILE)"
                    .into(),
            );
        }
        AlertDescription::UnknownCA => "it was not signed by a CA the server trusts",
        AlertDescription::CertificateExpired => "it has expired, says the server",
        AlertDescription::CertificateRevoked => "it was revoked, says the server",
        AlertDescription::UnsupportedCertificate => "the server does not accept its kind or usage",
        AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => {
            "the server found it bad (check its version, usages and issuer)"
        }
        AlertDescription::DecryptError => "the server could not verify its signature",
        _ => return None,
    };
    Some(format!("the server refused our client certificate: {why}"))
}

/// `TLS 1.3, certificate CN=example.com`: what a TLS session is, for the
/// line `connect` prints on a terminal.
pub(super) fn describe_session(session: &rustls::ClientConnection) -> String {
    let version = match session.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
        Some(other) => format!("{other:?}"),
        None => "TLS".to_string(),
    };
    let subject = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|cert| subject(cert));
    match subject {
        Some(name) if !name.is_empty() => format!("{version}, certificate {name}"),
        _ => format!("{version}, certificate without a subject name"),
    }
}

/// The subject name of a DER certificate, as `CN=name, O=org`, in the
/// certificate's order; `None` if it cannot be read.
fn subject(cert: &[u8]) -> Option<String> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
    // OPTIONAL, serial, signature, issuer, validity, subject, ... } ... }
    let (_, certificate, _) = der(cert)?;
    let (_, tbs, _) = der(certificate)?;
    let mut rest = tbs;
    let (tag, _, after) = der(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    for _ in 0..4 {
        rest = der(rest)?.2; // serial, signature, issuer, validity
    }
    let (_, name, _) = der(rest)?;
    let mut parts = Vec::new();
    let mut rdns = name;
    while !rdns.is_empty() {
        let (_, set, next) = der(rdns)?;
        rdns = next;
        let mut attributes = set;
        while !attributes.is_empty() {
            let (_, attribute, next) = der(attributes)?;
            attributes = next;
            let (_, oid, value) = der(attribute)?;
            let (_, text, _) = der(value)?;
            let key = match oid {
                [0x55, 0x04, 0x03] => "CN".to_string(),
                [0x55, 0x04, 0x06] => "C".to_string(),
                [0x55, 0x04, 0x07] => "L".to_string(),
                [0x55, 0x04, 0x08] => "ST".to_string(),
                [0x55, 0x04, 0x0a] => "O".to_string(),
                [0x55, 0x04, 0x0b] => "OU".to_string(),
                _ => "?".to_string(),
            };
            let text = crate::escape::escape_lossy(text);
            parts.push(format!("{key}={text}"));
        }
    }
    Some(parts.join(", "))
}

/// One DER element at the start of `bytes`: its tag, its contents, and the
/// bytes after it.
fn der(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = bytes.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let (digits, rest) = rest.split_at_checked(n)?;
            let len = digits
                .iter()
                .fold(0usize, |len, &d| (len << 8) | usize::from(d));
            (len, rest)
        }
        _ => return None,
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
}
