//! `vkhost translate`: a manifest and the daemon config in, the Cube request (or the error that
//! would stop the pod) out, without any cloud call.

use std::process::Command;

fn run(manifest: &str) -> (i32, String, String) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("vkhost-translate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.yaml", manifest.len()));
    std::fs::write(&path, manifest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vkhost"))
        .args(["translate", "--config"])
        .arg(root.join("config.example.toml"))
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn guide_pod_translates_to_a_create_request_of_the_rounded_size() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = std::fs::read_to_string(root.join("tests/demo/manifests/01-nginx-pod.yaml")).unwrap();
    let (code, out, err) = run(&yaml);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("CreateCubePod") || out.contains("Pod"), "{out}");
    assert!(out.contains("cn-bj2-05") && out.contains("uvnet-xxxxxxxx"), "{out}");
    assert!(!out.contains("not-needed-to-translate"), "credentials never printed: {out}");
}

#[test]
fn wrong_annotation_is_reported_naming_it() {
    let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: p
  annotations:
    cube.ucloud.cn/cube-eip-paymode: sharebandwidth
    cube.ucloud.cn/cube-eip: "true"
    cube.ucloud.cn/cube-eip-bandwidth: "5"
spec:
  automountServiceAccountToken: false
  containers:
  - name: c
    image: uhub.service.ucloud.cn/library/nginx:1.25
"#;
    let (code, _, err) = run(yaml);
    assert_ne!(code, 0);
    assert!(err.contains("cube-eip-bandwidth"), "{err}");
}
