//! The ISA a link targets: which `kiln-arch` relocation table decodes its
//! objects' relocations and applies its fixups.
//!
//! The graph and the passes name no ISA: an edge holds a `&'static`
//! [`EdgeDesc`] (decoded once by [`Isa::edge`]), the passes read its flags,
//! and the few steps that need the ISA's code (fixup, PLT stubs, code fill)
//! are generic over [`RelocArch`] and entered through [`Isa`] once per
//! block or pass, not per edge.

use kiln_arch::{Aarch64, Arch, EdgeDesc, RelocArch, X86_64};

/// An ISA kiln links for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Isa {
    /// x86-64 System V (`EM_X86_64`).
    #[default]
    X86_64,
    /// AArch64 (`EM_AARCH64`).
    Aarch64,
}

/// Raw `r_type`s below this are decoded by direct index (x86-64's end at
/// 42, aarch64's at 569); others by bisection.
const FAST_TYPES: usize = 576;

/// `table[r_type]` for the `r_type`s below [`FAST_TYPES`].
type FastTable = Box<[Option<&'static EdgeDesc>]>;

fn fast_table<A: RelocArch>() -> FastTable {
    (0..FAST_TYPES).map(|t| A::edge(t as u32)).collect()
}

impl Isa {
    /// The ISA kiln runs on (what in-process linking targets).
    pub const HOST: Isa = if cfg!(target_arch = "aarch64") {
        Isa::Aarch64
    } else {
        Isa::X86_64
    };

    /// The ISA of ELF `e_machine`, if kiln links for it.
    pub fn from_machine(machine: u16) -> Option<Isa> {
        match machine {
            X86_64::ELF_MACHINE => Some(Isa::X86_64),
            Aarch64::ELF_MACHINE => Some(Isa::Aarch64),
            _ => None,
        }
    }

    /// ELF `e_machine`.
    pub fn machine(self) -> u16 {
        match self {
            Isa::X86_64 => X86_64::ELF_MACHINE,
            Isa::Aarch64 => Aarch64::ELF_MACHINE,
        }
    }

    /// [`Arch::is_static_runtime_helper`]: only the static runtime
    /// library (libgcc.a) defines `name`.
    pub(crate) fn is_static_runtime_helper(self, name: &str) -> bool {
        match self {
            Isa::X86_64 => X86_64::is_static_runtime_helper(name),
            Isa::Aarch64 => Aarch64::is_static_runtime_helper(name),
        }
    }

    /// Whether `name` is a static runtime helper of any ISA kiln links
    /// for (the names differ between ISAs).
    pub(crate) fn any_static_runtime_helper(name: &str) -> bool {
        [Isa::X86_64, Isa::Aarch64]
            .into_iter()
            .any(|isa| isa.is_static_runtime_helper(name))
    }

    /// [`Arch::loaders_bind`]: kiln's image loaders bind `name` to a copy
    /// of their own.
    pub(crate) fn loaders_bind(self, name: &str) -> bool {
        match self {
            Isa::X86_64 => X86_64::loaders_bind(name),
            Isa::Aarch64 => Aarch64::loaders_bind(name),
        }
    }

    /// Human-readable name (`"x86-64"`, `"aarch64"`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::X86_64 => X86_64::NAME,
            Isa::Aarch64 => Aarch64::NAME,
        }
    }

    /// Decodes a raw `r_type`; `None` if kiln does not support it.
    #[inline]
    pub fn edge(self, r_type: u32) -> Option<&'static EdgeDesc> {
        static X86: std::sync::OnceLock<FastTable> = std::sync::OnceLock::new();
        static A64: std::sync::OnceLock<FastTable> = std::sync::OnceLock::new();
        let (table, slow): (_, fn(u32) -> Option<&'static EdgeDesc>) = match self {
            Isa::X86_64 => (X86.get_or_init(fast_table::<X86_64>), X86_64::edge),
            Isa::Aarch64 => (A64.get_or_init(fast_table::<Aarch64>), Aarch64::edge),
        };
        match table.get(r_type as usize) {
            Some(e) => *e,
            None => slow(r_type),
        }
    }

    /// The psABI name of a raw `r_type`, if kiln knows it.
    pub fn reloc_name(self, r_type: u32) -> Option<&'static str> {
        self.edge(r_type).map(|e| e.name)
    }

    /// The name of the ISA's first relocation whose target `pick` accepts
    /// (for errors about what such edges ask for), or `"?"`.
    pub(crate) fn name_of(self, pick: impl Fn(kiln_arch::EdgeTarget) -> bool) -> &'static str {
        self.edges()
            .iter()
            .find(|e| pick(e.target))
            .map_or("?", |e| e.name)
    }

    /// Every relocation type of the ISA.
    pub(crate) fn edges(self) -> &'static [EdgeDesc] {
        match self {
            Isa::X86_64 => X86_64::edges(),
            Isa::Aarch64 => Aarch64::edges(),
        }
    }

    /// Bytes of one PLT stub.
    pub(crate) fn plt_stub_size(self) -> usize {
        match self {
            Isa::X86_64 => X86_64::PLT_STUB.size,
            Isa::Aarch64 => Aarch64::PLT_STUB.size,
        }
    }

    /// Writes a PLT stub at `stub` (its bytes `buf`) that jumps through the
    /// GOT slot at `got_slot`.
    pub(crate) fn write_plt_stub(
        self,
        buf: &mut [u8],
        stub: u64,
        got_slot: u64,
    ) -> Result<(), kiln_arch::FixupError> {
        match self {
            Isa::X86_64 => X86_64::write_plt_stub(buf, stub, got_slot),
            Isa::Aarch64 => Aarch64::write_plt_stub(buf, stub, got_slot),
        }
    }

    /// Fills `buf` (first byte at `addr`) with trapping code padding.
    pub(crate) fn fill_code(self, buf: &mut [u8], addr: u64) {
        match self {
            Isa::X86_64 => X86_64::fill_code(buf, addr),
            Isa::Aarch64 => Aarch64::fill_code(buf, addr),
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
