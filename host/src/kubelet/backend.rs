//! What the kubelet API needs from the rest of the host: the node's pods, where to stream logs and
//! exec sessions from, and usage samples. The server knows nothing about plugins.

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;

/// The host side of the kubelet API; implemented by the pod controller over the provider plugin.
pub trait KubeletBackend: Send + Sync + 'static {
    /// Name of the virtual node this server answers for.
    fn node_name(&self) -> String;

    /// Pods bound to the node, as last seen by the host (`/pods`).
    fn pods(&self) -> Vec<Pod>;

    /// Whether the node has pod `namespace/name` with UID `uid`: the check before every exec,
    /// attach and port-forward session of a UID path. The default reads [`Self::pods`]; a backend
    /// that can look one pod up should.
    fn has_pod(&self, namespace: &str, name: &str, uid: &str) -> bool {
        self.pods().iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(namespace)
                && p.metadata.name.as_deref() == Some(name)
                && p.metadata.uid.as_deref() == Some(uid)
        })
    }

    /// The pods the provider runs, as its backend reports them (`/runningpods/`): what is there,
    /// which may differ from what should be (an instance left behind, a pod not started yet).
    fn running_pods(&self) -> BoxFuture<'_, Result<Vec<Pod>, BackendError>>;

    /// Where to read a container's logs (expected: [`StreamProtocol::HttpBody`]).
    fn logs<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: LogQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>>;

    /// Where to run a command (expected: [`StreamProtocol::WebSocketChannels`]).
    fn exec<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: ExecQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>>;

    /// Where to attach to a container's main process (expected: [`StreamProtocol::WebSocketChannels`]).
    fn attach<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: ExecQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>>;

    /// Current usage of the node's pods; pods without an instance are left out.
    fn usage(&self) -> BoxFuture<'_, Result<Vec<PodUsage>, BackendError>>;

    /// Where to forward connections to `port` of a pod (expected: [`StreamProtocol::Tcp`]); asked
    /// once per port of a forwarding session. A backend that cannot forward ports answers
    /// [`BackendError::Unsupported`], which is the default.
    fn port_forward<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        let _ = (namespace, pod, port);
        Box::pin(async { Err(BackendError::Unsupported("this virtual node offers no port forwarding".into())) })
    }
}

/// Where the host connects to move the bytes of a stream (mirrors WIT `stream-target`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTarget {
    /// Absolute `http(s)://`, `ws(s)://` or (port forwarding) `tcp://host:port` URL.
    pub url: String,
    /// Extra request headers (credentials of the backend, typically).
    pub headers: Vec<(String, String)>,
    pub protocol: StreamProtocol,
}

impl StreamTarget {
    /// The URL as messages show it: without its query, which often carries the backend's
    /// credential for the stream (Cube's `token=`); errors reach clients and logs.
    pub fn shown_url(&self) -> String {
        match self.url.split_once('?') {
            Some((base, _)) => format!("{base}?<query hidden>"),
            None => self.url.clone(),
        }
    }
}

/// How the bytes at a [`StreamTarget`] are framed (mirrors WIT `stream-protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamProtocol {
    /// A plain HTTP GET whose response body is the stream.
    HttpBody,
    /// A WebSocket speaking the Kubernetes channel protocol (v5 or v4).
    WebSocketChannels,
    /// A TCP connection to the URL's `host:port`, one per forwarded connection.
    Tcp,
}

/// Options of a `containerLogs` request (mirrors WIT `log-options`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    pub follow: bool,
    pub tail_lines: Option<u64>,
    pub since_seconds: Option<u64>,
    /// RFC 3339, already validated.
    pub since_time: Option<String>,
    pub timestamps: bool,
    pub limit_bytes: Option<u64>,
    pub previous: bool,
}

/// Options of an `exec` or `attach` request (mirrors WIT `exec-options`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecQuery {
    /// Empty for attach.
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// A usage sample of one pod (mirrors WIT `pod-usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodUsage {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// RFC 3339 time of the sample.
    pub timestamp: String,
    pub containers: Vec<ContainerUsage>,
}

/// A usage sample of one container (mirrors WIT `container-usage`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerUsage {
    pub name: String,
    /// Cumulative CPU time.
    pub cpu_usage_core_nano_seconds: u64,
    /// Current CPU rate.
    pub cpu_usage_nano_cores: u64,
    pub memory_working_set_bytes: u64,
    pub memory_usage_bytes: u64,
    /// RFC 3339 start time of the container.
    pub start_time: String,
}

/// Why the backend could not answer; each maps to the HTTP status the apiserver relays to kubectl.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// 404: no such pod, container or instance.
    #[error("not found: {0}")]
    NotFound(String),
    /// 400: the request cannot be served as asked (e.g. an unsupported option).
    #[error("bad request: {0}")]
    BadRequest(String),
    /// 503: the provider or its backend is not reachable right now.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 501: the provider cannot do this at all; the message says so as the client should read it.
    #[error("{0}")]
    Unsupported(String),
}

impl BackendError {
    pub fn status(&self) -> http::StatusCode {
        match self {
            BackendError::NotFound(_) => http::StatusCode::NOT_FOUND,
            BackendError::BadRequest(_) => http::StatusCode::BAD_REQUEST,
            BackendError::Unavailable(_) => http::StatusCode::SERVICE_UNAVAILABLE,
            BackendError::Unsupported(_) => http::StatusCode::NOT_IMPLEMENTED,
        }
    }
}
