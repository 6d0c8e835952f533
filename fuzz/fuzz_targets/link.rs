//! Fuzz target: read and link objects and archives into memory, as
//! `kiln run --noexec` does, and never run any of it.
//!
//! The input is one or more files joined by [`SEPARATOR`]; a file that
//! starts with `!<arch>\n` is a static archive, anything else an object.
//! Every input must either link or fail with a [`LinkError`]; a panic, an
//! abort, a hang or a memory error is a bug.
//!
//! Half of the mutations keep the ELF structure and change the bytes of one
//! section of one file in place (it may shrink, its offset stays): byte-level
//! mutation of whole files mostly breaks the headers, so the reader would
//! rarely get to the contents of `.eh_frame`, relocations or symbols.
//!
//! Inputs of several files are also added to a JIT (the engine's object
//! layer), each file on its own, and every name they define looked up at
//! Ready in one lookup (the objects it starts link as one batch) and, in a
//! second JIT, one name at a time (each object alone): each name must be
//! Ready, or not, alike both ways.
//!
//! Nothing of the image runs: initializers are off
//! ([`Linker::run_initializers`]`(false)`), so dropping the image skips its
//! finalizers (an image whose initializers never ran does not finalize) and
//! finds no `atexit` or `thread_local` destructor (only its code could have
//! registered one). The image's memory is released when it is dropped.

#![no_main]

use std::sync::OnceLock;

use kiln_linker::{HostSymbols, LinkError, Linker};
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

/// Joins the files of one input (seeds are made with it: see scripts/fuzz).
const SEPARATOR: &[u8] = b"\n--kiln-fuzz-next-file--\n";

/// At most this many files an input (more are ignored).
const MAX_FILES: usize = 4;

fn host() -> &'static HostSymbols {
    static HOST: OnceLock<HostSymbols> = OnceLock::new();
    HOST.get_or_init(HostSymbols::new)
}

/// The `(start, end)` ranges of `data` cut at each [`SEPARATOR`].
fn file_ranges(data: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start = 0;
    while out.len() + 1 < MAX_FILES {
        match data[start..]
            .windows(SEPARATOR.len())
            .position(|w| w == SEPARATOR)
        {
            Some(at) => {
                out.push((start, start + at));
                start += at + SEPARATOR.len();
            }
            None => break,
        }
    }
    out.push((start, data.len()));
    out
}

/// `data` cut at each [`SEPARATOR`].
fn files(data: &[u8]) -> Vec<&[u8]> {
    file_ranges(data)
        .into_iter()
        .map(|(s, e)| &data[s..e])
        .collect()
}

/// The `N` bytes at `base + at` of `file`, if they are all there.
fn read<const N: usize>(file: &[u8], base: usize, at: usize) -> Option<[u8; N]> {
    let at = base.checked_add(at)?;
    file.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The `(header, offset, size)` of every section of the ELF64 object
/// `file` that has bytes in the file (none if the headers are unreadable).
fn sections(file: &[u8]) -> Vec<(usize, usize, usize)> {
    let (Some(shoff), Some(entsize), Some(count)) = (
        read::<8>(file, 0, 0x28).map(u64::from_le_bytes),
        read::<2>(file, 0, 0x3a).map(u16::from_le_bytes),
        read::<2>(file, 0, 0x3c).map(u16::from_le_bytes),
    ) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for i in 0..usize::from(count) {
        let Some(sh) = usize::try_from(shoff)
            .ok()
            .and_then(|o| o.checked_add(i.checked_mul(usize::from(entsize))?))
        else {
            break;
        };
        let (Some(kind), Some(offset), Some(size)) = (
            read::<4>(file, sh, 4).map(u32::from_le_bytes),
            read::<8>(file, sh, 0x18).map(u64::from_le_bytes),
            read::<8>(file, sh, 0x20).map(u64::from_le_bytes),
        ) else {
            break;
        };
        let (Ok(offset), Ok(size)) = (usize::try_from(offset), usize::try_from(size)) else {
            continue;
        };
        // SHT_NOBITS has no bytes in the file.
        let in_file = offset.checked_add(size).is_some_and(|e| e <= file.len());
        if kind != 8 && size > 0 && in_file {
            out.push((sh, offset, size));
        }
    }
    out
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed % 2 == 0 {
        let files = file_ranges(&data[..size]);
        let (start, end) = files[(seed as usize / 2) % files.len()];
        let secs = sections(&data[start..end]);
        if !secs.is_empty() {
            let (header, offset, len) = secs[(seed as usize / 8) % secs.len()];
            let section = &mut data[start + offset..start + offset + len];
            // In place: the section may shrink (its header then says so)
            // but never grow, so no other offset in the file moves.
            let new_len = fuzzer_mutate(section, len, len);
            let sh_size = start + header + 0x20;
            data[sh_size..sh_size + 8].copy_from_slice(&(new_len as u64).to_le_bytes());
            return size;
        }
    }
    fuzzer_mutate(data, size, max_size)
});

fn link(data: &[u8]) -> Result<(), LinkError> {
    let mut linker = Linker::new(Default::default());
    for (i, file) in files(data).into_iter().enumerate() {
        if file.starts_with(b"!<arch>\n") {
            linker.add_archive_bytes(format!("input{i}.a"), file.to_vec())?;
        } else {
            linker.add_object_bytes(format!("input{i}.o"), file.to_vec());
        }
    }
    let image = linker.link(host())?;
    assert!(image.is_finalized());
    Ok(())
}

/// The global names the objects among `files` define (those that parse).
fn defined_names(files: &[&[u8]]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for (i, file) in files.iter().enumerate() {
        if file.starts_with(b"!<arch>\n") {
            continue;
        }
        let Ok(g) = kiln_linker::elf::parse_object(&format!("input{i}.o"), file) else {
            continue;
        };
        for (name, id) in g.global_names() {
            if !matches!(g.symbols[id.index()].def, kiln_linker::graph::SymbolDef::External) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Whether each of `names` becomes Ready in a JIT (the engine's object
/// layer, in place: no threads) to which every file was added on its own:
/// asked all in one lookup (`together`: the objects it starts are linked
/// as one batch) or one name at a time (each object alone). Nothing runs.
fn ready_in_jit(files: &[&[u8]], names: &[String], together: bool) -> Vec<bool> {
    use kiln_engine::{DylibLookup, LookupSet, RequiredState, SearchOrder};
    let Ok(jit) = kiln_linker::Jit::builder()
        .dispatcher(kiln_engine::InPlaceDispatcher)
        .build()
    else {
        return Vec::new();
    };
    for (i, file) in files.iter().enumerate() {
        let added = if file.starts_with(b"!<arch>\n") {
            jit.add_archive(&format!("input{i}.a"), file.to_vec())
        } else {
            jit.add_object_named(&format!("input{i}.o"), file)
        };
        if let Err(e) = added {
            assert!(!e.to_string().is_empty());
        }
    }
    let session = jit.session();
    let order = SearchOrder::new().with(jit.app(), DylibLookup::All);
    let ask = |names: &[&str]| {
        let set = LookupSet::weak(session.intern_all(names.iter().copied()));
        session.lookup(&order, &set, RequiredState::Ready).wait()
    };
    if together {
        let all: Vec<&str> = names.iter().map(String::as_str).collect();
        let _ = ask(&all);
    }
    names
        .iter()
        .map(|n| ask(&[n]).is_ok_and(|found| found.get_str(n).is_some()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // Each object merged alone takes the adopting fast path where it can:
    // checked against the general merge.
    let files = files(data);
    for file in &files {
        if !file.starts_with(b"!<arch>\n") {
            kiln_linker::graph::check_adoption(file);
        }
    }
    if let Err(e) = link(data) {
        // Every error says something (and formatting it must not panic).
        assert!(!e.to_string().is_empty());
    }
    // Several files: each its own image in a JIT, where what a name
    // answers must not depend on whether one lookup started the objects
    // together (a batch) or each alone.
    if files.len() >= 2 {
        let names = defined_names(&files);
        if !names.is_empty() && names.len() <= 64 {
            let together = ready_in_jit(&files, &names, true);
            let alone = ready_in_jit(&files, &names, false);
            assert_eq!(together, alone, "Ready in a batch vs alone, for {names:?}");
        }
    }
});
