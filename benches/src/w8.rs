//! W8 lazy-call of the peer README (`../shared/peer/orc-bench/README.md`),
//! implemented literally against kiln's lazy reexports
//! (`kiln_linker::lazy`, real trampolines and stubs in JIT memory).
//!
//! Per rep, on a fresh session:
//! * bodies: the 1024 distinct functions of [`crate::lazy_calls`], each
//!   exactly `int64_t f(int64_t x) { return x + 1; }`
//!   (`lea 1(%rdi), %rax; ret`), checked distinct before anything runs. For i in 0..N, `impl{i}` is
//!   defined as **its own** absolute-symbols unit (materialized by the first
//!   lookup that touches it, like ORC's `absoluteSymbols`) at body `i % 1024`,
//!   flags `Exported|Callable`, in dylib `"impl"`;
//! * entries: `entry{i}` is a lazy reexport of `impl{i}`, flags
//!   `Exported|Callable`, all N in **one** lazy-reexports unit in dylib
//!   `"lazy"` (the peer's old-API layout: explicit body dylib, in-process, no
//!   runtime).
//!
//! Phases (names as the peer reports them):
//! * `jit_setup_s`: creating the dylibs and the lazy reexports manager;
//! * `define_and_stub_lookup_s`: defining the N body units and the
//!   reexports unit, then one lookup of all N entries (all symbols) → stub
//!   addresses (checked: no entry's address is its body's);
//! * **timed, first call**: `for i in 0..N: acc += entry_i(i)` (checked:
//!   Σ(i+1)); each call goes stub → trampoline → reentry → lookup and
//!   materialization of `impl{i}` → stub redirected → body.
//!   `first_call_us` = wall / N. Then checked: exactly one reentry per
//!   entry, and every stub's slot holds its body's address;
//! * steady state, R rounds (10 M calls per pattern for N = 1000,
//!   R = 10 000), every result summed and checked:
//!   round-robin `for r in 0..R: for i in 0..N: acc += entry_i(i)`, hot
//!   `for i in 0..N: for r in 0..R: acc += entry_i(i)`, and the same two
//!   loops through plain function pointers to the bodies (the baseline).
//!   Checked afterwards: no reentry happened in steady state;
//! * `teardown_s`: ending the session.
//!
//! [`run_w8`] runs the reps and reports medians ([`W8Result`]); [`W8::rep`]
//! runs one rep ([`W8Rep`]) for harnesses that keep their own statistics.

use std::hint::black_box;
use std::time::{Duration, Instant};

use kiln_engine::{
    Alias, Dylib, DylibLookup, InPlaceDispatcher, LazyReexports, LookupSet, RequiredState,
    SearchOrder, Session, SymbolDef, SymbolFlags, SymbolName, WorkerPool, absolute_symbols,
};
use kiln_linker::lazy::JitLazyReexports;

use crate::lazy_calls::{
    NUM_TARGETS, TargetFn, call_hot, call_round_robin, expected_once, targets,
};

/// Body `i % 1024` of [`crate::lazy_calls::targets`].
fn body(i: usize) -> TargetFn {
    targets()[i % NUM_TARGETS]
}

fn fn_addr(f: TargetFn) -> u64 {
    f as usize as u64
}

/// Why a W8 run failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum W8Error {
    /// The engine or the lazy-reexports machinery returned an error.
    #[error("w8: error during {during}: {message}")]
    Engine {
        /// What was being done.
        during: &'static str,
        /// The error, rendered with its cause.
        message: String,
    },
    /// A result did not match what the workload requires.
    #[error("w8: check failed: {0}")]
    Check(String),
    /// A parameter is invalid.
    #[error("w8: bad parameter: {0}")]
    Usage(String),
}

fn engine(during: &'static str) -> impl FnOnce(kiln_engine::Error) -> W8Error {
    move |e| W8Error::Engine {
        during,
        message: e.to_string(),
    }
}

/// Which dispatcher the session runs materializations on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum W8Dispatcher {
    /// `inplace`: every task runs on the thread that dispatches it.
    InPlace,
    /// `dynamic`: a worker pool of this many threads.
    Pool(usize),
}

impl W8Dispatcher {
    /// Parses the peer's names: `inplace`, or `dynamic` (a pool with one
    /// worker per core).
    ///
    /// # Errors
    /// [`W8Error::Usage`] for any other name.
    pub fn parse(name: &str) -> Result<W8Dispatcher, W8Error> {
        match name {
            "inplace" => Ok(W8Dispatcher::InPlace),
            "dynamic" => Ok(W8Dispatcher::Pool(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            other => Err(W8Error::Usage(format!(
                "dispatcher `{other}` (expected inplace or dynamic)"
            ))),
        }
    }

    /// The peer's name.
    pub fn key(self) -> &'static str {
        match self {
            W8Dispatcher::InPlace => "inplace",
            W8Dispatcher::Pool(_) => "dynamic",
        }
    }

    fn session(self) -> Session {
        match self {
            W8Dispatcher::InPlace => Session::builder()
                .dispatcher(InPlaceDispatcher::new())
                .build(),
            W8Dispatcher::Pool(threads) => Session::builder()
                .dispatcher(WorkerPool::new(threads.max(1)))
                .build(),
        }
    }
}

/// One W8 configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct W8 {
    /// Entry points (peer: 1000).
    pub n: usize,
    /// Steady-state rounds R (peer: 10 000).
    pub rounds: usize,
    /// The dispatcher.
    pub dispatcher: W8Dispatcher,
}

/// One repetition's measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct W8Rep {
    /// Creating the dylibs and the lazy reexports manager.
    pub jit_setup: Duration,
    /// Defining the bodies and entries and looking all entries up.
    pub define_and_stub_lookup: Duration,
    /// The timed phase: N first calls.
    pub first_calls: Duration,
    /// Round-robin through the stubs (N·R calls).
    pub steady_rr: Duration,
    /// Round-robin through plain function pointers (N·R calls).
    pub direct_rr: Duration,
    /// Hot loop through the stubs (N·R calls).
    pub steady_hot: Duration,
    /// Hot loop through plain function pointers (N·R calls).
    pub direct_hot: Duration,
    /// Ending the session.
    pub teardown: Duration,
    /// Trampoline entries during the first calls (checked = N).
    pub reentries: usize,
}

impl W8Rep {
    /// Microseconds per first call.
    pub fn first_call_us(&self, n: usize) -> f64 {
        self.first_calls.as_secs_f64() * 1e6 / n.max(1) as f64
    }
}

/// Nanoseconds per call of a phase of `calls` calls that took `d`.
pub(crate) fn per_call_ns(d: Duration, calls: usize) -> f64 {
    d.as_secs_f64() * 1e9 / calls.max(1) as f64
}

/// The address the x86-64 stub at `stub` (`jmp *disp32(%rip)`) jumps to.
///
/// # Safety
/// `stub` must be a live kiln redirectable stub (readable code whose slot
/// is live).
#[cfg(target_arch = "x86_64")]
unsafe fn stub_target(stub: u64) -> Option<u64> {
    // SAFETY: the caller guarantees the stub's 8 bytes are mapped readable.
    let code = unsafe { std::ptr::read_unaligned(stub as *const [u8; 8]) };
    if code[..2] != [0xff, 0x25] {
        return None;
    }
    let disp = i32::from_le_bytes([code[2], code[3], code[4], code[5]]);
    let slot = stub.wrapping_add(6).wrapping_add_signed(i64::from(disp));
    // SAFETY: the stub's slot is a live, aligned pointer slot (RW page of
    // the same block); a volatile read sees the redirected value.
    Some(unsafe { std::ptr::read_volatile(slot as *const u64) })
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn stub_target(_stub: u64) -> Option<u64> {
    None
}

fn check_sum(what: &str, got: i64, want: i64) -> Result<(), W8Error> {
    if got == want {
        Ok(())
    } else {
        Err(W8Error::Check(format!(
            "{what}: sum {got}, expected {want}"
        )))
    }
}

/// Checks that the bodies compute `x + 1` ([`targets`] itself checks that
/// they are distinct).
///
/// # Errors
/// [`W8Error::Check`] naming a wrong body.
pub fn check_bodies() -> Result<(), W8Error> {
    for (i, f) in targets().iter().enumerate() {
        if f(i as i64) != i as i64 + 1 {
            return Err(W8Error::Check(format!("body {i} does not compute x + 1")));
        }
    }
    Ok(())
}

/// The timed phases of one rep, on a set-up session.
struct Timed {
    first_calls: Duration,
    reentries: usize,
    steady_rr: Duration,
    direct_rr: Duration,
    steady_hot: Duration,
    direct_hot: Duration,
}

impl W8 {
    /// A configuration; `dispatcher` is `inplace` or `dynamic`.
    ///
    /// # Errors
    /// [`W8Error::Usage`] for an unknown dispatcher or `n == 0`.
    pub fn new(n: usize, rounds: usize, dispatcher: &str) -> Result<W8, W8Error> {
        if n == 0 {
            return Err(W8Error::Usage("n must be at least 1".into()));
        }
        Ok(W8 {
            n,
            rounds,
            dispatcher: W8Dispatcher::parse(dispatcher)?,
        })
    }

    /// Runs one repetition on a fresh session.
    ///
    /// # Errors
    /// Any engine error, or a failed check.
    pub fn rep(&self) -> Result<W8Rep, W8Error> {
        check_bodies()?;
        let n = self.n;
        let session = self.dispatcher.session();
        // Names are interned before timing.
        let impls: Vec<SymbolName> = (0..n)
            .map(|i| session.intern(&format!("impl{i}")))
            .collect();
        let entries: Vec<SymbolName> = (0..n)
            .map(|i| session.intern(&format!("entry{i}")))
            .collect();
        let result = self.rep_on(&session, &impls, &entries);
        let t = Instant::now();
        session.end();
        let teardown = t.elapsed();
        result.map(|(jit_setup, define_and_stub_lookup, timed)| W8Rep {
            jit_setup,
            define_and_stub_lookup,
            first_calls: timed.first_calls,
            steady_rr: timed.steady_rr,
            direct_rr: timed.direct_rr,
            steady_hot: timed.steady_hot,
            direct_hot: timed.direct_hot,
            teardown,
            reentries: timed.reentries,
        })
    }

    fn rep_on(
        &self,
        session: &Session,
        impls: &[SymbolName],
        entries: &[SymbolName],
    ) -> Result<(Duration, Duration, Timed), W8Error> {
        let flags = SymbolFlags::EXPORTED | SymbolFlags::CALLABLE;

        let t = Instant::now();
        let impl_lib = session
            .create_dylib("impl")
            .map_err(engine("creating dylib impl"))?;
        let lazy_lib = session
            .create_dylib("lazy")
            .map_err(engine("creating dylib lazy"))?;
        let jit = JitLazyReexports::new(session).map_err(|e| W8Error::Engine {
            during: "creating the lazy reexports manager",
            message: e.to_string(),
        })?;
        let jit_setup = t.elapsed();

        let t = Instant::now();
        for (i, name) in impls.iter().enumerate() {
            let def = SymbolDef::new(fn_addr(body(i)), flags);
            impl_lib
                .define(absolute_symbols([(name.clone(), def)]))
                .map_err(engine("defining a body unit"))?;
        }
        let aliases = impls.iter().zip(entries).map(|(body, entry)| Alias {
            name: entry.clone(),
            target: body.clone(),
            flags,
        });
        let unit = jit
            .manager()
            .reexports(&impl_lib, aliases)
            .map_err(engine("creating the reexports unit"))?;
        lazy_lib
            .define(unit)
            .map_err(engine("defining the reexports unit"))?;
        let stubs = lookup_stubs(session, &lazy_lib, entries)?;
        let define_and_stub_lookup = t.elapsed();
        for (i, &stub) in stubs.iter().enumerate() {
            if stub == fn_addr(body(i)) {
                return Err(W8Error::Check(format!(
                    "entry{i}'s address is its body's: no stub"
                )));
            }
        }
        let timed = self.timed(jit.manager(), &stubs)?;
        Ok((jit_setup, define_and_stub_lookup, timed))
    }

    fn timed(&self, manager: &LazyReexports, stubs: &[u64]) -> Result<Timed, W8Error> {
        let (n, rounds) = (self.n, self.rounds);
        let entry_fns: Vec<TargetFn> = stubs
            .iter()
            .map(|&s| {
                // SAFETY: each stub is a lazy reexport of a body with the
                // `extern "C" fn(i64) -> i64` signature, live until the
                // session ends (after this function).
                unsafe { std::mem::transmute::<usize, TargetFn>(s as usize) }
            })
            .collect();
        let direct_fns: Vec<TargetFn> = (0..n).map(body).collect();
        let (entry_fns, direct_fns) = (black_box(entry_fns), black_box(direct_fns));

        // (a) first calls.
        let before = manager.reentries();
        let t = Instant::now();
        let mut acc = 0i64;
        for (i, f) in entry_fns.iter().enumerate() {
            acc = acc.wrapping_add(f(i as i64));
        }
        let first_calls = t.elapsed();
        check_sum("first calls", acc, expected_once(n))?;
        let reentries = manager.reentries() - before;
        if reentries != n || manager.linked() != n {
            return Err(W8Error::Check(format!(
                "{reentries} reentries and {} links for {n} first calls (expected exactly one each)",
                manager.linked()
            )));
        }
        for (i, &stub) in stubs.iter().enumerate() {
            // SAFETY: `stub` is a live stub of this session.
            let target = unsafe { stub_target(stub) };
            let body = fn_addr(body(i));
            if target.is_some_and(|t| t != body) {
                return Err(W8Error::Check(format!(
                    "entry{i}'s stub jumps to {:#x}, not its body {body:#x}",
                    target.unwrap_or_default()
                )));
            }
        }

        // (b) steady state.
        // Both patterns call every entry `rounds` times with its own index.
        let want = expected_once(n).wrapping_mul(rounds as i64);
        let rr = call_round_robin as fn(&[TargetFn], usize) -> i64;
        let hot = call_hot as fn(&[TargetFn], usize) -> i64;
        let steady_rr = timed_loop(rr, &entry_fns, rounds, want, "steady round-robin")?;
        let direct_rr = timed_loop(rr, &direct_fns, rounds, want, "direct round-robin")?;
        let steady_hot = timed_loop(hot, &entry_fns, rounds, want, "steady hot")?;
        let direct_hot = timed_loop(hot, &direct_fns, rounds, want, "direct hot")?;
        if manager.reentries() - before != n {
            return Err(W8Error::Check(format!(
                "{} reentries during steady state (expected none)",
                manager.reentries() - before - n
            )));
        }
        Ok(Timed {
            first_calls,
            reentries,
            steady_rr,
            direct_rr,
            steady_hot,
            direct_hot,
        })
    }
}

fn lookup_stubs(
    session: &Session,
    lazy_lib: &Dylib,
    entries: &[SymbolName],
) -> Result<Vec<u64>, W8Error> {
    let order = SearchOrder::new().with(lazy_lib, DylibLookup::All);
    let found = session
        .lookup(
            &order,
            &LookupSet::required(entries.iter().cloned()),
            RequiredState::Ready,
        )
        .wait()
        .map_err(engine("looking the entries up"))?;
    // `SymbolMap::get` scans; index the result once.
    let by_name: std::collections::HashMap<&SymbolName, u64> = found
        .iter()
        .map(|(name, def)| (name, def.address))
        .collect();
    entries
        .iter()
        .map(|e| {
            by_name
                .get(e)
                .copied()
                .ok_or_else(|| W8Error::Check(format!("{e} missing from the entry lookup")))
        })
        .collect()
}

/// Times `pattern` over `fns` and checks its sum against `want`.
fn timed_loop(
    pattern: fn(&[TargetFn], usize) -> i64,
    fns: &[TargetFn],
    rounds: usize,
    want: i64,
    what: &str,
) -> Result<Duration, W8Error> {
    let t = Instant::now();
    let acc = pattern(black_box(fns), rounds);
    let d = t.elapsed();
    check_sum(what, black_box(acc), want)?;
    Ok(d)
}

/// W8 over several reps: medians of the fields the peer reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct W8Result {
    /// The configuration.
    pub config: W8,
    /// Each rep's measurements.
    pub reps: Vec<W8Rep>,
    /// Median wall seconds of the timed phase (N first calls): the peer's `wall_s`.
    pub wall_s: f64,
    /// Median µs per first call.
    pub first_call_us: f64,
    /// Median ns per round-robin call through the stubs.
    pub steady_rr_call_ns: f64,
    /// Median ns per round-robin call through plain function pointers.
    pub direct_rr_call_ns: f64,
    /// Median ns per hot call through the stubs.
    pub steady_hot_call_ns: f64,
    /// Median ns per hot call through plain function pointers.
    pub direct_hot_call_ns: f64,
    /// Median `jit_setup_s`.
    pub jit_setup_s: f64,
    /// Median `define_and_stub_lookup_s`.
    pub define_and_stub_lookup_s: f64,
    /// Median `teardown_s`.
    pub teardown_s: f64,
    /// Reentries per entry in the first-call phase (checked: exactly 1 in
    /// every rep) — and none in steady state (checked).
    pub reentries_per_entry: f64,
}

impl W8Result {
    /// The peer's reported fields, in its order, as `(key, value)`.
    pub fn fields(&self) -> Vec<(&'static str, f64)> {
        vec![
            ("wall_s", self.wall_s),
            (
                "ops_per_sec",
                self.config.n as f64 / self.wall_s.max(f64::MIN_POSITIVE),
            ),
            ("first_call_us", self.first_call_us),
            ("steady_rr_call_ns", self.steady_rr_call_ns),
            ("direct_rr_call_ns", self.direct_rr_call_ns),
            ("steady_hot_call_ns", self.steady_hot_call_ns),
            ("direct_hot_call_ns", self.direct_hot_call_ns),
            ("jit_setup_s", self.jit_setup_s),
            ("define_and_stub_lookup_s", self.define_and_stub_lookup_s),
            ("teardown_s", self.teardown_s),
            ("reentries_per_entry", self.reentries_per_entry),
        ]
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        len if len % 2 == 1 => v[len / 2],
        len => (v[len / 2 - 1] + v[len / 2]) / 2.0,
    }
}

/// Runs W8 `reps` times with `n` entries, `rounds` steady-state rounds and
/// the `dispatcher` named as the peer names it (`inplace` | `dynamic`), each
/// rep on a fresh session, and returns the medians. The peer's matrix row
/// is `run_w8(1000, 10_000, 5, "inplace")`.
///
/// # Errors
/// A bad parameter, an engine error, or a failed check (wrong sum, a
/// missing or extra reentry, a stub not redirected to its body).
pub fn run_w8(n: usize, rounds: usize, reps: usize, dispatcher: &str) -> Result<W8Result, W8Error> {
    let config = W8::new(n, rounds, dispatcher)?;
    if reps == 0 {
        return Err(W8Error::Usage("reps must be at least 1".into()));
    }
    let reps: Vec<W8Rep> = (0..reps).map(|_| config.rep()).collect::<Result<_, _>>()?;
    let calls = n.saturating_mul(rounds);
    let med = |f: &dyn Fn(&W8Rep) -> f64| median(reps.iter().map(f).collect());
    Ok(W8Result {
        config,
        wall_s: med(&|r| r.first_calls.as_secs_f64()),
        first_call_us: med(&|r| r.first_call_us(n)),
        steady_rr_call_ns: med(&|r| per_call_ns(r.steady_rr, calls)),
        direct_rr_call_ns: med(&|r| per_call_ns(r.direct_rr, calls)),
        steady_hot_call_ns: med(&|r| per_call_ns(r.steady_hot, calls)),
        direct_hot_call_ns: med(&|r| per_call_ns(r.direct_hot, calls)),
        jit_setup_s: med(&|r| r.jit_setup.as_secs_f64()),
        define_and_stub_lookup_s: med(&|r| r.define_and_stub_lookup.as_secs_f64()),
        teardown_s: med(&|r| r.teardown.as_secs_f64()),
        reentries_per_entry: med(&|r| r.reentries as f64 / n as f64),
        reps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_compute_x_plus_one() {
        check_bodies().unwrap();
        assert_eq!(body(1023 + 1024)(41), 42);
    }

    #[test]
    fn small_w8_runs_with_both_dispatchers() {
        for d in ["inplace", "dynamic"] {
            let r = run_w8(1100, 3, 2, d).unwrap();
            assert_eq!(r.reps.len(), 2);
            assert_eq!(r.reentries_per_entry, 1.0);
            assert!(r.first_call_us > 0.0 && r.steady_rr_call_ns > 0.0);
            assert_eq!(r.fields().len(), 11);
        }
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(matches!(
            run_w8(10, 1, 1, "threads"),
            Err(W8Error::Usage(_))
        ));
        assert!(matches!(run_w8(0, 1, 1, "inplace"), Err(W8Error::Usage(_))));
        assert!(matches!(
            run_w8(10, 1, 0, "inplace"),
            Err(W8Error::Usage(_))
        ));
    }
}
