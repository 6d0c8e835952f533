//! `mem-cycles`: RSS and mappings of a long-lived host over many
//! add/link/remove cycles of Lua's objects, eager and lazy (see
//! `kiln_benches::mem_cycles`).
//!
//! ```text
//! cargo run --release -p kiln-benches --bin mem-cycles -- --mode=eager --cycles=10000
//! ```
//!
//! Prints a Markdown table on stdout. Exit status: 0; 1 when a cycle fails
//! (or, with `--check`, when a mode misses the 1% target); 2 on a usage
//! error.

use std::process::ExitCode;

use kiln_benches::mem_cycles::{self, Config, MemError, USAGE};

fn main() -> ExitCode {
    let config = match Config::parse(std::env::args().skip(1)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mem-cycles: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("mem-cycles: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(config: &Config) -> Result<bool, MemError> {
    let objects = mem_cycles::build_objects(config)?;
    let mut reports = Vec::new();
    for &mode in &config.modes {
        reports.push(mem_cycles::run_mode(config, mode, &objects)?);
    }
    print!("{}", mem_cycles::table(config, &reports));
    Ok(!config.check || reports.iter().all(|r| r.met()))
}
