//! Reloads a plugin when its file changes on disk (or its detached signature, when one is
//! required), when its OCI tag names a new digest, or when the daemon gets SIGHUP. The file is
//! polled (a stat every 50 ms costs nothing and works on every filesystem, ConfigMap symlink swaps
//! included); deploy new versions by writing a temporary file and renaming it over the old one.
//! The tag is asked every `poll_interval_ms`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::plugin::handle::{Plugin, ReloadTrigger};
use crate::plugin::source::TagPoll;

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

/// The file's stamp and, when signatures are required, its detached signature's.
fn stamps(path: &Path, signature: Option<&Path>) -> Option<(Stamp, Option<Stamp>)> {
    Some((stamp(path)?, signature.and_then(stamp)))
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
        // An OCI source has no file: the stamps stay `None` and only the tag poll and SIGHUP act.
        let path = plugin.source.path().map(Path::to_path_buf).unwrap_or_default();
        let signature = plugin
            .settings
            .public_key
            .as_ref()
            .map(|_| crate::plugin::source::signature::detached_signature_path(&path));
        let mut last = stamps(&path, signature.as_deref());
        let poll = plugin.source.poll_interval();
        let mut tag = TagPoll::default();
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
            let period = poll.unwrap_or(Duration::from_secs(3600));
            let mut tag_tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                    _ = tag_tick.tick(), if poll.is_some() => {
                        if !tag.moved(&plugin.source, plugin.provenance()).await {
                            continue;
                        }
                        ReloadTrigger::TagMoved
                    }
                    _ = tick.tick() => {
                        let now = stamps(&path, signature.as_deref());
                        if now == last || now.is_none() {
                            // Unchanged, or missing for a moment during a replace.
                            continue;
                        }
                        tokio::time::sleep(SETTLE).await;
                        let settled = stamps(&path, signature.as_deref());
                        if settled != now {
                            continue;
                        }
                        last = settled;
                        ReloadTrigger::FileChanged
                    }
                };
                if trigger == ReloadTrigger::Signal {
                    last = stamps(&path, signature.as_deref());
                }
                // Errors were already logged and broadcast by `reload_by`.
                let reloaded = plugin.reload_by(trigger).await;
                if trigger == ReloadTrigger::TagMoved {
                    tag.settle(reloaded.is_ok());
                }
            }
        })
    }
}
