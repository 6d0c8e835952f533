//! C libraries from crates' bundled sources — SQLite (the amalgamation in
//! `libsqlite3-sys`), zstd (`zstd-sys`'s `zstd/lib`), mimalloc
//! (`libmimalloc-sys`'s `c_src/mimalloc/v3`) — compiled with the test
//! drivers in `tests/c/`, and bzip2 with its own command-line program
//! (`bzip2-sys`'s `bzip2-1.0.8`), and the helpers that find such a crate and
//! compile many sources at once (Lua's build uses them too). The crates are
//! dev-dependencies under `cfg(any())`: cargo fetches them and `cargo
//! metadata` lists them, but never builds them.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{c_dir, compile, scratch};

/// The root directory of the dependency whose manifest path contains
/// `dir_prefix` (e.g. `zstd-sys-2.`), found through `cargo metadata`.
pub(crate) fn crate_root(dir_prefix: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let key = "\"manifest_path\":\"";
    let manifest = text
        .match_indices(key)
        .map(|(i, _)| {
            let rest = &text[i + key.len()..];
            &rest[..rest.find('"').unwrap_or(0)]
        })
        .find(|p| p.contains(&format!("/{dir_prefix}")))
        .unwrap_or_else(|| {
            panic!("{dir_prefix}* in cargo metadata (a kiln-linker dev-dependency)")
        });
    Path::new(manifest)
        .parent()
        .expect("crate root")
        .to_path_buf()
}

/// Compiles `sources` with `cc flags -I include...` into `dir` (as
/// `<stem>.o`; stems must be distinct), three at a time.
pub(crate) fn compile_all(
    cc: &str,
    sources: &[PathBuf],
    flags: &[&str],
    include: &[&Path],
    dir: &Path,
) -> Vec<PathBuf> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|k| {
                let chunk: Vec<PathBuf> = sources.iter().skip(k).step_by(3).cloned().collect();
                s.spawn(move || {
                    chunk
                        .iter()
                        .map(|c| {
                            let stem = c.file_stem().unwrap_or_default().to_string_lossy();
                            compile(cc, c, flags, include, &dir.join(format!("{stem}.o")))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("compile thread"))
            .collect()
    })
}

/// The C sources (`*.c`) directly in `dir`.
fn c_files(dir: &Path) -> impl Iterator<Item = PathBuf> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
}

/// zstd's library (`common/`, `compress/`, `decompress/`; no legacy
/// formats, no assembly) and the driver, compiled with `cc flags`.
pub(crate) fn build_zstd(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let lib = crate_root("zstd-sys-2.").join("zstd/lib");
    let mut sources = Vec::new();
    for sub in ["common", "compress", "decompress"] {
        sources.extend(c_files(&lib.join(sub)));
    }
    sources.sort();
    sources.push(c_dir().join("zstd_driver.c"));
    let mut all = vec!["-DZSTD_DISABLE_ASM", "-DZSTD_LEGACY_SUPPORT=0"];
    all.extend_from_slice(flags);
    let common = lib.join("common");
    let dir = scratch(&format!("zstd-{tag}"));
    compile_all(cc, &sources, &all, &[lib.as_path(), common.as_path()], &dir)
}

/// SQLite's amalgamation (no extension loading; `threads`: serialized
/// mode, its mutexes the host's pthread ones, else single-threaded) and the
/// driver, compiled with `cc flags`.
pub(crate) fn build_sqlite(cc: &str, threads: bool, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let src = crate_root("libsqlite3-sys-0.").join("sqlite3");
    let sources = [src.join("sqlite3.c"), c_dir().join("sqlite_driver.c")];
    let threadsafe = if threads {
        "-DSQLITE_THREADSAFE=1"
    } else {
        "-DSQLITE_THREADSAFE=0"
    };
    let mut all = vec![threadsafe, "-DSQLITE_OMIT_LOAD_EXTENSION"];
    all.extend_from_slice(flags);
    let dir = scratch(&format!("sqlite-{tag}"));
    compile_all(cc, &sources, &all, &[src.as_path()], &dir)
}

/// mimalloc's library (every source `src/static.c` includes, one object
/// each, as its CMake build compiles them; no `malloc` override) and the
/// driver, compiled with `cc flags`.
pub(crate) fn build_mimalloc(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let root = crate_root("libmimalloc-sys-0.").join("c_src/mimalloc/v3");
    let src = root.join("src");
    let mut sources: Vec<PathBuf> = [
        "alloc.c",
        "alloc-aligned.c",
        "alloc-posix.c",
        "arena.c",
        "arena-meta.c",
        "bitmap.c",
        "heap.c",
        "init.c",
        "libc.c",
        "options.c",
        "os.c",
        "page.c",
        "page-map.c",
        "random.c",
        "stats.c",
        "theap.c",
        "threadlocal.c",
        "prim/prim.c",
    ]
    .iter()
    .map(|f| src.join(f))
    .collect();
    sources.push(c_dir().join("mimalloc_driver.c"));
    let include = root.join("include");
    let dir = scratch(&format!("mimalloc-{tag}"));
    compile_all(
        cc,
        &sources,
        flags,
        &[include.as_path(), src.as_path()],
        &dir,
    )
}

/// bzip2 1.0.8: the library and its own command-line program (`bzip2.c`),
/// compiled with `cc flags`.
pub(crate) fn build_bzip2(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let src = crate_root("bzip2-sys-0.").join("bzip2-1.0.8");
    let sources: Vec<PathBuf> = [
        "blocksort.c",
        "huffman.c",
        "crctable.c",
        "randtable.c",
        "compress.c",
        "decompress.c",
        "bzlib.c",
        "bzip2.c",
    ]
    .iter()
    .map(|f| src.join(f))
    .collect();
    let mut all = vec!["-D_FILE_OFFSET_BITS=64", "-w"];
    all.extend_from_slice(flags);
    let dir = scratch(&format!("bzip2-{tag}"));
    compile_all(cc, &sources, &all, &[src.as_path()], &dir)
}

/// liblzma from xz 5.2 (`lzma-sys`'s sources and `config.h`: every
/// encoder and decoder, POSIX threads for the multithreaded encoder) and
/// the driver, compiled with `cc flags`, as `lzma-sys`'s build script
/// compiles them.
pub(crate) fn build_xz(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let root = crate_root("lzma-sys-0.");
    let xz = root.join("xz-5.2/src");
    let liblzma = xz.join("liblzma");
    let subs = [
        "common",
        "lzma",
        "lz",
        "check",
        "delta",
        "rangecoder",
        "simple",
    ];
    let mut sources: Vec<PathBuf> = Vec::new();
    for sub in subs {
        // Not the size-optimized CRCs (the tables' twins) nor the table
        // generators (programs of their own).
        sources.extend(c_files(&liblzma.join(sub)).filter(|p| {
            let stem = p.file_stem().unwrap_or_default().to_string_lossy();
            !stem.ends_with("_small") && !stem.ends_with("tablegen")
        }));
    }
    sources.sort();
    sources.push(xz.join("common/tuklib_cpucores.c"));
    sources.push(xz.join("common/tuklib_physmem.c"));
    sources.push(c_dir().join("xz_driver.c"));
    let mut all = vec!["-DHAVE_CONFIG_H=1", "-std=c99", "-pthread", "-w"];
    all.extend_from_slice(flags);
    let mut include: Vec<PathBuf> = subs.iter().map(|s| liblzma.join(s)).collect();
    include.extend([liblzma.join("api"), xz.join("common"), root]);
    let include: Vec<&Path> = include.iter().map(PathBuf::as_path).collect();
    let dir = scratch(&format!("xz-{tag}"));
    compile_all(cc, &sources, &all, &include, &dir)
}

/// zlib (`libz-sys`'s sources: the library and its gzip file functions)
/// and the driver, compiled with `cc flags`.
pub(crate) fn build_zlib(cc: &str, flags: &[&str], tag: &str) -> Vec<PathBuf> {
    let src = crate_root("libz-sys-1.").join("src/zlib");
    let mut sources: Vec<PathBuf> = [
        "adler32.c",
        "compress.c",
        "crc32.c",
        "deflate.c",
        "infback.c",
        "inffast.c",
        "inflate.c",
        "inftrees.c",
        "trees.c",
        "uncompr.c",
        "zutil.c",
        "gzclose.c",
        "gzlib.c",
        "gzread.c",
        "gzwrite.c",
    ]
    .iter()
    .map(|f| src.join(f))
    .collect();
    sources.push(c_dir().join("zlib_driver.c"));
    let mut all = vec!["-D_LARGEFILE64_SOURCE=1", "-DHAVE_HIDDEN", "-w"];
    all.extend_from_slice(flags);
    let dir = scratch(&format!("zlib-{tag}"));
    compile_all(cc, &sources, &all, &[src.as_path()], &dir)
}
