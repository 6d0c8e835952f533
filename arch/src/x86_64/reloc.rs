//! x86-64 ELF relocations: the table keyed by raw `r_type`, and fixup math.
