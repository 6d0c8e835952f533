//! Pass: resolve the graph's own symbols. Once placed, every global the
//! graph defines has its final address: a standalone link needs nothing
//! more, the engine's object layer reports them (other units waiting on
//! them at Resolved go on).

use super::{DefinedFlags, DefinedSymbol, Prepared};
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
}
