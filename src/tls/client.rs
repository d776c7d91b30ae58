//! The client's TLS config (`sockline connect --tls`): which server
//! certificates it trusts (the public roots, a CA file, a pinned
//! fingerprint, or any) and the client certificate it may present.

use super::{fingerprint, invalid, load_certs, load_key, provider, roots};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
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
        builder.with_root_certificates(roots)
    };
    let config = match &tls.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| {
                invalid(format!(
                    "client certificate and key do not work together: {e}"
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
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
            Some(pin) if *pin != fingerprint(end_entity) => Err(rustls::Error::General(
                "the server's certificate does not match --pin".into(),
            )),
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
