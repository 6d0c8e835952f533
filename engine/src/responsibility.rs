//! What a running materialization unit owes, and the calls that pay it off.

use std::cell::RefCell;
use std::fmt;

use crate::actor::{Msg, Reply, RespId, SessionCore, UnitCell};
use crate::error::{Error, Result};
use crate::name::SymbolName;
use crate::session::Dylib;
use crate::symbol::{SymbolDef, SymbolFlags};
use crate::sync::{Arc, thread_local_const};
use crate::tracker::ResourceTracker;
use crate::unit::{Batched, MaterializationUnit};

/// Symbols emitted together and the symbols they depend on. A symbol becomes
/// Ready only when it and everything it transitively depends on are emitted.
#[derive(Clone, Debug, Default)]
pub struct DependenceGroup {
    /// Symbols of the emitting unit (in its dylib).
    pub symbols: Vec<SymbolName>,
    /// What they depend on, per dylib.
    pub dependencies: Vec<(Dylib, Vec<SymbolName>)>,
}

impl DependenceGroup {
    /// A group of `symbols` depending on `dependencies`.
    pub fn new(
        symbols: impl IntoIterator<Item = SymbolName>,
        dependencies: impl IntoIterator<Item = (Dylib, Vec<SymbolName>)>,
    ) -> Self {
        DependenceGroup {
            symbols: symbols.into_iter().collect(),
            dependencies: dependencies.into_iter().collect(),
        }
    }
}

/// The obligation of a running unit: resolve, then emit, every symbol it
/// owns — or fail them. Dropping it with symbols still owed fails them with
/// [`Error::Abandoned`] (or [`Error::Panicked`] when a panic unwound through
/// it), so nothing ever waits on a unit that is gone.
pub struct Responsibility {
    pub(crate) core: Arc<SessionCore>,
    pub(crate) id: RespId,
    pub(crate) dylib: Dylib,
    pub(crate) tracker: ResourceTracker,
    pub(crate) unit_name: Arc<str>,
    pub(crate) finished: bool,
}

impl fmt::Debug for Responsibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responsibility")
            .field("unit", &self.unit_name)
            .field("dylib", &self.dylib.name())
            .finish()
    }
}

thread_local_const! {
    /// Responsibilities being materialized on this thread, innermost last.
    static MATERIALIZING: RefCell<Vec<RespId>> = RefCell::new(Vec::new());
}
thread_local_const! {
    /// Responsibilities dropped while this thread was unwinding: the task
    /// wrapper that catches the panic fails them with its message.
    static DROPPED_IN_PANIC: RefCell<Vec<(RespId, Arc<str>)>> = RefCell::new(Vec::new());
}

/// The responsibility whose `materialize` is running on this thread.
pub(crate) fn current_materialization() -> Option<RespId> {
    // Thread-locals may already be destroyed (e.g. in an `atexit` hook).
    MATERIALIZING
        .try_with(|m| m.borrow().last().copied())
        .ok()
        .flatten()
}

/// The responsibilities whose `materialize` is running on this thread,
/// outermost first: each is stuck until the ones after it return.
pub(crate) fn materialization_stack() -> Vec<RespId> {
    MATERIALIZING
        .try_with(|m| m.borrow().clone())
        .unwrap_or_default()
}

/// Runs a unit's `materialize` as the body of a task: records the
/// materialization context (for blocking-cycle detection) and turns a panic
/// into a failure that carries the panic message.
pub(crate) fn run_materialization(cell: UnitCell, responsibility: Responsibility) {
    cell.take_then(move |unit| match unit {
        Some(unit) => materialize_alone(unit, responsibility),
        None => consumed(responsibility),
    });
}

/// Runs the units of a batch (started together, with one batch key) in
/// this task: those the engine can hand over now go to the first one's
/// `materialize_batch`; a unit out having discards delivered runs alone
/// when they are (as [`run_materialization`]).
pub(crate) fn run_batch_materialization(members: Vec<(UnitCell, Responsibility)>) {
    let mut batch = Vec::with_capacity(members.len());
    for (cell, responsibility) in members {
        match cell.try_take() {
            Ok(Some(unit)) => batch.push(Batched {
                unit,
                responsibility,
            }),
            Ok(None) => consumed(responsibility),
            Err(cell) => run_materialization(cell, responsibility),
        }
    }
    if batch.len() <= 1 {
        for Batched {
            unit,
            responsibility,
        } in batch
        {
            materialize_alone(unit, responsibility);
        }
        return;
    }
    let first = batch.remove(0);
    let ids: Vec<RespId> = std::iter::once(first.responsibility.id)
        .chain(batch.iter().map(|b| b.responsibility.id))
        .collect();
    let core = first.responsibility.core.clone();
    in_context(&core, &ids, move || {
        first.unit.materialize_batch(first.responsibility, batch)
    });
}

/// Runs one unit's `materialize` in its materialization context.
pub(crate) fn materialize_alone(
    unit: Box<dyn MaterializationUnit>,
    responsibility: Responsibility,
) {
    let core = responsibility.core.clone();
    let id = responsibility.id;
    in_context(&core, &[id], move || unit.materialize(responsibility));
}

fn consumed(responsibility: Responsibility) {
    let unit_name = responsibility.unit_name.clone();
    responsibility.fail(Error::Usage(format!(
        "materialization unit '{unit_name}' was already consumed"
    )));
}

/// Runs `body`, which materializes the responsibilities `ids`, with them on
/// this thread's materialization stack; a panic fails whichever of them
/// it dropped, each with the panic's message and its own unit's name.
fn in_context(core: &Arc<SessionCore>, ids: &[RespId], body: impl FnOnce()) {
    let _ = MATERIALIZING.try_with(|m| m.borrow_mut().extend_from_slice(ids));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body));
    let _ = MATERIALIZING.try_with(|m| {
        let mut m = m.borrow_mut();
        let len = m.len().saturating_sub(ids.len());
        m.truncate(len);
    });
    if let Err(payload) = outcome {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a non-string panic payload".to_string());
        let dropped = DROPPED_IN_PANIC
            .try_with(|d| std::mem::take(&mut *d.borrow_mut()))
            .unwrap_or_default();
        for (resp, unit) in dropped {
            core.send(Msg::Fail {
                resp,
                cause: Error::Panicked {
                    unit,
                    message: message.clone(),
                },
            });
        }
    }
}

impl Responsibility {
    /// The dylib the unit defines into.
    pub fn dylib(&self) -> &Dylib {
        &self.dylib
    }

    /// The tracker that owns what this unit produces. Register resources
    /// with [`ResourceTracker::with_resource_key`].
    pub fn tracker(&self) -> &ResourceTracker {
        &self.tracker
    }

    /// The unit's name.
    pub fn unit_name(&self) -> &str {
        &self.unit_name
    }

    /// The symbols still owed, with their flags.
    pub fn symbols(&self) -> Result<Vec<(SymbolName, SymbolFlags)>> {
        self.core.request(
            self.id,
            |st, _, resp, _| st.owed(resp, false),
            |resp, reply| Msg::Owed {
                resp,
                requested_only: false,
                reply,
            },
        )
    }

    /// The owed symbols that some lookup is waiting for (materialize only
    /// those and hand the rest back with [`Responsibility::replace`]).
    pub fn requested(&self) -> Result<Vec<SymbolName>> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::Owed {
            resp: self.id,
            requested_only: true,
            reply,
        });
        Ok(wait.wait()?.into_iter().map(|(n, _)| n).collect())
    }

    /// Gives owed symbols their addresses (may be called several times, on
    /// subsets). Lookups that need only `Resolved` complete now.
    pub fn resolve(&self, defs: &[(SymbolName, SymbolDef)]) -> Result<()> {
        self.core.request(
            self.id,
            |st, _, resp, fx| st.resolve(resp, defs, fx),
            |resp, reply| Msg::Resolve {
                resp,
                defs: defs.to_vec(),
                reply,
            },
        )
    }

    /// Declares every owed symbol emitted (memory final), with what each
    /// group depends on; owed symbols in no group depend on nothing. Every
    /// owed symbol with an address must have been resolved. A dependency
    /// that already failed fails the emitter with that cause.
    pub fn emit(mut self, groups: Vec<DependenceGroup>) -> Result<()> {
        self.finished = true;
        self.core.request(
            (self.id, groups),
            |st, core, (resp, groups), fx| st.emit(core, resp, groups, fx),
            |(resp, groups), reply| Msg::Emit {
                resp,
                groups,
                reply,
            },
        )
    }

    /// Fails every symbol still owed, and everything waiting on them, with
    /// `cause` as the root cause.
    pub fn fail(mut self, cause: Error) {
        self.finished = true;
        self.core.send(Msg::Fail {
            resp: self.id,
            cause,
        });
    }

    /// Hands the symbols of `unit` (a subset of those owed) back to the dylib,
    /// lazy again; if a lookup already waits for one, `unit` starts at once.
    pub fn replace(&mut self, unit: impl MaterializationUnit) -> Result<()> {
        let symbols = unit.symbols();
        let unit_name: Arc<str> = unit.name().into();
        let (reply, wait) = Reply::new();
        self.core.send(Msg::Replace {
            resp: self.id,
            unit: UnitCell::new(Box::new(unit)),
            unit_name,
            symbols,
            reply,
        });
        wait.wait()
    }

    /// Splits off the responsibility for `names` (owed by this one), to be
    /// materialized separately.
    pub fn delegate(&mut self, names: &[SymbolName]) -> Result<Responsibility> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::Delegate {
            resp: self.id,
            names: names.to_vec(),
            reply,
        });
        let id = wait.wait()?;
        Ok(Responsibility {
            core: self.core.clone(),
            id,
            dylib: self.dylib.clone(),
            tracker: self.tracker.clone(),
            unit_name: self.unit_name.clone(),
            finished: false,
        })
    }

    /// Takes over what `others` owe (responsibilities of the same dylib
    /// and tracker — the other units of a batch): from now on this one
    /// resolves, emits or fails those symbols too, and can emit them all
    /// in one group. The inverse of [`Responsibility::delegate`]. All or
    /// none: on an error the symbols of every one of `others` fail with it.
    pub fn absorb(&mut self, others: Vec<Responsibility>) -> Result<()> {
        let ids: Vec<RespId> = others.iter().map(|r| r.id).collect();
        let result = self.core.request(
            (self.id, ids),
            |st, _, (resp, ids), _| st.absorb(resp, &ids),
            |(resp, others), reply| Msg::Absorb {
                resp,
                others,
                reply,
            },
        );
        for mut other in others {
            match &result {
                Ok(()) => other.finished = true,
                Err(e) => other.fail(e.clone()),
            }
        }
        result
    }

    /// Adds symbols that this unit discovered it defines (e.g. weak
    /// definitions in an object); they start out Materializing and owed by
    /// this responsibility. A clash with a strong definition is an error
    /// listing every clash; a clashing weak one is dropped silently.
    pub fn define_materializing(
        &mut self,
        symbols: Vec<(SymbolName, SymbolFlags)>,
    ) -> Result<Vec<SymbolName>> {
        let (reply, wait) = Reply::new();
        self.core.send(Msg::DefineMaterializing {
            resp: self.id,
            symbols,
            reply,
        });
        wait.wait()
    }
}

impl Drop for Responsibility {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        if std::thread::panicking() && current_materialization().is_some() {
            // The enclosing task wrapper knows the panic message.
            if DROPPED_IN_PANIC
                .try_with(|d| d.borrow_mut().push((self.id, self.unit_name.clone())))
                .is_ok()
            {
                return;
            }
        }
        let cause = if std::thread::panicking() {
            Error::Panicked {
                unit: self.unit_name.clone(),
                message: "panicked on a thread outside kiln's tasks".into(),
            }
        } else {
            Error::Abandoned {
                unit: self.unit_name.clone(),
                symbols: Vec::new(),
            }
        };
        self.core.send(Msg::Fail {
            resp: self.id,
            cause,
        });
    }
}
