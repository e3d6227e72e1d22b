//! `kubectl port-forward` in the background, as a user runs it, and a client for the local port.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::Cluster;

/// A running `kubectl port-forward`.
pub struct PortForward {
    child: tokio::process::Child,
    /// The local port kubectl listens on.
    pub local: u16,
    stderr: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
}

impl PortForward {
    /// Starts `kubectl port-forward -n NAMESPACE TARGET :REMOTE` (a free local port) and waits
    /// until it listens.
    pub async fn start(cluster: &Cluster, namespace: &str, target: &str, remote: u16) -> PortForward {
        let ports = format!(":{remote}");
        let args = ["port-forward", "-n", namespace, target, ports.as_str()];
        let mut cmd = tokio::process::Command::from(cluster.kubectl_command(&args));
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn kubectl port-forward");
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let local = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = stdout.next_line().await {
                // "Forwarding from 127.0.0.1:43567 -> 80"
                if let Some(rest) = line.strip_prefix("Forwarding from 127.0.0.1:") {
                    return rest.split_whitespace().next().unwrap().parse::<u16>().unwrap();
                }
            }
            let mut err = String::new();
            while let Ok(Some(line)) = stderr.next_line().await {
                err.push_str(&line);
                err.push('\n');
            }
            panic!("kubectl port-forward ended before listening: {err}");
        })
        .await
        .expect("kubectl port-forward listens within 30s");
        // Keep reading stdout ("Handling connection for ...") so kubectl never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        PortForward { child, local, stderr }
    }

    /// `http://127.0.0.1:LOCAL`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.local)
    }

    /// kubectl's error output up to the first line holding `needle` (or all of it, if kubectl
    /// ends first, or what came within 30 s).
    pub async fn stderr_until(&mut self, needle: &str) -> String {
        let mut seen = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = self.stderr.next_line().await {
                seen.push_str(&line);
                seen.push('\n');
                if line.contains(needle) {
                    break;
                }
            }
        })
        .await;
        seen
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// An HTTP client for forwarded local ports (no proxy from the environment).
pub fn local_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().unwrap()
}
