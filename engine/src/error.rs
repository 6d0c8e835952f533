//! Errors that explain themselves: every missing name and every duplicate in
//! one error, and failures that carry their root cause to every lookup that
//! waited on them.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use crate::name::SymbolName;

/// A symbol named together with the dylib that defines it.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct QualifiedName {
    /// The dylib's name.
    pub dylib: Arc<str>,
    /// The symbol's name.
    pub name: SymbolName,
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in dylib '{}'", self.name, self.dylib)
    }
}

/// Everything that can go wrong in the engine. Cheap to clone: one failure
/// reaches every lookup that waited on it.
///
/// Causes stay in the chain: [`Error::Failed`] and [`Error::Generator`]
/// return their cause from [`std::error::Error::source`] (their message
/// also quotes it), and an error from outside the engine
/// ([`Error::external`]) keeps its type — walk `source()` or call
/// [`Error::downcast_ref`] to get it back.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// User error: required names that no dylib in the search order defines.
    #[error("symbols not found: {}", join(names))]
    SymbolsNotFound {
        /// Every missing name, in request order.
        names: Vec<SymbolName>,
    },
    /// User error: a definition clashes with existing ones. The dylib is unchanged.
    #[error("duplicate definitions in dylib '{dylib}': {}", join(names))]
    DuplicateDefinitions {
        /// The dylib defined into.
        dylib: Arc<str>,
        /// Every clashing name.
        names: Vec<SymbolName>,
    },
    /// The symbols could not be materialized; `cause` is the root cause, and
    /// `via` the dependency through which the failure arrived, if any.
    #[error("failed to materialize {}{}: {cause}", join(symbols), via.as_ref().map(|v| format!(" (it depends on {v}, which failed)")).unwrap_or_default())]
    Failed {
        /// The symbols that failed.
        symbols: Vec<QualifiedName>,
        /// The dependency that carried the failure here, when it came from elsewhere.
        via: Option<QualifiedName>,
        /// The root cause.
        #[source]
        cause: Arc<Error>,
    },
    /// A materializer, generator or resource manager reported this.
    #[error("{0}")]
    Message(Arc<str>),
    /// A materialization unit panicked.
    #[error("materialization unit '{unit}' panicked: {message}")]
    Panicked {
        /// The unit's name.
        unit: Arc<str>,
        /// The panic payload, when it was a string.
        message: String,
    },
    /// Bug in a unit: its responsibility was dropped while it still owed symbols.
    #[error(
        "materialization unit '{unit}' dropped its responsibility without emitting or failing {}",
        join(symbols)
    )]
    Abandoned {
        /// The unit's name.
        unit: Arc<str>,
        /// What it still owed.
        symbols: Vec<SymbolName>,
    },
    /// The resource tracker owning the symbols was removed.
    #[error("resource tracker of dylib '{dylib}' was removed")]
    TrackerRemoved {
        /// The dylib the tracker belonged to.
        dylib: Arc<str>,
    },
    /// The dylib was removed from the session.
    #[error("dylib '{0}' was removed")]
    DylibRemoved(Arc<str>),
    /// A dylib with this name already exists.
    #[error("a dylib named '{0}' already exists")]
    DylibExists(Arc<str>),
    /// A definition generator was removed while the lookup waited for its
    /// turn in it.
    #[error("a definition generator of dylib '{dylib}' was removed while the lookup waited for it")]
    GeneratorRemoved {
        /// The dylib the generator belonged to.
        dylib: Arc<str>,
    },
    /// User error: `Dylib::remove_symbols` removed nothing, because some
    /// names are not defined in the dylib or are not removable yet.
    #[error(
        "cannot remove symbols from dylib '{dylib}':{}{}",
        if missing.is_empty() { String::new() } else { format!(" not defined: {}", join(missing)) },
        if materializing.is_empty() { String::new() } else { format!("{}still materializing: {}", if missing.is_empty() { " " } else { "; " }, join(materializing)) }
    )]
    SymbolsNotRemoved {
        /// The dylib.
        dylib: Arc<str>,
        /// Names being materialized (neither lazy nor Ready), in request order.
        materializing: Vec<SymbolName>,
        /// Names the dylib does not define, in request order.
        missing: Vec<SymbolName>,
    },
    /// A definition generator failed.
    #[error("definition generator of dylib '{dylib}' failed: {cause}")]
    Generator {
        /// The dylib whose generator failed.
        dylib: Arc<str>,
        /// What it reported.
        #[source]
        cause: Arc<Error>,
    },
    /// Blocking lookups inside materializers wait on each other in a cycle;
    /// waiting would hang forever.
    #[error("blocking lookups form a cycle: {}", cycle.join(" -> "))]
    BlockingCycle {
        /// The units and symbols in the cycle, in waiting order.
        cycle: Vec<String>,
    },
    /// Aliases of one reexports unit stand for each other in a cycle
    /// (`a → b → … → a`): none of them has an address.
    #[error("alias cycle in dylib '{dylib}': {}", cycle.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" -> "))]
    AliasCycle {
        /// The dylib the aliases are defined in.
        dylib: Arc<str>,
        /// The aliases in the cycle, in order, the first repeated at the end.
        cycle: Vec<SymbolName>,
    },
    /// A lookup's deadline passed.
    #[error(
        "lookup timed out after {millis} ms; still waiting for {}",
        join(waiting_for)
    )]
    Timeout {
        /// The wait that elapsed.
        millis: u128,
        /// What had not arrived.
        waiting_for: Vec<SymbolName>,
    },
    /// The lookup was cancelled.
    #[error("lookup cancelled")]
    Cancelled,
    /// User error: qualified names were asked of a module that was not
    /// registered in time ([`QualifiedNames`](crate::qualified::QualifiedNames)'s
    /// timeout).
    #[error(
        "module '{module}' was not registered within {millis} ms (needed for {})",
        join(names)
    )]
    ModuleNotRegistered {
        /// The module waited for.
        module: Arc<str>,
        /// The qualified names asked of it.
        names: Vec<SymbolName>,
        /// How long the call waited.
        millis: u128,
    },
    /// The wait for a module was cancelled
    /// ([`QualifiedNames::cancel`](crate::qualified::QualifiedNames::cancel)).
    #[error(
        "waiting for module '{module}' was cancelled (needed for {})",
        join(names)
    )]
    ModuleWaitCancelled {
        /// The module waited for.
        module: Arc<str>,
        /// The qualified names asked of it.
        names: Vec<SymbolName>,
    },
    /// User error: side-effects-only symbols have no address.
    #[error(
        "side-effects-only symbols have no address and can only be looked up weakly: {}",
        join(names)
    )]
    SideEffectsOnlyRequired {
        /// Every side-effects-only name the lookup required, in request order.
        names: Vec<SymbolName>,
    },
    /// User error: an API was used against its contract (the message says how).
    #[error("invalid use of the engine: {0}")]
    Usage(String),
    /// The session has ended.
    #[error("the session has ended")]
    SessionEnded,
    /// This process is a child forked from the one that made the session:
    /// the threads the session works with did not survive the fork (see
    /// [`crate::note_forked_child`]).
    #[error(
        "this process was forked from the one that made the session: its worker threads \
         are not here, so the session takes no request (code linked before the fork still runs)"
    )]
    ForkedChild,
    /// An error from outside the engine (a linker's, a host's), kept with
    /// its type: it is this error's `source()`, and
    /// [`Error::downcast_ref`] finds it.
    #[error("{0}")]
    External(#[source] ExternalError),
}

/// An error from outside the engine, shared (so [`Error`] stays cheap to
/// clone). Dereferences to the error itself, so its concrete type can be
/// recovered with `downcast_ref`.
#[derive(Clone)]
pub struct ExternalError(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Deref for ExternalError {
    type Target = dyn std::error::Error + Send + Sync + 'static;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl fmt::Debug for ExternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// The error's message followed by those of its sources that it does not
/// already quote — the engine's messages explain themselves in one line.
impl fmt::Display for ExternalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&message_with_causes(&*self.0))
    }
}

/// `e`'s message followed by each cause in its `source()` chain that the
/// message does not already quote, `: `-separated: what a user reads of an
/// error whose message leaves its reason to the chain (libloading's
/// "dlopen failed"), without repeating causes kiln's messages quote.
pub fn message_with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Error {
    /// An error carrying a message (for materializers and generators).
    pub fn msg(message: impl fmt::Display) -> Error {
        Error::Message(message.to_string().into())
    }

    /// Wraps an error from outside the engine, keeping its type (for
    /// materializers, generators and resource managers whose own errors are
    /// typed).
    pub fn external(error: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::External(ExternalError(Arc::new(error)))
    }

    /// The root cause: for [`Error::Failed`] and [`Error::Generator`], the
    /// innermost error; otherwise `self`.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Failed { cause, .. } | Error::Generator { cause, .. } => cause.root_cause(),
            other => other,
        }
    }

    /// The external error of type `T` this error carries as its root cause
    /// (or anywhere in that error's own `source()` chain), if any.
    pub fn downcast_ref<T: std::error::Error + 'static>(&self) -> Option<&T> {
        let Error::External(external) = self.root_cause() else {
            return None;
        };
        let mut next: Option<&(dyn std::error::Error + 'static)> = Some(&**external);
        while let Some(e) = next {
            if let Some(found) = e.downcast_ref::<T>() {
                return Some(found);
            }
            next = e.source();
        }
        None
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    const SHOWN: usize = 32;
    let mut out = String::new();
    for (i, item) in items.iter().take(SHOWN).enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&item.to_string());
    }
    if items.len() > SHOWN {
        out.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    out
}

/// Result with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
