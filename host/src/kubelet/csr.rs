//! Serving certificates from the cluster: a CertificateSigningRequest to the
//! `kubernetes.io/kubelet-serving` signer, optionally self-approved, and its issued certificate.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::certificates::v1::{CertificateSigningRequest, CertificateSigningRequestSpec};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

use super::tls::{self, ServingCert, TlsError};

pub const SIGNER: &str = "kubernetes.io/kubelet-serving";

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
    let csr_pem = params.serialize_request(&key)?.pem()?;
    let api: kube::Api<CertificateSigningRequest> = kube::Api::all(kube.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta { generate_name: Some(format!("vkcube-serving-{node}-")), ..ObjectMeta::default() },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["digital signature".into(), "server auth".into()]),
            expiration_seconds: i32::try_from(lifetime.as_secs()).ok(),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    let created = api
        .create(&PostParams::default(), &csr)
        .await
        .map_err(|source| CsrError::Create { node: node.into(), source })?;
    let name = created.metadata.name.clone().unwrap_or_default();
    if self_approve {
        let approval = serde_json::json!({"status": {"conditions": [{
            "type": "Approved",
            "status": "True",
            "reason": "VkcubeSelfApproved",
            "message": format!("serving certificate of virtual node {node}, approved by its daemon"),
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
                let (chain, not_after) = tls::issued_chain(&cert.0)?;
                let pem = String::from_utf8_lossy(&cert.0).into_owned();
                return Ok(tls::certified(pem, chain, &key.serialize_der(), not_after)?);
            }
        }
        if started.elapsed() >= wait {
            return Err(CsrError::Timeout { name, waited: wait });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
