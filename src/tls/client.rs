//! The client's TLS config (`sockline connect --tls`): which server
//! certificates it trusts (the public roots, a CA file, a pinned
//! fingerprint, or any) and the client certificate it may present; and
//! what to tell the user when that fails.

use super::{fingerprint, invalid, load_certs, load_key, provider, roots};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::io;
use std::sync::Arc;

/// How `connect --tls` checks the server, and who it says it is.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// Trust the CA certificates in this PEM file instead of the public roots.
    pub ca: Option<std::path::PathBuf>,
    /// Accept only the server certificate with this SHA-256 fingerprint
    /// (hex, colons optional), whoever signed it.
    pub pin: Option<String>,
    /// Accept any server certificate (encryption without authentication).
    pub insecure: bool,
    /// A client certificate chain and key, for servers that require one.
    pub identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// A client config for these settings.
pub fn client_config(tls: &ClientTls) -> io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup failed: {e}")))?;
    let builder = if tls.insecure || tls.pin.is_some() {
        let pin = tls.pin.as_deref().map(normalize_fingerprint).transpose()?;
        let verifier = Unchained {
            pin,
            algorithms: provider().signature_verification_algorithms,
        };
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
    } else {
        let roots = match &tls.ca {
            Some(path) => roots(path)?,
            None => RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        };
        let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| invalid(format!("TLS setup failed: {e}")))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Explained { inner }))
    };
    let config = match &tls.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| invalid(unusable_identity(&e, cert, key)))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Why rustls will not present `cert` with `key`, in words.
fn unusable_identity(e: &rustls::Error, cert: &std::path::Path, key: &std::path::Path) -> String {
    let (cert, key) = (cert.display(), key.display());
    // webpki's own errors come as `Other`, named only by their Debug text.
    let detail = format!("{e:?}");
    let why = if detail.contains("UnsupportedCertVersion") {
        "it is an X.509 version 1 certificate, and TLS here takes only version 3 \
         (issue it with extensions, e.g. openssl x509 -req ... -extfile FILE with \
         basicConstraints=CA:FALSE)"
            .to_string()
    } else if detail.contains("KeyMismatch") {
        format!("the key in {key} is not the certificate's key")
    } else if detail.contains("BadDer") {
        "it is not a well-formed X.509 certificate".to_string()
    } else if detail.contains("UnsupportedSignatureAlgorithm") || detail.contains("UnknownKey") {
        "its key type or signature algorithm is not supported".to_string()
    } else {
        e.to_string()
    };
    format!("cannot use client certificate {cert} (key {key}): {why}")
}

/// The name to check the server's certificate against: the host of `HOST:PORT`.
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| invalid(format!("{host:?} is not a valid server name for TLS")))
}

/// `AB:CD:...` from hex with or without colons, any case.
fn normalize_fingerprint(pin: &str) -> io::Result<String> {
    let hex: String = pin.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "--pin {pin:?} is not a SHA-256 fingerprint (64 hex digits)"
        )));
    }
    let bytes: Vec<String> = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).to_uppercase())
        .collect();
    Ok(bytes.join(":"))
}

/// A server check without a chain of trust: `--pin` accepts the one
/// certificate with that fingerprint, `--insecure` any. The handshake's
/// signatures are still checked, so the session is encrypted to whoever
/// holds the key of the certificate shown.
#[derive(Debug)]
struct Unchained {
    pin: Option<String>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Unchained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pin {
            Some(pin) if *pin != fingerprint(end_entity) => Err(rustls::Error::General(format!(
                "the server's certificate does not match --pin (its SHA-256 fingerprint is {})",
                fingerprint(end_entity)
            ))),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The usual check against the roots (or `--ca`), whose failure for want of
/// a known issuer says what the user can do instead.
#[derive(Debug)]
struct Explained {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for Explained {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked =
            (self.inner).verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        match checked {
            Err(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)) => {
                Err(rustls::Error::General(format!(
                    "the server's certificate is signed by an unknown issuer: trust its CA \
                     with --ca FILE, this one certificate with --pin {} (its SHA-256 \
                     fingerprint: check it with the server's owner), or skip the check with \
                     --insecure",
                    fingerprint(end_entity)
                )))
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
