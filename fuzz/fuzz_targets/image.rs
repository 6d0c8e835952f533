//! Fuzz target: check and describe image files, as `kiln image info` does
//! (`image_file::inspect`: every check `load` makes, without mapping).
//!
//! Every input must either be described or refused with an `ImageError`;
//! a panic, an abort, a hang or a memory error is a bug. Nothing is mapped
//! or run, so a mutant whose content hash checks out is as safe to fuzz as
//! any other: most mutants are resealed (`image_file::reseal`), so the
//! header and table checks, not the hash, must catch the damage.
//!
//! Half of the mutations are structure-aware: they pick one of the tables
//! the header lists (`.kiln.rebase`, `.kiln.imports`, ...) and mutate its
//! bytes in place, so that mutants get past the header into the records.
//! The other half are libFuzzer's own, over the whole file.

#![no_main]

use kiln_linker::image_file;
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

/// Where the header's table list starts: file offset 64 (the header) +
/// 136; eight (file offset u64, size u64) entries.
const TABLES_AT: usize = 64 + 136;
const TABLES: usize = 8;

/// The `(offset, size)` of table `i` if it lies within `file` and is not
/// empty.
fn table(file: &[u8], i: usize) -> Option<(usize, usize)> {
    let at = TABLES_AT + 16 * i;
    let word = |at: usize| {
        let bytes: [u8; 8] = file.get(at..at + 8)?.try_into().ok()?;
        usize::try_from(u64::from_le_bytes(bytes)).ok()
    };
    let (offset, size) = (word(at)?, word(at + 8)?);
    (size > 0 && offset.checked_add(size)? <= file.len()).then_some((offset, size))
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    let tables: Vec<(usize, usize)> = (0..TABLES)
        .filter_map(|i| table(&data[..size], i))
        .collect();
    let size = if seed % 2 == 0 && !tables.is_empty() {
        // In place, at most as long as it was: no other offset moves.
        let (offset, len) = tables[(seed as usize / 2) % tables.len()];
        fuzzer_mutate(&mut data[offset..offset + len], len, len);
        size
    } else {
        fuzzer_mutate(data, size, max_size)
    };
    if seed % 8 != 1 {
        image_file::reseal(&mut data[..size]);
    }
    size
});

fuzz_target!(|data: &[u8]| {
    match image_file::inspect("fuzz.kimg", data) {
        // Describing it must not panic either.
        Ok(info) => assert!(!format!("{info:?}").is_empty()),
        // Every refusal says something.
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
