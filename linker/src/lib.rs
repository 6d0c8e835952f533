//! kiln-linker: links relocatable ELF objects into this process.
