//! The `http` import: outgoing requests the host performs for a plugin, only to the URL prefixes
//! the operator granted it. The same allowlist vets the stream targets a plugin hands back.

use std::time::Duration;

use reqwest::Url;

use crate::plugin::v0_2_0::{HttpError, HttpRequest, HttpResponse, KeyValue};

/// Bodies larger than this (or than the guest's memory cap, which could not hold them anyway) are
/// cut off with a transport error rather than exhausting the host.
const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Request headers a plugin may not set. `Host` (and its proxy spellings) would let a request to
/// a granted address reach another virtual host behind it, outside the allowlist; the
/// connection-level ones are the client's to manage (framing, upgrades, proxies), and a plugin
/// setting them could smuggle a second request or change how the connection is used.
const REFUSED_HEADERS: &[&str] = &[
    "host",
    "forwarded",
    "x-real-ip",
    "x-original-url",
    "x-rewrite-url",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "expect",
    "http2-settings",
];

/// Header name prefixes a plugin may not use: proxy routing (`X-Forwarded-Host` and kin) and
/// the WebSocket handshake (the host's client writes those for exec and attach).
const REFUSED_PREFIXES: &[&str] = &["x-forwarded-", "sec-websocket-"];

/// Whether a plugin may not set header `name`: one of [`REFUSED_HEADERS`] or [`REFUSED_PREFIXES`].
pub fn refused_header(name: &str) -> bool {
    let name = name.trim();
    REFUSED_HEADERS.iter().any(|r| name.eq_ignore_ascii_case(r))
        || REFUSED_PREFIXES.iter().any(|p| name.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)))
}

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
            let path = decoded_path(url.path()).ok_or_else(|| {
                format!("allowed_urls entry {entry:?}: the path must not hold encoded '/', '\\', '%' or dot segments")
            })?;
            prefixes.push(Prefix {
                scheme: scheme.to_owned(),
                host: host.to_owned(),
                port: url.port_or_known_default().unwrap_or(0),
                path,
            });
        }
        Ok(Allowlist { prefixes })
    }

    /// Whether `url` (already parsed, so literal `..` segments are resolved) is granted. The path
    /// is compared percent-decoded; one a server could decode into another path (an encoded `/`,
    /// `\` or `%`, a dot segment left after parsing, `..;`) is never granted.
    pub fn allows(&self, url: &Url) -> bool {
        let Some(scheme) = http_scheme(url.scheme()) else { return false };
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else { return false };
        let Some(path) = decoded_path(url.path()) else { return false };
        self.prefixes
            .iter()
            .any(|p| p.scheme == scheme && p.host == host && p.port == port && path_under(&path, &p.path))
    }

    #[cfg(test)]
    pub fn allows_str(&self, url: &str) -> bool {
        Url::parse(url).is_ok_and(|u| self.allows(&u))
    }
}

/// The percent-decoded form of an already-parsed URL path, or `None` when decoding could change
/// which resource a server picks: an encoded `/`, `\` or `%` (decoded again by some servers), a
/// control byte, or a segment that is (or, cut at `;`, is) `.` or `..`, which `Url` left in place
/// because it was encoded or carried parameters.
fn decoded_path(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            let (hi, lo) = (hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?);
            let decoded = (hi * 16 + lo) as u8;
            if matches!(decoded, b'/' | b'\\' | b'%') {
                return None;
            }
            out.push(decoded);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out.iter().any(|b| b.is_ascii_control() || *b == b'\\') {
        return None;
    }
    let path = String::from_utf8(out).ok()?;
    let dot_segment = |segment: &str| matches!(segment.split(';').next(), Some("." | ".."));
    if path.split('/').any(dot_segment) {
        return None;
    }
    Some(path)
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
    /// The largest response body handed to the guest.
    pub max_body: usize,
}

/// Why the host refused or failed a request, before it is folded into the WIT `http-error`.
pub enum Refusal {
    Denied(String),
    Other(HttpError),
}

impl Egress {
    /// `guest_memory` is the guest's memory cap: a body larger than that could not be handed over.
    pub fn new(allow: Allowlist, ceiling: Duration, guest_memory: usize) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // No ambient proxy from the environment: the allowlist names where bytes go.
            .no_proxy()
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        Ok(Egress { allow, client, ceiling, max_body: MAX_RESPONSE_BYTES.min(guest_memory) })
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
        // CONNECT turns the connection into a tunnel to wherever the plugin names, past the
        // allowlist; TRACE echoes the request (headers included) back.
        if ["CONNECT", "TRACE"].iter().any(|m| method.as_str().eq_ignore_ascii_case(m)) {
            return Err(Refusal::Other(HttpError::InvalidRequest(format!(
                "method {method} is not available to plugins"
            ))));
        }
        let timeout = match req.timeout_ms {
            0 => self.ceiling,
            ms => Duration::from_millis(u64::from(ms)).min(self.ceiling),
        };
        if let Some(KeyValue { key, .. }) = req.headers.iter().find(|h| refused_header(&h.key)) {
            return Err(Refusal::Other(HttpError::InvalidRequest(format!(
                "header {key:?} is set by the host, not the plugin (refused: {}, {}*)",
                REFUSED_HEADERS.join(", "),
                REFUSED_PREFIXES.join("*, ")
            ))));
        }
        let mut builder = self.client.request(method, url).body(req.body);
        for KeyValue { key, value } in req.headers {
            builder = builder.header(key, value);
        }
        let max_body = self.max_body;
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
            let too_big = || -> Result<Result<HttpResponse, HttpError>, reqwest::Error> {
                Ok(Err(HttpError::Transport(format!("response body over {max_body} bytes"))))
            };
            // A declared length over the limit is refused before reading a byte.
            if resp.content_length().is_some_and(|n| n > max_body as u64) {
                return too_big();
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await? {
                if body.len() + chunk.len() > max_body {
                    return too_big();
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

/// An error and its causes, as one line (reqwest's own message hides the cause).
pub fn error_chain(e: &dyn std::error::Error) -> String {
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
    use proptest::strategy::Strategy;

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

    #[test]
    fn refuses_paths_a_server_could_decode_out_of_the_prefix() {
        let a = list(&["https://api.example.com/v1/"]);
        for hostile in [
            "https://api.example.com/v1/..%2Fadmin",
            "https://api.example.com/v1/..%2fadmin",
            "https://api.example.com/v1/%2e%2e%2fadmin",
            "https://api.example.com/v1/.%2e/admin",
            "https://api.example.com/v1/..;/admin",
            "https://api.example.com/v1/.;/x",
            "https://api.example.com/v1/..%5Cadmin",
            "https://api.example.com/v1/..\\admin",
            "https://api.example.com/v1/%252e%252e%252fadmin",
            "https://api.example.com/v1/x%00",
            "https://api.example.com/v1/x%zz",
        ] {
            assert!(!a.allows_str(hostile), "{hostile} was granted");
        }
        assert!(a.allows_str("https://api.example.com/v1/a%20b/c"));
        assert!(a.allows_str("https://api.example.com/v1/file.v2.json"));
        // The same resource spelled with encoded letters is the same grant.
        assert!(a.allows_str("https://api.example.com/%76%31/x"));
        assert!(Allowlist::parse(&["https://api.example.com/v1%2F".into()]).is_err());
    }

    /// What a lenient server makes of a path: decodes until nothing changes, takes `\` for `/`,
    /// drops `;` parameters and resolves dot segments.
    fn as_a_lenient_server_sees_it(path: &str) -> String {
        let mut p = path.to_owned();
        loop {
            let mut out = Vec::new();
            let b = p.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
                match (b[i], hex(b.get(i + 1)), hex(b.get(i + 2))) {
                    (b'%', Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                    }
                    (c, _, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            let next = String::from_utf8_lossy(&out).replace('\\', "/");
            if next == p {
                break;
            }
            p = next;
        }
        let mut segments: Vec<&str> = Vec::new();
        for segment in p.split('/') {
            match segment.split(';').next().unwrap_or("") {
                "." => {}
                ".." => {
                    segments.pop();
                }
                _ => segments.push(segment),
            }
        }
        segments.join("/")
    }

    /// Pieces of paths that servers decode, normalise or split on.
    const TRICKY: &[&str] = &["..", ".", "/", "%2e", "%2f", "%25", "%5c", "\\", ";", "%3b", "admin", "%2E%2E"];

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        #[test]
        fn a_granted_url_stays_under_its_prefix_however_the_server_decodes_it(
            tail in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::sample::select(TRICKY).prop_map(String::from),
                    "[a-z%0-9.;/]{0,3}",
                ],
                0..12,
            )
        ) {
            let a = list(&["https://api.example.com/v1/"]);
            let url = format!("https://api.example.com/v1/{}", tail.concat());
            if let Ok(parsed) = Url::parse(&url) && a.allows(&parsed) {
                let seen = as_a_lenient_server_sees_it(parsed.path());
                proptest::prop_assert!(seen.starts_with("/v1/") || seen == "/v1", "{url} granted, server sees {seen}");
            }
        }
    }

    mod exchange {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};

        use axum::Router;
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::IntoResponse;
        use axum::routing::get;

        use super::*;

        /// A server with `/v1/redirect` (to `/admin`), `/v1/host` (echoes Host), `/v1/huge`
        /// (a 5 MiB body) and `/admin`, counting requests to `/admin`.
        async fn server() -> (String, Arc<AtomicUsize>) {
            let admin_hits = Arc::new(AtomicUsize::new(0));
            let hits = admin_hits.clone();
            let app = Router::new()
                .route("/v1/redirect", get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/admin")]) }))
                .route(
                    "/v1/host",
                    get(|h: HeaderMap| async move { h.get(header::HOST).unwrap().to_str().unwrap().to_owned() }),
                )
                .route("/v1/huge", get(|| async { vec![b'x'; 5 << 20].into_response() }))
                .route(
                    "/admin",
                    get(move || {
                        hits.fetch_add(1, Ordering::SeqCst);
                        async { "admin" }
                    }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move { axum::serve(listener, app).await });
            (base, admin_hits)
        }

        fn get_req(url: String, headers: &[(&str, &str)]) -> HttpRequest {
            HttpRequest {
                method: "GET".into(),
                url,
                headers: headers.iter().map(|(k, v)| KeyValue { key: k.to_string(), value: v.to_string() }).collect(),
                body: vec![],
                timeout_ms: 0,
            }
        }

        fn egress(base: &str, guest_memory: usize) -> Egress {
            Egress::new(list(&[&format!("{base}/v1/")]), Duration::from_secs(5), guest_memory).unwrap()
        }

        #[tokio::test]
        async fn host_and_connection_headers_from_the_plugin_are_refused() {
            let (base, _) = server().await;
            let e = egress(&base, 64 << 20);
            for (name, value) in [
                ("Host", "internal.example.com"),
                ("host", "x"),
                (" Host", "x"),
                ("X-Forwarded-Host", "x"),
                ("x-forwarded-prefix", "/admin"),
                ("Transfer-Encoding", "chunked"),
                ("Content-Length", "0"),
                ("Connection", "upgrade"),
                ("Upgrade", "websocket"),
                ("Sec-WebSocket-Key", "x"),
            ] {
                match e.send(get_req(format!("{base}/v1/host"), &[(name, value)])).await {
                    Err(Refusal::Other(HttpError::InvalidRequest(why))) => {
                        assert!(why.contains("set by the host"), "{why}")
                    }
                    Ok(resp) => {
                        panic!("{name} was forwarded; server saw Host {:?}", String::from_utf8_lossy(&resp.body))
                    }
                    Err(_) => panic!("{name}: refused for another reason"),
                }
            }
            let Ok(resp) = e.send(get_req(format!("{base}/v1/host"), &[("x-request-id", "1")])).await else {
                panic!("an ordinary header was refused")
            };
            assert_eq!(resp.body, base.trim_start_matches("http://").as_bytes());
        }

        #[tokio::test]
        async fn tunnelling_and_echoing_methods_are_refused() {
            let (base, _) = server().await;
            for method in ["CONNECT", "TRACE", "connect"] {
                let mut req = get_req(format!("{base}/v1/host"), &[]);
                req.method = method.into();
                match egress(&base, 64 << 20).send(req).await {
                    Err(Refusal::Other(HttpError::InvalidRequest(why))) if why.contains("not available") => {}
                    Ok(resp) => panic!("{method} was sent: {}", resp.status),
                    Err(_) => panic!("{method}: refused for another reason"),
                }
            }
        }

        #[tokio::test]
        async fn redirects_are_handed_to_the_guest_not_followed() {
            let (base, admin_hits) = server().await;
            let Ok(resp) = egress(&base, 64 << 20).send(get_req(format!("{base}/v1/redirect"), &[])).await else {
                panic!("redirect response refused")
            };
            assert_eq!(resp.status, 302);
            assert_eq!(admin_hits.load(Ordering::SeqCst), 0, "the host followed the redirect out of the allowlist");
        }

        #[tokio::test]
        async fn a_body_larger_than_the_guest_memory_is_cut_off() {
            let (base, _) = server().await;
            match egress(&base, 1 << 20).send(get_req(format!("{base}/v1/huge"), &[])).await {
                Err(Refusal::Other(HttpError::Transport(why))) => assert!(why.contains("over 1048576 bytes"), "{why}"),
                Ok(resp) => panic!("{} bytes handed over", resp.body.len()),
                Err(_) => panic!("refused for another reason"),
            }
            let Ok(resp) = egress(&base, 64 << 20).send(get_req(format!("{base}/v1/huge"), &[])).await else {
                panic!("a body under the limit was refused")
            };
            assert_eq!(resp.body.len(), 5 << 20);
        }
    }
}
