//! kiln-engine: the concurrent materialization engine.
//!
//! A JIT host creates a [`Session`], [`Dylib`]s and definitions
//! ([`MaterializationUnit`]s, absolute symbols, reexports, [`Generator`]s);
//! many threads look symbols up ([`Session::lookup`]); units materialize on
//! worker threads ([`Dispatcher`]); a symbol's address is handed out at
//! [`RequiredState::Ready`] only when it, and everything it transitively
//! depends on, is emitted.
//!
//! # Map of the crate
//! - [`session`]: the handles a host holds — [`Session`], [`Dylib`].
//! - [`lookup`]: search orders, lookup sets, the [`Lookup`] handle (a
//!   `Future`, with blocking waits and a callback form).
//! - [`unit`](mod@unit) and [`responsibility`]: materialization units and what a running
//!   unit owes.
//! - [`generator`]: definition generators.
//! - [`qualified`]: a ready generator for modules that call each other
//!   through qualified names, loaded in any order.
//! - [`tracker`]: resource trackers and resource managers.
//! - [`lazy`]: lazy reexports — entries linked on their first call.
//! - [`dispatch`]: where user code runs.
//! - [`graph`]: the pure dependency graph deciding readiness.
//! - `actor` (private): the state actor, the one owner of mutable state.
//! - `index` (private): each dylib's Ready index, read by lookups without
//!   locks.
//! - `sync` (private): the only module naming synchronization primitives
//!   (std/dashmap, or loom under `--cfg kiln_loom`).
//!
//! # Example
//! ```
//! use kiln_engine::*;
//!
//! let session = Session::builder().dispatcher(InPlaceDispatcher::new()).build();
//! let lib = session.create_dylib("lib")?;
//! let f = session.intern("f");
//! lib.define(absolute_symbols([(f.clone(), SymbolDef::new(0x1000, SymbolFlags::EXPORTED))]))?;
//!
//! let order = SearchOrder::new().with(&lib, DylibLookup::ExportedOnly);
//! let found = session.lookup(&order, &LookupSet::required([f.clone()]), RequiredState::Ready).wait()?;
//! assert_eq!(found.get(&f).map(|d| d.address), Some(0x1000));
//! session.end();
//! # Ok::<(), kiln_engine::Error>(())
//! ```

#![deny(unsafe_code)]

mod actor;
pub mod dispatch;
mod error;
mod fork;
pub mod generator;
pub mod graph;
mod index;
pub mod lazy;
pub mod lookup;
mod name;
pub mod qualified;
pub mod responsibility;
pub mod session;
mod symbol;
mod sync;
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
mod timer;
pub mod tracker;
pub mod unit;

#[doc(hidden)]
pub use actor::TableSizes;
pub use dispatch::{Dispatcher, InPlaceDispatcher, Task, ThreadPerTask, WorkerPool};
pub use error::{Error, ExternalError, QualifiedName, Result, message_with_causes};
pub use fork::note_forked_child;
pub use generator::{GenerateRequest, Generator, GeneratorId};
pub use lazy::{LazyReexports, Redirector, TrampolineEmitter};
pub use lookup::{
    AwaitDefinitions, DylibLookup, FlagsMap, Lookup, LookupKind, LookupRequest, LookupSet,
    SearchOrder, SymbolLookup, SymbolMap,
};
pub use name::SymbolName;
pub use qualified::QualifiedNames;
pub use responsibility::{DependenceGroup, Responsibility};
pub use session::{Dylib, Session, SessionBuilder};
pub use symbol::{RequiredState, SymbolDef, SymbolFlags, SymbolState};
#[doc(hidden)]
#[cfg(not(any(kiln_loom, kiln_shuttle)))]
pub use timer::{on_timer_thread, pending_deadlines};
pub use tracker::{ResourceKey, ResourceManager, ResourceTracker};
pub use unit::{Alias, MaterializationUnit, absolute_symbols, reexports};

/// Compile-time proof that the public handles can cross threads.
const _: () = {
    const fn assert_handle<T: Clone + Send + Sync>() {}
    assert_handle::<Session>();
    assert_handle::<Dylib>();
    assert_handle::<ResourceTracker>();
    assert_handle::<SymbolName>();
    assert_handle::<SearchOrder>();
    assert_handle::<LookupSet>();
    assert_handle::<Error>();
    const fn assert_send<T: Send>() {}
    assert_send::<Lookup>();
    assert_send::<Responsibility>();
};
