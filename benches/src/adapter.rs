//! The thin layer between the workloads and kiln's engine API.
//!
//! Everything that names a `kiln_engine` item lives here, so a change in the
//! engine's API is an edit of this file only. The workloads call these
//! functions inside and outside their timed regions exactly where the peer
//! calls the corresponding ORC functions.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kiln_engine::{
    DependenceGroup, DylibLookup, GenerateRequest, Generator, InPlaceDispatcher, LookupSet,
    MaterializationUnit, RequiredState, Responsibility, SymbolDef, SymbolFlags, WorkerPool,
    absolute_symbols,
};
pub use kiln_engine::{Dylib, SearchOrder, Session, SymbolName};

use crate::error::BenchError;
use crate::options::DispatcherKind;

fn engine_err(
    workload: &'static str,
    during: impl Into<String>,
    e: impl fmt::Display,
) -> BenchError {
    BenchError::Engine {
        workload,
        during: during.into(),
        message: e.to_string(),
    }
}

/// A fresh session with the chosen dispatcher.
pub fn new_session(kind: DispatcherKind) -> Session {
    match kind {
        DispatcherKind::InPlace => Session::builder()
            .dispatcher(InPlaceDispatcher::new())
            .build(),
        DispatcherKind::Pool { threads } => Session::builder()
            .dispatcher(WorkerPool::new(threads.get()))
            .build(),
    }
}

/// Ends the session (the peer's `endSession()`).
pub fn end_session(session: Session) {
    session.end();
}

/// Creates a dylib with no definitions (`createBareJITDylib`).
pub fn create_dylib(w: &'static str, session: &Session, name: &str) -> Result<Dylib, BenchError> {
    session
        .create_dylib(name)
        .map_err(|e| engine_err(w, format!("creating dylib `{name}`"), e))
}

/// Interns `"{prefix}{i}"` for i in 0..n.
pub fn intern_indexed(session: &Session, prefix: &str, n: usize) -> Vec<SymbolName> {
    (0..n)
        .map(|i| session.intern(&format!("{prefix}{i}")))
        .collect()
}

/// Defines `defs` as one absolute-symbols unit, all `EXPORTED`.
pub fn define_absolute(
    w: &'static str,
    dylib: &Dylib,
    defs: impl IntoIterator<Item = (SymbolName, u64)>,
) -> Result<(), BenchError> {
    dylib
        .define(absolute_symbols(
            defs.into_iter()
                .map(|(n, a)| (n, SymbolDef::new(a, SymbolFlags::EXPORTED))),
        ))
        .map_err(|e| engine_err(w, "defining absolute symbols", e))
}

/// A search order of `dylibs`, each matching exported symbols only.
pub fn exported_order(dylibs: &[&Dylib]) -> SearchOrder {
    dylibs.iter().fold(SearchOrder::new(), |o, d| {
        o.with(d, DylibLookup::ExportedOnly)
    })
}

/// Sets `main`'s link order to `libs` (exported only) and reads it back as
/// the search order a lookup from code in `main` uses, like the peer's
/// `setLinkOrder(.., LinkAgainstThisJITDylibFirst=true)` + `withLinkOrderDo`:
/// `[main (all symbols), libs...]`. Returns the order and its length.
pub fn link_order_search(
    w: &'static str,
    main: &Dylib,
    libs: &[&Dylib],
) -> Result<(SearchOrder, usize), BenchError> {
    let order: Vec<(Dylib, DylibLookup)> = libs
        .iter()
        .map(|d| ((*d).clone(), DylibLookup::ExportedOnly))
        .collect();
    main.set_link_order(&order)
        .map_err(|e| engine_err(w, "setting the link order", e))?;
    let order = main.link_order();
    let len = order.entries().len();
    Ok((order, len))
}

/// How W1, W2 and W7 — lookups of symbols already Ready — call kiln, named
/// in their JSON lines as `lookup_api` (`--lookup-api`): `positional` (default) is
/// `Session::lookup_defs`, kiln's batch lookup (names borrowed, answers by
/// position); `set` (`KILN_BENCH_LOOKUP=set`) builds a `LookupSet` and reads
/// a `SymbolMap`, the shape of ORC's API. The other workloads always use
/// the set.
pub fn lookup_api() -> &'static str {
    LOOKUP_API.get_or_init(|| match std::env::var("KILN_BENCH_LOOKUP").as_deref() {
        Ok("set") => "set",
        _ => "positional",
    })
}

static LOOKUP_API: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Chooses [`lookup_api`] for this process (`--lookup-api`); the first
/// choice — or the first use — stands.
pub fn set_lookup_api(api: &'static str) {
    let _ = LOOKUP_API.set(api);
}

/// One blocking lookup of `names` (all required) at Ready through a
/// `LookupSet`; checks that the result has exactly `names.len()` entries and
/// returns the wrapping sum of the returned addresses. Building the lookup
/// set is part of the call, as it is part of the peer's timed region.
#[inline]
pub fn lookup_sum(
    w: &'static str,
    session: &Session,
    order: &SearchOrder,
    names: &[SymbolName],
) -> Result<u64, BenchError> {
    let set = LookupSet::required(names.iter().cloned());
    let result = session
        .lookup(order, &set, RequiredState::Ready)
        .wait()
        .map_err(|e| engine_err(w, "lookup", e))?;
    checked_sum(w, names, result.len(), result.iter().map(|(_, d)| d))
}

/// [`lookup_sum`] through the API [`lookup_api`] names.
#[inline]
pub fn ready_lookup_sum(
    w: &'static str,
    session: &Session,
    order: &SearchOrder,
    names: &[SymbolName],
) -> Result<u64, BenchError> {
    if lookup_api() == "set" {
        return lookup_sum(w, session, order, names);
    }
    let defs = session
        .lookup_defs(order, names, RequiredState::Ready)
        .map_err(|e| engine_err(w, "lookup", e))?;
    checked_sum(w, names, defs.len(), defs.iter())
}

fn checked_sum<'a>(
    w: &'static str,
    names: &[SymbolName],
    count: usize,
    defs: impl Iterator<Item = &'a SymbolDef>,
) -> Result<u64, BenchError> {
    if count != names.len() {
        return Err(BenchError::check(
            w,
            format!("lookup of {} names returned {count} entries", names.len()),
        ));
    }
    Ok(defs.fold(0u64, |acc, d| acc.wrapping_add(d.address)))
}

// ---------------------------------------------------------------------------
// W3–W5: one unit per symbol
// ---------------------------------------------------------------------------

/// Instrumentation shared by the graph units of one rep.
#[derive(Debug)]
pub struct GraphStats {
    /// `materialize()` calls so far.
    pub ran: AtomicUsize,
    /// Index of the first unit whose `materialize()` ran (`usize::MAX` if none).
    pub first_index: AtomicUsize,
    /// Calls in flight now.
    current: AtomicUsize,
    /// Maximum calls in flight at once.
    pub max_concurrent: AtomicUsize,
    /// Units whose dependencies had all been emitted before they emitted.
    pub emitted_after_deps: AtomicUsize,
    emitted: Vec<AtomicBool>,
    /// The first error seen inside a unit.
    pub error: Mutex<Option<String>>,
}

impl GraphStats {
    /// Statistics for `n` units.
    pub fn new(n: usize) -> Self {
        GraphStats {
            ran: AtomicUsize::new(0),
            first_index: AtomicUsize::new(usize::MAX),
            current: AtomicUsize::new(0),
            max_concurrent: AtomicUsize::new(0),
            emitted_after_deps: AtomicUsize::new(0),
            emitted: (0..n).map(|_| AtomicBool::new(false)).collect(),
            error: Mutex::new(None),
        }
    }

    fn record_error(&self, msg: String) {
        if let Ok(mut e) = self.error.lock() {
            e.get_or_insert(msg);
        }
    }

    /// The first error recorded by a unit, if any.
    pub fn first_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }
}

/// The unit of one graph symbol: resolves its own symbol to a fixed address
/// and emits it with one dependence group naming its dependencies.
pub struct GraphUnit {
    name: SymbolName,
    address: u64,
    index: usize,
    deps: Vec<(Dylib, Vec<SymbolName>)>,
    dep_indices: Vec<usize>,
    stats: Arc<GraphStats>,
}

impl fmt::Debug for GraphUnit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphUnit")
            .field("name", &self.name.as_str())
            .field("index", &self.index)
            .finish()
    }
}

/// Defines the graph unit for symbol `index` in `dylib`. `deps` are
/// (dylib, names) groups, `dep_indices` the same dependencies as indices.
#[allow(clippy::too_many_arguments)] // reason: mirrors the peer's GraphMU constructor
pub fn define_graph_unit(
    w: &'static str,
    dylib: &Dylib,
    name: SymbolName,
    address: u64,
    index: usize,
    deps: Vec<(Dylib, Vec<SymbolName>)>,
    dep_indices: Vec<usize>,
    stats: Arc<GraphStats>,
) -> Result<(), BenchError> {
    dylib
        .define(GraphUnit {
            name,
            address,
            index,
            deps,
            dep_indices,
            stats,
        })
        .map_err(|e| engine_err(w, format!("defining unit {index}"), e))
}

impl MaterializationUnit for GraphUnit {
    fn name(&self) -> &str {
        "GraphUnit"
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        vec![(self.name.clone(), SymbolFlags::EXPORTED)]
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        let s = &*self.stats;
        let cur = s.current.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_concurrent.fetch_max(cur, Ordering::SeqCst);
        if s.ran.fetch_add(1, Ordering::SeqCst) == 0 {
            s.first_index.store(self.index, Ordering::SeqCst);
        }
        if let Err(e) = r.resolve(&[(
            self.name.clone(),
            SymbolDef::new(self.address, SymbolFlags::EXPORTED),
        )]) {
            s.record_error(format!("unit {}: resolve: {e}", self.index));
            s.current.fetch_sub(1, Ordering::SeqCst);
            return; // dropping `r` fails the symbol, so the lookup reports it
        }
        if self
            .dep_indices
            .iter()
            .all(|&j| s.emitted[j].load(Ordering::Acquire))
        {
            s.emitted_after_deps.fetch_add(1, Ordering::Relaxed);
        }
        let groups = if self.deps.is_empty() {
            Vec::new()
        } else {
            vec![DependenceGroup {
                symbols: vec![self.name.clone()],
                dependencies: self.deps,
            }]
        };
        match r.emit(groups) {
            Ok(()) => {
                if s.emitted[self.index].swap(true, Ordering::AcqRel) {
                    s.record_error(format!("unit {} materialized twice", self.index));
                }
            }
            Err(e) => s.record_error(format!("unit {}: emit: {e}", self.index)),
        }
        s.current.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// W6: a generator that defines "gen{i}" on demand
// ---------------------------------------------------------------------------

/// W6's generator: for every requested `"gen{i}"` defines an absolute symbol
/// at `base + 16*i`, all in one unit; other names stay undefined.
#[derive(Debug)]
pub struct IndexGenerator {
    base: u64,
    /// Calls so far.
    pub calls: AtomicUsize,
    error: Mutex<Option<String>>,
}

impl IndexGenerator {
    /// A generator for addresses `base + 16*i`.
    pub fn new(base: u64) -> Arc<Self> {
        Arc::new(IndexGenerator {
            base,
            calls: AtomicUsize::new(0),
            error: Mutex::new(None),
        })
    }

    /// The first error seen inside the generator, if any.
    pub fn first_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    fn address_of(&self, name: &str) -> Option<u64> {
        let digits = name.strip_prefix("gen")?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: u64 = digits.parse().ok()?;
        i.checked_mul(16)?.checked_add(self.base)
    }
}

/// Adds `generator` to `dylib`.
pub fn add_generator(
    w: &'static str,
    dylib: &Dylib,
    generator: Arc<IndexGenerator>,
) -> Result<(), BenchError> {
    dylib
        .add_generator(GeneratorHandle(generator))
        .map(|_| ())
        .map_err(|e| engine_err(w, "adding the generator", e))
}

#[derive(Debug)]
struct GeneratorHandle(Arc<IndexGenerator>);

impl Generator for GeneratorHandle {
    fn generate(&self, req: GenerateRequest) {
        let g = &*self.0;
        g.calls.fetch_add(1, Ordering::SeqCst);
        let defs: Vec<(SymbolName, SymbolDef)> = req
            .names()
            .iter()
            .filter_map(|n| {
                g.address_of(n.as_str())
                    .map(|a| (n.clone(), SymbolDef::new(a, SymbolFlags::EXPORTED)))
            })
            .collect();
        if defs.is_empty() {
            req.complete(Ok(()));
            return;
        }
        // One `define(absoluteSymbols(map))`, and the call is done; an error
        // fails the lookup that asked, with the define error as cause.
        if let Err(e) = req.complete_with(absolute_symbols(defs))
            && let Ok(mut slot) = g.error.lock()
        {
            slot.get_or_insert(format!("generator define: {e}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_parses_only_its_names() {
        let g = IndexGenerator::new(0x4000_0000);
        assert_eq!(g.address_of("gen0"), Some(0x4000_0000));
        assert_eq!(g.address_of("gen12"), Some(0x4000_00c0));
        assert_eq!(g.address_of("gen"), None);
        assert_eq!(g.address_of("gen+1"), None);
        assert_eq!(g.address_of("gen1x"), None);
        assert_eq!(g.address_of("sym1"), None);
        assert_eq!(g.address_of("gen99999999999999999999"), None);
    }
}
