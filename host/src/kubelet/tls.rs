//! TLS of the kubelet API: the serving certificate (self-signed or from the cluster signer, held in
//! a swappable store so renewal needs no restart), the client CA, and rustls configurations.

use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use k8s_openapi::api::core::v1::ConfigMap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("generating the serving certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("serving certificate: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client CA file {path}: {why}")]
    ClientCaFile { path: String, why: String },
    #[error("client CA from ConfigMap kube-system/extension-apiserver-authentication: {0}")]
    ClientCaConfigMap(String),
    #[error("client CA: {0}")]
    ClientVerifier(String),
    #[error("certificate from the signer: {0}")]
    IssuedCertificate(String),
}

/// A serving certificate with its key, as handed to rustls and reported to the caller.
#[derive(Clone)]
pub struct ServingCert {
    pub cert_pem: String,
    pub key: Arc<CertifiedKey>,
    pub not_after: SystemTime,
    /// Made by this server rather than issued by a signer: it is its own CA.
    pub self_signed: bool,
}

impl std::fmt::Debug for ServingCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServingCert").field("not_after", &self.not_after).finish_non_exhaustive()
    }
}

/// Lifetime of self-signed serving certificates.
pub const SELF_SIGNED_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The subject and names every serving certificate carries, whatever signs it.
pub fn serving_params(node: &str, hostname: &str, ip: IpAddr) -> Result<rcgen::CertificateParams, TlsError> {
    let mut params = rcgen::CertificateParams::new(vec![hostname.to_string()])?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(ip));
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    dn.push(rcgen::DnType::OrganizationName, "system:nodes");
    params.distinguished_name = dn;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    Ok(params)
}

/// A fresh self-signed serving certificate for the node.
pub fn self_signed(node: &str, hostname: &str, ip: IpAddr) -> Result<ServingCert, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = serving_params(node, hostname, ip)?;
    let now = time::OffsetDateTime::now_utc();
    // Backdated a little so a client whose clock lags still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::try_from(SELF_SIGNED_LIFETIME).unwrap_or(time::Duration::days(365));
    let cert = params.self_signed(&key)?;
    let not_after = SystemTime::from(params.not_after);
    let mut cert = certified(cert.pem(), vec![cert.der().clone()], &key.serialize_der(), not_after)?;
    cert.self_signed = true;
    Ok(cert)
}

/// Builds the rustls form of a certificate chain and its PKCS#8 key.
pub fn certified(
    cert_pem: String,
    chain: Vec<CertificateDer<'static>>,
    pkcs8: &[u8],
    not_after: SystemTime,
) -> Result<ServingCert, TlsError> {
    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    let key = CertifiedKey::from_der(chain, key_der, &provider())?;
    Ok(ServingCert { cert_pem, key: Arc::new(key), not_after, self_signed: false })
}

/// Parses an issued PEM chain and returns it with the leaf's expiry.
pub fn issued_chain(pem: &[u8]) -> Result<(Vec<CertificateDer<'static>>, SystemTime), TlsError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::IssuedCertificate(e.to_string()))?;
    let leaf = chain.first().ok_or_else(|| TlsError::IssuedCertificate("no certificate in PEM".into()))?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| TlsError::IssuedCertificate(e.to_string()))?;
    let secs = parsed.validity().not_after.timestamp();
    let not_after = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok((chain, not_after))
}

/// Holds the current serving certificate; renewal swaps it under live connections.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<ServingCert>,
}

impl CertStore {
    pub fn new(cert: ServingCert) -> Self {
        Self { current: ArcSwap::from_pointee(cert) }
    }

    pub fn current(&self) -> Arc<ServingCert> {
        self.current.load_full()
    }

    pub fn replace(&self, cert: ServingCert) {
        self.current.store(Arc::new(cert));
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().key.clone())
    }
}

/// Reads the client CA: the configured file, else the cluster's published one. `None` when the
/// cluster publishes none (client certificates are then not accepted; tokens still are).
pub async fn client_ca(
    file: Option<&Path>,
    kube: &kube::Client,
) -> Result<Option<Vec<CertificateDer<'static>>>, TlsError> {
    let pem = match file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| TlsError::ClientCaFile { path: path.display().to_string(), why: e.to_string() })?,
        ),
        None => {
            let api: kube::Api<ConfigMap> = kube::Api::namespaced(kube.clone(), "kube-system");
            let cm = api
                .get_opt("extension-apiserver-authentication")
                .await
                .map_err(|e| TlsError::ClientCaConfigMap(e.to_string()))?;
            cm.and_then(|cm| cm.data).and_then(|mut d| d.remove("client-ca-file")).map(String::into_bytes)
        }
    };
    let Some(pem) = pem else { return Ok(None) };
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::ClientVerifier("the client CA bundle holds no certificate".into()));
    }
    Ok(Some(certs))
}

/// The server configuration: certificates from the store; client certificates optional (bearer
/// tokens are the other way in) but, when presented, verified against the client CA.
pub fn server_config(
    store: Arc<CertStore>,
    client_ca: Option<Vec<CertificateDer<'static>>>,
) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let builder = match client_ca {
        Some(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert).map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::ClientVerifier(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(store);
    // HTTP/1.1 only: exec, attach and port-forward are HTTP/1.1 upgrades, and the apiserver opens
    // one connection per streaming request anyway.
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// [`client_config`], built once per process and shared by every node's kubelet API: the
/// system's roots are a few hundred KiB a copy (issue 18).
pub fn shared_client_config() -> Arc<rustls::ClientConfig> {
    static SHARED: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    SHARED.get_or_init(|| Arc::new(client_config())).clone()
}

/// The client configuration for `wss://` backend targets: the system's roots.
pub fn client_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_node_shares_one_backend_client_configuration() {
        assert!(Arc::ptr_eq(&shared_client_config(), &shared_client_config()));
    }

    #[test]
    fn self_signed_certificate_names_the_node_and_its_address() {
        let cert = self_signed("vk-1", "vk-1.example", "127.0.0.1".parse().unwrap()).unwrap();
        let (chain, not_after) = issued_chain(cert.cert_pem.as_bytes()).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
        assert_eq!(parsed.subject().iter_common_name().next().unwrap().as_str().unwrap(), "system:node:vk-1");
        let sans = format!("{:?}", parsed.subject_alternative_name().unwrap().unwrap().value.general_names);
        assert!(sans.contains("vk-1.example"), "{sans}");
        assert!(sans.contains("127.0.0.1") || sans.contains("[127, 0, 0, 1]"), "{sans}");
        assert!(not_after > SystemTime::now() + Duration::from_secs(300 * 24 * 3600));
    }

    #[test]
    fn store_serves_the_replaced_certificate() {
        let first = self_signed("a", "a", "127.0.0.1".parse().unwrap()).unwrap();
        let second = self_signed("a", "a", "127.0.0.1".parse().unwrap()).unwrap();
        let store = CertStore::new(first);
        store.replace(second.clone());
        assert_eq!(store.current().cert_pem, second.cert_pem);
    }
}
