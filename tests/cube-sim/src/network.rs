//! Pod addresses and what answers on them. Each instance gets the next address of
//! `network.pod_cidr`; with `network.serve`, the containers of images the simulator knows listen
//! on that address from creation until deletion: `nginx` images answer HTTP on each
//! `containerPort` they declare (80 when none) with a page naming the pod. Other images serve
//! nothing, as a container with no server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::podspec::CubePod;
use crate::state::Instance;

/// An IPv4 network in CIDR form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub network: Ipv4Addr,
    pub len: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?} is not an IPv4 network from /8 to /24, like 10.23.0.0/16");
        let (ip, len) = s.split_once('/').ok_or_else(bad)?;
        let network: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().ok().filter(|l| (8..=24).contains(l)).ok_or_else(bad)?;
        if u32::from(network) & !(u32::MAX << (32 - len)) != 0 {
            return Err(bad());
        }
        Ok(Cidr { network, len })
    }
}

impl Cidr {
    /// The `n`th pod address (from 1): `.2` to `.251` of each /24 in turn, so a /16 gives the
    /// addresses the simulator always gave (10.23.0.3, …) and 62,500 of them before repeating.
    pub fn pod_ip(&self, n: u32) -> Ipv4Addr {
        let size = 1u32 << (32 - self.len);
        let host = (((n / 250) % 250) * 256 + n % 250 + 2) % size;
        Ipv4Addr::from(u32::from(self.network) + host)
    }
}

/// The ports a container serves, if its image is one the simulator serves.
pub fn served_ports(image: &str, doc_container: &serde_json::Value) -> Vec<u16> {
    let name = image.rsplit('/').next().unwrap_or(image);
    let name = name.split(['@', ':']).next().unwrap_or(name);
    if !name.starts_with("nginx") {
        return Vec::new();
    }
    let declared: Vec<u16> = doc_container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["protocol"].as_str().is_none_or(|proto| proto.eq_ignore_ascii_case("TCP")))
        .filter_map(|p| p["containerPort"].as_u64().and_then(|n| u16::try_from(n).ok()))
        .filter(|p| *p > 0)
        .collect();
    if declared.is_empty() { vec![80] } else { declared }
}

/// Listeners bound for one instance's served containers, not serving yet.
pub struct Bound(Vec<(String, SocketAddr, tokio::net::TcpListener)>);

/// Binds the ports `pod`'s served containers listen on at `ip`; fails if any is taken.
pub fn bind_pod(ip: IpAddr, pod: &CubePod) -> std::io::Result<Bound> {
    let doc = serde_json::to_value(&pod.doc).unwrap_or_default();
    let doc_containers = doc["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let mut bound = Vec::new();
    for c in &pod.spec.containers {
        let doc = doc_containers.iter().find(|d| d["name"].as_str() == Some(&c.name)).cloned().unwrap_or_default();
        for port in served_ports(&c.image, &doc) {
            let addr = SocketAddr::new(ip, port);
            bound.push((c.name.clone(), addr, bind(addr)?));
        }
    }
    Ok(Bound(bound))
}

/// The servers of live instances, by Cube id.
#[derive(Default)]
pub struct Servers {
    running: Mutex<HashMap<String, CancellationToken>>,
}

impl Servers {
    /// Serves `bound` for instance `inst` (replacing what it served before) until [`Servers::stop`]
    /// or `shutdown`. Needs a Tokio runtime.
    pub fn start(&self, inst: &Instance, bound: Bound, shutdown: &CancellationToken) {
        self.stop(&inst.cube_id);
        let token = shutdown.child_token();
        let namespace = inst.pod.metadata_str("namespace").unwrap_or_default();
        let pod = inst.pod.metadata_str("name").unwrap_or_else(|| inst.name.clone());
        for (container, addr, listener) in bound.0 {
            let page = page(&namespace, &pod, &container, &inst.cube_id, addr);
            let app = axum::Router::new().fallback(move || {
                let page = page.clone();
                async move {
                    (
                        [
                            (axum::http::header::CONTENT_TYPE, "text/html"),
                            (axum::http::header::SERVER, "nginx (cube-sim)"),
                        ],
                        page,
                    )
                }
            });
            let stop = token.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            });
            tracing::debug!(%addr, cube_id = %inst.cube_id, %container, "serving a container port");
        }
        self.running.lock().insert(inst.cube_id.clone(), token);
    }

    /// Stops serving `cube_id`'s ports: its listeners close at once.
    pub fn stop(&self, cube_id: &str) {
        if let Some(token) = self.running.lock().remove(cube_id) {
            token.cancel();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let std = std::net::TcpListener::bind(addr)?;
    std.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(std)
}

fn page(namespace: &str, pod: &str, container: &str, cube_id: &str, addr: SocketAddr) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><title>Welcome to nginx!</title></head>\n<body><h1>Welcome to nginx!</h1>\n\
         <p>Pod {namespace}/{pod}, container {container}, Cube instance {cube_id}, serving on {addr}.</p>\n</body></html>\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sixteen_bit_pool_gives_the_addresses_the_simulator_always_gave() {
        let cidr: Cidr = "10.23.0.0/16".parse().unwrap();
        for n in [1u32, 2, 249, 250, 251, 62_499] {
            let old: Ipv4Addr = format!("10.23.{}.{}", (n / 250) % 250, n % 250 + 2).parse().unwrap();
            assert_eq!(cidr.pod_ip(n), old, "n = {n}");
        }
        let loopback: Cidr = "127.77.0.0/16".parse().unwrap();
        assert_eq!(loopback.pod_ip(1), Ipv4Addr::new(127, 77, 0, 3));
        let small: Cidr = "192.168.7.0/24".parse().unwrap();
        assert!((1..300).all(|n| small.pod_ip(n).octets()[..3] == [192, 168, 7]));
    }

    #[test]
    fn networks_must_be_ipv4_with_clear_host_bits() {
        for bad in ["10.23.0.0", "10.23.0.1/16", "10.0.0.0/7", "10.0.0.0/25", "fd00::/64", "x/16"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn nginx_images_serve_their_container_ports_or_80() {
        let none = serde_json::Value::Null;
        assert_eq!(served_ports("uhub.service.ucloud.cn/library/nginx:1.27", &none), vec![80]);
        assert_eq!(served_ports("nginx", &none), vec![80]);
        assert_eq!(served_ports("harbor.internal:5000/web/nginx-unprivileged@sha256:ab", &none), vec![80]);
        let ports = serde_json::json!({"ports": [{"containerPort": 8080}, {"containerPort": 53, "protocol": "UDP"}]});
        assert_eq!(served_ports("nginx:1", &ports), vec![8080]);
        assert!(served_ports("uhub.service.ucloud.cn/library/redis:7", &none).is_empty());
        assert!(served_ports("harbor.internal:5000/nginx/app:1", &none).is_empty());
    }
}
