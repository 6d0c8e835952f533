//! Errors that explain themselves: every missing name and every duplicate in
//! one error, and failures that carry their root cause to every lookup that
//! waited on them.

use std::fmt;
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
    /// A definition generator failed.
    #[error("definition generator of dylib '{dylib}' failed: {cause}")]
    Generator {
        /// The dylib whose generator failed.
        dylib: Arc<str>,
        /// What it reported.
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
    /// User error: a side-effects-only symbol has no address.
    #[error("{0} is side-effects-only: it has no address and can only be looked up weakly")]
    SideEffectsOnlyRequired(SymbolName),
    /// User error: an API was used against its contract (the message says how).
    #[error("invalid use of the engine: {0}")]
    Usage(String),
    /// The session has ended.
    #[error("the session has ended")]
    SessionEnded,
}

impl Error {
    /// An error carrying a message (for materializers and generators).
    pub fn msg(message: impl fmt::Display) -> Error {
        Error::Message(message.to_string().into())
    }

    /// The root cause: for [`Error::Failed`] and [`Error::Generator`], the
    /// innermost error; otherwise `self`.
    pub fn root_cause(&self) -> &Error {
        match self {
            Error::Failed { cause, .. } | Error::Generator { cause, .. } => cause.root_cause(),
            other => other,
        }
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
