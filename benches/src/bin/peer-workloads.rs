//! `peer-workloads`: kiln's side of the ORC peer comparison.
//!
//! Same command line as `../shared/peer/orc-bench/orc_bench` and the same
//! one-line JSON report (with `kiln_version` where the peer has
//! `llvm_version`):
//!
//! ```text
//! peer-workloads w1 --b=100 --reps=5
//! peer-workloads w5 --n=2500 --dispatcher=dynamic --max-mat-threads=2
//! ```
//!
//! Exit status: 0 with the JSON line on stdout; 1 when a workload fails (an
//! engine error or a failed check, explained on stderr); 2 on a usage error.

use std::process::ExitCode;

use kiln_benches::error::UsageError;
use kiln_benches::options::{Options, usage};
use kiln_benches::report::ProcessContext;
use kiln_benches::workloads;

fn main() -> ExitCode {
    let ctx = ProcessContext::capture();
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(UsageError::Help(text)) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("peer-workloads: {e}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    match workloads::run(&options) {
        Ok(report) => {
            println!("{}", report.to_json(ctx));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("peer-workloads: {e}");
            ExitCode::from(1)
        }
    }
}
