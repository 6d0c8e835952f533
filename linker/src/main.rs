//! `kiln`: link relocatable objects and archives into this process, through
//! kiln's engine, and run them.
//!
//! `#![no_main]`: the C runtime calls [`main`] below directly, without
//! Rust's start-up wrapper, which reads `/proc/self/maps` (through
//! `pthread_getattr_np`, ~48 `sscanf`s) to install a stack-overflow handler
//! and its alternate stack for a process that mostly runs for a few
//! milliseconds. What the wrapper did that kiln keeps is done in [`main`]
//! (standard descriptors, panics to status 101; `SIGPIPE` is left as the
//! shell gave it, for the program's sake); the
//! alternate signal stack is set up only before a program runs
//! ([`install_fatal_signal_handlers`]). A stack overflow in kiln's own
//! code therefore dies as a plain `SIGSEGV` instead of Rust's message.
//!
//! Allocations are libc's: mimalloc, the binary's allocator until
//! 2026-12, cost a cache hit ~115 page faults and 0.15 M instructions of
//! set-up (options read from the environment, `cpuid`) and linked no
//! faster (docs/performance-images.md, "Start-up of `kiln run --cache`
//! hits").
// Unit tests (`cargo test --bin kiln`) keep the test harness's own `main`.
#![cfg_attr(not(test), no_main)]
#![cfg_attr(test, allow(dead_code))]

use std::ffi::CString;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use kiln_engine::{
    Dylib, DylibLookup, InPlaceDispatcher, LazyReexports, LookupSet, RequiredState, SearchOrder,
    Session, WorkerPool,
};
use kiln_linker::archive::Archive;
use kiln_linker::image_file::{ImageError, ImageFile};
use kiln_linker::layer::{ArchiveGenerator, HostGenerator, ObjectLayer};
use kiln_linker::memory::FileBytes;
use kiln_linker::{DebugOptions, HostSymbols, LinkOptions, LinkedImage, Linker};

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

mod image_cli;
mod input_index;
mod quick_args;

/// Link relocatable ELF x86-64 objects and static archives into this process
/// and run them.
#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Link ELF x86-64 objects and archives into this process and run them",
    long_about = "kiln links relocatable ELF x86-64 objects (.o) and static archives (.a) \
into its own process — no executable is written — and runs their entry point.\n\n\
Undefined symbols resolve against the inputs, then kiln's runtime (atexit, \
__cxa_atexit, TLS), then the kiln process itself and the shared libraries \
named with -l (libc, libm, libstdc++ and libgcc_s are always there). \
Archive members are linked only when one of their symbols is needed, and only \
the parts of them that kept code reaches (as ld --gc-sections treats library code). \
Code is placed within ±2 GiB of itself (below 2 GiB for -fno-pie objects) \
and no page is ever writable and executable at once.\n\n\
With no arguments, kiln links and runs a small bundled example program and \
says what it did.",
    after_help = "EXIT STATUS\n  The entry point's return value; if it dies of a signal, kiln dies of the same signal \
(the shell reports 128+N); \
1 if linking fails (the message names the object, section, offset and relocation, \
or every missing symbol with the objects that use it); 2 for usage errors.\n\n\
EXAMPLES\n  kiln run hello.o\n  kiln run main.o liblua.a -lm -- script.lua\n  \
kiln run --noexec --stats big/*.o\n  kiln run --lazy main.o util.o\n  \
kiln image save -o lua.kimg main.o liblua.a && kiln run lua.kimg -- script.lua"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Link INPUTs into this process and run the entry point. Image files
    /// (from `kiln image save`, recognized by their magic) are loaded
    /// instead of linked, and may be mixed with objects.
    Run(RunArgs),
    /// Save linked code as an image file, or describe one.
    #[command(subcommand)]
    Image(ImageCommand),
}

#[derive(Subcommand, Debug)]
enum ImageCommand {
    /// Link INPUTs in imaging mode and save the result as one image file,
    /// which `kiln run OUT.kimg` loads without relinking.
    Save(SaveArgs),
    /// Check an image file (header, content hash, tables) and describe it.
    Info(InfoArgs),
}

#[derive(Args, Debug)]
struct SaveArgs {
    /// The image file to write (written to a temporary file, then renamed).
    #[arg(short = 'o', value_name = "OUT.kimg", required = true)]
    output: PathBuf,
    /// Relocatable objects (.o) and static archives (.a), compiled with
    /// -fPIE (clang) or -fPIC.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Also resolve symbols from the shared library libNAME.so (repeatable;
    /// `-l :FILE` for FILE itself, or a path).
    #[arg(short = 'l', value_name = "NAME")]
    libs: Vec<String>,
    /// Search DIR for -l libraries before the system directories (repeatable).
    #[arg(short = 'L', value_name = "DIR")]
    lib_dirs: Vec<PathBuf>,
    /// Link against the image LIB.kimg (repeatable): references into it
    /// are saved as (its build id, offset), and loading OUT.kimg needs it
    /// loaded first (`kiln run` finds it next to OUT.kimg by file name).
    #[arg(long, value_name = "LIB.kimg")]
    against: Vec<PathBuf>,
    /// Keep symbols that neither the inputs nor the host define as imports,
    /// bound by name when the image is loaded (a library image whose user
    /// defines them, e.g. `kiln run lib.kimg main.o`).
    #[arg(long)]
    allow_undefined: bool,
    /// CPU features the code requires beyond what the inputs' GNU property
    /// notes record, comma-separated (`avx2,fma`, `x86-64-v3`): recorded in
    /// the header with them; loading on a CPU without them is refused.
    #[arg(long, value_name = "LIST")]
    cpu_features: Option<String>,
    /// Print link statistics and phase times to stderr (the lines of
    /// `kiln run --noexec --stats`).
    #[arg(long)]
    stats: bool,
    /// Threads that link: N threads for the work the link splits (opening
    /// inputs, parsing, fixups, the build id's hash); 1 links on one thread
    /// alone (default: one per core).
    #[arg(long, value_name = "N", value_parser = thread_count)]
    threads: Option<usize>,
}

#[derive(Args, Debug)]
struct InfoArgs {
    /// The image file.
    #[arg(value_name = "IMAGE")]
    image: PathBuf,
    /// Print JSON (for scripts).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Relocatable objects (.o) and static archives (.a). The first input's
    /// path is the program's name (argument zero).
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    /// Also resolve symbols from the shared library libNAME.so (repeatable;
    /// `-l :FILE` for FILE itself, or a path).
    #[arg(short = 'l', value_name = "NAME")]
    libs: Vec<String>,
    /// Search DIR for -l libraries before the system directories (repeatable).
    #[arg(short = 'L', value_name = "DIR")]
    lib_dirs: Vec<PathBuf>,
    /// The function to run, called as `int SYM(int argc, char **argv, char **envp)`.
    #[arg(long, value_name = "SYM", default_value = "main")]
    entry: String,
    /// Link everything the entry point reaches, then stop without running
    /// anything (no initializers either).
    #[arg(long)]
    noexec: bool,
    /// Print phase timings and counts (objects, symbols, relocations) to stderr.
    #[arg(long)]
    stats: bool,
    /// Threads that link: N threads for the work a link splits (opening
    /// inputs, parsing, fixups), and with --lazy N workers that link objects
    /// as they are first called; 1 links on one thread alone (default: one
    /// per core).
    #[arg(long, value_name = "N", value_parser = thread_count)]
    threads: Option<usize>,
    /// Link each object only when one of its functions is first called
    /// (data references link it at once).
    #[arg(long)]
    lazy: bool,
    /// Keep a code cache in DIR: the inputs are linked in imaging mode and
    /// saved there as an image keyed by their content hash; a later run with
    /// the same inputs loads the image instead of linking. DIR and its
    /// entries must belong to you and not be writable by others.
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Register the linked code with GDB/LLDB through the GDB JIT interface
    /// (one in-memory ELF debug object per link); also `KILN_GDB=1`.
    #[arg(long)]
    gdb: bool,
    /// Append the linked functions to /tmp/perf-PID.map for `perf report`;
    /// also `KILN_PERF=map`.
    #[arg(long)]
    perf_map: bool,
    /// Write the linked functions, with their code, to jit-PID.dump in
    /// $JITDUMPDIR (default /tmp) for `perf inject --jit`; also `KILN_PERF=jitdump`.
    #[arg(long)]
    jitdump: bool,
    /// Arguments for the program, after `--`.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

/// A `--threads` value: a number of threads, 1 or more.
fn thread_count(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("0 threads cannot link: give 1 or more (1 links on one thread alone)".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("not a number of threads: {e}")),
    }
}

impl RunArgs {
    /// `kiln run INPUTS...` with every option at its default.
    fn of_inputs(inputs: Vec<PathBuf>) -> RunArgs {
        RunArgs {
            inputs,
            libs: Vec::new(),
            lib_dirs: Vec::new(),
            entry: "main".into(),
            noexec: false,
            stats: false,
            threads: None,
            lazy: false,
            cache: None,
            gdb: false,
            perf_map: false,
            jitdump: false,
            args: Vec::new(),
        }
    }
}

/// An input in memory.
struct Input {
    name: String,
    bytes: FileBytes,
}

/// The process's entry point (see the module note). `std::env::args`
/// works without Rust's wrapper on glibc (std takes argv in `.init_array`).
#[cfg(not(test))]
#[unsafe(no_mangle)]
extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    open_standard_descriptors();
    // `SIGPIPE` keeps the disposition kiln was started with (unlike Rust's
    // runtime, which ignores it): the program kiln runs must die of it as
    // it would natively (`prog | head`), and kiln's own output to a closed
    // pipe ends kiln as it ends any Unix tool, not with a panic.
    tune_malloc();
    // A panic (already reported by the panic hook) exits 101, as before.
    let code = std::panic::catch_unwind(kiln_main).unwrap_or(101);
    // Flushes Rust's stdout and exits through libc (atexit handlers run).
    std::process::exit(code)
}

/// glibc's malloc (the binary's allocator) starts a thread's arena small
/// and grows it a few pages at a time, one `mprotect` each, and trims at
/// large frees; a link allocates tens of MB from two threads. A 16 MiB top
/// pad and a 64 MiB trim threshold make that a few calls: synth's
/// `kiln run --noexec`, paired against the mimalloc build, went from 1.087×
/// to 1.00× wall (docs/performance-link.md). Address space only: pages are
/// touched as before. Blocks up to 32 MiB come from the heaps, which a
/// run that links puts on huge pages ([`heaps_on_huge_pages`]).
fn tune_malloc() {
    // SAFETY: `mallopt` only sets malloc's parameters; no memory is
    // handed out or freed by it, and no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_TOP_PAD, 16 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        // Blocks up to 32 MiB (glibc's largest threshold, where its own
        // sliding one ends) come from the heaps, which get huge pages,
        // rather than from mappings of their own, which do not.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
}

/// glibc's `glibc.malloc.hugetlb=1`, which only the environment can set
/// (`GLIBC_TUNABLES`, read before `main`), done from here, once, before a
/// link: malloc's heaps ask for transparent huge pages (`MADV_HUGEPAGE`),
/// so a link's tens of MB of graphs fault in 2 MiB at a time instead of
/// 4 KiB (synth: ~5,900 page faults to ~1,600; see
/// docs/performance-link.md). Best effort: without transparent huge pages
/// `madvise` fails and pages stay small. Runs that only map images do
/// none of it.
///
/// The main heap grows by one block taken and given back here, the new
/// part advised (the free keeps it: below the trim threshold). The other
/// threads' heaps are made before those threads start: glibc gives a new
/// thread the arena of a thread that has ended before it makes a new one,
/// so `threads` threads started here at once — as many as will allocate
/// besides the main one ([`allocating_threads`]) — each make an arena,
/// advise its heap and end, leaving the arenas for the threads to come (a
/// thread, its arena's mapping and its `mprotect` cost ~0.1 ms each, and
/// they contend for the memory-map lock: a fifth of a small run's samples
/// went to five of them when two would do).
fn heaps_on_huge_pages(threads: usize) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        main_heap_on_huge_pages();
        thread_heaps_on_huge_pages(threads);
    });
}

/// How many threads besides the main one allocate in a run of `args`:
/// rayon's (one per core, or `--threads`), none with `--threads 1`, and
/// with `--lazy` as many engine workers again.
fn allocating_threads(args: &RunArgs) -> usize {
    let helpers = helper_threads(args.threads);
    if args.lazy { 2 * helpers } else { helpers }
}

/// rayon's threads for `--threads`: one per core by default, none with 1.
fn helper_threads(threads: Option<usize>) -> usize {
    if one_thread(threads) {
        0
    } else {
        threads.unwrap_or_else(WorkerPool::available_threads)
    }
}

/// The main heap's part of [`heaps_on_huge_pages`].
fn main_heap_on_huge_pages() {
    const RESERVE: usize = 24 << 20;
    // SAFETY: a block malloc hands out, given back below; nothing else
    // uses it. `sbrk(0)` only reads the break.
    unsafe {
        let block = libc::malloc(RESERVE);
        if block.is_null() {
            return;
        }
        let from = (block as usize) & !(PAGE - 1);
        let brk = libc::sbrk(0) as usize;
        if brk > from && brk - from >= RESERVE {
            advise_huge_pages(from, brk - from);
        }
        libc::free(block);
        // The free gave the block back to the top, where the next
        // allocations start.
        start_at_a_huge_page(block as usize);
    }
}

/// The size of the pages malloc's advised heaps are backed with.
const HUGE_PAGE: usize = 2 << 20;

/// Where a heap's allocations continue at `top` (its top chunk's start)
/// and pages below `top` in the same 2 MiB were touched before the heap
/// was advised, the kernel backs the rest of those 2 MiB with small pages,
/// a fault each. A block from `top` to the next 2 MiB boundary, taken and
/// never given back (nor written: address space only), makes the
/// allocations after it start on huge pages: synth's `kiln run` made ~250
/// small-page faults in each of the main heap and the arena of the thread
/// that read most inputs.
fn start_at_a_huge_page(top: usize) {
    /// Room left below the boundary for the kept block's and the top
    /// chunk's headers.
    const HEADERS: usize = 64;
    let used = top & (HUGE_PAGE - 1);
    if used + HEADERS < HUGE_PAGE {
        // SAFETY: a block malloc hands out, deliberately kept. (The hint
        // keeps the compiler from dropping an allocation nobody reads.)
        std::hint::black_box(unsafe { libc::malloc(HUGE_PAGE - used - HEADERS) });
    }
}

/// The page size kiln's hosts have (x86-64, aarch64 as built by Debian).
const PAGE: usize = 4096;

/// The other threads' part of [`heaps_on_huge_pages`]: `threads` arenas
/// (at most 16), each advised by the thread that made it. Each thread is
/// joined to its end (`pthread_join`): glibc puts a thread's arena on the
/// free list for the next thread only as the thread exits, after its
/// function returned — a scope's own wait ends earlier, and a thread
/// started then made a new arena, on small pages, about one run in three
/// (synth: up to ~3,000 more page faults).
fn thread_heaps_on_huge_pages(threads: usize) {
    // Every thread holds its arena until all have one: this write lock is
    // given up once each started thread said it has one.
    let gate = std::sync::RwLock::new(());
    let closed = gate
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let (made, all_made) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        // A thread that cannot start is one arena fewer.
        let started: Vec<_> = (0..threads.min(16))
            .filter_map(|_| {
                let made = made.clone();
                let gate = &gate;
                let thread = std::thread::Builder::new().spawn_scoped(s, move || {
                    let block = advise_this_threads_heap();
                    let _ = made.send(());
                    drop(gate.read());
                    // SAFETY: `block` came from malloc (or is null).
                    unsafe { libc::free(block) };
                });
                thread.ok()
            })
            .collect();
        // Only the threads hold senders now: a thread that died early ends
        // the wait too.
        drop(made);
        for _ in 0..started.len() {
            let _ = all_made.recv();
        }
        drop(closed);
        for thread in started {
            let _ = thread.join();
        }
    });
}

/// Advises the heap of the calling thread's arena (a thread other than the
/// main one; a block of the main arena, below the break, is left) and
/// returns the block that found it, to be freed. Each arena's heap is a
/// mapping of `HEAP_MAX_SIZE` (64 MiB on 64-bit) at a multiple of that
/// size, its first 16 MiB read-write from the start (the top pad): the
/// heap holding a block is found by rounding its address down. glibc wrote
/// the arena's header at its start before the advice: its allocations
/// start at the next huge page ([`start_at_a_huge_page`]).
fn advise_this_threads_heap() -> *mut libc::c_void {
    const HEAP_MAX: usize = 64 << 20;
    // SAFETY: a block malloc hands out, returned to be freed; `sbrk(0)`
    // only reads the break.
    unsafe {
        let block = libc::malloc(64);
        if !block.is_null() && block as usize > libc::sbrk(0) as usize {
            advise_huge_pages(block as usize & !(HEAP_MAX - 1), HEAP_MAX);
            // The top chunk follows the block.
            start_at_a_huge_page(block as usize + 64);
        }
        block
    }
}

/// `MADV_HUGEPAGE` for `[start, start + len)`, a range of malloc's heaps.
fn advise_huge_pages(start: usize, len: usize) {
    // SAFETY: the advice only says which page size backs the range's
    // anonymous pages from now on; contents and protections stay, and
    // a part of the range that is not mapped fails the call (ignored).
    unsafe {
        libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
    }
}

/// As Rust's runtime does: a closed stdin, stdout or stderr is opened on
/// `/dev/null`, so no file kiln opens lands on descriptors 0-2.
fn open_standard_descriptors() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd {
        fd,
        events: 0,
        revents: 0,
    });
    // SAFETY: `fds` is a valid array of three pollfd; a zero timeout.
    if unsafe { libc::poll(fds.as_mut_ptr(), 3, 0) } == -1 {
        return;
    }
    for pfd in fds.iter().filter(|p| p.revents & libc::POLLNVAL != 0) {
        // SAFETY: opens a path given as a NUL-terminated literal; the
        // descriptor is left open on purpose (it is the lowest free one,
        // `pfd.fd`).
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        if fd != pfd.fd {
            // SAFETY: aborting is always allowed; a process whose standard
            // descriptors cannot be filled is not safe to continue.
            unsafe { libc::abort() };
        }
    }
}

fn kiln_main() -> i32 {
    // A plain `kiln run` line is read without building clap's model of
    // the CLI (see `quick_args`); clap reads every other line.
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match quick_args::parse_run(&argv) {
        Some(run) => Some(Command::Run(run)),
        None => Cli::parse_from(argv).command,
    };
    let result = match command {
        Some(Command::Run(args)) => run_files(args),
        Some(Command::Image(ImageCommand::Save(args))) => {
            // A save's link splits its work over rayon's threads.
            heaps_on_huge_pages(helper_threads(args.threads));
            pool_of(args.threads);
            image_cli::save(&args)
        }
        Some(Command::Image(ImageCommand::Info(args))) => image_cli::info(&args),
        None => run_bundled(),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("kiln: error: {message}");
            1
        }
    }
}

/// What the user reads of `e` ([`kiln_engine::message_with_causes`]).
fn report<E: std::error::Error + 'static>(e: E) -> String {
    kiln_engine::message_with_causes(&e)
}

fn run_bundled() -> Result<i32, String> {
    let names: Vec<&str> = BUNDLED.iter().map(|(n, _)| *n).collect();
    eprintln!(
        "kiln: no inputs given; linking the bundled example ({}) into this process and running main",
        names.join(", ")
    );
    eprintln!("kiln: (run `kiln run --help` to link your own objects)");
    let inputs = BUNDLED
        .iter()
        .map(|(n, b)| Input {
            name: (*n).to_string(),
            bytes: b.to_vec().into(),
        })
        .collect();
    let args = RunArgs::of_inputs(vec![PathBuf::from("kiln-bundled-example")]);
    link_and_run(&args, inputs, Vec::new(), true)
}

fn run_files(args: RunArgs) -> Result<i32, String> {
    limit_threads(&args);
    if let Some(dir) = &args.cache {
        if args.lazy {
            return Err("--cache and --lazy cannot be combined yet".into());
        }
        // The key is the inputs' bytes: every input is hashed (mapped, not
        // read, unless the entry is missing).
        let parallel = !one_thread(args.threads);
        let cached = image_cli::cached(
            dir,
            &args.inputs,
            &args.libs,
            &args.lib_dirs,
            args.stats,
            parallel,
        )?;
        return match cached {
            image_cli::Cached::Image(image) => link_and_run(&args, Vec::new(), vec![image], false),
            image_cli::Cached::Images(images) => link_and_run(&args, Vec::new(), images, false),
            // The inputs themselves: they cannot be imaged.
            image_cli::Cached::Inputs(pairs) => {
                let (inputs, images) = split_images(pairs)?;
                link_and_run(&args, inputs, images, false)
            }
        };
    }
    // Image files are opened (mapped and checked), not read.
    let mut inputs = Vec::with_capacity(args.inputs.len());
    let mut images = Vec::new();
    for (path, opened) in args.inputs.iter().zip(open_inputs(&args)) {
        match opened? {
            Opened::Image(file) => {
                images.push(ImageFile::from_file(path, file).map_err(report)?);
            }
            Opened::Bytes(bytes) => inputs.push(Input {
                name: path.display().to_string(),
                bytes,
            }),
        }
    }
    link_and_run(&args, inputs, images, false)
}

/// An input file: an image (still open, to be mapped) or the bytes of
/// anything else.
enum Opened {
    Image(std::fs::File),
    Bytes(FileBytes),
}

/// Whether `--threads` asks for one thread: nothing is split over rayon's.
fn one_thread(threads: Option<usize>) -> bool {
    threads == Some(1)
}

/// `--threads N` (N > 1) as the size of rayon's pool, which the split
/// work runs on (before anything starts it with a thread per core).
fn limit_threads(args: &RunArgs) {
    if args.threads.is_some_and(|n| n > 1) {
        // Its threads' heaps, too, before they start.
        heaps_on_huge_pages(allocating_threads(args));
    }
    pool_of(args.threads);
}

/// rayon's pool of `threads` (when given, and more than one).
fn pool_of(threads: Option<usize>) {
    if let Some(n) = threads.filter(|&n| n > 1) {
        // Fails only if the pool already exists: nothing of this run made it.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
}

/// Inputs at least this large are mapped rather than read (with `map`):
/// below it a read costs less than mapping and unmapping.
const MAP_INPUTS_FROM: u64 = 16 << 10;

/// From this many inputs on, they are opened on rayon's threads.
const OPEN_IN_PARALLEL_FROM: usize = 16;

/// Every input of `args` opened ([`open_input`]), in order. Many are opened
/// in parallel: opening is mostly the kernel's work (`openat`, `statx`,
/// `mmap`), all on one thread before any object is read otherwise (with
/// the mappings populated, 18 % of the kernel's cycles of `kiln run
/// --noexec` on the 201-object synth input; opened in turn now that they
/// are not: 1.07× wall in 40 pairs).
fn open_inputs(args: &RunArgs) -> Vec<Result<Opened, String>> {
    // Objects linked at once are mapped; `--lazy` and archives keep their
    // bytes in vectors.
    let open = |path: &std::path::PathBuf| {
        let map = !args.lazy && path.extension().is_none_or(|e| e != "a");
        open_input(path, map)
    };
    if args.inputs.len() < OPEN_IN_PARALLEL_FROM || one_thread(args.threads) {
        return args.inputs.iter().map(open).collect();
    }
    use rayon::prelude::*;
    heaps_on_huge_pages(allocating_threads(args));
    args.inputs.par_iter().map(open).collect()
}

/// Opens `path` once: its first bytes tell an image, which is left to be
/// mapped; anything else is read whole, or mapped if `map` and it is large
/// (no copy, no page fault per page: see [`FileBytes`]).
fn open_input(path: &std::path::Path, map: bool) -> Result<Opened, String> {
    use std::io::Read as _;
    let err = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut bytes = vec![0; kiln_linker::image_file::IMAGE_MAGIC_END];
    // One `read` of a regular file gives all it asks for that the file
    // has (`read_to_end` made a second to see the end).
    let mut got = 0;
    while got < bytes.len() {
        match file.read(&mut bytes[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(e)),
        }
    }
    bytes.truncate(got);
    if kiln_linker::image_file::is_image(&bytes) {
        return Ok(Opened::Image(file));
    }
    if map && file.metadata().map_err(err)?.len() >= MAP_INPUTS_FROM {
        // SAFETY: an input named on the command line: like ld, mold and
        // lld, kiln assumes nothing truncates or rewrites it while the
        // process links and runs it (see `FileBytes::map`).
        let mapped = unsafe { FileBytes::map(&file) }.map_err(err)?;
        // The process links once: the kernel unmaps the file at exit.
        return Ok(Opened::Bytes(mapped.keep_mapped()));
    }
    file.read_to_end(&mut bytes).map_err(err)?;
    Ok(Opened::Bytes(bytes.into()))
}

/// Objects and archives as read; image files opened again by their path
/// (mapped and checked).
fn split_images(pairs: Vec<(String, Vec<u8>)>) -> Result<(Vec<Input>, Vec<ImageFile>), String> {
    let mut inputs = Vec::new();
    let mut images = Vec::new();
    for (name, bytes) in pairs {
        if kiln_linker::image_file::is_image(&bytes) {
            images.push(ImageFile::open(std::path::Path::new(&name)).map_err(report)?);
        } else {
            inputs.push(Input {
                name,
                bytes: bytes.into(),
            });
        }
    }
    Ok((inputs, images))
}

/// Links (or loads) the inputs into this process and runs the entry point:
/// the steps below, in order.
fn link_and_run(
    args: &RunArgs,
    inputs: Vec<Input>,
    images: Vec<ImageFile>,
    narrate: bool,
) -> Result<i32, String> {
    let started = Instant::now();
    // The first input's path names the image and is the program's argv[0].
    let program = args
        .inputs
        .first()
        .map_or_else(|| "kiln".to_string(), |p| p.display().to_string());
    let debug = set_debug_options(args);
    let mut images = images;
    if runs_alone(args, &inputs, &images, debug) {
        match run_alone(args, &program, images.remove(0))? {
            Alone::Ran(status) => return Ok(status),
            Alone::NeedsEngine(image) => images.push(image),
        }
    }
    let run = Run::start(args, heaps_for(args, &inputs))?;
    let input_count = inputs.len() + images.len();
    let lazy = add_inputs(&run, args, &program, inputs, images)?;
    let link_start = Instant::now();
    let address = look_up_entry(&run, &args.entry)?;
    let link_time = link_start.elapsed();
    let report = |ran: Option<Duration>| {
        if args.stats {
            print_stats(
                &run.layer,
                lazy.as_ref(),
                input_count,
                started.elapsed(),
                link_time,
                ran,
            );
        }
    };
    // A process that announces nothing to a debugger or profiler exits
    // without ending the session or dropping its tables: that only releases
    // memory the exit releases anyway (~4% of a cache hit's instructions
    // and an `munmap` per library and image; on the 200-object synth input
    // 26 M instructions, 9 % of `kiln run --noexec`: the graph freed after
    // the emit, the dylib removed, the layer's and engine's tables).
    let end = if debug == DebugOptions::NONE {
        SessionEnd::LeftToExit
    } else {
        SessionEnd::Ended
    };
    if args.noexec {
        // As after a run (work left after the emit, such as freeing the
        // graph, is done and counted when the session is ended).
        if end == SessionEnd::Ended {
            run.session.end();
        }
        report(None);
        leave(run, end);
        return Ok(0);
    }
    let (argc, argv, envp) = program_arguments(&program, &args.args)?;
    run_static_constructors(&run)?;
    install_fatal_signal_handlers();
    end_session_at_exit(&run.session, &run.layer, end);
    // SAFETY: `kiln run` runs the program the user gave it, from its
    // initializers on, as its own start would.
    unsafe { run.layer.run_initializers() };
    let run_start = Instant::now();
    // SAFETY: `address` is the entry point of code kiln just linked, Ready
    // (it and everything it reaches are emitted and finalized), and the
    // user asserts its signature is `int (int, char **, char **)`; argv
    // is a NUL-terminated array of leaked C strings, envp the process's
    // own `environ` (`program_arguments`).
    let status = unsafe { call_entry(address, argc, argv, envp) };
    let ran = run_start.elapsed();
    kiln_linker::runtime::set_exit_status(status);
    // Finalizers and atexit handlers of the JIT'd code run before any of its
    // memory goes — lazy stubs included, which belong to another dylib.
    run.layer.run_finalizers();
    if end == SessionEnd::Ended {
        run.session.end();
    }
    report(Some(ran));
    if narrate {
        narrate_run(&run.layer, status, input_count, link_time);
    }
    leave(run, end);
    Ok(status)
}

/// The end of a run whose process exits next: with
/// [`SessionEnd::LeftToExit`], the session, layer and dylibs are not
/// dropped either (the exit releases their memory at once, and no thread
/// of theirs has anything left to do for the process).
fn leave(run: Run, end: SessionEnd) {
    match end {
        SessionEnd::LeftToExit => std::mem::forget(run),
        SessionEnd::Ended => drop(run),
    }
}

/// A run of one image file that needs nothing from the engine: no other
/// input, no image it links against, no `--lazy`, `--threads`, `--noexec`
/// or `--stats` (whose lines describe the engine's layer), no debugger or
/// profiler interface, and a file whose identity can be trusted (so the
/// loader does not hash it again: see [`ImageFile::stamp`]).
fn runs_alone(args: &RunArgs, inputs: &[Input], images: &[ImageFile], debug: DebugOptions) -> bool {
    !args.lazy
        && args.threads.is_none()
        && !args.noexec
        && !args.stats
        && debug == DebugOptions::NONE
        && inputs.is_empty()
        && images.len() == 1
        && images.iter().all(|i| i.stamp().is_some())
}

/// What a run of one image file alone did.
enum Alone {
    /// The program ran and returned this status.
    Ran(i32),
    /// The image links against other images: run it through the engine,
    /// which finds them next to it.
    NeedsEngine(ImageFile),
}

/// The image a run of one image file loaded, kept for the program's
/// teardown (at its return or its `exit`); never unloaded.
static ALONE: std::sync::Mutex<Option<LinkedImage>> = std::sync::Mutex::new(None);

/// Runs one image file without the engine (see [`runs_alone`]): the
/// standalone loader maps and binds it against the host's symbols (kiln's
/// runtime, the process, `-l` libraries — what the engine's `<host>` dylib
/// answers), then its initializers, entry point and finalizers run as
/// `link_and_run` runs them. A cache hit's session, layer, dylibs and
/// per-export definitions (~1.3 M of its ~3.2 M instructions) are not
/// made (docs/performance-images.md).
fn run_alone(args: &RunArgs, program: &str, image: ImageFile) -> Result<Alone, String> {
    let host = host_symbols(args)?;
    // The file was opened and checked (its content hash too): it is loaded
    // from what was opened, not opened or checked again.
    // SAFETY: as for `add_image_from_file` in `add_eagerly`: the user asked
    // kiln to run this file's code; it binds against this process's host
    // symbols, and kiln does not write image files it runs.
    let loaded = unsafe { image.load(&host) };
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(ImageError::MissingDependencies { .. }) => return Ok(Alone::NeedsEngine(image)),
        Err(e) => return Err(report(e)),
    };
    let address = loaded
        .symbol(&args.entry)
        // As the engine's lookup says it.
        .ok_or_else(|| format!("symbols not found: {}", args.entry))?;
    // The inputs are a program: tear down like exit(), not dlclose.
    loaded.set_executable_teardown(true);
    let (argc, argv, envp) = program_arguments(program, &args.args)?;
    install_fatal_signal_handlers();
    // Taken before the image is filed for the exit handler, run after:
    // an initializer may call `exit()`, whose teardown takes the image.
    let initializers = loaded.take_initializers();
    *ALONE.lock().unwrap_or_else(|p| p.into_inner()) = Some(loaded);
    finalize_alone_at_exit();
    // SAFETY: the image is loaded, bound and protected, and stays loaded
    // until the process exits (`ALONE`); these are its initializers.
    unsafe { initializers.run() };
    // SAFETY: `address` is the entry point of the loaded image (bound and
    // protected; it stays loaded until the process exits), and the user
    // asserts its signature is `int (int, char **, char **)`; argv is a
    // NUL-terminated array of leaked C strings, envp the process's own
    // `environ` (`program_arguments`).
    let status = unsafe { call_entry(address, argc, argv, envp) };
    kiln_linker::runtime::set_exit_status(status);
    finalize_alone();
    // The libraries the image is bound to stay loaded as long as it does:
    // until the process exits (as the engine's `<host>` dylib keeps them).
    std::mem::forget(host);
    Ok(Alone::Ran(status))
}

/// Runs the image's `atexit` handlers and finalizers (once: later calls
/// find them taken). No lock is held while they run.
fn finalize_alone() {
    let calls = ALONE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_mut()
        .map(|image| image.take_finalizers());
    if let Some(calls) = calls {
        // SAFETY: the image stays loaded until the process exits (`ALONE`
        // is never emptied); its teardown was taken once.
        unsafe { calls.run() };
    }
}

unsafe extern "C" {
    /// glibc's `on_exit`: an exit handler that receives the exit status
    /// (the `libc` crate does not declare it).
    fn on_exit(
        f: extern "C" fn(libc::c_int, *mut libc::c_void),
        arg: *mut libc::c_void,
    ) -> libc::c_int;
}

/// If the program calls `exit()` itself — from `main` or from an
/// initializer — its image's `atexit` handlers and finalizers run from
/// libc's exit list.
fn finalize_alone_at_exit() {
    extern "C" fn at_exit(status: libc::c_int, _: *mut libc::c_void) {
        kiln_linker::runtime::set_exit_status(status);
        finalize_alone();
    }
    // SAFETY: `at_exit` is an `on_exit` handler that only finalizes the
    // image (once) with the exit status; registering it has no other
    // precondition.
    unsafe {
        on_exit(at_exit, std::ptr::null_mut());
    }
}

/// Inputs smaller than this give an eager link nothing to split over
/// rayon's threads (objects are read on them from 2 MiB, fixups split from
/// 20,000 relocations or 1 MiB of code): no heaps are prepared for those
/// threads.
const SPLIT_FROM_BYTES: usize = 1 << 20;

/// The heaps a run of `args` with `inputs` prepares ([`heaps_on_huge_pages`]):
/// none for image files alone (mapped, not linked), else the main one and
/// one for each thread that will allocate.
fn heaps_for(args: &RunArgs, inputs: &[Input]) -> Option<usize> {
    if inputs.is_empty() {
        return None;
    }
    let bytes: usize = inputs.iter().map(|i| i.bytes.len()).sum();
    let small = !args.lazy && bytes < SPLIT_FROM_BYTES;
    Some(if small { 0 } else { allocating_threads(args) })
}

/// A run's engine: its session, the object layer, and the two dylibs
/// (`main` for the inputs, `<host>` for the process and `-l` libraries).
struct Run {
    session: Session,
    layer: ObjectLayer,
    main: Dylib,
    host: Dylib,
}

impl Run {
    /// The session, layer and dylibs for `args` (`-l` libraries loaded),
    /// with the `heaps` [`heaps_for`] says.
    fn start(args: &RunArgs, heaps: Option<usize>) -> Result<Run, String> {
        if let Some(threads) = heaps {
            heaps_on_huge_pages(threads);
        }
        // Without --lazy the inputs are one unit, linked once the entry
        // point is looked up, and image files are mapped and bound: the
        // work runs on this thread (a link's parallel parts on rayon's
        // pool) and no engine worker starts — each costs a thread start
        // and a hand-off per task (synth's system time 19 → 15 ms, wall
        // the same: docs/performance-link.md; a cache hit: see
        // docs/performance-images.md). --lazy links objects as the
        // program's threads first call them: a pool of workers.
        let session = if !args.lazy {
            Session::builder().dispatcher(InPlaceDispatcher::new())
        } else {
            let threads = args.threads.unwrap_or_else(WorkerPool::available_threads);
            // Attached from the start, as the builder's workers.
            let attach = kiln_linker::runtime::tls::attach_current_thread;
            Session::builder().dispatcher(WorkerPool::with_start(threads, attach))
        }
        .build();
        // Without --lazy every input is linked (as one image) once the entry
        // point is looked up: prepare it while the engine records its symbols.
        let mut options = LinkOptions::default();
        options.prepare_early = !args.lazy;
        options.parallel = !one_thread(args.threads);
        let layer = ObjectLayer::with_options(&session, options);
        // The inputs are a program: tear down like exit(), not dlclose.
        layer.set_executable_teardown(true);
        let err = report::<kiln_engine::Error>;
        let host = session.create_dylib("<host>").map_err(err)?;
        host.add_generator(HostGenerator::new(host_symbols(args)?))
            .map_err(err)?;
        let main = session.create_dylib("main").map_err(err)?;
        main.set_link_order(&[(host.clone(), DylibLookup::ExportedOnly)])
            .map_err(err)?;
        Ok(Run {
            session,
            layer,
            main,
            host,
        })
    }
}

/// The host's symbols for `args`: kiln's runtime, the process, and the
/// `-l` libraries (loaded, searched in `-L` directories first).
fn host_symbols(args: &RunArgs) -> Result<HostSymbols, String> {
    let mut host = HostSymbols::new();
    for lib in &args.libs {
        // SAFETY: the user named the library on the command line (`-l`)
        // for the program's code to call.
        unsafe { host.load_library(lib, &args.lib_dirs) }.map_err(report)?;
    }
    Ok(host)
}

/// Debugger and profiler interfaces: the flags add to KILN_GDB/KILN_PERF;
/// every link of this run (and lazy stubs) takes them from the default.
fn set_debug_options(args: &RunArgs) -> DebugOptions {
    let mut debug = DebugOptions::from_env();
    debug.gdb |= args.gdb;
    debug.perf_map |= args.perf_map;
    debug.jitdump |= args.jitdump;
    DebugOptions::set_process_default(debug);
    debug
}

/// Adds the inputs to `main`: behind lazy entries with `--lazy` (the
/// reexports returned), else eagerly.
fn add_inputs(
    run: &Run,
    args: &RunArgs,
    program: &str,
    inputs: Vec<Input>,
    images: Vec<ImageFile>,
) -> Result<Option<LazyReexports>, String> {
    let read_start = Instant::now();
    if !args.lazy {
        add_eagerly(
            &run.session,
            &run.layer,
            &run.main,
            program,
            inputs,
            images,
            read_start,
        )?;
        return Ok(None);
    }
    if let Some(im) = images.first() {
        return Err(format!(
            "{}: image files are not supported with --lazy yet",
            im.name()
        ));
    }
    add_lazily(&run.session, &run.layer, &run.main, &run.host, inputs).map(Some)
}

/// Links everything the entry point reaches (it is Ready only when all of
/// it is emitted) and returns its address.
fn look_up_entry(run: &Run, entry: &str) -> Result<u64, String> {
    let entry = run.session.intern(entry);
    let found = run
        .session
        .lookup(
            &main_order(run),
            &LookupSet::required([entry.clone()]),
            RequiredState::Ready,
        )
        .wait()
        .map_err(report)?;
    match found.get(&entry) {
        Some(d) if d.flags.is_thread_local() => Err(format!(
            "entry point `{entry}` is a thread-local variable, not a function"
        )),
        Some(d) => Ok(d.address),
        None => Err("entry point has no address".to_string()),
    }
}

/// Lookups of the program's own symbols: everything in `main`.
fn main_order(run: &Run) -> SearchOrder {
    SearchOrder::new().with(&run.main, DylibLookup::All)
}

/// `argc`, `argv` and `envp` for the program (and its initializers, as
/// under glibc): the program's name and `args`, and this process's
/// environment itself — glibc's live `environ`, as a native `main` gets it
/// (kiln never changes its environment, so nothing is copied: copying it
/// into C strings was 69 k instructions and 141 allocations of a cache hit).
fn program_arguments(
    program: &str,
    args: &[String],
) -> Result<(libc::c_int, *mut *mut libc::c_char, *mut *mut libc::c_char), String> {
    let mut argv: Vec<CString> = Vec::with_capacity(args.len() + 1);
    for a in std::iter::once(program).chain(args.iter().map(String::as_str)) {
        argv.push(
            CString::new(a.as_bytes())
                .map_err(|_| format!("argument {a:?} contains a NUL byte"))?,
        );
    }
    Ok(kiln_linker::runtime::set_program_arguments_with_environ(
        argv,
    ))
}

/// Objects with static constructors are linked before the entry point runs.
fn run_static_constructors(run: &Run) -> Result<(), String> {
    let startup = run.layer.startup_symbols();
    if startup.is_empty() {
        return Ok(());
    }
    run.session
        .lookup(
            &main_order(run),
            &LookupSet::required(startup),
            RequiredState::Ready,
        )
        .wait()
        .map(drop)
        .map_err(report)
}

/// Calls the program's entry point.
///
/// # Safety
/// `address` is a Ready function of signature `int (int, char **, char
/// **)`; `argv` and `envp` are NUL-terminated arrays of C strings that
/// live until the process exits.
unsafe fn call_entry(
    address: u64,
    argc: libc::c_int,
    argv: *mut *mut libc::c_char,
    envp: *mut *mut libc::c_char,
) -> libc::c_int {
    // SAFETY: the caller's contract: `address` is such a function.
    let entry_fn: extern "C" fn(
        libc::c_int,
        *mut *mut libc::c_char,
        *mut *mut libc::c_char,
    ) -> libc::c_int = unsafe { std::mem::transmute(address as usize) };
    entry_fn(argc, argv, envp)
}

/// What the bundled example says after it ran.
fn narrate_run(layer: &ObjectLayer, status: i32, input_count: usize, link_time: Duration) {
    let (stats, images) = layer.stats();
    eprintln!(
        "kiln: main returned {status}; linked {input_count} objects as {images} image(s): {} symbols, {} relocations, {} bytes, in {:.2} ms",
        stats.symbols,
        stats.relocations,
        stats.bytes,
        link_time.as_secs_f64() * 1e3
    );
}

/// `--lazy`: every object behind lazy entries in `main` (bodies in a dylib
/// of their own), archives pulled and pruned as one group on first need.
fn add_lazily(
    session: &Session,
    layer: &ObjectLayer,
    main: &Dylib,
    host_dylib: &Dylib,
    inputs: Vec<Input>,
) -> Result<LazyReexports, String> {
    let err = report::<kiln_engine::Error>;
    let bodies = session.create_dylib("<bodies>").map_err(err)?;
    let jit = kiln_linker::lazy::JitLazyReexports::new(session).map_err(report)?;
    let manager = jit.manager().clone();
    // Newly linked objects run their initializers before their first call proceeds.
    let init_layer = layer.clone();
    // SAFETY: the program the user gave `kiln run` is running (the hook
    // runs on a lazily linked function's first call).
    manager.set_after_link_hook(move || unsafe { init_layer.run_initializers() });
    if let Some(im) = inputs
        .iter()
        .find(|i| kiln_linker::image_file::is_image(&i.bytes))
    {
        return Err(format!(
            "{}: image files are not supported with --lazy yet",
            im.name
        ));
    }
    // Archive members are pulled when a link first needs one of their
    // symbols, then linked lazily like the objects.
    let (archives, objects): (Vec<Input>, Vec<Input>) =
        inputs.into_iter().partition(|i| i.name.ends_with(".a"));
    let objects: Vec<(String, Vec<u8>)> = objects
        .into_iter()
        .map(|i| (i.name, i.bytes.into_vec()))
        .collect();
    layer
        .add_objects_lazily(main, &bodies, &manager, &objects)
        .map_err(report)?;
    // Non-PIE code takes functions' addresses (their entries' stubs)
    // with 32-bit absolute references: the stubs go where it reaches.
    if layer.places_below_2gib() {
        jit.place_stubs_below_2gib();
    }
    // One group, as the eager link searches them: archives that refer
    // to each other are pulled (and pruned) together.
    let archives = archives
        .into_iter()
        .map(|ar| Archive::parse(&ar.name, ar.bytes.into_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(report)?;
    if !archives.is_empty() {
        main.add_generator(ArchiveGenerator::lazy_group(
            layer, archives, &bodies, &manager,
        ))
        .map_err(err)?;
    }
    bodies
        .set_link_order_exact(&[
            (main.clone(), DylibLookup::All),
            (host_dylib.clone(), DylibLookup::ExportedOnly),
        ])
        .map_err(err)?;
    Ok(manager)
}

/// Eager: image files loaded as units of `main`, every other input linked
/// as one image (static-link semantics) once the entry point is looked up.
fn add_eagerly(
    session: &Session,
    layer: &ObjectLayer,
    main: &Dylib,
    program: &str,
    inputs: Vec<Input>,
    images: Vec<ImageFile>,
    read_start: Instant,
) -> Result<(), String> {
    // Image files are loaded, not linked: each is a unit of `main`. The
    // images they link against: given, or found next to them.
    let images = if images.is_empty() {
        images
    } else {
        image_cli::with_dependencies(images)?
    };
    for image in images {
        // SAFETY: the user asked kiln to run this file's code, as they
        // would run an executable; `ImageFile::open` checked its content
        // hash and tables, it binds against this process's host symbols,
        // and kiln does not write image files it runs (a cache entry is
        // replaced by a rename, never changed in place).
        unsafe { layer.add_image_from_file(main, None, image) }.map_err(report)?;
    }
    // One image for all inputs: static-link semantics across objects
    // (COMDAT, init priorities, TLS), archive members pulled on demand.
    // Read on as many threads as the layer links on.
    let mut options = LinkOptions::default();
    options.parallel = layer.link_options().parallel;
    let mut linker = Linker::new(options);
    let objects = !inputs.is_empty();
    for input in inputs {
        if input.name.ends_with(".a") {
            linker
                .add_archive_bytes(input.name, input.bytes.into_vec())
                .map_err(report)?;
        } else {
            linker.add_object_bytes(input.name, input.bytes);
        }
    }
    // Global names are interned while the objects are read in parallel.
    if objects {
        let read = linker
            .read_graph_naming(&|names| session.intern_all(names.iter().copied()))
            .map_err(report)?;
        layer
            .add_read_graph(main, None, program, read)
            .map_err(report)?;
    }
    // Reading counts until the unit is defined in its dylib (as
    // llvm-jitlink's "load/add object files" does).
    layer.add_read_time(read_start.elapsed());
    Ok(())
}

fn print_stats(
    layer: &ObjectLayer,
    lazy: Option<&kiln_engine::LazyReexports>,
    inputs: usize,
    total: Duration,
    link: Duration,
    ran: Option<Duration>,
) {
    let (stats, images) = layer.stats();
    print_link_stats(&StatsReport {
        inputs,
        images,
        stats,
        times: layer.phase_times(),
        lazy,
        total,
        link,
        ran,
    });
}

/// What `--stats` prints, from `kiln run` (an [`ObjectLayer`]'s links) or
/// `kiln image save` (one [`Linker`] link).
struct StatsReport<'a> {
    inputs: usize,
    images: usize,
    stats: kiln_linker::LinkStats,
    times: kiln_linker::layer::PhaseTimes,
    lazy: Option<&'a kiln_engine::LazyReexports>,
    total: Duration,
    /// From object bytes read to everything linked (entry point Ready).
    link: Duration,
    ran: Option<Duration>,
}

/// Prints `--stats` to stderr (benches/link_inputs/link_report.py parses
/// these lines).
fn print_link_stats(r: &StatsReport<'_>) {
    let StatsReport {
        inputs,
        images,
        stats,
        times: t,
        lazy,
        total,
        link,
        ran,
    } = *r;
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!("kiln: stats");
    eprintln!("  inputs                 {inputs}");
    eprintln!("  images linked          {images}");
    eprintln!("  objects linked         {}", stats.objects);
    eprintln!("  symbols                {}", stats.symbols);
    eprintln!("  relocations            {}", stats.relocations);
    eprintln!(
        "  GOT entries / PLT      {} / {}",
        stats.got_entries, stats.plt_stubs
    );
    eprintln!("  bytes mapped           {}", stats.bytes);
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        eprintln!("  threads now            {}", tasks.count());
    }
    if let Some(m) = lazy {
        eprintln!("  lazy reentries         {}", m.reentries());
        eprintln!("  lazy functions linked  {}", m.linked());
    }
    eprintln!("  read inputs            {:10.3} ms", ms(t.read));
    eprintln!(
        "  prepare (prune, GOT, allocate, resolve) {:10.3} ms",
        ms(t.prepare)
    );
    eprintln!("  look up externals      {:10.3} ms", ms(t.externals));
    eprintln!("  fixup + finalize       {:10.3} ms", ms(t.fixup_finalize));
    eprintln!("  link (entry Ready)     {:10.3} ms", ms(link));
    if let Some(r) = ran {
        eprintln!("  run                    {:10.3} ms", ms(r));
    }
    let (registered, register_time) = kiln_linker::debug::gdb_registration_time();
    if registered > 0 {
        // With a debugger attached this includes its reading each object.
        eprintln!(
            "  gdb registrations      {registered}, {:.3} ms ({:.3} ms each)",
            ms(register_time),
            ms(register_time) / registered as f64
        );
        if let Some(cpu) = kiln_linker::debug::gdb_debugger_cpu_time() {
            let median = kiln_linker::debug::gdb_debugger_cpu_median().unwrap_or_default();
            eprintln!(
                "  debugger CPU           {:.3} ms ({:.3} ms each, median {:.3} ms)",
                ms(cpu),
                ms(cpu) / registered as f64,
                ms(median)
            );
        }
    }
    let (announced, announce_time) = kiln_linker::debug::announce_time();
    if announced > 0 {
        // Symbols, debug objects, perf map and jitdump lines, registrations.
        eprintln!(
            "  debugger/profiler work {:.3} ms ({announced} announcements)",
            ms(announce_time)
        );
    }
    if stats.relocations > 0 {
        let link_phase = t.prepare + t.fixup_finalize;
        eprintln!(
            "  relocations / s        {:.1} M (prepare + fixup phases)",
            stats.relocations as f64 / link_phase.as_secs_f64().max(1e-9) / 1e6
        );
    }
    eprintln!("  total                  {:10.3} ms", ms(total));
}

/// Whether a run ends its session when the program is done, or leaves its
/// memory to the process's exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    Ended,
    LeftToExit,
}

/// The layer to finalize, and the session to end (or not), if the program
/// calls `exit` itself.
static SESSION_AT_EXIT: std::sync::OnceLock<(Session, ObjectLayer, SessionEnd)> =
    std::sync::OnceLock::new();

/// If the JIT'd program calls `exit()` instead of returning, its images'
/// finalizers and `atexit` handlers must still run before the process goes
/// (and before libc flushes stdio): finalize them and end the session
/// (as `end` says) from libc's exit list.
fn end_session_at_exit(session: &Session, layer: &ObjectLayer, end: SessionEnd) {
    extern "C" fn at_exit(status: libc::c_int, _: *mut libc::c_void) {
        if let Some((session, layer, end)) = SESSION_AT_EXIT.get() {
            kiln_linker::runtime::set_exit_status(status);
            layer.run_finalizers();
            if *end == SessionEnd::Ended {
                session.end();
            }
        }
    }
    if SESSION_AT_EXIT
        .set((session.clone(), layer.clone(), end))
        .is_ok()
    {
        // SAFETY: `at_exit` is an `on_exit` handler that only finalizes the
        // images with the exit status and ends the session (both
        // idempotent); registering it has no other precondition.
        unsafe {
            on_exit(at_exit, std::ptr::null_mut());
        }
    }
}

/// An alternate signal stack for this thread, so the fatal-signal handler
/// can report a stack overflow of the program (`SA_ONSTACK`). Set up only
/// before a program runs (Rust's runtime, which kiln skips, did it for
/// every process). Best effort: if `sigaltstack` fails, a stack overflow
/// dies silently.
fn install_alternate_signal_stack() {
    const SIZE: usize = 64 * 1024;
    /// The stack's memory: zero-filled `.bss`, so untouched pages cost
    /// nothing and no `mmap` is made for it.
    struct AltStack(std::cell::UnsafeCell<[u8; SIZE]>);
    // SAFETY: only the kernel writes the buffer (when it delivers a signal
    // on this stack); Rust code never reads or writes it.
    unsafe impl Sync for AltStack {}
    static STACK: AltStack = AltStack(std::cell::UnsafeCell::new([0; SIZE]));
    let ss = libc::stack_t {
        ss_sp: STACK.0.get().cast(),
        ss_flags: 0,
        ss_size: SIZE,
    };
    // SAFETY: `STACK` is static (lives until exit) and used for nothing
    // else; it is handed to the kernel as this thread's signal stack (the
    // thread is the process's main thread, which runs until exit; this is
    // called once per process, before the program runs).
    unsafe { libc::sigaltstack(&ss, std::ptr::null_mut()) };
}

/// If the JIT'd program dies of a fatal signal, say so, then die of that
/// signal as the program would natively: the parent's `wait` sees the
/// signal (the shell prints "Segmentation fault" and reports 128 + N), and
/// a core dump is written where the system writes them.
fn install_fatal_signal_handlers() {
    extern "C" fn on_fatal(sig: libc::c_int) {
        let msg: &[u8] = match sig {
            libc::SIGSEGV => b"kiln: the program died with SIGSEGV (segmentation fault)\n",
            libc::SIGBUS => b"kiln: the program died with SIGBUS (bus error)\n",
            libc::SIGILL => b"kiln: the program died with SIGILL (illegal instruction)\n",
            libc::SIGFPE => b"kiln: the program died with SIGFPE (arithmetic exception)\n",
            _ => b"kiln: the program died with SIGABRT (aborted)\n",
        };
        // SAFETY: write(2), sigaction(2), raise(3), sigprocmask(2) and
        // _exit(2) are async-signal-safe; `msg` is a static byte string and
        // the two structs are zero-initialized locals, then filled. The
        // signal, blocked while its handler runs, is pending once raised
        // with the default action back, and kills the process as soon as
        // it is unblocked; `_exit` only runs if it somehow did not.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(sig, &default, std::ptr::null_mut());
            libc::raise(sig);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, sig);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::_exit(128 + sig);
        }
    }
    install_alternate_signal_stack();
    for sig in [
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGABRT,
    ] {
        // SAFETY: installs a handler that only calls async-signal-safe
        // functions; the sigaction struct is zero-initialized then filled.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_fatal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cause the message does not quote is printed after it; one it
    /// quotes is not printed twice.
    #[test]
    fn report_prints_each_cause_the_message_does_not_quote_once() {
        let io = || std::io::Error::from_raw_os_error(libc::ENOENT);
        let debug = kiln_linker::LinkError::Debug {
            image: "app.o".into(),
            source: kiln_linker::debug::DebugError::Io {
                what: "writing the jitdump",
                path: "/nowhere/jit-1.dump".into(),
                source: io(),
            },
        };
        assert_eq!(
            report(debug),
            format!(
                "app.o: debugger/profiler interface: writing the jitdump /nowhere/jit-1.dump: {}",
                io()
            )
        );
        let quoted = kiln_linker::LinkError::Memory {
            detail: "mmap".into(),
            source: io(),
        };
        assert_eq!(report(quoted), format!("memory: mmap: {}", io()));
    }
}
