//! A test CA, and a server certificate (for `localhost` and `127.0.0.1`)
//! and a client certificate it signed: as DER, and as PEM files in a
//! directory of their own, removed when dropped. Made at run time with
//! rcgen.

use super::connect;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use sockline::{Config, tls};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::Arc;

/// A test CA and certificates it signed, as DER and as PEM files.
pub struct Pki {
    pub ca: CertificateDer<'static>,
    pub server: (CertificateDer<'static>, PrivateKeyDer<'static>),
    pub client: (CertificateDer<'static>, PrivateKeyDer<'static>),
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(name: &str) -> Pki {
        let ca_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("sockline test CA {name}"));
        let ca = params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(params, &ca_key);
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            (cert, key)
        };
        let (server, server_key) = leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client, client_key) = leaf(vec!["client".into()]);
        let dir = std::env::temp_dir().join(format!("sockline-pki-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (file, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), pem).unwrap();
        }
        let der = |key: &KeyPair| PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        Pki {
            ca: ca.der().clone(),
            server: (server.der().clone(), der(&server_key)),
            client: (client.der().clone(), der(&client_key)),
            dir,
        }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    /// `sockline serve` flags for mutual TLS with these files.
    pub fn serve_args(&self) -> [String; 6] {
        [
            "--tls-cert".into(),
            self.path("server.pem"),
            "--tls-key".into(),
            self.path("server.key"),
            "--tls-client-ca".into(),
            self.path("ca.pem"),
        ]
    }

    /// The server's config; with `mutual`, clients need a certificate.
    pub fn server_config(&self, mutual: bool) -> Config {
        let ca = mutual.then(|| self.dir.join("ca.pem"));
        let (cert, key) = (self.server.0.clone(), self.server.1.clone_key());
        Config {
            tls: Some(tls::server_config(vec![cert], key, ca.as_deref()).unwrap()),
            ..Config::default()
        }
    }

    /// A blocking rustls client, with the client certificate if `identify`.
    pub fn client(
        &self,
        addr: SocketAddr,
        identify: bool,
    ) -> StreamOwned<ClientConnection, TcpStream> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
        let config = match identify {
            true => builder
                .with_client_auth_cert(vec![self.client.0.clone()], self.client.1.clone_key())
                .unwrap(),
            false => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from("localhost").unwrap();
        let session = ClientConnection::new(Arc::new(config), name).unwrap();
        StreamOwned::new(session, connect(addr))
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
