//! The kubelet HTTP API the apiserver calls: logs, exec, attach, stats.
