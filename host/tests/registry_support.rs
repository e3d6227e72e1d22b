//! A real OCI registry on loopback for the tests and benches of OCI plugin sources (included with
//! `#[path]`): go-containerregistry's in-memory registry, built by `tests/registry/build`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The registry process, killed on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
}

impl Registry {
    pub fn start() -> Registry {
        let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/registry/build");
        let out = Command::new("bash").arg(&build).stderr(Stdio::inherit()).output().expect("run tests/registry/build");
        assert!(out.status.success(), "tests/registry/build failed");
        let bin = String::from_utf8(out.stdout).unwrap().lines().last().unwrap().to_string();
        let mut child = Command::new(bin)
            .args(["-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the registry");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        Registry { child, addr: line.trim().to_string() }
    }

    pub fn reference(&self, repo_tag: &str) -> String {
        format!("oci://{}/{repo_tag}", self.addr)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
