//! Shared workload definitions for kiln's benchmarks.
//!
//! The peer comparison (`../shared/peer/orc-bench/README.md`) defines eight
//! workloads, W1–W8, run identically on LLVM 22's ORC (`orc_bench`) and on
//! kiln (`peer-workloads`, this crate's binary). The criterion benches in
//! `benches/workloads.rs` call the same per-rep functions at smaller sizes.
//!
//! Map of the crate:
//! - [`workloads`]: W1–W7, one config struct per workload with a per-rep
//!   function, and [`workloads::run`], the command-line driver.
//! - [`adapter`]: the only module that names `kiln_engine` items (sessions,
//!   lookups, the W3–W5 unit and the W6 generator).
//! - [`options`]: the command line shared with `orc_bench`.
//! - [`deps`]: SplitMix64, `edge_hash` and the W3–W5 dependency graphs.
//! - [`measure`]: `getrusage` CPU time and peak RSS, load average, medians.
//! - [`report`]: per-rep measurements and the peer's JSON line.
//! - [`w8`]: W8 lazy-call against kiln's lazy reexports (engine manager,
//!   linker stubs and trampolines); [`workloads::run`] reports it.
//! - [`lazy_calls`]: W8's call targets and steady-state loops.
//! - [`w9`]: W9 cranelift-link: Cranelift's functions made callable by
//!   kiln's builder, kiln-cranelift or cranelift-jit.
//! - [`error`]: usage and run errors.
//! - [`mem_cycles`]: `mem-cycles`, RSS and mappings over many add/link/remove
//!   cycles of Lua's objects (eager and lazy).

pub mod adapter;
pub mod deps;
pub mod error;
pub mod lazy_calls;
pub mod measure;
pub mod mem_cycles;
pub mod options;
pub mod report;
pub mod w8;
pub mod w9;
pub mod workloads;
