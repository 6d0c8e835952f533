//! The ISA-generic view of relocations: what a linker's passes need to know
//! about an edge of the link graph without naming an ISA.
//!
//! A linker decodes each raw ELF `r_type` once with [`RelocArch::edge`] into
//! a `&'static` [`EdgeDesc`] and keeps that on the edge. Its passes read the
//! descriptor's flags (does the edge need a GOT entry, a TLS descriptor, a
//! PLT stub or veneer? may it be relaxed?) and finally call
//! [`RelocArch::apply`] with the psABI values in [`FixupValues`]. The
//! descriptor points back into the ISA's own table, so applying it costs no
//! second lookup.

use crate::template::Template;
use crate::{Arch, FixupError};

/// What the linker passes as [`FixupValues::target`] for an edge, and so
/// what it must create first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EdgeTarget {
    /// A marker: nothing is computed or written (`R_X86_64_NONE`,
    /// `R_AARCH64_TLSDESC_CALL`).
    None,
    /// `S`: the symbol's address.
    Symbol,
    /// A direct call or jump: `S`, or `L` (a PLT stub or veneer that reaches
    /// `S`) when `S` is outside [`RelocArch::BRANCH_RANGE`] of the place.
    Branch,
    /// `G`: the address of a GOT entry for the symbol.
    GotEntry {
        /// The entry holds `S + A` and the fixup ignores `A` (aarch64's
        /// `G(GDAT(S + A))`); otherwise the entry holds `S` and the fixup
        /// adds `A` (x86-64's `G + A - P`).
        addend_in_entry: bool,
    },
    /// `G`: a GOT slot holding the symbol's thread-pointer offset (initial exec).
    TlsIeEntry,
    /// `G`: a TLS descriptor (two GOT slots: resolver, argument).
    TlsDescriptor,
    /// `G`: a general-dynamic GOT pair `{module, offset}` for `__tls_get_addr`.
    TlsGdPair,
    /// `G`: the module's local-dynamic GOT pair `{module, 0}`.
    TlsLdPair,
    /// The symbol's thread-pointer offset (local exec), signed, as `u64`.
    TpOffset,
    /// The symbol's offset in its module's TLS block, signed, as `u64`.
    DtpOffset,
    /// Nothing: the fixup uses the symbol's size ([`FixupValues::size`]).
    Size,
    /// Nothing: the fixup uses the GOT's address ([`FixupValues::got`]).
    GotBase,
}

impl EdgeTarget {
    /// The linker must create a GOT slot (or slot pair) for the symbol.
    pub const fn needs_got_entry(self) -> bool {
        matches!(
            self,
            Self::GotEntry { .. }
                | Self::TlsIeEntry
                | Self::TlsDescriptor
                | Self::TlsGdPair
                | Self::TlsLdPair
        )
    }

    /// The linker must create a TLS descriptor for the symbol.
    pub const fn needs_tls_descriptor(self) -> bool {
        matches!(self, Self::TlsDescriptor)
    }

    /// The linker may have to route the edge through a PLT stub or veneer.
    pub const fn may_need_stub(self) -> bool {
        matches!(self, Self::Branch)
    }

    /// The edge refers to thread-local storage.
    pub const fn is_tls(self) -> bool {
        matches!(
            self,
            Self::TlsIeEntry
                | Self::TlsDescriptor
                | Self::TlsGdPair
                | Self::TlsLdPair
                | Self::TpOffset
                | Self::DtpOffset
        )
    }
}

/// The shape of the value an edge writes, for the checks a linker makes
/// before placing code (can the field reach a host symbol? can the image be
/// rebased?), independent of its [`EdgeTarget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EdgeForm {
    /// A 64-bit value (it wraps: every address fits), or no value at all.
    Full,
    /// A narrower absolute address (`S + A` in [`EdgeDesc::width`] bytes or
    /// an instruction's immediates): it must fit, and rebasing the image
    /// changes it.
    Absolute {
        /// The field is sign-extended by its user (`R_X86_64_32S`).
        signed: bool,
    },
    /// Part of an absolute address in an instruction's immediate (aarch64
    /// `MOVW_UABS_G*`): any address can be built, but rebasing changes it.
    AbsoluteInsn,
    /// A narrower PC-relative displacement (or page displacement).
    PcRelative,
    /// The low bits of an address below its page (aarch64 `:lo12:`):
    /// unchanged when the image moves by whole pages.
    PageOffset,
}

/// One relocation type of one ISA, as the generic passes see it. Only the
/// ISA tables make these ([`RelocArch::edge`], [`RelocArch::edges`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdgeDesc {
    /// Raw ELF `r_type`.
    pub r_type: u32,
    /// psABI name (`"R_X86_64_PC32"`, `"R_AARCH64_CALL26"`).
    pub name: &'static str,
    /// Bytes of the place the fixup reads and writes (0 for markers).
    pub width: u8,
    /// `P` enters the value (the fixup moves with the place).
    pub pc_relative: bool,
    /// What the target is and what the linker must create for it.
    pub target: EdgeTarget,
    /// The shape of the written value (reach, rebasing).
    pub form: EdgeForm,
    /// The fixup also needs the GOT's address ([`FixupValues::got`]).
    pub uses_got_base: bool,
    /// [`RelocArch::relax`] may turn the GOT access into a direct one, or
    /// the TLS access (initial exec, descriptor) into local exec.
    pub relaxable: bool,
    /// Row of [`ALL_EDGES`]: the [`EdgeId`] of the descriptor (an ISA's
    /// own table row plus the ISA's first row).
    pub(crate) index: u16,
}

/// The first row of aarch64's descriptors in [`ALL_EDGES`] (x86-64's come
/// first).
pub(crate) const AARCH64_ROW: u16 = crate::x86_64::reloc::EDGES.len() as u16;

const ALL_LEN: usize = crate::x86_64::reloc::EDGES.len() + crate::aarch64::reloc::EDGES.len();

/// Every ISA's descriptors, x86-64's then aarch64's: the one copy of each,
/// which [`RelocArch::edges`] and [`EdgeId::desc`] hand out.
pub(crate) static ALL_EDGES: [EdgeDesc; ALL_LEN] = {
    let x = crate::x86_64::reloc::EDGES;
    let a = crate::aarch64::reloc::EDGES;
    let mut out = [EdgeDesc::EMPTY; ALL_LEN];
    let mut i = 0;
    while i < ALL_LEN {
        out[i] = if i < x.len() { x[i] } else { a[i - x.len()] };
        out[i].index = i as u16;
        i += 1;
    }
    out
};

const _: () = assert!(ALL_LEN < u16::MAX as usize);

/// A 2-byte handle of an [`EdgeDesc`] (its ISA and row), which a link graph
/// keeps on each edge instead of an 8-byte pointer; it dereferences to the
/// descriptor, so `kind.width` reads as on the descriptor itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct EdgeId(u16);

impl EdgeId {
    /// The handle's bits (distinct for distinct descriptors, small for
    /// each ISA's: usable as a table index).
    #[inline(always)]
    pub fn raw(self) -> u16 {
        self.0
    }

    /// The descriptor.
    #[inline(always)]
    pub fn desc(self) -> &'static EdgeDesc {
        // Only `From<&EdgeDesc>` makes an `EdgeId`, from a descriptor of
        // `ALL_EDGES` (only the ISA tables hold descriptors with a valid
        // `index`), so the row is in range; the indexing checks it anyway.
        &ALL_EDGES[usize::from(self.0)]
    }
}

impl From<&'static EdgeDesc> for EdgeId {
    #[inline(always)]
    fn from(desc: &'static EdgeDesc) -> Self {
        debug_assert!(core::ptr::eq(&ALL_EDGES[usize::from(desc.index)], desc));
        EdgeId(desc.index)
    }
}

impl core::ops::Deref for EdgeId {
    type Target = EdgeDesc;
    #[inline(always)]
    fn deref(&self) -> &EdgeDesc {
        self.desc()
    }
}

impl core::fmt::Debug for EdgeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name)
    }
}

impl EdgeDesc {
    /// Placeholder for building tables in `const` context.
    pub(crate) const EMPTY: Self = Self {
        r_type: u32::MAX,
        name: "",
        width: 0,
        pc_relative: false,
        target: EdgeTarget::None,
        form: EdgeForm::Full,
        uses_got_base: false,
        relaxable: false,
        index: u16::MAX,
    };
}

/// The values a fixup is computed from, in psABI terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixupValues {
    /// `P`: the address of the place.
    pub place: u64,
    /// What [`EdgeDesc::target`] says: `S`, `L`, `G`, or a TLS offset (a
    /// signed value stored as `u64`).
    pub target: u64,
    /// `A`.
    pub addend: i64,
    /// `GOT`: the address of the global offset table (0 if the graph has none).
    pub got: u64,
    /// `Z`: the symbol's size.
    pub size: u64,
}

/// What [`RelocArch::relax`] turned a GOT access into: apply `edge` to the
/// symbol itself (no GOT entry) at `offset + place_delta` (place `P +
/// place_delta`), same addend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Relaxation {
    /// The edge to apply instead.
    pub edge: &'static EdgeDesc,
    /// How far the place moved (x86-64 `jmp *` → `jmp`: −1).
    pub place_delta: i8,
}

/// The relocation side of an ISA: decoding, fixups, relaxation, padding and
/// branch-range extension. Implemented by [`X86_64`](crate::X86_64) and
/// [`Aarch64`](crate::Aarch64); generic linker code is written over
/// `A: RelocArch` and never matches on an ISA's relocation types.
pub trait RelocArch: Arch {
    /// Code padding, repeated by address: byte `i` of the pattern goes at
    /// addresses `≡ i (mod 4)`. It traps if executed (`int3`, `brk #0`).
    const CODE_FILL: [u8; 4];
    /// Inclusive range of `S - P` a direct call ([`EdgeTarget::Branch`])
    /// reaches with its usual addend; beyond it the linker needs a stub.
    const BRANCH_RANGE: (i64, i64);
    /// Shape of a veneer (a jump to a fixed target, placed near its caller
    /// when the target is out of [`RelocArch::BRANCH_RANGE`]), or `None` if
    /// the ISA needs none (x86-64: a rel32 call reaches the whole JIT slab,
    /// and anything farther goes through a PLT stub and GOT entry).
    const VENEER: Option<Template>;

    /// Every relocation type the ISA supports, sorted by `r_type`.
    fn edges() -> &'static [EdgeDesc];

    /// Decodes a raw `r_type`; `None` means unsupported, and the linker
    /// reports it with the object, section, offset and type.
    fn edge(r_type: u32) -> Option<&'static EdgeDesc> {
        let edges = Self::edges();
        edges
            .binary_search_by_key(&r_type, |e| e.r_type)
            .ok()
            .map(|i| &edges[i])
    }

    /// Applies `edge` at `offset` in `content` (the block's bytes).
    ///
    /// # Errors
    /// [`FixupError::OutOfRange`] / [`FixupError::Misaligned`] when the
    /// value does not fit, [`FixupError::OutOfBounds`] when the place runs
    /// past `content`, [`FixupError::BadInstruction`] when the place does not
    /// hold an instruction the type applies to, [`FixupError::Unsupported`]
    /// for a descriptor of another ISA. `content` is unchanged on error.
    fn apply(
        edge: &EdgeDesc,
        content: &mut [u8],
        offset: u64,
        v: &FixupValues,
    ) -> Result<(), FixupError>;

    /// Rewrites the instruction of a [`EdgeDesc::relaxable`] edge at
    /// `offset` into a direct access, returning the edge to apply instead
    /// (whose [`EdgeDesc::target`] says what to pass: the symbol, its TP
    /// offset, or nothing), or `Ok(None)` (nothing changed) if it cannot be
    /// relaxed.
    ///
    /// GOT accesses: call it only when the symbol is in the direct form's
    /// reach (x86-64: ±2 GiB of the place; aarch64: ±4 GiB of pages) and, on
    /// aarch64, for every GOT access to the symbol or none: an `ADRP` of the
    /// symbol's page paired with an unrelaxed GOT load would load the wrong
    /// word. TLS accesses (aarch64 IE and descriptor sequences → local exec):
    /// only when the TP offset is fixed at link time, and for every
    /// instruction of the sequence.
    ///
    /// # Errors
    /// [`FixupError::OutOfBounds`] if the instruction runs past `content`.
    fn relax(
        edge: &EdgeDesc,
        content: &mut [u8],
        offset: u64,
    ) -> Result<Option<Relaxation>, FixupError>;

    /// Whether a GOT access at `place` may be relaxed to a direct access of
    /// `target` with `addend` one edge at a time: the direct form reaches
    /// it, and relaxing one access of a symbol does not require relaxing the
    /// others. The default (`false`) keeps every GOT access.
    fn may_relax_got(place: u64, target: u64, addend: i64) -> bool {
        let _ = (place, target, addend);
        false
    }

    /// Writes a veneer ([`RelocArch::VENEER`]) at `at` that jumps to `target`.
    ///
    /// # Errors
    /// Short buffer, misaligned `at`, `target` out of the veneer's reach, or
    /// [`FixupError::NoTemplate`] when the ISA has no veneer.
    fn write_veneer(buf: &mut [u8], at: u64, target: u64) -> Result<(), FixupError>;

    /// Fills `buf`, whose first byte is at address `addr`, with
    /// [`RelocArch::CODE_FILL`].
    fn fill_code(buf: &mut [u8], addr: u64) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = Self::CODE_FILL[(addr.wrapping_add(i as u64) % 4) as usize];
        }
    }

    /// Whether a direct call at `place` reaches `target` (see
    /// [`RelocArch::BRANCH_RANGE`]).
    fn branch_reaches(place: u64, target: u64) -> bool {
        let d = i128::from(target) - i128::from(place);
        let (min, max) = Self::BRANCH_RANGE;
        (i128::from(min)..=i128::from(max)).contains(&d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_flags() {
        assert!(EdgeTarget::TlsDescriptor.needs_got_entry());
        assert!(EdgeTarget::TlsDescriptor.needs_tls_descriptor());
        assert!(EdgeTarget::TlsDescriptor.is_tls());
        assert!(!EdgeTarget::TpOffset.needs_got_entry());
        assert!(EdgeTarget::Branch.may_need_stub());
        assert!(!EdgeTarget::Symbol.may_need_stub());
        assert!(
            EdgeTarget::GotEntry {
                addend_in_entry: false
            }
            .needs_got_entry()
        );
    }
}

#[cfg(test)]
mod id_tests {
    use super::*;
    use crate::{Aarch64, X86_64};

    #[test]
    fn every_descriptor_round_trips_through_its_id() {
        for d in X86_64::edges().iter().chain(Aarch64::edges()) {
            let id = EdgeId::from(d);
            assert!(core::ptr::eq(id.desc(), d), "{}", d.name);
            assert_eq!(id.r_type, d.r_type);
        }
        assert_eq!(X86_64::edges().len(), usize::from(AARCH64_ROW));
        assert_eq!(X86_64::edges().len() + Aarch64::edges().len(), ALL_LEN);
        assert_eq!(core::mem::size_of::<EdgeId>(), 2);
    }
}
