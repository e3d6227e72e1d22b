//! The cloud API client: signed form POSTs to one endpoint, the `{Action}Response` envelope, a few
//! immediate retries (the guest cannot sleep; longer backoff is the host's, through `transient`),
//! and the mapping of RetCodes onto the contract's errors.

pub mod form;
pub mod signature;
pub mod transport;

use serde_json::Value;
use thiserror::Error;

pub use form::Params;
pub use transport::{HttpError, HttpRequest, HttpResponse, Transport};

use crate::error::{InvalidInput, ProviderError};

/// Attempts per call, all immediate.
pub const ATTEMPTS: usize = 3;
/// Per-request timeout the host enforces for us.
pub const TIMEOUT_MS: u32 = 15_000;
const USER_AGENT: &str = concat!("vkcube-cube-provider/", env!("CARGO_PKG_VERSION"));

/// RetCodes that mean "no quota or balance".
const QUOTA: &[i64] = &[4018, 4207, 8203, 17003];
/// RetCodes that mean "no such object".
const NOT_FOUND: &[i64] = &[4001, 4210, 8202, 17001];
/// RetCodes that mean "the request is wrong".
const REJECTED: &[i64] = &[215, 230, 8201];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    #[error("{action}: {error}")]
    Http { action: String, error: HttpError },
    #[error("{action}: HTTP {status}: {body}")]
    Status { action: String, status: u16, body: String },
    #[error("{action} answered RetCode {code}: {message}")]
    RetCode { action: String, code: i64, message: String },
    #[error("{action}: unreadable answer: {message}")]
    Decode { action: String, message: String },
}

/// Whether a failed request may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Reads, deletes, binds: repeating does no harm.
    Safe,
    /// Creates: repeated only when the service certainly did not act (throttled, unavailable).
    OnlyIfNotActed,
}

impl ApiError {
    /// The `code` label of the `cloud_api_errors` counter.
    pub fn metric_code(&self) -> String {
        match self {
            ApiError::Http { error: HttpError::Denied(_), .. } => "denied".into(),
            ApiError::Http { .. } => "unreachable".into(),
            ApiError::Status { status, .. } => format!("http_{status}"),
            ApiError::RetCode { code, .. } => code.to_string(),
            ApiError::Decode { .. } => "undecodable".into(),
        }
    }

    /// The service certainly did not act on the request (throttled, unavailable).
    fn not_acted(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => matches!(status, 429 | 503),
            ApiError::RetCode { code, .. } => matches!(code, 150 | 153),
            _ => false,
        }
    }

    /// Worth another immediate try on a safe request.
    fn retryable(&self) -> bool {
        match self {
            ApiError::Http { error, .. } => matches!(error, HttpError::Timeout | HttpError::Transport(_)),
            ApiError::Status { status, .. } => matches!(status, 429 | 502 | 503 | 504),
            ApiError::RetCode { code, .. } => matches!(code, 110 | 150 | 153) || (*code >= 2000 && !self.definitive()),
            ApiError::Decode { .. } => false,
        }
    }

    /// A RetCode whose answer will not change by asking again.
    fn definitive(&self) -> bool {
        matches!(self, ApiError::RetCode { code, .. } if QUOTA.contains(code) || NOT_FOUND.contains(code) || REJECTED.contains(code) || (4000..=4221).contains(code))
    }

    /// The answer was lost: the service may or may not have acted (timeout, broken connection,
    /// gateway error). A create must be looked up before it is repeated.
    pub fn answer_lost(&self) -> bool {
        match self {
            ApiError::Http { error, .. } => matches!(error, HttpError::Timeout | HttpError::Transport(_)),
            ApiError::Status { status, .. } => matches!(status, 500 | 502 | 504),
            ApiError::RetCode { code, .. } => *code == 110 || (*code >= 2000 && !self.definitive()),
            ApiError::Decode { .. } => true,
        }
    }

    /// No such object. Product RetCodes (≥ 2000) are recognised by code or message; gateway codes
    /// below 2000 never mean that (161 "Action not found" is our bug, not a missing instance).
    pub fn is_not_found(&self) -> bool {
        let ApiError::RetCode { code, message, .. } = self else { return false };
        let lower = message.to_ascii_lowercase();
        NOT_FOUND.contains(code) || (*code >= 2000 && (lower.contains("not found") || lower.contains("not exist")))
    }
}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> Self {
        let text = e.to_string();
        match &e {
            ApiError::Http { error: HttpError::Denied(_) | HttpError::InvalidRequest(_), .. } => {
                ProviderError::Internal(text)
            }
            ApiError::Http { .. } => ProviderError::Transient(text),
            ApiError::Status { status, .. } if *status == 429 || *status >= 500 => ProviderError::Transient(text),
            ApiError::Status { .. } => ProviderError::Internal(text),
            ApiError::RetCode { code, message, action } => {
                let lower = message.to_ascii_lowercase();
                if QUOTA.contains(code) || lower.contains("quota") || lower.contains("balance") {
                    ProviderError::QuotaExceeded(text)
                } else if e.is_not_found() {
                    ProviderError::NotFound(text)
                } else if REJECTED.contains(code) {
                    ProviderError::Invalid(InvalidInput::new(
                        "CubeRejected",
                        action.clone(),
                        format!("Cube refused the request: {message} (RetCode {code})"),
                    ))
                } else if e.retryable() {
                    ProviderError::Transient(text)
                } else {
                    ProviderError::Internal(text)
                }
            }
            ApiError::Decode { .. } => ProviderError::Internal(text),
        }
    }
}

/// A signed client for one account and endpoint.
pub struct Client<'t, T: Transport + ?Sized> {
    transport: &'t T,
    api_url: String,
    public_key: String,
    private_key: String,
}

impl<'t, T: Transport + ?Sized> Client<'t, T> {
    pub fn new(transport: &'t T, api_url: &str, public_key: &str, private_key: &str) -> Self {
        Client {
            transport,
            api_url: api_url.trim_end_matches('/').to_string(),
            public_key: public_key.to_string(),
            private_key: private_key.to_string(),
        }
    }

    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// Calls an action whose repetition does no harm; retried immediately when worth it.
    pub fn call(&self, action: &str, params: &Params) -> Result<Value, ApiError> {
        self.call_with(action, params, Repeat::Safe)
    }

    /// Calls a creating action: never repeated after an answer was lost.
    pub fn create(&self, action: &str, params: &Params) -> Result<Value, ApiError> {
        self.call_with(action, params, Repeat::OnlyIfNotActed)
    }

    pub fn call_with(&self, action: &str, params: &Params, repeat: Repeat) -> Result<Value, ApiError> {
        let request = self.request(action, params);
        let mut last = None;
        for _ in 0..ATTEMPTS {
            match self.once(action, request.clone()) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let again = match repeat {
                        Repeat::Safe => e.retryable(),
                        Repeat::OnlyIfNotActed => e.not_acted(),
                    };
                    if !again {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The signed HTTP request for an action.
    pub fn request(&self, action: &str, params: &Params) -> HttpRequest {
        let mut p = params.clone().set("Action", action).set("PublicKey", &self.public_key);
        let sig = signature::sign(&p, &self.private_key);
        p = p.set("Signature", sig);
        HttpRequest {
            method: "POST".into(),
            url: format!("{}/?Action={}", self.api_url, form::urlencode(action)),
            headers: vec![
                ("Content-Type".into(), "application/x-www-form-urlencoded".into()),
                ("User-Agent".into(), USER_AGENT.into()),
            ],
            body: p.encode().into_bytes(),
            timeout_ms: TIMEOUT_MS,
        }
    }

    fn once(&self, action: &str, request: HttpRequest) -> Result<Value, ApiError> {
        let result = self.exchange(action, request);
        if let Err(e) = &result {
            self.transport.count_api_error(action, &e.metric_code());
        }
        result
    }

    fn exchange(&self, action: &str, request: HttpRequest) -> Result<Value, ApiError> {
        let response = self.transport.send(request).map_err(|error| ApiError::Http { action: action.into(), error })?;
        if !(200..300).contains(&response.status) {
            let body = String::from_utf8_lossy(&response.body).chars().take(300).collect();
            return Err(ApiError::Status { action: action.into(), status: response.status, body });
        }
        envelope(action, &response.body)
    }
}

/// Reads `{"Action": "...Response", "RetCode": 0, "Message": ..., ...}`; RetCode may be a string.
pub fn envelope(action: &str, body: &[u8]) -> Result<Value, ApiError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::Decode { action: action.into(), message: e.to_string() })?;
    let code = match v.get("RetCode") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| ApiError::Decode { action: action.into(), message: "no RetCode in the answer".into() })?;
    if code != 0 {
        let message = v.get("Message").and_then(Value::as_str).unwrap_or_default().to_string();
        return Err(ApiError::RetCode { action: action.into(), code, message });
    }
    Ok(v)
}
