//! One address per function when functions have lazy entries.
//!
//! Under lazy linking a function `f` has two addresses: its lazy entry (a
//! stub in the entries dylib, which every other object and the host get
//! when they look `f` up) and its body (in the bodies dylib). C and C++
//! require one address per function — pointers are compared, used as map
//! keys, stored in tables — so the entry's is the canonical one, and the
//! body's own image must use it too wherever it takes `f`'s address.
//!
//! [`canonical_function_addresses`] rewrites the body's graph before it is
//! added: every reference that takes the address of such an `f` (absolute
//! and PC-relative address materializations, GOT loads — the GOT entry then
//! holds the entry —, pointers in data such as vtables and function
//! tables) is retargeted to an external twin of `f`, which the link
//! resolves through the bodies' link order to the entry. Direct calls and
//! jumps (`R_X86_64_PLT32`, or a PC-relative field after a `call`/`jmp`/
//! `jcc` opcode in code) stay on the body: a call through the entry would
//! only be slower. `.eh_frame` records keep describing the body.
//!
//! References are seen through `f`'s symbol or through a local one (a
//! section symbol, as clang's `-fPIC -fno-semantic-interposition
//! -ffunction-sections` writes `lea .text.f-4(%rip)`) plus an addend that
//! lands on `f`. Code whose assembler resolved the address itself — the
//! same clang flags without `-ffunction-sections`: a `lea` with no
//! relocation — keeps the body's address there, as such code does in an
//! ELF shared library.

use crate::graph::Reach32;
use crate::graph::{
    BlockId, Edge, FxHashMap, LinkGraph, Linkage, Prot, Scope, SectionRole, Symbol, SymbolDef,
    SymbolId,
};
use crate::isa::Isa;
use kiln_arch::EdgeTarget;

/// Retargets address-taking references to the functions `with_entries`
/// (global names defined in `graph` that get a lazy entry) to external
/// twins of the same name, resolved to the entries at link time.
pub(crate) fn canonical_function_addresses(graph: &mut LinkGraph, with_entries: &[&str]) {
    // Where each function with an entry starts → its symbol (the first
    // named, when several share an address: aliases the compiler made).
    let mut at: FxHashMap<(BlockId, u64), SymbolId> = FxHashMap::default();
    let mut ids: FxHashMap<SymbolId, ()> = FxHashMap::default();
    for n in with_entries {
        if let Some(id) = graph.global_id(n)
            && let SymbolDef::Defined { block, offset } = graph.symbols[id.index()].def
        {
            at.entry((block, offset)).or_insert(id);
            ids.insert(id, ());
        }
    }
    // The guesses below read x86-64 instruction bytes; lazy entries are
    // in-process, so the graph is the host's.
    if at.is_empty() || graph.isa() != Isa::X86_64 {
        return;
    }
    // Symbol id of each function → its twin (created on first use).
    let mut twin: FxHashMap<SymbolId, SymbolId> = FxHashMap::default();
    for bi in 0..graph.blocks.len() {
        let block = &graph.blocks[bi];
        let section = &graph.sections[block.section.index()];
        if section.role == SectionRole::EhFrame || block.fde.is_some() {
            continue;
        }
        let code = section.prot == Prot::ReadExec;
        // (edge, function, addend relative to the function)
        let mut retarget = Vec::new();
        for (ei, e) in block.edges.iter().enumerate() {
            if !takes_address(e) {
                continue;
            }
            let branch = code
                && e.reach32() == Some(Reach32::PcRelative)
                && is_branch_field(block.content.bytes(), e.offset as usize);
            if branch {
                continue;
            }
            let field = code.then(|| block.content.bytes()).flatten();
            if let Some(f) = function_named(graph, &at, &ids, e, field) {
                retarget.push((ei, f));
            }
        }
        for (ei, (f, addend)) in retarget {
            let t = *twin.entry(f).or_insert_with(|| {
                let s = &graph.symbols[f.index()];
                let external = Symbol {
                    name: s.name.clone(),
                    def: SymbolDef::External,
                    object: s.object,
                    size: 0,
                    scope: Scope::Default,
                    linkage: Linkage::Strong,
                    callable: true,
                    tls: false,
                    weak_ref: false,
                };
                graph.add_symbol(external)
            });
            let edge = &mut graph.blocks[bi].edges[ei];
            edge.target = t;
            edge.set_addend(addend);
        }
    }
}

/// The function with an entry whose address edge `e` takes, with the
/// addend to use against it: a reference to its symbol, or to a local
/// symbol (a section symbol, an assembler-local alias) plus an addend that
/// lands on its first byte. A PC-relative field in code is taken to end its
/// instruction (`lea sym-4(%rip)`; an immediate after it makes the guess
/// miss, which leaves the reference on the body).
fn function_named(
    graph: &LinkGraph,
    at: &FxHashMap<(BlockId, u64), SymbolId>,
    ids: &FxHashMap<SymbolId, ()>,
    e: &Edge,
    code: Option<&[u8]>,
) -> Option<(SymbolId, i64)> {
    let s = &graph.symbols[e.target.index()];
    let SymbolDef::Defined { block, offset } = s.def else {
        return None;
    };
    if s.scope != Scope::Local {
        return ids
            .contains_key(&e.target)
            .then_some((e.target, e.addend()));
    }
    // Where the reference lands: exact for absolute addresses; for a
    // PC-relative field only in a RIP-relative operand in code (the
    // addend of one in data, such as a jump table's entry, is relative to
    // something else).
    let absolute = e.is_abs64() || e.reach32().is_some_and(Reach32::is_absolute);
    let field_end = if absolute {
        0
    } else if e.reach32() == Some(Reach32::PcRelative)
        && code.is_some_and(|b| rip_relative_field(b, e.offset as usize))
    {
        4
    } else {
        return None;
    };
    let lands = offset.checked_add_signed(e.addend() + field_end)?;
    let f = *at.get(&(block, lands))?;
    Some((f, e.addend() - (lands as i64 - offset as i64)))
}

/// Whether a relocation of this kind materializes its target's address
/// (rather than calling it, or asking its size).
fn takes_address(e: &Edge) -> bool {
    let k = e.kind.desc();
    match k.target {
        EdgeTarget::Symbol => k.width >= 4,
        EdgeTarget::GotEntry { .. } => true,
        _ => false,
    }
}

/// Whether the 32-bit field at `offset` of code `bytes` follows a ModRM
/// byte that selects RIP-relative addressing (`mod = 00`, `r/m = 101`).
fn rip_relative_field(bytes: &[u8], offset: usize) -> bool {
    offset
        .checked_sub(1)
        .and_then(|i| bytes.get(i))
        .is_some_and(|&modrm| modrm & 0xc7 == 0x05)
}

/// Whether the 32-bit field at `offset` of code `bytes` is the
/// displacement of a direct `call`, `jmp` or `jcc` (a PC-relative field of
/// an instruction that addresses memory follows a ModRM byte, which is
/// never one of these opcodes). Unknown bytes count as not a branch: the
/// reference then goes through the entry, which is always correct.
fn is_branch_field(bytes: Option<&[u8]>, offset: usize) -> bool {
    let Some(bytes) = bytes else { return false };
    let before = |n: usize| offset.checked_sub(n).and_then(|i| bytes.get(i)).copied();
    matches!(before(1), Some(0xe8 | 0xe9))
        || (before(2) == Some(0x0f) && before(1).is_some_and(|b| (0x80..=0x8f).contains(&b)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Block, Content, Edges};

    /// x86-64 relocation types the tests use.
    const R_X86_64_64: u32 = 1;
    const R_X86_64_PC32: u32 = 2;
    const R_X86_64_PLT32: u32 = 4;
    const R_X86_64_REX_GOTPCRELX: u32 = 42;

    fn edge(offset: u32, r_type: u32, target: SymbolId) -> Edge {
        Edge::new(
            offset,
            Isa::X86_64.edge(r_type).expect("known type"),
            target,
            0,
        )
    }

    /// `f` in `.text` (with a call, a jump, a `lea` and a GOT load of
    /// itself), a pointer to it in `.data`, and its FDE: only the
    /// address-taking references move to the twin.
    #[test]
    fn address_taking_references_move_to_the_entry_and_calls_stay() {
        let mut g = LinkGraph::new();
        let obj = g.add_object("a.o");
        let f = g.global("f", obj);
        let text = g.section(".text", Prot::ReadExec, SectionRole::Ordinary);
        let data = g.section(".data", Prot::ReadWrite, SectionRole::Ordinary);
        let eh = g.section(".eh_frame", Prot::Read, SectionRole::EhFrame);
        // call f; jmp f; lea f(%rip),%rax; mov f@GOTPCREL(%rip),%rax; jne f
        let mut code = vec![0xe8, 0, 0, 0, 0, 0xe9, 0, 0, 0, 0];
        code.extend([0x48, 0x8d, 0x05, 0, 0, 0, 0]);
        code.extend([0x48, 0x8b, 0x05, 0, 0, 0, 0]);
        code.extend([0x0f, 0x85, 0, 0, 0, 0]);
        let mut block = |section, content, edges: Vec<Edge>| {
            g.add_block(Block {
                section,
                object: Some(obj),
                input_section: ".x".into(),
                input_offset: 0,
                content,
                align: 8,
                edges: edges.into(),
                fde: None,
                live: true,
                addr: 0,
            })
        };
        let text_block = block(
            text,
            Content::Bytes(code),
            vec![
                edge(1, R_X86_64_PC32, f),
                edge(6, R_X86_64_PLT32, f),
                edge(13, R_X86_64_PC32, f),
                edge(20, R_X86_64_REX_GOTPCRELX, f),
                edge(26, R_X86_64_PC32, f),
            ],
        );
        let data_block = block(data, Content::Zero(8), vec![edge(0, R_X86_64_64, f)]);
        let eh_block = block(eh, Content::Zero(8), vec![edge(0, R_X86_64_PC32, f)]);
        g.symbols[f.index()].def = SymbolDef::Defined {
            block: text_block,
            offset: 0,
        };
        g.symbols[f.index()].callable = true;

        canonical_function_addresses(&mut g, &["f"]);

        let targets = |b: crate::graph::BlockId| -> Vec<SymbolId> {
            g.blocks[b.index()].edges.iter().map(|e| e.target).collect()
        };
        let text_targets = targets(text_block);
        let twin = text_targets[2];
        assert_ne!(twin, f);
        assert_eq!(text_targets, vec![f, f, twin, twin, f]);
        assert_eq!(targets(data_block), vec![twin]);
        assert_eq!(targets(eh_block), vec![f], "unwind info describes the body");
        let t = &g.symbols[twin.index()];
        assert_eq!((t.name.as_deref(), t.def), (Some("f"), SymbolDef::External));
        assert_eq!(g.global_id("f"), Some(f), "the definition stays the global");
    }

    /// `lea .text.f-4(%rip)` and `.quad .text.f+0` (a section symbol with
    /// `f` at its start) are `f`'s address; `.quad .text.f+8` is not, and
    /// neither is a PC-relative entry in data (a jump table's addend is
    /// relative to the table: rewriting it crashed Lua at -O2).
    #[test]
    fn section_relative_references_to_the_start_of_a_function_move_too() {
        let mut g = LinkGraph::new();
        let obj = g.add_object("a.o");
        let f = g.global("f", obj);
        let text = g.section(".text.f", Prot::ReadExec, SectionRole::Ordinary);
        let data = g.section(".data", Prot::ReadWrite, SectionRole::Ordinary);
        let mut block = |section, content| {
            g.add_block(Block {
                section,
                object: Some(obj),
                input_section: ".x".into(),
                input_offset: 0,
                content,
                align: 8,
                edges: Edges::new(),
                fde: None,
                live: true,
                addr: 0,
            })
        };
        let text_block = block(
            text,
            Content::Bytes(vec![0x48, 0x8d, 0x05, 0, 0, 0, 0, 0xc3]),
        );
        let data_block = block(data, Content::Zero(16));
        g.symbols[f.index()].def = SymbolDef::Defined {
            block: text_block,
            offset: 0,
        };
        let section_symbol = g.add_symbol(Symbol {
            name: None,
            def: SymbolDef::Defined {
                block: text_block,
                offset: 0,
            },
            object: Some(obj),
            size: 0,
            scope: Scope::Local,
            linkage: Linkage::Strong,
            callable: false,
            tls: false,
            weak_ref: false,
        });
        let with_addend = |offset, kind, addend| {
            let mut e = edge(offset, kind, section_symbol);
            e.set_addend(addend);
            e
        };
        g.blocks[text_block.index()].edges = smallvec::smallvec![with_addend(3, R_X86_64_PC32, -4)];
        g.blocks[data_block.index()].edges = smallvec::smallvec![
            with_addend(0, R_X86_64_64, 0),
            with_addend(8, R_X86_64_64, 8),
            with_addend(12, R_X86_64_PC32, 0),
        ];

        canonical_function_addresses(&mut g, &["f"]);

        let lea = g.blocks[text_block.index()].edges[0];
        let twin = lea.target;
        assert_eq!(g.symbols[twin.index()].name.as_deref(), Some("f"));
        assert_eq!(g.symbols[twin.index()].def, SymbolDef::External);
        assert_eq!(lea.addend(), -4);
        let d = &g.blocks[data_block.index()].edges;
        assert_eq!((d[0].target, d[0].addend()), (twin, 0));
        assert_eq!((d[1].target, d[1].addend()), (section_symbol, 8));
        assert_eq!((d[2].target, d[2].addend()), (section_symbol, 0));
    }

    #[test]
    fn nothing_changes_without_entries() {
        let mut g = LinkGraph::new();
        let obj = g.add_object("a.o");
        let _ = g.global("f", obj); // external: not ours to redirect
        let before = g.symbols.len();
        canonical_function_addresses(&mut g, &["f", "g"]);
        assert_eq!(g.symbols.len(), before);
    }
}
