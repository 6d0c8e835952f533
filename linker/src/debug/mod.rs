//! Debuggers and profilers see JIT'd code (DESIGN §5b), opt-in per session.
//!
//! | module | what it does |
//! | --- | --- |
//! | `gdb` | the GDB JIT interface: `__jit_debug_descriptor` (from `csrc/gdb_jit.c`), one entry per image, all changes under one process-wide lock |
//! | `elf_object` | the in-memory ELF debug object of one image: allocated sections at their runtime addresses, `.symtab`, `.eh_frame`, the inputs' relocated `.debug_*` |
//! | `perf_map` | `/tmp/perf-PID.map`: one line per function, appended with `O_APPEND` writes of whole lines |
//! | `jitdump` | `jit-PID.dump` for `perf inject -j`: header, `JIT_CODE_LOAD` records with the code bytes, `JIT_CODE_DEBUG_INFO` from the line tables |
//! | `lines` | the line tables of an image's relocated DWARF (`gimli`) |
//!
//! Nothing here runs unless [`DebugOptions`] asks for it: the default link
//! path only checks three booleans. Links are announced by
//! `register_image` before the image's addresses are handed out (a
//! function's perf map line is in the map before anyone can call it);
//! loaded image files by `register_loaded`; lazy stubs and trampolines, by the
//! entry each serves, by `announce_stubs`. An image's registration
//! ([`DebugRegistration`]) is dropped — unregistered from GDB — before the
//! image's memory is released (tracker removal, dylib removal, session end:
//! they all drop the [`crate::LinkedImage`]).

pub(crate) mod elf_object;
pub(crate) mod gdb;
pub(crate) mod jitdump;
pub(crate) mod lines;
pub(crate) mod perf_map;

use std::sync::{Mutex, OnceLock};

use crate::graph::{Content, LinkGraph, SectionRole, SymbolDef};

/// Which debugger and profiler interfaces linked code is announced to.
///
/// The process default ([`DebugOptions::process_default`]) comes from the
/// environment — `KILN_GDB=1`, `KILN_PERF=map`, `KILN_PERF=jitdump` (or
/// `map,jitdump`) — unless [`DebugOptions::set_process_default`] replaced
/// it; [`crate::LinkOptions::default`] starts from it, and a host can set
/// [`crate::LinkOptions::debug`] per layer or link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DebugOptions {
    /// Register one in-memory ELF debug object per image with the GDB JIT
    /// interface (GDB and LLDB read it).
    pub gdb: bool,
    /// Append the image's functions to `/tmp/perf-PID.map`.
    pub perf_map: bool,
    /// Write the image's functions (with their code) to `jit-PID.dump`.
    pub jitdump: bool,
}

static PROCESS_DEFAULT: Mutex<Option<DebugOptions>> = Mutex::new(None);

impl DebugOptions {
    /// Nothing enabled.
    pub const NONE: DebugOptions = DebugOptions {
        gdb: false,
        perf_map: false,
        jitdump: false,
    };

    /// Everything enabled.
    pub const ALL: DebugOptions = DebugOptions {
        gdb: true,
        perf_map: true,
        jitdump: true,
    };

    /// What `KILN_GDB` and `KILN_PERF` ask for (read once per process).
    pub fn from_env() -> DebugOptions {
        static ENV: OnceLock<DebugOptions> = OnceLock::new();
        *ENV.get_or_init(|| {
            let gdb = std::env::var("KILN_GDB").is_ok_and(|v| v == "1");
            let perf = std::env::var("KILN_PERF").unwrap_or_default();
            let has = |w: &str| perf.split(',').any(|p| p.trim() == w);
            DebugOptions {
                gdb,
                perf_map: has("map"),
                jitdump: has("jitdump"),
            }
        })
    }

    /// The options new [`crate::LinkOptions`] and lazy stubs use: set by
    /// [`DebugOptions::set_process_default`], else [`DebugOptions::from_env`].
    pub fn process_default() -> DebugOptions {
        let set = *PROCESS_DEFAULT.lock().unwrap_or_else(|p| p.into_inner());
        set.unwrap_or_else(DebugOptions::from_env)
    }

    /// Replaces the process default (for example `kiln run --gdb`); links
    /// whose options were made earlier keep theirs.
    pub fn set_process_default(options: DebugOptions) {
        *PROCESS_DEFAULT.lock().unwrap_or_else(|p| p.into_inner()) = Some(options);
    }

    /// These options with [`DebugOptions::gdb`] set to `yes`.
    pub fn with_gdb(mut self, yes: bool) -> DebugOptions {
        self.gdb = yes;
        self
    }

    /// These options with [`DebugOptions::perf_map`] set to `yes`.
    pub fn with_perf_map(mut self, yes: bool) -> DebugOptions {
        self.perf_map = yes;
        self
    }

    /// These options with [`DebugOptions::jitdump`] set to `yes`.
    pub fn with_jitdump(mut self, yes: bool) -> DebugOptions {
        self.jitdump = yes;
        self
    }

    /// Whether anything is enabled.
    pub fn any(&self) -> bool {
        self.gdb || self.perf_map || self.jitdump
    }
}

/// A debugger or profiler interface failed.
#[derive(Debug, thiserror::Error)]
pub enum DebugError {
    /// Writing the perf map or the jitdump file failed.
    #[error("{what} {path}")]
    Io {
        /// What was being written.
        what: &'static str,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The ELF debug object could not be written.
    #[error("writing the GDB debug object of {image}: {source}")]
    Object {
        /// The image.
        image: String,
        /// The ELF writer's error.
        #[source]
        source: object::write::Error,
    },
}

/// One symbol of an image, at its runtime address. Its name is `prefix`
/// then `name` (e.g. `kiln-plt:` and the function a PLT stub calls), so
/// that naming linker-made code allocates nothing.
#[derive(Debug, Clone)]
pub(crate) struct ImageSymbol<'a> {
    pub(crate) prefix: &'static str,
    /// Borrowed from the graph (most), or made (unnamed stubs).
    pub(crate) name: std::borrow::Cow<'a, str>,
    pub(crate) addr: u64,
    pub(crate) size: u64,
    pub(crate) code: bool,
    pub(crate) local: bool,
}

impl ImageSymbol<'_> {
    /// The name's length in bytes, prefix included.
    pub(crate) fn name_len(&self) -> usize {
        self.prefix.len() + self.name.len()
    }

    /// Appends the name (prefix included) to `out`.
    pub(crate) fn push_name(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(self.name.as_bytes());
    }
}

/// What one finalized image tells the debug interfaces.
pub(crate) struct ImageInfo<'a> {
    /// The image's name (its first input).
    pub(crate) name: &'a str,
    /// The graph after fixup: final block addresses.
    pub(crate) graph: &'a LinkGraph,
    /// `.eh_frame` (start, length with terminator).
    pub(crate) eh_frame: Option<(u64, u64)>,
    /// Linker-made code the graph's symbols do not name (PLT stubs).
    pub(crate) extra: Vec<ImageSymbol<'a>>,
}

/// What an image registered. Dropping it unregisters the image from GDB;
/// it must be dropped before the image's memory is released.
#[derive(Debug)]
pub struct DebugRegistration {
    gdb: Option<gdb::Entry>,
}

impl DebugRegistration {
    /// Whether the image is registered with the GDB JIT interface.
    pub fn registered_with_gdb(&self) -> bool {
        self.gdb.is_some()
    }
}

/// How many debug objects kiln has registered with the GDB JIT interface
/// in this process now (one per live image linked with
/// [`DebugOptions::gdb`]).
pub fn gdb_registered_objects() -> usize {
    gdb::registered_count()
}

/// GDB JIT registrations made in this process so far, and the time spent
/// in them (including the debugger reading each object, when one is
/// attached), for `kiln run --stats`.
pub fn gdb_registration_time() -> (u64, std::time::Duration) {
    gdb::registration_time()
}

/// With `KILN_GDB_TRACER_CPU=1` and a debugger attached: the CPU time the
/// debugger spent on this process's registrations (its process CPU clock,
/// read around each; a benchmark aid, less disturbed by other load than
/// [`gdb_registration_time`]).
pub fn gdb_debugger_cpu_time() -> Option<std::time::Duration> {
    gdb::tracer_time()
}

/// With `KILN_GDB_TRACER_CPU=1` and a debugger attached: the median of
/// the debugger's CPU time per registration (one-time work the debugger
/// does at the first registrations does not weigh on it, as it does on
/// the mean over few links).
pub fn gdb_debugger_cpu_median() -> Option<std::time::Duration> {
    gdb::tracer_median()
}

/// Announcements to debuggers or profilers in this process so far (one
/// per image), and the time spent in them (collecting symbols, building
/// debug objects, writing perf map and jitdump lines, registering — with a
/// debugger attached, its reading each object too), for `kiln run
/// --stats`.
pub fn announce_time() -> (u64, std::time::Duration) {
    (
        ANNOUNCED.load(std::sync::atomic::Ordering::Relaxed),
        std::time::Duration::from_nanos(ANNOUNCE_NANOS.load(std::sync::atomic::Ordering::Relaxed)),
    )
}

static ANNOUNCED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ANNOUNCE_NANOS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Runs `announce` when `options` enable anything, counting its time.
fn counted(
    options: &DebugOptions,
    announce: impl FnOnce() -> Result<Option<DebugRegistration>, DebugError>,
) -> Result<Option<DebugRegistration>, DebugError> {
    if !options.any() {
        return Ok(None);
    }
    use std::sync::atomic::Ordering::Relaxed;
    let start = std::time::Instant::now();
    let result = announce();
    ANNOUNCED.fetch_add(1, Relaxed);
    ANNOUNCE_NANOS.fetch_add(start.elapsed().as_nanos() as u64, Relaxed);
    result
}

/// This process's perf map, `/tmp/perf-PID.map`.
pub fn perf_map_path() -> String {
    perf_map::path()
}

/// This process's jitdump file, `$JITDUMPDIR/jit-PID.dump` (default `/tmp`).
pub fn jitdump_path() -> String {
    jitdump::path()
}

/// Opens the perf map now if `options` asks for it, so that the first
/// link does not pay for creating the file (layers and linkers call this
/// when they are made; errors surface again at the first link).
pub(crate) fn prepare(options: &DebugOptions) {
    if options.perf_map {
        let _ = perf_map::open();
    }
}

/// Announces a finalized image (memory readable, code at its final
/// addresses) to what `options` enables.
pub(crate) fn register_image(
    info: &ImageInfo<'_>,
    options: &DebugOptions,
) -> Result<Option<DebugRegistration>, DebugError> {
    counted(options, || announce_image(info, options))
}

/// [`register_image`]'s work.
fn announce_image(
    info: &ImageInfo<'_>,
    options: &DebugOptions,
) -> Result<Option<DebugRegistration>, DebugError> {
    if options.perf_map {
        // Formatted straight from the graph: no symbol list in between.
        let mut text = perf_map::Lines::with_capacity(info.graph.symbols.len() + info.extra.len());
        for_each_image_symbol(info, true, |s| text.push(&s));
        text.append()?;
    }
    if !options.gdb && !options.jitdump {
        return Ok(Some(DebugRegistration { gdb: None }));
    }
    let symbols = image_symbols(info);
    // The inputs' DWARF, relocated to the runtime addresses: for GDB's
    // object and jitdump's line tables.
    let dwarf = if options.gdb || options.jitdump {
        elf_object::collect_dwarf(info.graph)
    } else {
        Vec::new()
    };
    if options.jitdump {
        jitdump::append(&symbols, &lines::line_rows(&dwarf))?;
    }
    let gdb = if options.gdb {
        let object =
            elf_object::build(info, &symbols, &dwarf).map_err(|source| DebugError::Object {
                image: info.name.to_string(),
                source,
            })?;
        save_object_copy(&object);
        Some(gdb::Entry::register(object))
    } else {
        None
    };
    Ok(Some(DebugRegistration { gdb }))
}

/// What a loaded image file tells the debug interfaces (it has no graph:
/// its segments and exports, at their runtime addresses).
pub(crate) struct LoadedImage<'a> {
    /// The image's name (from its header).
    pub(crate) name: &'a str,
    /// Each segment: (start, size in memory, protection).
    pub(crate) segments: Vec<(u64, u64, crate::graph::Prot)>,
    /// `.eh_frame` (start, length with terminator).
    pub(crate) eh_frame: Option<(u64, u64)>,
    /// Each export: (name, address, callable).
    pub(crate) exports: Vec<(&'a str, u64, bool)>,
}

/// Announces a loaded image (finalized: memory readable, imports bound)
/// to what `options` enables, as [`register_image`] does for a link: one
/// GDB debug object, its functions in the perf map and the jitdump.
pub(crate) fn register_loaded(
    image: &LoadedImage<'_>,
    options: &DebugOptions,
) -> Result<Option<DebugRegistration>, DebugError> {
    counted(options, || announce_loaded(image, options))
}

/// [`register_loaded`]'s work.
fn announce_loaded(
    image: &LoadedImage<'_>,
    options: &DebugOptions,
) -> Result<Option<DebugRegistration>, DebugError> {
    let symbols = loaded_symbols(image);
    if options.perf_map {
        perf_map::append(&symbols)?;
    }
    if options.jitdump {
        jitdump::append(&symbols, &[])?;
    }
    let gdb = if options.gdb {
        let object =
            elf_object::build_loaded(image, &symbols).map_err(|source| DebugError::Object {
                image: image.name.to_string(),
                source,
            })?;
        save_object_copy(&object);
        Some(gdb::Entry::register(object))
    } else {
        None
    };
    Ok(Some(DebugRegistration { gdb }))
}

/// The exports of a loaded image inside its segments, by address. An image
/// file keeps no sizes: each symbol extends to the next one at a higher
/// address or to the end of its segment (a static function after a global
/// one is counted in the global's range: the file keeps no local symbols).
pub(crate) fn loaded_symbols<'a>(image: &LoadedImage<'a>) -> Vec<ImageSymbol<'a>> {
    let segment_end = |addr: u64| {
        image
            .segments
            .iter()
            .find(|&&(start, size, _)| (start..start + size).contains(&addr))
            .map(|&(start, size, _)| start + size)
    };
    let mut out: Vec<ImageSymbol<'a>> = image
        .exports
        .iter()
        .filter(|&&(name, addr, _)| !name.is_empty() && segment_end(addr).is_some())
        .map(|&(name, addr, code)| ImageSymbol {
            prefix: "",
            name: std::borrow::Cow::Borrowed(name),
            addr,
            size: 0,
            code,
            local: false,
        })
        .collect();
    out.sort_unstable_by_key(|s| s.addr);
    for i in 0..out.len() {
        let addr = out[i].addr;
        let end = segment_end(addr).unwrap_or(addr);
        let next = out[i + 1..]
            .iter()
            .map(|s| s.addr)
            .find(|&a| a > addr)
            .unwrap_or(end);
        out[i].size = next.min(end) - addr;
    }
    out
}

/// With `KILN_GDB_OBJECT_DIR` set, a copy of each debug object given to
/// GDB is saved there (for readelf, objdump --dwarf and the tests).
fn save_object_copy(object: &[u8]) {
    if let Some(dir) = std::env::var_os("KILN_GDB_OBJECT_DIR") {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::path::Path::new(&dir).join(format!("kiln-{}-{n}.o", std::process::id()));
        let _ = std::fs::write(path, object);
    }
}

/// The linker's PLT stubs as symbols, `kiln-plt:NAME`: `(symbol it
/// calls, stub address)` each, `size` bytes. Names are borrowed from the
/// graph.
pub(crate) fn plt_symbols<'a>(
    graph: &'a LinkGraph,
    plt: &[(crate::graph::SymbolId, u64)],
    size: u64,
) -> Vec<ImageSymbol<'a>> {
    plt.iter()
        .map(|&(sym, addr)| ImageSymbol {
            prefix: "kiln-plt:",
            name: match &graph.symbols[sym.index()].name {
                Some(name) => std::borrow::Cow::Borrowed(&**name),
                None => std::borrow::Cow::Owned(graph.symbol_name(sym)),
            },
            addr,
            size,
            code: true,
            local: true,
        })
        .collect()
}

/// Every named symbol of a live block outside TLS, plus `info.extra`, in
/// graph order (nothing needs them sorted: sorting cost more than the
/// rest). A function without a size (assembly) extends to the end of its
/// block.
pub(crate) fn image_symbols<'a>(info: &ImageInfo<'a>) -> Vec<ImageSymbol<'a>> {
    let mut out = Vec::with_capacity(info.graph.symbols.len() + info.extra.len());
    for_each_image_symbol(info, false, |s| out.push(s));
    out
}

/// Calls `f` with each symbol [`image_symbols`] lists, in its order (with
/// `code_only`, only the functions and `info.extra`).
fn for_each_image_symbol<'a>(
    info: &ImageInfo<'a>,
    code_only: bool,
    mut f: impl FnMut(ImageSymbol<'a>),
) {
    let g = info.graph;
    for s in &g.symbols {
        let (Some(name), SymbolDef::Defined { block, offset }) = (&s.name, s.def) else {
            continue;
        };
        if code_only && !s.callable {
            continue;
        }
        let b = &g.blocks[block.index()];
        let role = g.sections[b.section.index()].role;
        if !b.live
            || s.tls
            || matches!(role, SectionRole::TlsData | SectionRole::TlsBss)
            || name.is_empty()
            || name.starts_with(".L")
        {
            continue;
        }
        let rest = b.content.len().saturating_sub(offset);
        let size = if s.size == 0 && s.callable {
            rest
        } else {
            s.size
        };
        f(ImageSymbol {
            prefix: "",
            name: std::borrow::Cow::Borrowed(&**name),
            addr: b.addr + offset,
            size,
            code: s.callable,
            local: s.scope == crate::graph::Scope::Local,
        });
    }
    for s in &info.extra {
        f(s.clone());
    }
}

/// Reads an object into `graph` as [`crate::elf::read_object`] does — but
/// when GDB support or jitdump is on, keeping the input file (one copy, shared by the
/// blocks) so that its `.debug_*` sections can be found at finalization.
pub(crate) fn read_object(
    graph: &mut LinkGraph,
    name: &str,
    bytes: &[u8],
    options: &DebugOptions,
) -> Result<crate::graph::ObjectId, crate::LinkError> {
    Ok(graph.merge(parse_object(name, bytes, options)?))
}

/// Object `bytes` (called `name` in errors) parsed into a graph of its
/// own, as [`read_object`] reads it.
pub(crate) fn parse_object(
    name: &str,
    bytes: &[u8],
    options: &DebugOptions,
) -> Result<LinkGraph, crate::LinkError> {
    if !options.gdb && !options.jitdump {
        return crate::elf::parse_object(name, bytes);
    }
    let file: crate::graph::InputBytes = std::sync::Arc::new(bytes.to_vec().into());
    crate::elf::parse_object_shared(name, &file)
}

/// By object: the shared bytes of the input file it was read from, if its
/// blocks still refer to it (objects read from archives without GDB
/// support or jitdump on own copies).
pub(crate) fn object_files(g: &LinkGraph) -> Vec<Option<&crate::graph::InputBytes>> {
    let mut files = vec![None; g.objects.len()];
    for b in &g.blocks {
        if let (Some(o), Content::Input { file, .. }) = (b.object, &b.content)
            && let Some(slot @ None) = files.get_mut(o.index())
        {
            *slot = Some(file);
        }
    }
    files
}

/// Names lazy-call stubs and reentry trampolines in JIT memory for perf:
/// `entry` (the trampolines' shared reentry code, `kiln-reentry`), then
/// each of `starts` (`stride` bytes) as `kiln-KIND:NAME` by the lazy entry
/// it serves (`names`, one per start), or `kiln-KIND:I@BLOCK` when the
/// engine gave no names.
pub(crate) fn announce_stubs(
    kind: &str,
    entry: Option<(u64, u64)>,
    starts: &[u64],
    stride: u64,
    names: &[kiln_engine::SymbolName],
) {
    let options = DebugOptions::process_default();
    if !options.perf_map && !options.jitdump {
        return;
    }
    let symbols = stub_symbols(kind, entry, starts, stride, names);
    // Profiling names are best effort here: a stub block works without them.
    if options.perf_map {
        let _ = perf_map::append(&symbols);
    }
    if options.jitdump {
        let _ = jitdump::append(&symbols, &[]);
    }
}

/// The symbols [`announce_stubs`] gives perf.
fn stub_symbols(
    kind: &str,
    entry: Option<(u64, u64)>,
    starts: &[u64],
    stride: u64,
    names: &[kiln_engine::SymbolName],
) -> Vec<ImageSymbol<'static>> {
    let block = starts.first().copied().unwrap_or(0);
    let named = names.len() == starts.len();
    let symbol = |name: String, addr, size| ImageSymbol {
        prefix: "",
        name: name.into(),
        addr,
        size,
        code: true,
        local: true,
    };
    let mut out = Vec::with_capacity(starts.len() + 1);
    if let Some((addr, size)) = entry {
        out.push(symbol("kiln-reentry".into(), addr, size));
    }
    for (i, &addr) in starts.iter().enumerate() {
        let name = if named {
            format!("kiln-{kind}:{}", names[i].as_str())
        } else {
            format!("kiln-{kind}:{i}@{block:#x}")
        };
        out.push(symbol(name, addr, stride));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Prot;

    #[test]
    fn stubs_are_named_by_the_entry_they_serve() {
        let session = kiln_engine::Session::new();
        let names = [session.intern("foo"), session.intern("bar")];
        let got: Vec<(String, u64, u64)> =
            stub_symbols("stub", Some((0x900, 0x20)), &[0x1000, 0x1010], 0x10, &names)
                .iter()
                .map(|s| (s.name.to_string(), s.addr, s.size))
                .collect();
        let want = [
            ("kiln-reentry", 0x900, 0x20),
            ("kiln-stub:foo", 0x1000, 0x10),
            ("kiln-stub:bar", 0x1010, 0x10),
        ];
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert_eq!((g.0.as_str(), g.1, g.2), w);
        }
        let unnamed = stub_symbols("trampoline", None, &[0x2000], 8, &[]);
        assert_eq!(unnamed[0].name, "kiln-trampoline:0@0x2000");
        session.end();
    }

    #[test]
    fn loaded_symbols_extend_to_the_next_symbol_or_the_segment_end() {
        let image = LoadedImage {
            name: "t.kimg",
            segments: vec![(0x1000, 0x100, Prot::ReadExec), (0x2000, 0x40, Prot::Read)],
            eh_frame: None,
            exports: vec![
                ("b", 0x1040, true),
                ("a", 0x1000, true),
                ("alias", 0x1040, true),
                ("table", 0x2010, false),
                ("outside", 0x3000, false),
                ("", 0x1080, true),
            ],
        };
        let got: Vec<(String, u64, u64)> = loaded_symbols(&image)
            .iter()
            .map(|s| (s.name.to_string(), s.addr, s.size))
            .collect();
        let mut want = vec![
            ("a".to_string(), 0x1000, 0x40),
            ("b".to_string(), 0x1040, 0xc0),
            ("alias".to_string(), 0x1040, 0xc0),
            ("table".to_string(), 0x2010, 0x30),
        ];
        let mut got = got;
        got.sort();
        want.sort();
        assert_eq!(got, want);
    }
}
