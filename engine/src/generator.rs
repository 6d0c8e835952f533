//! Definition generators: asked for names a dylib lacks, they may define
//! them (a host's own symbols, archive members, code compiled on demand).

use std::fmt;

use crate::actor::{AskedNames, Msg};
use crate::error::Error;
use crate::lookup::{DylibLookup, LookupKind};
use crate::name::SymbolName;
use crate::session::{Dylib, define_kind};
use crate::unit::MaterializationUnit;

/// Names a generator added to a dylib, for [`Dylib::remove_generator`](crate::Dylib::remove_generator).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct GeneratorId {
    pub(crate) dylib: u32,
    pub(crate) index: usize,
}

/// Defines symbols on demand.
///
/// `generate` runs as a task on the dispatcher, never on the state actor.
/// It may define into the request's dylib, may look other symbols up, and may
/// finish later: keep the [`GenerateRequest`] and call
/// [`GenerateRequest::complete`] when done (dropping it completes it with
/// success). Calls are serialized per generator unless
/// [`Generator::is_concurrent`] says otherwise; lookups that find a
/// serialized generator busy queue for it, and the queue always advances
/// (a lookup that no longer needs the generator when its turn comes —
/// cancelled, timed out, its names defined or missed meanwhile — passes its
/// turn on). Names a generator did not define are remembered and not asked
/// again until the dylib gains a new definition.
///
/// A concurrent generator is still never asked for one name by two calls at
/// once (per-name serialization): a lookup that needs a name a call in
/// flight is asking waits for that call to end, then finds the name defined
/// (or a miss). So a generator that defines the names it is asked for —
/// `request.dylib().define(…)` — never races another of its calls into
/// [`Error::DuplicateDefinitions`]. Names defined beyond those asked (say,
/// every symbol of an archive member) are not covered: a concurrent
/// generator that does so must expect duplicates, or be serialized.
pub trait Generator: Send + Sync + 'static {
    /// Try to define `request.names()` in `request.dylib()`.
    fn generate(&self, request: GenerateRequest);

    /// Whether several lookups may be inside `generate` at once (never two
    /// for the same name).
    fn is_concurrent(&self) -> bool {
        false
    }
}

/// One call of a generator: which names a lookup is missing, and the means
/// to say it is done.
pub struct GenerateRequest {
    pub(crate) dylib: Dylib,
    pub(crate) names: AskedNames,
    pub(crate) kind: LookupKind,
    pub(crate) visibility: DylibLookup,
    pub(crate) lookup: u64,
    pub(crate) generator: usize,
    pub(crate) completed: bool,
}

impl fmt::Debug for GenerateRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenerateRequest")
            .field("dylib", &self.dylib.name())
            .field("names", &self.names)
            .field("kind", &self.kind)
            .finish()
    }
}

impl GenerateRequest {
    /// The dylib to define into.
    pub fn dylib(&self) -> &Dylib {
        &self.dylib
    }

    /// The names the lookup is missing in this dylib.
    pub fn names(&self) -> &[SymbolName] {
        &self.names
    }

    /// Why the lookup is made.
    pub fn kind(&self) -> LookupKind {
        self.kind
    }

    /// Whether the lookup sees only exported symbols of this dylib.
    pub fn visibility(&self) -> DylibLookup {
        self.visibility
    }

    /// Finishes the call. An error fails the lookup that asked, with this
    /// error as its cause.
    pub fn complete(mut self, result: Result<(), Error>) {
        self.finish(result);
    }

    /// Defines `unit` in the request's dylib and finishes the call — what
    /// `dylib().define(unit)` then `complete(result)` do, in one step of the
    /// state actor when it is idle. A definition error is returned and fails
    /// the lookup that asked.
    pub fn complete_with(mut self, unit: impl MaterializationUnit) -> Result<(), Error> {
        let Some(kind) = define_kind(unit) else {
            self.finish(Ok(()));
            return Ok(());
        };
        let mut finished = false;
        let done = (
            self.lookup,
            self.dylib.id(),
            self.dylib.shared.default_tracker.id,
            self.generator,
            &mut self.names,
            kind,
        );
        let result = self.dylib.core.request(
            done,
            |state, core, (lookup, dylib, tracker, generator, names, kind), fx| {
                let defined = state.define(core, dylib, tracker, kind, fx);
                let asked = std::mem::take(names);
                state.generator_done(core, lookup, dylib, generator, asked, defined.clone(), fx);
                finished = true;
                defined
            },
            // Someone drives: the definition goes as a message, the
            // completion after it.
            |(_, dylib, tracker, _, _, kind), reply| Msg::Define {
                dylib,
                tracker,
                kind,
                reply,
            },
        );
        if finished {
            self.completed = true;
        } else {
            self.finish(result.clone());
        }
        result
    }

    fn finish(&mut self, result: Result<(), Error>) {
        if self.completed {
            return;
        }
        self.completed = true;
        let done = (
            self.lookup,
            self.dylib.id(),
            self.generator,
            std::mem::take(&mut self.names),
            result,
        );
        // Applied on this thread when nobody drives the mailbox (a generator
        // that completes synchronously, the common case), else queued.
        self.dylib.core.apply(
            done,
            |state, core, (lookup, dylib, generator, asked, result), fx| {
                state.generator_done(core, lookup, dylib, generator, asked, result, fx)
            },
            |(lookup, dylib, generator, asked, result)| Msg::GeneratorDone {
                lookup,
                dylib,
                generator,
                asked,
                result,
            },
        );
    }
}

impl Drop for GenerateRequest {
    fn drop(&mut self) {
        let result = if std::thread::panicking() {
            Err(Error::msg("the generator panicked"))
        } else {
            Ok(())
        };
        self.finish(result);
    }
}
