//! Loading an image file: one reservation in the JIT slab, segments at their
//! saved offsets, rebase, bind the imports, final protections — then the
//! same runtime duties as a fresh link ([`LinkedImage`]: `.eh_frame`
//! registration, initializers and finalizers by priority, `__dso_handle`).

use std::collections::HashMap;

use super::read::{self, Parsed};
use super::registry::{self, Registration};
use super::{BuildId, ImageDependency, ImageError};
use crate::graph::Prot;
use crate::host::SymbolResolver;
use crate::image::LinkedImage;
use crate::memory::{Allocation, Placement};
use crate::passes::{Finalized, LinkStats, TlsLayout};
use crate::runtime;

fn link_err(name: &str, source: crate::LinkError) -> ImageError {
    ImageError::Link {
        name: name.to_string(),
        source: Box::new(source),
    }
}

/// Takes memory for the image and fills it: segments at their offsets,
/// zeros elsewhere, every rebased word plus the base. Writes no text after
/// this (binding writes only the non-text words the parser checked).
pub(crate) fn map(p: &Parsed<'_>, file_name: &str) -> Result<Allocation, ImageError> {
    let mut alloc = Allocation::new(p.header.image_size, Placement::Near)
        .map_err(|e| link_err(file_name, e))?
        .ok_or_else(|| ImageError::Malformed {
            name: file_name.into(),
            detail: "no JIT memory is available for the image".into(),
        })?;
    let base = alloc.base();
    let mem = alloc.bytes_mut().ok_or_else(|| ImageError::Malformed {
        name: file_name.into(),
        detail: "fresh JIT memory is not writable".into(),
    })?;
    // Slab memory may be reused: what the file does not hold is zero.
    mem.fill(0);
    for s in &p.segments {
        // The parser checked both ranges (file and image).
        let src = &p.file[s.offset as usize..(s.offset + s.filesz) as usize];
        mem[s.vaddr as usize..(s.vaddr + s.filesz) as usize].copy_from_slice(src);
    }
    for &off in &p.rebase {
        let w = &mut mem[off as usize..off as usize + 8];
        let v = u64::from_le_bytes(w.try_into().unwrap_or_default());
        w.copy_from_slice(&v.wrapping_add(base).to_le_bytes());
    }
    Ok(alloc)
}

/// Files the mapped image in the registry (before anything can look up
/// its exports, so images bound to it find it).
pub(crate) fn register(p: &Parsed<'_>, alloc: &Allocation, file_name: &str) -> Registration {
    Registration::new(
        alloc.base(),
        p.header.image_size,
        BuildId(p.header.build_id),
        file_name,
    )
}

/// The base of every dependency of `p`, as `locate` finds them (`(base,
/// size)` of the loaded image with that build id); every missing one is
/// listed in one error, with the build ids `others` gives for its file name
/// (other builds of it that are loaded).
pub(crate) fn dependency_bases(
    p: &Parsed<'_>,
    file_name: &str,
    mut locate: impl FnMut(&ImageDependency) -> Result<Option<(u64, u64)>, ImageError>,
    others: impl Fn(&str) -> Vec<BuildId>,
) -> Result<Vec<u64>, ImageError> {
    let mut bases = Vec::with_capacity(p.deps.len());
    let mut missing = Vec::new();
    for d in &p.deps {
        match locate(d)? {
            Some((base, size)) if size == d.image_size => bases.push(base),
            Some((_, size)) => {
                return Err(ImageError::Field {
                    name: file_name.into(),
                    field: "dependency image size",
                    found: format!("{:#x} ({} {})", d.image_size, d.name, d.build_id),
                    expected: format!("{size:#x}, the loaded image's"),
                });
            }
            None => {
                let mut ids = others(super::file_name_of(&d.name));
                ids.retain(|i| *i != d.build_id);
                missing.push((d.clone(), ids));
            }
        }
    }
    if missing.is_empty() {
        Ok(bases)
    } else {
        Err(ImageError::MissingDependencies {
            name: file_name.into(),
            missing,
        })
    }
}

/// The distinct import names, in table order.
pub(crate) fn import_names<'a>(p: &Parsed<'a>) -> Vec<&'a str> {
    let mut seen = std::collections::HashSet::new();
    p.imports
        .iter()
        .filter(|i| i.dep.is_none() && i.host.is_none())
        .map(|i| i.name)
        .filter(|n| seen.insert(*n))
        .collect()
}

/// Writes each import's address (plus addend) into its word: a name's
/// address from `found`, a dependency's base from `deps` plus the offset,
/// a host table entry's address from the process's table (which must be
/// the one saved against); every missing strong import by name is listed
/// in one error.
pub(crate) fn bind(
    p: &Parsed<'_>,
    alloc: &mut Allocation,
    file_name: &str,
    found: &HashMap<&str, u64>,
    deps: &[u64],
) -> Result<(), ImageError> {
    let mut missing: Vec<String> = p
        .imports
        .iter()
        .filter(|i| i.dep.is_none() && i.host.is_none())
        .filter(|i| !i.weak && !found.contains_key(i.name))
        .map(|i| i.name.to_string())
        .collect();
    if !missing.is_empty() {
        missing.sort();
        missing.dedup();
        return Err(ImageError::MissingImports {
            name: file_name.into(),
            missing,
        });
    }
    let table = host_table(p, file_name)?;
    let mem = alloc.bytes_mut().ok_or_else(|| ImageError::Malformed {
        name: file_name.into(),
        detail: "the image's memory is no longer writable".into(),
    })?;
    for i in &p.imports {
        // The parser checked the indices against the tables.
        let target = match (i.dep, i.host) {
            (Some((index, offset)), _) => deps.get(index as usize).map(|b| b.wrapping_add(offset)),
            (None, Some(index)) => table.as_ref().and_then(|t| t.address(index)),
            (None, None) => found.get(i.name).copied(),
        };
        let v = target.map_or(0, |a| a.wrapping_add(i.addend as u64));
        mem[i.offset as usize..i.offset as usize + 8].copy_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

/// The process's host table, if the image was saved against one: it must
/// be the same table (by id).
fn host_table(
    p: &Parsed<'_>,
    file_name: &str,
) -> Result<Option<std::sync::Arc<super::HostTable>>, ImageError> {
    let Some((id, entries, name)) = p.host_table else {
        return Ok(None);
    };
    let current = super::host_table::current();
    match current {
        Some(t) if t.id() == id => Ok(Some(t)),
        other => Err(ImageError::Field {
            name: file_name.into(),
            field: "host table",
            found: format!("{id} (`{name}`, {entries} entries)"),
            expected: other.map_or_else(
                || "a host table registered in this process (none is)".to_string(),
                |t| {
                    format!(
                        "this process's {} (`{}`, {} entries)",
                        t.id(),
                        t.name(),
                        t.len()
                    )
                },
            ),
        }),
    }
}

/// Final protections and the runtime: the loaded image, initializers not
/// yet run.
pub(crate) fn finish(
    p: &Parsed<'_>,
    mut alloc: Allocation,
    file_name: &str,
) -> Result<LinkedImage, ImageError> {
    let segments: Vec<(u64, u64, Prot)> = p
        .segments
        .iter()
        .map(|s| (s.vaddr, s.memsz, s.prot))
        .collect();
    alloc
        .finalize(&segments)
        .map_err(|e| link_err(file_name, e))?;
    let base = alloc.base();
    let symbols = p
        .exports
        .iter()
        .map(|e| (Box::from(e.name), base + e.offset))
        .collect();
    let init_fini = p
        .init_fini
        .iter()
        .map(|(section, offs)| {
            let entries = offs
                .iter()
                .map(|&o| {
                    if o == u64::MAX {
                        0
                    } else {
                        (base + o) as usize
                    }
                })
                .collect();
            (Box::from(*section), entries)
        })
        .collect();
    let (eh, eh_len) = p.header.eh_frame;
    let eh_frame = (eh_len > 0).then_some((base + eh, eh_len));
    // Debuggers and profilers see the image as they see a link (one GDB
    // object per load), as the process's debug options ask.
    let debug = crate::debug::register_loaded(
        &crate::debug::LoadedImage {
            name: p.name,
            segments: segments
                .iter()
                .map(|&(v, m, pr)| (base + v, m, pr))
                .collect(),
            eh_frame,
            exports: (p.exports.iter())
                .map(|e| {
                    (
                        e.name,
                        base + e.offset,
                        e.flags & super::format::EXPORT_CALLABLE != 0,
                    )
                })
                .collect(),
        },
        &crate::debug::DebugOptions::process_default(),
    )
    .map_err(|source| {
        let image = p.name.to_string();
        link_err(file_name, crate::LinkError::Debug { image, source })
    })?;
    let finalized = Finalized {
        symbols,
        eh_frame,
        init_fini,
        tls: TlsLayout::default(),
        tls_module: None,
        stats: LinkStats {
            bytes: alloc.len(),
            ..LinkStats::default()
        },
        graph: None,
        imaging: None,
        debug,
        // The image is named by its base (see below).
        dso_handle: base,
        alloc,
    };
    // The image is named by its base; its `__dso_handle` slot, like any
    // address inside it, names it too (the range `LinkedImage::start` adds).
    let dso = runtime::DsoHandle::new_at(p.name.to_string(), base as usize).map_err(|e| {
        link_err(
            file_name,
            crate::LinkError::Runtime {
                detail: e.to_string(),
            },
        )
    })?;
    LinkedImage::start(p.name.to_string(), finalized, dso, false)
        .map_err(|e| link_err(file_name, e))
}

/// Loads the image file `bytes` (called `file_name` in errors) into this
/// process: checks it (header fields, CPU features, size, content hash,
/// then every table), finds the images it links against in the
/// [registry](super::registry) by build id (all missing ones listed in one
/// error, naming other builds of them that are loaded), maps it into the
/// JIT slab at one reservation, rebases it, binds its imports by name
/// through `resolver` (all missing ones listed in one error) and into its
/// dependencies by offset (and from the [host table](super::HostTable) by
/// index), and applies its final protections. The image joins the
/// registry; it must be dropped before its dependencies. Initializers have
/// not run: call [`LinkedImage::run_initializers`]. Dropping the image runs
/// its finalizers (if initialized), deregisters its unwind info and unmaps
/// it.
///
/// Every refusal names the field and both values (or what is inconsistent).
///
/// # Safety
///
/// An image whose content hash checks out is trusted: its code is the code
/// that will run (initializers when asked, functions when called), and
/// loading registers its `.eh_frame` with the unwinder, which reads it.
/// Like `dlopen` (libloading's `Library::new`), the caller promises that the
/// file comes from a trusted source (written by kiln's saver, not by
/// someone who could also recompute its hash) and that the host symbols
/// `resolver` gives are the ones the image was saved against, with the same
/// types. The hash protects against damage, not against an attacker. The
/// images it links against must stay loaded until it is dropped (the
/// loader binds addresses into them and does not keep them alive).
pub unsafe fn load(
    file_name: &str,
    bytes: &[u8],
    resolver: &dyn SymbolResolver,
) -> Result<LinkedImage, ImageError> {
    let p = read::parse(file_name, bytes)?;
    let deps = dependency_bases(
        &p,
        file_name,
        |d| Ok(registry::find(&d.build_id).map(|i| (i.base, i.size))),
        registry::named,
    )?;
    let mut alloc = map(&p, file_name)?;
    let registration = register(&p, &alloc, file_name);
    let names = import_names(&p);
    let answers = resolver.resolve(&names);
    let found: HashMap<&str, u64> = names
        .iter()
        .zip(answers)
        .filter_map(|(n, a)| Some((*n, a?)))
        .collect();
    bind(&p, &mut alloc, file_name, &found, &deps)?;
    let image = finish(&p, alloc, file_name)?;
    image.register_once(|| registration);
    Ok(image)
}
