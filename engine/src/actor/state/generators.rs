//! Generators: asking a dylib's generators for the names a lookup is
//! missing, the serialized generators' queues, and what happens when a
//! generator call ends (misses recorded, the asking lookup resumed, the
//! queue advanced).
//!
//! A serialized generator runs one call at a time; lookups that find it
//! busy wait in its `queue`. The queue's invariant: **a serialized
//! generator with a non-empty queue has a call in flight**. So the queue
//! is resumed whenever a call ends, and resuming does not stop at the first
//! lookup popped: that lookup may no longer need the generator (its names
//! were defined meanwhile or are cached misses, it was cancelled, timed out
//! or failed), and then the next one is popped, until one takes the
//! generator or the queue is empty. Ids of lookups that are gone stay in the
//! queue until popped and are skipped then.
//!
//! A concurrent generator runs calls at once, but never two calls for one
//! name (per-name serialization): a lookup that would ask it for a name a
//! call in flight is asking (`asking`) waits in its queue instead, and every
//! queued lookup is retried when a call ends — by then the name is defined
//! or a cached miss, so it is not asked twice and no race between two calls
//! can turn into a duplicate definition. The same invariant holds: a lookup
//! queues only behind a call in flight.

use smallvec::SmallVec;

use super::{DylibState, PendingLookup, State};
use crate::actor::{AskedNames, DylibId, Effect, Effects, SessionCore};
use crate::dispatch::Task;
use crate::error::{Error, Result};
use crate::generator::GenerateRequest;
use crate::lookup::DylibLookup;
use crate::session::Dylib;
use crate::sync::Arc;

/// Asks `d`'s generators, from the lookup's `next_gen` on, for the names
/// at `missing` (indices into the lookup's names). Returns whether the
/// lookup is suspended: a generator call was dispatched for it, or it
/// waits in a serialized generator's queue. Returns false when no
/// generator needs asking (all remaining ones have the names as misses).
pub(super) fn ask_generators(
    core: &Arc<SessionCore>,
    id: u64,
    lk: &mut PendingLookup,
    d: &mut DylibState,
    visibility: DylibLookup,
    missing: &SmallVec<[usize; 4]>,
    fx: &mut Effects,
) -> bool {
    while lk.next_gen < d.generators.len() {
        let g = lk.next_gen;
        let entry = &mut d.generators[g];
        if entry.removed {
            lk.next_gen += 1;
            continue;
        }
        // Pushed one by one: collecting a filtered iterator into a
        // small vector costs more than the usual single name.
        let mut ask = AskedNames::new();
        for &i in missing {
            let name = &lk.names[i].0;
            if !entry.misses.contains(name) {
                ask.push(name.clone());
            }
        }
        if ask.is_empty() {
            lk.next_gen += 1;
            continue;
        }
        let busy = if entry.concurrent {
            ask.iter().any(|n| entry.asking.contains(n))
        } else {
            entry.in_flight > 0
        };
        if busy {
            // Wait for the call in flight (serialized: for our turn), then
            // retry this generator: it resumes the queue when it ends.
            entry.queue.push_back(id);
            return true;
        }
        entry.in_flight += 1;
        if entry.concurrent {
            entry.asking.extend(ask.iter().cloned());
        }
        lk.next_gen += 1;
        let request = GenerateRequest {
            dylib: Dylib::from_shared(core.clone(), d.shared.clone()),
            names: ask,
            kind: lk.kind,
            visibility,
            lookup: id,
            generator: g,
            completed: false,
        };
        fx.push(Effect::Dispatch(Task::generate(
            entry.generator.clone(),
            request,
        )));
        return true;
    }
    false
}

impl State {
    #[allow(clippy::too_many_arguments)] // one message's fields, unpacked
    pub(crate) fn generator_done(
        &mut self,
        core: &Arc<SessionCore>,
        lookup: u64,
        dylib: DylibId,
        generator: usize,
        asked: AskedNames,
        result: Result<()>,
        fx: &mut Effects,
    ) {
        let d = &mut self.dylibs[dylib as usize];
        if let Some(entry) = d.generators.get_mut(generator) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if entry.concurrent {
                for name in &asked {
                    entry.asking.remove(name);
                }
            }
            if result.is_ok() {
                for name in asked {
                    if d.shared.index.sym(&name).is_none() {
                        entry.misses.insert(name);
                    }
                }
            }
        }
        // Either does nothing if the lookup is gone (cancelled, failed).
        match result {
            Ok(()) => self.advance(core, lookup, fx),
            Err(cause) if self.lookups.contains_key(&lookup) => {
                let dylib = d.shared.name.clone();
                let cause = Arc::new(cause);
                self.fail_lookup(lookup, Error::Generator { dylib, cause }, fx)
            }
            Err(_) => {}
        }
        self.resume_queue(core, dylib, generator, fx);
    }

    /// Hands a serialized generator to queued lookups while it is free:
    /// pops and advances them one by one until one takes it (a call is in
    /// flight again) or the queue is empty. A popped lookup that is gone, or
    /// no longer needs this generator, moves on (or finishes) without it,
    /// and the next one is popped. A concurrent generator's queue is retried
    /// whole: each lookup asks, or queues again behind another call.
    fn resume_queue(
        &mut self,
        core: &Arc<SessionCore>,
        dylib: DylibId,
        generator: usize,
        fx: &mut Effects,
    ) {
        loop {
            let Some(entry) = self.dylibs[dylib as usize].generators.get_mut(generator) else {
                // The dylib was removed: its lookups failed with it.
                return;
            };
            if entry.concurrent {
                let retry = std::mem::take(&mut entry.queue);
                for id in retry {
                    self.advance(core, id, fx);
                }
                return;
            }
            if entry.in_flight > 0 {
                return;
            }
            let Some(next) = entry.queue.pop_front() else {
                return;
            };
            self.advance(core, next, fx);
        }
    }
}
