//! x86-64 ELF relocations: the table keyed by raw `r_type`, and fixup math.
//!
//! Names and formulas follow the System V x86-64 psABI (§4.4.1, "Relocation
//! Types", and the TLS supplement "ELF Handling For Thread-Local Storage" §4.3
//! plus the TLSDESC proposal). The psABI's letters are used throughout:
//!
//! | letter | meaning |
//! | --- | --- |
//! | `S` | value of the symbol (its address, or its TLS offset for TLS kinds) |
//! | `A` | addend |
//! | `P` | address of the place being relocated |
//! | `G` | address of the symbol's GOT entry (the linker passes it as the target) |
//! | `GOT` | address of the global offset table |
//! | `Z` | size of the symbol |
//!
//! The linker reads a relocation's raw `r_type`, looks up its [`RelocInfo`]
//! with [`reloc_info`], may rewrite the [`EdgeKind`] (GOT/PLT building,
//! relaxation with [`relax_got_load`]), and finally calls [`apply`].

use crate::FixupError;
use crate::edge::{EdgeDesc, EdgeForm, EdgeTarget};
use crate::template::place_mut;

/// What a relocation (an edge of the link graph) computes. Several ELF
/// relocation types share a kind; the linker may rewrite kinds while building
/// the GOT and PLT (for example a relaxable GOT load whose target is in reach
/// becomes a [`EdgeKind::Delta32`] to the symbol itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EdgeKind {
    /// No fixup (`R_X86_64_NONE`, `R_X86_64_TLSDESC_CALL`): the place is left alone.
    None,
    /// `S + A`, 64 bits.
    Pointer64,
    /// `S + A`, 32 bits, zero-extended by the instruction (`R_X86_64_32`).
    Pointer32,
    /// `S + A`, 32 bits, sign-extended by the instruction (`R_X86_64_32S`).
    Pointer32Signed,
    /// `S + A`, 16 bits.
    Pointer16,
    /// `S + A`, 8 bits.
    Pointer8,
    /// `S + A - P`, 64 bits.
    Delta64,
    /// `S + A - P`, signed 32 bits.
    Delta32,
    /// `S + A - P`, signed 16 bits.
    Delta16,
    /// `S + A - P`, signed 8 bits.
    Delta8,
    /// `L + A - P`, signed 32 bits: a call or jump that may go through a PLT
    /// stub `L` when the symbol `S` is out of reach.
    Branch32,
    /// `G + A - P`, signed 32 bits: the linker must create a GOT entry and
    /// pass its address as the target (`R_X86_64_GOTPCREL`).
    GotDelta32,
    /// Like [`EdgeKind::GotDelta32`], but the instruction may be relaxed to a
    /// direct form when the symbol is in reach (`R_X86_64_GOTPCRELX` and,
    /// with `rex: true`, `R_X86_64_REX_GOTPCRELX`).
    GotLoadRelaxable {
        /// The instruction has a REX prefix.
        rex: bool,
    },
    /// `G + A - P`, 64 bits (`R_X86_64_GOTPCREL64`).
    GotDelta64,
    /// `G + A - GOT`, 64 bits (`R_X86_64_GOT64`): the entry's offset in the GOT.
    GotOffsetOfEntry64,
    /// `S + A - GOT`, 64 bits (`R_X86_64_GOTOFF64`).
    GotOff64,
    /// `GOT + A - P`, signed 32 bits (`R_X86_64_GOTPC32`).
    GotPc32,
    /// `GOT + A - P`, 64 bits (`R_X86_64_GOTPC64`).
    GotPc64,
    /// `Z + A`, 32 bits (`R_X86_64_SIZE32`).
    Size32,
    /// `Z + A`, 64 bits (`R_X86_64_SIZE64`).
    Size64,
    /// General dynamic TLS: `G + A - P` where `G` is a GOT pair
    /// `{module, offset}` for `__tls_get_addr` (`R_X86_64_TLSGD`).
    TlsGd,
    /// Local dynamic TLS: `G + A - P` where `G` is the module's GOT pair
    /// `{module, 0}` (`R_X86_64_TLSLD`).
    TlsLd,
    /// The symbol's offset in its module's TLS block plus `A`, signed 32 bits.
    DtpOff32,
    /// The symbol's offset in its module's TLS block plus `A`, 64 bits.
    DtpOff64,
    /// Initial exec: `G + A - P` where `G` holds the symbol's thread-pointer
    /// offset (`R_X86_64_GOTTPOFF`).
    GotTpOff,
    /// Local exec: the symbol's thread-pointer offset plus `A`, signed 32 bits.
    TpOff32,
    /// Local exec: the symbol's thread-pointer offset plus `A`, 64 bits.
    TpOff64,
    /// TLS descriptors: `G + A - P` where `G` is a descriptor pair
    /// `{resolver, argument}` (`R_X86_64_GOTPC32_TLSDESC`).
    TlsDescGot,
}

impl EdgeKind {
    /// Whether the linker must provide a GOT entry (or TLS GOT pair) for the
    /// target before [`apply`].
    pub fn needs_got_entry(self) -> bool {
        matches!(
            self,
            Self::GotDelta32
                | Self::GotLoadRelaxable { .. }
                | Self::GotDelta64
                | Self::GotOffsetOfEntry64
                | Self::TlsGd
                | Self::TlsLd
                | Self::GotTpOff
                | Self::TlsDescGot
        )
    }

    /// Whether the kind refers to thread-local storage.
    pub fn is_tls(self) -> bool {
        matches!(
            self,
            Self::TlsGd
                | Self::TlsLd
                | Self::DtpOff32
                | Self::DtpOff64
                | Self::GotTpOff
                | Self::TpOff32
                | Self::TpOff64
                | Self::TlsDescGot
        )
    }
}

/// One row of the relocation table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelocInfo {
    /// Raw ELF `r_type`.
    pub r_type: u32,
    /// psABI name, for example `"R_X86_64_PC32"`.
    pub name: &'static str,
    /// Edge kind the relocation maps to.
    pub kind: EdgeKind,
    /// Width of the field in bytes (0 for marker relocations).
    pub width: u8,
    /// The field holds a signed value.
    pub signed: bool,
    /// The computed value is relative to the place (`P` appears in it).
    pub pc_relative: bool,
}

macro_rules! table {
    ($($konst:ident = $num:expr => $kind:expr, $width:expr, $signed:expr, $pc:expr;)*) => {
        /// Every supported x86-64 relocation, sorted by `r_type`.
        pub static RELOCATIONS: &[RelocInfo] = &[
            $(RelocInfo {
                r_type: $num,
                name: stringify!($konst),
                kind: $kind,
                width: $width,
                signed: $signed,
                pc_relative: $pc,
            },)*
        ];
    };
}

// Raw r_type values from the psABI (Table 4.9 and the TLS supplement); the
// linker's tests cross-check them against `object`'s named constants.
table! {
    R_X86_64_NONE = 0 => EdgeKind::None, 0, false, false;
    R_X86_64_64 = 1 => EdgeKind::Pointer64, 8, false, false;
    R_X86_64_PC32 = 2 => EdgeKind::Delta32, 4, true, true;
    R_X86_64_PLT32 = 4 => EdgeKind::Branch32, 4, true, true;
    R_X86_64_GOTPCREL = 9 => EdgeKind::GotDelta32, 4, true, true;
    R_X86_64_32 = 10 => EdgeKind::Pointer32, 4, false, false;
    R_X86_64_32S = 11 => EdgeKind::Pointer32Signed, 4, true, false;
    R_X86_64_16 = 12 => EdgeKind::Pointer16, 2, false, false;
    R_X86_64_PC16 = 13 => EdgeKind::Delta16, 2, true, true;
    R_X86_64_8 = 14 => EdgeKind::Pointer8, 1, false, false;
    R_X86_64_PC8 = 15 => EdgeKind::Delta8, 1, true, true;
    R_X86_64_DTPOFF64 = 17 => EdgeKind::DtpOff64, 8, true, false;
    R_X86_64_TPOFF64 = 18 => EdgeKind::TpOff64, 8, true, false;
    R_X86_64_TLSGD = 19 => EdgeKind::TlsGd, 4, true, true;
    R_X86_64_TLSLD = 20 => EdgeKind::TlsLd, 4, true, true;
    R_X86_64_DTPOFF32 = 21 => EdgeKind::DtpOff32, 4, true, false;
    R_X86_64_GOTTPOFF = 22 => EdgeKind::GotTpOff, 4, true, true;
    R_X86_64_TPOFF32 = 23 => EdgeKind::TpOff32, 4, true, false;
    R_X86_64_PC64 = 24 => EdgeKind::Delta64, 8, true, true;
    R_X86_64_GOTOFF64 = 25 => EdgeKind::GotOff64, 8, true, false;
    R_X86_64_GOTPC32 = 26 => EdgeKind::GotPc32, 4, true, true;
    R_X86_64_GOT64 = 27 => EdgeKind::GotOffsetOfEntry64, 8, true, false;
    R_X86_64_GOTPCREL64 = 28 => EdgeKind::GotDelta64, 8, true, true;
    R_X86_64_GOTPC64 = 29 => EdgeKind::GotPc64, 8, true, true;
    // Large code model: `L + A - GOT`; kiln's GOT-relative 64-bit reach
    // covers every address, so the symbol itself serves as `L`.
    R_X86_64_GOTPLT64 = 30 => EdgeKind::GotOffsetOfEntry64, 8, true, false;
    R_X86_64_PLTOFF64 = 31 => EdgeKind::GotOff64, 8, true, false;
    R_X86_64_SIZE32 = 32 => EdgeKind::Size32, 4, false, false;
    R_X86_64_SIZE64 = 33 => EdgeKind::Size64, 8, false, false;
    R_X86_64_GOTPC32_TLSDESC = 34 => EdgeKind::TlsDescGot, 4, true, true;
    R_X86_64_TLSDESC_CALL = 35 => EdgeKind::None, 0, false, false;
    R_X86_64_GOTPCRELX = 41 => EdgeKind::GotLoadRelaxable { rex: false }, 4, true, true;
    R_X86_64_REX_GOTPCRELX = 42 => EdgeKind::GotLoadRelaxable { rex: true }, 4, true, true;
}

/// The generic target of a kind (see [`EdgeTarget`]).
const fn edge_target(kind: EdgeKind) -> EdgeTarget {
    match kind {
        EdgeKind::None => EdgeTarget::None,
        EdgeKind::Branch32 => EdgeTarget::Branch,
        EdgeKind::GotDelta32
        | EdgeKind::GotLoadRelaxable { .. }
        | EdgeKind::GotDelta64
        | EdgeKind::GotOffsetOfEntry64 => EdgeTarget::GotEntry {
            addend_in_entry: false,
        },
        EdgeKind::GotPc32 | EdgeKind::GotPc64 => EdgeTarget::GotBase,
        EdgeKind::Size32 | EdgeKind::Size64 => EdgeTarget::Size,
        EdgeKind::TlsGd => EdgeTarget::TlsGdPair,
        EdgeKind::TlsLd => EdgeTarget::TlsLdPair,
        EdgeKind::DtpOff32 | EdgeKind::DtpOff64 => EdgeTarget::DtpOffset,
        EdgeKind::GotTpOff => EdgeTarget::TlsIeEntry,
        EdgeKind::TpOff32 | EdgeKind::TpOff64 => EdgeTarget::TpOffset,
        EdgeKind::TlsDescGot => EdgeTarget::TlsDescriptor,
        EdgeKind::Pointer64
        | EdgeKind::Pointer32
        | EdgeKind::Pointer32Signed
        | EdgeKind::Pointer16
        | EdgeKind::Pointer8
        | EdgeKind::Delta64
        | EdgeKind::Delta32
        | EdgeKind::Delta16
        | EdgeKind::Delta8
        | EdgeKind::GotOff64 => EdgeTarget::Symbol,
    }
}

/// The generic form of a kind (see [`EdgeForm`]).
const fn edge_form(kind: EdgeKind) -> EdgeForm {
    match kind {
        EdgeKind::Pointer32 | EdgeKind::Pointer16 | EdgeKind::Pointer8 => {
            EdgeForm::Absolute { signed: false }
        }
        EdgeKind::Pointer32Signed => EdgeForm::Absolute { signed: true },
        EdgeKind::Delta32
        | EdgeKind::Delta16
        | EdgeKind::Delta8
        | EdgeKind::Branch32
        | EdgeKind::GotDelta32
        | EdgeKind::GotLoadRelaxable { .. }
        | EdgeKind::GotPc32
        | EdgeKind::TlsGd
        | EdgeKind::TlsLd
        | EdgeKind::GotTpOff
        | EdgeKind::TlsDescGot => EdgeForm::PcRelative,
        EdgeKind::Size32 | EdgeKind::DtpOff32 | EdgeKind::TpOff32 => {
            EdgeForm::Absolute { signed: true }
        }
        _ => EdgeForm::Full,
    }
}

/// The generic descriptors of [`RELOCATIONS`], index for index (the rows
/// of [`crate::edge::ALL_EDGES`] from 0).
pub(crate) const EDGES: [EdgeDesc; RELOCATIONS.len()] = {
    let mut out = [EdgeDesc::EMPTY; RELOCATIONS.len()];
    let mut i = 0;
    while i < RELOCATIONS.len() {
        let r = &RELOCATIONS[i];
        out[i] = EdgeDesc {
            r_type: r.r_type,
            name: r.name,
            width: r.width,
            pc_relative: r.pc_relative,
            target: edge_target(r.kind),
            form: edge_form(r.kind),
            uses_got_base: matches!(
                r.kind,
                EdgeKind::GotOffsetOfEntry64
                    | EdgeKind::GotOff64
                    | EdgeKind::GotPc32
                    | EdgeKind::GotPc64
            ),
            relaxable: matches!(r.kind, EdgeKind::GotLoadRelaxable { .. }),
            index: i as u16,
        };
        i += 1;
    }
    out
};

/// The table row of a descriptor, if it is one of this table's.
pub(crate) fn row_of(edge: &EdgeDesc) -> Result<&'static RelocInfo, FixupError> {
    RELOCATIONS
        .get(usize::from(edge.index))
        .filter(|r| r.r_type == edge.r_type)
        .ok_or(FixupError::Unsupported {
            isa: "x86-64",
            r_type: edge.r_type,
        })
}

/// Look up a raw `r_type`. `None` means the relocation is not supported; the
/// linker reports it with the object, section and offset it came from.
pub fn reloc_info(r_type: u32) -> Option<&'static RelocInfo> {
    RELOCATIONS
        .binary_search_by_key(&r_type, |info| info.r_type)
        .ok()
        .map(|i| &RELOCATIONS[i])
}

/// The psABI name of a raw `r_type`, or `None` if it is unknown to kiln.
pub fn reloc_name(r_type: u32) -> Option<&'static str> {
    reloc_info(r_type).map(|info| info.name)
}

pub use crate::edge::FixupValues;

/// Name used in errors for an edge kind (after any rewriting).
#[inline]
pub fn kind_name(kind: EdgeKind) -> &'static str {
    match kind {
        EdgeKind::None => "None",
        EdgeKind::Pointer64 => "Pointer64",
        EdgeKind::Pointer32 => "Pointer32",
        EdgeKind::Pointer32Signed => "Pointer32Signed",
        EdgeKind::Pointer16 => "Pointer16",
        EdgeKind::Pointer8 => "Pointer8",
        EdgeKind::Delta64 => "Delta64",
        EdgeKind::Delta32 => "Delta32",
        EdgeKind::Delta16 => "Delta16",
        EdgeKind::Delta8 => "Delta8",
        EdgeKind::Branch32 => "Branch32",
        EdgeKind::GotDelta32 => "GotDelta32",
        EdgeKind::GotLoadRelaxable { rex: false } => "GotLoadRelaxable",
        EdgeKind::GotLoadRelaxable { rex: true } => "GotLoadRelaxableRex",
        EdgeKind::GotDelta64 => "GotDelta64",
        EdgeKind::GotOffsetOfEntry64 => "GotOffsetOfEntry64",
        EdgeKind::GotOff64 => "GotOff64",
        EdgeKind::GotPc32 => "GotPc32",
        EdgeKind::GotPc64 => "GotPc64",
        EdgeKind::Size32 => "Size32",
        EdgeKind::Size64 => "Size64",
        EdgeKind::TlsGd => "TlsGd",
        EdgeKind::TlsLd => "TlsLd",
        EdgeKind::DtpOff32 => "DtpOff32",
        EdgeKind::DtpOff64 => "DtpOff64",
        EdgeKind::GotTpOff => "GotTpOff",
        EdgeKind::TpOff32 => "TpOff32",
        EdgeKind::TpOff64 => "TpOff64",
        EdgeKind::TlsDescGot => "TlsDescGot",
    }
}

/// Field layout of a kind: `(width in bytes, signed)`.
#[inline]
fn field(kind: EdgeKind) -> (u32, bool) {
    match kind {
        EdgeKind::None => (0, false),
        EdgeKind::Pointer64
        | EdgeKind::Delta64
        | EdgeKind::GotDelta64
        | EdgeKind::GotOffsetOfEntry64
        | EdgeKind::GotOff64
        | EdgeKind::GotPc64
        | EdgeKind::Size64
        | EdgeKind::DtpOff64
        | EdgeKind::TpOff64 => (8, true),
        EdgeKind::Pointer32 | EdgeKind::Size32 => (4, false),
        EdgeKind::Pointer16 => (2, false),
        EdgeKind::Pointer8 => (1, false),
        EdgeKind::Delta16 => (2, true),
        EdgeKind::Delta8 => (1, true),
        EdgeKind::Pointer32Signed
        | EdgeKind::Delta32
        | EdgeKind::Branch32
        | EdgeKind::GotDelta32
        | EdgeKind::GotLoadRelaxable { .. }
        | EdgeKind::GotPc32
        | EdgeKind::TlsGd
        | EdgeKind::TlsLd
        | EdgeKind::DtpOff32
        | EdgeKind::GotTpOff
        | EdgeKind::TpOff32
        | EdgeKind::TlsDescGot => (4, true),
    }
}

/// Compute the value a kind writes, before range checking.
#[inline]
pub fn compute(kind: EdgeKind, v: &FixupValues) -> i128 {
    let s = i128::from(v.target);
    let a = i128::from(v.addend);
    let p = i128::from(v.place);
    let got = i128::from(v.got);
    match kind {
        EdgeKind::None => 0,
        EdgeKind::Pointer64
        | EdgeKind::Pointer32
        | EdgeKind::Pointer32Signed
        | EdgeKind::Pointer16
        | EdgeKind::Pointer8 => s + a,
        // TLS offsets are signed (thread-pointer offsets are negative on x86-64).
        EdgeKind::DtpOff32 | EdgeKind::DtpOff64 | EdgeKind::TpOff32 | EdgeKind::TpOff64 => {
            i128::from(v.target as i64) + a
        }
        EdgeKind::Delta64
        | EdgeKind::Delta32
        | EdgeKind::Delta16
        | EdgeKind::Delta8
        | EdgeKind::Branch32
        | EdgeKind::GotDelta32
        | EdgeKind::GotLoadRelaxable { .. }
        | EdgeKind::GotDelta64
        | EdgeKind::TlsGd
        | EdgeKind::TlsLd
        | EdgeKind::GotTpOff
        | EdgeKind::TlsDescGot => s + a - p,
        EdgeKind::GotOffsetOfEntry64 | EdgeKind::GotOff64 => s + a - got,
        EdgeKind::GotPc32 | EdgeKind::GotPc64 => got + a - p,
        EdgeKind::Size32 | EdgeKind::Size64 => i128::from(v.size) + a,
    }
}

/// Apply a fixup of `kind` at `offset` in `content` (the block's bytes).
///
/// 64-bit fields wrap modulo 2^64 like a static linker's; narrower fields are
/// range-checked against their signedness.
#[inline(always)]
pub fn apply(
    kind: EdgeKind,
    content: &mut [u8],
    offset: u64,
    values: &FixupValues,
) -> Result<(), FixupError> {
    // Nearly every relocation of a link is a call or a PC-relative
    // reference: written here when it fits, the rest (and every error)
    // by the general path below.
    if matches!(kind, EdgeKind::Branch32 | EdgeKind::Delta32) && put_pc32(content, offset, values) {
        return Ok(());
    }
    apply_any(kind, content, offset, values)
}

/// [`apply`] of any kind, by its field and value.
#[inline(always)]
fn apply_any(
    kind: EdgeKind,
    content: &mut [u8],
    offset: u64,
    values: &FixupValues,
) -> Result<(), FixupError> {
    let (width, signed) = field(kind);
    if width == 0 {
        return Ok(());
    }
    let name = kind_name(kind);
    let value = compute(kind, values);
    write_field(name, content, offset, width, signed, value)
}

/// Write `value` into a `width`-byte little-endian field at `offset`,
/// checking that it fits (`signed` selects the range; 8-byte fields wrap).
#[inline]
pub fn write_field(
    reloc: &'static str,
    content: &mut [u8],
    offset: u64,
    width: u32,
    signed: bool,
    value: i128,
) -> Result<(), FixupError> {
    if width == 0 || width > 8 {
        return Err(FixupError::OutOfBounds {
            reloc,
            offset,
            width,
            len: content.len() as u64,
        });
    }
    let place = place_mut(reloc, content, offset, width)?;
    // 64-bit fields wrap modulo 2^64, as in a static link; narrower ones
    // must fit. (Fixed-size writes: this is the linker's hottest loop.)
    let fits = |min: i128, max: i128| {
        if value < min || value > max {
            Err(FixupError::OutOfRange {
                reloc,
                value,
                min,
                max,
            })
        } else {
            Ok(())
        }
    };
    // Each arm stores a fixed-size array: written as `copy_from_slice` of
    // `p.len()` bytes, LLVM merged the arms into one `memcpy` call of a
    // variable length (a call per relocation, 11 M instructions on synth).
    match (place, signed) {
        (p, _) if p.len() == 8 => {
            put(p, (value as u64).to_le_bytes());
        }
        (p, true) if p.len() == 4 => {
            fits(i128::from(i32::MIN), i128::from(i32::MAX))?;
            put(p, (value as i32).to_le_bytes());
        }
        (p, false) if p.len() == 4 => {
            fits(0, i128::from(u32::MAX))?;
            put(p, (value as u32).to_le_bytes());
        }
        (p, true) if p.len() == 2 => {
            fits(i128::from(i16::MIN), i128::from(i16::MAX))?;
            put(p, (value as i16).to_le_bytes());
        }
        (p, false) if p.len() == 2 => {
            fits(0, i128::from(u16::MAX))?;
            put(p, (value as u16).to_le_bytes());
        }
        (p, true) if p.len() == 1 => {
            fits(i128::from(i8::MIN), i128::from(i8::MAX))?;
            p[0] = value as i8 as u8;
        }
        (p, false) if p.len() == 1 => {
            fits(0, i128::from(u8::MAX))?;
            p[0] = value as u8;
        }
        (p, _) => {
            // Other widths: generic (no relocation of kiln's table uses them).
            let bits = width * 8;
            let (min, max) = if signed {
                (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1)
            } else {
                (0, (1i128 << bits) - 1)
            };
            fits(min, max)?;
            let bytes = (value as u64).to_le_bytes();
            p.copy_from_slice(&bytes[..p.len()]);
        }
    }
    Ok(())
}

/// `S + A - P` into the 4 bytes at `offset`, if they are there and it
/// fits a signed 32-bit field: what [`apply`] writes for
/// [`EdgeKind::Branch32`] and [`EdgeKind::Delta32`], without its
/// dispatch on the kind (synth's 401k: 25.2 M → 8.8 M instructions).
#[inline(always)]
fn put_pc32(content: &mut [u8], offset: u64, v: &FixupValues) -> bool {
    let value = i128::from(v.target) + i128::from(v.addend) - i128::from(v.place);
    let (Ok(value), Ok(at)) = (i32::try_from(value), usize::try_from(offset)) else {
        return false;
    };
    match at.checked_add(4).and_then(|end| content.get_mut(at..end)) {
        Some(place) => {
            put(place, value.to_le_bytes());
            true
        }
        None => false,
    }
}

/// Stores `bytes` into `place`, which is `N` bytes long (its caller checked).
#[inline(always)]
fn put<const N: usize>(place: &mut [u8], bytes: [u8; N]) {
    if let Ok(p) = <&mut [u8; N]>::try_from(place) {
        *p = bytes;
    }
}

/// How a relaxable GOT load was rewritten by [`relax_got_load`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relaxed {
    /// `mov foo@GOTPCREL(%rip), %reg` became `lea foo(%rip), %reg`; apply a
    /// [`EdgeKind::Delta32`] to the symbol at the same place.
    MovToLea,
    /// `call *foo@GOTPCREL(%rip)` became `addr32 call foo`; apply a
    /// [`EdgeKind::Delta32`] to the symbol at the same place.
    CallToDirect,
    /// `jmp *foo@GOTPCREL(%rip)` became `jmp foo; nop`. The displacement moved
    /// one byte back and the instruction now ends right after it: apply a
    /// [`EdgeKind::Delta32`] at `offset - 1` (place `P - 1`) with the same addend.
    JmpToDirect,
}

/// Try to relax the instruction owning a `R_X86_64_(REX_)GOTPCRELX` place at
/// `offset` (psABI appendix B.2, "Optimize GOTPCRELX Relocations"). Returns
/// `Ok(None)` when the instruction is not one kiln relaxes (the GOT is then
/// used). Only call this when the symbol is within ±2 GiB of the place.
pub fn relax_got_load(
    content: &mut [u8],
    offset: u64,
    rex: bool,
) -> Result<Option<Relaxed>, FixupError> {
    let reloc = if rex {
        "R_X86_64_REX_GOTPCRELX"
    } else {
        "R_X86_64_GOTPCRELX"
    };
    let len = content.len() as u64;
    let bounds = FixupError::OutOfBounds {
        reloc,
        offset,
        width: 4,
        len,
    };
    let off = usize::try_from(offset).map_err(|_| bounds.clone())?;
    if off < 2 || off.checked_add(4).is_none_or(|end| end > content.len()) {
        return Err(bounds);
    }
    let (op, modrm) = (content[off - 2], content[off - 1]);
    // ModRM must be RIP-relative: mod = 00, rm = 101.
    if modrm & 0xc7 != 0x05 {
        return Ok(None);
    }
    match op {
        0x8b => {
            content[off - 2] = 0x8d;
            Ok(Some(Relaxed::MovToLea))
        }
        0xff if !rex && modrm == 0x15 => {
            // addr32 prefix keeps the instruction length.
            content[off - 2] = 0x67;
            content[off - 1] = 0xe8;
            Ok(Some(Relaxed::CallToDirect))
        }
        0xff if !rex && modrm == 0x25 => {
            content[off - 2] = 0xe9;
            content[off + 3] = 0x90;
            Ok(Some(Relaxed::JmpToDirect))
        }
        _ => Ok(None),
    }
}

/// Size of one PLT stub made by [`write_plt_stub`].
pub const PLT_STUB_SIZE: usize = 8;

/// Write a PLT stub `jmpq *GOT(%rip)` (6 bytes) followed by two `int3` pads at
/// `stub_addr`, jumping through the GOT entry at `got_entry`.
pub fn write_plt_stub(
    out: &mut [u8; PLT_STUB_SIZE],
    stub_addr: u64,
    got_entry: u64,
) -> Result<(), FixupError> {
    out[0] = 0xff;
    out[1] = 0x25;
    out[6] = 0xcc;
    out[7] = 0xcc;
    let value = i128::from(got_entry) - (i128::from(stub_addr) + 6);
    write_field("PltStub", out, 2, 4, true, value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vals(place: u64, target: u64, addend: i64) -> FixupValues {
        FixupValues {
            place,
            target,
            addend,
            got: 0x5000,
            size: 24,
        }
    }

    #[test]
    fn table_is_keyed_by_raw_type() {
        assert_eq!(reloc_info(2).map(|i| i.name), Some("R_X86_64_PC32"));
        assert_eq!(reloc_info(4).map(|i| i.kind), Some(EdgeKind::Branch32));
        assert_eq!(
            reloc_info(42).map(|i| i.name),
            Some("R_X86_64_REX_GOTPCRELX")
        );
        assert_eq!(
            reloc_info(11).map(|i| i.kind),
            Some(EdgeKind::Pointer32Signed)
        );
        assert!(
            reloc_info(37).is_none(),
            "R_X86_64_IRELATIVE is not for objects"
        );
        assert!(reloc_info(200).is_none());
        for w in RELOCATIONS.windows(2) {
            assert!(
                w[0].r_type < w[1].r_type,
                "{} and {}: sorted, unique",
                w[0].name,
                w[1].name
            );
        }
        for info in RELOCATIONS {
            assert_eq!(reloc_info(info.r_type), Some(info));
        }
    }

    /// The direct write of calls and PC-relative references does what the
    /// general path does — bytes and errors — at every range limit, with
    /// wide addends, and at the end of the content and past it.
    #[test]
    fn pc32_shortcut_writes_what_the_general_path_writes() {
        let place = 0x7000_0000_0000u64;
        let mut targets = vec![0, 1, place, u64::MAX, i64::MAX as u64, 1 << 63];
        for limit in [i64::from(i32::MIN), i64::from(i32::MAX)] {
            for d in -2..=2 {
                targets.push(place.wrapping_add_signed(limit + d));
            }
        }
        let addends = [0, -4, 4, i64::MIN, i64::MAX, i64::from(i32::MIN) - 1];
        for kind in [EdgeKind::Branch32, EdgeKind::Delta32] {
            for &target in &targets {
                for &addend in &addends {
                    for offset in [0u64, 4, 5, 6, 8, 9, u64::MAX] {
                        let v = vals(place, target, addend);
                        let (mut fast, mut general) = ([0xAAu8; 10], [0xAAu8; 10]);
                        let got = apply(kind, &mut fast, offset, &v);
                        let want = apply_any(kind, &mut general, offset, &v);
                        let case = format!("{kind:?} S={target:#x} A={addend} at {offset}");
                        assert_eq!(got, want, "{case}");
                        assert_eq!(fast, general, "{case}");
                    }
                }
            }
        }
    }

    #[test]
    fn pc32_math_and_range() {
        let mut buf = [0u8; 8];
        apply(EdgeKind::Delta32, &mut buf, 2, &vals(0x1000, 0x2000, -4)).unwrap();
        assert_eq!(
            i32::from_le_bytes(buf[2..6].try_into().unwrap()),
            0x1000 - 4
        );
        let far = vals(0x1000, 0x1_0000_1000, 0);
        let err = apply(EdgeKind::Delta32, &mut buf, 0, &far).unwrap_err();
        assert!(matches!(
            err,
            FixupError::OutOfRange {
                reloc: "Delta32",
                ..
            }
        ));
        let back = vals(0x8000_1000, 0x1000, 0);
        assert!(apply(EdgeKind::Delta32, &mut buf, 0, &back).is_ok());
        let too_far_back = vals(0x8000_1001, 0x1000, 0);
        assert!(apply(EdgeKind::Delta32, &mut buf, 0, &too_far_back).is_err());
    }

    #[test]
    fn abs32_signed_and_unsigned() {
        let mut buf = [0u8; 4];
        assert!(apply(EdgeKind::Pointer32, &mut buf, 0, &vals(0, 0xffff_fff0, 0)).is_ok());
        assert_eq!(buf, [0xf0, 0xff, 0xff, 0xff]);
        assert!(
            apply(
                EdgeKind::Pointer32Signed,
                &mut buf,
                0,
                &vals(0, 0xffff_fff0, 0)
            )
            .is_err()
        );
        assert!(
            apply(
                EdgeKind::Pointer32Signed,
                &mut buf,
                0,
                &vals(0, 0x7fff_fff0, 0)
            )
            .is_ok()
        );
        assert!(apply(EdgeKind::Pointer32, &mut buf, 0, &vals(0, 0x1_0000_0000, 0)).is_err());
        assert!(apply(EdgeKind::Pointer32, &mut buf, 0, &vals(0, 0x10, -0x11)).is_err());
    }

    #[test]
    fn got_and_size_kinds() {
        let mut buf = [0u8; 8];
        apply(EdgeKind::GotOff64, &mut buf, 0, &vals(0, 0x5100, 8)).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 0x108);
        apply(EdgeKind::GotPc64, &mut buf, 0, &vals(0x4000, 0, 0)).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 0x1000);
        apply(EdgeKind::Size64, &mut buf, 0, &vals(0, 0, 1)).unwrap();
        assert_eq!(u64::from_le_bytes(buf), 25);
        apply(
            EdgeKind::Pointer64,
            &mut buf,
            0,
            &vals(0, 0xffff_ffff_ffff_fff0, 0x20),
        )
        .unwrap();
        assert_eq!(u64::from_le_bytes(buf), 0x10, "64-bit fields wrap");
    }

    #[test]
    fn odd_widths() {
        let mut buf = [0u8; 16];
        assert!(write_field("t", &mut buf, 0, 0, false, 0).is_err());
        assert!(write_field("t", &mut buf, 0, 16, false, 0).is_err());
        write_field("t", &mut buf, 0, 3, false, 0x123456).unwrap();
        assert_eq!(&buf[..4], &[0x56, 0x34, 0x12, 0]);
        assert!(write_field("t", &mut buf, 0, 3, true, 0x800000).is_err());
        write_field("t", &mut buf, 0, 1, true, -1).unwrap();
        assert_eq!(buf[0], 0xff);
        assert!(write_field("t", &mut buf, 0, 2, false, 0x10000).is_err());
    }

    #[test]
    fn out_of_bounds_place() {
        let mut buf = [0u8; 5];
        let err = apply(EdgeKind::Delta32, &mut buf, 2, &vals(0, 0, 0)).unwrap_err();
        assert!(matches!(
            err,
            FixupError::OutOfBounds {
                offset: 2,
                width: 4,
                len: 5,
                ..
            }
        ));
        assert!(apply(EdgeKind::Pointer64, &mut buf, u64::MAX, &vals(0, 0, 0)).is_err());
    }

    #[test]
    fn relaxations() {
        // mov 0x0(%rip),%rax  = 48 8b 05 <disp32>
        let mut mov = [0x48, 0x8b, 0x05, 0, 0, 0, 0];
        assert_eq!(
            relax_got_load(&mut mov, 3, true),
            Ok(Some(Relaxed::MovToLea))
        );
        assert_eq!(mov[1], 0x8d);
        // call *0x0(%rip) = ff 15 <disp32>
        let mut call = [0xff, 0x15, 0, 0, 0, 0];
        assert_eq!(
            relax_got_load(&mut call, 2, false),
            Ok(Some(Relaxed::CallToDirect))
        );
        assert_eq!(&call[..2], &[0x67, 0xe8]);
        // jmp *0x0(%rip) = ff 25 <disp32>
        let mut jmp = [0xff, 0x25, 0, 0, 0, 0];
        assert_eq!(
            relax_got_load(&mut jmp, 2, false),
            Ok(Some(Relaxed::JmpToDirect))
        );
        assert_eq!(jmp, [0xe9, 0x25, 0, 0, 0, 0x90]);
        // The relaxed jmp lands on S: field at P-1, instruction ends at P+3.
        let (p, target) = (0x1000_0002u64, 0x1234_5678u64);
        apply(EdgeKind::Delta32, &mut jmp, 1, &vals(p - 1, target, -4)).unwrap();
        let rel = i32::from_le_bytes(jmp[1..5].try_into().unwrap());
        assert_eq!((p + 3).wrapping_add_signed(i64::from(rel)), target);
        // add 0x0(%rip),%rax = 48 03 05: not relaxed
        let mut add = [0x48, 0x03, 0x05, 0, 0, 0, 0];
        assert_eq!(relax_got_load(&mut add, 3, true), Ok(None));
        assert!(relax_got_load(&mut add, 1, true).is_err());
        assert!(relax_got_load(&mut add, 5, true).is_err());
    }

    #[test]
    fn plt_stub_bytes() {
        let mut stub = [0u8; PLT_STUB_SIZE];
        write_plt_stub(&mut stub, 0x1000, 0x2000).unwrap();
        assert_eq!(stub, [0xff, 0x25, 0xfa, 0x0f, 0, 0, 0xcc, 0xcc]);
        assert!(write_plt_stub(&mut stub, 0x1000, 0x2_0000_0000).is_err());
    }
}
