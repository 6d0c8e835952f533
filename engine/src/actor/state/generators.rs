//! Generators: what happens when a generator call ends (misses recorded,
//! the asking lookup resumed, the next queued lookup started).

use super::State;
use crate::actor::{AskedNames, DylibId, Effects, SessionCore};
use crate::error::{Error, Result};
use crate::sync::Arc;

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
        let mut next = None;
        if let Some(entry) = d.generators.get_mut(generator) {
            entry.in_flight = entry.in_flight.saturating_sub(1);
            if result.is_ok() {
                for name in asked {
                    if d.shared.index.sym(&name).is_none() {
                        entry.misses.insert(name);
                    }
                }
            }
            next = entry.queue.pop_front();
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
        if let Some(next) = next {
            self.advance(core, next, fx);
        }
    }
}
