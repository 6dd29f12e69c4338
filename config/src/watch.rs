//! Watching a configuration file for changes: inotify, read as a stream on the caller's tokio
//! runtime (the `inotify` crate's event stream), so watching costs no thread of its own.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use inotify::{EventMask, EventStream, Inotify, WatchMask};

/// Why a file cannot be watched.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {source}", path.display())]
pub struct WatchError {
    /// The path asked for.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// The changes of a file (or of the YAML files of a directory), for as long as it is alive.
///
/// The parent directory is watched rather than the file, because editors and config
/// management tools replace a file by renaming a new one over it, which ends a watch on the
/// old inode. Events for other files of the directory are ignored, except `..`-prefixed ones
/// (Kubernetes ConfigMap volumes swap a `..data` symlink).
pub struct FileWatch {
    path: PathBuf,
    events: EventStream<Vec<u8>>,
    /// What counts in the watched directory.
    ours: Ours,
}

/// Which names of the watched directory are the watched config.
#[derive(Debug)]
enum Ours {
    /// One file.
    File(Option<OsString>),
    /// A directory of manifests: every YAML file in it.
    Yaml,
}

impl Ours {
    fn is(&self, name: &OsStr) -> bool {
        // `..data` and friends: a Kubernetes ConfigMap volume swaps a symlinked directory
        // instead of touching the file itself.
        if name.to_str().is_some_and(|n| n.starts_with("..")) {
            return true;
        }
        match self {
            Ours::File(file) => file.as_deref() == Some(name),
            Ours::Yaml => Path::new(name)
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml"),
        }
    }
}

impl std::fmt::Debug for FileWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileWatch")
            .field("path", &self.path)
            .field("ours", &self.ours)
            .finish_non_exhaustive()
    }
}

impl FileWatch {
    /// Watches `path`. Call it inside a tokio runtime with I/O enabled: the inotify descriptor
    /// registers with that runtime.
    pub fn new(path: &Path) -> Result<Self, WatchError> {
        let err = |source| WatchError {
            path: path.to_owned(),
            source,
        };
        let absolute = std::path::absolute(path).map_err(err)?;
        let (dir, ours) = if absolute.is_dir() {
            (absolute.clone(), Ours::Yaml)
        } else {
            let dir = absolute.parent().unwrap_or(Path::new("/")).to_owned();
            (dir, Ours::File(absolute.file_name().map(ToOwned::to_owned)))
        };
        let inotify = Inotify::init().map_err(err)?;
        inotify
            .watches()
            .add(
                &dir,
                WatchMask::CREATE
                    | WatchMask::MODIFY
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::DELETE
                    | WatchMask::MOVED_FROM
                    | WatchMask::MOVED_TO
                    | WatchMask::ATTRIB,
            )
            .map_err(err)?;
        let events = inotify.into_event_stream(vec![0; 4096]).map_err(err)?;
        Ok(FileWatch {
            path: absolute,
            events,
            ours,
        })
    }

    /// Waits for the next event that may have changed the config (callers fold bursts: an
    /// editor's save is several events).
    ///
    /// # Cancel safety
    ///
    /// Cancel-safe: an event not yet read stays queued in the kernel or in the stream's buffer.
    pub async fn changed(&mut self) -> Result<(), WatchError> {
        loop {
            let event = match self.events.next().await {
                Some(Ok(event)) => event,
                Some(Err(source)) => {
                    return Err(WatchError {
                        path: self.path.clone(),
                        source,
                    })
                }
                None => {
                    return Err(WatchError {
                        path: self.path.clone(),
                        source: std::io::Error::other("the inotify stream ended"),
                    })
                }
            };
            // The kernel dropped events: anything may have changed.
            if event.mask.contains(EventMask::Q_OVERFLOW) {
                return Ok(());
            }
            if event.name.as_deref().is_some_and(|n| self.ours.is(n)) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringlb-watch-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// No event within a short while (nothing is expected: a bounded wait is the only way to
    /// tell "no event").
    async fn quiet(watch: &mut FileWatch) -> bool {
        tokio::time::timeout(Duration::from_millis(200), watch.changed())
            .await
            .is_err()
    }

    /// A change comes (within the test's patience), and then the rest of its burst (a write
    /// is a modify and a close) is read, so the next check starts from nothing.
    async fn changes(watch: &mut FileWatch, what: &str) {
        tokio::time::timeout(Duration::from_secs(10), watch.changed())
            .await
            .unwrap_or_else(|_| panic!("no change seen: {what}"))
            .unwrap();
        while !quiet(watch).await {}
    }

    #[test]
    fn a_file_replaced_by_rename_or_written_is_a_change_and_its_neighbours_are_not() {
        let dir = scratch("file");
        let file = dir.join("lb.yaml");
        std::fs::write(&file, "a").unwrap();
        runtime().block_on(async {
            let mut watch = FileWatch::new(&file).unwrap();
            std::fs::write(dir.join("other.yaml"), "x").unwrap();
            assert!(quiet(&mut watch).await, "another file of the directory");
            // An editor's save: write a new file, rename it over the old one.
            std::fs::write(dir.join(".lb.yaml.swp"), "b").unwrap();
            std::fs::rename(dir.join(".lb.yaml.swp"), &file).unwrap();
            changes(&mut watch, "renamed over").await;
            // And a plain write, after the rename replaced the inode.
            std::fs::write(&file, "c").unwrap();
            changes(&mut watch, "written").await;
            // A ConfigMap volume's swap.
            std::fs::write(dir.join("..data_tmp"), "").unwrap();
            changes(&mut watch, "..data swapped").await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn in_a_directory_of_manifests_every_yaml_file_counts() {
        let dir = scratch("dir");
        runtime().block_on(async {
            let mut watch = FileWatch::new(&dir).unwrap();
            std::fs::write(dir.join("notes.txt"), "x").unwrap();
            assert!(quiet(&mut watch).await, "not a YAML file");
            std::fs::write(dir.join("web.yaml"), "kind: Service").unwrap();
            changes(&mut watch, "web.yaml").await;
            std::fs::write(dir.join("db.yml"), "kind: Service").unwrap();
            changes(&mut watch, "db.yml").await;
        });
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
