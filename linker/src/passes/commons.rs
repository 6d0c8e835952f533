//! Pass: COMMON symbols become zero-filled blocks.

use crate::graph::{Block, Content, Edges, LinkGraph, Prot, SectionRole, SymbolDef, SymbolId};

/// Give every COMMON symbol a zero-filled block in `.bss.common`.
pub fn allocate_commons(graph: &mut LinkGraph) {
    let commons: Vec<(SymbolId, u64, u64)> = graph
        .symbols
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s.def {
            SymbolDef::Common { size, align } => Some((SymbolId(i as u32), size, align)),
            _ => None,
        })
        .collect();
    if commons.is_empty() {
        return;
    }
    let section = graph.section(".bss.common", Prot::ReadWrite, SectionRole::Ordinary);
    for (id, size, align) in commons {
        let object = graph.symbols[id.index()].object;
        let block = graph.add_block(Block {
            section,
            object,
            input_section: "COMMON".into(),
            input_offset: 0,
            content: Content::Zero(size),
            align,
            edges: Edges::new(),
            fde: None,
            live: true,
            addr: 0,
        });
        graph.symbols[id.index()].def = SymbolDef::Defined { block, offset: 0 };
    }
}
