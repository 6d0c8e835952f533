//! The command line shared with the peer's `orc_bench`.
//!
//! `peer-workloads <w1..w8> [--key=value ...]` takes the same keys, with the
//! same defaults, as `../shared/peer/orc-bench/orc_bench.cpp`, so one matrix
//! script can drive both programs. Numbers are decimal or `0x` hexadecimal.
//! Unlike the peer, a malformed number is an error rather than a silent zero.

use std::fmt;
use std::num::NonZeroUsize;

use crate::error::UsageError;

/// The usage line printed on a command-line error.
pub const USAGE: &str = "usage: peer-workloads <w1|w2|w3|w4|w5|w6|w7|w8> [--n=N] [--b=B] \
[--threads=T] [--per-thread=K] [--reps=R] [--libs=L] [--per-lib=K] [--lookups=K] \
[--deps=D] [--seed=S] [--rounds=R] [--dispatcher=inplace|dynamic] \
[--max-mat-threads=M] [--lazy=new|old] [--lookup-api=positional|set]";

/// One of the eight peer workloads (see the peer README for the definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Workload {
    /// W1 lookup-ready.
    W1,
    /// W2 lookup-linkorder.
    W2,
    /// W3 materialize-chain.
    W3,
    /// W4 materialize-cycles.
    W4,
    /// W5 fanin-dag.
    W5,
    /// W6 generator.
    W6,
    /// W7 concurrent-lookups.
    W7,
    /// W8 lazy-call.
    W8,
}

impl Workload {
    /// The short name used on the command line and in the JSON `workload` key.
    pub fn key(self) -> &'static str {
        match self {
            Workload::W1 => "w1",
            Workload::W2 => "w2",
            Workload::W3 => "w3",
            Workload::W4 => "w4",
            Workload::W5 => "w5",
            Workload::W6 => "w6",
            Workload::W7 => "w7",
            Workload::W8 => "w8",
        }
    }

    fn from_key(s: &str) -> Option<Self> {
        Some(match s {
            "w1" => Workload::W1,
            "w2" => Workload::W2,
            "w3" => Workload::W3,
            "w4" => Workload::W4,
            "w5" => Workload::W5,
            "w6" => Workload::W6,
            "w7" => Workload::W7,
            "w8" => Workload::W8,
            _ => return None,
        })
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// Which task dispatcher a session is built with.
///
/// The peer's `inplace` is ORC's `InPlaceTaskDispatcher`; kiln's equivalent is
/// its in-place dispatcher. The peer's `dynamic` is ORC's
/// `DynamicThreadPoolTaskDispatcher`; kiln's equivalent is its worker pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DispatcherKind {
    /// Every task runs synchronously on the thread that dispatches it.
    InPlace,
    /// Tasks run on a pool of `threads` worker threads.
    Pool {
        /// Number of worker threads.
        threads: NonZeroUsize,
    },
}

impl DispatcherKind {
    /// The peer's name for this dispatcher (`inplace` or `dynamic`).
    pub fn key(self) -> &'static str {
        match self {
            DispatcherKind::InPlace => "inplace",
            DispatcherKind::Pool { .. } => "dynamic",
        }
    }

    /// Worker-pool size, or `None` for the in-place dispatcher.
    pub fn pool_threads(self) -> Option<usize> {
        match self {
            DispatcherKind::InPlace => None,
            DispatcherKind::Pool { threads } => Some(threads.get()),
        }
    }
}

/// W8's lazy-reexport API selector (`--lazy`); kept for command-line
/// compatibility with the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LazyApi {
    /// ORC's `LazyReexportsManager` (the peer's default).
    New,
    /// ORC's `LazyCallThroughManager`.
    Old,
}

impl LazyApi {
    /// The command-line spelling.
    pub fn key(self) -> &'static str {
        match self {
            LazyApi::New => "new",
            LazyApi::Old => "old",
        }
    }
}

/// Parsed command line. Field defaults are the peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The workload to run.
    pub workload: Workload,
    /// `--n`: symbol count; `None` means the workload's default.
    pub n: Option<usize>,
    /// `--b`: batch size for W1/W2 (default 1).
    pub b: usize,
    /// `--threads`: W7 thread count (default 1).
    pub threads: usize,
    /// `--per-thread`: W7 lookups per thread (default 50 000).
    pub per_thread: usize,
    /// `--reps`: repetitions, each on a fresh session (default 5).
    pub reps: usize,
    /// `--libs`: number of dylibs for W2–W5; `None` means the default.
    pub libs: Option<usize>,
    /// `--per-lib`: W2 symbols per lib (default 10 000).
    pub per_lib: usize,
    /// `--lookups`: W2 query count (default 100 000).
    pub lookups: usize,
    /// `--deps`: W5 dependency draws per symbol (default 4).
    pub deps: usize,
    /// `--seed`: W5 SplitMix64 seed (default 42).
    pub seed: u64,
    /// `--rounds`: W8 steady-state rounds (default 10 000).
    pub rounds: usize,
    /// `--dispatcher` (with `--max-mat-threads` giving the pool size).
    pub dispatcher: DispatcherKind,
    /// `--max-mat-threads` as given (-1 = not given), echoed in the JSON
    /// params like the peer does.
    pub max_mat_threads: i64,
    /// `--lazy`: W8 API selector (default `new`).
    pub lazy: LazyApi,
    /// `--lookup-api` (kiln only): how W1, W2 and W7 call kiln, `positional`
    /// or `set` (default: `$KILN_BENCH_LOOKUP`, else `positional`).
    pub lookup_api: Option<&'static str>,
}

impl Options {
    /// Options for `workload` with every other value at the peer's default.
    pub fn new(workload: Workload) -> Self {
        Options {
            workload,
            n: None,
            b: 1,
            threads: 1,
            per_thread: 50_000,
            reps: 5,
            libs: None,
            per_lib: 10_000,
            lookups: 100_000,
            deps: 4,
            seed: 42,
            rounds: 10_000,
            dispatcher: DispatcherKind::InPlace,
            max_mat_threads: -1,
            lazy: LazyApi::New,
            lookup_api: None,
        }
    }

    /// Parses the arguments after the program name.
    pub fn parse<I, S>(args: I) -> Result<Self, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut args = args.into_iter();
        let first = args.next().ok_or(UsageError::MissingWorkload)?;
        let workload = Workload::from_key(first.as_ref())
            .ok_or_else(|| UsageError::UnknownWorkload(first.as_ref().to_owned()))?;
        let mut o = Options::new(workload);
        let mut dynamic = false;
        for arg in args {
            let arg = arg.as_ref();
            let (key, value) = arg
                .strip_prefix("--")
                .and_then(|kv| kv.split_once('='))
                .ok_or_else(|| UsageError::Malformed(arg.to_owned()))?;
            let num = || parse_u64(key, value);
            let size = || parse_usize(key, value);
            match key {
                "n" => o.n = Some(size()?),
                "b" => o.b = size()?,
                "threads" => o.threads = size()?,
                "per-thread" => o.per_thread = size()?,
                "reps" => o.reps = size()?,
                "libs" => o.libs = Some(size()?),
                "per-lib" => o.per_lib = size()?,
                "lookups" => o.lookups = size()?,
                "deps" => o.deps = size()?,
                "seed" => o.seed = num()?,
                "rounds" => o.rounds = size()?,
                "dispatcher" => {
                    dynamic = match value {
                        "inplace" => false,
                        "dynamic" => true,
                        _ => return Err(UsageError::bad(key, value, "inplace or dynamic")),
                    }
                }
                "max-mat-threads" => {
                    o.max_mat_threads = match value {
                        "-1" => -1,
                        _ => {
                            let m = size()?;
                            if m == 0 {
                                return Err(UsageError::bad(
                                    key,
                                    value,
                                    "-1 (pool sized to the machine) or at least 1",
                                ));
                            }
                            i64::try_from(m)
                                .map_err(|_| UsageError::bad(key, value, "a smaller number"))?
                        }
                    }
                }
                "lazy" => {
                    o.lazy = match value {
                        "new" => LazyApi::New,
                        "old" => LazyApi::Old,
                        _ => return Err(UsageError::bad(key, value, "new or old")),
                    }
                }
                "lookup-api" => {
                    o.lookup_api = Some(match value {
                        "positional" => "positional",
                        "set" => "set",
                        _ => return Err(UsageError::bad(key, value, "positional or set")),
                    })
                }
                "orc-rt" => return Err(UsageError::NotApplicable(key.to_owned())),
                _ => return Err(UsageError::UnknownOption(arg.to_owned())),
            }
        }
        if o.b == 0 {
            return Err(UsageError::bad("b", "0", "a batch size > 0"));
        }
        if o.reps == 0 {
            return Err(UsageError::bad("reps", "0", "at least one repetition"));
        }
        if o.threads == 0 {
            return Err(UsageError::bad("threads", "0", "at least one thread"));
        }
        if matches!(o.libs, Some(0)) {
            return Err(UsageError::bad("libs", "0", "at least one dylib"));
        }
        if dynamic {
            let threads = match usize::try_from(o.max_mat_threads)
                .ok()
                .and_then(NonZeroUsize::new)
            {
                Some(t) => t,
                None => std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            };
            o.dispatcher = DispatcherKind::Pool { threads };
        }
        Ok(o)
    }
}

fn parse_u64(key: &str, value: &str) -> Result<u64, UsageError> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse::<u64>(),
    };
    parsed.map_err(|_| UsageError::bad(key, value, "a decimal or 0x-hexadecimal integer"))
}

fn parse_usize(key: &str, value: &str) -> Result<usize, UsageError> {
    usize::try_from(parse_u64(key, value)?)
        .map_err(|_| UsageError::bad(key, value, "a number that fits in usize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_peer() {
        let o = Options::parse(["w5"]).expect("valid");
        assert_eq!(o, Options::new(Workload::W5));
        assert_eq!(o.b, 1);
        assert_eq!(o.reps, 5);
        assert_eq!(o.per_thread, 50_000);
        assert_eq!(o.per_lib, 10_000);
        assert_eq!(o.lookups, 100_000);
        assert_eq!(o.deps, 4);
        assert_eq!(o.seed, 42);
        assert_eq!(o.dispatcher, DispatcherKind::InPlace);
    }

    #[test]
    fn parses_every_key() {
        let o = Options::parse([
            "w7",
            "--n=0x10",
            "--b=100",
            "--threads=2",
            "--per-thread=7",
            "--reps=3",
            "--libs=4",
            "--per-lib=9",
            "--lookups=11",
            "--deps=2",
            "--seed=0xdeadbeef",
            "--rounds=5",
            "--dispatcher=dynamic",
            "--max-mat-threads=3",
            "--lazy=old",
        ])
        .expect("valid");
        assert_eq!(o.workload, Workload::W7);
        assert_eq!(o.n, Some(16));
        assert_eq!((o.b, o.threads, o.per_thread, o.reps), (100, 2, 7, 3));
        assert_eq!((o.libs, o.per_lib, o.lookups, o.deps), (Some(4), 9, 11, 2));
        assert_eq!((o.seed, o.rounds), (0xdead_beef, 5));
        assert_eq!(o.dispatcher.pool_threads(), Some(3));
        assert_eq!(o.dispatcher.key(), "dynamic");
        assert_eq!(o.max_mat_threads, 3);
        assert_eq!(o.lazy, LazyApi::Old);
    }

    #[test]
    fn lookup_api_is_kiln_only_and_checked() {
        assert_eq!(Options::parse(["w1"]).expect("valid").lookup_api, None);
        let o = Options::parse(["w1", "--lookup-api=set"]).expect("valid");
        assert_eq!(o.lookup_api, Some("set"));
        assert!(Options::parse(["w1", "--lookup-api=fast"]).is_err());
    }

    #[test]
    fn dynamic_without_cap_uses_the_machine() {
        let o = Options::parse(["w3", "--dispatcher=dynamic"]).expect("valid");
        assert!(o.dispatcher.pool_threads().is_some_and(|t| t >= 1));
        assert_eq!(o.max_mat_threads, -1);
    }

    #[test]
    fn rejects_bad_input() {
        let err = |args: &[&str]| Options::parse(args.iter().copied()).expect_err("must fail");
        assert!(matches!(err(&[]), UsageError::MissingWorkload));
        assert!(matches!(err(&["w9"]), UsageError::UnknownWorkload(w) if w == "w9"));
        assert!(matches!(err(&["w1", "--n"]), UsageError::Malformed(_)));
        assert!(matches!(err(&["w1", "n=3"]), UsageError::Malformed(_)));
        assert!(matches!(
            err(&["w1", "--frob=3"]),
            UsageError::UnknownOption(_)
        ));
        assert!(matches!(
            err(&["w1", "--n=12x"]),
            UsageError::BadValue { .. }
        ));
        assert!(matches!(err(&["w1", "--b=0"]), UsageError::BadValue { .. }));
        assert!(matches!(
            err(&["w1", "--reps=0"]),
            UsageError::BadValue { .. }
        ));
        assert!(matches!(
            err(&["w1", "--dispatcher=pool"]),
            UsageError::BadValue { .. }
        ));
        assert!(matches!(
            err(&["w1", "--max-mat-threads=0"]),
            UsageError::BadValue { .. }
        ));
        assert!(matches!(
            err(&["w8", "--orc-rt=/x.a"]),
            UsageError::NotApplicable(_)
        ));
    }
}
