//! Watching a configuration file for changes (inotify, through the `notify` crate).

use std::path::{Path, PathBuf};

use notify::{Event, EventKind, RecommendedWatcher, RecursiveMode, Watcher};

/// Why a file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    /// The path asked for.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: notify::Error,
}

/// Calls back whenever a file (or a YAML file of a directory) may have changed, for as long
/// as it is alive.
///
/// The parent directory is watched rather than the file, because editors and config
/// management tools replace a file by renaming a new one over it, which ends a watch on the
/// old inode. Events for other files of the directory are ignored, except `..`-prefixed ones
/// (Kubernetes ConfigMap volumes swap a `..data` symlink).
pub struct FileWatch {
    _watcher: RecommendedWatcher,
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch").finish_non_exhaustive()
    }
}

impl FileWatch {
    /// Watches `path`; `on_change` runs on the watcher's own thread, once per relevant event
    /// (callers debounce).
    pub fn new(path: &Path, on_change: impl Fn() + Send + 'static) -> Result<Self, WatchError> {
        let err = |source| WatchError {
            path: path.to_owned(),
            source,
        };
        let path = std::path::absolute(path).map_err(|e| err(notify::Error::io(e)))?;
        // A directory of manifests: any YAML file in it counts.
        let whole_dir = path.is_dir();
        let dir = if whole_dir {
            path.clone()
        } else {
            path.parent().unwrap_or(Path::new("/")).to_owned()
        };
        let name = path.file_name().map(ToOwned::to_owned);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<Event>| {
            let Ok(event) = res else { return };
            // `..data` and friends: a Kubernetes ConfigMap volume swaps a symlinked directory
            // instead of touching the file itself.
            let ours = |p: &Path| {
                p.file_name() == name.as_deref()
                    || p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(".."))
            };
            let relevant = matches!(
                event.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            ) && event.paths.iter().any(|p| ours(p));
            if relevant {
                on_change();
            }
        })
        .map_err(err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        Ok(Self { _watcher: watcher })
    }
}
