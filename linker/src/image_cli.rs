//! `kiln image save` and `kiln image info`.

use std::io::Write as _;

use kiln_linker::graph::InputBytes;
use kiln_linker::image_file::{self, BuildId, CpuFeatures, ImageDependency, ImageFile, ImageInfo};
use kiln_linker::memory::FileBytes;
use kiln_linker::{HostSymbols, LinkOptions, Linker, SymbolResolver as _};

use super::{InfoArgs, SaveArgs, input_index, report};

/// An input of `kiln image save`: an object's bytes (mapped if large, as
/// `kiln run` maps them), shared by the link and the build id's hash, or an
/// archive's.
type SaveInput = (String, InputBytes);

/// Opens every input: objects and archives mapped when large (no copy into
/// fresh heap pages: on the 200-object aarch64 synth input most of the
/// process's page faults were `read`'s), small ones read. Many inputs are
/// opened on rayon's threads, as `kiln run` opens them
/// ([`super::OPEN_IN_PARALLEL_FROM`]); the first that fails in input order
/// is reported.
fn open_save_inputs(args: &SaveArgs) -> Result<Vec<SaveInput>, String> {
    let open = |path: &std::path::PathBuf| {
        let bytes = read_save_input(path)?;
        Ok((path.display().to_string(), InputBytes::new(bytes)))
    };
    if args.inputs.len() < super::OPEN_IN_PARALLEL_FROM || super::one_thread(args.threads) {
        return args.inputs.iter().map(open).collect();
    }
    use rayon::prelude::*;
    let opened: Vec<Result<SaveInput, String>> = args.inputs.par_iter().map(open).collect();
    opened.into_iter().collect()
}

/// One input of `kiln image save`, in as few system calls as it takes
/// (open, `fstat`, one `read` or a mapping, close: half of what a probe of
/// its first bytes then a read of the rest took, 9 a file). An image
/// given as an input is read like an object, and refused by the parser
/// naming it.
fn read_save_input(path: &std::path::Path) -> Result<FileBytes, String> {
    use std::io::Read as _;
    let err = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
    let mut file = std::fs::File::open(path).map_err(err)?;
    let len = file.metadata().map_err(err)?.len();
    if len >= super::MAP_INPUTS_FROM {
        // SAFETY: an input named on the command line: like ld, mold and
        // lld, kiln assumes nothing truncates or rewrites it while the
        // process links it (see `FileBytes::map`).
        let mapped = unsafe { FileBytes::map(&file) }.map_err(err)?;
        // The process links once: the kernel unmaps the file at exit.
        return Ok(mapped.keep_mapped());
    }
    let mut bytes = vec![0; len as usize];
    file.read_exact(&mut bytes).map_err(err)?;
    Ok(bytes.into())
}

/// Links the inputs in imaging mode and writes the image file with the
/// inputs' build id (BLAKE3 over all of them, hashed once the link is
/// done, on every thread: [`BuildId::of_inputs`]).
pub(crate) fn save(args: &SaveArgs) -> Result<i32, String> {
    let started = std::time::Instant::now();
    let inputs = open_save_inputs(args)?;
    let mut options = LinkOptions::default();
    options.imaging = true;
    // Saving reads the exports from the imaging record: no name → address
    // map of every global (18 M instructions on the aarch64 synth input).
    options.symbol_table = false;
    // The process exits after saving: the linked graph is left to the exit.
    options.leave_graph_to_exit = true;
    options.parallel = !super::one_thread(args.threads);
    if let Some(list) = &args.cpu_features {
        options.cpu_features =
            CpuFeatures::parse(list).map_err(|e| format!("--cpu-features: {e}"))?;
    }
    link_and_save(args, options, &inputs, started)
}

/// [`save`]'s link and write.
fn link_and_save(
    args: &SaveArgs,
    options: LinkOptions,
    inputs: &[SaveInput],
    started: std::time::Instant,
) -> Result<i32, String> {
    let id_options = options.clone();
    let mut linker = Linker::new(options);
    for (name, bytes) in inputs {
        if name.ends_with(".a") {
            linker
                .add_archive_bytes(name.clone(), bytes.to_vec())
                .map_err(report)?;
        } else {
            linker.add_object_shared(name.clone(), bytes.clone());
        }
    }
    let mut host = HostSymbols::new();
    for lib in &args.libs {
        // SAFETY: the user named the library on the command line (`-l`)
        // for the image's code to call.
        unsafe { host.load_library(lib, &args.lib_dirs) }.map_err(report)?;
    }
    // Undefined symbols may be left for the loader: only their names are
    // saved (imaging mode reaches every host symbol through a slot).
    let allow = args.allow_undefined;
    let against = Against::load(&args.against, &host, allow)?;
    let resolver = |names: &[&str]| -> Vec<Option<u64>> { against.resolve(names, &host, allow) };
    let link_start = std::time::Instant::now();
    let image = linker.link(&resolver).map_err(report)?;
    let linked_at = std::time::Instant::now();
    // The build id combines the inputs' with those of the images the
    // references went into.
    let image_stats = image.stats();
    // Hashed after the link, on every thread: a nice-19 thread hashing
    // beside the link made no process faster (docs/images.md).
    let id = BuildId::of_inputs(
        &id_options,
        inputs.iter().map(|(n, b)| (n.as_str(), &b[..])),
    );
    // Written from the image's memory to the file, without the whole file
    // in memory first.
    write_replacing(&args.output, 0o644, false, |f| {
        image.save_image_to(&id, f).map_err(report)
    })?;
    // The process ends after the write: the image's memory, its imaging
    // record and its registrations go with it, unfreed (freeing them took
    // 8.5 M instructions on the aarch64 synth input). None of its code ran
    // (initializers off, nothing looked up), so it has no finalizer to run.
    std::mem::forget(image);
    drop(against);
    if args.stats {
        print_save_stats(
            &image_stats,
            args.inputs.len(),
            started,
            link_start,
            linked_at,
        );
    }
    Ok(0)
}

/// `--stats` for `kiln image save`, in `kiln run --stats`'s lines: "read
/// inputs" is reading the files and parsing them into the graph, "link" the
/// rest of [`Linker::link`] (the image is linked once everything is fixed
/// up and finalized); saving and writing the file count in "total" only.
fn print_save_stats(
    stats: &kiln_linker::LinkStats,
    inputs: usize,
    started: std::time::Instant,
    link_start: std::time::Instant,
    linked_at: std::time::Instant,
) {
    let t = &stats.timings;
    let parse = t.parse;
    super::print_link_stats(&super::StatsReport {
        inputs,
        images: 1,
        stats: *stats,
        times: kiln_linker::layer::PhaseTimes {
            read: (link_start - started) + parse,
            prepare: t.prune + t.allocate,
            externals: t.lookup,
            fixup_finalize: t.fixup + t.finalize,
        },
        lazy: None,
        total: started.elapsed(),
        link: (linked_at - link_start).saturating_sub(parse),
        ran: None,
    });
}

/// The images `--against` names, loaded (their code never runs) so that
/// the link binds into them and imaging mode records those references as
/// (build id, offset): each image's exported names, in the order given.
/// Images of another ISA (an aarch64 library for an aarch64 program) get
/// an address range here instead, never mapped.
struct Against {
    images: Vec<(kiln_linker::LinkedImage, std::collections::HashSet<String>)>,
    foreign: Vec<image_file::ForeignImage>,
}

impl Drop for Against {
    fn drop(&mut self) {
        // Dependents before what they link against.
        while let Some(image) = self.images.pop() {
            drop(image);
        }
    }
}

impl Against {
    /// Loads the images at `paths`, and the images they link against
    /// found next to them (first, as `kiln run` does).
    fn load(paths: &[std::path::PathBuf], host: &HostSymbols, allow: bool) -> Result<Self, String> {
        let mut files = Vec::with_capacity(paths.len());
        let mut foreign = Vec::new();
        for path in paths {
            match ImageFile::open(path) {
                Ok(file) => files.push(file),
                // Not loadable here: an image of another ISA, or an error.
                Err(e) => foreign.push(Self::foreign(path, e)?),
            }
        }
        let mut me = Against {
            images: Vec::new(),
            foreign,
        };
        for file in with_dependencies(files)? {
            let (name, bytes) = (file.name(), file.bytes());
            let exported = image_file::exported_names(name, bytes).map_err(report)?;
            // Its imports bind like the new image's: earlier `--against`
            // images, then the host.
            let resolver = |names: &[&str]| me.resolve(names, host, allow);
            // SAFETY: the image is mapped and bound so that addresses into
            // it can be recorded; none of its code runs (no initializer is
            // run and nothing is called) and it is dropped before exit.
            let image = unsafe { image_file::load(name, bytes, &resolver) }.map_err(report)?;
            me.images.push((image, exported.into_iter().collect()));
        }
        Ok(me)
    }

    /// The image of another ISA at `path`, reserved; for an image of this
    /// ISA, `opening` (why it could not be opened).
    fn foreign(
        path: &std::path::Path,
        opening: image_file::ImageError,
    ) -> Result<image_file::ForeignImage, String> {
        let Ok(bytes) = std::fs::read(path) else {
            return Err(report(opening));
        };
        match image_file::ForeignImage::reserve(&path.display().to_string(), &bytes) {
            Ok(image) => Ok(image),
            Err(image_file::ImageError::Field {
                field: "machine", ..
            }) => Err(report(opening)),
            Err(e) => Err(report(e)),
        }
    }

    fn resolve(&self, names: &[&str], host: &HostSymbols, allow: bool) -> Vec<Option<u64>> {
        // Own definitions first, the host's after (as a dynamic linker
        // searches the libraries named before libc).
        let mut found = host.resolve(names);
        for (slot, name) in found.iter_mut().zip(names) {
            let mine = self
                .images
                .iter()
                .find(|(_, exported)| exported.contains(*name))
                .and_then(|(image, _)| image.symbol(name))
                .or_else(|| self.foreign.iter().find_map(|f| f.symbol(name)));
            if mine.is_some() {
                *slot = mine;
            } else if allow && slot.is_none() {
                *slot = Some(0);
            }
        }
        found
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it, so a
/// reader never sees half a file; the data reaches the disk before the
/// rename (`fsync`).
pub(crate) fn write_atomically(
    path: &std::path::Path,
    bytes: &[u8],
    mode: u32,
) -> Result<(), String> {
    write_replacing(path, mode, true, |f| {
        f.write_all(bytes)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    })
}

/// [`write_atomically`] of what `write` writes to the file, with the
/// `fsync` only if `sync`: `kiln image save`'s output is a linker's output,
/// which ld, lld and mold do not sync either (5 ms of its wall on the 8 MB
/// aarch64 synth image).
fn write_replacing(
    path: &std::path::Path,
    mode: u32,
    sync: bool,
    write: impl FnOnce(&mut std::fs::File) -> Result<(), String>,
) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let file_name = path
        .file_name()
        .ok_or_else(|| format!("{}: not a file name", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let err = |e: std::io::Error| format!("cannot write {}: {e}", path.display());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    if let Err(e) = write(&mut f) {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if sync {
        f.sync_all().map_err(err)?;
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// Checks an image file and describes it.
pub(crate) fn info(args: &InfoArgs) -> Result<i32, String> {
    let name = args.image.display().to_string();
    let bytes = std::fs::read(&args.image).map_err(|e| format!("cannot read {name}: {e}"))?;
    let info = image_file::inspect(&name, &bytes).map_err(report)?;
    if args.json {
        println!("{}", json(&info));
    } else {
        print_text(&info);
    }
    Ok(0)
}

fn print_text(i: &ImageInfo) {
    println!("name            {}", i.name);
    println!("build id        {}", i.build_id);
    println!("format version  {}", i.format_version);
    println!("target          {}", i.target);
    println!("CPU features    {}", i.cpu_features);
    println!("dependencies    {}", i.dependencies.len());
    for d in &i.dependencies {
        println!("  {}  {}", d.build_id, d.name);
    }
    println!("exports         {}", i.exports);
    println!(
        "imports         {} ({} slots, {} into dependencies, {} from the host table, {} PC-relative fields)",
        i.imports,
        i.import_slots,
        i.dependency_imports,
        i.host_table_imports,
        i.pc_relative_imports
    );
    if let Some((id, entries, name)) = &i.host_table {
        println!("host table      {id}  {name} ({entries} entries)");
    }
    if let Some(t) = &i.thread_locals {
        println!(
            "thread-locals   {} bytes (align {}, {} initialized), {} slots; static TLS: {}",
            t.size,
            t.align,
            t.initialized,
            t.slots,
            static_tls_text(t)
        );
    }
    println!("rebases         {}", i.rebases);
    println!("initializers    {}", i.initializers);
    println!("image size      {}", i.image_size);
    println!("base alignment  {:#x}", i.base_align);
    println!("file size       {}", i.file_size);
    println!("sections        offset      memory size  file size  prot");
    for (name, off, mem, file, prot) in &i.sections {
        println!("  {name:<12}  {off:#010x}  {mem:>11}  {file:>9}  {prot}");
    }
}

/// What an image needs of static TLS, for `kiln image info`.
fn static_tls_text(t: &kiln_linker::image_file::ImageTls) -> String {
    match t.static_range {
        Some((area, area_size, off)) => format!(
            "{}, range {off:#x}..{:#x} of the {area_size:#x}-byte area at tp{}{:#x}",
            t.static_use,
            off + t.size,
            // Below the thread pointer on x86-64, above it on aarch64.
            if area < 0 { '-' } else { '+' },
            area.unsigned_abs()
        ),
        None => t.static_use.to_string(),
    }
}

/// A JSON string literal.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(i: &ImageInfo) -> String {
    let host_table = i.host_table.as_ref().map_or_else(
        || "null".to_string(),
        |(id, entries, name)| {
            format!(
                "{{\"id\":{},\"name\":{},\"entries\":{entries}}}",
                quote(&id.to_string()),
                quote(name)
            )
        },
    );
    let deps: Vec<String> = i
        .dependencies
        .iter()
        .map(|d| {
            format!(
                "{{\"build_id\":{},\"name\":{},\"image_size\":{}}}",
                quote(&d.build_id.to_string()),
                quote(&d.name),
                d.image_size
            )
        })
        .collect();
    let sections: Vec<String> = i
        .sections
        .iter()
        .map(|(n, off, mem, file, prot)| {
            format!(
                "{{\"name\":{},\"offset\":{off},\"memory_size\":{mem},\"file_size\":{file},\"prot\":{}}}",
                quote(n),
                quote(prot)
            )
        })
        .collect();
    let tls = i.thread_locals.as_ref().map_or_else(
        || "null".to_string(),
        |t| {
            let range = t.static_range.map_or_else(
                || "null".to_string(),
                |(area, size, off)| {
                    format!("{{\"area_tp_offset\":{area},\"area_size\":{size},\"offset\":{off}}}")
                },
            );
            format!(
                "{{\"size\":{},\"align\":{},\"initialized\":{},\"slots\":{},\"static_use\":{},\"static_range\":{range}}}",
                t.size,
                t.align,
                t.initialized,
                t.slots,
                quote(t.static_use)
            )
        },
    );
    format!(
        "{{\"name\":{},\"build_id\":{},\"format_version\":{},\"target\":{},\"cpu_features\":{},\"dependencies\":[{}],\"exports\":{},\"imports\":{},\"import_slots\":{},\"dependency_imports\":{},\"host_table\":{},\"host_table_imports\":{},\"pc_relative_imports\":{},\"rebases\":{},\"initializers\":{},\"image_size\":{},\"base_align\":{},\"file_size\":{},\"sections\":[{}],\"thread_locals\":{}}}",
        quote(&i.name),
        quote(&i.build_id.to_string()),
        i.format_version,
        quote(i.target),
        quote(&i.cpu_features),
        deps.join(","),
        i.exports,
        i.imports,
        i.import_slots,
        i.dependency_imports,
        host_table,
        i.host_table_imports,
        i.pc_relative_imports,
        i.rebases,
        i.initializers,
        i.image_size,
        i.base_align,
        i.file_size,
        sections.join(","),
        tls
    )
}

/// Refuses `path` unless it belongs to this user and nobody else may write
/// it (the check ssh makes of its keys): loading a cache entry runs its code.
fn check_private(path: &std::path::Path, what: &str) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("cache {what} {}: {e}", path.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err(format!(
            "refusing cache {what} {}: it belongs to uid {}, not to you (uid {me})",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "refusing cache {what} {}: mode {:o} lets others write it (chmod go-w)",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    if what == "entry" && !meta.is_file() {
        return Err(format!(
            "refusing cache entry {}: not a regular file",
            path.display()
        ));
    }
    Ok(())
}

/// `kiln run --cache DIR`: the image for `inputs`, from DIR (a hit) or
/// linked in imaging mode and stored there (a miss). A damaged or stale
/// entry is reported in one line on stderr, relinked and replaced. Inputs
/// that cannot be imaged are returned as they are (one line says why).
/// A miss links on rayon's threads if `parallel`.
pub(crate) fn cached(
    dir: &std::path::Path,
    paths: &[std::path::PathBuf],
    libs: &[String],
    lib_dirs: &[std::path::PathBuf],
    stats: bool,
    parallel: bool,
) -> Result<Cached, String> {
    private_dir(dir)?;
    // Inputs unchanged since they were hashed (same identities): the index
    // names the entry without mapping and hashing them. The entry is then
    // opened and checked as on any hit; a damaged one falls through.
    if let Some(image) =
        input_index::lookup(dir, paths).and_then(|found| indexed_entry(dir, paths, found, stats))
    {
        return Ok(Cached::Image(image));
    }
    let mut options = LinkOptions::default();
    options.imaging = true;
    options.parallel = parallel;
    // The key is the inputs' bytes, hashed from read-only mappings: a hit
    // copies none of them (reading ~0.6 MB of Lua's objects into fresh
    // memory was ~15% of a hit); a miss copies them for the linker.
    let mapped = paths
        .iter()
        .map(|p| Ok((p.display().to_string(), MappedInput::open(p)?)))
        .collect::<Result<Vec<_>, String>>()?;
    let views: Vec<(String, &[u8])> = mapped.iter().map(|(n, m)| (n.clone(), m.bytes())).collect();
    let owned = |views: &[(String, &[u8])]| -> Vec<(String, Vec<u8>)> {
        views.iter().map(|(n, b)| (n.clone(), b.to_vec())).collect()
    };
    // Image files among the inputs are loaded as they are; the objects are
    // linked against them, and the key covers their build ids.
    let mut image_ids = Vec::new();
    for (name, bytes) in views.iter().filter(|(_, b)| image_file::is_image(b)) {
        image_ids.push(image_file::dependencies(name, bytes).map_err(report)?.0);
    }
    if !image_ids.is_empty() && image_ids.len() == views.len() {
        if stats {
            eprintln!("kiln: nothing to cache (every input is an image)");
        }
        return Ok(Cached::Inputs(owned(&views)));
    }
    if let Some(why) = weak_defined_by_an_image(&views)? {
        eprintln!("kiln: not cached (a weak definition would not be overridden): {why}");
        return Ok(Cached::Inputs(owned(&views)));
    }
    let id = BuildId::of_inputs(
        &options,
        views
            .iter()
            .filter(|(_, b)| !image_file::is_image(b))
            .map(|(n, b)| (n.as_str(), *b)),
    )
    .with_dependencies(&image_ids);
    let entry = dir.join(format!("{id}.kimg"));
    let name = entry.display().to_string();
    // Recorded only for objects and archives: a run with images among its
    // inputs also needs their bytes (and loads them itself).
    let stamps: Vec<input_index::Stamp> = mapped.iter().map(|(_, m)| m.stamp).collect();
    let record = |entry_stamp| {
        if image_ids.is_empty() {
            input_index::record(dir, paths, &stamps, &id.to_string(), entry_stamp);
        }
    };
    if entry.exists() {
        check_private(&entry, "entry")?;
        // Mapped, not read, and checked (content hash included) once: the
        // layer loads it from this mapping without hashing it again.
        // A stale entry, or one whose static TLS range this process
        // cannot give (local-exec code), is a miss that relinks.
        match ImageFile::open(&entry).and_then(|i| i.check_process().map(|()| i)) {
            Ok(image) => {
                if stats {
                    eprintln!("kiln: cache hit {name}");
                }
                record(image.stamp());
                return with_input_images(&views, image);
            }
            Err(e) => eprintln!(
                "kiln: cache entry is damaged or stale, relinking: {}",
                report(e)
            ),
        }
    }
    let inputs = owned(&views);
    drop(views);
    drop(mapped);
    let Some(bytes) = link_entry(options, &inputs, libs, lib_dirs, &id)? else {
        return Ok(Cached::Inputs(inputs));
    };
    write_atomically(&entry, &bytes, 0o600)?;
    // The entry is fresh: its own identity is recorded by a later hit.
    record(None);
    if stats {
        eprintln!("kiln: cache miss, stored {name}");
    }
    // Run from the entry as a hit would (mapped, checked once).
    drop(bytes);
    let image = ImageFile::open(&entry).map_err(report)?;
    with_input_images(&inputs, image)
}

/// `kiln run --cache DIR` on a miss: `inputs`' objects linked in imaging
/// mode (against the image files among them, loaded without running) and
/// saved as the entry's bytes with build id `id`; `None` (one line said
/// why) when they cannot be saved as an image.
fn link_entry(
    options: LinkOptions,
    inputs: &[(String, Vec<u8>)],
    libs: &[String],
    lib_dirs: &[std::path::PathBuf],
    id: &BuildId,
) -> Result<Option<Vec<u8>>, String> {
    let objects = || inputs.iter().filter(|(_, b)| !image_file::is_image(b));
    let mut linker = Linker::new(options);
    for (n, b) in objects() {
        if n.ends_with(".a") {
            linker
                .add_archive_bytes(n.clone(), b.clone())
                .map_err(report)?;
        } else {
            linker.add_object_bytes(n.clone(), b.clone());
        }
    }
    let mut host = HostSymbols::new();
    for lib in libs {
        // SAFETY: the user named the library on the command line (`-l`)
        // for the program's code to call.
        unsafe { host.load_library(lib, lib_dirs) }.map_err(report)?;
    }
    // The images, loaded (never run) so the link binds into them by build
    // id; what they import from the objects (a cycle) is left unbound.
    let paths: Vec<std::path::PathBuf> = inputs
        .iter()
        .filter(|(_, b)| image_file::is_image(b))
        .map(|(n, _)| n.into())
        .collect();
    let allow = !paths.is_empty();
    let against = Against::load(&paths, &host, allow)?;
    let resolver = |names: &[&str]| -> Vec<Option<u64>> { against.resolve(names, &host, allow) };
    let image = match linker.link(&resolver) {
        Ok(image) => image,
        Err(e @ kiln_linker::LinkError::NotImageable { .. }) => {
            eprintln!(
                "kiln: not cached (the inputs cannot be saved as an image): {}",
                report(e)
            );
            return Ok(None);
        }
        Err(e) => return Err(report(e)),
    };
    // SAFETY: none of the image's code ran (initializers off, nothing
    // looked up); its static TLS range is given back for the entry's load.
    let bytes = match unsafe { image.save_image_and_release(id) } {
        Ok(bytes) => Some(bytes),
        // A PC-relative reference into one of the images.
        Err(image_file::ImageError::Link { source, .. })
            if matches!(*source, kiln_linker::LinkError::NotImageable { .. }) =>
        {
            eprintln!(
                "kiln: not cached (the inputs cannot be saved as an image): {}",
                report(source.into_inner())
            );
            return Ok(None);
        }
        Err(e) => return Err(report(e)),
    };
    drop(against);
    Ok(bytes)
}

/// The cache directory: created `0700` if missing, and refused unless
/// private to this user (see [`check_private`]).
fn private_dir(dir: &std::path::Path) -> Result<(), String> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot chmod {}: {e}", dir.display()))?;
    }
    check_private(dir, "directory")
}

/// The entry the input index names, opened and checked (its content hash
/// skipped if the index holds its stamp and it is unchanged); `None` if it
/// is missing, not private, or fails a check (the caller then computes the
/// key). An entry checked here for the first time has its stamp recorded.
fn indexed_entry(
    dir: &std::path::Path,
    paths: &[std::path::PathBuf],
    found: input_index::Recorded,
    stats: bool,
) -> Option<ImageFile> {
    let entry = dir.join(format!("{}.kimg", found.id));
    check_private(&entry, "entry").ok()?;
    let image = match &found.entry {
        Some(stamp) => ImageFile::open_stamped(&entry, stamp),
        None => ImageFile::open(&entry),
    }
    .and_then(|i| i.check_process().map(|()| i))
    .ok()?;
    if stats {
        eprintln!("kiln: cache hit {} (inputs unchanged)", entry.display());
    }
    let stamp = image.stamp();
    if stamp.is_some() && stamp != found.entry {
        input_index::record(dir, paths, &found.stamps, &found.id, stamp);
    }
    Some(image)
}

/// A weak definition of an object (or archive member) among `inputs` that
/// an image among them also defines. Linked without the engine, the
/// object's own definition would bind inside the cache entry; run
/// uncached, the image's wins (as in a static link when it is strong).
fn weak_defined_by_an_image(inputs: &[(String, &[u8])]) -> Result<Option<String>, String> {
    use object::{Object as _, ObjectSymbol as _};
    let mut exported = std::collections::HashSet::new();
    for (name, bytes) in inputs.iter().filter(|(_, b)| image_file::is_image(b)) {
        exported.extend(image_file::exported_names(name, bytes).map_err(report)?);
    }
    if exported.is_empty() {
        return Ok(None);
    }
    let weak_in = |object: &str, bytes: &[u8]| -> Option<String> {
        let file = object::File::parse(bytes).ok()?;
        let name = file
            .symbols()
            .filter(|s| s.is_weak() && s.is_definition())
            .filter_map(|s| s.name().ok())
            .find(|n| exported.contains(*n))?;
        Some(format!(
            "{object}'s weak `{name}` is also defined by an image among the inputs"
        ))
    };
    for (name, bytes) in inputs.iter().filter(|(_, b)| !image_file::is_image(b)) {
        let found = match object::read::archive::ArchiveFile::parse(*bytes) {
            Ok(archive) => archive.members().filter_map(Result::ok).find_map(|m| {
                let member = String::from_utf8_lossy(m.name());
                weak_in(&format!("{name}({member})"), m.data(*bytes).ok()?)
            }),
            Err(_) => weak_in(name, bytes),
        };
        if found.is_some() {
            return Ok(found);
        }
    }
    Ok(None)
}

/// What runs for a cache entry: the entry alone, or after the image files
/// among the inputs (opened by their path: mapped and checked).
fn with_input_images<B: AsRef<[u8]>>(
    inputs: &[(String, B)],
    entry: ImageFile,
) -> Result<Cached, String> {
    let mut images = Vec::new();
    for (name, _) in inputs
        .iter()
        .filter(|(_, b)| image_file::is_image(b.as_ref()))
    {
        images.push(ImageFile::open(std::path::Path::new(name)).map_err(report)?);
    }
    if images.is_empty() {
        return Ok(Cached::Image(entry));
    }
    images.push(entry);
    Ok(Cached::Images(images))
}

/// An input file mapped read-only ([`FileBytes::map`]), unmapped on drop,
/// with its identity taken before it was mapped. As for a linker that maps
/// its inputs, a file truncated by someone else while mapped makes reads
/// past its new end fault (`SIGBUS`); the mapping lives only while the
/// cache key is computed (and copied on a miss).
struct MappedInput {
    bytes: FileBytes,
    /// The file's identity, taken before it was mapped.
    stamp: input_index::Stamp,
}

impl MappedInput {
    fn open(path: &std::path::Path) -> Result<MappedInput, String> {
        let err = |e: std::io::Error| format!("cannot read {}: {e}", path.display());
        let now = input_index::now();
        let file = std::fs::File::open(path).map_err(err)?;
        let stamp = input_index::Stamp::new(&file.metadata().map_err(err)?, now);
        // SAFETY: `kiln run --cache` assumes, as linkers do, that its inputs
        // are not written or truncated while it runs (see the type's note);
        // the mapping is dropped before the program runs.
        let bytes = unsafe { FileBytes::map(&file) }.map_err(err)?;
        Ok(MappedInput { bytes, stamp })
    }

    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// What `kiln run --cache` runs.
pub(crate) enum Cached {
    /// The cache entry, opened (mapped and checked).
    Image(ImageFile),
    /// The inputs as given: they cannot be imaged.
    Inputs(Vec<(String, Vec<u8>)>),
    /// The image files among the inputs, then the entry linked against
    /// them (all opened).
    Images(Vec<ImageFile>),
}

/// The image files of `kiln run` with the images they link against that
/// are not among them, found by file name next to the image that needs
/// them (recursively), placed first so their initializers run first. A
/// dependency that cannot be found is left to the loader, which names
/// every missing one.
pub(crate) fn with_dependencies(images: Vec<ImageFile>) -> Result<Vec<ImageFile>, String> {
    let mut have = std::collections::HashSet::new();
    let mut paths = std::collections::HashSet::new();
    let mut found: Vec<ImageFile> = Vec::new();
    let mut queue: Vec<(String, Vec<ImageDependency>)> = Vec::new();
    for image in &images {
        let (id, deps) = image_file::dependencies(image.name(), image.bytes()).map_err(report)?;
        have.insert(id);
        paths.insert(std::path::PathBuf::from(image.name()));
        queue.push((image.name().to_string(), deps));
    }
    while let Some((name, deps)) = queue.pop() {
        let dir = std::path::Path::new(&name)
            .parent()
            .unwrap_or(std::path::Path::new("."));
        for d in &deps {
            if have.contains(&d.build_id) {
                continue;
            }
            let file = kiln_linker::image_file::file_name(&d.name);
            let candidate = dir.join(file);
            if paths.contains(&candidate) || !candidate.is_file() {
                continue;
            }
            let image = ImageFile::open(&candidate).map_err(report)?;
            let (id, more) =
                image_file::dependencies(image.name(), image.bytes()).map_err(report)?;
            have.insert(id);
            paths.insert(candidate);
            queue.push((image.name().to_string(), more));
            found.push(image);
        }
    }
    found.reverse();
    found.extend(images);
    Ok(found)
}
