//! TLS settings for both ends, built on rustls with the `ring` provider.
//!
//! The server side drives rustls by hand over its non-blocking sockets (see
//! [`crate::transport`]); the client (`sockline connect --tls`) uses
//! tokio-rustls. This module only turns files and flags into configs, and
//! every failure into one line that names the file at fault.
//!
//! The client's half (`client.rs`: its config, the public roots from
//! webpki-roots, `--pin`) is built only with the `client` feature, so a
//! server-only build does not carry the roots.

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use std::io;
use std::path::Path;
use std::sync::Arc;

#[cfg(feature = "client")]
mod client;
#[cfg(feature = "client")]
pub use client::{ClientTls, client_config, server_name};

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

/// The certificates redis-rs takes for a `rediss://` Redis (`serve
/// --redis-ca`, `--redis-cert`, `--redis-key`): `ca` to trust instead of
/// the system's roots, `identity` (certificate chain, key) to present. Each
/// file is read and checked here, so a bad one is named at start rather
/// than at the first connection.
pub fn redis_certificates(
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> io::Result<redis::TlsCertificates> {
    let root_cert = match ca {
        Some(path) => {
            roots(path)?;
            Some(read(path)?)
        }
        None => None,
    };
    let client_tls = match identity {
        Some((cert, key)) => {
            rustls::ClientConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| invalid(format!("TLS setup failed: {e}")))?
                .with_root_certificates(RootCertStore::empty())
                .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
                .map_err(|e| {
                    invalid(format!(
                        "cannot present {} with key {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
            Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            })
        }
        None => None,
    };
    Ok(redis::TlsCertificates {
        client_tls,
        root_cert,
    })
}

fn read(path: &Path) -> io::Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))
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
