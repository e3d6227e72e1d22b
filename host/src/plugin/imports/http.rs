//! The `http` import: outgoing requests the host performs for a plugin, only to the URL prefixes
//! the operator granted it. The same allowlist vets the stream targets a plugin hands back.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use super::budget::Budget;
use crate::error_chain;
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

/// One granted `tcp://` range: the addresses of a network (a single address is a /32 or /128),
/// on one port or on every port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpGrant {
    network: IpAddr,
    prefix_len: u8,
    port: Option<u16>,
}

impl TcpGrant {
    /// Parses `tcp://ADDRESS[/LEN][:PORT]` (IPv6 in brackets: `tcp://[fd00::]/8:80`). Only IP
    /// literals: a name would grant wherever DNS points it at connection time.
    fn parse(entry: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "allowed_urls entry {entry:?}: {why}; a tcp entry is tcp://ADDRESS, tcp://ADDRESS:PORT, \
                 tcp://NETWORK/LEN or tcp://NETWORK/LEN:PORT with IP addresses (IPv6 in brackets)"
            )
        };
        let rest = entry.strip_prefix("tcp://").ok_or_else(|| bad("not a tcp:// entry"))?;
        let (address, rest) = match rest.strip_prefix('[') {
            Some(v6) => v6.split_once(']').ok_or_else(|| bad("an unclosed '['"))?,
            None => rest.split_at(rest.find(['/', ':']).unwrap_or(rest.len())),
        };
        let address: IpAddr = address.parse().map_err(|_| bad("the host is not an IP address"))?;
        let (len, port) = match rest.split_once(':') {
            Some((len, port)) => (len, Some(port)),
            None => (rest, None),
        };
        let max = if address.is_ipv4() { 32 } else { 128 };
        // Digits only: Rust's integer parsing would also take a sign.
        fn number(s: &str) -> Option<&str> {
            (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then_some(s)
        }
        let prefix_len = match len {
            "" => max,
            len => len
                .strip_prefix('/')
                .and_then(number)
                .and_then(|l| l.parse::<u8>().ok())
                .filter(|l| *l <= max)
                .ok_or_else(|| bad("the network length is not /0 to /32 (IPv4) or /128 (IPv6)"))?,
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                number(p)
                    .and_then(|p| p.parse::<u16>().ok())
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("the port is not 1 to 65535"))?,
            ),
        };
        let network = mask(address, prefix_len);
        if network != address {
            return Err(bad(&format!("{address} has host bits set past /{prefix_len} (the network is {network})")));
        }
        Ok(TcpGrant { network, prefix_len, port })
    }

    fn covers(&self, ip: IpAddr, port: u16) -> bool {
        self.network.is_ipv4() == ip.is_ipv4()
            && mask(ip, self.prefix_len) == self.network
            && self.port.is_none_or(|p| p == port)
    }
}

/// `ip` with every bit past the first `len` cleared.
fn mask(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4) & u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(bits.into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(bits.into())
        }
    }
}

/// The address and port of a `tcp://IP:PORT` URL, nothing more in it; `None` for anything else,
/// names included (never resolved). An IPv4 address written as IPv6 (`::ffff:a.b.c.d`) is the
/// IPv4 address, so an IPv6 grant does not cover IPv4 by the back door.
fn tcp_target(url: &Url) -> Option<(IpAddr, u16)> {
    if url.scheme() != "tcp"
        || !url.username().is_empty()
        || url.password().is_some()
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return None;
    }
    let host = url.host_str()?;
    let ip = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse::<IpAddr>().ok()?;
    let ip = ip.to_canonical();
    let port = url.port().filter(|p| *p > 0)?;
    // "Any address" would connect to the host itself; multicast and broadcast are never a pod.
    let unroutable = ip.is_unspecified() || ip.is_multicast() || matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    (!unroutable).then_some((ip, port))
}

/// The URL prefixes and TCP ranges one plugin may reach.
#[derive(Debug, Clone, Default)]
pub struct Allowlist {
    prefixes: Vec<Prefix>,
    /// `tcp://` entries: where port-forward targets may connect.
    tcp: Vec<TcpGrant>,
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
    /// Parses the operator's prefixes; an entry that is not an absolute http(s)/ws(s) URL or a
    /// `tcp://` range ([`TcpGrant::parse`]) is refused so a typo does not silently deny (or
    /// grant) more than meant.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        let mut tcp = Vec::new();
        for entry in entries {
            if entry.get(..6).is_some_and(|s| s.eq_ignore_ascii_case("tcp://")) {
                tcp.push(TcpGrant::parse(&format!("tcp://{}", &entry[6..]))?);
                continue;
            }
            let url = Url::parse(entry).map_err(|e| format!("allowed_urls entry {entry:?}: {e}"))?;
            // `wss://host/` and `https://host/` name the same endpoint (a WebSocket is an HTTP
            // upgrade), so either spelling grants both.
            let scheme = http_scheme(url.scheme()).ok_or_else(|| {
                format!("allowed_urls entry {entry:?}: only http://, https://, ws://, wss:// and tcp:// are accepted")
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
        Ok(Allowlist { prefixes, tcp })
    }

    /// Whether `url` (already parsed, so literal `..` segments are resolved) is granted. The path
    /// is compared percent-decoded; one a server could decode into another path (an encoded `/`,
    /// `\` or `%`, a dot segment left after parsing, `..;`) is never granted.
    /// A `tcp://IP:PORT` URL (a port-forward target) is granted by a `tcp://` entry covering it.
    pub fn allows(&self, url: &Url) -> bool {
        if url.scheme() == "tcp" {
            return tcp_target(url).is_some_and(|(ip, port)| self.tcp.iter().any(|g| g.covers(ip, port)));
        }
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
    /// The plugin's cloud-API budget, shared by its versions; `None`: unlimited.
    pub budget: Option<Arc<Budget>>,
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
        Ok(Egress { allow, client, ceiling, max_body: MAX_RESPONSE_BYTES.min(guest_memory), budget: None })
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
        // A request waits its turn within its own timeout; one whose turn would come later fails
        // now as the timeout it would have become, without spending a token.
        let timeout = match &self.budget {
            Some(budget) => match budget.take(timeout).await {
                Ok(waited) => timeout - waited,
                Err(_) => return Err(Refusal::Other(HttpError::Timeout)),
            },
            None => timeout,
        };
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
    fn tcp_entries_grant_addresses_inside_their_network_and_port_only() {
        let a = list(&["tcp://10.0.0.0/8", "tcp://192.168.1.7:80", "tcp://172.16.0.0/12:8080", "tcp://[fd00::]/8:80"]);
        assert!(a.allows_str("tcp://10.1.2.3:80"));
        assert!(a.allows_str("tcp://10.255.255.254:65535"));
        assert!(a.allows_str("tcp://192.168.1.7:80"));
        assert!(a.allows_str("tcp://172.31.0.1:8080"));
        assert!(a.allows_str("tcp://[fd12::1]:80"));
        // Outside the network, or on another port.
        assert!(!a.allows_str("tcp://11.0.0.1:80"));
        assert!(!a.allows_str("tcp://192.168.1.8:80"));
        assert!(!a.allows_str("tcp://192.168.1.7:81"));
        assert!(!a.allows_str("tcp://172.32.0.1:8080"));
        assert!(!a.allows_str("tcp://172.16.0.1:80"));
        assert!(!a.allows_str("tcp://[fe80::1]:80"));
        assert!(!a.allows_str("tcp://[fd12::1]:81"));
        // An IPv4 address spelled as IPv6 is the IPv4 address.
        assert!(a.allows_str("tcp://[::ffff:10.1.2.3]:80"));
        assert!(!list(&["tcp://[::]/0"]).allows_str("tcp://[::ffff:10.1.2.3]:80"));
        // A tcp grant is not an http grant, nor the other way round.
        assert!(!a.allows_str("http://10.1.2.3:80/"));
        assert!(!list(&["http://10.1.2.3:80/"]).allows_str("tcp://10.1.2.3:80"));
    }

    #[test]
    fn tcp_targets_are_ip_literals_with_a_port_and_nothing_else() {
        let a = list(&["tcp://0.0.0.0/0", "tcp://[::]/0"]);
        assert!(a.allows_str("tcp://127.0.0.1:80"));
        for refused in [
            // Names are never resolved: DNS could point them anywhere.
            "tcp://localhost:80",
            "tcp://pod.internal:80",
            "tcp://010.0.0.1:80",
            "tcp://0x7f.0.0.1:80",
            // No port, port 0, or more than host and port.
            "tcp://10.0.0.1",
            "tcp://10.0.0.1:0",
            "tcp://10.0.0.1:80/x",
            "tcp://10.0.0.1:80?x=1",
            "tcp://u@10.0.0.1:80",
            // Addresses that are no pod's.
            "tcp://0.0.0.0:80",
            "tcp://[::]:80",
            "tcp://255.255.255.255:80",
            "tcp://224.0.0.1:80",
        ] {
            assert!(!a.allows_str(refused), "{refused} was granted");
        }
    }

    #[test]
    fn malformed_tcp_entries_are_refused_with_the_accepted_forms() {
        for bad in [
            "tcp://pods.example.com/8",
            "tcp://10.0.0.0/33",
            "tcp://10.0.0.1/8",
            "tcp://10.0.0.0/+8",
            "tcp://10.0.0.0/8:0",
            "tcp://10.0.0.0/8:+80",
            "tcp://10.0.0.0/8:99999",
            "tcp://10.0.0.0/8/",
            "tcp://[fd00::/8",
            "tcp://",
        ] {
            let err = Allowlist::parse(&[bad.to_string()]).expect_err(bad);
            assert!(err.contains("tcp://NETWORK/LEN:PORT"), "{bad}: {err}");
        }
        assert!(Allowlist::parse(&["TCP://10.0.0.0/8".into()]).unwrap().allows_str("tcp://10.0.0.1:1"));
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
        async fn a_request_whose_budget_turn_comes_after_its_timeout_fails_unsent() {
            let (base, _) = server().await;
            let settings = crate::plugin::BudgetSettings { requests_per_second: 1.0, burst: 1 };
            let e = Egress { budget: Some(Arc::new(Budget::new(&settings).unwrap())), ..egress(&base, 64 << 20) };
            assert!(e.send(get_req(format!("{base}/v1/host"), &[])).await.is_ok(), "the burst goes at once");
            let mut impatient = get_req(format!("{base}/v1/host"), &[]);
            impatient.timeout_ms = 200;
            assert!(matches!(e.send(impatient).await, Err(Refusal::Other(HttpError::Timeout))));
            // A patient one waits its turn and is sent.
            assert!(e.send(get_req(format!("{base}/v1/host"), &[])).await.is_ok());
            let stats = e.budget.as_ref().unwrap().stats();
            assert_eq!((stats.waited, stats.refused), (1, 1));
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
