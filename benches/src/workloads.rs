//! W1–W7 of the peer README, implemented literally against kiln.
//!
//! Each workload is a config struct whose `rep` method runs one repetition on
//! a fresh session and returns its [`Rep`] (timed phase, CPU time of the
//! timed phase, secondary phases, per-rep info). [`run`] repeats a workload
//! as the command line says and assembles the [`Report`]; the criterion
//! benches call `rep` directly and use [`Rep::main`].
//!
//! The Common rules hold everywhere: names are interned before timing, the
//! search order is built before timing, building the lookup set is inside
//! the timed region, every timed lookup's result size is checked, its
//! addresses are summed inside the timed loop and compared after it, and any
//! mismatch is an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::adapter::{self, Dylib, GraphStats, IndexGenerator, SymbolName};
use crate::deps::{Dependencies, GraphShape, published_fingerprint};
use crate::error::BenchError;
use crate::measure::cpu_seconds;
use crate::options::{DispatcherKind, Options, Workload};
use crate::report::{Json, Rep, Report};
use crate::w8::{W8, W8Dispatcher, per_call_ns};

/// W1/W7 address base: `sym{i}` is at `W1_BASE + 16*i`.
pub const W1_BASE: u64 = 0x1000_0000;
/// W2 address base: `l{l}_{i}` is at `W2_BASE + W2_LIB_STRIDE*l + 16*i`.
pub const W2_BASE: u64 = 0x2000_0000;
/// W2 distance between libs' address ranges.
pub const W2_LIB_STRIDE: u64 = 0x100_0000;
/// W3–W5 address base: symbol i is at `GRAPH_BASE + 16*i`.
pub const GRAPH_BASE: u64 = 0x3000_0000;
/// W6 address base: `gen{i}` is at `W6_BASE + 16*i`.
pub const W6_BASE: u64 = 0x4000_0000;

fn addr(base: u64, i: usize) -> u64 {
    base.wrapping_add(16u64.wrapping_mul(i as u64))
}

fn sum_addrs(base: u64, n: usize) -> u64 {
    (0..n).fold(0u64, |s, i| s.wrapping_add(addr(base, i)))
}

fn secs_between(a: Instant, b: Instant) -> Duration {
    b.saturating_duration_since(a)
}

fn mismatch(w: &'static str, what: &str, got: u64, want: u64) -> BenchError {
    BenchError::check(
        w,
        format!("{what}: address sum {got:#x}, expected {want:#x}"),
    )
}

/// Looks up `names` in batches of `b` and sums the addresses, through
/// `lookup` (one of the adapter's lookup functions).
fn batched_lookups(
    w: &'static str,
    session: &adapter::Session,
    order: &adapter::SearchOrder,
    names: &[SymbolName],
    b: usize,
    lookup: LookupFn,
) -> Result<u64, BenchError> {
    let mut sum = 0u64;
    for chunk in names.chunks(b) {
        sum = sum.wrapping_add(lookup(w, session, order, chunk)?);
    }
    Ok(sum)
}

/// The adapter's `lookup_sum` or `ready_lookup_sum`.
type LookupFn = fn(
    &'static str,
    &adapter::Session,
    &adapter::SearchOrder,
    &[SymbolName],
) -> Result<u64, BenchError>;

/// W1's and W2's timed phase and report: batched lookups of `names` through
/// `order`, checked against `expected`, then the session's teardown. `t0`
/// and `t1` mark the starts of the define and warm-up phases before it.
#[allow(clippy::too_many_arguments)] // one workload's state, handed over whole
fn timed_lookups(
    w: &'static str,
    session: adapter::Session,
    order: &adapter::SearchOrder,
    names: &[SymbolName],
    b: usize,
    expected: u64,
    t0: Instant,
    t1: Instant,
) -> Result<Rep, BenchError> {
    let t2 = Instant::now();
    let c0 = cpu_seconds();
    let sum = batched_lookups(w, &session, order, names, b, adapter::ready_lookup_sum)?;
    let t3 = Instant::now();
    let cpu = cpu_seconds() - c0;
    if sum != expected {
        return Err(mismatch(w, "timed lookups", sum, expected));
    }
    adapter::end_session(session);
    let t4 = Instant::now();
    let main = secs_between(t2, t3);
    Ok(Rep {
        main,
        main_cpu_s: cpu,
        phases: vec![
            ("define", secs_between(t0, t1)),
            ("warmup_lookup_all", secs_between(t1, t2)),
            ("teardown", secs_between(t3, t4)),
        ],
        info: vec![(
            "lookup_calls_per_sec",
            names.len().div_ceil(b) as f64 / main.as_secs_f64(),
        )],
    })
}

// ---------------------------------------------------------------------------
// W1 lookup-ready
// ---------------------------------------------------------------------------

/// W1 lookup-ready: N absolute symbols in one dylib, looked up in batches of B.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W1 {
    /// Number of symbols (peer default 100 000).
    pub n: usize,
    /// Batch size (1 and 100 in the matrix).
    pub b: usize,
}

impl W1 {
    /// One repetition on a fresh session.
    pub fn rep(&self, d: DispatcherKind) -> Result<Rep, BenchError> {
        const W: &str = "w1";
        let (n, b) = (self.n, self.b.max(1));
        let expected = sum_addrs(W1_BASE, n);
        let session = adapter::new_session(d);
        let jd = adapter::create_dylib(W, &session, "main")?;
        let names = adapter::intern_indexed(&session, "sym", n);
        let order = adapter::exported_order(&[&jd]);

        let t0 = Instant::now();
        adapter::define_absolute(
            W,
            &jd,
            names
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), addr(W1_BASE, i))),
        )?;
        let t1 = Instant::now();
        let warm = adapter::lookup_sum(W, &session, &order, &names)?;
        if warm != expected {
            return Err(mismatch(W, "warm-up lookup", warm, expected));
        }
        timed_lookups(W, session, &order, &names, b, expected, t0, t1)
    }
}

// ---------------------------------------------------------------------------
// W2 lookup-linkorder
// ---------------------------------------------------------------------------

/// W2 lookup-linkorder: lookups through a 17-entry search order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W2 {
    /// Number of libs (default 16).
    pub libs: usize,
    /// Symbols per lib (default 10 000).
    pub per_lib: usize,
    /// Number of queries (default 100 000).
    pub lookups: usize,
    /// Batch size.
    pub b: usize,
}

impl W2 {
    fn validate(&self) -> Result<(), BenchError> {
        if self.libs == 0 || self.lookups.div_ceil(self.libs) > self.per_lib {
            return Err(BenchError::Params {
                workload: "w2",
                what: format!(
                    "lookups/libs must be <= per-lib (lookups {}, libs {}, per-lib {})",
                    self.lookups, self.libs, self.per_lib
                ),
            });
        }
        Ok(())
    }

    /// One repetition on a fresh session.
    pub fn rep(&self, d: DispatcherKind) -> Result<Rep, BenchError> {
        const W: &str = "w2";
        self.validate()?;
        let (l_count, k, q, b) = (self.libs, self.per_lib, self.lookups, self.b.max(1));
        let session = adapter::new_session(d);
        let main_jd = adapter::create_dylib(W, &session, "main")?;
        let mut libs = Vec::with_capacity(l_count);
        let mut lib_names = Vec::with_capacity(l_count);
        for l in 0..l_count {
            libs.push(adapter::create_dylib(W, &session, &format!("lib{l}"))?);
            lib_names.push(adapter::intern_indexed(&session, &format!("l{l}_"), k));
        }
        let lib_addr = |l: usize, i: usize| {
            W2_BASE
                .wrapping_add(W2_LIB_STRIDE.wrapping_mul(l as u64))
                .wrapping_add(16 * i as u64)
        };
        let mut query = Vec::with_capacity(q);
        let mut expected = 0u64;
        for qi in 0..q {
            let (l, i) = (qi % l_count, qi / l_count);
            query.push(lib_names[l][i].clone());
            expected = expected.wrapping_add(lib_addr(l, i));
        }

        let t0 = Instant::now();
        for (l, (lib, names)) in libs.iter().zip(&lib_names).enumerate() {
            adapter::define_absolute(
                W,
                lib,
                names
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (s.clone(), lib_addr(l, i))),
            )?;
        }
        let lib_refs: Vec<&Dylib> = libs.iter().collect();
        let (order, order_len) = adapter::link_order_search(W, &main_jd, &lib_refs)?;
        if order_len != l_count + 1 {
            return Err(BenchError::check(
                W,
                format!(
                    "search order has {order_len} entries, expected {}",
                    l_count + 1
                ),
            ));
        }
        let t1 = Instant::now();
        for (lib, names) in libs.iter().zip(&lib_names) {
            adapter::lookup_sum(W, &session, &adapter::exported_order(&[lib]), names)?;
        }
        timed_lookups(W, session, &order, &query, b, expected, t0, t1)
    }
}

// ---------------------------------------------------------------------------
// W3 / W4 / W5: dependency-graph materialization
// ---------------------------------------------------------------------------

/// Which graph workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphKind {
    /// W3 materialize-chain.
    Chain,
    /// W4 materialize-cycles.
    Cycles,
    /// W5 fanin-dag.
    FaninDag,
}

impl GraphKind {
    fn key(self) -> &'static str {
        match self {
            GraphKind::Chain => "w3",
            GraphKind::Cycles => "w4",
            GraphKind::FaninDag => "w5",
        }
    }
    fn name(self) -> &'static str {
        match self {
            GraphKind::Chain => "W3 materialize-chain",
            GraphKind::Cycles => "W4 materialize-cycles",
            GraphKind::FaninDag => "W5 fanin-dag",
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            GraphKind::Chain => "c",
            GraphKind::Cycles => "y",
            GraphKind::FaninDag => "d",
        }
    }
    /// The peer's default number of dylibs (1, 4, 8).
    pub fn default_libs(self) -> usize {
        match self {
            GraphKind::Chain => 1,
            GraphKind::Cycles => 4,
            GraphKind::FaninDag => 8,
        }
    }
}

/// W3/W4/W5: one unit per symbol, dependencies per [`Dependencies`], one
/// lookup of everything at Ready.
#[derive(Debug, Clone)]
pub struct GraphWorkload {
    kind: GraphKind,
    n: usize,
    libs: usize,
    deps: Arc<Dependencies>,
}

impl GraphWorkload {
    /// Builds the dependency lists (untimed) and checks them against the
    /// README's published edge count and hash where it gives one.
    /// `draws`/`seed` only matter for W5.
    pub fn new(
        kind: GraphKind,
        n: usize,
        libs: usize,
        draws: usize,
        seed: u64,
    ) -> Result<Self, BenchError> {
        if libs == 0 || n == 0 {
            return Err(BenchError::Params {
                workload: kind.key(),
                what: format!("need n >= 1 and libs >= 1 (n {n}, libs {libs})"),
            });
        }
        let shape = match kind {
            GraphKind::Chain => GraphShape::Chain,
            GraphKind::Cycles => GraphShape::Cycle,
            GraphKind::FaninDag => GraphShape::FaninDag { draws, seed },
        };
        let deps = Dependencies::generate(shape, n);
        if let Some((edges, hash)) = published_fingerprint(shape, n)
            && (deps.edge_count(), deps.edge_hash()) != (edges, hash)
        {
            return Err(BenchError::check(
                kind.key(),
                format!(
                    "dependency graph differs from the peer's: {} edges hash {:016x}, \
                     README says {edges} edges hash {hash:016x}",
                    deps.edge_count(),
                    deps.edge_hash()
                ),
            ));
        }
        Ok(GraphWorkload {
            kind,
            n,
            libs,
            deps: Arc::new(deps),
        })
    }

    /// The dependency lists.
    pub fn dependencies(&self) -> &Dependencies {
        &self.deps
    }

    /// One repetition on a fresh session.
    pub fn rep(&self, d: DispatcherKind) -> Result<Rep, BenchError> {
        let w = self.kind.key();
        let (n, l_count) = (self.n, self.libs);
        let expected = sum_addrs(GRAPH_BASE, n);
        let stats = Arc::new(GraphStats::new(n));
        let session = adapter::new_session(d);
        let mut jds = Vec::with_capacity(l_count);
        for l in 0..l_count {
            jds.push(adapter::create_dylib(w, &session, &format!("jd{l}"))?);
        }
        let names = adapter::intern_indexed(&session, self.kind.prefix(), n);

        let t0 = Instant::now();
        for (i, name) in names.iter().enumerate() {
            let dep_indices = self.deps.of(i);
            // Group by the dependency's dylib, in order of first appearance.
            let mut groups: Vec<(usize, Vec<SymbolName>)> = Vec::new();
            for &j in dep_indices {
                let lib = j % l_count;
                match groups.iter_mut().find(|(l, _)| *l == lib) {
                    Some((_, v)) => v.push(names[j].clone()),
                    None => groups.push((lib, vec![names[j].clone()])),
                }
            }
            let groups = groups
                .into_iter()
                .map(|(l, v)| (jds[l].clone(), v))
                .collect();
            adapter::define_graph_unit(
                w,
                &jds[i % l_count],
                name.clone(),
                addr(GRAPH_BASE, i),
                i,
                groups,
                dep_indices.to_vec(),
                stats.clone(),
            )?;
        }
        let jd_refs: Vec<&Dylib> = jds.iter().collect();
        let order = adapter::exported_order(&jd_refs);
        let t1 = Instant::now();
        let c0 = cpu_seconds();
        let looked_up = adapter::lookup_sum(w, &session, &order, &names);
        let t2 = Instant::now();
        let cpu = cpu_seconds() - c0;
        let sum = looked_up.map_err(|e| match stats.first_error() {
            Some(inner) => BenchError::check(w, format!("{e}; first error inside a unit: {inner}")),
            None => e,
        })?;
        if sum != expected {
            return Err(mismatch(w, "lookup of all symbols", sum, expected));
        }
        if let Some(e) = stats.first_error() {
            return Err(BenchError::check(w, e));
        }
        let ran = stats.ran.load(Ordering::SeqCst);
        if ran != n {
            return Err(BenchError::check(
                w,
                format!("{ran} of {n} units materialized"),
            ));
        }
        let t3 = Instant::now();
        let again = adapter::lookup_sum(w, &session, &order, &names)?;
        let t4 = Instant::now();
        if again != expected {
            return Err(mismatch(w, "re-lookup of all symbols", again, expected));
        }
        adapter::end_session(session);
        let t5 = Instant::now();
        let first = stats.first_index.load(Ordering::SeqCst);
        Ok(Rep {
            main: secs_between(t1, t2),
            main_cpu_s: cpu,
            phases: vec![
                ("define", secs_between(t0, t1)),
                ("relookup_all_ready", secs_between(t3, t4)),
                ("teardown", secs_between(t4, t5)),
            ],
            info: vec![
                (
                    "first_materialized_index",
                    if first == usize::MAX {
                        -1.0
                    } else {
                        first as f64
                    },
                ),
                (
                    "max_concurrent_materialize",
                    stats.max_concurrent.load(Ordering::SeqCst) as f64,
                ),
                (
                    "emits_after_deps_emitted",
                    stats.emitted_after_deps.load(Ordering::SeqCst) as f64,
                ),
            ],
        })
    }
}

// ---------------------------------------------------------------------------
// W6 generator
// ---------------------------------------------------------------------------

/// W6 generator: every lookup of `gen{i}` runs the generator once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W6 {
    /// Number of names (default 100 000).
    pub n: usize,
}

impl W6 {
    /// One repetition on a fresh session.
    pub fn rep(&self, d: DispatcherKind) -> Result<Rep, BenchError> {
        const W: &str = "w6";
        let n = self.n;
        let expected = sum_addrs(W6_BASE, n);
        let session = adapter::new_session(d);
        let jd = adapter::create_dylib(W, &session, "gen")?;
        let generator = IndexGenerator::new(W6_BASE);
        adapter::add_generator(W, &jd, generator.clone())?;
        let names = adapter::intern_indexed(&session, "gen", n);
        let order = adapter::exported_order(&[&jd]);
        let with_inner = |e: BenchError| match generator.first_error() {
            Some(inner) => BenchError::check(W, format!("{e}; generator error: {inner}")),
            None => e,
        };

        let t0 = Instant::now();
        let c0 = cpu_seconds();
        let sum = batched_lookups(W, &session, &order, &names, 1, adapter::lookup_sum)
            .map_err(with_inner)?;
        let t1 = Instant::now();
        let cpu = cpu_seconds() - c0;
        if sum != expected {
            return Err(mismatch(W, "timed lookups", sum, expected));
        }
        let calls = generator.calls.load(Ordering::SeqCst);
        if calls != n {
            return Err(BenchError::check(
                W,
                format!("generator ran {calls} times for {n} lookups"),
            ));
        }
        let t2 = Instant::now();
        let sum2 = batched_lookups(W, &session, &order, &names, 1, adapter::lookup_sum)?;
        let t3 = Instant::now();
        let calls2 = generator.calls.load(Ordering::SeqCst);
        if sum2 != expected || calls2 != n {
            return Err(BenchError::check(
                W,
                format!(
                    "second pass: sum {sum2:#x} (expected {expected:#x}), generator calls {calls2} (expected {n})"
                ),
            ));
        }
        adapter::end_session(session);
        let t4 = Instant::now();
        Ok(Rep {
            main: secs_between(t0, t1),
            main_cpu_s: cpu,
            phases: vec![
                ("second_pass_ready", secs_between(t2, t3)),
                ("teardown", secs_between(t3, t4)),
            ],
            info: Vec::new(),
        })
    }
}

// ---------------------------------------------------------------------------
// W7 concurrent lookups
// ---------------------------------------------------------------------------

/// W7 concurrent-lookups: T threads, K single-symbol lookups each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W7 {
    /// Number of symbols (default 100 000).
    pub n: usize,
    /// Number of threads T.
    pub threads: usize,
    /// Lookups per thread K (default 50 000).
    pub per_thread: usize,
}

impl W7 {
    /// One repetition on a fresh session.
    pub fn rep(&self, d: DispatcherKind) -> Result<Rep, BenchError> {
        const W: &str = "w7";
        let (n, t_count, k) = (self.n, self.threads, self.per_thread);
        if n == 0 {
            return Err(BenchError::Params {
                workload: W,
                what: "n must be at least 1".into(),
            });
        }
        let session = adapter::new_session(d);
        let jd = adapter::create_dylib(W, &session, "main")?;
        let names = adapter::intern_indexed(&session, "sym", n);
        let order = adapter::exported_order(&[&jd]);
        adapter::define_absolute(
            W,
            &jd,
            names
                .iter()
                .enumerate()
                .map(|(i, s)| (s.clone(), addr(W1_BASE, i))),
        )?;
        let warm = adapter::lookup_sum(W, &session, &order, &names)?;
        if warm != sum_addrs(W1_BASE, n) {
            return Err(mismatch(W, "warm-up lookup", warm, sum_addrs(W1_BASE, n)));
        }
        let index = |t: usize, i: usize| (t * k + i) % n;
        let expected: Vec<u64> = (0..t_count)
            .map(|t| (0..k).fold(0u64, |s, i| s.wrapping_add(addr(W1_BASE, index(t, i)))))
            .collect();

        let ready = AtomicUsize::new(0);
        let go = AtomicBool::new(false);
        let (elapsed, cpu, results) = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..t_count)
                .map(|t| {
                    let (session, order, names, ready, go) =
                        (&session, &order, &names, &ready, &go);
                    scope.spawn(move || {
                        ready.fetch_add(1, Ordering::SeqCst);
                        while !go.load(Ordering::Acquire) {
                            std::hint::spin_loop();
                        }
                        let mut sum = 0u64;
                        for i in 0..k {
                            let idx = index(t, i);
                            sum = sum.wrapping_add(adapter::ready_lookup_sum(
                                W,
                                session,
                                order,
                                &names[idx..=idx],
                            )?);
                        }
                        Ok::<u64, BenchError>(sum)
                    })
                })
                .collect();
            while ready.load(Ordering::SeqCst) != t_count {
                std::hint::spin_loop();
            }
            let c0 = cpu_seconds();
            let t0 = Instant::now();
            go.store(true, Ordering::Release);
            let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            let t1 = Instant::now();
            (secs_between(t0, t1), cpu_seconds() - c0, results)
        });
        for (t, r) in results.into_iter().enumerate() {
            let sum = match r {
                Ok(r) => r?,
                Err(payload) => {
                    let message = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".into());
                    return Err(BenchError::ThreadPanicked {
                        workload: W,
                        thread: t,
                        message,
                    });
                }
            };
            if sum != expected[t] {
                return Err(mismatch(W, &format!("thread {t}"), sum, expected[t]));
            }
        }
        adapter::end_session(session);
        Ok(Rep {
            main: elapsed,
            main_cpu_s: cpu,
            phases: Vec::new(),
            info: Vec::new(),
        })
    }
}

// ---------------------------------------------------------------------------
// The command-line driver
// ---------------------------------------------------------------------------

fn dispatcher_params(o: &Options) -> Vec<(&'static str, Json)> {
    let mut p = vec![("dispatcher", o.dispatcher.key().into())];
    if let Some(t) = o.dispatcher.pool_threads() {
        p.push(("pool_threads", t.into()));
    }
    p
}

fn repeat(
    o: &Options,
    mut rep: impl FnMut() -> Result<Rep, BenchError>,
) -> Result<Vec<Rep>, BenchError> {
    (0..o.reps).map(|_| rep()).collect()
}

/// Runs the workload the options name, `o.reps` times, and builds its report.
pub fn run(o: &Options) -> Result<Report, BenchError> {
    if let Some(api) = o.lookup_api {
        adapter::set_lookup_api(api);
    }
    match o.workload {
        Workload::W1 => run_w1(o),
        Workload::W2 => run_w2(o),
        Workload::W3 | Workload::W4 | Workload::W5 => run_graph(o),
        Workload::W6 => run_w6(o),
        Workload::W7 => run_w7(o),
        Workload::W8 => run_w8(o),
        Workload::W9 => run_w9(o),
    }
}

/// W1: N symbols looked up Ready, in batches of B.
fn run_w1(o: &Options) -> Result<Report, BenchError> {
    let d = o.dispatcher;
    let w = W1 {
        n: o.n.unwrap_or(100_000),
        b: o.b,
    };
    let mut params = vec![("n", w.n.into()), ("b", w.b.into())];
    params.extend(dispatcher_params(o));
    params.push(("lookup_api", adapter::lookup_api().into()));
    Ok(Report {
        name: "W1 lookup-ready",
        workload: "w1",
        params,
        ops: w.n as f64,
        ops_unit: "symbols looked up",
        reps: repeat(o, || w.rep(d))?,
        extra: Vec::new(),
    })
}

/// W2: lookups through a link order of many dylibs.
fn run_w2(o: &Options) -> Result<Report, BenchError> {
    let d = o.dispatcher;
    let w = W2 {
        libs: o.libs.unwrap_or(16),
        per_lib: o.per_lib,
        lookups: o.lookups,
        b: o.b,
    };
    w.validate()?;
    let mut params = vec![
        ("libs", w.libs.into()),
        ("per_lib", w.per_lib.into()),
        ("lookups", w.lookups.into()),
        ("b", w.b.into()),
    ];
    params.extend(dispatcher_params(o));
    params.push(("lookup_api", adapter::lookup_api().into()));
    Ok(Report {
        name: "W2 lookup-linkorder",
        workload: "w2",
        params,
        ops: w.lookups as f64,
        ops_unit: "symbols looked up",
        reps: repeat(o, || w.rep(d))?,
        extra: Vec::new(),
    })
}

/// W3–W5: materialization along a chain, cycles or a fan-in DAG.
fn run_graph(o: &Options) -> Result<Report, BenchError> {
    let d = o.dispatcher;
    let kind = match o.workload {
        Workload::W3 => GraphKind::Chain,
        Workload::W4 => GraphKind::Cycles,
        _ => GraphKind::FaninDag,
    };
    let n = o.n.unwrap_or(10_000);
    let libs = o.libs.unwrap_or(kind.default_libs());
    let w = GraphWorkload::new(kind, n, libs, o.deps, o.seed)?;
    let mut params = vec![("n", n.into()), ("libs", libs.into())];
    params.extend(dispatcher_params(o));
    params.push(("max_mat_threads", o.max_mat_threads.into()));
    if kind == GraphKind::FaninDag {
        params.push(("deps", o.deps.into()));
        params.push(("seed", o.seed.into()));
    }
    let deps = w.dependencies();
    let extra = vec![
        ("edges", deps.edge_count().into()),
        ("edge_hash", format!("{:016x}", deps.edge_hash()).into()),
    ];
    Ok(Report {
        name: kind.name(),
        workload: kind.key(),
        params,
        ops: n as f64,
        ops_unit: "symbols materialized",
        reps: repeat(o, || w.rep(d))?,
        extra,
    })
}

/// W6: symbols a generator defines, looked up.
fn run_w6(o: &Options) -> Result<Report, BenchError> {
    let d = o.dispatcher;
    let w = W6 {
        n: o.n.unwrap_or(100_000),
    };
    let mut params = vec![("n", w.n.into()), ("b", 1usize.into())];
    params.extend(dispatcher_params(o));
    Ok(Report {
        name: "W6 generator",
        workload: "w6",
        params,
        ops: w.n as f64,
        ops_unit: "symbols generated+looked up",
        reps: repeat(o, || w.rep(d))?,
        extra: Vec::new(),
    })
}

/// W7: lookups from many threads at once.
fn run_w7(o: &Options) -> Result<Report, BenchError> {
    let d = o.dispatcher;
    let w = W7 {
        n: o.n.unwrap_or(100_000),
        threads: o.threads,
        per_thread: o.per_thread,
    };
    let mut params = vec![
        ("n", w.n.into()),
        ("threads", w.threads.into()),
        ("per_thread", w.per_thread.into()),
        ("b", 1usize.into()),
    ];
    params.extend(dispatcher_params(o));
    params.push(("lookup_api", adapter::lookup_api().into()));
    Ok(Report {
        name: "W7 concurrent-lookups",
        workload: "w7",
        params,
        ops: (w.threads * w.per_thread) as f64,
        ops_unit: "symbols looked up (all threads)",
        reps: repeat(o, || w.rep(d))?,
        extra: Vec::new(),
    })
}

/// W9 through [`crate::w9`]: compiled once, then `--reps` timed reps.
fn run_w9(o: &Options) -> Result<Report, BenchError> {
    let w = crate::w9::W9 {
        n: o.n.unwrap_or(10_000),
        modules: o.modules,
        seed: o.seed,
        backend: o.backend,
        dispatcher: o.dispatcher,
    };
    let prepared = w.prepare()?;
    let mut checksum = None;
    let reps = repeat(o, || {
        let (rep, sum) = w.rep(&prepared)?;
        match checksum {
            Some(c) if c != sum => {
                return Err(BenchError::check("w9", format!("checksum {sum} after {c}")));
            }
            _ => checksum = Some(sum),
        }
        Ok(rep)
    })?;
    let mut params = vec![
        ("n", w.n.into()),
        ("modules", w.modules.into()),
        ("backend", o.backend.key().into()),
        ("seed", o.seed.into()),
    ];
    params.extend(dispatcher_params(o));
    Ok(Report {
        name: "W9 cranelift-link",
        workload: "w9",
        params,
        ops: w.n as f64,
        ops_unit: "functions made callable",
        reps,
        extra: vec![
            ("checksum", checksum.unwrap_or_default().into()),
            ("compile_once_s", prepared.compile.as_secs_f64().into()),
        ],
    })
}

/// W8 through [`crate::w8`]: kiln has one lazy-reexport implementation, so
/// `--lazy` only labels the row (to pair it with the peer's row).
fn run_w8(o: &Options) -> Result<Report, BenchError> {
    const W: &str = "w8";
    let n = o.n.unwrap_or(1_000);
    if n == 0 {
        return Err(BenchError::Params {
            workload: W,
            what: "n must be at least 1".into(),
        });
    }
    let config = W8 {
        n,
        rounds: o.rounds,
        dispatcher: match o.dispatcher.pool_threads() {
            None => W8Dispatcher::InPlace,
            Some(t) => W8Dispatcher::Pool(t),
        },
    };
    let calls = n.saturating_mul(o.rounds);
    let reps = repeat(o, || {
        let r = config.rep().map_err(|e| BenchError::Engine {
            workload: W,
            during: "a W8 rep".into(),
            message: e.to_string(),
        })?;
        Ok(Rep {
            main: r.first_calls,
            // The timed phase's CPU time is not recorded by `w8`.
            main_cpu_s: f64::NAN,
            phases: vec![
                ("jit_setup", r.jit_setup),
                ("define_and_stub_lookup", r.define_and_stub_lookup),
                ("steady_rr", r.steady_rr),
                ("direct_rr", r.direct_rr),
                ("steady_hot", r.steady_hot),
                ("direct_hot", r.direct_hot),
                ("teardown", r.teardown),
            ],
            info: vec![
                ("first_call_us", r.first_call_us(n)),
                ("steady_rr_call_ns", per_call_ns(r.steady_rr, calls)),
                ("direct_rr_call_ns", per_call_ns(r.direct_rr, calls)),
                ("steady_hot_call_ns", per_call_ns(r.steady_hot, calls)),
                ("direct_hot_call_ns", per_call_ns(r.direct_hot, calls)),
                ("reentries_per_entry", r.reentries as f64 / n as f64),
            ],
        })
    })?;
    let mut params = vec![
        ("n", n.into()),
        ("rounds", o.rounds.into()),
        ("lazy", o.lazy.key().into()),
    ];
    params.extend(dispatcher_params(o));
    Ok(Report {
        name: "W8 lazy-call (kiln LazyReexports+JIT stubs and trampolines)",
        workload: W,
        params,
        ops: n as f64,
        ops_unit: "first calls (reentry+materialize+redirect)",
        reps,
        extra: Vec::new(),
    })
}
