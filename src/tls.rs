//! TLS settings for both ends, built on rustls with the `ring` provider.
//!
//! The server side drives rustls by hand over its non-blocking sockets (see
//! [`crate::transport`]); the client (`sockline connect --tls`) uses
//! tokio-rustls. This module only turns files and flags into configs, and
//! every failure into one line that names the file at fault.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::io;
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// The certificates in a PEM file (a chain: the server's first).
pub fn load_certs(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            invalid(format!(
                "cannot read certificates from {}: {e}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(invalid(format!("no certificate in {}", path.display())));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> io::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        invalid(format!(
            "cannot read a private key from {}: {e}",
            path.display()
        ))
    })
}

fn roots(path: &Path) -> io::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("bad CA certificate in {}: {e}", path.display())))?;
    }
    Ok(roots)
}

/// A server config for `chain` and `key`; with `client_ca`, clients must
/// present a certificate that CA signed (mutual TLS).
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&Path>,
) -> io::Result<Arc<ServerConfig>> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS setup failed: {e}")))?;
    let builder = match client_ca {
        Some(path) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(path)?), provider())
                    .build()
                    .map_err(|e| invalid(format!("bad client CA {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| invalid(format!("certificate and key do not work together: {e}")))?;
    Ok(Arc::new(config))
}

/// A throwaway certificate made at start (`serve --tls-self-signed`).
pub struct SelfSigned {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
    /// The certificate in PEM, for `connect --ca`.
    pub pem: String,
}

/// Makes a self-signed certificate for `names` (DNS names or IP addresses).
pub fn self_signed(names: Vec<String>) -> io::Result<SelfSigned> {
    let made = rcgen::generate_simple_self_signed(names)
        .map_err(|e| invalid(format!("cannot make a certificate: {e}")))?;
    let key = PrivateKeyDer::try_from(made.signing_key.serialize_der())
        .map_err(|e| invalid(format!("cannot make a certificate: {e}")))?;
    Ok(SelfSigned {
        pem: made.cert.pem(),
        cert: made.cert.der().clone(),
        key,
    })
}

/// The SHA-256 fingerprint of a DER certificate, as `AB:CD:...`.
pub fn fingerprint(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let hex: Vec<String> = digest.as_ref().iter().map(|b| format!("{b:02X}")).collect();
    hex.join(":")
}

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
