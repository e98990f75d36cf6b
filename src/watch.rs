//! Notices that files changed, by polling their metadata: what the token
//! file and the TLS certificates use to be reloaded without a restart.
//!
//! Polling rather than inotify, because the usual ways of replacing these
//! files (an editor's rename, `mv`, a Kubernetes Secret's symlink swap)
//! replace the inode an inotify watch would be attached to. A file counts as
//! changed when its modification time, size or inode differ from the last
//! poll; one that cannot be read counts as changed when it comes back.

use std::{
    os::unix::fs::MetadataExt,
    path::PathBuf,
    time::{Duration, SystemTime},
};

use tokio_util::sync::CancellationToken;

/// What the watched files looked like at one poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp(Vec<Option<(SystemTime, u64, u64)>>);

impl Stamp {
    /// The current stamp of `paths` (symbolic links followed).
    pub fn of(paths: &[PathBuf]) -> Self {
        Self(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .ok()
                        .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())))
                })
                .collect(),
        )
    }
}

/// Calls `changed` each time one of `paths` changes, checking every `every`,
/// until `cancel` fires. `since` is the stamp the caller's current state was
/// loaded from, so a change between loading and the first poll is not
/// missed.
pub async fn on_change(
    paths: Vec<PathBuf>,
    since: Stamp,
    every: Duration,
    cancel: CancellationToken,
    mut changed: impl FnMut(),
) {
    let mut last = since;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Stamp::of(&paths);
        if now != last {
            last = now;
            changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rewrite_or_a_replacement_changes_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let paths = vec![path.clone()];
        let missing = Stamp::of(&paths);
        std::fs::write(&path, "one").unwrap();
        let one = Stamp::of(&paths);
        assert_ne!(missing, one);
        assert_eq!(one, Stamp::of(&paths));
        std::fs::write(&path, "three").unwrap();
        let three = Stamp::of(&paths);
        assert_ne!(one, three);
        // Same size, a new inode: `mv` of a file written earlier.
        let other = dir.path().join("g");
        std::fs::write(&other, "thre3").unwrap();
        std::fs::rename(&other, &path).unwrap();
        assert_ne!(three, Stamp::of(&paths));
    }
}
