//! [`KilnModule`]: `cranelift_module::Module` on a kiln [`Jit`].

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use cranelift_codegen::ir;
use cranelift_codegen::isa::{OwnedTargetIsa, TargetIsa};
use cranelift_control::ControlPlane;
use cranelift_module::{
    DataDescription, DataId, FuncId, Init, Linkage, Module, ModuleDeclarations, ModuleError,
    ModuleReloc, ModuleResult,
};
use kiln_engine::{
    DylibLookup, LookupSet, RequiredState, ResourceTracker, SearchOrder, SymbolDef, SymbolFlags,
    SymbolName,
};
use kiln_linker::jit::Jit;
use kiln_linker::layer::ObjectLayer;
use kiln_linker::memory::Allocation;

use crate::builder::{KilnBuilder, LibcallNames};
use crate::direct::{self, PlacedMemory};
use crate::emit::{
    Arena, Chunks, Code, DataCode, DataInfo, Defined, FuncCode, FuncInfo, Names, OwnedCode,
    build_graph,
};
use crate::error::Error;
use crate::stage::Stage;

/// A group of functions and data objects freed together
/// ([`KilnModule::free_group`]); made by [`KilnModule::new_group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupId(usize);

#[cfg(test)]
impl GroupId {
    pub(crate) fn for_tests(n: usize) -> GroupId {
        GroupId(n)
    }
}

/// What the module and its lazy units share.
pub(crate) struct Shared {
    pub(crate) isa: OwnedTargetIsa,
    pub(crate) names: RwLock<Names>,
    pub(crate) libcall_names: LibcallNames,
    pub(crate) layer: ObjectLayer,
    /// Numbers the bodies of lazy and replaced functions.
    pub(crate) versions: AtomicUsize,
}

impl Shared {
    pub(crate) fn names(&self) -> std::sync::RwLockReadGuard<'_, Names> {
        self.names.read().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a declared function or data object is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Def {
    None,
    /// Defined (pending or linked), in a group or not.
    Defined(Option<GroupId>),
    /// Declared with a compile callback: an entry that can be redirected.
    Lazy,
}

#[derive(Debug)]
struct Group {
    tracker: ResourceTracker,
    funcs: Vec<FuncId>,
    data: Vec<DataId>,
}

/// One group's definitions in a finalize: functions, data objects.
type BatchCode = (Option<GroupId>, Vec<FuncCode>, Vec<DataCode>);

/// Definitions not yet finalized, and who defines what.
#[derive(Default)]
struct State {
    funcs: Vec<(Option<GroupId>, FuncCode)>,
    /// The bytes and relocations of `funcs` defined from bytes
    /// ([`Code::Arena`]).
    code: Chunks<u8>,
    /// The bytes of `funcs` defined from bytes, in code memory
    /// ([`Code::Staged`]; `code` keeps those no memory could be found for).
    stage: Stage,
    relocs: Chunks<ModuleReloc>,
    data: Vec<(Option<GroupId>, DataCode)>,
    func_defs: Vec<Def>,
    /// How many of `func_defs` are `Def::None`: at most this many more
    /// functions can be defined from declarations (`funcs` makes room for
    /// them at once rather than doubling through a large batch).
    undefined_funcs: usize,
    data_defs: Vec<Def>,
    groups: Vec<Option<Group>>,
    current: Option<GroupId>,
}

impl State {
    /// Sets function `i`'s definition state, keeping `undefined_funcs`.
    fn set_func_def(&mut self, i: usize, def: Def) {
        let old = std::mem::replace(&mut self.func_defs[i], def);
        match (old == Def::None, def == Def::None) {
            (true, false) => self.undefined_funcs -= 1,
            (false, true) => self.undefined_funcs += 1,
            _ => {}
        }
    }

    /// Appends a function's code, making room when the list is full for
    /// every function still undefined (each can be defined once before
    /// the next finalize; bodies of lazy or replaced functions, which are
    /// not counted, grow the list as a `Vec` grows).
    fn push_func(&mut self, group: Option<GroupId>, code: FuncCode) {
        if self.funcs.len() == self.funcs.capacity() {
            self.funcs.reserve(self.undefined_funcs.max(1));
        }
        self.funcs.push((group, code));
    }
}

/// `cranelift_module::Module` on kiln: cranelift-jit's API and semantics
/// (declare, define, `finalize_definitions`, `get_finalized_function`), plus
/// lazy compilation ([`KilnModule::declare_lazy_function`]), hot swap
/// ([`KilnModule::replace_function`]) and freeing
/// ([`KilnModule::free_group`]).
///
/// # Threads
///
/// The module is `Send + Sync`. Declaring, [`finalize_definitions`] and
/// freeing take `&mut self` (the `Module` trait's contract, as in
/// cranelift-jit). Defining has `&self` forms —
/// [`KilnModule::define_function_shared`],
/// [`KilnModule::define_function_bytes_shared`],
/// [`KilnModule::define_data_shared`] — so many threads can compile and
/// define at once; lookups ([`KilnModule::get_finalized_function`]), hot
/// swap and lazy first calls are `&self` and run concurrently with calls
/// into the code.
///
/// # Memory
///
/// As with cranelift-jit, dropping the module leaves the code mapped
/// (function pointers stay valid); [`KilnModule::free_memory`] releases it.
///
/// [`finalize_definitions`]: KilnModule::finalize_definitions
pub struct KilnModule {
    jit: Option<Jit>,
    declarations: ModuleDeclarations,
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Addresses after finalization, by id.
    func_addrs: Vec<Option<u64>>,
    data_addrs: Vec<Option<(u64, usize)>>,
    data_sizes: Vec<usize>,
    /// Lazy functions whose entry's address is not looked up yet.
    lazy_entries: Vec<FuncId>,
    batches: usize,
    /// Memory of the batches placed directly, by tracker.
    placed: Arc<PlacedMemory>,
}

const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KilnModule>();
};

impl fmt::Debug for KilnModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KilnModule")
            .field("isa", &self.shared.isa.triple())
            .field("functions", &self.func_addrs.len())
            .field("batches", &self.batches)
            .finish_non_exhaustive()
    }
}

fn code_flags() -> SymbolFlags {
    SymbolFlags::EXPORTED | SymbolFlags::CALLABLE
}

impl KilnModule {
    /// A module on a new kiln JIT (lazy mode, for entries that can be
    /// redirected), with the builder's host symbols defined.
    pub fn new(builder: KilnBuilder) -> Result<KilnModule, Error> {
        let jit = builder.jit.lazy(true).build()?;
        let session = jit.session().clone();
        let symbols = builder.symbols.iter().map(|(name, ptr)| {
            let def = SymbolDef::new(*ptr as u64, code_flags());
            (session.intern(name), def)
        });
        jit.runtime().define_absolute(symbols.collect::<Vec<_>>())?;
        let placed = Arc::new(PlacedMemory::default());
        session.register_resource_manager(placed.clone());
        let shared = Arc::new(Shared {
            isa: builder.isa,
            names: RwLock::new(Names::default()),
            libcall_names: builder.libcall_names,
            layer: jit.layer().clone(),
            versions: AtomicUsize::new(0),
        });
        Ok(KilnModule {
            jit: Some(jit),
            declarations: ModuleDeclarations::default(),
            shared,
            state: Mutex::new(State::default()),
            func_addrs: Vec::new(),
            data_addrs: Vec::new(),
            data_sizes: Vec::new(),
            lazy_entries: Vec::new(),
            batches: 0,
            placed,
        })
    }

    /// The kiln JIT underneath (its session, dylibs, trackers).
    pub fn jit(&self) -> &Jit {
        self.jit
            .as_ref()
            .expect("the JIT lives until free_memory consumes the module")
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn note_function(&mut self, id: FuncId, linkage: Linkage) {
        let i = id.as_u32() as usize;
        let mut names = self
            .shared
            .names
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if i < names.funcs.len() {
            names.funcs[i].linkage = linkage;
            return;
        }
        let decl = self.declarations.get_function_decl(id);
        let name = self.jit().session().intern(&decl.linkage_name(id));
        names.funcs.push(FuncInfo {
            name,
            linkage,
            signature: decl.signature.clone(),
        });
        self.func_addrs.push(None);
        let mut state = self.state();
        state.func_defs.push(Def::None);
        state.undefined_funcs += 1;
        state.stage.expect_functions(1);
    }

    fn note_data(&mut self, id: DataId, linkage: Linkage) {
        let i = id.as_u32() as usize;
        let mut names = self
            .shared
            .names
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if i < names.data.len() {
            names.data[i].linkage = linkage;
            return;
        }
        let decl = self.declarations.get_data_decl(id);
        let name = self.jit().session().intern(&decl.linkage_name(id));
        names.data.push(DataInfo {
            name,
            linkage,
            tls: decl.tls,
        });
        self.data_addrs.push(None);
        self.data_sizes.push(0);
        self.state().data_defs.push(Def::None);
    }

    /// [`Module::define_function`] through `&self`: compiles `ctx` and
    /// records the code, to be linked by the next
    /// [`KilnModule::finalize_definitions`].
    pub fn define_function_shared(
        &self,
        id: FuncId,
        ctx: &mut cranelift_codegen::Context,
        ctrl_plane: &mut ControlPlane,
    ) -> Result<(), Error> {
        self.check_definable(id)?;
        let code = compile_function(&*self.shared.isa, id, ctx, ctrl_plane, &self.shared)?;
        self.record_function(code)
    }

    /// [`Module::define_function_bytes`] through `&self`.
    pub fn define_function_bytes_shared(
        &self,
        id: FuncId,
        alignment: u64,
        bytes: &[u8],
        relocs: &[ModuleReloc],
    ) -> Result<(), Error> {
        self.check_definable(id)?;
        let mut state = self.state();
        record_bytes(&self.shared, &mut state, id, alignment, bytes, relocs)
    }

    /// [`Module::define_function_bytes`]: as
    /// [`KilnModule::define_function_bytes_shared`], without taking a
    /// lock — `&mut self` owns the state, and the declarations it
    /// checks the linkage in change only through `&mut self` too (the
    /// names' linkage is theirs, copied).
    fn define_function_bytes_owned(
        &mut self,
        id: FuncId,
        alignment: u64,
        bytes: &[u8],
        relocs: &[ModuleReloc],
    ) -> Result<(), Error> {
        if id.as_u32() as usize >= self.func_addrs.len() {
            return Err(Error::Module(format!("undeclared function {id}")));
        }
        let decl = self.declarations.get_function_decl(id);
        if !decl.linkage.is_definable() {
            let name = decl.linkage_name(id).into_owned();
            return Err(ModuleError::InvalidImportDefinition(name).into());
        }
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        record_bytes(&self.shared, state, id, alignment, bytes, relocs)
    }

    fn check_definable(&self, id: FuncId) -> Result<(), Error> {
        let names = self.shared.names();
        let info = names
            .funcs
            .get(id.as_u32() as usize)
            .ok_or_else(|| Error::Module(format!("undeclared function {id}")))?;
        if !info.linkage.is_definable() {
            let e = ModuleError::InvalidImportDefinition(info.name.to_string());
            return Err(e.into());
        }
        Ok(())
    }

    fn record_function(&self, code: FuncCode) -> Result<(), Error> {
        let mut state = self.state();
        record_with(&self.shared, &mut state, code.id, |_| Ok(code))
    }

    /// [`Module::define_data`] through `&self`.
    pub fn define_data_shared(&self, id: DataId, data: &DataDescription) -> Result<(), Error> {
        let i = id.as_u32() as usize;
        let info = self
            .shared
            .names()
            .data
            .get(i)
            .cloned()
            .ok_or_else(|| Error::Module(format!("undeclared data object {id}")))?;
        if !info.linkage.is_definable() {
            return Err(ModuleError::InvalidImportDefinition(info.name.to_string()).into());
        }
        if info.tls {
            return Err(Error::Unsupported {
                what: format!("thread-local data ({})", info.name),
            });
        }
        let (bytes, size) = match &data.init {
            Init::Uninitialized => {
                return Err(Error::Module(format!(
                    "{}: data not initialized",
                    info.name
                )));
            }
            Init::Zeros { size } => (None, *size as u64),
            Init::Bytes { contents } => (Some(contents.to_vec()), contents.len() as u64),
        };
        let pointer = match self.shared.isa.pointer_bits() {
            32 => cranelift_codegen::binemit::Reloc::Abs4,
            _ => cranelift_codegen::binemit::Reloc::Abs8,
        };
        let code = DataCode {
            id,
            writable: self.declarations.get_data_decl(id).writable,
            align: data.align.unwrap_or(1),
            bytes,
            size,
            relocs: data.all_relocs(pointer).collect(),
        };
        let mut state = self.state();
        if state.data_defs[i] != Def::None {
            return Err(ModuleError::DuplicateDefinition(info.name.to_string()).into());
        }
        let group = state.current;
        state.data_defs[i] = Def::Defined(group);
        if let Some(GroupId(g)) = group
            && let Some(Some(group)) = state.groups.get_mut(g)
        {
            group.data.push(id);
        }
        state.data.push((group, code));
        Ok(())
    }
}

/// Records function `id`'s bytes and relocations (code memory for the
/// bytes when there is some, the arena otherwise) as its definition.
fn record_bytes(
    shared: &Shared,
    state: &mut State,
    id: FuncId,
    alignment: u64,
    bytes: &[u8],
    relocs: &[ModuleReloc],
) -> Result<(), Error> {
    let isa = &shared.isa;
    let align = alignment
        .max(u64::from(isa.function_alignment().minimum))
        .max(isa.symbol_alignment());
    record_with(shared, state, id, |state| {
        let too_large = || {
            let name = &shared.names().funcs[id.as_u32() as usize].name;
            Error::Module(format!(
                "function `{name}` is too large: {} bytes of code and {} relocations \
                 (a definition holds fewer than 2^32 of each)",
                bytes.len(),
                relocs.len()
            ))
        };
        let relocs = state.relocs.append(relocs).ok_or_else(too_large)?;
        let ahead = shared.layer.link_options().parallel;
        let code = match state.stage.append(state.current, align, bytes, ahead)? {
            Some(bytes) => Code::Staged { bytes, relocs },
            None => Code::Arena {
                bytes: state.code.append(bytes).ok_or_else(too_large)?,
                relocs,
            },
        };
        Ok(FuncCode { id, align, code })
    })
}

/// Records the code `make` gives (after the duplicate check) as function
/// `id`'s definition, in `state` (the module's, locked or owned).
fn record_with(
    shared: &Shared,
    state: &mut State,
    id: FuncId,
    make: impl FnOnce(&mut State) -> Result<FuncCode, Error>,
) -> Result<(), Error> {
    let group = state.current;
    let i = id.as_u32() as usize;
    if state.func_defs[i] != Def::None {
        let name = shared.names().funcs[i].name.to_string();
        return Err(ModuleError::DuplicateDefinition(name).into());
    }
    let code = make(state)?;
    state.set_func_def(i, Def::Defined(group));
    if let Some(GroupId(g)) = group
        && let Some(Some(group)) = state.groups.get_mut(g)
    {
        group.funcs.push(code.id);
    }
    state.push_func(group, code);
    Ok(())
}

/// Compiles `ctx` for `isa` into code waiting to be linked.
pub(crate) fn compile_function(
    isa: &dyn TargetIsa,
    id: FuncId,
    ctx: &mut cranelift_codegen::Context,
    ctrl_plane: &mut ControlPlane,
    shared: &Shared,
) -> Result<FuncCode, Error> {
    let function = || {
        shared
            .names()
            .funcs
            .get(id.as_u32() as usize)
            .map_or_else(|| id.to_string(), |f| f.name.to_string())
    };
    if let Err(e) = ctx.compile(isa, ctrl_plane) {
        return Err(Error::Compile {
            function: function(),
            source: e.inner,
        });
    }
    let compiled = ctx.compiled_code().ok_or_else(|| {
        Error::Module(format!(
            "{}: cranelift gave no code after compiling",
            function()
        ))
    })?;
    let align = u64::from(compiled.buffer.alignment)
        .max(u64::from(isa.function_alignment().minimum))
        .max(isa.symbol_alignment());
    let bytes = compiled.code_buffer().to_vec();
    let relocs = compiled
        .buffer
        .relocs()
        .iter()
        .map(|r| ModuleReloc::from_mach_reloc(r, &ctx.func, id))
        .collect();
    Ok(FuncCode {
        id,
        align,
        code: Code::Owned(Box::new(OwnedCode {
            symbol: None,
            bytes,
            relocs,
        })),
    })
}

impl KilnModule {
    /// Links everything defined since the last call (one batch per group)
    /// and waits until all of it, and everything it reaches, is Ready;
    /// then [`KilnModule::get_finalized_function`] answers. Unlike
    /// cranelift-jit, a symbol no definition or host provides is an error
    /// naming it, not a panic.
    ///
    /// A batch whose every relocation reaches the batch itself or symbols
    /// already Ready is placed directly, as cranelift-jit places it, and
    /// published Ready at once (`direct.rs`); any other batch is linked
    /// as a kiln unit, Ready when all it depends on is.
    pub fn finalize_definitions(&mut self) -> Result<(), Error> {
        let (batches, mut arena) = self.take_batches();
        // Lazy entries first: eager code calling them can then be placed
        // directly (an entry is Ready once its stub exists; the body is
        // compiled on the first call, not here).
        let entries = std::mem::take(&mut self.lazy_entries);
        let mut wanted: Vec<(SymbolName, Defined)> = Vec::new();
        for id in entries {
            let name = self.shared.names().funcs[id.as_u32() as usize].name.clone();
            wanted.push((name, Defined::Func(id)));
        }
        self.look_up(&wanted)?;
        wanted.clear();
        for (group, funcs, data) in batches {
            for d in &data {
                self.data_sizes[d.id.as_u32() as usize] = d.size as usize;
            }
            if !self.place_batch(group, &funcs, &mut arena, &data)? {
                self.add_batch(group, funcs, &arena, data, &mut wanted)?;
            }
        }
        self.look_up(&wanted)
    }

    /// The definitions recorded since the last finalize, one batch per
    /// group (in the order the groups were first used), and the arena
    /// their bytes are in.
    fn take_batches(&mut self) -> (Vec<BatchCode>, Arena) {
        let (funcs, data, arena) = {
            let mut state = self.state();
            let arena = Arena {
                bytes: (state.code.take().into_iter())
                    .map(|chunk| Arc::new(chunk.into()))
                    .collect(),
                relocs: state.relocs.take(),
                staged: state.stage.take().into_iter().map(Some).collect(),
            };
            (
                std::mem::take(&mut state.funcs),
                std::mem::take(&mut state.data),
                arena,
            )
        };
        // One group (the common case): one batch, the lists moved whole.
        let first = funcs.first().map(|f| f.0).or(data.first().map(|d| d.0));
        if let Some(group) = first
            && funcs.iter().all(|f| f.0 == group)
            && data.iter().all(|d| d.0 == group)
        {
            let funcs = funcs.into_iter().map(|(_, code)| code).collect();
            let data = data.into_iter().map(|(_, code)| code).collect();
            return (vec![(group, funcs, data)], arena);
        }
        let mut batches: Vec<BatchCode> = Vec::new();
        fn batch(batches: &mut Vec<BatchCode>, group: Option<GroupId>) -> usize {
            match batches.iter().position(|b| b.0 == group) {
                Some(i) => i,
                None => {
                    batches.push((group, Vec::new(), Vec::new()));
                    batches.len() - 1
                }
            }
        }
        // Each batch's list sized up front (one group is the common case:
        // the whole list moves once, without regrowing).
        let mut counts: Vec<usize> = Vec::new();
        for &(group, _) in &funcs {
            let i = batch(&mut batches, group);
            if i == counts.len() {
                counts.push(0);
            }
            counts[i] += 1;
        }
        for (b, n) in batches.iter_mut().zip(counts) {
            b.1.reserve_exact(n);
        }
        for (group, code) in funcs {
            let i = batch(&mut batches, group);
            batches[i].1.push(code);
        }
        for (group, code) in data {
            let i = batch(&mut batches, group);
            batches[i].2.push(code);
        }
        (batches, arena)
    }

    /// Looks `wanted` up at Ready in `app` and records the addresses.
    fn look_up(&mut self, wanted: &[(SymbolName, Defined)]) -> Result<(), Error> {
        if wanted.is_empty() {
            return Ok(());
        }
        let session = self.jit().session().clone();
        let order = SearchOrder::new().with(self.jit().app(), DylibLookup::ExportedOnly);
        let set = LookupSet::required(wanted.iter().map(|(n, _)| n.clone()));
        let found = session.lookup(&order, &set, RequiredState::Ready).wait()?;
        for ((_, def), (_, what)) in found.by_request().zip(wanted) {
            let Some(def) = def else { continue };
            self.record_address(*what, def.address);
        }
        Ok(())
    }

    fn record_address(&mut self, what: Defined, address: u64) {
        match what {
            Defined::Func(id) => self.func_addrs[id.as_u32() as usize] = Some(address),
            Defined::Data(id) => {
                let size = self.declarations_size(id);
                self.data_addrs[id.as_u32() as usize] = Some((address, size));
            }
        }
    }

    /// The tracker a group's definitions go through (`app`'s default for
    /// none).
    fn tracker_of(&self, group: Option<GroupId>) -> Result<ResourceTracker, Error> {
        match group {
            Some(GroupId(g)) => match self.state().groups.get(g) {
                Some(Some(group)) => Ok(group.tracker.clone()),
                _ => Err(Error::NoGroup(g)),
            },
            None => Ok(self.jit().app().default_tracker()),
        }
    }

    /// Places a batch directly and publishes it Ready at once, if
    /// `direct::place` can (`false`: nothing was done; link it).
    fn place_batch(
        &mut self,
        group: Option<GroupId>,
        funcs: &[FuncCode],
        arena: &mut Arena,
        data: &[DataCode],
    ) -> Result<bool, Error> {
        let layer = &self.shared.layer;
        // Registration with debuggers and profilers, and placement below
        // 2 GiB, are the link's.
        if layer.debug_options().any() || layer.places_below_2gib() {
            return Ok(false);
        }
        let jit = self.jit();
        let session = jit.session();
        let order = jit.app().link_order();
        let ready = |names: &[SymbolName]| session.ready_defs(&order, names);
        let intern = |name: &str| session.intern(name);
        let outside = direct::Outside {
            ready: &ready,
            intern: &intern,
            libcall_names: &*self.shared.libcall_names,
        };
        let known = direct::Known {
            funcs: &self.func_addrs,
            data: &self.data_addrs,
        };
        let parallel = self.shared.layer.link_options().parallel;
        let mut batch = direct::Batch {
            funcs,
            arena,
            data,
            parallel,
        };
        let placed = direct::place(&mut batch, &self.shared.names(), &known, &outside)?;
        let Some(direct::Placed { memory, defs }) = placed else {
            return Ok(false);
        };
        let tracker = self.tracker_of(group)?;
        let bases: Vec<u64> = memory.iter().map(Allocation::base).collect();
        let addresses: Vec<u64> = defs.iter().map(|(_, def)| def.address).collect();
        // Filed under the tracker's key and defined while its removal
        // waits: a freed group's memory is never missed.
        let placed_memory = &self.placed;
        let defined = tracker.with_resource_key(|key| {
            for m in memory {
                placed_memory.add(key, m);
            }
            let defined = jit.app().define_absolute_with(defs, Some(&tracker));
            if defined.is_err() {
                for base in bases {
                    drop(placed_memory.take_back(key, base));
                }
            }
            defined
        })?;
        defined?;
        let ids = funcs
            .iter()
            .map(|f| Defined::Func(f.id))
            .chain(data.iter().map(|d| Defined::Data(d.id)));
        for (what, address) in ids.zip(addresses) {
            self.record_address(what, address);
        }
        Ok(true)
    }

    fn declarations_size(&self, id: DataId) -> usize {
        self.data_sizes[id.as_u32() as usize]
    }

    /// Adds one batch as a kiln unit in `app` (through the group's tracker)
    /// and appends what it defines to `wanted`.
    fn add_batch(
        &mut self,
        group: Option<GroupId>,
        funcs: Vec<FuncCode>,
        arena: &Arena,
        data: Vec<DataCode>,
        wanted: &mut Vec<(SymbolName, Defined)>,
    ) -> Result<(), Error> {
        let object = format!("<cranelift batch {}>", self.batches);
        self.batches += 1;
        let (graph, defined) = {
            let names = self.shared.names();
            build_graph(
                &object,
                funcs,
                arena,
                data,
                &names,
                &*self.shared.libcall_names,
            )?
        };
        let jit = self.jit();
        let session = jit.session();
        let mut by_symbol: Vec<Option<SymbolName>> = vec![None; graph.symbols.len()];
        wanted.reserve(defined.len());
        for (sym, what, interned) in defined {
            let name = match interned {
                Some(name) => name,
                None => {
                    let text = graph.symbols[sym.index()].name.as_deref();
                    session.intern(text.unwrap_or_default())
                }
            };
            by_symbol[sym.index()] = Some(name.clone());
            wanted.push((name, what));
        }
        let tracker = match group {
            Some(GroupId(g)) => {
                let state = self.state();
                match state.groups.get(g) {
                    Some(Some(group)) => Some(group.tracker.clone()),
                    _ => return Err(Error::NoGroup(g)),
                }
            }
            None => None,
        };
        self.shared.layer.add_graph_named(
            jit.app(),
            tracker.as_ref(),
            &object,
            graph,
            by_symbol,
        )?;
        Ok(())
    }

    /// The address of function `id` (cranelift-jit's signature).
    ///
    /// # Panics
    ///
    /// If `id` is not defined and finalized (as cranelift-jit); see
    /// [`KilnModule::try_get_finalized_function`].
    pub fn get_finalized_function(&self, id: FuncId) -> *const u8 {
        if let Some(Some(address)) = self.func_addrs.get(id.as_u32() as usize) {
            return *address as usize as *const u8;
        }
        match self.try_get_finalized_function(id) {
            Ok(ptr) => ptr,
            Err(e) => panic!("{e}"),
        }
    }

    /// The address of function `id` once finalized. For a lazy function
    /// it is the entry's: calls through it compile the body first.
    pub fn try_get_finalized_function(&self, id: FuncId) -> Result<*const u8, Error> {
        match self.func_addrs.get(id.as_u32() as usize) {
            Some(Some(address)) => Ok(*address as usize as *const u8),
            _ => Err(Error::NotFinalized {
                name: self
                    .declarations
                    .get_function_decl(id)
                    .linkage_name(id)
                    .into_owned(),
            }),
        }
    }

    /// The address and size of data object `id` (cranelift-jit's
    /// signature).
    ///
    /// # Panics
    ///
    /// If `id` is not defined and finalized.
    pub fn get_finalized_data(&self, id: DataId) -> (*const u8, usize) {
        match self.data_addrs.get(id.as_u32() as usize) {
            Some(Some((address, size))) => (*address as usize as *const u8, *size),
            _ => panic!(
                "{}",
                Error::NotFinalized {
                    name: self
                        .declarations
                        .get_data_decl(id)
                        .linkage_name(id)
                        .into_owned(),
                }
            ),
        }
    }

    /// Releases all the module's code and data, like cranelift-jit's
    /// `free_memory`.
    ///
    /// # Safety
    ///
    /// No thread runs, or will run, code of this module, and no pointer
    /// into its data is used again.
    pub unsafe fn free_memory(mut self) {
        // Dropping the last handle of the JIT ends its session, which
        // releases every image.
        drop(self.jit.take());
    }
}

impl Drop for KilnModule {
    fn drop(&mut self) {
        // As cranelift-jit: dropping the module keeps its code mapped, so
        // function pointers handed out stay valid (`free_memory` releases).
        if let Some(jit) = self.jit.take() {
            std::mem::forget(jit);
        }
    }
}

impl KilnModule {
    /// A new group: what is defined while it is current
    /// ([`KilnModule::set_group`]) can be freed together.
    pub fn new_group(&self) -> Result<GroupId, Error> {
        let tracker = self.jit().app().create_tracker()?;
        let mut state = self.state();
        state.groups.push(Some(Group {
            tracker,
            funcs: Vec::new(),
            data: Vec::new(),
        }));
        Ok(GroupId(state.groups.len() - 1))
    }

    /// Makes `group` current: functions and data defined from now on
    /// (by any thread) belong to it; `None` (the default) for definitions
    /// that live as long as the module.
    pub fn set_group(&self, group: Option<GroupId>) {
        self.state().current = group;
    }

    /// Frees the group's functions and data objects: their symbols leave
    /// the JIT and their memory is released (definitions not finalized
    /// yet are dropped). Their ids stay declared and can be defined again
    /// (and finalized) later.
    ///
    /// The rule for callers: code linked against a freed function keeps
    /// its address. Free a group only when no thread runs, or will run,
    /// its code — directly, through a pointer from
    /// [`KilnModule::get_finalized_function`], or through other code that
    /// calls it. Code that must outlive a callee calls a lazy function
    /// ([`KilnModule::declare_lazy_function`]), whose entry stays and can
    /// be pointed at a new body with [`KilnModule::replace_function`].
    ///
    /// # Safety
    ///
    /// As the rule above: nothing runs or will run the group's code, and
    /// no pointer into its data is used again.
    pub unsafe fn free_group(&mut self, group: GroupId) -> Result<(), Error> {
        let taken = {
            let mut state = self.state();
            let taken = state.groups.get_mut(group.0).and_then(Option::take);
            let Some(taken) = taken else {
                return Err(Error::NoGroup(group.0));
            };
            state.funcs.retain(|(g, _)| *g != Some(group));
            state.data.retain(|(g, _)| *g != Some(group));
            for id in &taken.funcs {
                state.set_func_def(id.as_u32() as usize, Def::None);
            }
            for id in &taken.data {
                state.data_defs[id.as_u32() as usize] = Def::None;
            }
            if state.current == Some(group) {
                state.current = None;
            }
            taken
        };
        for id in &taken.funcs {
            self.func_addrs[id.as_u32() as usize] = None;
        }
        for id in &taken.data {
            self.data_addrs[id.as_u32() as usize] = None;
        }
        taken.tracker.remove()?;
        Ok(())
    }

    /// Declares a function whose body `compile` makes on its first call:
    /// the function's address (after [`KilnModule::finalize_definitions`])
    /// is an entry that compiles and links the body when first called —
    /// once, however many threads call it first at once; they all wait for
    /// it, then run it. `compile` runs on one of kiln's threads with a
    /// [`crate::LazyContext`] to declare callees with; its IR is compiled
    /// for the module's target. If it fails, the call fails as any kiln
    /// lazy entry whose body cannot be linked: the error (with the
    /// callback's as its root cause) is reported on stderr and the process
    /// exits with status 70, unless the host set a failure handler on
    /// `module.jit().lazy_reexports()` (`LazyReexports::set_failure_handler`).
    ///
    /// A lazy function can be replaced while it runs
    /// ([`KilnModule::replace_function`]).
    pub fn declare_lazy_function<F>(
        &mut self,
        name: &str,
        linkage: Linkage,
        signature: &ir::Signature,
        compile: F,
    ) -> Result<FuncId, Error>
    where
        F: FnOnce(&crate::LazyContext) -> Result<ir::Function, crate::BoxError> + Send + 'static,
    {
        let id = self.declare_function(name, linkage, signature)?;
        self.check_definable(id)?;
        {
            let mut state = self.state();
            let i = id.as_u32() as usize;
            if state.func_defs[i] != Def::None {
                return Err(ModuleError::DuplicateDefinition(name.to_string()).into());
            }
            state.set_func_def(i, Def::Lazy);
        }
        let body = self.body_name(id);
        let jit = self.jit();
        let session = jit.session();
        let entry = self.shared.names().funcs[id.as_u32() as usize].name.clone();
        let target = session.intern(&body);
        let unit =
            crate::lazy::LazyBody::new(self.shared.clone(), id, body, target.clone(), compile);
        let bodies = jit.bodies().ok_or(Error::Unsupported {
            what: "a JIT without lazy entries".into(),
        })?;
        bodies.define(unit)?;
        let manager = jit.lazy_reexports().ok_or(Error::Unsupported {
            what: "a JIT without lazy entries".into(),
        })?;
        let alias = kiln_engine::Alias {
            name: entry,
            target,
            flags: code_flags(),
        };
        jit.app().define(manager.reexports(bodies, [alias])?)?;
        self.lazy_entries.push(id);
        Ok(id)
    }

    /// A fresh symbol for a body of `id`: `<name>.kiln.v<N>`.
    fn body_name(&self, id: FuncId) -> String {
        let n = self.shared.versions.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.kiln.v{n}",
            self.shared.names().funcs[id.as_u32() as usize].name
        )
    }

    /// Hot swap: compiles `func` as the new body of the lazy function `id`
    /// and points its entry at it, while other threads may be calling it:
    /// each call runs the old or the new body (a call already running the
    /// old body finishes in it). Old bodies stay mapped while the module
    /// lives. The first call's compile callback is not run if it had not
    /// run yet.
    pub fn replace_function(&self, id: FuncId, func: ir::Function) -> Result<(), Error> {
        let i = id.as_u32() as usize;
        if self.state().func_defs.get(i) != Some(&Def::Lazy) {
            let name = self
                .declarations
                .get_function_decl(id)
                .linkage_name(id)
                .into_owned();
            return Err(Error::NotSwappable { function: name });
        }
        let jit = self.jit();
        let session = jit.session();
        let entry = self.shared.names().funcs[i].name.clone();
        // The entry's stub exists once the entry is Ready.
        let app = SearchOrder::new().with(jit.app(), DylibLookup::ExportedOnly);
        session
            .lookup(
                &app,
                &LookupSet::required([entry.clone()]),
                RequiredState::Ready,
            )
            .wait()?;
        let body = self.body_name(id);
        let mut ctx = cranelift_codegen::Context::for_function(func);
        let mut code = compile_function(
            &*self.shared.isa,
            id,
            &mut ctx,
            &mut ControlPlane::default(),
            &self.shared,
        )?;
        code.set_symbol(body.clone());
        let (graph, _) = {
            let names = self.shared.names();
            build_graph(
                &body,
                vec![code],
                &Arena::default(),
                Vec::new(),
                &names,
                &*self.shared.libcall_names,
            )?
        };
        let bodies = jit.bodies().ok_or(Error::Unsupported {
            what: "a JIT without lazy entries".into(),
        })?;
        self.shared.layer.add_graph(bodies, None, &body, graph)?;
        let body = session.intern(&body);
        let order = SearchOrder::new().with(bodies, DylibLookup::All);
        let found = session
            .lookup(
                &order,
                &LookupSet::required([body.clone()]),
                RequiredState::Ready,
            )
            .wait()?;
        let address = found
            .get(&body)
            .ok_or(kiln_engine::Error::SymbolsNotFound { names: vec![body] })?
            .address;
        // SAFETY: `address` is Ready code of this JIT with the function's
        // signature (compiled from IR declared for `id`), linked into
        // `<bodies>`'s default tracker, which is never removed while the
        // session — and so the entry — lives.
        unsafe { jit.redirect(entry.as_str(), address)? };
        Ok(())
    }
}

impl Module for KilnModule {
    fn isa(&self) -> &dyn TargetIsa {
        &*self.shared.isa
    }

    fn declarations(&self) -> &ModuleDeclarations {
        &self.declarations
    }

    fn declare_function(
        &mut self,
        name: &str,
        linkage: Linkage,
        signature: &ir::Signature,
    ) -> ModuleResult<FuncId> {
        let (id, linkage) = self
            .declarations
            .declare_function(name, linkage, signature)?;
        self.note_function(id, linkage);
        Ok(id)
    }

    fn declare_anonymous_function(&mut self, signature: &ir::Signature) -> ModuleResult<FuncId> {
        let id = self.declarations.declare_anonymous_function(signature)?;
        self.note_function(id, Linkage::Local);
        Ok(id)
    }

    fn declare_data(
        &mut self,
        name: &str,
        linkage: Linkage,
        writable: bool,
        tls: bool,
    ) -> ModuleResult<DataId> {
        let (id, linkage) = self
            .declarations
            .declare_data(name, linkage, writable, tls)?;
        self.note_data(id, linkage);
        Ok(id)
    }

    fn declare_anonymous_data(&mut self, writable: bool, tls: bool) -> ModuleResult<DataId> {
        let id = self.declarations.declare_anonymous_data(writable, tls)?;
        self.note_data(id, Linkage::Local);
        Ok(id)
    }

    fn define_function_with_control_plane(
        &mut self,
        func: FuncId,
        ctx: &mut cranelift_codegen::Context,
        ctrl_plane: &mut ControlPlane,
    ) -> ModuleResult<()> {
        Ok(self.define_function_shared(func, ctx, ctrl_plane)?)
    }

    fn define_function_bytes(
        &mut self,
        func_id: FuncId,
        alignment: u64,
        bytes: &[u8],
        relocs: &[ModuleReloc],
    ) -> ModuleResult<()> {
        Ok(self.define_function_bytes_owned(func_id, alignment, bytes, relocs)?)
    }

    fn define_data(&mut self, data_id: DataId, data: &DataDescription) -> ModuleResult<()> {
        Ok(self.define_data_shared(data_id, data)?)
    }
}
