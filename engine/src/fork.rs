//! Sessions in a forked child.
//!
//! `fork` copies a process with one thread: a session's worker pool, its
//! timer thread and any thread that was applying a request are not in the
//! child, and a request that waited for them would wait forever. So a
//! session answers every request made in a child of the process that
//! created it with [`Error::ForkedChild`](crate::Error::ForkedChild), at
//! once, its pools do not wait for threads the child does not have, and
//! dropping it there leaves what it owns (units, resource managers, the
//! code they keep) as `_exit` would: the parent's.
//! What needs no thread still works there: code linked before the fork
//! runs, and lookups the Ready index answers are still answered.
//!
//! kiln learns of a fork from [`note_forked_child`], called by a
//! `pthread_atfork` child handler: `kiln-linker` registers one when its
//! first object layer is made; a host of the engine alone registers its
//! own (the engine has no `unsafe` code to do it with).

use crate::sync::{Ordering, ProcessCounter};

/// Forks this process is a child of, as counted by [`note_forked_child`].
static FORKS: ProcessCounter = ProcessCounter::new(0);

/// Tells kiln this process was just forked: call it (it is
/// async-signal-safe) from a `pthread_atfork` child handler. Every session
/// and worker pool made before the fork then refuses to work in this
/// process.
pub fn note_forked_child() {
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// The forks counted so far: what a session records when it is made.
pub(crate) fn forks() -> u64 {
    FORKS.load(Ordering::Relaxed)
}
