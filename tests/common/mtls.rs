//! A workload certificate signed the way istiod signs one, and a mutual-TLS handshake over TCP
//! checked the way Envoy checks its peer (chain to the trust bundle, then the SPIFFE ID; with
//! revocation lists in its cluster's `ca-crl.pem`, every CA of the chain must have a current
//! one that does not list it, as Envoy checks them).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

pub const SPIFFE_ID: &str = "spiffe://cluster.local/ns/default/sa/x";

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A workload's identity: its certificate chain (leaf, intermediate) and key.
pub struct Workload {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: RootCertStore,
    /// The revocation lists its proxy checks peers against (none: no checks).
    crls: Vec<CertificateRevocationListDer<'static>>,
}

/// Signs a workload certificate with a cluster's cacerts, like istiod's CA does: SPIFFE URI SAN,
/// serverAuth+clientAuth, 24 h, chain = leaf + cert-chain.pem minus the root.
pub fn workload(cacerts: &Path) -> Workload {
    let ca_cert = std::fs::read_to_string(cacerts.join("ca-cert.pem")).unwrap();
    let ca_key = std::fs::read_to_string(cacerts.join("ca-key.pem")).unwrap();
    let issuer_key = rcgen::KeyPair::from_pem(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_cert, issuer_key).unwrap();

    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.subject_alt_names = vec![rcgen::SanType::URI(SPIFFE_ID.try_into().unwrap())];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::hours(24);
    let leaf = params.signed_by(&key, &issuer).unwrap();

    let mut chain = vec![leaf.der().clone()];
    let cert_chain = std::fs::read(cacerts.join("cert-chain.pem")).unwrap();
    let mut rest: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_chain)
        .collect::<Result<_, _>>()
        .unwrap();
    rest.pop(); // the root is not sent
    chain.extend(rest);

    let mut roots = RootCertStore::empty();
    let bundle = std::fs::read(cacerts.join("root-cert.pem")).unwrap();
    for root in CertificateDer::pem_slice_iter(&bundle) {
        roots.add(root.unwrap()).unwrap();
    }
    let crls = match std::fs::read(cacerts.join("ca-crl.pem")) {
        Ok(pem) => CertificateRevocationListDer::pem_slice_iter(&pem)
            .collect::<Result<_, _>>()
            .unwrap(),
        Err(_) => Vec::new(),
    };
    Workload {
        chain,
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        roots,
        crls,
    }
}

fn uri_sans(cert: &CertificateDer<'_>) -> Vec<String> {
    let (_, x) = x509_parser::parse_x509_certificate(cert).unwrap();
    x.subject_alternative_name()
        .unwrap()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Envoy's way of checking a peer: chain to the trust bundle, then match the SPIFFE ID; no
/// DNS name involved.
#[derive(Debug)]
struct SpiffeVerifier {
    roots: RootCertStore,
    expected: String,
    algs: WebPkiSupportedAlgorithms,
    /// With revocation lists: the chain checked against them (the peer's name is not).
    revocation: Option<Arc<rustls::client::WebPkiServerVerifier>>,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algs.all,
        )?;
        if let Some(revocation) = &self.revocation {
            // The chain and its revocation are checked before the name, which a workload
            // certificate never matches.
            let name = ServerName::try_from("workload.invalid").unwrap();
            match revocation.verify_server_cert(end_entity, intermediates, &name, &[], now) {
                Ok(_) => {}
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        if !uri_sans(end_entity).contains(&self.expected) {
            return Err(rustls::Error::General(format!(
                "peer is not {}",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Runs one mTLS exchange: `server` listens, `client` connects. Returns Ok(peer SPIFFE IDs as
/// seen by the server) or the first error either side hit.
pub fn handshake(server: Workload, client: Workload) -> Result<Vec<String>, String> {
    let provider = provider();
    let mut builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(server.roots), provider.clone());
    if !server.crls.is_empty() {
        // Every CA of the chain, an unknown status refused, expired lists refused: as Envoy.
        builder = builder
            .with_crls(server.crls)
            .enforce_revocation_expiration();
    }
    let client_verifier = builder.build().map_err(|e| e.to_string())?;
    let revocation = if client.crls.is_empty() {
        None
    } else {
        Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(client.roots.clone()),
                provider.clone(),
            )
            .with_crls(client.crls)
            .enforce_revocation_expiration()
            .build()
            .map_err(|e| e.to_string())?,
        )
    };
    let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(client_verifier)
        .with_single_cert(server.chain, server.key)
        .map_err(|e| e.to_string())?;
    let verifier = SpiffeVerifier {
        roots: client.roots,
        expected: SPIFFE_ID.to_string(),
        algs: provider.signature_verification_algorithms,
        revocation,
    };
    let client_config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(client.chain, client.key)
        .map_err(|e| e.to_string())?;

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server_thread = std::thread::spawn(move || -> Result<Vec<String>, String> {
        let (tcp, _) = listener.accept().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let conn =
            rustls::ServerConnection::new(Arc::new(server_config)).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .map_err(|e| format!("server: {e}"))?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").map_err(|e| format!("server: {e}"))?;
        tls.flush().map_err(|e| e.to_string())?;
        let peer = tls
            .conn
            .peer_certificates()
            .ok_or("no client certificate")?[0]
            .clone();
        Ok(uri_sans(&peer))
    });

    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let name = ServerName::try_from("workload.invalid").unwrap();
    let conn =
        rustls::ClientConnection::new(Arc::new(client_config), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let client_result = (|| -> Result<(), String> {
        tls.write_all(b"ping").map_err(|e| format!("client: {e}"))?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf)
            .map_err(|e| format!("client: {e}"))?;
        if &buf != b"pong" {
            return Err("client: wrong reply".into());
        }
        Ok(())
    })();
    drop(tls);
    let server_result = server_thread.join().unwrap();
    client_result?;
    server_result
}
