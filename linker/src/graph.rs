//! The link graph: sections → blocks → symbols, and edges between them.
//!
//! Everything lives in arenas (`Vec`s) addressed by typed indices; nothing is
//! reference counted. One graph may hold several objects: global symbols with
//! the same name share one [`SymbolId`], so a reference in one object and the
//! definition in another are the same node and no edge is ever rewritten when
//! a definition arrives.

use std::collections::HashMap;
use std::hash::BuildHasher;

use kiln_arch::{EdgeForm, EdgeId};

use crate::isa::Isa;

macro_rules! index {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u32);
        impl $name {
            /// The index as a `usize`.
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

index!(
    /// Index of an input object in [`LinkGraph::objects`].
    ObjectId
);
index!(
    /// Index of a section in [`LinkGraph::sections`].
    SectionId
);
index!(
    /// Index of a block in [`LinkGraph::blocks`].
    BlockId
);
index!(
    /// Index of a symbol in [`LinkGraph::symbols`].
    SymbolId
);

/// The hashers of the linker's maps: `rustc-hash`'s Fx hash (rustc's own),
/// fast on the short keys a link hashes (names, ids, addresses); its inputs
/// are not adversarial hash-flooding material in a way that matters here.
pub use rustc_hash::{FxBuildHasher, FxHashMap, FxHashSet, FxHasher};

/// Global names → their symbol: a hashbrown table of symbol ids keyed by
/// [`name_hash`] of the symbol's own name ([`Symbol::name`]), so a name is
/// stored once (no second copy as a key: one allocation per global), and a
/// name hashed while its object was parsed (in parallel) is looked up and
/// inserted with that hash in one probe when objects are merged.
///
/// Its lookups take the graph's symbols, whose names they compare against:
/// a global's symbol keeps the name it was entered with
/// ([`LinkGraph::define_global`] does).
#[derive(Debug, Default, Clone)]
pub struct GlobalMap(hashbrown::HashTable<SymbolId>);

/// The name of symbol `id` of `symbols` (a global's: it has one).
fn name_of(symbols: &[Symbol], id: SymbolId) -> &str {
    symbols[id.index()].name.as_deref().unwrap_or("")
}

impl GlobalMap {
    /// Number of global names.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is no global name.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The symbols of every global name, in the table's order.
    pub fn ids(&self) -> impl Iterator<Item = SymbolId> + '_ {
        self.0.iter().copied()
    }

    /// Every global name with its symbol, in the table's order (`symbols`:
    /// the graph's).
    pub fn iter<'a>(&'a self, symbols: &'a [Symbol]) -> impl Iterator<Item = (&'a str, SymbolId)> {
        self.0.iter().map(move |&id| (name_of(symbols, id), id))
    }

    /// The symbol of global `name` (`symbols`: the graph's).
    pub fn get(&self, symbols: &[Symbol], name: &str) -> Option<SymbolId> {
        self.0
            .find(name_hash(name), |&id| name_of(symbols, id) == name)
            .copied()
    }

    /// Room for `n` more names (`symbols`: the graph's, rehashed from).
    fn reserve(&mut self, n: usize, symbols: &[Symbol]) {
        self.0.reserve(n, |&id| name_hash(name_of(symbols, id)));
    }
}

/// `src` moved into `dst`, which is empty: as it is, or appended where
/// `dst` was given room up front (a merge that reserved for every object).
fn take_or_extend<T>(dst: &mut Vec<T>, src: Vec<T>) {
    if dst.capacity() > src.len() {
        dst.extend(src);
    } else {
        *dst = src;
    }
}

/// The name at `start, len` of a graph's name arena
/// ([`LinkGraph::unmerged_globals`]), if the range is in it.
fn arena_name(arena: &str, start: u32, len: u32) -> Option<&str> {
    arena.get(start as usize..(start as usize).checked_add(len as usize)?)
}

/// The hash [`GlobalMap`] uses for `name`.
pub fn name_hash(name: &str) -> u64 {
    FxBuildHasher.hash_one(name)
}

/// Memory protection a section ends up with once finalized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prot {
    /// Read and execute.
    ReadExec,
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
}

/// What a section is for, beyond holding bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SectionRole {
    /// Code or data.
    Ordinary,
    /// Thread-local initialized data (`.tdata`): addresses are TLS offsets.
    TlsData,
    /// Thread-local zero-initialized data (`.tbss`).
    TlsBss,
    /// `.eh_frame`, split into one block per CIE or FDE.
    EhFrame,
    /// `.preinit_array`.
    PreinitArray,
    /// `.init_array` or `.init_array.N` (priority `N`; 65536 when absent).
    InitArray(u32),
    /// `.fini_array` or `.fini_array.N`.
    FiniArray(u32),
    /// `.ctors` or `.ctors.N` (run in reverse; `N` is 65535 − priority).
    Ctors(u32),
    /// `.dtors` or `.dtors.N`.
    Dtors(u32),
    /// The linker's global offset table.
    Got,
    /// The linker's PLT stubs.
    Plt,
}

impl SectionRole {
    /// An initializer or finalizer array (`.preinit_array`, `.init_array`,
    /// `.fini_array`, `.ctors`, `.dtors`).
    pub fn is_init_fini(self) -> bool {
        matches!(
            self,
            SectionRole::PreinitArray
                | SectionRole::InitArray(_)
                | SectionRole::FiniArray(_)
                | SectionRole::Ctors(_)
                | SectionRole::Dtors(_)
        )
    }
}

/// A section of the graph. Input sections with the same name share one.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    /// Section name, for example `.text.main`.
    pub name: Box<str>,
    /// Protection once finalized.
    pub prot: Prot,
    /// Role of the section.
    pub role: SectionRole,
    /// Blocks in input order.
    pub blocks: Vec<BlockId>,
}

/// An input file's bytes (read, or the file mapped), shared by the blocks
/// read from it.
pub type InputBytes = std::sync::Arc<crate::memory::FileBytes>;

/// A block's bytes.
#[derive(Clone)]
pub enum Content {
    /// Initialized bytes owned by the block.
    Bytes(Vec<u8>),
    /// Initialized bytes still in the input file, not copied: finalization
    /// copies them straight into the image and relocates them there.
    Input {
        /// The file.
        file: InputBytes,
        /// Offset of the bytes in it.
        start: usize,
        /// Their length (`start + len` lies within the file).
        len: usize,
    },
    /// `len` zero bytes that take no space in the input.
    Zero(u64),
}

impl Content {
    /// `len` bytes at `start` of `file`, if they are there.
    pub fn input(file: &InputBytes, start: usize, len: usize) -> Option<Content> {
        file.get(start..start.checked_add(len)?)?;
        Some(Content::Input {
            file: file.clone(),
            start,
            len,
        })
    }

    /// Size in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Content::Bytes(b) => b.len() as u64,
            Content::Input { len, .. } => *len as u64,
            Content::Zero(n) => *n,
        }
    }

    /// The initialized bytes (`None` for zero-fill).
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Content::Bytes(b) => Some(b),
            Content::Input { file, start, len } => file.get(*start..start + len),
            Content::Zero(_) => None,
        }
    }

    /// Whether the block is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Shows where input bytes are, not the whole input file.
impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Bytes(b) => f.debug_tuple("Bytes").field(b).finish(),
            Content::Input { start, len, .. } => f
                .debug_struct("Input")
                .field("start", start)
                .field("len", len)
                .finish_non_exhaustive(),
            Content::Zero(n) => f.debug_tuple("Zero").field(n).finish(),
        }
    }
}

/// Equal contents: the same bytes (wherever they are kept), or zero-fill of
/// the same length.
impl PartialEq for Content {
    fn eq(&self, other: &Content) -> bool {
        match (self.bytes(), other.bytes()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self.len() == other.len(),
            _ => false,
        }
    }
}

impl Eq for Content {}

/// A relocation of a block: "at `offset`, write `kind` of `target` + `addend`".
///
/// 16 bytes (synth's 400k edges are 6.4 MB, not 9.6): the kind is a 2-byte
/// [`EdgeId`] and the addend is kept in 48 bits on the edge; the rare wider
/// addend is kept in a process-wide table (`WideAddends`) and the edge
/// holds its row. [`Edge::addend`] reads either.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Offset of the place in the block (the reader rejects relocations past
    /// 4 GiB into a section).
    pub offset: u32,
    /// Target symbol.
    pub target: SymbolId,
    /// The relocation type, decoded by the graph's ISA ([`Isa::edge`]):
    /// its raw `r_type` and name, and what the passes must create for it
    /// (the handle dereferences to its [`kiln_arch::EdgeDesc`]).
    pub kind: EdgeId,
    /// Bits 32..48 of the addend, sign-extending; [`WIDE`] means `addend_lo`
    /// is a row of [`WideAddends`] instead.
    addend_hi: i16,
    /// Bits 0..32 of the addend, or a row of [`WideAddends`].
    addend_lo: u32,
}

const _: () = assert!(size_of::<Edge>() == 16);

/// A block's edges: one is kept in the block itself (an `.eh_frame` FDE
/// has exactly one, and a link has one FDE per function: 20,000 small
/// allocations on the synthetic input otherwise).
pub type Edges = smallvec::SmallVec<[Edge; 1]>;

const _: () = assert!(size_of::<Edges>() == size_of::<Vec<Edge>>());

/// `Edge::addend_hi` of an addend kept in [`WideAddends`].
const WIDE: i16 = i16::MIN;

/// Addends that do not fit in an [`Edge`]'s 48 bits (the ELF allows 64; no
/// compiler emits them, hand-written `.quad sym + 0x7fff000000000000` may):
/// each distinct value once, for the life of the process, so equal addends
/// have equal encodings and `Edge`'s `==` stays the addends' `==`.
struct WideAddends {
    values: Vec<i64>,
    rows: HashMap<i64, u32, FxBuildHasher>,
}

static WIDE_ADDENDS: std::sync::Mutex<WideAddends> = std::sync::Mutex::new(WideAddends {
    values: Vec::new(),
    rows: HashMap::with_hasher(FxBuildHasher),
});

impl WideAddends {
    fn with<R>(f: impl FnOnce(&mut WideAddends) -> R) -> R {
        // A panic while holding the lock leaves the table consistent (rows
        // are only appended), so a poisoned lock is still usable.
        let mut guard = WIDE_ADDENDS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    fn row_of(addend: i64) -> u32 {
        Self::with(|t| {
            *t.rows.entry(addend).or_insert_with(|| {
                t.values.push(addend);
                // 2^32 distinct 64-bit addends would be 32 GiB of table.
                u32::try_from(t.values.len() - 1).expect("fewer than 2^32 wide addends")
            })
        })
    }

    fn value(row: u32) -> i64 {
        Self::with(|t| t.values[row as usize])
    }
}

impl Edge {
    /// An edge at `offset` writing `kind` of `target + addend`.
    #[inline]
    pub fn new(offset: u32, kind: impl Into<EdgeId>, target: SymbolId, addend: i64) -> Self {
        let (addend_hi, addend_lo) = Self::encode(addend);
        Edge {
            offset,
            target,
            kind: kind.into(),
            addend_hi,
            addend_lo,
        }
    }

    #[inline]
    fn encode(addend: i64) -> (i16, u32) {
        let hi = addend >> 32;
        // `hi` in -32767..=32767: an `i16` other than `WIDE`.
        if (hi + 32767) as u64 <= 65534 {
            (hi as i16, addend as u32)
        } else {
            Self::encode_wide(addend)
        }
    }

    #[cold]
    #[inline(never)]
    fn encode_wide(addend: i64) -> (i16, u32) {
        (WIDE, WideAddends::row_of(addend))
    }

    /// The addend.
    #[inline(always)]
    pub fn addend(&self) -> i64 {
        if self.addend_hi == WIDE {
            return Self::wide_addend(self.addend_lo);
        }
        (i64::from(self.addend_hi) << 32) | i64::from(self.addend_lo)
    }

    #[cold]
    #[inline(never)]
    fn wide_addend(row: u32) -> i64 {
        WideAddends::value(row)
    }

    /// Replaces the addend.
    #[inline]
    pub fn set_addend(&mut self, addend: i64) {
        (self.addend_hi, self.addend_lo) = Self::encode(addend);
    }
}

impl std::fmt::Debug for Edge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Edge")
            .field("offset", &self.offset)
            .field("kind", &self.kind)
            .field("target", &self.target)
            .field("addend", &self.addend())
            .finish()
    }
}

/// How far a 32-bit reference reaches (where a host symbol may lie).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reach32 {
    /// ±2 GiB of the place.
    PcRelative,
    /// The low 4 GiB.
    Unsigned,
    /// The low 2 GiB.
    Signed,
}

impl Reach32 {
    /// An absolute address (the image must lie low).
    pub(crate) fn is_absolute(self) -> bool {
        self != Reach32::PcRelative
    }
}

impl Edge {
    /// An absolute 64-bit address of its symbol (`R_X86_64_64`,
    /// `R_AARCH64_ABS64`): what an image's rebase table lists.
    #[inline]
    pub(crate) fn is_abs64(&self) -> bool {
        let k = self.kind.desc();
        k.target == kiln_arch::EdgeTarget::Symbol
            && k.width == 8
            && !k.pc_relative
            && !k.uses_got_base
    }

    /// The reach of the edge if it is a 32-bit reference to its symbol's
    /// address that may not reach a host symbol (x86-64 `PC32`, `32`, `32S`;
    /// aarch64 `PREL32`, `ABS32`).
    #[inline]
    pub(crate) fn reach32(&self) -> Option<Reach32> {
        let k = self.kind.desc();
        if k.width != 4 || k.target != kiln_arch::EdgeTarget::Symbol || k.uses_got_base {
            return None;
        }
        match k.form {
            EdgeForm::PcRelative => Some(Reach32::PcRelative),
            EdgeForm::Absolute { signed: false } => Some(Reach32::Unsigned),
            EdgeForm::Absolute { signed: true } => Some(Reach32::Signed),
            _ => None,
        }
    }
}

/// A contiguous piece of content that moves as a unit: an input section, a
/// CIE or FDE of `.eh_frame`, a COMMON symbol, the GOT.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    /// Section the block belongs to.
    pub section: SectionId,
    /// Object it came from (`None` for linker-made blocks).
    pub object: Option<ObjectId>,
    /// Name of the input section (for errors; shared by the blocks of one
    /// section, such as the records of an `.eh_frame`).
    pub input_section: std::sync::Arc<str>,
    /// Offset of the block in its input section (non-zero for `.eh_frame` records).
    pub input_offset: u64,
    /// Bytes.
    pub content: Content,
    /// Alignment (a power of two).
    pub align: u64,
    /// Relocations, sorted by offset.
    pub edges: Edges,
    /// For an FDE: the CIE block it points to (its CIE pointer is rewritten
    /// at layout), and the block whose code it describes.
    pub fde: Option<FdeLinks>,
    /// Survived pruning.
    pub live: bool,
    /// Final address (or TLS offset for TLS blocks); set by allocation.
    pub addr: u64,
}

impl Block {
    /// Whether an edge refers to its target's 32-bit absolute address.
    fn has_absolute_32bit_reference(&self) -> bool {
        let absolute = absolute_32bit_kinds();
        self.edges
            .iter()
            .any(|e| absolute.get(usize::from(e.kind.raw())) == Some(&true))
    }
}

/// By [`EdgeId::raw`]: whether an edge of the kind refers to its target's
/// 32-bit absolute address ([`Edge::reach32`], absolute) — a table, since
/// reading a graph asks it of every edge (synth's 401k: 16 instructions an
/// edge through the descriptor, 6 through the table).
fn absolute_32bit_kinds() -> &'static [bool] {
    static KINDS: std::sync::OnceLock<Vec<bool>> = std::sync::OnceLock::new();
    KINDS.get_or_init(|| {
        let kinds = [Isa::X86_64, Isa::Aarch64].map(Isa::edges);
        let ids = || kinds.iter().flat_map(|k| k.iter()).map(EdgeId::from);
        let mut table = vec![false; ids().map(|id| usize::from(id.raw()) + 1).max().unwrap_or(0)];
        for id in ids() {
            let edge = Edge::new(0, id, SymbolId(0), 0);
            table[usize::from(id.raw())] = edge.reach32().is_some_and(Reach32::is_absolute);
        }
        table
    })
}

/// What an FDE block is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdeLinks {
    /// The CIE this FDE uses.
    pub cie: BlockId,
    /// The block whose code the FDE describes (`None` if it could not be found).
    pub function: Option<BlockId>,
}

/// Where a symbol's value comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SymbolDef {
    /// Defined at an offset in a block.
    Defined {
        /// The block.
        block: BlockId,
        /// Offset in the block.
        offset: u64,
    },
    /// Not defined in the graph: looked up among the externals.
    External,
    /// An absolute value.
    Absolute(u64),
    /// A COMMON symbol not yet given a block.
    Common {
        /// Size in bytes.
        size: u64,
        /// Alignment.
        align: u64,
    },
    /// Defined in a section that was dropped (COMDAT duplicate or a
    /// non-allocated section); referencing it from live code is an error.
    Discarded,
}

/// Sorts `edges` by offset. The reader already leaves them sorted; checking
/// first saves merging a stable sort (and its scratch buffer) per block.
pub(crate) fn sort_edges(edges: &mut [Edge]) {
    if !edges.is_sorted_by_key(|e| e.offset) {
        edges.sort_by_key(|e| e.offset);
    }
}

/// Visibility of a symbol outside the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// Visible only inside its object (`STB_LOCAL`).
    Local,
    /// Global but not exported from the linked image (`STV_HIDDEN`, `STV_INTERNAL`).
    Hidden,
    /// Exported (`STV_DEFAULT`, `STV_PROTECTED`).
    Default,
}

/// Strength of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Linkage {
    /// A strong definition: two of them are a duplicate.
    Strong,
    /// A weak definition (`STB_WEAK`, `STB_GNU_UNIQUE`, COMMON).
    Weak,
}

/// A symbol.
#[derive(Debug, Clone, PartialEq)]
pub struct Symbol {
    /// Name (`None` for section symbols and anonymous ones).
    pub name: Option<Box<str>>,
    /// Where its value comes from.
    pub def: SymbolDef,
    /// Object that defined it (or first referenced it, for externals).
    pub object: Option<ObjectId>,
    /// Size (`st_size`).
    pub size: u64,
    /// Scope.
    pub scope: Scope,
    /// Linkage.
    pub linkage: Linkage,
    /// It names code (`STT_FUNC`).
    pub callable: bool,
    /// It is thread-local (`STT_TLS`).
    pub tls: bool,
    /// Every reference to this external is weak: unresolved means 0.
    pub weak_ref: bool,
}

impl Symbol {
    /// An undefined global `name` first referenced by `object`: strongly,
    /// until a weak reference is all there is (`weak_ref`).
    pub(crate) fn reference(name: Option<Box<str>>, object: ObjectId) -> Symbol {
        Symbol {
            name,
            def: SymbolDef::External,
            object: Some(object),
            size: 0,
            scope: Scope::Default,
            linkage: Linkage::Strong,
            callable: false,
            tls: false,
            weak_ref: true,
        }
    }
}

#[cfg(test)]
impl Symbol {
    /// A nameless local function defined as `def`, for tests' graphs.
    pub(crate) fn local_for_test(def: SymbolDef) -> Symbol {
        Symbol {
            name: None,
            def,
            object: None,
            size: 0,
            scope: Scope::Local,
            linkage: Linkage::Strong,
            callable: true,
            tls: false,
            weak_ref: false,
        }
    }
}

/// One input object.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectInfo {
    /// Display name: a path, or `archive.a(member.o)`.
    pub name: Box<str>,
    /// An archive member, pulled in for the symbols it defines: its blocks
    /// are kept only if live code reaches them (see [`crate::passes::prune`]).
    pub library: bool,
    /// The CPU features its GNU property notes ask for (image header bits,
    /// [`crate::image_file::CpuFeatures`]).
    pub(crate) cpu_features: u64,
}

/// Object `o` of a graph being merged, as the merged graph numbers it (its
/// objects are appended from `base` on).
fn remap(o: ObjectId, base: ObjectId) -> ObjectId {
    ObjectId(o.0 + base.0)
}

/// The link graph.
#[derive(Debug, Default, Clone)]
pub struct LinkGraph {
    /// Input objects.
    pub objects: Vec<ObjectInfo>,
    /// Sections.
    pub sections: Vec<Section>,
    /// Blocks.
    pub blocks: Vec<Block>,
    /// Symbols.
    pub symbols: Vec<Symbol>,
    /// Global names → their (shared) symbol.
    pub globals: GlobalMap,
    /// Sections by name.
    pub(crate) section_index: FxHashMap<Box<str>, SectionId>,
    /// COMDAT group signatures already taken, with the object that won.
    pub(crate) comdats: FxHashMap<Box<str>, ObjectId>,
    /// COMDAT groups of a graph parsed from one object, with their blocks,
    /// decided when it is merged into the link's graph.
    pub(crate) groups: Vec<(Box<str>, Vec<BlockId>)>,
    /// Global symbols of a graph parsed from one object, not yet resolved
    /// by name (each reference and definition is its own symbol until
    /// [`LinkGraph::merge`]).
    /// Each with `start, len` of its name in `name_arena` and the name's
    /// [`name_hash`].
    pub(crate) unmerged_globals: Vec<(SymbolId, u32, u32, u64)>,
    /// Names of `unmerged_globals` (`start, len` into this string): one
    /// allocation per object instead of one per symbol.
    pub(crate) name_arena: String,
    /// Strong definitions that collided: name → every defining object.
    pub(crate) duplicates: Vec<(Box<str>, Vec<ObjectId>)>,
    /// The ISA of the objects read (`None`: no object yet).
    pub(crate) isa: Option<Isa>,
    /// The first object merged whose ISA differs from `isa`.
    pub(crate) foreign_object: Option<(ObjectId, Isa)>,
    /// Linked on one thread ([`crate::LinkOptions::parallel`] off): no
    /// pass spreads it over rayon's threads, however large.
    pub(crate) serial: bool,
}

impl LinkGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// The ISA the graph's objects are for (the host's if it has none).
    pub fn isa(&self) -> Isa {
        self.isa.unwrap_or(Isa::HOST)
    }

    /// Sets the ISA of a graph about to be filled (the ELF reader does).
    pub fn set_isa(&mut self, isa: Isa) {
        self.isa = Some(isa);
    }

    /// An error if objects of two ISAs were merged into this graph.
    pub fn check_isa(&self) -> Result<(), crate::LinkError> {
        match self.foreign_object {
            None => Ok(()),
            Some((obj, isa)) => Err(crate::LinkError::malformed(
                self.object_name(Some(obj)),
                format!(
                    "an object for {isa} cannot be linked with objects for {}",
                    self.isa()
                ),
            )),
        }
    }

    /// Whether some block refers to a symbol with a 32-bit absolute
    /// address (`R_X86_64_32`/`32S`: non-PIE code), so its image must sit
    /// below 2 GiB — and so must every image whose symbols it uses.
    pub fn has_absolute_32bit_references(&self) -> bool {
        // Every edge of the link is read: a large graph on every core.
        if self.is_large() {
            use rayon::prelude::*;
            self.blocks
                .par_iter()
                .any(Block::has_absolute_32bit_reference)
        } else {
            self.blocks_have_absolute_32bit_references(0)
        }
    }

    /// [`LinkGraph::has_absolute_32bit_references`] of the blocks from
    /// `first` on: a reader asks it of each object's blocks just merged in,
    /// while their edges are still in this core's cache.
    pub(crate) fn blocks_have_absolute_32bit_references(&self, first: usize) -> bool {
        self.blocks[first..]
            .iter()
            .any(Block::has_absolute_32bit_reference)
    }

    /// Whether a pass that reads every edge should spread the graph over
    /// rayon's threads: from this many blocks on, a task costs less than
    /// the work it takes (the 200-object synth input has 21,600 blocks, a
    /// Cranelift object a few hundred).
    pub(crate) fn is_large(&self) -> bool {
        !self.serial && self.blocks.len() >= 4096
    }

    /// Make room for `symbols` more symbols, `blocks` more blocks and
    /// `globals` more global names.
    pub fn reserve(&mut self, symbols: usize, blocks: usize, globals: usize) {
        self.symbols.reserve(symbols);
        self.blocks.reserve(blocks);
        self.globals.reserve(globals, &self.symbols);
    }

    /// The symbol of global `name`, if the graph has that global.
    pub fn global_id(&self, name: &str) -> Option<SymbolId> {
        self.globals.get(&self.symbols, name)
    }

    /// Every global name with its symbol.
    pub fn global_names(&self) -> impl Iterator<Item = (&str, SymbolId)> {
        self.globals.iter(&self.symbols)
    }

    /// Add an object record.
    pub fn add_object(&mut self, name: &str) -> ObjectId {
        self.objects.push(ObjectInfo {
            name: name.into(),
            library: false,
            cpu_features: 0,
        });
        ObjectId(self.objects.len() as u32 - 1)
    }

    /// The section called `name` with `prot` and `role`, created if new.
    /// Inputs of one name but another protection or role (code in one
    /// object, data in another; a damaged header) get a section of their
    /// own, so no block lands in memory of another protection or role; the
    /// index keeps a name's first section (the one `__start_`/`__stop_`
    /// symbols delimit).
    pub fn section(&mut self, name: &str, prot: Prot, role: SectionRole) -> SectionId {
        let first = self.section_index.get(name).copied();
        let alike = |s: &Section| s.prot == prot && s.role == role;
        match first {
            Some(id) if alike(&self.sections[id.index()]) => return id,
            // Rare: looked for among all sections.
            Some(_) => {
                let same = |s: &&Section| &*s.name == name && alike(s);
                if let Some(i) = self.sections.iter().position(|s| same(&s)) {
                    return SectionId(i as u32);
                }
            }
            None => {}
        }
        let id = SectionId(self.sections.len() as u32);
        self.sections.push(Section {
            name: name.into(),
            prot,
            role,
            blocks: Vec::new(),
        });
        if first.is_none() {
            self.section_index.insert(name.into(), id);
        }
        id
    }

    /// Add a block to `section`, its edges sorted by offset.
    pub fn add_block(&mut self, mut block: Block) -> BlockId {
        sort_edges(&mut block.edges);
        self.push_block(block)
    }

    /// [`LinkGraph::add_block`] for a block whose edges are sorted already
    /// (one of a graph being merged: every graph keeps its blocks' edges
    /// sorted, so they are not checked again per block).
    fn push_block(&mut self, block: Block) -> BlockId {
        debug_assert!(block.edges.is_sorted_by_key(|e| e.offset));
        let id = BlockId(self.blocks.len() as u32);
        self.sections[block.section.index()].blocks.push(id);
        self.blocks.push(block);
        id
    }

    /// Add a symbol that is not in the global table.
    pub fn add_symbol(&mut self, symbol: Symbol) -> SymbolId {
        self.symbols.push(symbol);
        SymbolId(self.symbols.len() as u32 - 1)
    }

    /// The shared symbol for global `name`, created as an external if new.
    pub fn global(&mut self, name: &str, object: ObjectId) -> SymbolId {
        self.global_hashed(name, name_hash(name), object)
    }

    /// [`LinkGraph::global`] with `hash` = [`name_hash`]`(name)`.
    fn global_hashed(&mut self, name: &str, hash: u64, object: ObjectId) -> SymbolId {
        use hashbrown::hash_table::Entry;
        let symbols = &self.symbols;
        let id = SymbolId(symbols.len() as u32);
        match self.globals.0.entry(
            hash,
            |&g| name_of(symbols, g) == name,
            |&g| name_hash(name_of(symbols, g)),
        ) {
            Entry::Occupied(o) => return *o.get(),
            // The symbol pushed below carries the name the table compares.
            Entry::Vacant(v) => v.insert(id),
        };
        self.symbols
            .push(Symbol::reference(Some(name.into()), object));
        id
    }

    /// [`LinkGraph::global`] of a name given owned: a new global keeps it.
    fn global_owned(&mut self, name: Box<str>, object: ObjectId) -> SymbolId {
        use hashbrown::hash_table::Entry;
        let symbols = &self.symbols;
        let id = SymbolId(symbols.len() as u32);
        match self.globals.0.entry(
            name_hash(&name),
            |&g| name_of(symbols, g) == &*name,
            |&g| name_hash(name_of(symbols, g)),
        ) {
            Entry::Occupied(o) => return *o.get(),
            Entry::Vacant(v) => v.insert(id),
        };
        self.symbols.push(Symbol::reference(Some(name), object));
        id
    }

    /// Apply a global definition from `object` to the shared symbol `id`,
    /// following ELF's rules: strong beats COMMON beats weak, the largest
    /// COMMON wins, two strong definitions are a duplicate (recorded, and
    /// reported all together by [`LinkGraph::take_duplicates`]).
    pub fn define_global(&mut self, id: SymbolId, new: Symbol) {
        let old = &mut self.symbols[id.index()];
        let replace = match (old.def, new.def) {
            (SymbolDef::External | SymbolDef::Discarded, _) => true,
            (_, SymbolDef::External | SymbolDef::Discarded) => false,
            (
                SymbolDef::Common { size, align },
                SymbolDef::Common {
                    size: s2,
                    align: a2,
                },
            ) => {
                old.def = SymbolDef::Common {
                    size: size.max(s2),
                    align: align.max(a2),
                };
                old.size = old.size.max(new.size);
                false
            }
            // As in lld: a strong definition beats COMMON, COMMON beats a
            // weak definition.
            (SymbolDef::Common { .. }, _) => new.linkage == Linkage::Strong,
            (_, SymbolDef::Common { .. }) => old.linkage == Linkage::Weak,
            _ => match (old.linkage, new.linkage) {
                (Linkage::Weak, Linkage::Strong) => true,
                (Linkage::Strong, Linkage::Strong) => {
                    let name = old.name.clone().unwrap_or_default();
                    let first = old.object;
                    let second = new.object;
                    match self.duplicates.iter_mut().find(|(n, _)| *n == name) {
                        Some((_, objs)) => objs.extend(second),
                        None => self
                            .duplicates
                            .push((name, first.into_iter().chain(second).collect())),
                    }
                    false
                }
                _ => false,
            },
        };
        let old = &mut self.symbols[id.index()];
        let weak_ref = old.weak_ref && new.weak_ref;
        if replace {
            let name = old.name.take();
            *old = new;
            old.name = name;
        }
        old.weak_ref = weak_ref;
    }

    /// Append `other` (a graph parsed from one object, see
    /// [`crate::elf::parse_object`]): its sections join same-named ones, its
    /// COMDAT groups already present here are dropped with their FDEs, its
    /// global symbols resolve against this graph's. Returns the id of the
    /// first object appended.
    pub fn merge(&mut self, other: LinkGraph) -> ObjectId {
        self.merge_mapped(other).0
    }

    /// [`LinkGraph::merge`], also returning where each of `other`'s symbols
    /// went: its id in this graph, by its id in `other`.
    pub fn merge_mapped(&mut self, other: LinkGraph) -> (ObjectId, Vec<SymbolId>) {
        let mut other = other;
        match self.adopt(&mut other) {
            Some(adopted) => adopted,
            None => self.merge_general(other),
        }
    }

    /// [`LinkGraph::merge_mapped`] of a first object into an empty graph
    /// (each unit of one object a JIT adds): nothing resolves against an
    /// earlier object, so every id of `other` stays — its arrays are taken
    /// as they are, no edge is rewritten, no section renamed — and only its
    /// global names are entered in the table. The graph is the general
    /// merge's, field for field (`tests::adopting_equals_merging`).
    /// `None`, with `other` untouched but for its globals' names, where the
    /// two could differ: this graph not empty, `other` already merged, a
    /// name or a COMDAT group twice in one object.
    fn adopt(&mut self, other: &mut LinkGraph) -> Option<(ObjectId, Vec<SymbolId>)> {
        let empty = self.objects.is_empty()
            && self.sections.is_empty()
            && self.blocks.is_empty()
            && self.symbols.is_empty()
            && self.globals.is_empty()
            && self.comdats.is_empty()
            && self.groups.is_empty()
            && self.unmerged_globals.is_empty()
            && self.duplicates.is_empty()
            && self.foreign_object.is_none()
            && self.isa.is_none_or(|isa| Some(isa) == other.isa);
        if !empty || !other.parsed_as_one_object() {
            return None;
        }
        let owner = ObjectId(0);
        self.globals
            .reserve(other.unmerged_globals.len(), &other.symbols);
        for &(id, start, len, hash) in &other.unmerged_globals {
            let Some(name) = arena_name(&other.name_arena, start, len) else {
                self.globals.0.clear();
                return None;
            };
            other.symbols[id.index()].name = Some(name.into());
            let symbols = &other.symbols;
            match self.globals.0.entry(
                hash,
                |&g| name_of(symbols, g) == name,
                |&g| name_hash(name_of(symbols, g)),
            ) {
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(id);
                }
                hashbrown::hash_table::Entry::Occupied(_) => {
                    self.globals.0.clear();
                    return None;
                }
            }
            // A definition in a section not loaded: the general merge
            // leaves the name's external, referenced strongly.
            let s = &mut other.symbols[id.index()];
            if s.def == SymbolDef::Discarded {
                *s = Symbol {
                    weak_ref: false,
                    ..Symbol::reference(s.name.take(), s.object.unwrap_or(owner))
                };
            }
        }
        for (sig, members) in std::mem::take(&mut other.groups) {
            let object = members.first().and_then(|b| other.blocks[b.index()].object);
            self.comdats.insert(sig, object.unwrap_or(owner));
        }
        self.isa = other.isa;
        let map = (0..other.symbols.len() as u32).map(SymbolId).collect();
        take_or_extend(&mut self.objects, std::mem::take(&mut other.objects));
        take_or_extend(&mut self.sections, std::mem::take(&mut other.sections));
        self.section_index = std::mem::take(&mut other.section_index);
        take_or_extend(&mut self.blocks, std::mem::take(&mut other.blocks));
        take_or_extend(&mut self.symbols, std::mem::take(&mut other.symbols));
        self.duplicates = std::mem::take(&mut other.duplicates);
        Some((owner, map))
    }

    /// Every reference of live code or data to a symbol: `visit(from,
    /// to, defined_in)` with the referencing object, the symbol, and the
    /// object defining it (`None`: external, or defined by no object). For
    /// the object layer's batches, which must tell which of their units a
    /// missing or failed symbol reaches; one pass over every edge.
    pub(crate) fn visit_references(
        &self,
        mut visit: impl FnMut(ObjectId, SymbolId, Option<ObjectId>),
    ) {
        for b in self.blocks.iter().filter(|b| b.live) {
            let Some(from) = b.object else { continue };
            for e in &b.edges {
                let defined_in = match self.symbols.get(e.target.index()).map(|s| s.def) {
                    Some(SymbolDef::Defined { block, .. }) => self.blocks[block.index()].object,
                    _ => None,
                };
                visit(from, e.target, defined_in);
            }
        }
    }

    /// A graph as one object's parse gives it, each COMDAT group named
    /// once: what [`LinkGraph::adopt`] can take as it is, but for a global
    /// name given twice.
    fn parsed_as_one_object(&self) -> bool {
        let mut signatures = FxHashSet::default();
        self.globals.is_empty()
            && self.section_index.len() == self.sections.len()
            && self.groups.iter().all(|(sig, _)| signatures.insert(&**sig))
    }

    /// Whether this graph, as one object's parse gave it, is adopted by an
    /// empty graph ([`LinkGraph::merge`] into [`LinkGraph::new`]): every id
    /// stays, and each global symbol keeps its own name — so what the
    /// object defines can be read from it before it is merged
    /// ([`LinkGraph::unmerged_globals`]). Checks every name without
    /// copying any.
    pub(crate) fn adoptable(&self) -> bool {
        if !self.parsed_as_one_object() {
            return false;
        }
        let arena = &self.name_arena;
        let name = |&(_, start, len, _): &(SymbolId, u32, u32, u64)| arena_name(arena, start, len);
        let mut seen: hashbrown::HashTable<u32> =
            hashbrown::HashTable::with_capacity(self.unmerged_globals.len());
        let globals = &self.unmerged_globals;
        for (i, g) in globals.iter().enumerate() {
            let Some(text) = name(g) else {
                return false;
            };
            let hash = g.3;
            match seen.entry(
                hash,
                |&j| globals[j as usize].3 == hash && name(&globals[j as usize]) == Some(text),
                |&j| globals[j as usize].3,
            ) {
                hashbrown::hash_table::Entry::Occupied(_) => return false,
                hashbrown::hash_table::Entry::Vacant(v) => {
                    v.insert(i as u32);
                }
            }
        }
        true
    }

    /// Of a graph as one object's parse gave it: each global symbol with
    /// its name, in symbol order (the names are entered in the symbols
    /// when the graph is merged).
    pub(crate) fn unmerged_globals(&self) -> impl Iterator<Item = (SymbolId, &str)> {
        self.unmerged_globals
            .iter()
            .filter_map(|&(id, start, len, _)| {
                Some((id, arena_name(&self.name_arena, start, len)?))
            })
    }

    /// [`LinkGraph::merge_mapped`] in general: ids of `other` renumbered.
    fn merge_general(&mut self, other: LinkGraph) -> (ObjectId, Vec<SymbolId>) {
        let obj_base = ObjectId(self.objects.len() as u32);
        match (self.isa, other.isa) {
            (None, isa) => self.isa = isa,
            (Some(mine), Some(theirs)) if mine != theirs && self.foreign_object.is_none() => {
                self.foreign_object = Some((obj_base, theirs));
            }
            _ => {}
        }
        let LinkGraph {
            objects,
            sections,
            blocks,
            symbols,
            globals,
            groups,
            unmerged_globals,
            name_arena,
            duplicates,
            ..
        } = other;
        self.objects.extend(objects);
        let dropped = self.dropped_blocks(groups, &blocks, obj_base);
        let mut block_map: Vec<Option<BlockId>> = Vec::with_capacity(blocks.len());
        let mut next = self.blocks.len() as u32;
        for &d in &dropped {
            block_map.push((!d).then(|| {
                next += 1;
                BlockId(next - 1)
            }));
        }
        let unmerged = (unmerged_globals, name_arena);
        let sym_map = self.merge_symbols(symbols, &globals, unmerged, &block_map, obj_base);
        for (name, objs) in duplicates {
            self.duplicates
                .push((name, objs.into_iter().map(|o| remap(o, obj_base)).collect()));
        }
        let sec_map: Vec<SectionId> = sections
            .iter()
            .map(|s| self.section(&s.name, s.prot, s.role))
            .collect();
        self.blocks.reserve(blocks.len());
        for (i, mut b) in blocks.into_iter().enumerate() {
            if dropped[i] {
                continue;
            }
            b.section = sec_map[b.section.index()];
            b.object = b.object.map(|o| remap(o, obj_base));
            for e in &mut b.edges {
                e.target = sym_map[e.target.index()];
            }
            if let Some(f) = b.fde {
                match block_map[f.cie.index()] {
                    Some(cie) => {
                        b.fde = Some(FdeLinks {
                            cie,
                            function: f.function.and_then(|x| block_map[x.index()]),
                        })
                    }
                    None => {
                        b.fde = None;
                        b.live = false;
                    }
                }
            }
            self.push_block(b);
        }
        (obj_base, sym_map)
    }

    /// Of an object's blocks (its objects now from `obj_base` on), those to
    /// drop: members of COMDAT groups an earlier object brought (the other
    /// groups are recorded as taken) and the FDEs of dropped functions.
    fn dropped_blocks(
        &mut self,
        groups: Vec<(Box<str>, Vec<BlockId>)>,
        blocks: &[Block],
        obj_base: ObjectId,
    ) -> Vec<bool> {
        let mut dropped = vec![false; blocks.len()];
        for (sig, members) in groups {
            match self.comdats.entry(sig) {
                std::collections::hash_map::Entry::Occupied(_) => {
                    for b in members {
                        dropped[b.index()] = true;
                    }
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    let owner = members
                        .first()
                        .and_then(|b| blocks[b.index()].object)
                        .map_or(obj_base, |o| remap(o, obj_base));
                    v.insert(owner);
                }
            }
        }
        for (i, b) in blocks.iter().enumerate() {
            if let Some(f) = b.fde
                && let Some(func) = f.function
                && dropped[func.index()]
            {
                dropped[i] = true;
            }
        }
        dropped
    }

    /// An object's symbols merged: globals resolved by name (from
    /// `unmerged`, the object's names and their arena, or `globals`),
    /// definitions in dropped blocks discarded. Returns each symbol's id
    /// in this graph.
    fn merge_symbols(
        &mut self,
        symbols: Vec<Symbol>,
        globals: &GlobalMap,
        (unmerged_globals, arena): (Vec<(SymbolId, u32, u32, u64)>, String),
        block_map: &[Option<BlockId>],
        obj_base: ObjectId,
    ) -> Vec<SymbolId> {
        // Per symbol: its global name, if it is a global.
        let mut global_name: Vec<Option<(u32, u32, u64)>> = vec![None; symbols.len()];
        for &(id, start, len, hash) in &unmerged_globals {
            global_name[id.index()] = Some((start, len, hash));
        }
        let mut is_global = vec![false; symbols.len()];
        for id in globals.ids() {
            is_global[id.index()] = true;
        }
        let mut sym_map: Vec<SymbolId> = Vec::with_capacity(symbols.len());
        if self.globals.is_empty() {
            // The first object (a unit of one object, as a JIT adds them):
            // every global is new, so room for all at once — no rehash and
            // no regrowth of the symbols per doubling.
            self.globals.reserve(unmerged_globals.len(), &self.symbols);
            self.symbols.reserve(symbols.len());
        } else {
            self.symbols
                .reserve(symbols.len().saturating_sub(unmerged_globals.len()));
            // A merged graph (a batch of units): room for its globals.
            self.globals.reserve(globals.len(), &self.symbols);
        }
        for (i, mut s) in symbols.into_iter().enumerate() {
            s.object = s.object.map(|o| remap(o, obj_base));
            if let SymbolDef::Defined { block, offset } = s.def {
                s.def = match block_map[block.index()] {
                    Some(block) => SymbolDef::Defined { block, offset },
                    None => SymbolDef::Discarded,
                };
            }
            let object = s.object.unwrap_or(obj_base);
            let global = match global_name[i] {
                Some((start, len, hash)) => arena_name(&arena, start, len)
                    .map(|name| self.global_hashed(name, hash, object)),
                // A global of a merged graph: its name moves here if new.
                None if is_global[i] => s.name.take().map(|name| self.global_owned(name, object)),
                None => None,
            };
            let Some(id) = global else {
                sym_map.push(self.add_symbol(s));
                continue;
            };
            match s.def {
                SymbolDef::External => {
                    let g = &mut self.symbols[id.index()];
                    g.weak_ref &= s.weak_ref;
                    g.tls |= s.tls;
                }
                // Defined in a dropped COMDAT copy: the kept copy defines it.
                SymbolDef::Discarded => self.symbols[id.index()].weak_ref = false,
                _ => self.define_global(id, s),
            }
            sym_map.push(id);
        }
        sym_map
    }

    /// Record `id` as a global named `name`, resolved by [`LinkGraph::merge`].
    pub(crate) fn push_unmerged_global(&mut self, id: SymbolId, name: &str) {
        let start = self.name_arena.len() as u32;
        self.name_arena.push_str(name);
        self.unmerged_globals
            .push((id, start, name.len() as u32, name_hash(name)));
    }

    /// Of a graph parsed from one object: the globals it defines (not the
    /// ones it only references), with their names.
    pub(crate) fn unmerged_definitions(&self) -> impl Iterator<Item = (SymbolId, &str)> {
        self.unmerged_globals().filter(|(id, _)| {
            !matches!(
                self.symbols[id.index()].def,
                SymbolDef::External | SymbolDef::Discarded
            )
        })
    }

    /// Duplicate strong definitions seen so far, emptied.
    pub fn take_duplicates(&mut self) -> Vec<(Box<str>, Vec<ObjectId>)> {
        std::mem::take(&mut self.duplicates)
    }

    /// Display name of an object.
    pub fn object_name(&self, id: Option<ObjectId>) -> &str {
        id.and_then(|o| self.objects.get(o.index()))
            .map_or("<linker>", |o| &o.name)
    }

    /// Display name of a symbol.
    pub fn symbol_name(&self, id: SymbolId) -> String {
        let sym = &self.symbols[id.index()];
        match (&sym.name, sym.def) {
            (Some(n), _) => n.to_string(),
            (None, SymbolDef::Defined { block, offset }) => {
                let b = &self.blocks[block.index()];
                format!("{}+{offset:#x}", b.input_section)
            }
            (None, _) => "<anonymous>".to_string(),
        }
    }

    /// Names of global symbols that are still undefined and referenced by a
    /// live block, each with the objects that reference it.
    pub fn undefined_names(&self) -> Vec<(Box<str>, Vec<ObjectId>)> {
        let mut refs: HashMap<SymbolId, Vec<ObjectId>> = HashMap::new();
        for block in self.blocks.iter().filter(|b| b.live) {
            for e in &block.edges {
                let sym = &self.symbols[e.target.index()];
                if sym.def == SymbolDef::External && sym.name.is_some() {
                    let objs = refs.entry(e.target).or_default();
                    if let Some(o) = block.object
                        && !objs.contains(&o)
                    {
                        objs.push(o);
                    }
                }
            }
        }
        let mut out: Vec<_> = refs
            .into_iter()
            .filter_map(|(id, objs)| Some((self.symbols[id.index()].name.clone()?, objs)))
            .collect();
        out.sort();
        out
    }
}

/// Asserts that `a` and `b` are the same graph, field by field, their
/// tables compared in name order: two graphs built differently (an
/// adopted object and the general merge's).
#[cfg(any(test, fuzzing))]
pub(crate) fn assert_same_graph(a: &LinkGraph, b: &LinkGraph) {
    type Tables<'g> = (
        Vec<(&'g str, SymbolId)>,
        Vec<(&'g Box<str>, &'g ObjectId)>,
        Vec<(&'g Box<str>, &'g SectionId)>,
    );
    fn tables(g: &LinkGraph) -> Tables<'_> {
        let mut globals: Vec<_> = g.global_names().collect();
        globals.sort();
        let mut comdats: Vec<_> = g.comdats.iter().collect();
        comdats.sort();
        let mut sections: Vec<_> = g.section_index.iter().collect();
        sections.sort();
        (globals, comdats, sections)
    }
    assert_eq!(a.objects, b.objects, "objects");
    assert_eq!(a.sections, b.sections, "sections");
    assert!(a.blocks == b.blocks, "blocks differ");
    assert_eq!(a.symbols, b.symbols, "symbols");
    assert_eq!(
        tables(a),
        tables(b),
        "globals, COMDAT groups, section names"
    );
    assert_eq!(a.duplicates, b.duplicates, "duplicates");
    assert_eq!((a.isa, a.foreign_object), (b.isa, b.foreign_object), "ISA");
    assert_eq!(a.groups, b.groups, "unmerged groups");
    assert_eq!(a.unmerged_globals, b.unmerged_globals, "unmerged globals");
    assert_eq!(a.name_arena, b.name_arena, "name arena");
}

/// For the fuzzer (`--cfg fuzzing`, fuzz/fuzz_targets/link.rs): an object
/// that parses is adopted into an empty graph exactly as the general merge
/// would merge it — the fast path and the slow one never disagree — or
/// not adopted at all; and one called [`LinkGraph::adoptable`] (read before
/// its adoption: the object layer's units) is adopted. Panics on a
/// difference.
#[cfg(fuzzing)]
pub fn check_adoption(bytes: &[u8]) {
    let Ok(two) = crate::elf::parse_object("fuzz.o", bytes) else {
        return;
    };
    let mut one = two.clone();
    let adoptable = one.adoptable();
    let mut adopted = LinkGraph::new();
    let Some(adopted_map) = adopted.adopt(&mut one) else {
        assert!(!adoptable, "called adoptable, not adopted");
        return;
    };
    let mut merged = LinkGraph::new();
    let merged_map = merged.merge_general(two);
    assert_eq!(adopted_map, merged_map, "symbol ids");
    assert_same_graph(&adopted, &merged);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn def(g: &mut LinkGraph, obj: ObjectId, linkage: Linkage, d: SymbolDef) -> Symbol {
        let _ = g;
        Symbol {
            name: Some("x".into()),
            def: d,
            object: Some(obj),
            size: 4,
            scope: Scope::Default,
            linkage,
            callable: false,
            tls: false,
            weak_ref: true,
        }
    }

    fn block(g: &mut LinkGraph, obj: ObjectId) -> BlockId {
        let s = g.section(".data", Prot::ReadWrite, SectionRole::Ordinary);
        g.add_block(Block {
            section: s,
            object: Some(obj),
            input_section: ".data".into(),
            input_offset: 0,
            content: Content::Zero(16),
            align: 8,
            edges: Edges::new(),
            fde: None,
            live: true,
            addr: 0,
        })
    }

    #[test]
    fn strong_beats_weak_and_common_and_duplicates_are_all_kept() {
        let mut g = LinkGraph::new();
        let (a, b, c) = (
            g.add_object("a.o"),
            g.add_object("b.o"),
            g.add_object("c.o"),
        );
        let id = g.global("x", a);
        assert_eq!(g.symbols[id.index()].def, SymbolDef::External);
        let common = def(
            &mut g,
            a,
            Linkage::Weak,
            SymbolDef::Common { size: 4, align: 4 },
        );
        g.define_global(id, common);
        let bigger = def(
            &mut g,
            b,
            Linkage::Weak,
            SymbolDef::Common { size: 16, align: 8 },
        );
        g.define_global(id, bigger);
        assert_eq!(
            g.symbols[id.index()].def,
            SymbolDef::Common { size: 16, align: 8 }
        );
        let bb = block(&mut g, b);
        let weak = def(
            &mut g,
            b,
            Linkage::Weak,
            SymbolDef::Defined {
                block: bb,
                offset: 0,
            },
        );
        g.define_global(id, weak);
        assert!(
            matches!(g.symbols[id.index()].def, SymbolDef::Common { .. }),
            "common beats a weak definition"
        );
        let cb = block(&mut g, c);
        let strong = def(
            &mut g,
            c,
            Linkage::Strong,
            SymbolDef::Defined {
                block: cb,
                offset: 8,
            },
        );
        g.define_global(id, strong.clone());
        assert_eq!(
            g.symbols[id.index()].def,
            SymbolDef::Defined {
                block: cb,
                offset: 8
            }
        );
        assert_eq!(g.symbols[id.index()].name.as_deref(), Some("x"));
        assert!(g.take_duplicates().is_empty());
        // Two more strong definitions: one entry listing all three objects.
        let mut again = strong.clone();
        again.object = Some(a);
        g.define_global(id, again);
        let mut third = strong;
        third.object = Some(b);
        g.define_global(id, third);
        let dups = g.take_duplicates();
        assert_eq!(dups.len(), 1);
        assert_eq!(dups[0].1, vec![c, a, b]);
    }

    #[test]
    fn weak_references_stay_weak_only_if_all_are() {
        let mut g = LinkGraph::new();
        let a = g.add_object("a.o");
        let id = g.global("w", a);
        assert!(g.symbols[id.index()].weak_ref);
        g.symbols[id.index()].weak_ref = false;
        let again = g.global("w", a);
        assert_eq!(id, again);
        assert!(!g.symbols[id.index()].weak_ref);
    }

    #[test]
    fn input_contents_are_checked_ranges_and_compare_by_bytes() {
        let file: InputBytes = std::sync::Arc::new(b"abcdef".to_vec().into());
        assert!(Content::input(&file, 4, 3).is_none(), "past the end");
        assert!(Content::input(&file, usize::MAX, 2).is_none(), "overflow");
        let c = Content::input(&file, 1, 3).unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.bytes(), Some(&b"bcd"[..]));
        assert_eq!(c, Content::Bytes(b"bcd".to_vec()));
        assert_ne!(c, Content::Bytes(b"bce".to_vec()));
        assert_ne!(Content::Zero(3), Content::Bytes(vec![0; 3]));
        assert_eq!(Content::Zero(3), Content::Zero(3));
    }

    #[test]
    fn globals_found_by_precomputed_hash_and_by_name_agree() {
        let mut g = LinkGraph::new();
        let a = g.add_object("a.o");
        let x = g.global("x", a);
        let y = g.global_hashed("y", name_hash("y"), a);
        assert_eq!(g.global_hashed("x", name_hash("x"), a), x);
        assert_eq!(g.global("y", a), y);
        assert_eq!(g.global_id("y"), Some(y));
        assert_eq!(g.global_id("z"), None);
        assert_eq!(g.symbols[y.index()].name.as_deref(), Some("y"));
        assert_eq!(g.globals.len(), 2);
    }

    /// An x86-64 ELF object being written, with 64 bytes of `.text`.
    pub(crate) fn object_with_text() -> (object::write::Object<'static>, object::write::SectionId) {
        let mut o = object::write::Object::new(
            object::BinaryFormat::Elf,
            object::Architecture::X86_64,
            object::Endianness::Little,
        );
        let text = o.section_id(object::write::StandardSection::Text);
        o.append_section_data(text, &[0xc3; 64], 16);
        (o, text)
    }

    /// An x86-64 object with a piece of everything the merge decides:
    /// global, hidden, weak and local functions, undefined (strong and
    /// weak) references, a COMMON, a thread-local, a COMDAT group (named
    /// `twice` times), a global in a section the reader skips, and
    /// relocations to globals and to a section symbol.
    pub(crate) fn rich_object(twice: usize) -> Vec<u8> {
        use object::write::{Comdat, Object, Relocation, StandardSection, SymbolSection};
        use object::{SymbolFlags, SymbolKind, SymbolScope};
        let (mut o, text) = object_with_text();
        let data = o.section_id(StandardSection::Data);
        o.append_section_data(data, &[1; 16], 8);
        let tdata = o.section_id(StandardSection::Tls);
        o.append_section_data(tdata, &[2; 8], 8);
        let note = o.add_section(
            Vec::new(),
            b".note.kiln".to_vec(),
            object::SectionKind::Note,
        );
        o.append_section_data(note, &[0; 8], 4);
        let sym = |o: &mut Object<'_>, name: &str, section, value, kind, scope, weak| {
            o.add_symbol(object::write::Symbol {
                name: name.as_bytes().to_vec(),
                value,
                size: 8,
                kind,
                scope,
                weak,
                section,
                flags: SymbolFlags::None,
            })
        };
        let (code, global) = (SymbolKind::Text, SymbolScope::Dynamic);
        let here = SymbolSection::Section(text);
        sym(&mut o, "f", here, 0, code, global, false);
        sym(
            &mut o,
            "local",
            here,
            16,
            code,
            SymbolScope::Compilation,
            false,
        );
        sym(
            &mut o,
            "hidden",
            here,
            32,
            code,
            SymbolScope::Linkage,
            false,
        );
        sym(&mut o, "weak", here, 48, code, global, true);
        let undefined = SymbolSection::Undefined;
        let ext = sym(&mut o, "ext", undefined, 0, code, global, false);
        let weak_ext = sym(&mut o, "weak_ext", undefined, 0, code, global, true);
        sym(
            &mut o,
            "common",
            SymbolSection::Common,
            8,
            SymbolKind::Data,
            global,
            false,
        );
        let tls = SymbolSection::Section(tdata);
        sym(&mut o, "tls", tls, 0, SymbolKind::Tls, global, false);
        let skipped = SymbolSection::Section(note);
        sym(
            &mut o,
            "in_note",
            skipped,
            0,
            SymbolKind::Data,
            global,
            false,
        );
        // A group's signature is its symbol's name: each group here is
        // named after the first one's symbol.
        let mut signature = None;
        for k in 0..twice {
            let inl = o.add_section(Vec::new(), b".text.inl".to_vec(), object::SectionKind::Text);
            o.append_section_data(inl, &[0xc3; 8], 16);
            let name = if k == 0 { "inl" } else { "inl_again" };
            let at = SymbolSection::Section(inl);
            let symbol = sym(&mut o, name, at, 0, code, global, true);
            o.add_comdat(Comdat {
                kind: object::ComdatKind::Any,
                symbol: *signature.get_or_insert(symbol),
                sections: vec![inl],
            });
        }
        let data_section = o.section_symbol(data);
        let call = object::RelocationFlags::Elf {
            r_type: object::elf::R_X86_64_PLT32,
        };
        let pc = object::RelocationFlags::Elf {
            r_type: object::elf::R_X86_64_PC32,
        };
        for (offset, symbol, flags) in
            [(1, ext, call), (17, weak_ext, call), (33, data_section, pc)]
        {
            let relocation = Relocation {
                offset,
                symbol,
                addend: -4,
                flags,
            };
            o.add_relocation(text, relocation)
                .expect("a valid relocation");
        }
        o.write().expect("the object is written")
    }

    #[test]
    fn adopting_equals_merging() {
        let bytes = rich_object(1);
        let parsed = || crate::elf::parse_object("rich.o", &bytes).expect("it parses");
        let mut adopted = LinkGraph::new();
        let adopted_map = adopted
            .adopt(&mut parsed())
            .expect("an object merged into an empty graph is adopted");
        let mut merged = LinkGraph::new();
        let merged_map = merged.merge_general(parsed());
        assert_eq!(adopted_map, merged_map);
        assert_same_graph(&adopted, &merged);
        // The object has what the merge decides.
        let s = |name: &str| &merged.symbols[merged.global_id(name).expect(name).index()];
        assert_eq!(s("in_note").def, SymbolDef::External);
        assert!(!s("in_note").weak_ref);
        assert!(s("weak_ext").weak_ref && !s("ext").weak_ref);
        assert!(matches!(s("common").def, SymbolDef::Common { .. }));
        assert_eq!(merged.comdats.len(), 1);
        // A second object merges against the first as before.
        let second = |g: &mut LinkGraph| g.merge_mapped(parsed());
        assert_eq!(second(&mut adopted), second(&mut merged));
        assert_same_graph(&adopted, &merged);
    }

    /// The table of 32-bit absolute kinds names what non-PIE code uses,
    /// and only that.
    #[test]
    fn the_32bit_absolute_kinds_are_non_pie_codes_relocations() {
        let absolute = |isa: Isa, r_type: object::elf::RelocationType| {
            let id = EdgeId::from(isa.edge(r_type.0).expect("a known relocation"));
            absolute_32bit_kinds()[usize::from(id.raw())]
        };
        use object::elf;
        for r in [elf::R_X86_64_32, elf::R_X86_64_32S] {
            assert!(absolute(Isa::X86_64, r), "{r}");
        }
        for r in [
            elf::R_X86_64_PC32,
            elf::R_X86_64_PLT32,
            elf::R_X86_64_64,
            elf::R_X86_64_GOTPCRELX,
            elf::R_X86_64_GOTOFF64,
        ] {
            assert!(!absolute(Isa::X86_64, r), "{r}");
        }
        assert!(absolute(Isa::Aarch64, elf::R_AARCH64_ABS32));
        assert!(!absolute(Isa::Aarch64, elf::R_AARCH64_PREL32));
        assert!(!absolute(Isa::Aarch64, elf::R_AARCH64_CALL26));
        // Every kind of both ISAs is in the table, as `reach32` says.
        for isa in [Isa::X86_64, Isa::Aarch64] {
            for desc in isa.edges() {
                let id = EdgeId::from(desc);
                let edge = Edge::new(0, id, SymbolId(0), 0);
                assert_eq!(
                    absolute_32bit_kinds()[usize::from(id.raw())],
                    edge.reach32().is_some_and(Reach32::is_absolute),
                    "{}",
                    desc.name
                );
            }
        }
    }

    #[test]
    fn an_object_naming_a_group_twice_is_merged_not_adopted() {
        let bytes = rich_object(2);
        let parsed = || crate::elf::parse_object("twice.o", &bytes).expect("it parses");
        let mut adopted = LinkGraph::new();
        assert!(adopted.adopt(&mut parsed()).is_none());
        assert_same_graph(&adopted, &LinkGraph::new());
        let mut merged = LinkGraph::new();
        merged.merge_general(parsed());
        let mut through_merge = LinkGraph::new();
        through_merge.merge_mapped(parsed());
        assert_same_graph(&through_merge, &merged);
        // The second copy was dropped: what only it defined is referenced.
        let again = merged.global_id("inl_again").expect("named");
        assert_eq!(merged.symbols[again.index()].def, SymbolDef::External);
        assert_eq!(merged.comdats.len(), 1);
    }

    #[test]
    fn fx_hasher_distinguishes_lengths() {
        use std::hash::Hasher;
        let h = |s: &str| {
            let mut x = FxHasher::default();
            x.write(s.as_bytes());
            x.finish()
        };
        assert_ne!(h("a"), h("a\0"));
        assert_ne!(h("printf"), h("fprintf"));
    }
}
