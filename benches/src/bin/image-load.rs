//! `image-load`: the in-process half of `benches/image-compare` (issue 9
//! §4). In one process, `--iters` iterations each:
//!
//! - (a) `dlopen(RTLD_NOW)` of a shared library, `dlsym` of six names, a
//!   first call, `dlclose`;
//! - (b) `image_file::load_file` of a kiln image (its pages mapped from
//!   the file), six lookups, the same first call, drop (unload); (b′) the
//!   same with the file read into memory and `image_file::load` (copied);
//! - (c) relinking the objects the image was saved from (`Linker::link`),
//!   six lookups, the call, drop.
//!
//! Per phase: median and p10/p90 of the wall time, minor page faults
//! (`getrusage` `ru_minflt`) per iteration. With `--chain DIR` (objects
//! `f_0.o` .. `f_{N-1}.o`, each `f_i` calling `f_{i-1}`), it saves a chain
//! of images each linked against the previous one by build id and times
//! loading the first 10, 100, 1000 of them in order.
//!
//! ```text
//! image-load --so liblua.so --objs DIR --work DIR [--iters 1000] [--chain DIR]
//!            [--only dlopen|load_file|load|relink|chain]
//! ```
//!
//! Each variant first runs in its own loop (10 warm-up iterations, then
//! `iters` timed: the table the targets are judged by), then all four
//! interleaved (`iters` rounds of a, b, b′, c: each variant with the
//! caches and TLB the others leave; reported apart).
//!
//! `--only` runs one variant alone (after the same save and warm-up) and
//! prints its row: for instruction counts of one variant (`perf stat -e
//! instructions:u`, callgrind), not for ratios; `--only chain` runs the
//! chain alone.
//!
//! Prints Markdown on stdout. Not a test: nothing is asserted but that
//! every variant returns the same value from the first call.

use std::ffi::{CString, c_void};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use kiln_linker::image_file::{self, BuildId};
use kiln_linker::{HostSymbols, LinkOptions, LinkedImage, Linker, SymbolResolver};

/// The six names looked up; the first call is `lua_version(NULL)`.
const NAMES: [&str; 6] = [
    "luaL_newstate",
    "luaL_openlibs",
    "luaL_loadstring",
    "lua_pcallk",
    "lua_close",
    "lua_version",
];

struct Config {
    so: PathBuf,
    objs: PathBuf,
    work: PathBuf,
    iters: usize,
    chain: Option<PathBuf>,
    /// Run only this variant (an index into [`VARIANTS`]).
    only: Option<usize>,
}

/// The variants' names for `--only`, in table order, then `chain` (the
/// chain alone, with `--chain`).
const VARIANTS: [&str; 5] = ["dlopen", "load_file", "load", "relink", "chain"];

/// `--only`'s index of the chain.
const ONLY_CHAIN: usize = 4;

fn parse() -> Result<Config, String> {
    let mut so = None;
    let mut objs = None;
    let mut work = None;
    let mut iters = 1000;
    let mut chain = None;
    let mut only = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} wants a value"));
        match a.as_str() {
            "--so" => so = Some(PathBuf::from(val()?)),
            "--objs" => objs = Some(PathBuf::from(val()?)),
            "--work" => work = Some(PathBuf::from(val()?)),
            "--chain" => chain = Some(PathBuf::from(val()?)),
            "--iters" => iters = val()?.parse().map_err(|e| format!("--iters: {e}"))?,
            "--only" => {
                let v = val()?;
                only = Some(VARIANTS.iter().position(|n| *n == v).ok_or(format!(
                    "--only {v}: expected one of {}",
                    VARIANTS.join(", ")
                ))?);
            }
            _ => return Err(format!("unknown argument {a}")),
        }
    }
    Ok(Config {
        so: so.ok_or("--so is required")?,
        objs: objs.ok_or("--objs is required")?,
        work: work.ok_or("--work is required")?,
        iters,
        chain,
        only,
    })
}

fn main() -> ExitCode {
    let config = match parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("image-load: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("image-load: {e}");
            ExitCode::from(1)
        }
    }
}

fn minflt() -> i64 {
    // SAFETY: getrusage writes one `rusage` we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt
    }
}

/// The calling thread's CPU time (user + system), ns.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// One iteration's phases: (ns, minor faults) of load, lookups, first
/// call, unload.
type Sample = [(u64, i64); 4];

/// Times `phase` and counts the minor faults it takes.
fn timed<T>(phase: impl FnOnce() -> T) -> (T, (u64, i64)) {
    let f0 = minflt();
    let t0 = Instant::now();
    let v = phase();
    let ns = t0.elapsed().as_nanos() as u64;
    (v, (ns, minflt() - f0))
}

type LuaVersion = unsafe extern "C" fn(*mut c_void) -> f64;

fn dlopen_once(path: &CString, names: &[CString]) -> Result<(f64, Sample), String> {
    // SAFETY: the library is Lua's core, built by the script; its
    // initializers (none) are trusted like any `dlopen`.
    let (h, load) = timed(|| unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) });
    if h.is_null() {
        return Err("dlopen failed".into());
    }
    let (addrs, lookup) = timed(|| {
        names
            .iter()
            // SAFETY: `h` is a live handle; the names are NUL-terminated.
            .map(|n| unsafe { libc::dlsym(h, n.as_ptr()) })
            .collect::<Vec<_>>()
    });
    if addrs.iter().any(|a| a.is_null()) {
        return Err("dlsym found no address for a name".into());
    }
    // SAFETY: `lua_version` has this C signature and accepts NULL.
    let (v, call) = timed(|| unsafe {
        let f: LuaVersion = std::mem::transmute(addrs[5]);
        f(std::ptr::null_mut())
    });
    // SAFETY: nothing from the library is used after this.
    let (_, unload) = timed(|| unsafe { libc::dlclose(h) });
    Ok((v, [load, lookup, call, unload]))
}

/// The six names' addresses in `image`, and the time and faults it took.
fn call_image(image: &LinkedImage) -> Result<(Vec<u64>, (u64, i64)), String> {
    let (addrs, lookup) = timed(|| NAMES.iter().map(|n| image.symbol(n)).collect::<Vec<_>>());
    let addrs: Vec<u64> = addrs
        .into_iter()
        .collect::<Option<_>>()
        .ok_or("an export is missing")?;
    Ok((addrs, lookup))
}

fn first_call(addr: u64) -> (f64, (u64, i64)) {
    // SAFETY: `addr` is `lua_version` of a live image, a C function that
    // accepts NULL.
    timed(|| unsafe {
        let f: LuaVersion = std::mem::transmute(addr as usize);
        f(std::ptr::null_mut())
    })
}

/// (b): `load_file` (mapped) when `mapped`, else the file read and `load`.
fn image_once(path: &Path, host: &HostSymbols, mapped: bool) -> Result<(f64, Sample), String> {
    let (image, load) = timed(|| {
        if mapped {
            // SAFETY: the image was saved by this benchmark from Lua's
            // objects and is not changed while loaded.
            return unsafe { image_file::load_file(path, host) }.map_err(|e| e.to_string());
        }
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        // SAFETY: the image was saved by this benchmark from Lua's objects.
        unsafe { image_file::load("lua.kimg", &bytes, host) }.map_err(|e| e.to_string())
    });
    let image = image?;
    let (addrs, lookup) = call_image(&image)?;
    let (v, call) = first_call(addrs[5]);
    let (_, unload) = timed(|| drop(image));
    Ok((v, [load, lookup, call, unload]))
}

fn relink_once(objs: &[(String, Vec<u8>)], host: &HostSymbols) -> Result<(f64, Sample), String> {
    let (image, load) = timed(|| {
        let mut linker = Linker::new(LinkOptions::default());
        for (n, b) in objs {
            linker.add_object_bytes(n.clone(), b.clone());
        }
        linker.link(host).map_err(|e| e.to_string())
    });
    let image = image?;
    let (addrs, lookup) = call_image(&image)?;
    let (v, call) = first_call(addrs[5]);
    let (_, unload) = timed(|| drop(image));
    Ok((v, [load, lookup, call, unload]))
}

fn read_objects(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "o"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let b = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((p.display().to_string(), b))
        })
        .collect()
}

/// Links `objs` in imaging mode with `resolver` and saves the image.
fn save(
    objs: &[(String, Vec<u8>)],
    resolver: &dyn SymbolResolver,
) -> Result<(LinkedImage, Vec<u8>), String> {
    let mut options = LinkOptions::default();
    options.imaging = true;
    let id = BuildId::of_inputs(
        &options,
        objs.iter().map(|(n, b)| (n.as_str(), b.as_slice())),
    );
    let mut linker = Linker::new(options);
    for (n, b) in objs {
        linker.add_object_bytes(n.clone(), b.clone());
    }
    let image = linker.link(resolver).map_err(|e| e.to_string())?;
    let bytes = image.save_image(&id).map_err(|e| e.to_string())?;
    Ok((image, bytes))
}

fn percentile(sorted: &[u64], p: usize) -> u64 {
    sorted[(sorted.len() - 1) * p / 100]
}

fn us(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1000.0)
}

/// "median [p10–p90]" in µs of one phase, and the mean faults.
fn cell(samples: &[Sample], phase: usize) -> (String, u64, f64) {
    let mut t: Vec<u64> = samples.iter().map(|s| s[phase].0).collect();
    t.sort_unstable();
    let faults = samples.iter().map(|s| s[phase].1).sum::<i64>() as f64 / samples.len() as f64;
    let med = percentile(&t, 50);
    (
        format!(
            "{} [{}–{}]",
            us(med),
            us(percentile(&t, 10)),
            us(percentile(&t, 90))
        ),
        med,
        faults,
    )
}

fn total(samples: &[Sample]) -> (String, f64) {
    let mut t: Vec<u64> = samples
        .iter()
        .map(|s| s.iter().map(|p| p.0).sum())
        .collect();
    t.sort_unstable();
    let f = samples
        .iter()
        .map(|s| s.iter().map(|p| p.1).sum::<i64>())
        .sum::<i64>() as f64
        / samples.len() as f64;
    (
        format!(
            "{} [{}–{}]",
            us(percentile(&t, 50)),
            us(percentile(&t, 10)),
            us(percentile(&t, 90))
        ),
        f,
    )
}

fn run(config: &Config) -> Result<(), String> {
    let host = HostSymbols::new();
    if config.only == Some(ONLY_CHAIN) {
        let dir = config
            .chain
            .as_ref()
            .ok_or("--only chain wants --chain DIR")?;
        return chain(dir, &host, config.iters);
    }
    let objs = read_objects(&config.objs)?;
    let (saved, bytes) = save(&objs, &host)?;
    drop(saved);
    std::fs::create_dir_all(&config.work).map_err(|e| e.to_string())?;
    let kimg = config.work.join("lua.kimg");
    // The file is kept when unchanged. A file changed in the last 2 s is
    // hashed on every load (see image_file/verified.rs); installed images
    // and cache entries are older, so wait as long after writing it.
    if std::fs::read(&kimg).ok().as_ref() != Some(&bytes) {
        std::fs::write(&kimg, &bytes).map_err(|e| e.to_string())?;
        std::thread::sleep(std::time::Duration::from_millis(2100));
    }
    // A path with a slash: dlopen does not search for it.
    let so_path =
        std::fs::canonicalize(&config.so).map_err(|e| format!("{}: {e}", config.so.display()))?;
    let so = CString::new(so_path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let names: Vec<CString> = NAMES
        .iter()
        .map(|n| CString::new(*n).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let variant = |k: usize| match k {
        0 => dlopen_once(&so, &names),
        1 => image_once(&kimg, &host, true),
        2 => image_once(&kimg, &host, false),
        _ => relink_once(&objs, &host),
    };
    let check = |k: usize, v: f64| {
        if v == 504.0 {
            Ok(())
        } else {
            Err(format!("variant {k}: lua_version returned {v}, not 504"))
        }
    };
    // Each variant in its own loop: 10 warm-up iterations (page cache, lazy
    // host state), then `iters` timed ones.
    let mut rows: [Vec<Sample>; 4] = Default::default();
    for (k, row) in rows.iter_mut().enumerate() {
        if config.only.is_some_and(|o| o != k) {
            continue;
        }
        for i in 0..config.iters + 10 {
            let (v, s) = variant(k)?;
            check(k, v)?;
            if i >= 10 {
                row.push(s);
            }
        }
    }
    let title = format!(
        "{} iterations each, each variant in its own loop",
        config.iters
    );
    print_table(config, &title, &bytes, &objs, &rows);
    if config.only.is_some() {
        return Ok(());
    }
    // The same, interleaved: each iteration of a variant follows one of
    // every other (caches and TLB as the others leave them).
    let mut rows: [Vec<Sample>; 4] = Default::default();
    for _ in 0..config.iters {
        for (k, row) in rows.iter_mut().enumerate() {
            let (v, s) = variant(k)?;
            check(k, v)?;
            row.push(s);
        }
    }
    let title = format!("{} iterations each, interleaved", config.iters);
    print_table(config, &title, &bytes, &objs, &rows);
    first_loads(&config.work, &so_path, &kimg, &host, &names)?;
    breakdown(&kimg, config.iters)?;
    pages_written(&so, &kimg, &host)?;
    if let Some(dir) = &config.chain {
        chain(dir, &host, config.iters)?;
    }
    Ok(())
}

fn print_table(
    config: &Config,
    title: &str,
    bytes: &[u8],
    objs: &[(String, Vec<u8>)],
    rows: &[Vec<Sample>; 4],
) {
    println!("\n{title}; µs: median [p10–p90]; faults: minor page faults per iteration (mean)\n");
    println!(
        "| variant | load | faults | lookup ×6 | first call | faults | unload | total | faults/iter |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let labels = [
        format!("(a) dlopen(RTLD_NOW) {}", file_name(&config.so)),
        format!("(b) kiln `load_file` ({} bytes, mapped)", bytes.len()),
        "(b′) kiln file read + `load` (copied)".to_string(),
        format!("(c) kiln relink ({} objects)", objs.len()),
    ];
    let mut meds = [[0u64; 4]; 4];
    for (k, s) in rows.iter().enumerate() {
        if s.is_empty() {
            continue;
        }
        let c: Vec<_> = (0..4).map(|p| cell(s, p)).collect();
        for p in 0..4 {
            meds[k][p] = c[p].1;
        }
        let (t, f) = total(s);
        println!(
            "| {} | {} | {:.1} | {} | {} | {:.1} | {} | {} | {:.1} |",
            labels[k], c[0].0, c[0].2, c[1].0, c[2].0, c[2].2, c[3].0, t, f
        );
    }
    if config.only.is_some() {
        return;
    }
    let ratio = |a: u64, b: u64| a as f64 / b.max(1) as f64;
    println!();
    println!(
        "- image load / dlopen: {:.2}× (target ≤ 0.5×)",
        ratio(meds[1][0], meds[0][0])
    );
    println!(
        "- image unload / dlclose: {:.2}× (target ≤ 1×)",
        ratio(meds[1][3], meds[0][3])
    );
    println!(
        "- relink / image load: {:.0}× (target ≥ 100×)",
        ratio(meds[3][0], meds[1][0])
    );
}

/// Private dirty kB (pages written: copied-on-write or anonymous) of the
/// mappings that `pick` selects, from /proc/self/smaps: `pick(start, end,
/// path)`.
fn dirty_kb(pick: impl Fn(u64, u64, &str) -> bool) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut on = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let path = line.split_whitespace().nth(5).unwrap_or("");
            on = pick(start, end, path);
        } else if on && let Some(v) = line.strip_prefix("Private_Dirty:") {
            kb += v
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
        }
    }
    kb
}

/// Pages written by one load, before any call: `dlopen`'s (the library's
/// mappings) and `load_file`'s (the image's range).
fn pages_written(so: &CString, kimg: &Path, host: &HostSymbols) -> Result<(), String> {
    // SAFETY: as in `dlopen_once`.
    let h = unsafe { libc::dlopen(so.as_ptr(), libc::RTLD_NOW) };
    if h.is_null() {
        return Err("dlopen failed".into());
    }
    let so_name = so.to_string_lossy().into_owned();
    let so_kb = dirty_kb(|_, _, path| path == so_name);
    // SAFETY: nothing from the library is used after this.
    unsafe { libc::dlclose(h) };
    // SAFETY: as in `image_once`.
    let image = unsafe { image_file::load_file(kimg, host) }.map_err(|e| e.to_string())?;
    let (base, size) = image.memory_range();
    // Mappings overlapping the image (nothing else is loaded in the slab
    // now, so a merged neighbour adds no dirty page).
    let image_kb = dirty_kb(|start, end, _| start < base + size && end > base);
    drop(image);
    println!(
        "Pages written by one load (Private_Dirty in /proc/self/smaps, before any call): dlopen {} ({so_kb} kB), load_file {} ({image_kb} kB)\n",
        so_kb / 4,
        image_kb / 4
    );
    Ok(())
}

/// Where a load's time goes, from the public API: reading the file,
/// checking it with its content hash (`inspect`), and without it
/// (`dependencies`: the same parse, no hash); the rest of a load is mapping,
/// rebasing, binding, protecting and registering.
fn breakdown(kimg: &Path, iters: usize) -> Result<(), String> {
    let bytes = std::fs::read(kimg).map_err(|e| e.to_string())?;
    let mut t = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..iters {
        let t0 = Instant::now();
        let b = std::fs::read(kimg).map_err(|e| e.to_string())?;
        t[0].push(t0.elapsed().as_nanos() as u64);
        drop(b);
        let t0 = Instant::now();
        image_file::inspect("lua.kimg", &bytes).map_err(|e| e.to_string())?;
        t[1].push(t0.elapsed().as_nanos() as u64);
        let t0 = Instant::now();
        image_file::dependencies("lua.kimg", &bytes).map_err(|e| e.to_string())?;
        t[2].push(t0.elapsed().as_nanos() as u64);
    }
    let med = |v: &mut Vec<u64>| {
        v.sort_unstable();
        us(percentile(v, 50))
    };
    println!(
        "\nParts of (b), medians in µs: read the file {}; parse + content hash (`inspect`) {}; parse without the hash (`dependencies`) {}\n",
        med(&mut t[0]),
        med(&mut t[1]),
        med(&mut t[2])
    );
    Ok(())
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
}

/// How many never-loaded copies [`first_loads`] loads of each file.
const FIRST_COPIES: usize = 40;

/// First loads: each of [`FIRST_COPIES`] copies of the library and of the
/// image (other inodes, so neither `dlopen` nor `load_file` has seen them;
/// aged 2 s, as installed files are) loaded once, interleaved, and
/// unloaded: the image's content hash and every check are paid here.
fn first_loads(
    work: &Path,
    so_path: &Path,
    kimg: &Path,
    host: &HostSymbols,
    names: &[CString],
) -> Result<(), String> {
    let dir = work.join("first");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut copies = Vec::with_capacity(FIRST_COPIES);
    for i in 0..FIRST_COPIES {
        let (s, k) = (
            dir.join(format!("lib{i}.so")),
            dir.join(format!("i{i}.kimg")),
        );
        std::fs::copy(so_path, &s).map_err(|e| e.to_string())?;
        std::fs::copy(kimg, &k).map_err(|e| e.to_string())?;
        let s = CString::new(s.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        copies.push((s, k));
    }
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for (s, k) in &copies {
        let (v, sample) = dlopen_once(s, names)?;
        let (w, sample_b) = image_once(k, host, true)?;
        if v != 504.0 || w != 504.0 {
            return Err(format!("first loads: lua_version returned {v} and {w}"));
        }
        a.push(sample[0]);
        b.push(sample_b[0]);
    }
    let row = |v: &mut Vec<(u64, i64)>| {
        let faults = v.iter().map(|s| s.1).sum::<i64>() as f64 / v.len() as f64;
        let mut ns: Vec<u64> = v.iter().map(|s| s.0).collect();
        ns.sort_unstable();
        format!(
            "{} [{}–{}] | {faults:.1}",
            us(percentile(&ns, 50)),
            us(percentile(&ns, 10)),
            us(percentile(&ns, 90))
        )
    };
    println!(
        "\nFirst loads ({FIRST_COPIES} copies of each file never loaded before, interleaved; µs median [p10–p90], faults)\n"
    );
    println!("| variant | first load | faults |\n|---|---|---|");
    println!("| (a) dlopen(RTLD_NOW) of a copy | {} |", row(&mut a));
    println!(
        "| (b) `load_file` of a copy (content hash, every check) | {} |",
        row(&mut b)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Saves the chain `f_0.o` .. `f_{N-1}.o` (each image against the previous
/// one) and times loading its first 10, 100, 1000 images in order.
fn chain(dir: &Path, host: &HostSymbols, iters: usize) -> Result<(), String> {
    let mut images: Vec<Vec<u8>> = Vec::new();
    let mut linked: Vec<LinkedImage> = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("f_{i}.o"));
        if !p.exists() {
            break;
        }
        let obj = vec![(
            p.display().to_string(),
            std::fs::read(&p).map_err(|e| e.to_string())?,
        )];
        let prev = linked.last();
        let resolver = |names: &[&str]| -> Vec<Option<u64>> {
            let found = host.resolve(names);
            names
                .iter()
                .zip(found)
                .map(|(n, h)| prev.and_then(|d| d.symbol(n)).or(h))
                .collect()
        };
        let (image, bytes) = save(&obj, &resolver)?;
        linked.push(image);
        images.push(bytes);
    }
    while linked.pop().is_some() {}
    println!(
        "\nChain of {} images (f_i calls f_(i-1), each saved against the previous by build id); bytes in memory\n",
        images.len()
    );
    println!(
        "| images loaded in order | wall ms, median [p10–p90] | wall µs per image | CPU µs per image | CPU µs per image, first / last tenth | faults per image |"
    );
    println!("|---|---|---|---|---|---|");
    for n in [10usize, 100, 1000] {
        if n > images.len() {
            break;
        }
        let reps = (iters * 10 / n).clamp(20, iters.max(20));
        let mut times = Vec::with_capacity(reps);
        let mut faults = 0i64;
        // Per repetition: the thread's CPU time for all loads, and for the
        // first and the last tenth of them (each load timed on its own), to
        // see whether later loads cost more. Wall time on a loaded machine
        // also counts the time the thread waits for a core, which a long
        // loop (1,000 loads: tens of ms) pays many times and a short one
        // (10 loads) mostly not at all.
        let mut cpu = Vec::with_capacity(reps);
        let (mut first, mut last) = (Vec::with_capacity(reps), Vec::with_capacity(reps));
        let tenth = n / 10;
        let mut each = Vec::with_capacity(n);
        for _ in 0..reps {
            let f0 = minflt();
            let t0 = Instant::now();
            let c0 = cpu_ns();
            let mut loaded = Vec::with_capacity(n);
            each.clear();
            for (i, b) in images[..n].iter().enumerate() {
                let c = cpu_ns();
                // SAFETY: the images were saved by this function just now.
                let img = unsafe { image_file::load(&format!("f_{i}.kimg"), b, host) }
                    .map_err(|e| e.to_string())?;
                each.push(cpu_ns() - c);
                loaded.push(img);
            }
            cpu.push(cpu_ns() - c0);
            times.push(t0.elapsed().as_nanos() as u64);
            first.push(each[..tenth].iter().sum::<u64>() / tenth as u64);
            last.push(each[n - tenth..].iter().sum::<u64>() / tenth as u64);
            faults += minflt() - f0;
            let last = loaded
                .last()
                .and_then(|l| l.symbol(&format!("f_{}", n - 1)))
                .ok_or("no f_(n-1)")?;
            // SAFETY: `int f_i(void)` of a loaded chain.
            let v =
                unsafe { std::mem::transmute::<usize, extern "C" fn() -> i32>(last as usize)() };
            if v != (n - 1) as i32 {
                return Err(format!("chain of {n}: f_{} returned {v}", n - 1));
            }
            while loaded.pop().is_some() {}
        }
        times.sort_unstable();
        cpu.sort_unstable();
        first.sort_unstable();
        last.sort_unstable();
        let med = percentile(&times, 50);
        println!(
            "| {n} | {:.3} [{:.3}–{:.3}] | {:.1} | {:.1} | {:.1} / {:.1} | {:.1} |",
            med as f64 / 1e6,
            percentile(&times, 10) as f64 / 1e6,
            percentile(&times, 90) as f64 / 1e6,
            med as f64 / 1000.0 / n as f64,
            percentile(&cpu, 50) as f64 / 1000.0 / n as f64,
            percentile(&first, 50) as f64 / 1000.0,
            percentile(&last, 50) as f64 / 1000.0,
            faults as f64 / (reps * n) as f64
        );
    }
    Ok(())
}
