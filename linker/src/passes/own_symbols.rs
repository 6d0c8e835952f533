//! Pass: resolve the graph's own symbols. Once placed, every global the
//! graph defines has its final address: a standalone link needs nothing
//! more, the engine's object layer reports them (other units waiting on
//! them at Resolved go on).

use super::{DefinedFlags, DefinedSymbol, Prepared};
use crate::error::LinkError;
use crate::graph::{Linkage, Scope, SymbolDef, SymbolId};

impl Prepared {
    /// Phase (a): the graph's own global symbols with final addresses.
    pub fn defined_symbols(&self) -> Vec<DefinedSymbol> {
        let g = &self.graph;
        g.global_names()
            .filter_map(|(name, id)| {
                let address = self.defined_address(id)?;
                let s = &g.symbols[id.index()];
                Some(DefinedSymbol {
                    name: name.to_string(),
                    address,
                    flags: DefinedFlags {
                        callable: s.callable,
                        weak: s.linkage == Linkage::Weak,
                        exported: s.scope == Scope::Default,
                    },
                })
            })
            .collect()
    }

    /// Phase (a), one symbol: the final address of global `id` if this graph
    /// defines it (in a live block, or as an absolute value).
    pub fn defined_address(&self, id: SymbolId) -> Option<u64> {
        let g = &self.graph;
        match g.symbols.get(id.index())?.def {
            SymbolDef::Defined { block, offset } => {
                let b = &g.blocks[block.index()];
                b.live.then(|| b.addr.wrapping_add(offset))
            }
            SymbolDef::Absolute(v) => Some(v),
            _ => None,
        }
    }

    /// The value the engine holds for global `id` if this graph defines
    /// it: its address, or for a thread-local the value through which
    /// other images' thread-local references bind to it (its TLS module
    /// and offset, `TlsModule::exported`; the module is made at step 8b).
    pub(crate) fn exported_value(&self, id: SymbolId) -> Result<Option<u64>, LinkError> {
        let Some(address) = self.defined_address(id) else {
            return Ok(None);
        };
        if !self.graph.symbols[id.index()].tls {
            return Ok(Some(address));
        }
        match &self.tls_module {
            Some(module) => module.exported(address).map(Some).ok_or_else(|| {
                LinkError::tls(format!(
                    "thread-local `{}` at offset {address:#x} of TLS module `{}` cannot be offered to other images (too many TLS modules at once, or a TLS block over 4 GiB)",
                    self.graph.symbol_name(id),
                    module.name()
                ))
            }),
            // A TLS block of no bytes (no module): its offset, which no
            // reference binds to (`Foreign::of` refuses it).
            None => Ok(Some(address)),
        }
    }
}
