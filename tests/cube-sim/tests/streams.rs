//! Logs and exec: the simulator-defined stream contract the Cube plugin relies on.

mod fixture;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use fixture::{Fixture, UHUB_IMAGE, pod_yaml};

async fn log_token(f: &Fixture, uid: &str) -> String {
    f.ok("GetCubeToken", &[("Uid", uid), ("ContainerName", "app")]).await["Token"].as_str().unwrap().to_string()
}

async fn logs(f: &Fixture, query: &str) -> (u16, String) {
    let resp = f.http.get(format!("{}/cube-stream/logs?{query}", f.url())).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test]
async fn echo_containers_log_their_args() {
    let f = Fixture::start().await;
    f.create(&pod_yaml("uid-echo", UHUB_IMAGE, "1", "1Gi", &["sh", "-c", "echo hello world; sleep infinity"])).await;
    let t = log_token(&f, "uid-echo").await;
    assert_eq!(logs(&f, &format!("token={t}")).await, (200, "hello world\n".to_string()));
    let (_, stamped) = logs(&f, &format!("token={t}&timestamps=true")).await;
    let (ts, line) = stamped.trim_end().split_once(' ').unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(ts).is_ok(), "{ts}");
    assert_eq!(line, "hello world");
    f.shutdown().await;
}

#[tokio::test]
async fn servers_log_a_banner_then_a_line_per_second_and_honour_tail_and_limit() {
    let f = Fixture::start().await;
    f.create(&pod_yaml("uid-srv", UHUB_IMAGE, "1", "1Gi", &[])).await;
    let t = log_token(&f, "uid-srv").await;
    // Wait for the second tick itself: by then the banner is over a second old.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut all = String::new();
    while !all.contains("cube-sim: app tick 2") && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        all = logs(&f, &format!("token={t}")).await.1;
    }
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines[0], format!("cube-sim: container app started from image {UHUB_IMAGE}"));
    assert_eq!(lines[1], "cube-sim: environment keys: GREETING");
    assert_eq!(lines[2], "cube-sim: app tick 1");
    let (_, tail) = logs(&f, &format!("token={t}&tailLines=1")).await;
    assert_eq!(tail.lines().count(), 1);
    assert!(tail.starts_with("cube-sim: app tick"));
    let (_, limited) = logs(&f, &format!("token={t}&limitBytes=5")).await;
    assert_eq!(limited, "cube-");
    let (_, since) = logs(&f, &format!("token={t}&sinceSeconds=1")).await;
    assert!(!since.contains("started from image"));
    f.shutdown().await;
}

#[tokio::test]
async fn follow_streams_new_lines_until_the_client_leaves() {
    let f = Fixture::start().await;
    f.create(&pod_yaml("uid-follow", UHUB_IMAGE, "1", "1Gi", &[])).await;
    let t = log_token(&f, "uid-follow").await;
    let resp = f.http.get(format!("{}/cube-stream/logs?token={t}&follow=true", f.url())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !seen.contains("tick 2") && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(std::time::Duration::from_secs(3), body.next()).await {
            Ok(Some(Ok(chunk))) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("stream ended early: {other:?}; got {seen:?}"),
        }
    }
    assert!(seen.contains("cube-sim: app tick 1\n") && seen.contains("cube-sim: app tick 2\n"), "{seen}");
    drop(body);
    f.shutdown().await;
}

#[tokio::test]
async fn bad_tokens_get_401_and_waiting_containers_400() {
    let mut cfg = fixture::config();
    cfg.lifecycle.pending_ms = 60_000;
    let f = Fixture::with(cfg).await;
    assert_eq!(logs(&f, "token=nope").await.0, 401);
    f.create(&pod_yaml("uid-wait", UHUB_IMAGE, "1", "1Gi", &[])).await;
    let t = log_token(&f, "uid-wait").await;
    let (code, text) = logs(&f, &format!("token={t}")).await;
    assert_eq!(code, 400);
    assert!(text.contains("waiting to start"), "{text}");
    // Exec tokens are not log tokens.
    let exec = f.ok("GetCubeExecToken", &[("Uid", "uid-wait"), ("ContainerName", "app")]).await;
    assert_eq!(logs(&f, &format!("token={}", exec["Token"].as_str().unwrap())).await.0, 401);
    assert_eq!(f.call("GetCubeToken", &[("Uid", "uid-wait"), ("ContainerName", "nope")]).await["RetCode"], 230);
    f.shutdown().await;
}

#[tokio::test]
async fn previous_logs_need_a_previous_run() {
    let f = Fixture::start().await;
    f.create(&pod_yaml("uid-prev", UHUB_IMAGE, "1", "1Gi", &[])).await;
    let t = log_token(&f, "uid-prev").await;
    let (code, text) = logs(&f, &format!("token={t}&previous=true")).await;
    assert_eq!(code, 400, "{text}");
    f.shutdown().await;
}

/// One exec session: returns (protocol, stdout, stderr, status JSON).
struct Session {
    protocol: String,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    status: serde_json::Value,
}

fn exec_pod(uid: &str) -> String {
    pod_yaml(uid, UHUB_IMAGE, "1", "1Gi", &[]).replace("    resources:", "    volumeMounts:\n    - name: conf\n      mountPath: /etc/app\n    - name: creds\n      mountPath: /run/secret\n    resources:")
        + "  volumes:\n  - name: conf\n    configMap:\n      app.conf: \"port=8080\\n\"\n  - name: creds\n    secret:\n      password: czNjcjN0\n"
}

async fn exec(f: &Fixture, uid: &str, query: &str, protocol: &str, input: Vec<Vec<u8>>) -> Session {
    let v = f.ok("GetCubeExecToken", &[("Uid", uid), ("ContainerName", "app")]).await;
    let url = format!("{}&{query}", v["TerminalUrl"].as_str().unwrap());
    assert!(url.starts_with(&format!("ws://{}/cube-stream/exec?token=", f.sim.addr())), "{url}");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", protocol.parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.expect("websocket");
    let protocol =
        resp.headers().get("Sec-WebSocket-Protocol").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    for msg in input {
        ws.send(Message::Binary(msg.into())).await.unwrap();
    }
    let mut s = Session { protocol, stdout: Vec::new(), stderr: Vec::new(), status: serde_json::Value::Null };
    let deadline = std::time::Duration::from_secs(5);
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(deadline, ws.next()).await {
        let Message::Binary(b) = msg else { continue };
        match b[0] {
            1 => s.stdout.extend_from_slice(&b[1..]),
            2 => s.stderr.extend_from_slice(&b[1..]),
            3 => s.status = serde_json::from_slice(&b[1..]).unwrap(),
            other => panic!("unexpected channel {other}"),
        }
    }
    s
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[tokio::test]
async fn exec_echo_succeeds_on_v5_and_v4() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x1")).await;
    for proto in ["v5.channel.k8s.io", "v4.channel.k8s.io"] {
        let s = exec(&f, "uid-x1", "command=echo&command=hi%20there&stdout=1&stderr=1", proto, vec![]).await;
        assert_eq!(s.protocol, proto);
        assert_eq!(text(&s.stdout), "hi there\n");
        assert_eq!(s.status, serde_json::json!({"metadata": {}, "status": "Success"}));
    }
    f.shutdown().await;
}

#[tokio::test]
async fn exec_reports_non_zero_exit_codes_in_the_status() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x2")).await;
    let s = exec(
        &f,
        "uid-x2",
        "command=sh&command=-c&command=echo%20out%3B%20exit%203&stdout=1&stderr=1",
        "v5.channel.k8s.io",
        vec![],
    )
    .await;
    assert_eq!(text(&s.stdout), "out\n");
    assert_eq!(s.status["status"], "Failure");
    assert_eq!(s.status["reason"], "NonZeroExitCode");
    assert!(s.status["message"].as_str().unwrap().starts_with("command terminated with non-zero exit code: "));
    assert_eq!(s.status["details"]["causes"][0], serde_json::json!({"reason": "ExitCode", "message": "3"}));
    let s = exec(&f, "uid-x2", "command=frobnicate&stdout=1&stderr=1", "v5.channel.k8s.io", vec![]).await;
    assert_eq!(text(&s.stderr), "frobnicate: not found\n");
    assert_eq!(s.status["details"]["causes"][0]["message"], "127");
    f.shutdown().await;
}

#[tokio::test]
async fn exec_reads_mounted_config_and_secret_files_and_env() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x3")).await;
    let s = exec(&f, "uid-x3", "command=cat&command=/etc/app/app.conf&stdout=1&stderr=1", "v5.channel.k8s.io", vec![])
        .await;
    assert_eq!(text(&s.stdout), "port=8080\n");
    let s =
        exec(&f, "uid-x3", "command=cat&command=/run/secret/password&stdout=1&stderr=1", "v5.channel.k8s.io", vec![])
            .await;
    assert_eq!(text(&s.stdout), "s3cr3t");
    let s = exec(&f, "uid-x3", "command=cat&command=/etc/passwd&stdout=1&stderr=1", "v5.channel.k8s.io", vec![]).await;
    assert!(text(&s.stderr).contains("No such file"));
    assert_eq!(s.status["details"]["causes"][0]["message"], "1");
    let s = exec(&f, "uid-x3", "command=env&stdout=1&stderr=1", "v5.channel.k8s.io", vec![]).await;
    assert!(text(&s.stdout).contains("GREETING=hello\n"));
    assert!(text(&s.stdout).contains("HOSTNAME=web-uid-x3\n"));
    let s = exec(&f, "uid-x3", "command=hostname&stdout=1", "v5.channel.k8s.io", vec![]).await;
    assert_eq!(text(&s.stdout), "web-uid-x3\n");
    f.shutdown().await;
}

#[tokio::test]
async fn exec_cat_echoes_stdin_until_the_v5_close_message() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x4")).await;
    let input = vec![b"\x00hello ".to_vec(), b"\x00stdin\n".to_vec(), vec![255, 0]];
    let s = exec(&f, "uid-x4", "command=cat&stdin=1&stdout=1&stderr=1", "v5.channel.k8s.io", input).await;
    assert_eq!(text(&s.stdout), "hello stdin\n");
    assert_eq!(s.status["status"], "Success");
    f.shutdown().await;
}

#[tokio::test]
async fn exec_with_tty_reports_the_resize_and_merges_stderr() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x5")).await;
    let resize = [vec![4u8], br#"{"Width":132,"Height":43}"#.to_vec()].concat();
    let s =
        exec(&f, "uid-x5", "command=stty&command=size&stdin=1&stdout=1&tty=1", "v5.channel.k8s.io", vec![resize]).await;
    assert_eq!(text(&s.stdout), "43 132\r\n");
    let s = exec(&f, "uid-x5", "command=nope&stdout=1&stderr=1&tty=1", "v5.channel.k8s.io", vec![]).await;
    assert_eq!(text(&s.stdout), "nope: not found\r\n");
    assert!(s.stderr.is_empty());
    f.shutdown().await;
}

#[tokio::test]
async fn exec_sleep_and_exit_builtins() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x6")).await;
    let started = std::time::Instant::now();
    let s = exec(&f, "uid-x6", "command=sleep&command=1&stdout=1", "v5.channel.k8s.io", vec![]).await;
    assert!(started.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(s.status["status"], "Success");
    let s = exec(&f, "uid-x6", "command=exit&command=4&stdout=1", "v5.channel.k8s.io", vec![]).await;
    assert_eq!(s.status["details"]["causes"][0]["message"], "4");
    f.shutdown().await;
}

#[tokio::test]
async fn exec_refuses_bad_tokens() {
    let f = Fixture::start().await;
    let resp = f.http.get(format!("{}/cube-stream/exec?token=nope&command=ls", f.url())).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    f.shutdown().await;
}

#[tokio::test]
async fn attach_streams_the_main_process_output() {
    let f = Fixture::start().await;
    f.create(&exec_pod("uid-x7")).await;
    let v = f.ok("GetCubeExecToken", &[("Uid", "uid-x7"), ("ContainerName", "app")]).await;
    let mut req = format!("{}&attach=1&stdout=1", v["TerminalUrl"].as_str().unwrap()).into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "v5.channel.k8s.io".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let msg = tokio::time::timeout(std::time::Duration::from_secs(3), ws.next()).await.unwrap().unwrap().unwrap();
    let Message::Binary(b) = msg else { panic!("{msg:?}") };
    assert_eq!(b[0], 1);
    assert!(text(&b[1..]).contains("cube-sim: app tick"));
    f.shutdown().await;
}

#[tokio::test]
async fn exec_needs_a_running_container() {
    let mut cfg = fixture::config();
    cfg.lifecycle.pending_ms = 60_000;
    let f = Fixture::with(cfg).await;
    f.create(&exec_pod("uid-x8")).await;
    let v = f.ok("GetCubeExecToken", &[("Uid", "uid-x8"), ("ContainerName", "app")]).await;
    let url = v["TerminalUrl"].as_str().unwrap().replacen("ws://", "http://", 1) + "&command=ls";
    let resp = f.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("not running"));
    f.shutdown().await;
}
