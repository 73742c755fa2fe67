//! A throwaway certificate authority made at test time, and one server certificate it signs
//! for `127.0.0.1` and `localhost`: HTTPS Azurite and the local token endpoints present it, and
//! a `rollq` child trusts it through `SSL_CERT_FILE` (reqwest's rustls verifier loads its roots
//! with `rustls-native-certs`, which reads that variable on Linux).
//!
//! Nothing is checked in: a fresh key pair per test, written to a temporary directory that is
//! removed when the handle drops.

use std::path::PathBuf;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A test CA and a loopback server certificate, as PEM files and as a rustls server config.
pub struct TestCa {
    /// Holds the PEM files; removed on drop, so keep the handle as long as a child reads them.
    dir: tempfile::TempDir,
    server_cert: CertificateDer<'static>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    /// Makes the CA (ECDSA P-256), signs a server certificate for `127.0.0.1` (an IP SAN) and
    /// `localhost`, and writes `ca.pem`, `server.pem` and `server-key.pem`.
    pub fn new() -> TestCa {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "rollq test CA (made at test time)");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("server params");
        server
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = server
            .signed_by(&key, &issuer)
            .expect("sign the server cert");

        let dir = tempfile::tempdir().expect("temp dir for the test CA");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("server-key.pem"), key.serialize_pem()).unwrap();
        TestCa {
            dir,
            server_cert: cert.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(key.serialize_der()),
        }
    }

    /// The CA certificate (PEM): what a client's `SSL_CERT_FILE` points at.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM), e.g. Azurite's `--cert`.
    pub fn server_cert_file(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (PKCS#8 PEM), e.g. Azurite's `--key`.
    pub fn server_key_file(&self) -> PathBuf {
        self.dir.path().join("server-key.pem")
    }

    /// A rustls server config presenting the server certificate (HTTP/1.1 only).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )
            .expect("server certificate and key");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
