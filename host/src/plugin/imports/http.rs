//! The `http` import: outgoing requests the host performs for a plugin, only to the URL prefixes
//! the operator granted it. The same allowlist vets the stream targets a plugin hands back.

use std::time::Duration;

use reqwest::Url;

use crate::plugin::since_v0_1_0::{HttpError, HttpRequest, HttpResponse, KeyValue};

/// Bodies larger than this are cut off with a transport error rather than exhausting the host.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// One granted prefix, parsed once. Matching compares parsed components, never raw strings, so
/// `https://api.example.com.evil.net/` or `https://api.example.com@evil.net/` cannot pass for
/// `https://api.example.com/`.
#[derive(Debug, Clone)]
struct Prefix {
    scheme: String,
    host: String,
    port: u16,
    path: String,
}

/// The URL prefixes one plugin may reach.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    prefixes: Vec<Prefix>,
}

/// WebSocket targets (exec, attach) are granted by the `http(s)` prefix of the same endpoint.
fn http_scheme(scheme: &str) -> Option<&'static str> {
    match scheme {
        "http" | "ws" => Some("http"),
        "https" | "wss" => Some("https"),
        _ => None,
    }
}

impl Allowlist {
    /// Parses the operator's prefixes; an entry that is not an absolute http(s)/ws(s) URL is refused so
    /// a typo does not silently deny (or grant) more than meant.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        for entry in entries {
            let url = Url::parse(entry).map_err(|e| format!("allowed_urls entry {entry:?}: {e}"))?;
            // `wss://host/` and `https://host/` name the same endpoint (a WebSocket is an HTTP
            // upgrade), so either spelling grants both.
            let scheme = http_scheme(url.scheme()).ok_or_else(|| {
                format!("allowed_urls entry {entry:?}: only http://, https://, ws:// and wss:// are accepted")
            })?;
            let host = url.host_str().ok_or_else(|| format!("allowed_urls entry {entry:?}: no host"))?;
            if !url.username().is_empty() || url.password().is_some() || url.query().is_some() {
                return Err(format!("allowed_urls entry {entry:?}: must not carry credentials or a query"));
            }
            prefixes.push(Prefix {
                scheme: scheme.to_owned(),
                host: host.to_owned(),
                port: url.port_or_known_default().unwrap_or(0),
                path: url.path().to_owned(),
            });
        }
        Ok(Allowlist { prefixes })
    }

    /// Whether `url` (already parsed and normalised, so `..` segments are resolved) is granted.
    pub fn allows(&self, url: &Url) -> bool {
        let Some(scheme) = http_scheme(url.scheme()) else { return false };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
        self.prefixes
            .iter()
            .any(|p| p.scheme == scheme && p.host == host && p.port == port && path_under(url.path(), &p.path))
    }

    pub fn allows_str(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| self.allows(&u))
    }
}

/// `path` equals `prefix` or lies below it on a segment boundary: `/v1` covers `/v1/x` but not
/// `/v10`.
fn path_under(path: &str, prefix: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return true;
    }
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path == prefix || path.strip_prefix(prefix).is_some_and(|rest| rest.starts_with('/'))
}

/// What a plugin may send and how: its allowlist, a client that never follows redirects (a
/// redirect could leave the allowlist; the guest sees the 3xx and may follow it itself, vetted
/// again), and the ceiling on each exchange.
#[derive(Clone)]
pub struct Egress {
    pub allow: Allowlist,
    pub client: reqwest::Client,
    pub ceiling: Duration,
}

/// Why the host refused or failed a request, before it is folded into the WIT `http-error`.
pub enum Refusal {
    Denied(String),
    Other(HttpError),
}

impl Egress {
    pub fn new(allow: Allowlist, ceiling: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Egress { allow, client, ceiling })
    }

    /// Performs `req` if the allowlist grants it.
    pub async fn send(&self, req: HttpRequest) -> Result<HttpResponse, Refusal> {
        let url = Url::parse(&req.url)
            .map_err(|e| Refusal::Other(HttpError::InvalidRequest(format!("url {:?}: {e}", req.url))))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Refusal::Other(HttpError::InvalidRequest(format!(
                "url {:?}: only http:// and https:// can be sent",
                req.url
            ))));
        }
        if !self.allow.allows(&url) {
            return Err(Refusal::Denied(req.url));
        }
        let method = reqwest::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| Refusal::Other(HttpError::InvalidRequest(format!("method {:?}", req.method))))?;
        let timeout = match req.timeout_ms {
            0 => self.ceiling,
            ms => Duration::from_millis(u64::from(ms)).min(self.ceiling),
        };
        let mut builder = self.client.request(method, url).body(req.body);
        for KeyValue { key, value } in req.headers {
            builder = builder.header(key, value);
        }
        let exchange = async {
            let resp = builder.send().await?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.as_str().to_owned(),
                    value: String::from_utf8_lossy(v.as_bytes()).into_owned(),
                })
                .collect();
            let mut resp = resp;
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Ok(Err(HttpError::Transport(format!("response body over {MAX_RESPONSE_BYTES} bytes"))));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Ok(HttpResponse { status, headers, body }))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Err(Refusal::Other(HttpError::Timeout)),
            Ok(Err(e)) if e.is_timeout() => Err(Refusal::Other(HttpError::Timeout)),
            Ok(Err(e)) if e.is_builder() => Err(Refusal::Other(HttpError::InvalidRequest(error_chain(&e)))),
            Ok(Err(e)) => Err(Refusal::Other(HttpError::Transport(error_chain(&e)))),
            Ok(Ok(Err(e))) => Err(Refusal::Other(e)),
            Ok(Ok(Ok(resp))) => Ok(resp),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        Allowlist::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn grants_urls_under_a_prefix_on_segment_boundaries() {
        let a = list(&["https://api.example.com/v1", "http://127.0.0.1:8080/"]);
        assert!(a.allows_str("https://api.example.com/v1"));
        assert!(a.allows_str("https://api.example.com/v1/instances?x=1"));
        assert!(a.allows_str("https://API.example.com:443/v1/x"));
        assert!(a.allows_str("http://127.0.0.1:8080/anything"));
        assert!(a.allows_str("wss://api.example.com/v1/exec"));
        assert!(!a.allows_str("https://api.example.com/v10"));
        assert!(!a.allows_str("https://api.example.com/v2"));
        assert!(!a.allows_str("http://api.example.com/v1"));
        assert!(!a.allows_str("http://127.0.0.1:8081/"));
        assert!(!a.allows_str("http://127.0.0.1/"));
    }

    #[test]
    fn refuses_lookalike_hosts_credentials_and_dot_segments() {
        let a = list(&["https://api.example.com/v1/"]);
        assert!(!a.allows_str("https://api.example.com.evil.net/v1/"));
        assert!(!a.allows_str("https://api.example.com@evil.net/v1/"));
        assert!(!a.allows_str("https://user:pw@api.example.com/v1/"));
        assert!(!a.allows_str("https://api.example.com/v1/../admin"));
        assert!(!a.allows_str("https://api.example.com/v1/%2e%2e/admin"));
        assert!(!a.allows_str("file:///etc/passwd"));
        assert!(!a.allows_str("not a url"));
    }

    #[test]
    fn a_websocket_entry_grants_the_same_endpoint() {
        let a = list(&["wss://api.example.com/"]);
        assert!(a.allows_str("wss://api.example.com/exec"));
        assert!(a.allows_str("https://api.example.com/logs"));
        assert!(!a.allows_str("http://api.example.com/logs"));
    }

    #[test]
    fn refuses_malformed_allowlist_entries() {
        assert!(Allowlist::parse(&["ftp://x/".into()]).is_err());
        assert!(Allowlist::parse(&["/relative".into()]).is_err());
        assert!(Allowlist::parse(&["https://u:p@x/".into()]).is_err());
    }

    #[test]
    fn an_empty_allowlist_grants_nothing() {
        assert!(!Allowlist::default().allows_str("https://example.com/"));
    }
}
