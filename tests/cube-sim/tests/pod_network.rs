//! Pod addresses from `network.pod_cidr`, and nginx containers answering on them while their
//! instance lives (`network.serve`), as port forwarding reaches them.

mod fixture;

use fixture::{Fixture, UHUB_IMAGE, config, decode_pod, pod_yaml, simple_pod};

fn pod_ip(answer: &serde_json::Value) -> String {
    decode_pod(&answer["Pod"])["status"]["podIp"].as_str().unwrap().to_string()
}

fn serving(pool: &str) -> cube_sim::Config {
    let mut cfg = config();
    cfg.network.pod_cidr = pool.into();
    cfg.network.serve = true;
    cfg
}

async fn get(url: &str) -> Result<String, reqwest::Error> {
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    client.get(url).send().await?.text().await
}

#[tokio::test]
async fn instances_get_distinct_addresses_from_the_configured_pool() {
    let mut cfg = config();
    cfg.network.pod_cidr = "172.20.0.0/16".into();
    let f = Fixture::with(cfg).await;
    let a = pod_ip(&f.create(&simple_pod("uid-a")).await);
    let b = pod_ip(&f.create(&simple_pod("uid-b")).await);
    assert_ne!(a, b);
    for ip in [&a, &b] {
        assert!(ip.starts_with("172.20."), "{ip}");
    }
    f.shutdown().await;
}

#[tokio::test]
async fn serving_needs_a_loopback_pool() {
    let mut cfg = config();
    cfg.network.serve = true;
    let err = cube_sim::Simulator::start(cfg).await.err().expect("a 10.23.0.0/16 pool cannot be served");
    assert!(err.to_string().contains("loopback"), "{err}");
}

#[tokio::test]
async fn an_nginx_container_answers_http_on_its_pod_address_until_the_instance_is_deleted() {
    let f = Fixture::with(serving("127.78.0.0/16")).await;
    let created = f.create(&simple_pod("uid-web")).await;
    let cube_id = created["CubeId"].as_str().unwrap().to_string();
    let ip = pod_ip(&created);
    assert!(ip.starts_with("127.78."), "{ip}");
    let page = get(&format!("http://{ip}/")).await.expect("nginx answers on port 80");
    assert!(page.contains("Welcome to nginx!"), "{page}");
    assert!(page.contains("Pod shop/web-uid-web"), "the page names the pod: {page}");
    assert!(page.contains(&cube_id), "{page}");

    // A container the simulator does not serve listens nowhere.
    let other = f.create(&pod_yaml("uid-redis", "uhub.service.ucloud.cn/library/redis:7", "1", "2Gi", &[])).await;
    assert!(get(&format!("http://{}/", pod_ip(&other))).await.is_err());

    f.ok("DeleteCubePod", &[("CubeId", &cube_id)]).await;
    assert!(get(&format!("http://{ip}/")).await.is_err(), "a deleted instance's port still answers");
    f.shutdown().await;
}

#[tokio::test]
async fn two_simulators_on_one_pool_never_share_an_address() {
    let a = Fixture::with(serving("127.79.0.0/16")).await;
    let b = Fixture::with(serving("127.79.0.0/16")).await;
    let ip_a = pod_ip(&a.create(&pod_yaml("uid-1", UHUB_IMAGE, "1", "2Gi", &[])).await);
    let ip_b = pod_ip(&b.create(&pod_yaml("uid-1", UHUB_IMAGE, "1", "2Gi", &[])).await);
    assert_ne!(ip_a, ip_b, "the second simulator skips the address the first one serves");
    for ip in [&ip_a, &ip_b] {
        assert!(get(&format!("http://{ip}/")).await.unwrap().contains("Welcome to nginx!"));
    }
    a.shutdown().await;
    b.shutdown().await;
}
