//! Configuration of the kubelet HTTPS API: where it listens, what address it publishes, where its
//! serving certificate comes from and how clients are authenticated.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// The `[kubelet]` section of the host configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KubeletConfig {
    /// Socket the HTTPS server binds; port 0 picks a free one (published through the Node).
    pub listen: SocketAddr,
    /// The node's InternalIP, where the apiserver dials; also a SAN of the serving certificate.
    pub address: IpAddr,
    /// Host name published as a SAN of the serving certificate; defaults to the node name.
    pub hostname: Option<String>,
    pub tls: ServingTls,
    /// PEM bundle of the CA that signs client certificates. When absent, the CA is read from
    /// ConfigMap kube-system/extension-apiserver-authentication (`client-ca-file`).
    pub client_ca_file: Option<PathBuf>,
    /// How long authentication and authorization decisions are reused.
    #[serde(with = "seconds")]
    pub auth_cache_ttl: Duration,
    /// Upper bound on cached decisions, so a flood of distinct tokens cannot grow memory.
    pub auth_cache_size: usize,
    /// How long a client may take to finish the TLS handshake.
    #[serde(with = "seconds")]
    pub tls_handshake_timeout: Duration,
    /// How long a connection may go without a complete request head: after the handshake, and
    /// between the requests of a keep-alive connection (so also the keep-alive idle timeout).
    /// Responses in progress (a followed log) and exec/attach sessions are not cut by it.
    #[serde(with = "seconds")]
    pub header_read_timeout: Duration,
    /// Connections served at once; more are closed as soon as they are accepted. Each holds a
    /// file descriptor, so keep this under the process's limit (`ulimit -n`) divided by the
    /// number of nodes. Upgraded exec/attach sessions are not counted.
    pub max_connections: usize,
    /// TokenReviews and SubjectAccessReviews go through a Kubernetes client of their own, with
    /// this rate limit (requests per second, then burst), so reviews caused by callers of the
    /// kubelet API never delay node heartbeats.
    pub review_qps: u32,
    pub review_burst: u32,
    /// TokenReviews awaiting the apiserver at once; a request with an unknown token arriving past
    /// this is answered 429 at once instead of queueing. A quarter more (at least one) is kept for
    /// re-reviewing tokens the apiserver accepted before.
    pub reviews_in_flight: u32,
}

impl Default for KubeletConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            hostname: None,
            tls: ServingTls::default(),
            client_ca_file: None,
            auth_cache_ttl: Duration::from_secs(30),
            auth_cache_size: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(20),
            max_connections: 1000,
            review_qps: 50,
            review_burst: 100,
            reviews_in_flight: 16,
        }
    }
}

impl KubeletConfig {
    /// The bounds each connection is served under.
    pub(super) fn connection_limits(&self) -> super::server::ConnectionLimits {
        super::server::ConnectionLimits {
            handshake_timeout: self.tls_handshake_timeout,
            header_read_timeout: self.header_read_timeout,
            max_connections: self.max_connections.max(1),
        }
    }

    /// The limits of the client reviews go through.
    pub fn review_api_limits(&self) -> crate::apiclient::ApiLimits {
        crate::apiclient::ApiLimits {
            qps: self.review_qps.max(1),
            burst: self.review_burst.max(1),
            max_in_flight: self.reviews_in_flight.max(1),
            ..crate::apiclient::ApiLimits::default()
        }
    }
}

/// Where the serving certificate comes from.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case", tag = "mode")]
pub enum ServingTls {
    /// A self-signed certificate made at start (the apiserver does not verify kubelet serving
    /// certificates unless started with `--kubelet-certificate-authority`).
    #[default]
    SelfSigned,
    /// A certificate from the `kubernetes.io/kubelet-serving` signer through a
    /// CertificateSigningRequest, renewed before it expires.
    Csr {
        /// Approve our own CSR (needs RBAC on `certificatesigningrequests/approval` and
        /// `signers` approve); otherwise wait for an administrator.
        #[serde(default = "default_true")]
        self_approve: bool,
        /// Requested lifetime; the signer may shorten it.
        #[serde(default = "default_csr_lifetime", with = "seconds")]
        lifetime: Duration,
        /// How long start waits for the certificate before serving a self-signed one meanwhile.
        #[serde(default = "default_csr_wait", with = "seconds")]
        wait: Duration,
    },
}

fn default_true() -> bool {
    true
}

fn default_csr_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_csr_wait() -> Duration {
    Duration::from_secs(30)
}

/// Durations are written as whole seconds in the config file.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_section_gives_loopback_self_signed_defaults() {
        let cfg: KubeletConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, KubeletConfig::default());
        assert_eq!(cfg.listen.port(), 0);
        assert_eq!(cfg.tls, ServingTls::SelfSigned);
    }

    #[test]
    fn csr_mode_reads_its_options() {
        let cfg: KubeletConfig = toml::from_str(
            "listen = \"0.0.0.0:10250\"\naddress = \"10.1.2.3\"\nauth_cache_ttl = 5\n\
             [tls]\nmode = \"csr\"\nself_approve = false\n",
        )
        .unwrap();
        assert_eq!(cfg.listen.port(), 10250);
        assert_eq!(cfg.auth_cache_ttl, Duration::from_secs(5));
        match cfg.tls {
            ServingTls::Csr { self_approve, lifetime, .. } => {
                assert!(!self_approve);
                assert_eq!(lifetime, Duration::from_secs(86400));
            }
            other => panic!("expected csr, got {other:?}"),
        }
    }

    #[test]
    fn connection_and_review_limits_are_read_and_defaulted() {
        let cfg: KubeletConfig =
            toml::from_str("header_read_timeout = 5\nmax_connections = 0\nreviews_in_flight = 2\n").unwrap();
        let limits = cfg.connection_limits();
        assert_eq!(limits.header_read_timeout, Duration::from_secs(5));
        assert_eq!(limits.handshake_timeout, Duration::from_secs(10));
        assert_eq!(limits.max_connections, 1, "a cap of 0 would refuse everyone");
        let api = cfg.review_api_limits();
        assert_eq!((api.qps, api.burst, api.max_in_flight), (50, 100, 2));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(toml::from_str::<KubeletConfig>("lisen = \"1.2.3.4:1\"").is_err());
    }
}
