//! The on-disk layout of an image file (little endian throughout).
//!
//! The header (`.kiln.header`, [`HEADER_SIZE`] bytes at file offset
//! [`HEADER_AT`]):
//!
//! | offset | field |
//! | --- | --- |
//! | 0 | magic `KILNIMG\0` |
//! | 8 | format version (u32), header size (u32) |
//! | 16 | machine (u16, the code's ELF machine: `EM_X86_64`, or `EM_AARCH64` for an image linked from aarch64 objects, which `kiln-load` runs, `kiln image info` describes and `kiln run` refuses naming the loader), pointer width (u8), endianness (u8, 1 = little), page size (u32) |
//! | 24 | required CPU features (u64 bit set: bit i is [`CPU_FEATURES`]`[i]`; see [`super::cpu`]) |
//! | 32 | flags (u64): [`FLAG_PC32_IMPORTS`] or 0 |
//! | 40 | build id (32 bytes) |
//! | 72 | content hash (32 bytes): BLAKE3 of the whole file with this field zeroed |
//! | 104 | file size (u64), image size (u64: the memory span) |
//! | 120 | `.eh_frame` offset and length in the image (u64 each; length 0: none) |
//! | 136 | [`TABLES`] × (file offset u64, size u64) |
//! | 264 | counts (u32): segments, imports, exports, rebased words |
//! | 280 | name: string offset (u32), length (u32) |
//! | 288 | TLS template size and alignment (u64 each; size 0: no thread-locals) |
//! | 304 | TLS template: offset of its initial image (`.tdata`) in the image, and that image's size (u64 each) |
//! | 320 | static TLS use (u64): [`STATIC_TLS_NONE`], [`STATIC_TLS_ANY`] or [`STATIC_TLS_FIXED`] |
//! | 328 | static TLS area (i64): thread-pointer offset of the first byte of kiln's static TLS area in the saving process — for an image of another ISA than kiln's, of the C loader's area for that ISA (`tls::LOADER_AREA_AARCH64`) — (fixed use only, else 0; negative on x86-64, at least 16 on aarch64) |
//! | 336 | static TLS area size (u64; fixed use only) |
//! | 344 | static TLS range (u64): offset of the image's TLS block in that area (fixed use only); its size is the template size |
//! | 352 | base alignment (u64, since version 2): the load base is a multiple of it — the largest alignment any block of the image asks for, at least the page size, at most [`MAX_BASE_ALIGN`] (a block aligned to 64 KiB or 2 MiB sits at such a multiple only if the base does) |
//!
//! Thread-locals: the template's initial image lies in a read-only segment
//! (rebased like any word); module ids, TLSDESC descriptors and
//! initial-exec thread-pointer offsets are imports of source
//! [`SOURCE_TLS`] bound at load from a TLS module made for that load.
//! Local-exec code (`R_X86_64_TPOFF32` in text) holds thread-pointer
//! offsets fixed at link time: such an image needs the same static area and
//! exactly its recorded range at load (what the process owns, not the
//! image: checked and refused naming both values).
//!
//! Tables: `.kiln.rebase` is RELR (an even word: the offset of a word to
//! rebase; an odd word: a bitmap of the next 63 words); `.kiln.imports`
//! 32-byte records sorted by offset; `.kiln.exports` 24-byte records sorted
//! by name; `.kiln.init` 16-byte records (section name, first entry, count)
//! over `.kiln.initents` (u64 offsets); `.kiln.strings` the names;
//! `.kiln.deps` 48-byte records, one per image this one links against
//! (build id, name string offset u32 and length u32, image size u64);
//! `.kiln.hosttab` empty or one 48-byte record: the host table's id (32
//! bytes), its entry count (u32), its name (string offset u32, length u32),
//! 4 zero bytes.
//!
//! An import record (32 bytes): offset of the word (u64); for an import by
//! name the name (string offset u32, length u32), for an import from a
//! dependency the offset in that image (u64), for a host table entry zero;
//! addend (i64); flags (u8: [`IMPORT_WEAK`], [`IMPORT_SLOT`],
//! [`IMPORT_PC32`]); source (u8: [`SOURCE_BY_NAME`],
//! [`SOURCE_HOST_TABLE`], [`SOURCE_DEPENDENCY`] or [`SOURCE_TLS`]); 2 zero
//! bytes; index (u32: the dependency's index in `.kiln.deps`, the host
//! table entry, or for a thread-local slot its kind, [`TLS_MODULE_ID`]…,
//! with the variable's offset in the TLS template in the name/offset word).
//!
//! A PC32 import ([`IMPORT_PC32`], by name or a host table entry, never
//! a slot) is a 4-byte field anywhere in the image, text included, that
//! gets `S + A - P` (signed, P the field's address) where the others get
//! `S + A` in an 8-byte word: code reaching the host's data directly (gcc's
//! x86-64 `-fPIE` assumes the executable holds a copy of `stdout`). An
//! image with any has [`FLAG_PC32_IMPORTS`] in its header (loaders that
//! predate it refuse the image: they require the flags to be 0); a loader
//! places such an image within ±2 GiB of every target and writes the
//! fields before the final protections, or refuses naming the symbol.
//!
//! The C loader `linker/loader/kiln-load.c` is the format's second
//! implementation: a change here is mirrored there (`tests/c_loader.rs`
//! runs real images under both, two-level ones included; it refuses host
//! tables and static TLS it cannot give).

/// The kiln magic, at file offset 64 (right after the ELF file header).
pub const MAGIC: [u8; 8] = *b"KILNIMG\0";
/// The format version this build writes and reads (2: the base alignment
/// field; version 1 files are refused naming both versions).
pub const FORMAT_VERSION: u32 = 2;
/// File offset of the header: right after the ELF64 file header.
pub(crate) const HEADER_AT: usize = 64;
/// Size of the header.
pub(crate) const HEADER_SIZE: usize = 360;
/// Offset of the content hash inside the header.
const HASH_AT: usize = 72;
/// Where the content hash lies in the file.
pub(crate) const CONTENT_HASH_AT: usize = HEADER_AT + HASH_AT;
/// Page size of the segments.
pub(crate) const PAGE: u64 = 4096;
/// Largest base alignment an image may ask of its loader (the object
/// parser refuses larger section alignments in any link).
pub(crate) const MAX_BASE_ALIGN: u64 = 1 << 30;
/// `EM_X86_64`: the machine of the images this build loads.
pub(crate) const MACHINE: u16 = 62;

/// The tables, in header order, with their ELF section names.
pub(crate) const TABLES: [&str; 8] = [
    ".kiln.rebase",
    ".kiln.imports",
    ".kiln.exports",
    ".kiln.init",
    ".kiln.initents",
    ".kiln.strings",
    ".kiln.deps",
    ".kiln.hosttab",
];
pub(crate) const T_REBASE: usize = 0;
pub(crate) const T_IMPORTS: usize = 1;
pub(crate) const T_EXPORTS: usize = 2;
pub(crate) const T_INIT: usize = 3;
pub(crate) const T_INITENTS: usize = 4;
pub(crate) const T_STRINGS: usize = 5;
pub(crate) const T_DEPS: usize = 6;
pub(crate) const T_HOSTTAB: usize = 7;

pub(crate) const IMPORT_SIZE: usize = 32;
pub(crate) const EXPORT_SIZE: usize = 24;
pub(crate) const INIT_SIZE: usize = 16;

/// Import flags.
pub(crate) const IMPORT_WEAK: u8 = 1;
pub(crate) const IMPORT_SLOT: u8 = 2;
/// A 4-byte PC-relative field, not an 8-byte word (see the module note).
pub(crate) const IMPORT_PC32: u8 = 4;
/// Header flag: the image has [`IMPORT_PC32`] imports.
pub(crate) const FLAG_PC32_IMPORTS: u64 = 1;
/// Import sources (how the address is found): by name through the
/// loader's resolver, an entry of the host table by index, or a dependency
/// image's base (by build id) plus an offset.
pub(crate) const SOURCE_BY_NAME: u8 = 0;
pub(crate) const SOURCE_HOST_TABLE: u8 = 1;
pub(crate) const SOURCE_DEPENDENCY: u8 = 2;
/// A thread-local slot, bound from the TLS module made at load.
pub(crate) const SOURCE_TLS: u8 = 3;
/// Thread-local slot kinds (the import's index): the module id of a
/// `tls_index` pair (general/local-dynamic), the thread-pointer offset of
/// a variable (initial-exec GOT entry), the two words of a TLSDESC
/// descriptor.
pub(crate) const TLS_MODULE_ID: u32 = 0;
pub(crate) const TLS_TP_OFFSET: u32 = 1;
pub(crate) const TLS_DESC_RESOLVER: u32 = 2;
pub(crate) const TLS_DESC_ARGUMENT: u32 = 3;
/// Static TLS use: none (dynamic models only), any static range (initial-exec
/// slots, bound at load), the recorded range (local-exec code).
pub(crate) const STATIC_TLS_NONE: u64 = 0;
pub(crate) const STATIC_TLS_ANY: u64 = 1;
pub(crate) const STATIC_TLS_FIXED: u64 = 2;
/// Size of a `.kiln.deps` record.
pub(crate) const DEP_SIZE: usize = 48;
/// Size of the `.kiln.hosttab` record.
pub(crate) const HOSTTAB_SIZE: usize = 48;

/// Export flags.
pub(crate) const EXPORT_CALLABLE: u32 = 1;
pub(crate) const EXPORT_WEAK: u32 = 2;
pub(crate) const EXPORT_EXPORTED: u32 = 4;

/// The decoded header.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) version: u32,
    pub(crate) header_size: u32,
    pub(crate) machine: u16,
    pub(crate) pointer_width: u8,
    pub(crate) endianness: u8,
    pub(crate) page_size: u32,
    pub(crate) cpu_features: u64,
    pub(crate) flags: u64,
    pub(crate) build_id: [u8; 32],
    pub(crate) content_hash: [u8; 32],
    pub(crate) file_size: u64,
    pub(crate) image_size: u64,
    pub(crate) eh_frame: (u64, u64),
    pub(crate) tables: [(u64, u64); 8],
    pub(crate) segments: u32,
    pub(crate) imports: u32,
    pub(crate) exports: u32,
    pub(crate) rebased: u32,
    pub(crate) name: (u32, u32),
    pub(crate) tls: TlsHeader,
    /// The load base's alignment (a power of two, `PAGE..=MAX_BASE_ALIGN`).
    pub(crate) base_align: u64,
}

/// The header's thread-local fields (all zero: no thread-locals).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct TlsHeader {
    /// Template size (`.tdata` + `.tbss`) and alignment.
    pub(crate) size: u64,
    pub(crate) align: u64,
    /// Offset of the initial image in the image, and its size.
    pub(crate) image_offset: u64,
    pub(crate) image_size: u64,
    /// [`STATIC_TLS_NONE`], [`STATIC_TLS_ANY`] or [`STATIC_TLS_FIXED`].
    pub(crate) static_use: u64,
    /// Fixed use: the area's thread-pointer offset and size, and the
    /// block's offset in it.
    pub(crate) area_tp_offset: i64,
    pub(crate) area_size: u64,
    pub(crate) area_offset: u64,
}

/// Little-endian field reader over a slice known to be long enough.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl Fields<'_> {
    pub(crate) fn u8(&self, at: usize) -> u8 {
        self.0.get(at).copied().unwrap_or(0)
    }
    pub(crate) fn u16(&self, at: usize) -> u16 {
        u16::from_le_bytes(self.array(at))
    }
    pub(crate) fn u32(&self, at: usize) -> u32 {
        u32::from_le_bytes(self.array(at))
    }
    pub(crate) fn u64(&self, at: usize) -> u64 {
        u64::from_le_bytes(self.array(at))
    }
    pub(crate) fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        self.0
            .get(at..at.saturating_add(N))
            .and_then(|s| s.try_into().ok())
            .unwrap_or([0; N])
    }
}

impl Header {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_SIZE);
        v.extend_from_slice(&MAGIC);
        v.extend_from_slice(&self.version.to_le_bytes());
        v.extend_from_slice(&self.header_size.to_le_bytes());
        v.extend_from_slice(&self.machine.to_le_bytes());
        v.push(self.pointer_width);
        v.push(self.endianness);
        v.extend_from_slice(&self.page_size.to_le_bytes());
        v.extend_from_slice(&self.cpu_features.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.build_id);
        v.extend_from_slice(&self.content_hash);
        for x in [
            self.file_size,
            self.image_size,
            self.eh_frame.0,
            self.eh_frame.1,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        for (off, size) in self.tables {
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
        }
        for x in [
            self.segments,
            self.imports,
            self.exports,
            self.rebased,
            self.name.0,
            self.name.1,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        let t = &self.tls;
        for x in [
            t.size,
            t.align,
            t.image_offset,
            t.image_size,
            t.static_use,
            t.area_tp_offset as u64,
            t.area_size,
            t.area_offset,
            self.base_align,
        ] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        debug_assert_eq!(v.len(), HEADER_SIZE);
        v
    }

    /// Decodes the header bytes (`HEADER_SIZE` of them; missing bytes read
    /// as zero, which the field checks then refuse).
    pub(crate) fn decode(h: &[u8]) -> Header {
        let f = Fields(h);
        let mut tables = [(0, 0); 8];
        for (i, t) in tables.iter_mut().enumerate() {
            *t = (f.u64(136 + 16 * i), f.u64(144 + 16 * i));
        }
        Header {
            version: f.u32(8),
            header_size: f.u32(12),
            machine: f.u16(16),
            pointer_width: f.u8(18),
            endianness: f.u8(19),
            page_size: f.u32(20),
            cpu_features: f.u64(24),
            flags: f.u64(32),
            build_id: f.array(40),
            content_hash: f.array(HASH_AT),
            file_size: f.u64(104),
            image_size: f.u64(112),
            eh_frame: (f.u64(120), f.u64(128)),
            tables,
            segments: f.u32(264),
            imports: f.u32(268),
            exports: f.u32(272),
            rebased: f.u32(276),
            name: (f.u32(280), f.u32(284)),
            tls: TlsHeader {
                size: f.u64(288),
                align: f.u64(296),
                image_offset: f.u64(304),
                image_size: f.u64(312),
                static_use: f.u64(320),
                area_tp_offset: f.u64(328) as i64,
                area_size: f.u64(336),
                area_offset: f.u64(344),
            },
            base_align: f.u64(352),
        }
    }
}

/// BLAKE3 of the whole file with the content hash field zeroed.
pub(crate) fn content_hash(file: &[u8]) -> [u8; 32] {
    let at = CONTENT_HASH_AT;
    let mut h = blake3::Hasher::new();
    match file.get(..at + 32) {
        Some(head) => {
            h.update(&head[..at]);
            h.update(&[0; 32]);
            h.update(&file[at + 32..]);
        }
        None => {
            h.update(file);
        }
    }
    *h.finalize().as_bytes()
}

/// The content hash the header of `file` holds (`None`: too short).
pub(crate) fn header_content_hash(file: &[u8]) -> Option<[u8; 32]> {
    let at = CONTENT_HASH_AT;
    file.get(at..at + 32)?.try_into().ok()
}

/// Writes the content hash of `file` into its header.
pub(crate) fn reseal(file: &mut [u8]) {
    let at = CONTENT_HASH_AT;
    if file.len() < HEADER_AT + HEADER_SIZE {
        return;
    }
    let hash = content_hash(file);
    file[at..at + 32].copy_from_slice(&hash);
}

/// CPU features an image may require, as header bits (bit `i` is
/// `CPU_FEATURES[i]`; Rust `target_feature` names, and the x86-64 psABI
/// micro-architecture levels). New names are appended: a reader that does
/// not know a bit shows it as `bitN` and refuses it (its CPU "lacks" it).
pub(crate) const CPU_FEATURES: [&str; 26] = [
    "sse4.2",
    "popcnt",
    "avx",
    "avx2",
    "bmi2",
    "avx512f",
    "x86-64-v2",
    "x86-64-v3",
    "x86-64-v4",
    "sse3",
    "ssse3",
    "sse4.1",
    "cmpxchg16b",
    "fma",
    "bmi1",
    "lzcnt",
    "f16c",
    "movbe",
    "avx512bw",
    "avx512cd",
    "avx512dq",
    "avx512vl",
    "avx512vbmi",
    "avx512bitalg",
    "avx512vnni",
    "avxvnni",
];

/// Bit of a [`CPU_FEATURES`] name.
pub(crate) const fn cpu_bit(index: usize) -> u64 {
    1 << index
}
pub(crate) const CPU_AVX: u64 = cpu_bit(2);
pub(crate) const CPU_AVX512F: u64 = cpu_bit(5);
pub(crate) const CPU_X86_64_V2: u64 = cpu_bit(6);
pub(crate) const CPU_X86_64_V3: u64 = cpu_bit(7);
pub(crate) const CPU_X86_64_V4: u64 = cpu_bit(8);

/// The bits of `required` (a header's [`CPU_FEATURES`] set) this CPU lacks.
/// Probes the CPU only when `required` has a bit: the first probe runs
/// `cpuid` several times, which traps on virtual machines (~50 µs of a
/// `kiln run` of an image on this machine class), and most images
/// require none.
pub(crate) fn missing_cpu_features(required: u64) -> u64 {
    if required == 0 {
        return 0;
    }
    required & !cpu_features()
}

/// The bits of [`CPU_FEATURES`] this CPU has (a level bit: every feature
/// of the level; `kiln-load.c` probes the same).
pub(crate) fn cpu_features() -> u64 {
    use std::arch::is_x86_feature_detected as has;
    let f = [
        has!("sse4.2"),
        has!("popcnt"),
        has!("avx"),
        has!("avx2"),
        has!("bmi2"),
        has!("avx512f"),
        false,
        false,
        false,
        has!("sse3"),
        has!("ssse3"),
        has!("sse4.1"),
        has!("cmpxchg16b"),
        has!("fma"),
        has!("bmi1"),
        has!("lzcnt"),
        has!("f16c"),
        has!("movbe"),
        has!("avx512bw"),
        has!("avx512cd"),
        has!("avx512dq"),
        has!("avx512vl"),
        has!("avx512vbmi"),
        has!("avx512bitalg"),
        has!("avx512vnni"),
        has!("avxvnni"),
    ];
    let bits = f
        .iter()
        .enumerate()
        .fold(0, |acc, (i, &h)| acc | (u64::from(h) << i));
    bits | cpu_levels(bits)
}

/// The level bits that the feature bits `bits` make up.
pub(crate) fn cpu_levels(bits: u64) -> u64 {
    let all = |names: &[&str]| {
        names.iter().all(|n| {
            CPU_FEATURES
                .iter()
                .position(|f| f == n)
                .is_some_and(|i| bits & cpu_bit(i) != 0)
        })
    };
    let v2 = all(&["sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "cmpxchg16b"]);
    let v3 = v2
        && all(&[
            "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "lzcnt", "movbe",
        ]);
    let v4 = v3 && all(&["avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"]);
    let level = |yes: bool, bit: u64| if yes { bit } else { 0 };
    level(v2, CPU_X86_64_V2) | level(v3, CPU_X86_64_V3) | level(v4, CPU_X86_64_V4)
}

/// Names of the feature bits in `bits` (unknown bits as `bitN`).
pub(crate) fn feature_names(bits: u64) -> String {
    let names: Vec<String> = (0..64)
        .filter(|i| bits & (1 << i) != 0)
        .map(|i| {
            CPU_FEATURES
                .get(i)
                .map_or_else(|| format!("bit{i}"), |s| s.to_string())
        })
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(",")
    }
}

/// RELR-encodes sorted, 8-aligned offsets.
pub(crate) fn relr_encode(offsets: &[u64]) -> Vec<u64> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < offsets.len() {
        let start = offsets[i];
        out.push(start);
        i += 1;
        // Bitmaps cover the 63 words after `base` each.
        let mut base = start + 8;
        loop {
            let mut bitmap = 0u64;
            while i < offsets.len() {
                let d = offsets[i] - base;
                if d >= 63 * 8 {
                    break;
                }
                bitmap |= 1 << (d / 8);
                i += 1;
            }
            if bitmap == 0 {
                break;
            }
            out.push((bitmap << 1) | 1);
            base += 63 * 8;
        }
    }
    out
}

/// Decodes RELR words, calling `each` with every offset (ascending). Stops
/// with an error message at an odd word that follows no address, an
/// unaligned or descending address, offsets past the end of the address
/// space, or more than `limit` offsets.
pub(crate) fn relr_decode(
    words: impl Iterator<Item = u64>,
    limit: u64,
    mut each: impl FnMut(u64) -> Result<(), String>,
) -> Result<u64, String> {
    // The last address the words so far cover: a bitmap covers the 63
    // words after it.
    let mut covered: Option<u64> = None;
    let mut count = 0u64;
    let mut last: Option<u64> = None;
    let mut emit = |off: u64, count: &mut u64| -> Result<(), String> {
        if last.is_some_and(|l| off <= l) {
            return Err(format!("rebase offset {off:#x} is not ascending"));
        }
        last = Some(off);
        *count += 1;
        if *count > limit {
            return Err(format!("more than {limit} rebased words"));
        }
        each(off)
    };
    for (i, w) in words.enumerate() {
        if w & 1 == 0 {
            if !w.is_multiple_of(8) {
                return Err(format!("rebase entry {i}: offset {w:#x} is not 8-aligned"));
            }
            emit(w, &mut count)?;
            covered = Some(w);
        } else {
            let Some(c) = covered else {
                return Err(format!(
                    "rebase entry {i}: a bitmap with no address before it"
                ));
            };
            let overflows = || format!("rebase entry {i}: the bitmap's offsets overflow");
            let first = c.checked_add(8).ok_or_else(overflows)?;
            let mut bits = w >> 1;
            let mut at = first;
            while bits != 0 {
                if bits & 1 != 0 {
                    emit(at, &mut count)?;
                }
                bits >>= 1;
                if bits != 0 {
                    at = at.checked_add(8).ok_or_else(overflows)?;
                }
            }
            covered = Some(first.checked_add(62 * 8).ok_or_else(overflows)?);
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relr_round_trips_runs_gaps_and_long_runs() {
        let mut offs: Vec<u64> = vec![0, 8, 16, 40, 4096, 4104];
        offs.extend((0..200).map(|i| 8192 + 8 * i));
        offs.push(1 << 20);
        let words = relr_encode(&offs);
        assert!(words.len() < offs.len() / 4, "{} words", words.len());
        let mut back = Vec::new();
        let n = relr_decode(words.iter().copied(), 1 << 20, |o| {
            back.push(o);
            Ok(())
        })
        .expect("decodes");
        assert_eq!(n as usize, offs.len());
        assert_eq!(back, offs);
    }

    #[test]
    fn relr_refuses_a_leading_bitmap_and_descending_offsets() {
        assert!(relr_decode([3u64].into_iter(), 10, |_| Ok(())).is_err());
        assert!(relr_decode([16u64, 8].into_iter(), 10, |_| Ok(())).is_err());
        assert!(relr_decode([8u64, u64::MAX].into_iter(), 10, |_| Ok(())).is_err());
    }

    /// The last 8-aligned address: the next bitmap's base would be past
    /// the end of the address space (the image fuzz target's first find:
    /// an add that overflowed, a panic in builds with overflow checks).
    #[test]
    fn relr_refuses_an_address_at_the_end_of_the_address_space() {
        let last = u64::MAX - 7;
        assert_eq!(relr_decode([last].into_iter(), u64::MAX, |_| Ok(())), Ok(1));
        let e = relr_decode([last, 3].into_iter(), u64::MAX, |_| Ok(())).unwrap_err();
        assert!(e.contains("entry 1: the bitmap's offsets overflow"), "{e}");
        // A bitmap reaching the end of the address space.
        let near = u64::MAX - 7 - 62 * 8;
        let e = relr_decode([near, u64::MAX].into_iter(), u64::MAX, |_| Ok(())).unwrap_err();
        assert!(e.contains("overflow"), "{e}");
    }

    #[test]
    fn header_round_trips() {
        let h = Header {
            version: FORMAT_VERSION,
            header_size: HEADER_SIZE as u32,
            machine: MACHINE,
            build_id: [7; 32],
            tables: [(1, 2); 8],
            name: (3, 4),
            tls: TlsHeader {
                size: 5,
                align: 6,
                image_offset: 7,
                image_size: 8,
                static_use: 9,
                area_tp_offset: -10,
                area_size: 11,
                area_offset: 12,
            },
            base_align: 1 << 21,
            ..Header::default()
        };
        let bytes = h.encode();
        assert_eq!(bytes.len(), HEADER_SIZE);
        assert_eq!(Header::decode(&bytes), h);
    }
}
