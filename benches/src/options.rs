//! The command line shared with the peer's `orc_bench`.
//!
//! `peer-workloads <w1..w8> [--key=value ...]` takes the same keys, with the
//! same defaults, as `../shared/peer/orc-bench/orc_bench.cpp`, so one matrix
//! script can drive both programs. Numbers are decimal or `0x` hexadecimal.
//! Unlike the peer, a malformed number is an error rather than a silent zero.
//! Parsed with clap (`--key value` works too; `--help` lists every key).

use std::fmt;
use std::num::NonZeroUsize;

use clap::{CommandFactory, Parser, ValueEnum};

use crate::error::UsageError;

/// The usage line printed on a command-line error.
pub fn usage() -> String {
    Cli::command().render_usage().to_string()
}

/// One of the eight peer workloads (see the peer README for the definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
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
    /// W9 cranelift-link (issue 12; kiln only, with cranelift-jit as the peer).
    W9,
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
            Workload::W9 => "w9",
        }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
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

/// W9's backend (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum W9Backend {
    /// kiln through its builder (`kiln_linker::Jit`), given cranelift-object's objects.
    Kiln,
    /// The builder given the same objects in one call (`Jit::add_objects`):
    /// linked as one image.
    KilnOneImage,
    /// kiln through `kiln-cranelift`'s `Module`.
    KilnCranelift,
    /// cranelift-jit's `JITModule` (the peer).
    CraneliftJit,
}

impl W9Backend {
    /// The command-line spelling.
    pub fn key(self) -> &'static str {
        match self {
            W9Backend::Kiln => "kiln",
            W9Backend::KilnOneImage => "kiln-one-image",
            W9Backend::KilnCranelift => "kiln-cranelift",
            W9Backend::CraneliftJit => "cranelift-jit",
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
    /// `--modules`: W9 modules (default 10).
    pub modules: usize,
    /// `--backend`: W9 backend (default `kiln-cranelift`).
    pub backend: W9Backend,
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
            modules: 10,
            backend: W9Backend::KilnCranelift,
        }
    }

    /// Parses the arguments after the program name.
    pub fn parse<I, S>(args: I) -> Result<Self, UsageError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let args: Vec<String> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let cli = Cli::try_parse_from(&args).map_err(usage_error)?;
        cli.into_options()
    }
}

/// The peer's `--dispatcher` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DispatcherArg {
    /// Every task on the dispatching thread.
    Inplace,
    /// A worker pool of `--max-mat-threads` threads.
    Dynamic,
}

/// `--lookup-api` values (kiln only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LookupApiArg {
    /// By position (the default).
    Positional,
    /// Through a lookup set and its symbol map.
    Set,
}

/// The command line, as clap sees it.
#[derive(Debug, Parser)]
#[command(
    name = "peer-workloads",
    no_binary_name = true,
    about = "kiln's side of the ORC peer comparison"
)]
struct Cli {
    /// The workload.
    #[arg(value_enum)]
    workload: Workload,
    /// Symbol count (default: the workload's).
    #[arg(long, value_parser = parse_usize)]
    n: Option<usize>,
    /// Batch size for W1/W2.
    #[arg(long, default_value = "1", value_parser = parse_usize)]
    b: usize,
    /// W7 thread count.
    #[arg(long, default_value = "1", value_parser = parse_usize)]
    threads: usize,
    /// W7 lookups per thread.
    #[arg(long = "per-thread", default_value = "50000", value_parser = parse_usize)]
    per_thread: usize,
    /// Repetitions, each on a fresh session.
    #[arg(long, default_value = "5", value_parser = parse_usize)]
    reps: usize,
    /// Number of dylibs for W2-W5 (default: the workload's).
    #[arg(long, value_parser = parse_usize)]
    libs: Option<usize>,
    /// W2 symbols per lib.
    #[arg(long = "per-lib", default_value = "10000", value_parser = parse_usize)]
    per_lib: usize,
    /// W2 query count.
    #[arg(long, default_value = "100000", value_parser = parse_usize)]
    lookups: usize,
    /// W5 dependency draws per symbol.
    #[arg(long, default_value = "4", value_parser = parse_usize)]
    deps: usize,
    /// W5 SplitMix64 seed.
    #[arg(long, default_value = "42", value_parser = parse_u64)]
    seed: u64,
    /// W8 steady-state rounds.
    #[arg(long, default_value = "10000", value_parser = parse_usize)]
    rounds: usize,
    /// The task dispatcher.
    #[arg(long, value_enum, default_value = "inplace")]
    dispatcher: DispatcherArg,
    /// Pool size for `--dispatcher=dynamic` (-1: one per core).
    #[arg(long = "max-mat-threads", default_value = "-1", allow_hyphen_values = true, value_parser = parse_max_threads)]
    max_mat_threads: i64,
    /// W8 API selector (the peer's; kiln has one).
    #[arg(long, value_enum, default_value = "new")]
    lazy: LazyApi,
    /// How W1, W2 and W7 call kiln (default: `$KILN_BENCH_LOOKUP`, else positional).
    #[arg(long = "lookup-api", value_enum)]
    lookup_api: Option<LookupApiArg>,
    /// W9 modules.
    #[arg(long, default_value = "10", value_parser = parse_usize)]
    modules: usize,
    /// W9 backend.
    #[arg(long, value_enum, default_value = "kiln-cranelift")]
    backend: W9Backend,
    /// The peer's ORC runtime archive: not applicable to kiln.
    #[arg(long = "orc-rt", hide = true)]
    orc_rt: Option<String>,
}

impl Cli {
    fn into_options(self) -> Result<Options, UsageError> {
        if self.orc_rt.is_some() {
            return Err(UsageError::NotApplicable("orc-rt".into()));
        }
        let positive = [
            (self.b, "b", "a batch size > 0"),
            (self.reps, "reps", "at least one repetition"),
            (self.threads, "threads", "at least one thread"),
            (self.libs.unwrap_or(1), "libs", "at least one dylib"),
            (self.modules, "modules", "at least one module"),
        ];
        if let Some((_, key, expected)) = positive.iter().find(|(v, _, _)| *v == 0) {
            return Err(UsageError::bad(key, "0", expected));
        }
        let dispatcher = match self.dispatcher {
            DispatcherArg::Inplace => DispatcherKind::InPlace,
            DispatcherArg::Dynamic => DispatcherKind::Pool {
                threads: usize::try_from(self.max_mat_threads)
                    .ok()
                    .and_then(NonZeroUsize::new)
                    .unwrap_or_else(|| {
                        std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN)
                    }),
            },
        };
        Ok(Options {
            workload: self.workload,
            n: self.n,
            b: self.b,
            threads: self.threads,
            per_thread: self.per_thread,
            reps: self.reps,
            libs: self.libs,
            per_lib: self.per_lib,
            lookups: self.lookups,
            deps: self.deps,
            seed: self.seed,
            rounds: self.rounds,
            dispatcher,
            max_mat_threads: self.max_mat_threads,
            lazy: self.lazy,
            lookup_api: self.lookup_api.map(|a| match a {
                LookupApiArg::Positional => "positional",
                LookupApiArg::Set => "set",
            }),
            modules: self.modules,
            backend: self.backend,
        })
    }
}

/// clap's error as a [`UsageError`] (help and version requests included:
/// [`UsageError::Help`] carries the text to print).
fn usage_error(e: clap::Error) -> UsageError {
    use clap::error::{ContextKind, ErrorKind};
    let context = |kind| e.get(kind).map(|v| v.to_string()).unwrap_or_default();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => UsageError::Help(e.to_string()),
        ErrorKind::MissingRequiredArgument => UsageError::MissingWorkload,
        ErrorKind::InvalidValue if context(ContextKind::InvalidArg).contains("WORKLOAD") => {
            UsageError::UnknownWorkload(context(ContextKind::InvalidValue))
        }
        ErrorKind::UnknownArgument => UsageError::UnknownOption(context(ContextKind::InvalidArg)),
        _ => UsageError::Invalid(e.render().to_string().trim_end().to_owned()),
    }
}

fn parse_u64(value: &str) -> Result<u64, String> {
    let parsed = match value
        .strip_prefix("0x")
        .or_else(|| value.strip_prefix("0X"))
    {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => value.parse::<u64>(),
    };
    parsed.map_err(|_| "expected a decimal or 0x-hexadecimal integer".to_owned())
}

fn parse_usize(value: &str) -> Result<usize, String> {
    usize::try_from(parse_u64(value)?).map_err(|_| "expected a number that fits in usize".into())
}

fn parse_max_threads(value: &str) -> Result<i64, String> {
    if value == "-1" {
        return Ok(-1);
    }
    match parse_usize(value)? {
        0 => Err("expected -1 (pool sized to the machine) or at least 1".into()),
        m => i64::try_from(m).map_err(|_| "expected a smaller number".into()),
    }
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
    fn parses_w9_keys() {
        let o = Options::parse(["w9", "--n=1000", "--modules=100", "--backend=cranelift-jit"])
            .expect("valid");
        assert_eq!(
            (o.workload, o.n, o.modules),
            (Workload::W9, Some(1000), 100)
        );
        assert_eq!(o.backend, W9Backend::CraneliftJit);
        assert_eq!(
            Options::parse(["w9"]).expect("valid").backend,
            W9Backend::KilnCranelift
        );
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
        assert!(matches!(err(&["w10"]), UsageError::UnknownWorkload(w) if w == "w10"));
        assert!(matches!(
            err(&["w9", "--backend=llvm"]),
            UsageError::Invalid(_)
        ));
        assert!(matches!(err(&["w1", "--n"]), UsageError::Invalid(_)));
        assert!(matches!(err(&["w1", "n=3"]), UsageError::UnknownOption(a) if a == "n=3"));
        assert!(matches!(
            err(&["w1", "--frob=3"]),
            UsageError::UnknownOption(_)
        ));
        assert!(matches!(err(&["w1", "--n=12x"]), UsageError::Invalid(m) if m.contains("12x")));
        assert!(matches!(err(&["w1", "--b=0"]), UsageError::BadValue { .. }));
        assert!(matches!(
            err(&["w1", "--reps=0"]),
            UsageError::BadValue { .. }
        ));
        assert!(matches!(
            err(&["w1", "--dispatcher=pool"]),
            UsageError::Invalid(m) if m.contains("pool")
        ));
        assert!(matches!(
            err(&["w1", "--max-mat-threads=0"]),
            UsageError::Invalid(_)
        ));
        assert!(matches!(err(&["--help"]), UsageError::Help(h) if h.contains("--per-thread")));
        assert!(matches!(
            err(&["w8", "--orc-rt=/x.a"]),
            UsageError::NotApplicable(_)
        ));
    }
}
