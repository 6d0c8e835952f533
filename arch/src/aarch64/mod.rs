//! AArch64 (AAPCS64): relocations and code templates.

pub mod reloc;
