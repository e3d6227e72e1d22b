//! The one way out of the sandbox: an HTTP exchange the host performs. In the guest it is the WIT
//! `http` import; in tests it is a scripted double.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub timeout_ms: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The contract's `http-error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// The URL is outside the plugin's allowlist.
    Denied(String),
    Timeout,
    Transport(String),
    InvalidRequest(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Denied(url) => write!(f, "the host denied {url}: it is outside the plugin's allowlist"),
            HttpError::Timeout => write!(f, "timed out"),
            HttpError::Transport(e) => write!(f, "transport error: {e}"),
            HttpError::InvalidRequest(e) => write!(f, "invalid request: {e}"),
        }
    }
}

pub trait Transport {
    fn send(&self, request: HttpRequest) -> Result<HttpResponse, HttpError>;

    /// Counts a failed exchange with the cloud API by action and code: the RetCode, or
    /// `http_<status>`, `unreachable`, `undecodable`. The guest publishes it through the host's
    /// `metrics` import (`cloud_api_errors`); doubles may ignore it.
    fn count_api_error(&self, _action: &str, _code: &str) {}
}

// The contract's HTTP records, to and from: the guest sends through them, and `plan` hands
// requests to the host as they would be sent.

impl From<HttpRequest> for vk_provider_sdk::http::Request {
    fn from(r: HttpRequest) -> Self {
        vk_provider_sdk::http::Request {
            method: r.method,
            url: r.url,
            headers: r.headers.into_iter().map(|(k, v)| vk_provider_sdk::kv(k, v)).collect(),
            body: r.body,
            timeout_ms: r.timeout_ms,
        }
    }
}

impl From<vk_provider_sdk::http::Response> for HttpResponse {
    fn from(r: vk_provider_sdk::http::Response) -> Self {
        HttpResponse {
            status: r.status,
            headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            body: r.body,
        }
    }
}

impl From<vk_provider_sdk::http::HttpError> for HttpError {
    fn from(e: vk_provider_sdk::http::HttpError) -> Self {
        use vk_provider_sdk::http::HttpError as E;
        match e {
            E::Denied(url) => HttpError::Denied(url),
            E::Timeout => HttpError::Timeout,
            E::Transport(why) => HttpError::Transport(why),
            E::InvalidRequest(why) => HttpError::InvalidRequest(why),
        }
    }
}
