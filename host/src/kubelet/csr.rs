//! Certificates from the cluster's signers, the way kubelets get theirs: a
//! CertificateSigningRequest to `kubernetes.io/kubelet-serving` for the kubelet API's serving
//! certificate (optionally self-approved), and to `kubernetes.io/kube-apiserver-client-kubelet`
//! for the node's own client certificate (`system:node:<name>`, approved by the
//! controller-manager's csrapproving controller, never by us).

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

use super::tls::{self, ServingCert, TlsError};

pub const SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The signer of node client certificates; kube-controller-manager auto-approves its CSRs from
/// requesters allowed to `create certificatesigningrequests/nodeclient`.
pub const CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The group every node identity carries, as the Node authorizer expects.
pub const NODES_GROUP: &str = "system:nodes";

#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("building the CSR: {0}")]
    Build(#[from] TlsError),
    #[error("building the CSR: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("creating CertificateSigningRequest for node {node}: {source}")]
    Create { node: String, source: kube::Error },
    #[error("CertificateSigningRequest {name} was denied or failed: {reason}")]
    Refused { name: String, reason: String },
    #[error(
        "CertificateSigningRequest {name} was not issued within {waited:?} (approve it with `kubectl certificate approve {name}`)"
    )]
    Timeout { name: String, waited: Duration },
    #[error("reading CertificateSigningRequest {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("certificate issued for CertificateSigningRequest {name}: {why}")]
    Issued { name: String, why: String },
}

/// Requests a serving certificate and waits up to `wait` for it to be issued.
pub async fn request(
    kube: &kube::Client,
    node: &str,
    hostname: &str,
    ip: IpAddr,
    self_approve: bool,
    lifetime: Duration,
    wait: Duration,
) -> Result<ServingCert, CsrError> {
    let key = rcgen::KeyPair::generate()?;
    let params = tls::serving_params(node, hostname, ip)?;
    let ask = Ask {
        node,
        prefix: "vkcube-serving",
        signer: SIGNER,
        usages: &["digital signature", "server auth"],
        lifetime,
        wait,
        self_approve: self_approve
            .then(|| format!("serving certificate of virtual node {node}, approved by its daemon")),
    };
    let (_, cert) = submit(kube, &ask, params.serialize_request(&key)?.pem()?).await?;
    let (chain, not_after) = tls::issued_chain(&cert)?;
    let pem = String::from_utf8_lossy(&cert).into_owned();
    Ok(tls::certified(pem, chain, &key.serialize_der(), not_after)?)
}

/// A node's client certificate and its key, both PEM; the key never leaves memory.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// The CertificateSigningRequest it came from.
    pub csr: String,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("csr", &self.csr)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The subject of node `node`'s client certificate: `O=system:nodes, CN=system:node:<node>`, no
/// names (the signer refuses any SAN), client auth only.
pub fn client_params(node: &str) -> Result<rcgen::CertificateParams, rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, NODES_GROUP);
    dn.push(rcgen::DnType::CommonName, format!("system:node:{node}"));
    params.distinguished_name = dn;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params)
}

/// Requests a client certificate for node `node` from the kubelet client signer with the
/// requester's (bootstrap) credentials in `kube`, and waits up to `wait` for the
/// controller-manager to approve and sign it.
pub async fn request_client(
    kube: &kube::Client,
    node: &str,
    lifetime: Duration,
    wait: Duration,
) -> Result<ClientCert, CsrError> {
    let key = rcgen::KeyPair::generate()?;
    let ask = Ask {
        node,
        prefix: "vkcube-client",
        signer: CLIENT_SIGNER,
        // ECDSA keys: no key encipherment, which the signer accepts only with RSA.
        usages: &["digital signature", "client auth"],
        lifetime,
        wait,
        self_approve: None,
    };
    let (name, cert) = submit(kube, &ask, client_params(node)?.serialize_request(&key)?.pem()?).await?;
    let (not_before, not_after) = validity(&cert).map_err(|why| CsrError::Issued { name: name.clone(), why })?;
    Ok(ClientCert {
        cert_pem: String::from_utf8_lossy(&cert).into_owned(),
        key_pem: key.serialize_pem(),
        not_before,
        not_after,
        csr: name,
    })
}

/// The validity window of the first certificate of a PEM chain.
pub fn validity(pem: &[u8]) -> Result<(SystemTime, SystemTime), String> {
    let (chain, _) = tls::issued_chain(pem).map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("no certificate in PEM")?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| e.to_string())?;
    let at = |secs: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    Ok((at(parsed.validity().not_before.timestamp()), at(parsed.validity().not_after.timestamp())))
}

/// One certificate request: who for, which signer, which usages.
struct Ask<'a> {
    node: &'a str,
    prefix: &'a str,
    signer: &'a str,
    usages: &'a [&'a str],
    lifetime: Duration,
    wait: Duration,
    /// Approve it ourselves with this message (only the serving signer, whose CSRs nothing
    /// in the cluster approves).
    self_approve: Option<String>,
}

/// Creates the CSR and polls it until it is issued (its name and PEM chain), refused or late.
async fn submit(kube: &kube::Client, ask: &Ask<'_>, csr_pem: String) -> Result<(String, Vec<u8>), CsrError> {
    let node = ask.node;
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(kube.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some(format!("{}-{node}-", ask.prefix)), ..ObjectMeta::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: ask.signer.into(),
            usages: Some(ask.usages.iter().map(|u| u.to_string()).collect()),
            expiration_seconds: i32::try_from(ask.lifetime.as_secs()).ok(),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|source| CsrError::Create { node: node.into(), source })?;
    let name = created.metadata.name.clone().unwrap_or_default();
    if let Some(message) = &ask.self_approve {
        let approval = serde_json::json!({"status": {"conditions": [{
            "type": "Approved",
            "status": "True",
            "reason": "VkcubeSelfApproved",
            "message": message,
        }]}});
        // The controller-manager never approves kubelet-serving CSRs; without RBAC for it we
        // wait for an administrator instead.
        if let Err(e) =
            api.patch_subresource("approval", &name, &PatchParams::default(), &Patch::Merge(&approval)).await
        {
            tracing::warn!(csr = %name, error = %e, "cannot approve our own serving CSR; waiting for an administrator");
        }
    }
    let started = Instant::now();
    let mut poll = Duration::from_millis(200);
    loop {
        let current = api.get(&name).await.map_err(|source| CsrError::Read { name: name.clone(), source })?;
        if let Some(status) = current.status {
            if let Some(refusal) = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| (c.type_ == "Denied" || c.type_ == "Failed") && c.status == "True")
            {
                return Err(CsrError::Refused { name, reason: refusal.message.or(refusal.reason).unwrap_or_default() });
            }
            if let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) {
                return Ok((name, cert.0));
            }
        }
        if started.elapsed() >= ask.wait {
            return Err(CsrError::Timeout { name, waited: ask.wait });
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(Duration::from_secs(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CSR must pass the apiserver's `ValidateKubeletClientCSR`: exactly O=system:nodes, a
    /// `system:node:` CN, and no SAN of any kind.
    #[test]
    fn client_csr_names_the_node_identity_and_nothing_else() {
        let key = rcgen::KeyPair::generate().unwrap();
        let der = client_params("uk8s-a1b2c3d4-vk-x7k2p").unwrap().serialize_request(&key).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(der.der()).unwrap();
        let subject = &req.certification_request_info.subject;
        let cns: Vec<_> = subject.iter_common_name().map(|a| a.as_str().unwrap().to_string()).collect();
        let orgs: Vec<_> = subject.iter_organization().map(|a| a.as_str().unwrap().to_string()).collect();
        assert_eq!(cns, ["system:node:uk8s-a1b2c3d4-vk-x7k2p"]);
        assert_eq!(orgs, ["system:nodes"]);
        let sans = req.requested_extensions().into_iter().flatten().any(|e| {
            matches!(e, x509_parser::extensions::ParsedExtension::SubjectAlternativeName(s) if !s.general_names.is_empty())
        });
        assert!(!sans, "a client CSR with a SAN is refused by the signer");
    }
}
