//! Errors shared by every ISA's fixup math.

/// Why a fixup could not be applied. The linker wraps it with the object,
/// section, offset and relocation type it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FixupError {
    /// The computed value does not fit the field (user error: the code model's reach was exceeded).
    #[error("{reloc}: value {} is out of range [{}, {}]", signed_hex(*value), signed_hex(*min), signed_hex(*max))]
    OutOfRange {
        /// Relocation or edge kind name.
        reloc: &'static str,
        /// The value that did not fit.
        value: i128,
        /// Smallest representable value.
        min: i128,
        /// Largest representable value.
        max: i128,
    },
    /// The value must be a multiple of `align` and is not.
    #[error("{reloc}: value {} is not a multiple of {align}", signed_hex(*value))]
    Misaligned {
        /// Relocation or edge kind name.
        reloc: &'static str,
        /// The misaligned value.
        value: i128,
        /// Required alignment in bytes.
        align: u32,
    },
    /// The place does not lie inside its block.
    #[error(
        "{reloc}: a {width}-byte place at offset {offset:#x} runs past the end of its {len}-byte block"
    )]
    OutOfBounds {
        /// Relocation or edge kind name.
        reloc: &'static str,
        /// Offset of the place in its block.
        offset: u64,
        /// Width of the place in bytes.
        width: u32,
        /// Length of the block.
        len: u64,
    },
    /// The instruction at the place is not the one the relocation expects.
    #[error("{reloc}: unexpected instruction at the place ({detail})")]
    BadInstruction {
        /// Relocation or edge kind name.
        reloc: &'static str,
        /// What was expected.
        detail: &'static str,
    },
    /// A GOT entry (an address, initial-exec offset, TLS descriptor or
    /// module pair) for a symbol plus a non-zero addend: the ISA puts the
    /// addend into the entry (aarch64's `G(GDAT(S + A))`), and the linker's
    /// entries are one per symbol (user error: hand-written assembly such as
    /// `:gottprel:v+8`; compilers take the offset after the load).
    #[error(
        "{reloc}: a GOT entry for a symbol plus an addend ({}) is not supported; add the offset after loading the entry",
        signed_hex(i128::from(*addend))
    )]
    AddendInGotEntry {
        /// Relocation or edge kind name.
        reloc: &'static str,
        /// The addend the relocation carries.
        addend: i64,
    },
    /// The relocation type is not in this ISA's table (user error: an object kiln cannot link yet).
    #[error("{isa}: unsupported relocation type {r_type}")]
    Unsupported {
        /// ISA name (`"x86-64"`, `"aarch64"`).
        isa: &'static str,
        /// Raw ELF `r_type`.
        r_type: u32,
    },
    /// The ISA has no such template (usage error: e.g. a veneer on x86-64,
    /// whose rel32 calls need none; see `RelocArch::VENEER`).
    #[error("{isa}: no {what} template")]
    NoTemplate {
        /// ISA name.
        isa: &'static str,
        /// The template asked for.
        what: &'static str,
    },
    /// The host cannot run this code (implementation limit: e.g. no XSAVE on an x86-64 host).
    #[error("{what}: not supported on this host ({detail})")]
    HostUnsupported {
        /// What was asked for.
        what: &'static str,
        /// Why the host cannot provide it.
        detail: &'static str,
    },
}

/// Why the reentry machinery could not be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReentryError {
    /// [`set_reentry_handler`](crate::set_reentry_handler) was already called
    /// in this process (usage error: the handler is process-wide and installed once).
    #[error("the reentry handler is already installed in this process")]
    HandlerAlreadySet,
}

/// `-0x80000000` rather than 128-bit two's complement.
fn signed_hex(v: i128) -> String {
    if v < 0 {
        format!("-{:#x}", v.unsigned_abs())
    } else {
        format!("{v:#x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_bounds_read_as_signed_hex() {
        let e = FixupError::OutOfRange {
            reloc: "R_X86_64_PC32",
            value: 0x1_0000_0000,
            min: -0x8000_0000,
            max: 0x7fff_ffff,
        };
        assert_eq!(
            e.to_string(),
            "R_X86_64_PC32: value 0x100000000 is out of range [-0x80000000, 0x7fffffff]"
        );
    }
}
