//! Criterion benches of the peer workloads W1–W7, at sizes that keep a run
//! short. They call the same per-rep code as `peer-workloads`
//! (`kiln_benches::workloads`): every iteration is one rep on a fresh
//! session, and only the workload's timed phase is measured
//! (`iter_custom`), so the numbers are the peer's `wall_s` at a smaller N.
//!
//! `cargo bench -p kiln-benches --bench workloads` (add a filter such as
//! `w3` to run one group).

use std::num::NonZeroUsize;
use std::time::Duration;

use criterion::{
    BenchmarkGroup, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
    measurement::WallTime,
};
use kiln_benches::error::BenchError;
use kiln_benches::options::DispatcherKind;
use kiln_benches::workloads::{GraphKind, GraphWorkload, W1, W2, W6, W7};

const INPLACE: DispatcherKind = DispatcherKind::InPlace;
const POOL2: DispatcherKind = DispatcherKind::Pool {
    threads: NonZeroUsize::new(2).expect("2 > 0"),
};

/// Registers `id`, measuring the sum of the timed phases of `iters` reps.
fn bench_reps(
    group: &mut BenchmarkGroup<'_, WallTime>,
    id: &str,
    ops: u64,
    rep: impl Fn() -> Result<kiln_benches::report::Rep, BenchError>,
) {
    group.throughput(Throughput::Elements(ops));
    group.bench_function(id, |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| rep().unwrap_or_else(|e| panic!("{id}: {e}")).main)
                .sum::<Duration>()
        })
    });
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    // Flat: every iteration is a whole rep (fresh session), so iterations are
    // long and few; criterion's linear sampling would overshoot the budget.
    g.sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    g
}

fn lookups(c: &mut Criterion) {
    let mut g = group(c, "w1_lookup_ready");
    for b in [1, 100] {
        let w = W1 { n: 10_000, b };
        bench_reps(&mut g, &format!("n10000_b{b}"), w.n as u64, || {
            w.rep(INPLACE)
        });
    }
    g.finish();

    let mut g = group(c, "w2_lookup_linkorder");
    for b in [1, 100] {
        let w = W2 {
            libs: 16,
            per_lib: 1_000,
            lookups: 10_000,
            b,
        };
        bench_reps(
            &mut g,
            &format!("16x1000_q10000_b{b}"),
            w.lookups as u64,
            || w.rep(INPLACE),
        );
    }
    g.finish();
}

fn graphs(c: &mut Criterion) {
    const N: usize = 2_000;
    for (name, kind, dispatchers) in [
        (
            "w3_materialize_chain",
            GraphKind::Chain,
            &[("inplace", INPLACE), ("pool2", POOL2)][..],
        ),
        (
            "w4_materialize_cycles",
            GraphKind::Cycles,
            &[("inplace", INPLACE)][..],
        ),
        (
            "w5_fanin_dag",
            GraphKind::FaninDag,
            &[("inplace", INPLACE)][..],
        ),
    ] {
        let w = GraphWorkload::new(kind, N, kind.default_libs(), 4, 42)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut g = group(c, name);
        for (label, d) in dispatchers {
            bench_reps(&mut g, &format!("n{N}_{label}"), N as u64, || w.rep(*d));
        }
        g.finish();
    }
}

fn generator(c: &mut Criterion) {
    let mut g = group(c, "w6_generator");
    let w = W6 { n: 10_000 };
    bench_reps(&mut g, "n10000", w.n as u64, || w.rep(INPLACE));
    g.finish();
}

fn concurrent(c: &mut Criterion) {
    let mut g = group(c, "w7_concurrent_lookups");
    for threads in [1, 2] {
        let w = W7 {
            n: 20_000,
            threads,
            per_thread: 10_000,
        };
        bench_reps(
            &mut g,
            &format!("t{threads}_x10000"),
            (threads * w.per_thread) as u64,
            || w.rep(INPLACE),
        );
    }
    g.finish();
}

criterion_group!(workloads, lookups, graphs, generator, concurrent);
criterion_main!(workloads);
