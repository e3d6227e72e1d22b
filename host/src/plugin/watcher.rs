//! Reloads a plugin when its file changes on disk or the daemon gets SIGHUP. The file is polled
//! (a stat every 50 ms costs nothing and works on every filesystem, ConfigMap symlink swaps
//! included); deploy new versions by writing a temporary file and renaming it over the old one.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::plugin::handle::{Plugin, ReloadTrigger};

const POLL: Duration = Duration::from_millis(50);
/// After a change, the file must look the same this long later before it is read, so a plain
/// `cp` in progress is not loaded half-written.
const SETTLE: Duration = Duration::from_millis(40);

/// What identifies one version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    // `metadata` follows symlinks, so a Kubernetes ConfigMap's `..data` swap shows up as a change.
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

impl Plugin {
    /// Watches the plugin file and SIGHUP until `shutdown` is cancelled. Failed reloads keep the
    /// active version and are reported through `subscribe`. The file's state is read before this
    /// returns, so any change made after it is seen.
    pub fn spawn_watcher(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let plugin = Arc::clone(self);
        let path = plugin.settings.path.clone();
        let mut last = stamp(&path);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; plugin reloads only on file change");
                    None
                }
            };
            let mut tick = tokio::time::interval(POLL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let signalled = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<Option<()>>();
                let trigger = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = signalled => ReloadTrigger::Signal,
                    _ = tick.tick() => {
                        let now = stamp(&path);
                        if now == last || now.is_none() {
                            // Unchanged, or missing for a moment during a replace.
                            continue;
                        }
                        tokio::time::sleep(SETTLE).await;
                        let settled = stamp(&path);
                        if settled != now {
                            continue;
                        }
                        last = settled;
                        ReloadTrigger::FileChanged
                    }
                };
                if trigger == ReloadTrigger::Signal {
                    last = stamp(&path);
                }
                // Errors were already logged and broadcast by `reload_by`.
                let _ = plugin.reload_by(trigger).await;
            }
        })
    }
}
