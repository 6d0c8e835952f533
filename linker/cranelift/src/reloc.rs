//! Cranelift's relocation kinds as raw ELF `r_type`s, so that kiln's
//! linker applies them with its psABI tables (the same mapping as
//! cranelift-object's ELF writer).

use cranelift_codegen::binemit::Reloc;

/// The x86-64 `r_type` for `reloc`, or `None` if kiln cannot link it.
///
/// Direct calls (`X86CallPCRel4`) become `R_X86_64_PLT32`: kiln calls
/// through a stub when the callee is more than 2 GiB away instead of
/// failing, which cranelift-jit could not.
#[cfg(target_arch = "x86_64")]
pub(crate) fn elf_r_type(reloc: Reloc) -> Option<u32> {
    // psABI Table 4.9 numbers; `kiln_arch::x86_64::reloc::reloc_info`
    // names each, and a test checks the names.
    Some(match reloc {
        Reloc::Abs4 => 10,                                 // R_X86_64_32
        Reloc::Abs8 => 1,                                  // R_X86_64_64
        Reloc::X86PCRel4 => 2,                             // R_X86_64_PC32
        Reloc::X86CallPCRel4 | Reloc::X86CallPLTRel4 => 4, // R_X86_64_PLT32
        Reloc::X86GOTPCRel4 => 9,                          // R_X86_64_GOTPCREL
        Reloc::ElfX86_64TlsGd => 19,                       // R_X86_64_TLSGD
        _ => return None,
    })
}

/// kiln's in-process linker links x86-64 code only.
#[cfg(not(target_arch = "x86_64"))]
pub(crate) fn elf_r_type(_reloc: Reloc) -> Option<u32> {
    None
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use kiln_arch::x86_64::reloc::reloc_name;

    #[test]
    fn numbers_name_the_psabi_relocations() {
        let expect = [
            (Reloc::Abs4, "R_X86_64_32"),
            (Reloc::Abs8, "R_X86_64_64"),
            (Reloc::X86PCRel4, "R_X86_64_PC32"),
            (Reloc::X86CallPCRel4, "R_X86_64_PLT32"),
            (Reloc::X86CallPLTRel4, "R_X86_64_PLT32"),
            (Reloc::X86GOTPCRel4, "R_X86_64_GOTPCREL"),
            (Reloc::ElfX86_64TlsGd, "R_X86_64_TLSGD"),
        ];
        for (reloc, name) in expect {
            let r_type = elf_r_type(reloc).expect("mapped");
            assert_eq!(reloc_name(r_type), Some(name), "{reloc:?}");
        }
        assert_eq!(elf_r_type(Reloc::Arm64Call), None);
    }
}
