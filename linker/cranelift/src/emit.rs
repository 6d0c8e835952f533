//! Compiled code and data → a kiln link graph, built directly (no ELF
//! file written and read again): one object per batch, one block per
//! function or data object, one edge per relocation.

use std::borrow::Cow;
use std::sync::Arc;

use cranelift_codegen::binemit::Reloc;
use cranelift_codegen::ir::{self, LibCall};
use cranelift_module::{DataId, FuncId, Linkage, ModuleReloc, ModuleRelocTarget};
use kiln_arch::EdgeTarget;
use kiln_engine::SymbolName;
use kiln_linker::graph::{
    Block, Content, Edge, InputBytes, LinkGraph, ObjectId, Prot, Scope, SectionId, SectionRole,
    Symbol, SymbolDef, SymbolId,
};
use kiln_linker::isa::Isa;

use crate::error::Error;
use crate::reloc::elf_r_type;
use crate::stage::{Chunk, Span};

/// What the backend keeps of a declared function.
#[derive(Debug, Clone)]
pub(crate) struct FuncInfo {
    /// Interned once, when declared: a batch carries it to the engine
    /// without hashing the text again.
    pub(crate) name: SymbolName,
    pub(crate) linkage: Linkage,
    pub(crate) signature: ir::Signature,
}

/// What the backend keeps of a declared data object.
#[derive(Debug, Clone)]
pub(crate) struct DataInfo {
    /// Interned once, when declared.
    pub(crate) name: SymbolName,
    pub(crate) linkage: Linkage,
    pub(crate) tls: bool,
}

/// Declarations by id, shared with lazy units (which compile on kiln's
/// threads while the module may declare more).
#[derive(Debug, Default)]
pub(crate) struct Names {
    pub(crate) funcs: Vec<FuncInfo>,
    pub(crate) data: Vec<DataInfo>,
}

/// A function's machine code, waiting to be linked: 48 bytes (a batch of
/// N functions lists N of them; the rare owned code is boxed).
pub(crate) struct FuncCode {
    pub(crate) id: FuncId,
    pub(crate) align: u64,
    pub(crate) code: Code,
}

impl FuncCode {
    /// The symbol to define, when not the declared name (a lazy or a
    /// replacement body, always owned code).
    pub(crate) fn symbol(&self) -> Option<&str> {
        match &self.code {
            Code::Owned(owned) => owned.symbol.as_deref(),
            Code::Arena { .. } | Code::Staged { .. } => None,
        }
    }

    /// Defines the code under `symbol` instead of the declared name: for
    /// code compiled alone ([`OwnedCode`], what `compile_function` makes;
    /// code in an arena or stage is always the declared name's).
    pub(crate) fn set_symbol(&mut self, symbol: String) {
        match &mut self.code {
            Code::Owned(owned) => owned.symbol = Some(symbol),
            Code::Arena { .. } | Code::Staged { .. } => {
                debug_assert!(false, "only code compiled alone is renamed");
            }
        }
    }
}

/// Code compiled alone (`define_function`, a lazy or replacement body).
pub(crate) struct OwnedCode {
    /// The symbol to define, when not the declared name (a lazy or a
    /// replacement body).
    pub(crate) symbol: Option<String>,
    pub(crate) bytes: Vec<u8>,
    pub(crate) relocs: Vec<ModuleReloc>,
}

/// Where a function's bytes and relocations are.
pub(crate) enum Code {
    /// Its own.
    Owned(Box<OwnedCode>),
    /// Spans of the batch's [`Arena`] chunks: `define_function_bytes`
    /// appends there, so a batch of N functions costs no allocation per
    /// function (and the graph's blocks read the bytes in place, as a
    /// file's). Used when no code memory could be had for the stage.
    Arena { bytes: Span, relocs: Span },
    /// Bytes already in code memory (the batch's [`Arena::staged`] chunk),
    /// relocations in the arena.
    Staged { bytes: Span, relocs: Span },
}

/// The bytes and relocations of the functions a batch defines, in the
/// chunks [`Chunks`] filled, and the stage's chunks of code memory.
#[derive(Default)]
pub(crate) struct Arena {
    pub(crate) bytes: Vec<InputBytes>,
    pub(crate) relocs: Vec<Vec<ModuleReloc>>,
    /// The stage's chunks (`None` once a placed batch took one).
    pub(crate) staged: Vec<Option<Chunk>>,
}

impl Arena {
    /// The relocations `span` names.
    pub(crate) fn relocs(&self, span: Span) -> Option<&[ModuleReloc]> {
        let start = span.start as usize;
        (self.relocs.get(span.chunk as usize)?).get(start..start + span.len as usize)
    }

    /// A staged function's bytes, if its chunk is still here.
    pub(crate) fn staged_bytes(&self, span: Span) -> Option<&[u8]> {
        let chunk = self.staged.get(span.chunk as usize)?.as_ref()?;
        let start = span.start as usize;
        chunk.bytes().get(start..start + span.len as usize)
    }
}

/// The size of each chunk of [`Chunks`], in bytes (a larger run of items
/// gets a chunk of its own size).
///
/// Below glibc's smallest mmap threshold (128 KiB): chunks come from the
/// heap and go back to it, so a module's next batch (or the next module)
/// reuses pages already mapped instead of faulting fresh ones in (a
/// chunk mapped on its own is unmapped when freed).
const CHUNK_BYTES: usize = 64 << 10;

/// Items appended in chunks that never move: appending N items copies
/// each once (a growing `Vec` copies everything again at each doubling).
pub(crate) struct Chunks<T>(Vec<Vec<T>>);

impl<T> Default for Chunks<T> {
    fn default() -> Self {
        Chunks(Vec::new())
    }
}

impl<T: Clone> Chunks<T> {
    /// Appends `items` (in one chunk); where they went (`None`: beyond
    /// 32-bit offsets, never for code a compiler made).
    pub(crate) fn append(&mut self, items: &[T]) -> Option<Span> {
        let fits = self
            .0
            .last()
            .is_some_and(|c| c.capacity() - c.len() >= items.len());
        if !fits {
            let size = (CHUNK_BYTES / size_of::<T>().max(1)).max(1);
            self.0.push(Vec::with_capacity(size.max(items.len())));
        }
        let i = self.0.len() - 1;
        let chunk = &mut self.0[i];
        let start = chunk.len();
        chunk.extend_from_slice(items);
        Some(Span {
            chunk: u32::try_from(i).ok()?,
            start: u32::try_from(start).ok()?,
            len: u32::try_from(items.len()).ok()?,
        })
    }

    /// The chunks, leaving none.
    pub(crate) fn take(&mut self) -> Vec<Vec<T>> {
        std::mem::take(&mut self.0)
    }
}

/// A data object's contents, waiting to be linked.
pub(crate) struct DataCode {
    pub(crate) id: DataId,
    pub(crate) writable: bool,
    pub(crate) align: u64,
    /// `None`: `size` zero bytes.
    pub(crate) bytes: Option<Vec<u8>>,
    pub(crate) size: u64,
    pub(crate) relocs: Vec<ModuleReloc>,
}

/// What a graph defines, by symbol id.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Defined {
    Func(FuncId),
    Data(DataId),
}

/// The graph's symbol for each declared function and data object met so
/// far: a relocation finds its target by index, not by hashing its name.
struct SymbolCache {
    funcs: Vec<Option<SymbolId>>,
    data: Vec<Option<SymbolId>>,
}

impl SymbolCache {
    fn slot(&mut self, target: &ModuleRelocTarget) -> Option<&mut Option<SymbolId>> {
        match *target {
            ModuleRelocTarget::User {
                namespace: 0,
                index,
            } => self.funcs.get_mut(index as usize),
            ModuleRelocTarget::User {
                namespace: 1,
                index,
            } => self.data.get_mut(index as usize),
            _ => None,
        }
    }
}

/// Sections of the one object a batch becomes.
struct Sections {
    obj: ObjectId,
    text: SectionId,
    data: SectionId,
    rodata: SectionId,
    bss: SectionId,
    text_name: Arc<str>,
    data_name: Arc<str>,
}

/// What a graph defines: its symbol, the declaration, and the interned
/// name when it is the declared one (`None`: a lazy or replacement body's
/// own symbol, interned by the caller).
pub(crate) type DefinedSymbols = Vec<(SymbolId, Defined, Option<SymbolName>)>;

/// The graph of one batch, and the symbols it defines.
pub(crate) fn build_graph(
    object: &str,
    funcs: Vec<FuncCode>,
    arena: &Arena,
    data: Vec<DataCode>,
    names: &Names,
    libcall_names: &dyn Fn(LibCall) -> String,
) -> Result<(LinkGraph, DefinedSymbols), Error> {
    let mut graph = LinkGraph::new();
    let items = funcs.len() + data.len();
    graph.reserve(2 * items, items, 2 * items);
    let obj = graph.add_object(object);
    let s = Sections {
        obj,
        text: graph.section(".text", Prot::ReadExec, SectionRole::Ordinary),
        data: graph.section(".data", Prot::ReadWrite, SectionRole::Ordinary),
        rodata: graph.section(".rodata", Prot::Read, SectionRole::Ordinary),
        bss: graph.section(".bss", Prot::ReadWrite, SectionRole::Ordinary),
        text_name: ".text".into(),
        data_name: ".data".into(),
    };
    let mut defined = Vec::with_capacity(items);
    let mut cache = SymbolCache {
        funcs: vec![None; names.funcs.len()],
        data: vec![None; names.data.len()],
    };
    for f in funcs {
        let FuncCode {
            id: fid,
            align,
            code,
        } = f;
        let info = &names.funcs[fid.as_u32() as usize];
        let (own_symbol, content, relocs, size) = function_code(code, arena, info.name.as_str())?;
        let renamed = own_symbol.is_some();
        let symbol = own_symbol.as_deref().unwrap_or(info.name.as_str());
        let own = (Some(fid), symbol);
        let edges = edges(
            &mut graph,
            obj,
            own,
            &relocs,
            names,
            libcall_names,
            &mut cache,
        )?;
        let block = graph.add_block(block(s.text, &s, content, align, edges));
        let known = match renamed {
            false => cache.funcs[fid.as_u32() as usize],
            true => None,
        };
        let id = define(&mut graph, obj, (symbol, known), block, size, true);
        let interned = match renamed {
            false => {
                cache.funcs[fid.as_u32() as usize] = Some(id);
                Some(info.name.clone())
            }
            true => None,
        };
        defined.push((id, Defined::Func(fid), interned));
    }
    for d in data {
        let info = &names.data[d.id.as_u32() as usize];
        let own = (None, info.name.as_str());
        let edges = edges(
            &mut graph,
            obj,
            own,
            &d.relocs,
            names,
            libcall_names,
            &mut cache,
        )?;
        let (section, content) = match (d.bytes, d.writable) {
            (Some(bytes), true) => (s.data, Content::Bytes(bytes)),
            (Some(bytes), false) => (s.rodata, Content::Bytes(bytes)),
            (None, true) if edges.is_empty() => (s.bss, Content::Zero(d.size)),
            (None, writable) => {
                let section = if writable { s.data } else { s.rodata };
                (section, Content::Bytes(vec![0; d.size as usize]))
            }
        };
        let block = graph.add_block(block(section, &s, content, d.align, edges));
        let known = cache.data[d.id.as_u32() as usize];
        let id = define(
            &mut graph,
            obj,
            (info.name.as_str(), known),
            block,
            d.size,
            false,
        );
        cache.data[d.id.as_u32() as usize] = Some(id);
        defined.push((id, Defined::Data(d.id), Some(info.name.clone())));
    }
    Ok((graph, defined))
}

/// A function's code as graph content: the symbol it defines when not its
/// declared name (`name`), its bytes, its relocations and its size.
type FunctionCode<'a> = (Option<String>, Content, Cow<'a, [ModuleReloc]>, u64);

/// [`FunctionCode`] of `code`, wherever it is kept (its own, `arena`'s
/// chunks or its staged code memory).
fn function_code<'a>(code: Code, arena: &'a Arena, name: &str) -> Result<FunctionCode<'a>, Error> {
    let missing = || Error::Module(format!("the code of {name} was not kept"));
    Ok(match code {
        Code::Owned(owned) => {
            let OwnedCode {
                symbol,
                bytes,
                relocs,
            } = *owned;
            let size = bytes.len() as u64;
            (symbol, Content::Bytes(bytes), Cow::Owned(relocs), size)
        }
        Code::Arena { bytes, relocs } => {
            let (start, len) = (bytes.start as usize, bytes.len as usize);
            let file = arena.bytes.get(bytes.chunk as usize).ok_or_else(missing)?;
            let relocs = Cow::Borrowed(arena.relocs(relocs).ok_or_else(missing)?);
            let content = Content::Input {
                file: file.clone(),
                start,
                len,
            };
            (None, content, relocs, len as u64)
        }
        Code::Staged { bytes, relocs } => {
            let code = arena.staged_bytes(bytes).ok_or_else(missing)?;
            let relocs = Cow::Borrowed(arena.relocs(relocs).ok_or_else(missing)?);
            (
                None,
                Content::Bytes(code.to_vec()),
                relocs,
                u64::from(bytes.len),
            )
        }
    })
}

fn block(
    section: SectionId,
    s: &Sections,
    content: Content,
    align: u64,
    edges: Vec<Edge>,
) -> Block {
    let input_section = if section == s.text {
        s.text_name.clone()
    } else {
        s.data_name.clone()
    };
    Block {
        section,
        object: Some(s.obj),
        input_section,
        input_offset: 0,
        content,
        align: align.max(1).next_power_of_two(),
        edges: edges.into(),
        fde: None,
        live: true,
        addr: 0,
    }
}

/// Defines the global `name` at the start of `block`. Every definition is
/// exported from the JIT's `app` dylib, whatever its cranelift linkage:
/// cranelift-jit hands out the address of local functions too.
/// `known`: the symbol a relocation already made for `name` (no hashing).
fn define(
    graph: &mut LinkGraph,
    obj: ObjectId,
    (name, known): (&str, Option<SymbolId>),
    block: kiln_linker::graph::BlockId,
    size: u64,
    callable: bool,
) -> SymbolId {
    let id = known.unwrap_or_else(|| graph.global(name, obj));
    graph.define_global(
        id,
        Symbol {
            name: None,
            def: SymbolDef::Defined { block, offset: 0 },
            object: Some(obj),
            size,
            scope: Scope::Default,
            linkage: kiln_linker::graph::Linkage::Strong,
            callable,
            tls: false,
            weak_ref: false,
        },
    );
    id
}

/// The edges of `relocs` of `own`: a function (its id and the symbol its
/// body defines) or a data object (its name).
fn edges(
    graph: &mut LinkGraph,
    obj: ObjectId,
    own: (Option<FuncId>, &str),
    relocs: &[ModuleReloc],
    names: &Names,
    libcall_names: &dyn Fn(LibCall) -> String,
    cache: &mut SymbolCache,
) -> Result<Vec<Edge>, Error> {
    let mut edges = Vec::with_capacity(relocs.len());
    for r in relocs {
        let unsupported = |reloc: Reloc| Error::UnsupportedReloc {
            function: own.1.to_string(),
            reloc: format!("{reloc:?}"),
        };
        let r_type = elf_r_type(r.kind).ok_or_else(|| unsupported(r.kind))?;
        let info = Isa::X86_64
            .edge(r_type)
            .ok_or_else(|| unsupported(r.kind))?;
        debug_assert_ne!(info.target, EdgeTarget::None);
        let (target, extra) = match cache.slot(&r.name).and_then(|s| *s) {
            Some(id) => (id, 0),
            None => {
                let (name, extra) = target_name(own, &r.name, names, libcall_names)?;
                let id = graph.global(&name, obj);
                // A reference the link must resolve: a miss is an error, not 0.
                graph.symbols[id.index()].weak_ref = false;
                // A thread-local (another image's: defining one is refused)
                // binds through its TLS module.
                graph.symbols[id.index()].tls = is_tls_data(&r.name, names);
                if let Some(slot) = cache.slot(&r.name) {
                    *slot = Some(id);
                }
                (id, extra)
            }
        };
        edges.push(Edge::new(r.offset, info, target, r.addend + extra));
    }
    Ok(edges)
}

/// Whether `target` is data declared thread-local.
fn is_tls_data(target: &ModuleRelocTarget, names: &Names) -> bool {
    match *target {
        ModuleRelocTarget::User {
            namespace: 1,
            index,
        } => names.data.get(index as usize).is_some_and(|d| d.tls),
        _ => false,
    }
}

/// The symbol a relocation refers to, and what to add to its addend.
/// An offset in the function itself is one in the body being built (a
/// lazy or replacement body defines its own symbol, not the entry's).
fn target_name<'a>(
    own: (Option<FuncId>, &'a str),
    target: &ModuleRelocTarget,
    names: &'a Names,
    libcall_names: &dyn Fn(LibCall) -> String,
) -> Result<(Cow<'a, str>, i64), Error> {
    let owner = own.1;
    let undeclared = || Error::Module(format!("{owner} refers to undeclared {target}"));
    Ok(match *target {
        ModuleRelocTarget::User {
            namespace: 0,
            index,
        } => {
            let info = names.funcs.get(index as usize).ok_or_else(undeclared)?;
            (Cow::Borrowed(info.name.as_str()), 0)
        }
        ModuleRelocTarget::User {
            namespace: 1,
            index,
        } => {
            let data = names.data.get(index as usize).ok_or_else(undeclared)?;
            (Cow::Borrowed(data.name.as_str()), 0)
        }
        ModuleRelocTarget::User { .. } => return Err(undeclared()),
        ModuleRelocTarget::LibCall(libcall) => (Cow::Owned(libcall_names(libcall)), 0),
        ModuleRelocTarget::FunctionOffset(id, offset) if Some(id) == own.0 => {
            (Cow::Borrowed(own.1), i64::from(offset))
        }
        ModuleRelocTarget::FunctionOffset(id, offset) => {
            let info = names
                .funcs
                .get(id.as_u32() as usize)
                .ok_or_else(undeclared)?;
            (Cow::Borrowed(info.name.as_str()), i64::from(offset))
        }
        ModuleRelocTarget::KnownSymbol(symbol) => {
            return Err(Error::Unsupported {
                what: format!("the known symbol {symbol}"),
            });
        }
    })
}
