//! `mem-cycles`: does a long-lived JIT host stay flat?
//!
//! One session, one object layer, one host dylib, as a REPL or a query
//! server keeps them for days. Each cycle adds Lua 5.4's objects (the
//! `lua-src` crate's sources plus `link_inputs/mem_cycle_driver.c`, compiled
//! once with `gcc -O2 -fPIC`), links them by looking up the driver at Ready,
//! runs the initializers and calls the driver (which opens every standard
//! library and runs a script), then removes what it added. The resident set
//! (`/proc/self/statm`) and the number of mappings (`/proc/self/maps`
//! lines) are sampled as cycles go; the target is less than 1% growth of
//! both from the end of the warm-up (100 cycles) to the last cycle.
//!
//! Modes:
//! - `eager`: one dylib for the whole run; each cycle's objects under a new
//!   resource tracker, removed at the end of the cycle.
//! - `eager-dylib`: each cycle's objects in a new dylib, removed at the end.
//! - `lazy`: the layer's lazy objects ([`ObjectLayer::add_objects_lazily`]):
//!   each cycle an entries dylib (lazy reexports) and a bodies dylib, the
//!   driver called through its stub (each object linked on its first call),
//!   both dylibs removed at the end.
//!
//! With `--no-run` a cycle links but never runs initializers nor calls the
//! code (a host that removes code it never ran).

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_engine::{
    DylibLookup, LazyReexports, LookupSet, RequiredState, SearchOrder, Session, WorkerPool,
};
use kiln_linker::HostSymbols;
use kiln_linker::layer::{HostGenerator, ObjectLayer};

/// What can stop the benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MemError {
    /// A bad command line.
    #[error("usage: {0}")]
    Usage(String),
    /// Lua's sources could not be found or compiled.
    #[error("building Lua: {0}")]
    Build(String),
    /// The engine refused an operation.
    #[error("cycle {cycle}: {during}: {source}")]
    Engine {
        /// The cycle it happened in.
        cycle: usize,
        /// What was being done.
        during: &'static str,
        /// The engine's error.
        #[source]
        source: kiln_engine::Error,
    },
    /// The linker refused an object.
    #[error("cycle {cycle}: {during}: {source}")]
    Link {
        /// The cycle it happened in.
        cycle: usize,
        /// What was being done.
        during: &'static str,
        /// The linker's error.
        #[source]
        source: Box<kiln_linker::LinkError>,
    },
    /// The linked code answered wrongly.
    #[error("cycle {cycle}: the driver returned {got}, expected {want}")]
    Wrong {
        /// The cycle it happened in.
        cycle: usize,
        /// What the driver returned.
        got: i32,
        /// What it should have returned.
        want: i32,
    },
}

/// How each cycle adds and removes its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A new tracker in one long-lived dylib.
    Eager,
    /// A new dylib.
    EagerDylib,
    /// Lazy objects in new entries and bodies dylibs.
    Lazy,
}

impl Mode {
    /// The name on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Mode::Eager => "eager",
            Mode::EagerDylib => "eager-dylib",
            Mode::Lazy => "lazy",
        }
    }

    fn parse(s: &str) -> Result<Vec<Mode>, MemError> {
        Ok(match s {
            "eager" => vec![Mode::Eager],
            "eager-dylib" => vec![Mode::EagerDylib],
            "lazy" => vec![Mode::Lazy],
            "all" => vec![Mode::Eager, Mode::EagerDylib, Mode::Lazy],
            _ => {
                return Err(MemError::Usage(format!(
                    "--mode={s}: expected eager, eager-dylib, lazy or all"
                )));
            }
        })
    }
}

/// The command line.
#[derive(Debug, Clone)]
pub struct Config {
    /// Modes to run, one after the other, each in a fresh process state
    /// as far as kiln is concerned (a new session).
    pub modes: Vec<Mode>,
    /// Cycles per mode.
    pub cycles: usize,
    /// Cycles before the reference sample.
    pub warmup: usize,
    /// Samples after the warm-up.
    pub samples: usize,
    /// Link only: no initializers, no call.
    pub no_run: bool,
    /// Where Lua is compiled.
    pub work: PathBuf,
    /// Lua's source directory (default: found through `cargo metadata`).
    pub lua_dir: Option<PathBuf>,
    /// Exit with failure when a mode misses the 1% target.
    pub check: bool,
}

/// The usage text.
pub const USAGE: &str = "usage: mem-cycles [--mode=eager|eager-dylib|lazy|all] [--cycles=N] \
[--warmup=N] [--samples=N] [--no-run] [--check] [--work=DIR] [--lua-dir=DIR]";

impl Config {
    /// Parses `--key=value` arguments.
    pub fn parse(args: impl Iterator<Item = String>) -> Result<Config, MemError> {
        let mut c = Config {
            modes: vec![Mode::Eager, Mode::EagerDylib, Mode::Lazy],
            cycles: 10_000,
            warmup: 100,
            samples: 20,
            no_run: false,
            work: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("peer-build/mem-cycles"),
            lua_dir: None,
            check: false,
        };
        for a in args {
            let (key, value) = a.split_once('=').unwrap_or((a.as_str(), ""));
            let number = || {
                value
                    .parse::<usize>()
                    .map_err(|_| MemError::Usage(format!("{key}={value}: expected a number")))
            };
            match key {
                "--mode" => c.modes = Mode::parse(value)?,
                "--cycles" => c.cycles = number()?,
                "--warmup" => c.warmup = number()?,
                "--samples" => c.samples = number()?.max(1),
                "--no-run" => c.no_run = true,
                "--check" => c.check = true,
                "--work" => c.work = PathBuf::from(value),
                "--lua-dir" => c.lua_dir = Some(PathBuf::from(value)),
                _ => return Err(MemError::Usage(format!("unknown argument {a}"))),
            }
        }
        if c.warmup >= c.cycles {
            return Err(MemError::Usage(format!(
                "--warmup={} must be below --cycles={}",
                c.warmup, c.cycles
            )));
        }
        Ok(c)
    }
}

/// Resident set size in KiB, from `/proc/self/statm`.
pub fn rss_kb() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|f| f.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * page / 1024)
}

/// Number of mappings of this process (`/proc/self/maps` lines).
pub fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps").map_or(0, |s| s.lines().count())
}

/// One sample.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Cycles done.
    pub cycle: usize,
    /// Resident set, KiB.
    pub rss_kb: u64,
    /// Mappings.
    pub maps: usize,
}

impl Sample {
    fn take(cycle: usize) -> Sample {
        Sample {
            cycle,
            rss_kb: rss_kb(),
            maps: mappings(),
        }
    }
}

/// One mode's result.
#[derive(Debug, Clone)]
pub struct ModeReport {
    /// The mode.
    pub mode: Mode,
    /// Samples, the first at the end of the warm-up.
    pub samples: Vec<Sample>,
}

impl ModeReport {
    fn first(&self) -> Sample {
        self.samples[0]
    }

    fn last(&self) -> Sample {
        self.samples[self.samples.len() - 1]
    }

    /// RSS growth from the warm-up to the end, in percent.
    pub fn rss_growth(&self) -> f64 {
        growth(self.first().rss_kb as f64, self.last().rss_kb as f64)
    }

    /// Mapping growth from the warm-up to the end, in percent.
    pub fn maps_growth(&self) -> f64 {
        growth(self.first().maps as f64, self.last().maps as f64)
    }

    /// RSS growth per cycle after the warm-up, KiB.
    pub fn kb_per_cycle(&self) -> f64 {
        let cycles = (self.last().cycle - self.first().cycle).max(1) as f64;
        (self.last().rss_kb as f64 - self.first().rss_kb as f64) / cycles
    }

    /// Whether both growths are below 1%.
    pub fn met(&self) -> bool {
        self.rss_growth() < 1.0 && self.maps_growth() < 1.0
    }
}

fn growth(from: f64, to: f64) -> f64 {
    if from <= 0.0 {
        return 0.0;
    }
    100.0 * (to - from) / from
}

/// The host a cycle runs in: everything that lives as long as the program.
struct Host {
    session: Session,
    layer: ObjectLayer,
    host: kiln_engine::Dylib,
    /// For `eager`: the dylib every cycle adds to.
    app: kiln_engine::Dylib,
    lazy: LazyReexports,
}

impl Host {
    fn new() -> Result<Host, MemError> {
        let engine = |during| {
            move |source| MemError::Engine {
                cycle: 0,
                during,
                source,
            }
        };
        let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
        let layer = ObjectLayer::new(&session);
        let host = session
            .create_dylib("<host>")
            .map_err(engine("create the host dylib"))?;
        host.add_generator(HostGenerator::new(HostSymbols::new()))
            .map_err(engine("add the host generator"))?;
        let app = session
            .create_dylib("app")
            .map_err(engine("create the app dylib"))?;
        app.set_link_order(&[(host.clone(), DylibLookup::ExportedOnly)])
            .map_err(engine("set the link order"))?;
        let lazy =
            kiln_linker::lazy::lazy_reexports_manager(&session).map_err(|e| MemError::Engine {
                cycle: 0,
                during: "create the lazy reexports manager",
                source: kiln_engine::Error::msg(e),
            })?;
        let init = layer.clone();
        // SAFETY: the hook runs on a lazily linked function's first call:
        // the benchmark's own C objects (Lua, the driver), already running.
        lazy.set_after_link_hook(move || unsafe { init.run_initializers() });
        Ok(Host {
            session,
            layer,
            host,
            app,
            lazy,
        })
    }
}

/// The driver's entry point and what it returns for [`DRIVER_ARG`].
const DRIVER: &str = "kiln_mem_cycle";
const DRIVER_ARG: i32 = 1000;
const DRIVER_WANT: i32 = 500_500;

/// One add/link/(run)/remove cycle.
fn cycle(
    h: &Host,
    mode: Mode,
    i: usize,
    objects: &[(String, Vec<u8>)],
    run: bool,
) -> Result<(), MemError> {
    let engine = |during| {
        move |source| MemError::Engine {
            cycle: i,
            during,
            source,
        }
    };
    let link = |during| {
        move |source: kiln_linker::LinkError| MemError::Link {
            cycle: i,
            during,
            source: Box::new(source),
        }
    };
    let host_order = [(h.host.clone(), DylibLookup::ExportedOnly)];
    // What the cycle removes at its end, and where the driver is looked up.
    let (lookup_in, remove): (kiln_engine::Dylib, Removal) = match mode {
        Mode::Eager => {
            let tracker = h.app.create_tracker().map_err(engine("create a tracker"))?;
            for (name, bytes) in objects {
                h.layer
                    .add_object(&h.app, Some(&tracker), name, bytes)
                    .map_err(link("add an object"))?;
            }
            (h.app.clone(), Removal::Tracker(tracker))
        }
        Mode::EagerDylib => {
            let d = h
                .session
                .create_dylib(&format!("app{i}"))
                .map_err(engine("create a dylib"))?;
            d.set_link_order(&host_order)
                .map_err(engine("set the link order"))?;
            for (name, bytes) in objects {
                h.layer
                    .add_object(&d, None, name, bytes)
                    .map_err(link("add an object"))?;
            }
            (d.clone(), Removal::Dylibs(vec![d]))
        }
        Mode::Lazy => {
            let s = &h.session;
            let entries = s
                .create_dylib(&format!("entries{i}"))
                .map_err(engine("create a dylib"))?;
            let bodies = s
                .create_dylib(&format!("bodies{i}"))
                .map_err(engine("create a dylib"))?;
            h.layer
                .add_objects_lazily(&entries, &bodies, &h.lazy, objects)
                .map_err(link("add objects lazily"))?;
            bodies
                .set_link_order_exact(&[
                    (entries.clone(), DylibLookup::All),
                    (h.host.clone(), DylibLookup::ExportedOnly),
                ])
                .map_err(engine("set the link order"))?;
            (entries.clone(), Removal::Dylibs(vec![entries, bodies]))
        }
    };
    let driver = h.session.intern(DRIVER);
    let found = h
        .session
        .lookup(
            &SearchOrder::new().with(&lookup_in, DylibLookup::All),
            &LookupSet::required([driver.clone()]),
            RequiredState::Ready,
        )
        .wait()
        .map_err(engine("look the driver up"))?;
    if run {
        let address = found.get(&driver).map_or(0, |d| d.address);
        // SAFETY: the benchmark's own C objects (Lua and its driver).
        unsafe { h.layer.run_initializers() };
        // SAFETY: `address` is `kiln_mem_cycle`, an `int (int)` compiled from
        // mem_cycle_driver.c, Ready (eager: linked with all it reaches; lazy:
        // a stub that links it on this call), and stays so until the
        // removal below.
        let f: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(address as usize) };
        let got = f(DRIVER_ARG);
        if got != DRIVER_WANT {
            return Err(MemError::Wrong {
                cycle: i,
                got,
                want: DRIVER_WANT,
            });
        }
    }
    match remove {
        Removal::Tracker(t) => t.remove().map_err(engine("remove the tracker")),
        Removal::Dylibs(ds) => ds
            .iter()
            .try_for_each(|d| h.session.remove_dylib(d).map_err(engine("remove a dylib"))),
    }
}

enum Removal {
    Tracker(kiln_engine::ResourceTracker),
    Dylibs(Vec<kiln_engine::Dylib>),
}

/// Runs `config.cycles` cycles of `mode`, sampling after the warm-up.
pub fn run_mode(
    config: &Config,
    mode: Mode,
    objects: &[(String, Vec<u8>)],
) -> Result<ModeReport, MemError> {
    let h = Host::new()?;
    let after = config.cycles - config.warmup;
    let every = (after / config.samples).max(1);
    let mut samples = Vec::with_capacity(config.samples + 1);
    for i in 0..config.cycles {
        cycle(&h, mode, i, objects, !config.no_run)?;
        let done = i + 1;
        if done == config.warmup
            || (done > config.warmup && (done - config.warmup).is_multiple_of(every))
            || done == config.cycles
        {
            let s = Sample::take(done);
            if samples.last().is_none_or(|l: &Sample| l.cycle != done) {
                eprintln!(
                    "mem-cycles: {} cycle {done}: rss {} KiB, {} mappings",
                    mode.key(),
                    s.rss_kb,
                    s.maps
                );
                samples.push(s);
            }
        }
    }
    h.session.end();
    Ok(ModeReport { mode, samples })
}

/// Lua's objects and the driver, compiled into `config.work`.
pub fn build_objects(config: &Config) -> Result<Vec<(String, Vec<u8>)>, MemError> {
    let src = match &config.lua_dir {
        Some(d) => d.clone(),
        None => lua_src_dir()?,
    };
    std::fs::create_dir_all(&config.work)
        .map_err(|e| MemError::Build(format!("{}: {e}", config.work.display())))?;
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src)
        .map_err(|e| MemError::Build(format!("{}: {e}", src.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .filter(|p| {
            !matches!(
                p.file_name().and_then(|n| n.to_str()),
                Some("lua.c" | "luac.c")
            )
        })
        .collect();
    sources.sort();
    sources.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("link_inputs/mem_cycle_driver.c"));
    let compiled: Vec<Result<(String, Vec<u8>), MemError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|k| {
                let (sources, src, work) = (&sources, &src, &config.work);
                s.spawn(move || {
                    sources
                        .iter()
                        .skip(k)
                        .step_by(2)
                        .map(|c| compile(c, src, work))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join().unwrap_or_else(|_| {
                    vec![Err(MemError::Build("compile thread panicked".into()))]
                })
            })
            .collect()
    });
    let mut objects = compiled.into_iter().collect::<Result<Vec<_>, _>>()?;
    objects.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(objects)
}

fn compile(c: &Path, include: &Path, work: &Path) -> Result<(String, Vec<u8>), MemError> {
    let stem = c.file_stem().unwrap_or_default().to_string_lossy();
    let out = work.join(format!("{stem}.o"));
    let o = Command::new("gcc")
        .args([
            "-O2",
            "-fPIC",
            "-DLUA_USE_LINUX",
            "-DLUA_COMPAT_5_3",
            "-w",
            "-c",
        ])
        .arg(c)
        .arg("-I")
        .arg(include)
        .arg("-o")
        .arg(&out)
        .output()
        .map_err(|e| MemError::Build(format!("gcc: {e}")))?;
    if !o.status.success() {
        return Err(MemError::Build(format!(
            "gcc {}: {}",
            c.display(),
            String::from_utf8_lossy(&o.stderr)
        )));
    }
    let bytes =
        std::fs::read(&out).map_err(|e| MemError::Build(format!("{}: {e}", out.display())))?;
    Ok((format!("{stem}.o"), bytes))
}

/// The Lua 5.4 source directory of the `lua-src` crate in the workspace's
/// lock file (a dev-dependency of kiln-linker), found through `cargo
/// metadata`.
fn lua_src_dir() -> Result<PathBuf, MemError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .map_err(|e| MemError::Build(format!("cargo metadata: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"manifest_path\":\"";
    let manifest = text
        .match_indices(key)
        .map(|(i, _)| {
            let rest = &text[i + key.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .find(|p| p.contains("lua-src-548"))
        .ok_or_else(|| MemError::Build("lua-src 548.x is not in cargo metadata".into()))?;
    let root = Path::new(manifest)
        .parent()
        .ok_or_else(|| MemError::Build(format!("{manifest}: no parent")))?;
    std::fs::read_dir(root)
        .map_err(|e| MemError::Build(format!("{}: {e}", root.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("lua-5.4"))
        })
        .ok_or_else(|| MemError::Build(format!("no lua-5.4.x in {}", root.display())))
}

/// The summary table, one line per mode.
pub fn table(config: &Config, reports: &[ModeReport]) -> String {
    let mut out = format!(
        "mem-cycles: {} cycles, reference after {}{}\n\
         | mode | RSS at {} | RSS at end | growth | KiB/cycle | maps at {} | maps at end | growth | < 1% |\n\
         | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
        config.cycles,
        config.warmup,
        if config.no_run { " (--no-run)" } else { "" },
        config.warmup,
        config.warmup,
    );
    for r in reports {
        let (a, b) = (r.first(), r.last());
        out.push_str(&format!(
            "| {} | {} KiB | {} KiB | {:+.2}% | {:+.2} | {} | {} | {:+.2}% | {} |\n",
            r.mode.key(),
            a.rss_kb,
            b.rss_kb,
            r.rss_growth(),
            r.kb_per_cycle(),
            a.maps,
            b.maps,
            r.maps_growth(),
            if r.met() { "met" } else { "missed" }
        ));
    }
    out
}
