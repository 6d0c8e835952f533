//! What a symbol is: flags, its definition (address + flags), its state.

use std::fmt;
use std::ops::{BitOr, BitOrAssign};

/// Properties of a symbol definition.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SymbolFlags(u8);

impl SymbolFlags {
    /// No flags: a hidden, strong data symbol.
    pub const NONE: SymbolFlags = SymbolFlags(0);
    /// Visible to `DylibLookup::ExportedOnly` searches.
    pub const EXPORTED: SymbolFlags = SymbolFlags(1);
    /// May be overridden by a strong definition while never requested.
    pub const WEAK: SymbolFlags = SymbolFlags(2);
    /// A function (lazy reexports require it).
    pub const CALLABLE: SymbolFlags = SymbolFlags(4);
    /// Has no address: materializing it has effects only (e.g. runs
    /// initializers). It can only be looked up weakly.
    pub const SIDE_EFFECTS_ONLY: SymbolFlags = SymbolFlags(8);
    /// A thread-local variable: its address is no address but a value
    /// its definer's linker gives meaning to (kiln's object layer: the TLS
    /// module and offset), and a reference binds to it only as to a
    /// thread-local.
    pub const THREAD_LOCAL: SymbolFlags = SymbolFlags(16);

    /// Whether every flag in `other` is set.
    pub const fn contains(self, other: SymbolFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// Exported?
    pub const fn is_exported(self) -> bool {
        self.contains(Self::EXPORTED)
    }
    /// Weak?
    pub const fn is_weak(self) -> bool {
        self.contains(Self::WEAK)
    }
    /// Callable?
    pub const fn is_callable(self) -> bool {
        self.contains(Self::CALLABLE)
    }
    /// Side-effects-only?
    pub const fn is_side_effects_only(self) -> bool {
        self.contains(Self::SIDE_EFFECTS_ONLY)
    }
    /// Thread-local?
    pub const fn is_thread_local(self) -> bool {
        self.contains(Self::THREAD_LOCAL)
    }
    /// The raw bits (for packing into the Ready index).
    #[cfg(not(kiln_loom))]
    pub(crate) const fn bits(self) -> u8 {
        self.0
    }
    /// Flags from [`SymbolFlags::bits`].
    #[cfg(not(kiln_loom))]
    pub(crate) const fn from_bits(bits: u8) -> SymbolFlags {
        SymbolFlags(bits)
    }
    /// These flags without `other`.
    pub const fn without(self, other: SymbolFlags) -> SymbolFlags {
        SymbolFlags(self.0 & !other.0)
    }
}

impl BitOr for SymbolFlags {
    type Output = SymbolFlags;
    fn bitor(self, rhs: SymbolFlags) -> SymbolFlags {
        SymbolFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for SymbolFlags {
    fn bitor_assign(&mut self, rhs: SymbolFlags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for SymbolFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (flag, name) in [
            (Self::EXPORTED, "exported"),
            (Self::WEAK, "weak"),
            (Self::CALLABLE, "callable"),
            (Self::SIDE_EFFECTS_ONLY, "side-effects-only"),
            (Self::THREAD_LOCAL, "thread-local"),
        ] {
            if self.contains(flag) {
                parts.push(name);
            }
        }
        if parts.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&parts.join("|"))
        }
    }
}

/// A symbol's address and flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SymbolDef {
    /// The address (0 for side-effects-only symbols).
    pub address: u64,
    /// The flags it was defined with.
    pub flags: SymbolFlags,
}

impl SymbolDef {
    /// A definition at `address` with `flags`.
    pub const fn new(address: u64, flags: SymbolFlags) -> Self {
        SymbolDef { address, flags }
    }
}

/// Where a symbol is in its life. States only move forward; `Failed` is
/// sticky.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum SymbolState {
    /// Defined by a unit that has not been asked to materialize it.
    Lazy,
    /// Its unit is running.
    Materializing,
    /// Its address is known; it must not run yet.
    Resolved,
    /// Its memory is final, but something it depends on is not emitted yet.
    Emitted,
    /// It and everything it transitively depends on are emitted: safe to run.
    Ready,
    /// It, or something it depends on, failed. Sticky.
    Failed,
}

/// The state a lookup waits for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum RequiredState {
    /// The address is known (linkers need this to close cycles); the code
    /// must not be run yet.
    Resolved,
    /// Safe to run: the symbol and all it depends on are emitted.
    Ready,
}

impl RequiredState {
    pub(crate) fn is_met_by(self, state: SymbolState) -> bool {
        match self {
            RequiredState::Resolved => matches!(
                state,
                SymbolState::Resolved | SymbolState::Emitted | SymbolState::Ready
            ),
            RequiredState::Ready => state == SymbolState::Ready,
        }
    }
}
