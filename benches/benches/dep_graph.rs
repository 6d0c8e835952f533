//! Cost of the dependency graph (`kiln_engine::graph::DepGraph`) for the
//! emission orders the engine sees, at N = 2.5k, 10k and 40k nodes.
//!
//! Every workload emits each node as its own unit (one group, one def) and
//! checks that all N nodes end Ready. As the engine's state actor does, deps
//! that are already Ready are dropped before `emit`. A near-linear graph keeps
//! the time per node flat as N grows; compare `time(40k) / time(10k)` with 4
//! (the scaling exponent is `log4` of that ratio).
//!
//! Wall time at 40k is dominated by cache misses (the working set outgrows
//! L2) and by whatever else runs on the machine, so also count work that
//! does not depend on either: set `KILN_GRAPH_STATS=1` to print each
//! workload's search counters ([`GraphStats`]), and set
//! `KILN_GRAPH_ONCE=<workload>/<n>` (optionally `KILN_GRAPH_REPS=<r>`) to
//! run one workload outside criterion, e.g. under
//! `valgrind --tool=cachegrind` for instruction counts; the difference
//! between two repetition counts removes the setup. Measured that way
//! (2026-11-22), instructions per node stayed within 1100–3900 for every
//! workload and N, with local exponents 0.98–1.09.
//!
//! Workloads:
//! - `chain_orc_order`: i depends on i-1, emitted 1, 2, …, N-1, then 0 (the
//!   order ORC ran W3 in: everything waits until the last emit).
//! - `chain_dependants_first`: i depends on i-1, emitted N-1 down to 0.
//! - `cycle_in_order`: i depends on (i+1) mod N (W4's single cycle), emitted
//!   0..N-1; the last emit closes the cycle.
//! - `cycle_random`: the same cycle emitted in a random order.
//! - `dag_dependants_first`: W5's random DAG (4 draws per node, SplitMix64
//!   seed 42), emitted N-1 down to 0.
//! - `dag_random`: W5's DAG emitted in a random order.
//! - `big_group`: one unit emits N/2 defs depending on the other N/2 nodes,
//!   which are then emitted one by one.
//! - `small_cycles_random`: N/5 cycles of 5 nodes, each also depending on a
//!   node of the previous cycle, emitted in a random order.
//!
//! Link shapes (group `dep_graph_link`, W9's: N = 1k, 10k, 100k symbols in
//! M = 10 or 100 units, four calls per symbol — one inside its unit, three
//! anywhere, so units form large cycles — units emitted in a random order,
//! or with the suffix `_fwd` unit 0 first, `_rev` the last unit first, one
//! `emit` each; see [`link_shape`]):
//! - `link_unit_group_m<M>`: each unit as one group depending on its
//!   external references (the object layer's shape);
//! - `link_per_symbol_m<M>`: each symbol as its own group with its calls.
//!
//! - `engine_link_m<M>` (group `dep_graph_engine_link`): the unit-group
//!   shape through the engine — M units in one dylib, each emitting its
//!   symbols as one group on its external calls, all N looked up at Ready
//!   in one lookup listing the units in a random order.
//!
//! `KILN_GRAPH_ONCE=link_per_symbol_m100/<n>` also prints the number of
//! edges given to the graph, for instructions per edge. Measured so
//! (2026-12-05, cachegrind, one run = 2 repetitions minus 1): at 10k edges
//! the graph took 6,200–10,500 instructions per edge before batching the
//! searches and 1,150–1,450 after; at 100k and 1M edges see the graph's
//! module docs (before: the per-symbol shape at 400k edges took 79 s).
//! Since bulk batches (issue 12 §4), every link shape and order costs
//! 620–1,110 instructions per edge at 10k, 100k and 1M edges, counted by
//! `KILN_GRAPH_ONCE=<shape>/<n> valgrind --tool=callgrind
//! --toggle-collect='dep_graph::run_link' target/release/deps/dep_graph-*`
//! (table in the graph's module docs).

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use kiln_benches::deps::{Dependencies, GraphShape, SplitMix64};
use kiln_engine::graph::{DepGraph, EmitGroup, GraphStats, NodeId};
use kiln_engine::{
    DependenceGroup, Dylib, DylibLookup, InPlaceDispatcher, LookupSet, MaterializationUnit,
    RequiredState, Responsibility, SearchOrder, Session, SymbolDef, SymbolFlags, SymbolName,
};

/// Node counts measured (multiples of 10, for `small_cycles_random` and
/// `big_group`).
const SIZES: [usize; 3] = [2_500, 10_000, 40_000];

/// One workload: each node's dependencies and the emission order.
struct Workload {
    deps: Vec<Vec<NodeId>>,
    order: Vec<NodeId>,
}

fn ids(v: &[usize]) -> Vec<NodeId> {
    v.iter()
        .map(|&i| NodeId::try_from(i).expect("bench sizes fit in u32"))
        .collect()
}

fn from_shape(shape: GraphShape, n: usize) -> Vec<Vec<NodeId>> {
    let d = Dependencies::generate(shape, n);
    (0..n).map(|i| ids(d.of(i))).collect()
}

/// A Fisher–Yates shuffle of 0..n driven by SplitMix64 (seed 7).
fn shuffled(n: usize) -> Vec<NodeId> {
    let mut v = ids(&(0..n).collect::<Vec<_>>());
    let mut rng = SplitMix64::new(7);
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn workloads(n: usize) -> Vec<(&'static str, Workload)> {
    let up = ids(&(0..n).collect::<Vec<_>>());
    let down: Vec<NodeId> = up.iter().rev().copied().collect();
    let chain = from_shape(GraphShape::Chain, n);
    let cycle = from_shape(GraphShape::Cycle, n);
    let dag = from_shape(GraphShape::FaninDag { draws: 4, seed: 42 }, n);
    let mut orc_order: Vec<NodeId> = up[1..].to_vec();
    orc_order.push(0);
    let small_cycles: Vec<Vec<NodeId>> = (0..n)
        .map(|i| {
            let base = i - i % 5;
            let mut d = ids(&[base + (i + 1) % 5]);
            if base >= 5 {
                d.extend(ids(&[base - 5 + i % 5]));
            }
            d
        })
        .collect();
    vec![
        (
            "chain_orc_order",
            Workload {
                deps: chain.clone(),
                order: orc_order,
            },
        ),
        (
            "chain_dependants_first",
            Workload {
                deps: chain,
                order: down.clone(),
            },
        ),
        (
            "cycle_in_order",
            Workload {
                deps: cycle.clone(),
                order: up,
            },
        ),
        (
            "cycle_random",
            Workload {
                deps: cycle,
                order: shuffled(n),
            },
        ),
        (
            "dag_dependants_first",
            Workload {
                deps: dag.clone(),
                order: down,
            },
        ),
        (
            "dag_random",
            Workload {
                deps: dag,
                order: shuffled(n),
            },
        ),
        (
            "small_cycles_random",
            Workload {
                deps: small_cycles,
                order: shuffled(n),
            },
        ),
    ]
}

/// Emits every node as its own unit, dropping Ready deps first; returns the
/// number of nodes that became Ready and the graph's work counters.
fn run(w: &Workload) -> (usize, GraphStats) {
    let n = w.deps.len();
    let mut g = DepGraph::new();
    let mut is_ready = vec![false; n];
    let mut ready = Vec::new();
    let mut deps = Vec::new();
    let mut count = 0;
    for &d in &w.order {
        deps.clear();
        deps.extend(
            w.deps[d as usize]
                .iter()
                .copied()
                .filter(|&t| !is_ready[t as usize]),
        );
        ready.clear();
        g.emit(
            &[EmitGroup {
                defs: &[d],
                deps: &deps,
            }],
            &mut ready,
        );
        for &r in &ready {
            is_ready[r as usize] = true;
        }
        count += ready.len();
    }
    (count, g.stats())
}

/// One unit emitting N/2 defs that all depend on the other N/2 nodes, which
/// are then emitted one by one: with a hidden group node this is N edges,
/// not N²/4.
fn run_big_group(n: usize) -> (usize, GraphStats) {
    let half = NodeId::try_from(n / 2).expect("bench sizes fit in u32");
    let defs: Vec<NodeId> = (0..half).collect();
    let deps: Vec<NodeId> = (half..2 * half).collect();
    let mut g = DepGraph::new();
    let mut ready = Vec::new();
    g.emit(
        &[EmitGroup {
            defs: &defs,
            deps: &deps,
        }],
        &mut ready,
    );
    for &d in &deps {
        g.emit(
            &[EmitGroup {
                defs: &[d],
                deps: &[],
            }],
            &mut ready,
        );
    }
    (ready.len(), g.stats())
}

fn dep_graph(c: &mut Criterion) {
    let mut group = c.benchmark_group("dep_graph");
    group.sample_size(10);
    for n in SIZES {
        for (name, w) in workloads(n) {
            let (count, stats) = run(&w);
            assert_eq!(count, n, "{name}: not every node became Ready");
            if std::env::var_os("KILN_GRAPH_STATS").is_some() {
                eprintln!("{name}/{n}: {stats:?}");
            }
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &w, |b, w| {
                b.iter(|| black_box(run(w)))
            });
        }
    }
    for n in SIZES {
        let (count, stats) = run_big_group(n);
        assert_eq!(count, n, "big_group: not every node became Ready");
        if std::env::var_os("KILN_GRAPH_STATS").is_some() {
            eprintln!("big_group/{n}: {stats:?}");
        }
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::new("big_group", n), &n, |b, &n| {
            b.iter(|| black_box(run_big_group(n)))
        });
    }
    group.finish();
}

/// A W9-like link shape: `n` symbols in `units` units (consecutive ids), each
/// symbol calling `calls` random symbols, a quarter of them in its own unit
/// and the rest anywhere (so the units form large cycles), SplitMix64 seed 9.
/// The units are emitted in a [`UnitOrder`], each in one `emit`: as one group
/// (the object layer's shape: every symbol of the image depends on the
/// image's external references) or as one group per symbol (its own calls,
/// inside the unit included).
struct LinkShape {
    units: Vec<Vec<NodeId>>,
    calls: Vec<Vec<NodeId>>,
    order: Vec<usize>,
    per_symbol: bool,
}

/// The order a link shape's units are emitted in (the bench name's suffix).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UnitOrder {
    /// Shuffled (SplitMix64 seed 7); no suffix.
    Random,
    /// Unit 0 first (`_fwd`).
    Forward,
    /// The last unit first (`_rev`).
    Reverse,
}

impl UnitOrder {
    const ALL: [UnitOrder; 3] = [UnitOrder::Random, UnitOrder::Forward, UnitOrder::Reverse];

    fn suffix(self) -> &'static str {
        match self {
            UnitOrder::Random => "",
            UnitOrder::Forward => "_fwd",
            UnitOrder::Reverse => "_rev",
        }
    }

    /// Splits a workload name into its base and order.
    fn split(name: &str) -> (&str, UnitOrder) {
        for order in [UnitOrder::Forward, UnitOrder::Reverse] {
            if let Some(base) = name.strip_suffix(order.suffix()) {
                return (base, order);
            }
        }
        (name, UnitOrder::Random)
    }

    fn units(self, units: usize) -> Vec<usize> {
        match self {
            UnitOrder::Random => shuffled(units).into_iter().map(|u| u as usize).collect(),
            UnitOrder::Forward => (0..units).collect(),
            UnitOrder::Reverse => (0..units).rev().collect(),
        }
    }
}

fn link_shape(n: usize, units: usize, per_symbol: bool, unit_order: UnitOrder) -> LinkShape {
    const CALLS: usize = 4;
    let mut rng = SplitMix64::new(9);
    let per = n.div_ceil(units);
    let unit_of = |i: usize| i / per;
    let calls = (0..n)
        .map(|i| {
            let u = unit_of(i);
            let mut c: Vec<NodeId> = (0..CALLS)
                .map(|k| {
                    let r = rng.next_u64() as usize;
                    let t = if k == 0 {
                        (u * per + r % per).min(n - 1)
                    } else {
                        r % n
                    };
                    NodeId::try_from(t).expect("bench sizes fit in u32")
                })
                .collect();
            c.sort_unstable();
            c.dedup();
            c
        })
        .collect();
    let unit_list: Vec<Vec<NodeId>> = (0..units)
        .map(|u| ids(&(u * per..((u + 1) * per).min(n)).collect::<Vec<_>>()))
        .collect();
    let order = unit_order.units(units);
    LinkShape {
        units: unit_list,
        calls,
        order,
        per_symbol,
    }
}

/// Emits a [`LinkShape`] unit by unit, dropping Ready deps as the engine
/// does; returns the number of Ready nodes, the graph's counters and the
/// number of edges given to the graph.
fn run_link(w: &LinkShape) -> (usize, GraphStats, usize) {
    let n = w.calls.len();
    let mut g = DepGraph::new();
    let mut is_ready = vec![false; n];
    let mut in_unit = vec![false; n];
    let mut ready = Vec::new();
    let mut count = 0;
    let mut edges = 0;
    let mut deps: Vec<NodeId> = Vec::new();
    let mut spans: Vec<(usize, usize)> = Vec::new();
    for &u in &w.order {
        let defs = &w.units[u];
        deps.clear();
        spans.clear();
        for &d in defs {
            in_unit[d as usize] = true;
        }
        if w.per_symbol {
            for &d in defs {
                let start = deps.len();
                deps.extend(
                    w.calls[d as usize]
                        .iter()
                        .copied()
                        .filter(|&t| !is_ready[t as usize]),
                );
                spans.push((start, deps.len()));
            }
        } else {
            // The image's external references, once each.
            for &d in defs {
                for &t in &w.calls[d as usize] {
                    if !in_unit[t as usize] && !is_ready[t as usize] {
                        deps.push(t);
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
        }
        for &d in defs {
            in_unit[d as usize] = false;
        }
        let groups: Vec<EmitGroup<'_>> = if w.per_symbol {
            defs.iter()
                .zip(&spans)
                .map(|(d, &(a, b))| EmitGroup {
                    defs: std::slice::from_ref(d),
                    deps: &deps[a..b],
                })
                .collect()
        } else {
            vec![EmitGroup { defs, deps: &deps }]
        };
        edges += deps.len();
        ready.clear();
        g.emit(&groups, &mut ready);
        for &r in &ready {
            is_ready[r as usize] = true;
        }
        count += ready.len();
    }
    (count, g.stats(), edges)
}

/// Sizes and unit counts of the link shapes.
const LINK_SIZES: [(usize, usize); 4] = [(1_000, 10), (10_000, 10), (10_000, 100), (100_000, 100)];

fn link_shapes(c: &mut Criterion) {
    let mut group = c.benchmark_group("dep_graph_link");
    group.sample_size(10);
    for (n, units) in LINK_SIZES {
        for (per_symbol, unit_order) in [false, true]
            .into_iter()
            .flat_map(|p| UnitOrder::ALL.map(|o| (p, o)))
        {
            let kind = if per_symbol {
                "per_symbol"
            } else {
                "unit_group"
            };
            let name = format!("link_{kind}_m{units}{}", unit_order.suffix());
            let w = link_shape(n, units, per_symbol, unit_order);
            let (count, stats, edges) = run_link(&w);
            assert_eq!(count, n, "{name}: not every node became Ready");
            if std::env::var_os("KILN_GRAPH_STATS").is_some() {
                eprintln!("{name}/{n}: {edges} edges, {stats:?}");
            }
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &w, |b, w| {
                b.iter(|| black_box(run_link(w)))
            });
        }
    }
    group.finish();
}

/// One unit of [`run_engine_link`]: defines its symbols and, when
/// materialized, emits them as one group depending on its external calls
/// (the object layer's shape).
struct LinkUnit {
    name: String,
    symbols: Vec<(SymbolName, SymbolFlags)>,
    base: u64,
    deps: Vec<SymbolName>,
    dylib: Dylib,
}

impl MaterializationUnit for LinkUnit {
    fn name(&self) -> &str {
        &self.name
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.symbols.clone()
    }

    fn materialize(self: Box<Self>, r: Responsibility) {
        let defs: Vec<(SymbolName, SymbolDef)> = self
            .symbols
            .iter()
            .enumerate()
            .map(|(i, (n, f))| (n.clone(), SymbolDef::new(self.base + 16 * i as u64, *f)))
            .collect();
        // An error drops `r`, which fails the symbols; the lookup reports it.
        if r.resolve(&defs).is_ok() {
            let group = DependenceGroup::new(
                self.symbols.iter().map(|(n, _)| n.clone()),
                vec![(self.dylib.clone(), self.deps)],
            );
            let _ = r.emit(vec![group]);
        }
    }
}

/// The link shape through the engine: one dylib, one unit per link unit
/// (each emitting its symbols as one group), and one lookup of all symbols
/// at Ready, units listed in the shape's random order. Returns the number
/// of symbols found.
fn run_engine_link(w: &LinkShape) -> usize {
    let session = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let Ok(dylib) = session.create_dylib("main") else {
        return 0;
    };
    let names: Vec<SymbolName> = (0..w.calls.len())
        .map(|i| session.intern(&format!("f{i}")))
        .collect();
    for (u, defs) in w.units.iter().enumerate() {
        let (Some(&lo), Some(&hi)) = (defs.first(), defs.last()) else {
            continue;
        };
        let mut deps: Vec<NodeId> = defs
            .iter()
            .flat_map(|&d| w.calls[d as usize].iter().copied())
            .filter(|&t| t < lo || t > hi)
            .collect();
        deps.sort_unstable();
        deps.dedup();
        let unit = LinkUnit {
            name: format!("unit{u}"),
            symbols: defs
                .iter()
                .map(|&d| (names[d as usize].clone(), SymbolFlags::EXPORTED))
                .collect(),
            base: 0x1000_0000 + 0x10_0000 * u as u64,
            deps: deps.iter().map(|&t| names[t as usize].clone()).collect(),
            dylib: dylib.clone(),
        };
        if dylib.define(unit).is_err() {
            return 0;
        }
    }
    let order = SearchOrder::new().with(&dylib, DylibLookup::ExportedOnly);
    let set = LookupSet::required(
        w.order
            .iter()
            .flat_map(|&u| w.units[u].iter().map(|&d| names[d as usize].clone())),
    );
    let found = session
        .lookup(&order, &set, RequiredState::Ready)
        .wait()
        .map_or(0, |m| m.len());
    session.end();
    found
}

fn engine_link(c: &mut Criterion) {
    let mut group = c.benchmark_group("dep_graph_engine_link");
    group.sample_size(10);
    for (n, units) in LINK_SIZES {
        let w = link_shape(n, units, false, UnitOrder::Random);
        assert_eq!(
            run_engine_link(&w),
            n,
            "engine_link: not every symbol found"
        );
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(
            BenchmarkId::new(format!("engine_link_m{units}"), n),
            &w,
            |b, w| b.iter(|| black_box(run_engine_link(w))),
        );
    }
    group.finish();
}

criterion_group!(benches, dep_graph, link_shapes, engine_link);

/// `KILN_GRAPH_ONCE=<workload>/<n>` runs that one workload once (or
/// `KILN_GRAPH_REPS` times), without criterion, for instruction and cache
/// miss counts that do not depend on machine load (`valgrind
/// --tool=cachegrind`; the difference between two repetition counts removes
/// the setup); otherwise the criterion benches run.
fn main() {
    if let Some(which) = std::env::var_os("KILN_GRAPH_ONCE") {
        let which = which.to_string_lossy().into_owned();
        let reps: usize = std::env::var("KILN_GRAPH_REPS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        let Some((name, n)) = which
            .rsplit_once('/')
            .and_then(|(name, n)| Some((name, n.parse::<usize>().ok()?)))
        else {
            eprintln!("KILN_GRAPH_ONCE wants <workload>/<n>, not {which}");
            std::process::exit(2);
        };
        if let Some(m) = name.strip_prefix("engine_link_m") {
            let Ok(units) = m.parse::<usize>() else {
                eprintln!("no workload {name}");
                std::process::exit(2);
            };
            let w = link_shape(n, units, false, UnitOrder::Random);
            let mut found = 0;
            for _ in 0..reps {
                found = black_box(run_engine_link(&w));
            }
            println!("{which}: {found} of {n} symbols Ready");
            return;
        }
        let (base, unit_order) = UnitOrder::split(name);
        let link = base
            .strip_prefix("link_unit_group_m")
            .map(|m| (m, false))
            .or_else(|| base.strip_prefix("link_per_symbol_m").map(|m| (m, true)));
        let mut once: Box<dyn FnMut() -> (usize, GraphStats)> = if name == "big_group" {
            Box::new(move || run_big_group(n))
        } else if let Some((m, per_symbol)) = link {
            let Ok(units) = m.parse::<usize>() else {
                eprintln!("no workload {name}");
                std::process::exit(2);
            };
            let w = link_shape(n, units, per_symbol, unit_order);
            Box::new(move || {
                let (count, stats, edges) = run_link(&w);
                eprintln!("{edges} edges");
                (count, stats)
            })
        } else {
            let Some((_, w)) = workloads(n).into_iter().find(|(w, _)| *w == name) else {
                eprintln!("no workload {name}");
                std::process::exit(2);
            };
            Box::new(move || run(&w))
        };
        let (mut count, mut stats) = once();
        for _ in 1..reps {
            (count, stats) = black_box(once());
        }
        println!("{which}: {count} Ready, {stats:?}");
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
