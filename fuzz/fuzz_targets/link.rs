//! Fuzz target: read and link objects and archives into memory, as
//! `kiln run --noexec` does, and never run any of it.
//!
//! The input is one or more files joined by [`SEPARATOR`]; a file that
//! starts with `!<arch>\n` is a static archive, anything else an object.
//! Every input must either link or fail with a [`LinkError`]; a panic, an
//! abort, a hang or a memory error is a bug.
//!
//! Nothing of the image runs: initializers are off
//! ([`Linker::run_initializers`]`(false)`), so dropping the image skips its
//! finalizers (an image whose initializers never ran does not finalize) and
//! finds no `atexit` or `thread_local` destructor (only its code could have
//! registered one). The image's memory is released when it is dropped.

#![no_main]

use std::sync::OnceLock;

use kiln_linker::{HostSymbols, LinkError, Linker};
use libfuzzer_sys::fuzz_target;

/// Joins the files of one input (seeds are made with it: see scripts/fuzz).
const SEPARATOR: &[u8] = b"\n--kiln-fuzz-next-file--\n";

/// At most this many files an input (more are ignored).
const MAX_FILES: usize = 4;

fn host() -> &'static HostSymbols {
    static HOST: OnceLock<HostSymbols> = OnceLock::new();
    HOST.get_or_init(HostSymbols::new)
}

/// `data` cut at each [`SEPARATOR`].
fn files(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() + 1 < MAX_FILES {
        match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => {
                out.push(&rest[..at]);
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fn link(data: &[u8]) -> Result<(), LinkError> {
    let mut linker = Linker::new(Default::default());
    linker.run_initializers(false);
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

fuzz_target!(|data: &[u8]| {
    if let Err(e) = link(data) {
        // Every error says something (and formatting it must not panic).
        assert!(!e.to_string().is_empty());
    }
});
