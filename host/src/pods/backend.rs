//! The kubelet API's view of a node: its pods from the controller's cache, and stream targets and
//! usage asked of the provider plugin. Translates plugin types to the kubelet module's own.

use std::sync::Arc;

use futures::FutureExt;
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::controller::NodeContext;
use crate::kubelet::{
    BackendError, ContainerUsage, ExecQuery, KubeletBackend, LogQuery, PodUsage, StreamProtocol, StreamTarget,
};
use crate::plugin::{self, CallError, ProviderError};

/// A [`KubeletBackend`] over one node's context.
pub struct NodeBackend(pub Arc<NodeContext>);

impl NodeBackend {
    fn pod_ref(&self, namespace: &str, name: &str) -> Result<plugin::PodRef, BackendError> {
        let pod = self
            .0
            .pods()
            .into_iter()
            .find(|p| p.namespace().as_deref() == Some(namespace) && p.name_any() == name)
            .ok_or_else(|| {
                BackendError::NotFound(format!("pod {namespace}/{name} is not on node {}", self.0.node_name))
            })?;
        Ok(plugin::PodRef { namespace: namespace.into(), name: name.into(), uid: pod.uid().unwrap_or_default() })
    }

    async fn session(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        opts: ExecQuery,
        kind: Session,
    ) -> Result<StreamTarget, BackendError> {
        let pref = self.pod_ref(namespace, pod)?;
        let (plugin, call, opts) = (&self.0.plugin, &self.0.call, exec_options(&opts));
        let target_of = match kind {
            Session::Exec => plugin.exec(call, &pref, container, &opts).await,
            Session::Attach => plugin.attach(call, &pref, container, &opts).await,
        };
        target_of.map_err(backend_error).and_then(target)
    }
}

/// Exec and attach ask the plugin the same question of two exports.
#[derive(Clone, Copy)]
enum Session {
    Exec,
    Attach,
}

fn backend_error(e: CallError) -> BackendError {
    match e {
        CallError::Provider(ProviderError::NotFound(m)) => BackendError::NotFound(m),
        CallError::Provider(ProviderError::Invalid(i)) => {
            BackendError::BadRequest(format!("{}: {}", i.field, i.message))
        }
        CallError::StreamTargetDenied { .. } | CallError::StreamHeaderRefused { .. } | CallError::Unsupported(_) => {
            BackendError::BadRequest(e.to_string())
        }
        other => BackendError::Unavailable(other.to_string()),
    }
}

fn target(t: plugin::StreamTarget) -> Result<StreamTarget, BackendError> {
    let protocol = match t.protocol {
        plugin::StreamProtocol::HttpBody => StreamProtocol::HttpBody,
        plugin::StreamProtocol::WebsocketChannels => StreamProtocol::WebSocketChannels,
        plugin::StreamProtocol::Tcp => {
            return Err(BackendError::BadRequest(format!(
                "the provider answered a tcp target ({}), which serves port-forward only",
                t.url
            )));
        }
    };
    Ok(StreamTarget { url: t.url, headers: t.headers.into_iter().map(|kv| (kv.key, kv.value)).collect(), protocol })
}

fn exec_options(q: &ExecQuery) -> plugin::ExecOptions {
    plugin::ExecOptions { command: q.command.clone(), stdin: q.stdin, stdout: q.stdout, stderr: q.stderr, tty: q.tty }
}

impl KubeletBackend for NodeBackend {
    fn node_name(&self) -> String {
        self.0.node_name.clone()
    }

    fn pods(&self) -> Vec<Pod> {
        self.0.pods().iter().map(|p| p.pod()).collect()
    }

    /// One lookup in the pod cache by name, where `pods` would read every pod back typed.
    fn has_pod(&self, namespace: &str, name: &str, uid: &str) -> bool {
        self.0.cached_pod(namespace, name).is_some_and(|p| p.metadata.uid.as_deref() == Some(uid))
    }

    fn running_pods(&self) -> BoxFuture<'_, Result<Vec<Pod>, BackendError>> {
        async move {
            let instances = self.0.plugin.list(&self.0.call).await.map_err(backend_error)?;
            instances
                .iter()
                .map(|i| {
                    serde_json::from_value(super::status::running_pod_json(i, &self.0.node_name, &self.0.host_ip))
                        .map_err(|e| {
                            BackendError::Unavailable(format!(
                                "instance {} of pod {}/{}: {e}",
                                i.instance_id, i.pod.namespace, i.pod.name
                            ))
                        })
                })
                .collect()
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: LogQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        async move {
            let pref = self.pod_ref(namespace, pod)?;
            let o = plugin::LogOptions {
                follow: opts.follow,
                tail_lines: opts.tail_lines,
                since_seconds: opts.since_seconds,
                since_time: opts.since_time,
                timestamps: opts.timestamps,
                limit_bytes: opts.limit_bytes,
                previous: opts.previous,
            };
            self.0.plugin.logs(&self.0.call, &pref, container, &o).await.map_err(backend_error).and_then(target)
        }
        .boxed()
    }

    fn exec<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: ExecQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        self.session(namespace, pod, container, opts, Session::Exec).boxed()
    }

    fn attach<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        container: &'a str,
        opts: ExecQuery,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        self.session(namespace, pod, container, opts, Session::Attach).boxed()
    }

    fn port_forward<'a>(
        &'a self,
        namespace: &'a str,
        pod: &'a str,
        port: u16,
    ) -> BoxFuture<'a, Result<StreamTarget, BackendError>> {
        async move {
            let pref = self.pod_ref(namespace, pod)?;
            match self.0.plugin.port_forward(&self.0.call, &pref, port).await {
                // The kubelet API checks that it is a tcp target.
                Ok(t) => Ok(StreamTarget {
                    url: t.url,
                    headers: t.headers.into_iter().map(|kv| (kv.key, kv.value)).collect(),
                    protocol: match t.protocol {
                        plugin::StreamProtocol::HttpBody => StreamProtocol::HttpBody,
                        plugin::StreamProtocol::WebsocketChannels => StreamProtocol::WebSocketChannels,
                        plugin::StreamProtocol::Tcp => StreamProtocol::Tcp,
                    },
                }),
                Err(CallError::Unsupported(why)) => Err(BackendError::Unsupported(format!(
                    "the {} provider cannot forward ports: {why}",
                    self.0.plugin.info().name
                ))),
                Err(e) => Err(backend_error(e)),
            }
        }
        .boxed()
    }

    fn usage(&self) -> BoxFuture<'_, Result<Vec<PodUsage>, BackendError>> {
        async move {
            let refs: Vec<plugin::PodRef> = self
                .0
                .pods()
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| plugin::PodRef {
                    namespace: p.namespace().unwrap_or_default(),
                    name: p.name_any(),
                    uid: p.uid().unwrap_or_default(),
                })
                .collect();
            let usage = self.0.plugin.usage(&self.0.call, &refs).await.map_err(backend_error)?;
            Ok(usage
                .into_iter()
                .map(|u| PodUsage {
                    namespace: u.pod.namespace,
                    name: u.pod.name,
                    uid: u.pod.uid,
                    timestamp: u.timestamp,
                    containers: u
                        .containers
                        .into_iter()
                        .map(|c| ContainerUsage {
                            name: c.name,
                            cpu_usage_core_nano_seconds: c.cpu_usage_core_nano_seconds,
                            cpu_usage_nano_cores: c.cpu_usage_nano_cores,
                            memory_working_set_bytes: c.memory_working_set_bytes,
                            memory_usage_bytes: c.memory_usage_bytes,
                            start_time: c.start_time,
                        })
                        .collect(),
                })
                .collect())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pods::fixtures::{bound_pod, node};

    #[tokio::test]
    async fn a_session_path_reaches_only_the_pod_incarnation_its_uid_names() {
        let mut n = node().await;
        n.cache(&bound_pod(&n.api, "web", "uid-2"));
        let backend = NodeBackend(n.ctx.clone());
        assert!(backend.has_pod("default", "web", "uid-2"));
        assert!(!backend.has_pod("default", "web", "uid-1"), "an earlier pod of the same name");
        assert!(!backend.has_pod("other", "web", "uid-2"), "the same name in another namespace");
        assert!(!backend.has_pod("default", "db", "uid-2"));
    }
}
