//! x86-64 (System V): relocations and code templates.

pub mod reloc;
