//! Resource trackers: own what was defined through them, and remove it
//! cleanly — in-flight work fails with a clear error, waiting lookups fail
//! promptly, and resource managers free what they hold.

use std::fmt;

use crate::actor::{DylibId, Msg, Reply, SessionCore, TrackerId};
use crate::error::{Error, Result};
use crate::sync::{Arc, Mutex};

/// Identifies a tracker to [`ResourceManager`]s.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct ResourceKey(pub u64);

/// Holds resources (linked memory, registrations) on behalf of trackers.
/// Register with `Session::register_resource_manager`. Its methods run on
/// the thread that removes or transfers, never on the state actor.
pub trait ResourceManager: Send + Sync + 'static {
    /// Frees everything held for `key`. Called once, after the tracker's
    /// symbols were unpublished and its in-flight work failed.
    fn remove_resources(&self, key: ResourceKey) -> Result<()>;

    /// Re-associates everything held for `src` with `dst`.
    fn transfer_resources(&self, dst: ResourceKey, src: ResourceKey);
}

/// Shared between tracker handles and the actor.
pub(crate) struct TrackerShared {
    pub(crate) id: TrackerId,
    pub(crate) dylib: DylibId,
    pub(crate) dylib_name: Arc<str>,
    pub(crate) key: ResourceKey,
    /// True once removed or transferred away. Held while
    /// [`ResourceTracker::with_resource_key`] runs, so registration and
    /// removal never interleave.
    pub(crate) defunct: Mutex<bool>,
}

/// A handle to a group of definitions that can be removed together.
#[derive(Clone)]
pub struct ResourceTracker {
    pub(crate) core: Arc<SessionCore>,
    pub(crate) shared: Arc<TrackerShared>,
}

impl fmt::Debug for ResourceTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceTracker")
            .field("key", &self.shared.key)
            .field("dylib", &self.shared.dylib_name)
            .field("removed", &self.is_removed())
            .finish()
    }
}

impl ResourceTracker {
    /// The key resource managers file this tracker's resources under.
    pub fn key(&self) -> ResourceKey {
        self.shared.key
    }

    /// Whether the tracker was removed or transferred away.
    pub fn is_removed(&self) -> bool {
        *self.shared.defunct.lock()
    }

    /// Runs `f` with the key unless the tracker is defunct. Removal waits for
    /// `f` to finish, so resources registered inside `f` are always seen by
    /// the managers' `remove_resources`.
    pub fn with_resource_key<R>(&self, f: impl FnOnce(ResourceKey) -> R) -> Result<R> {
        let defunct = self.shared.defunct.lock();
        if *defunct {
            return Err(Error::TrackerRemoved {
                dylib: self.shared.dylib_name.clone(),
            });
        }
        Ok(f(self.shared.key))
    }

    /// Removes everything defined through this tracker: symbols leave their
    /// dylib (unpublished first), lookups waiting on them fail, running
    /// materializations get "tracker removed" errors, and resource managers
    /// free what they hold. Returns when the managers are done; their first
    /// error, if any.
    pub fn remove(&self) -> Result<()> {
        {
            let mut defunct = self.shared.defunct.lock();
            if *defunct {
                return Ok(());
            }
            *defunct = true;
        }
        let (reply, wait) = Reply::new();
        self.core.send(Msg::RemoveTracker {
            tracker: self.shared.id,
            reply: Some(reply),
        });
        wait.wait()
    }

    /// Moves everything this tracker owns to `dst` (same dylib); this tracker
    /// becomes defunct.
    pub fn transfer_to(&self, dst: &ResourceTracker) -> Result<()> {
        if Arc::ptr_eq(&self.shared, &dst.shared) {
            return Ok(());
        }
        if self.shared.dylib != dst.shared.dylib {
            return Err(Error::Usage(format!(
                "transfer_to: trackers belong to different dylibs ('{}' and '{}')",
                self.shared.dylib_name, dst.shared.dylib_name
            )));
        }
        if dst.is_removed() {
            return Err(Error::TrackerRemoved {
                dylib: dst.shared.dylib_name.clone(),
            });
        }
        {
            let mut defunct = self.shared.defunct.lock();
            if *defunct {
                return Err(Error::TrackerRemoved {
                    dylib: self.shared.dylib_name.clone(),
                });
            }
            *defunct = true;
        }
        let (reply, wait) = Reply::new();
        self.core.send(Msg::TransferTracker {
            src: self.shared.id,
            dst: dst.shared.id,
            reply,
        });
        wait.wait()
    }
}
