//! [`Prepared`]: a graph whose blocks have their final addresses (the
//! state between allocation and fixup), and the address of every symbol.

use super::Finalized;
use super::got_plt::{GotTable, SymOffsets};
use super::{ImageEnv, LinkOptions, PhaseTimings, TlsLayout};
use crate::error::LinkError;
use crate::graph::{
    Block, BlockId, FxHashMap, FxHashSet, LinkGraph, Prot, SectionId, SymbolDef, SymbolId,
};
use crate::memory::{Allocation, Prefault};

/// A graph after prune, GOT/PLT and allocation: addresses are final.
#[derive(Debug)]
pub struct Prepared {
    /// Mapping the allocation's pages (declared before `alloc`, so that it
    /// is waited for before the allocation is dropped).
    pub(super) prefault: Prefault,
    pub(super) graph: LinkGraph,
    pub(super) alloc: Allocation,
    pub(super) segments: Vec<(u64, u64, Prot)>,
    pub(super) got: GotTable,
    pub(super) got_block: Option<BlockId>,
    pub(super) plt: SymOffsets,
    pub(super) plt_block: Option<BlockId>,
    pub(super) tls: TlsLayout,
    /// The image's TLS module, once made: before its own symbols are
    /// reported (step 9), whose thread-locals other images bind to
    /// through it; else at fixup.
    pub(super) tls_module: Option<crate::runtime::tls::TlsModule>,
    pub(super) eh_frame: Option<(u64, u64)>,
    /// Resolved external addresses, by symbol.
    pub(super) externals: FxHashMap<SymbolId, u64>,
    /// Named externals that live code references (the linker's own
    /// symbols excluded), in order of first reference.
    pub(super) external_refs: Vec<SymbolId>,
    pub(super) specials: FxHashMap<SymbolId, Special>,
    /// Copies of host data that 32-bit references may not reach, by symbol.
    pub(super) copy_blocks: FxHashMap<SymbolId, BlockId>,
    /// Host code that 32-bit references may not reach: called through its
    /// PLT stub if it is out of reach once resolved.
    pub(super) reach_stubs: FxHashSet<SymbolId>,
    /// The image's `__dso_handle` slot.
    pub(super) dso_block: BlockId,
    /// Live blocks outside TLS, in address order.
    pub(super) placed: Vec<BlockId>,
    /// Placed below 2 GiB.
    pub(super) low: bool,
    /// Externals the resolver said are data defined in JIT memory
    /// ([`Prepared::mark_data_externals`]): a PLT stub can never stand in for them.
    pub(super) jit_data: FxHashSet<SymbolId>,
    /// Time spent so far (prune, allocate, lookup), for [`LinkStats`].
    pub(super) timings: PhaseTimings,
}

/// Symbols the linker defines itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Special {
    DsoHandle,
    /// `_TLS_MODULE_BASE_`: offset 0 of the image's TLS block (TLSDESC
    /// local-dynamic code adds DTPOFF offsets to it).
    TlsModuleBase,
    GlobalOffsetTable,
    Start(SectionId),
    Stop(SectionId),
}

impl Prepared {
    /// Build GOT and PLT, lay out and allocate memory: every block and
    /// linker-made symbol gets its final address. The image is placed below
    /// 2 GiB when its own code needs it (non-PIE: 32-bit absolute
    /// addresses), near the host's libraries otherwise. (Steps 5–8 of the
    /// pipeline, `passes::place`; the graph must be pruned.)
    pub fn new(graph: LinkGraph) -> Result<Prepared, LinkError> {
        Self::new_placed(graph, false)
    }

    /// [`Prepared::new`], placed below 2 GiB also when `below_2gib` says so
    /// although its own code would not need it: when non-PIE code of
    /// another image refers to its symbols with 32-bit absolute or
    /// PC-relative addresses (an image linked with others, e.g. one object
    /// of a program linked object by object).
    pub fn new_placed(graph: LinkGraph, below_2gib: bool) -> Result<Prepared, LinkError> {
        super::place(graph, below_2gib)
    }

    /// Phase (c), once every external is resolved: fixup and finalize
    /// (the last steps of the pipeline, `passes::fix_up_and_finalize`).
    pub fn finalize(self, env: &ImageEnv, options: &LinkOptions) -> Result<Finalized, LinkError> {
        let (finalized, _graph) = super::fix_up_and_finalize(self, env, options)?;
        Ok(finalized)
    }

    /// The graph.
    pub fn graph(&self) -> &LinkGraph {
        &self.graph
    }

    /// TLS layout of the image.
    pub fn tls_layout(&self) -> TlsLayout {
        self.tls
    }

    /// Records how long step 10, the externals' lookup, took.
    pub(crate) fn set_lookup_time(&mut self, took: std::time::Duration) {
        self.timings.lookup = took;
    }

    /// The address `__dso_handle` names in this image: an 8-byte slot in
    /// its read-only data, so PC-relative references to it always reach.
    /// Register the image's [`crate::runtime::DsoHandle`] there.
    pub fn dso_handle(&self) -> u64 {
        self.graph.blocks[self.dso_block.index()].addr
    }

    /// Address range of the allocation.
    pub fn memory_range(&self) -> (u64, u64) {
        (self.alloc.base(), self.alloc.len())
    }

    pub(super) fn symbol_address(&self, id: SymbolId) -> u64 {
        let g = &self.graph;
        let s = &g.symbols[id.index()];
        match s.def {
            SymbolDef::Defined { block, offset } => {
                g.blocks[block.index()].addr.wrapping_add(offset)
            }
            SymbolDef::Absolute(v) => v,
            SymbolDef::External => {
                if let Some(sp) = self.specials.get(&id) {
                    return match *sp {
                        Special::DsoHandle => self.dso_handle(),
                        Special::TlsModuleBase => 0,
                        Special::GlobalOffsetTable => self.got_base(),
                        Special::Start(sec) | Special::Stop(sec) => {
                            let live: Vec<&Block> = g.sections[sec.index()]
                                .blocks
                                .iter()
                                .map(|b| &g.blocks[b.index()])
                                .filter(|b| b.live)
                                .collect();
                            let start = live.first().map_or(0, |b| b.addr);
                            let end = live.last().map_or(0, |b| b.addr + b.content.len());
                            if matches!(sp, Special::Start(_)) {
                                start
                            } else {
                                end
                            }
                        }
                    };
                }
                self.externals.get(&id).copied().unwrap_or(0)
            }
            SymbolDef::Common { .. } | SymbolDef::Discarded => 0,
        }
    }

    pub(super) fn got_base(&self) -> u64 {
        self.got_block
            .map_or(0, |b| self.graph.blocks[b.index()].addr)
    }
}
