//! The deadlines of lookups that await definitions for a while
//! ([`crate::lookup::AwaitDefinitions::For`]): one thread for the whole
//! process sleeps until the earliest and cancels that lookup, instead of a
//! thread per lookup (a host with thousands of timed lookups had thousands
//! of sleeping threads, each until its full timeout, and a lookup whose
//! thread could not start never timed out).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant};

use crate::actor::{Msg, SessionCore};

/// One lookup's deadline.
struct Deadline {
    at: Instant,
    /// Orders deadlines at the same instant (first asked, first cancelled).
    seq: u64,
    core: Weak<SessionCore>,
    lookup: u64,
    timeout: Duration,
}

impl Deadline {
    fn key(&self) -> (Instant, u64) {
        (self.at, self.seq)
    }

    /// Cancels the lookup if its session still exists (a lookup complete
    /// by now ignores it).
    fn fire(self) {
        if let Some(core) = self.core.upgrade() {
            core.send(Msg::Cancel {
                lookup: self.lookup,
                timeout_millis: Some(self.timeout.as_millis()),
            });
        }
    }
}

impl PartialEq for Deadline {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Deadline {}
impl PartialOrd for Deadline {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deadline {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

#[derive(Default)]
struct Timers {
    /// Earliest first.
    deadlines: Mutex<(BinaryHeap<Reverse<Deadline>>, u64)>,
    changed: Condvar,
}

/// The process's timers, with their thread started; `None` if it cannot
/// start (a thread limit).
fn timers() -> Option<&'static Arc<Timers>> {
    static TIMERS: OnceLock<Option<Arc<Timers>>> = OnceLock::new();
    TIMERS
        .get_or_init(|| {
            let timers = Arc::new(Timers::default());
            let run = timers.clone();
            std::thread::Builder::new()
                .name("kiln-lookup-timer".into())
                .spawn(move || run.run())
                .ok()
                .map(|_| timers)
        })
        .as_ref()
}

impl Timers {
    /// Sleeps until the earliest deadline, cancels its lookup, and so on,
    /// for the life of the process.
    fn run(&self) {
        let mut guard = self.lock();
        loop {
            let now = Instant::now();
            let wait = match guard.0.peek() {
                None => None,
                Some(Reverse(d)) if d.at <= now => {
                    let Some(Reverse(due)) = guard.0.pop() else {
                        continue;
                    };
                    // The session's mailbox may run work: not under the lock.
                    drop(guard);
                    due.fire();
                    guard = self.lock();
                    continue;
                }
                Some(Reverse(d)) => Some(d.at - now),
            };
            guard = match wait {
                None => (self.changed.wait(guard)).unwrap_or_else(PoisonError::into_inner),
                Some(wait) => {
                    let waited = self.changed.wait_timeout(guard, wait);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }

    #[allow(clippy::type_complexity)]
    fn lock(&self) -> std::sync::MutexGuard<'_, (BinaryHeap<Reverse<Deadline>>, u64)> {
        self.deadlines
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Cancels `lookup` of `core`'s session after `timeout` (an error that
/// names the timeout), unless it completes first. Without a timer thread
/// (none could start) it is cancelled at once: it fails rather than wait
/// forever. A timeout too long for an `Instant` never fires.
pub(crate) fn cancel_after(core: &Arc<SessionCore>, lookup: u64, timeout: Duration) {
    // Beyond what an `Instant` can hold: never.
    let Some(at) = Instant::now().checked_add(timeout) else {
        return;
    };
    let deadline = |seq| Deadline {
        at,
        seq,
        core: Arc::downgrade(core),
        lookup,
        timeout,
    };
    let Some(timers) = timers() else {
        return deadline(0).fire();
    };
    let mut guard = timers.lock();
    let seq = guard.1;
    guard.1 += 1;
    guard.0.push(Reverse(deadline(seq)));
    drop(guard);
    timers.changed.notify_one();
}
