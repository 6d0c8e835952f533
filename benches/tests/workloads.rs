//! The workloads run against the real engine at small sizes, and the
//! `peer-workloads` binary keeps the peer's command-line contract.

use std::num::NonZeroUsize;
use std::process::Command;

use kiln_benches::adapter;
use kiln_benches::error::BenchError;
use kiln_benches::options::{DispatcherKind, Options};
use kiln_benches::report::ProcessContext;
use kiln_benches::workloads::{self, GraphKind, GraphWorkload, W1, W2, W6, W7};

const POOL2: DispatcherKind = DispatcherKind::Pool {
    threads: NonZeroUsize::new(2).expect("2 > 0"),
};
const DISPATCHERS: [DispatcherKind; 2] = [DispatcherKind::InPlace, POOL2];

fn info(rep: &kiln_benches::report::Rep, key: &str) -> f64 {
    rep.info
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no info key {key}"))
}

#[test]
fn lookup_workloads_run_and_verify() {
    for d in DISPATCHERS {
        for b in [1, 7, 100] {
            let rep = W1 { n: 1_000, b }.rep(d).expect("w1");
            assert_eq!(rep.phases.len(), 3);
            let calls = info(&rep, "lookup_calls_per_sec") * rep.main.as_secs_f64();
            let want = 1_000usize.div_ceil(b) as f64;
            assert!(
                (calls - want).abs() < 1e-6 * want,
                "b={b}: {calls} lookup calls, want {want}"
            );
        }
        W2 {
            libs: 4,
            per_lib: 100,
            lookups: 400,
            b: 3,
        }
        .rep(d)
        .expect("w2");
        W6 { n: 500 }.rep(d).expect("w6");
        W7 {
            n: 300,
            threads: 2,
            per_thread: 500,
        }
        .rep(d)
        .expect("w7");
    }
}

#[test]
fn w2_rejects_more_queries_than_symbols() {
    let err = W2 {
        libs: 2,
        per_lib: 10,
        lookups: 21,
        b: 1,
    }
    .rep(DispatcherKind::InPlace)
    .expect_err("21 queries over 2 libs need 11 symbols per lib");
    assert!(
        matches!(err, BenchError::Params { workload: "w2", .. }),
        "{err}"
    );
}

#[test]
fn graph_workloads_materialize_every_unit_once() {
    for kind in [GraphKind::Chain, GraphKind::Cycles, GraphKind::FaninDag] {
        let w = GraphWorkload::new(kind, 600, kind.default_libs(), 4, 42).expect("graph");
        for d in DISPATCHERS {
            let rep = w.rep(d).expect("graph rep");
            let first = info(&rep, "first_materialized_index");
            assert!((0.0..600.0).contains(&first), "{kind:?}: first {first}");
            assert!(info(&rep, "max_concurrent_materialize") >= 1.0);
            let after = info(&rep, "emits_after_deps_emitted");
            assert!((0.0..=600.0).contains(&after));
            if kind == GraphKind::Cycles {
                // In a cycle, the unit that checks first cannot find its
                // dependency emitted, whatever the order or concurrency.
                assert!(after < 600.0, "{after}");
            }
        }
    }
}

#[test]
fn published_graphs_are_accepted() {
    for kind in [GraphKind::Chain, GraphKind::Cycles, GraphKind::FaninDag] {
        let w = GraphWorkload::new(kind, 10_000, kind.default_libs(), 4, 42).expect("published");
        assert!(w.dependencies().edge_count() > 9_000);
    }
    assert!(GraphWorkload::new(GraphKind::Chain, 0, 1, 4, 42).is_err());
}

#[test]
fn missing_names_are_an_engine_error() {
    let session = adapter::new_session(DispatcherKind::InPlace);
    let jd = adapter::create_dylib("t", &session, "main").expect("dylib");
    let names = adapter::intern_indexed(&session, "x", 2);
    adapter::define_absolute("t", &jd, [(names[0].clone(), 0x10)]).expect("define");
    let order = adapter::exported_order(&[&jd]);
    assert_eq!(
        adapter::lookup_sum("t", &session, &order, &names[..1]).expect("x0"),
        0x10
    );
    let err = adapter::lookup_sum("t", &session, &order, &names).expect_err("x1 is missing");
    assert!(matches!(err, BenchError::Engine { .. }), "{err}");
    assert!(
        err.to_string().contains("x1"),
        "the error names the missing symbol: {err}"
    );
    adapter::end_session(session);
}

#[test]
fn run_reports_the_peer_schema() {
    let o = Options::parse(["w5", "--n=1250", "--reps=3"]).expect("options");
    let report = workloads::run(&o).expect("w5");
    assert_eq!(report.reps.len(), 3);
    let line = report.to_json(ProcessContext::capture());
    for key in [
        "\"workload\":\"w5\"",
        "\"params\":{\"n\":1250,\"libs\":8,\"dispatcher\":\"inplace\",\"max_mat_threads\":-1,\"deps\":4,\"seed\":42}",
        "\"wall_s\":",
        "\"cpu_s\":",
        "\"wall_s_samples\":[",
        "\"define_s\":",
        "\"relookup_all_ready_s\":",
        "\"teardown_s\":",
        "\"first_materialized_index\":",
        "\"max_concurrent_materialize\":",
        "\"edges\":4944,\"edge_hash\":\"125b78fea2cb36c5\"",
        "\"peak_rss_kb\":",
        "\"loadavg_1m_end\":",
        "\"kiln_version\":",
    ] {
        assert!(line.contains(key), "missing {key} in {line}");
    }
}

#[test]
fn w8_reports_first_calls_and_steady_state() {
    let o = Options::parse(["w8", "--n=1100", "--rounds=3", "--reps=2", "--lazy=old"])
        .expect("options");
    let report = workloads::run(&o).expect("w8");
    assert_eq!(report.reps.len(), 2);
    let line = report.to_json(ProcessContext::capture());
    for key in [
        "\"workload\":\"w8\"",
        "\"params\":{\"n\":1100,\"rounds\":3,\"lazy\":\"old\",\"dispatcher\":\"inplace\"}",
        "\"ops_unit\":\"first calls (reentry+materialize+redirect)\"",
        "\"jit_setup_s\":",
        "\"define_and_stub_lookup_s\":",
        "\"steady_rr_s\":",
        "\"direct_hot_s\":",
        "\"first_call_us\":",
        "\"steady_hot_call_ns\":",
        "\"reentries_per_entry\":1,",
    ] {
        assert!(line.contains(key), "missing {key} in {line}");
    }
}

#[test]
fn binary_exit_codes_and_output() {
    let bin = env!("CARGO_BIN_EXE_peer-workloads");
    let out = Command::new(bin)
        .args(["w1", "--n=500", "--reps=1"])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    assert_eq!(stdout.lines().count(), 1);
    assert!(stdout.starts_with("{\"name\":\"W1 lookup-ready\",\"workload\":\"w1\""));

    let out = Command::new(bin)
        .args(["w1", "--bogus=1"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown option"));

    let out = Command::new(bin)
        .args(["w2", "--lookups=1000", "--per-lib=10"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "a failed workload exits with 1");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lookups/libs must be <= per-lib"));
}
