//! Image files: linked code saved once and loaded in a later process
//! without relinking (DESIGN §5).
//!
//! | file | what it holds |
//! | --- | --- |
//! | `classify.rs` | imaging mode: every fixup classified (nothing at load, a rebase, an import through a slot) or refused |
//! | `combine.rs` | the images of many links (a dylib's or a tracker's, [`crate::layer::ObjectLayer::save_image`]) as one image |
//! | `format.rs` | the on-disk layout: the header, the tables, RELR rebase encoding |
//! | `write.rs` | the ELF64 container, written with `object::write` |
//! | `read.rs` | parsing and validation, cheap checks first (header → content hash → ELF → tables) |
//! | `load.rs` | mapping, rebasing, binding slots, final protections → a [`LinkedImage`] |
//! | `unit.rs` | an image as an engine materialization unit ([`crate::layer::ObjectLayer::add_image`]) |
//! | `registry.rs` | the images of the process by address range and build id ([`image_at`]) |
//! | `tls.rs` | thread-locals at load: the TLS module per load, static area and range checked, slots bound |
//! | `tree_hash.rs` | BLAKE3 of many slices (a build id's inputs), 1 MiB subtrees on rayon's threads |
//! | `verified.rs` | files whose content hash this process checked, by (device, inode, size, mtime, ctime): not hashed again |
//!
//! An image is an ELF64 file (`readelf -S` shows its sections): the kiln
//! header section `.kiln.header` sits at file offset 64, right after the ELF
//! file header, so the image is recognized by two magics ([`is_image`]); the
//! linked memory follows as page-aligned `PT_LOAD` segments (`.text`,
//! `.rodata`, `.data`, with their protections), then the tables
//! (`.kiln.rebase`, `.kiln.imports`, `.kiln.exports`, `.kiln.init`,
//! `.kiln.initents`, `.kiln.strings`, `.kiln.deps`). Loading never writes
//! text: absolute words inside the image are rebased, host symbols are
//! bound by name into slots (GOT entries, which PLT stubs read) or, for
//! pointers in data, into the word itself.
//!
//! **External linkage.** A reference into another image — one loaded from
//! a file or saved in this process, found by address in the [`registry`] —
//! is saved as (that image's build id, offset), with no name: `.kiln.deps`
//! lists each such dependency's build id, file name and size, and the
//! image's build id combines its inputs' with its dependencies'
//! ([`BuildId::with_dependencies`]). Loading finds each dependency by build
//! id (every missing one named, with other builds of it that are loaded)
//! and binds base + offset into the slot.
//!
//! **Host table.** References to entries of the [`HostTable`] the host
//! registered ([`set_host_table`]) are saved as indices (`.kiln.hosttab`
//! holds the table's id) and bound from the loading process's table with
//! no name lookup.
//!
//! **Thread-locals** (`tls.rs`). The TLS template travels in the image;
//! module ids, TLSDESC descriptors and initial-exec offsets are slots bound
//! from a TLS module made per load; local-exec code needs the static TLS
//! range it was linked against, which the header records (area and range)
//! and a load claims or refuses ([`ImageFile::check_process`] asks first).
//!
//! **Required CPU features** (`cpu.rs`). The header records what the
//! inputs' GNU property notes (x86-64 ISA levels, AVX/AVX-512 registers)
//! and [`LinkOptions::cpu_features`] ask for; a load on a CPU without them
//! is refused naming the field and both sets. Feature bits are only
//! appended: a reader refuses a bit it does not know.

mod checked;
pub(crate) mod classify;
pub(crate) mod combine;
pub(crate) mod cpu;
mod foreign;
mod format;
mod host_table;
mod load;
mod read;
pub mod registry;
pub(crate) mod tls;
mod tree_hash;
mod unit;
mod verified;
mod write;

use crate::error::LinkError;
use crate::image::LinkedImage;
use crate::passes::LinkOptions;

pub use cpu::{CpuFeatures, UnknownCpuFeature};
pub use foreign::ForeignImage;
pub use format::{FORMAT_VERSION, MAGIC};
pub use host_table::{HostTable, set_host_table};
pub use load::{IMAGE_MAGIC_END, ImageFile, ImageStamp, load, load_file};
pub use read::{ImageInfo, ImageTls, dependencies, exported_names, inspect};
pub use registry::{RegisteredImage, image_at};

/// The target triple images of this build are for.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Identity of an image: a BLAKE3 hash of the format version, the target,
/// the link options and the inputs (names and bytes) — never a time, so
/// identical inputs give the same build id (and a byte-identical image).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(pub [u8; 32]);

impl BuildId {
    /// The build id of linking `inputs` (in order, as `(name, bytes)`) with
    /// `options`.
    pub fn of_inputs<'a>(
        options: &LinkOptions,
        inputs: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> BuildId {
        let inputs: Vec<(&str, &[u8])> = inputs.into_iter().collect();
        let mut head = b"kiln image build id\0".to_vec();
        head.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        head.extend_from_slice(TARGET.as_bytes());
        head.push(0);
        // Only the options that change the image's bytes.
        let roots = format!("{:?}", options.roots);
        head.extend_from_slice(&(roots.len() as u64).to_le_bytes());
        head.extend_from_slice(roots.as_bytes());
        head.push(u8::from(options.imaging));
        // The inputs' own requirements are in their bytes (notes).
        if !options.cpu_features.is_empty() {
            head.extend_from_slice(b"cpu features\0");
            head.extend_from_slice(&options.cpu_features.bits().to_le_bytes());
        }
        // Each input: its name's length, its name, its length, its bytes.
        let framing: Vec<Vec<u8>> = (inputs.iter())
            .map(|(name, bytes)| {
                let mut f = (name.len() as u64).to_le_bytes().to_vec();
                f.extend_from_slice(name.as_bytes());
                f.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                f
            })
            .collect();
        let mut pieces: Vec<&[u8]> = vec![&head];
        for (f, (_, bytes)) in framing.iter().zip(&inputs) {
            pieces.push(f);
            pieces.push(bytes);
        }
        BuildId(tree_hash::hash_pieces(&pieces, options.parallel))
    }

    /// This build id combined with the build ids of the images the image
    /// links against (in its dependency table's order): what the saver
    /// writes when there are any, so rebuilding a dependency changes the
    /// build id of every image saved against it.
    pub fn with_dependencies(&self, deps: &[BuildId]) -> BuildId {
        if deps.is_empty() {
            return *self;
        }
        let mut h = blake3::Hasher::new();
        h.update(b"kiln image build id with dependencies\0");
        h.update(&self.0);
        h.update(&(deps.len() as u64).to_le_bytes());
        for d in deps {
            h.update(&d.0);
        }
        BuildId(*h.finalize().as_bytes())
    }
}

/// An image another image links against: references into it are saved as
/// (its build id, offset) and bound where it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ImageDependency {
    /// Its build id.
    pub build_id: BuildId,
    /// The file name it had when the dependent image was saved (for `kiln
    /// image save --against DIR/FILE`, `FILE`; `kiln run` looks for it next
    /// to the dependent image).
    pub name: String,
    /// Its memory span (every reference into it is below).
    pub image_size: u64,
}

/// The file name (last path component) of a dependency's name: what
/// `kiln run` looks for next to the image that needs it, and how a loader
/// recognizes another build of a missing dependency.
pub fn file_name(name: &str) -> &str {
    name.rsplit('/').next().unwrap_or(name)
}

pub(crate) use file_name as file_name_of;

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BuildId({self})")
    }
}

/// Whether `bytes` start like an image file (the ELF magic, then kiln's
/// magic at offset 64). Cheap; [`inspect`] and [`load`] check the rest.
pub fn is_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
        && bytes.get(format::HEADER_AT..format::HEADER_AT + MAGIC.len()) == Some(&MAGIC[..])
}

/// Why saving, inspecting or loading an image failed. Refusals of a file
/// name the field and both values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The linked image was not linked in imaging mode (user error).
    #[error(
        "cannot save `{name}` as an image: it was not linked in imaging mode (link it with LinkOptions::imaging — Linker::new or ObjectLayer::with_options — as `kiln image save` does)"
    )]
    NotImaging {
        /// The image's name.
        name: String,
    },
    /// Nothing to save: no code was linked into the dylib (or for the
    /// tracker) through this layer (user error).
    #[error(
        "cannot save {what} as an image: it is empty (no code was linked into it through this layer; image files loaded into it are not saved again)"
    )]
    Empty {
        /// The dylib or tracker.
        what: String,
    },
    /// A link saved with others as one image has thread-locals (user
    /// error): each link has its own TLS template, an image holds one.
    #[error(
        "cannot save `{name}` with other links as one image: it has thread-local storage (link the objects that define or use thread-locals in one call and save that link alone, or compile them into one object)"
    )]
    ThreadLocalsInPieces {
        /// The link's name (its first input).
        name: String,
    },
    /// The file does not start with the image magics (user error).
    #[error("{name}: not a kiln image (no `\\x7fELF` + `KILNIMG` magic at offsets 0 and 64)")]
    NotAnImage {
        /// The file.
        name: String,
    },
    /// A header or table field has a value this loader refuses.
    #[error("{name}: image field `{field}` is {found}, expected {expected}")]
    Field {
        /// The file.
        name: String,
        /// The field.
        field: &'static str,
        /// Its value in the file.
        found: String,
        /// What this loader needs.
        expected: String,
    },
    /// The file is inconsistent (damaged or not written by kiln).
    #[error("{name}: malformed image: {detail}")]
    Malformed {
        /// The file.
        name: String,
        /// What is wrong, and where.
        detail: String,
    },
    /// The image's ELF container is inconsistent: the ELF reader refused
    /// `what` (damaged or not written by kiln).
    #[error("{name}: malformed image: {what}: {source}")]
    Container {
        /// The file.
        name: String,
        /// The part that could not be read.
        what: &'static str,
        /// The ELF reader's error.
        #[source]
        source: object::read::Error,
    },
    /// Host symbols the image imports that nobody defines (every one listed).
    #[error("{name}: imported symbols not found: {}", missing.join(", "))]
    MissingImports {
        /// The file.
        name: String,
        /// The missing names, sorted.
        missing: Vec<String>,
    },
    /// A PC32 import's target lies more than ±2 GiB from its field where
    /// the image was placed (code reaching host data directly, as gcc's
    /// x86-64 `-fPIE` does).
    #[error(
        "{name}: `{symbol}` at {target:#x} is out of reach of the 32-bit PC-relative field at image offset {offset:#x} (image at {base:#x}): compile with -fPIC so the code reaches it through the GOT"
    )]
    OutOfReach {
        /// The file.
        name: String,
        /// The import's symbol (or `host table entry N`).
        symbol: String,
        /// Its address in this process.
        target: u64,
        /// The field's offset in the image.
        offset: u64,
        /// Where the image was placed.
        base: u64,
    },
    /// Images this image links against are not loaded (every one listed,
    /// with the build ids of other builds of it that are loaded).
    #[error("{name}: {}", missing_dependencies(missing))]
    MissingDependencies {
        /// The file.
        name: String,
        /// Each missing dependency, and the build ids of loaded images with
        /// its file name (another build of it).
        missing: Vec<(ImageDependency, Vec<BuildId>)>,
    },
    /// Writing the ELF container failed (implementation limit).
    #[error("{name}: cannot write the image: {detail}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Write {
        /// The image.
        name: String,
        /// What could not be written, and why when no `source` says so.
        detail: String,
        /// The ELF writer's error, when it refused.
        #[source]
        source: Option<object::write::Error>,
    },
    /// Memory, runtime registration or the engine failed.
    #[error("{name}: {source}")]
    Link {
        /// The image.
        name: String,
        /// The linker's error.
        #[source]
        source: crate::Cause<LinkError>,
    },
    /// The image file could not be opened, read or mapped.
    #[error("{name}: cannot {what}: {source}")]
    Io {
        /// The image.
        name: String,
        /// What failed (`open`, `map`).
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
}

fn missing_dependencies(missing: &[(ImageDependency, Vec<BuildId>)]) -> String {
    let each: Vec<String> = missing
        .iter()
        .map(|(d, others)| {
            let mut s = format!("`{}` with build id {}", d.name, d.build_id);
            if !others.is_empty() {
                let ids: Vec<String> = others.iter().map(ToString::to_string).collect();
                s.push_str(&format!(
                    " (loaded: `{}` with build id {}: another build of it; save this image again against it)",
                    file_name_of(&d.name),
                    ids.join(", ")
                ));
            }
            s
        })
        .collect();
    format!(
        "the images it links against are not loaded: {}",
        each.join("; ")
    )
}

/// What saving an image needs from a link in imaging mode: the image's
/// memory with every rebased word holding its offset from the image base and
/// every import word zero, and the tables.
#[derive(Debug, Clone, Default)]
pub struct ImagingRecord {
    /// ELF machine of the code (the graph's ISA: `EM_X86_64`, `EM_AARCH64`).
    pub(crate) machine: u16,
    /// The image's memory normalized: rebased words hold offsets, import
    /// words zero. Empty if `in_image`.
    pub(crate) memory: Vec<u8>,
    /// The image's own memory was normalized where it is, and is saved
    /// from there ([`LinkedImage::imaging_memory`]): code for another ISA,
    /// which never runs in this process (its memory is left writable, not
    /// finalized).
    pub(crate) in_image: bool,
    /// `(offset, len, prot)`, page-aligned offsets, ascending.
    pub(crate) segments: Vec<(u64, u64, crate::graph::Prot)>,
    /// Offsets of the 8-byte words to add the base to, sorted, 8-aligned.
    pub(crate) rebase: Vec<u64>,
    /// Imports, sorted by offset.
    pub(crate) imports: Vec<classify::Import>,
    /// Exports, sorted by name.
    pub(crate) exports: Vec<classify::Export>,
    /// The exports' names, one after another ([`classify::Export::name`]).
    pub(crate) export_names: String,
    /// Initializer/finalizer sections in link order: name, entry offsets
    /// (`u64::MAX`: an entry outside the image, skipped).
    pub(crate) init_fini: Vec<(String, Vec<u64>)>,
    /// `.eh_frame` (offset, length including its zero terminator).
    pub(crate) eh_frame: Option<(u64, u64)>,
    /// Images it links against, in order of first reference; imports into
    /// them name them by index.
    pub(crate) deps: Vec<ImageDependency>,
    /// The host table its imports use by index: (id, entry count, name).
    pub(crate) host_table: Option<(BuildId, u32, String)>,
    /// Its thread-locals: the header's TLS fields.
    pub(crate) tls: format::TlsHeader,
    /// PC-relative references to symbols of other links of this process:
    /// saved only in one image with their code ([`combine`]).
    pub(crate) pc_relative: Vec<classify::PcRelative>,
    /// The CPU features its code requires (header bits, [`cpu`]).
    pub(crate) cpu_features: u64,
    /// The alignment its base needs: the largest of its blocks (at least
    /// a page).
    pub(crate) base_align: u64,
    /// Linked on one thread ([`LinkOptions::parallel`] off): saved on it too.
    pub(crate) serial: bool,
}

impl LinkedImage {
    /// Saves this image as an image file (the bytes of it) with `build_id`
    /// (see [`BuildId::of_inputs`]) combined with the build ids of the
    /// images it links against and the id of the host table it uses
    /// ([`BuildId::with_dependencies`]): references
    /// into an image of the [`registry`] (loaded from a file or saved in
    /// this process) were recorded as (its build id, offset). Fails unless
    /// the image was linked in imaging mode ([`LinkOptions::imaging`]).
    ///
    /// The image joins the registry under the written build id (unless it
    /// is there already), so images linked against it later in this process
    /// refer to it by build id.
    pub fn save_image(&self, build_id: &BuildId) -> Result<Vec<u8>, ImageError> {
        let mut out = std::io::Cursor::new(Vec::new());
        self.save_image_to(build_id, &mut out)?;
        Ok(out.into_inner())
    }

    /// [`LinkedImage::save_image`], written to `out` from its current
    /// position (a file, say) instead of returned: the image's code goes
    /// from its memory to `out` without a copy of the whole file in memory.
    /// `out` is left at the end of what was written; on an error, part of
    /// the file may have been written.
    pub fn save_image_to<W: std::io::Write + std::io::Seek + Send>(
        &self,
        build_id: &BuildId,
        out: &mut W,
    ) -> Result<(), ImageError> {
        let record = self
            .imaging_record()
            .ok_or_else(|| ImageError::NotImaging {
                name: self.name().to_string(),
            })?;
        if let Some(p) = record.pc_relative.first() {
            return Err(ImageError::Link {
                name: self.name().to_string(),
                source: crate::Cause::new(p.refusal()),
            });
        }
        let mut deps: Vec<BuildId> = record.deps.iter().map(|d| d.build_id).collect();
        deps.extend(record.host_table.as_ref().map(|t| t.0));
        let id = build_id.with_dependencies(&deps);
        write::write_to(self.name(), record, self.imaging_memory(record)?, &id, out)?;
        let (base, size) = self.memory_range();
        self.register_once(|| registry::Registration::new(base, size, id, self.name()));
        Ok(())
    }
}

impl LinkedImage {
    /// [`LinkedImage::save_image`], then drops the image and gives its
    /// static TLS range back, so that loading the saved file in this
    /// process can claim the same range — which an image with local-exec
    /// code needs (its thread-pointer offsets are in its text), and which a
    /// range once used never is again. What `kiln run --cache` does on a
    /// miss: link, save, run from the saved entry. If the image's
    /// initializers ran, the range is kept (as when dropped).
    ///
    /// # Safety
    ///
    /// No code of the image ran (no function of it was called, in any
    /// thread): threads would keep values of its thread-locals in the range.
    pub unsafe fn save_image_and_release(
        mut self,
        build_id: &BuildId,
    ) -> Result<Vec<u8>, ImageError> {
        let bytes = self.save_image(build_id)?;
        let tls = self.take_uninitialized_tls();
        drop(self);
        if let Some(module) = tls {
            module.release_unused();
        }
        Ok(bytes)
    }
}

/// Recomputes the content hash of an image file after its bytes were
/// edited (for tools and mutation tests: a damaged table then reaches the
/// table checks instead of stopping at the hash). Does nothing to a file
/// too short to hold a header.
pub fn reseal(bytes: &mut [u8]) {
    format::reseal(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The build id is one BLAKE3 over the framed inputs, hashed in
    /// subtrees or not: ids of images saved before stay what they were.
    #[test]
    fn build_ids_are_blake3_of_the_options_and_framed_inputs() {
        let options = LinkOptions {
            imaging: true,
            ..LinkOptions::default()
        };
        let inputs: Vec<(String, Vec<u8>)> = (0..3u8)
            .map(|i| {
                let bytes = (0..(3 << 20) + 11 * u32::from(i)).map(|j| (j % 251) as u8 ^ i);
                (format!("in{i}.o"), bytes.collect())
            })
            .collect();
        let mut h = blake3::Hasher::new();
        h.update(b"kiln image build id\0");
        h.update(&FORMAT_VERSION.to_le_bytes());
        h.update(TARGET.as_bytes());
        h.update(&[0]);
        let roots = format!("{:?}", options.roots);
        h.update(&(roots.len() as u64).to_le_bytes());
        h.update(roots.as_bytes());
        h.update(&[1]);
        for (name, bytes) in &inputs {
            h.update(&(name.len() as u64).to_le_bytes());
            h.update(name.as_bytes());
            h.update(&(bytes.len() as u64).to_le_bytes());
            h.update(bytes);
        }
        let id = BuildId::of_inputs(&options, inputs.iter().map(|(n, b)| (n.as_str(), &b[..])));
        assert_eq!(id.0, *h.finalize().as_bytes());
    }
}
