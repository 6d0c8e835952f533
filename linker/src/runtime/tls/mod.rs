//! Thread-local storage for JIT'd code, in all four x86-64 TLS models.
//!
//! One [`TlsModule`] per linked image that has `.tdata`/`.tbss` (the
//! image's TLS template: all its objects' TLS sections laid out together,
//! `size` bytes aligned to `align`). The linker:
//! 1. creates it **before fixup** with [`TlsModule::new`], choosing a
//!    [`TlsPlacement`] (use [`TlsPlacement::PreferStatic`] unless told
//!    otherwise: a static module serves every model, a dynamic one only the
//!    dynamic models);
//! 2. fixes up TLS relocations from it, with `off` = the variable's offset
//!    in the template:
//!    - `R_X86_64_TLSGD` / `R_X86_64_TLSLD`: a GOT pair
//!      `{ti_module: module_id(), ti_offset: off (GD) or 0 (LD)}`; the call
//!      to `__tls_get_addr` binds to kiln's ([`super::host_overrides`]).
//!      `R_X86_64_DTPOFF32/64`: `off`.
//!    - `R_X86_64_GOTPC32_TLSDESC`: a 16-byte GOT descriptor
//!      `{resolver, argument}` from [`TlsModule::tlsdesc`]`(off)`;
//!      `R_X86_64_TLSDESC_CALL`: nothing to patch.
//!    - `R_X86_64_GOTTPOFF` (GOT entry) and `R_X86_64_TPOFF32/64`: the
//!      thread-pointer offset from [`TlsModule::static_tp_offset`], which
//!      fails with an error naming the variable, the object and `-fPIC`
//!      when the module is not static;
//! 3. after fixup, calls [`TlsModule::initialize`] with the relocated
//!    `.tdata` bytes (the rest, up to `size`, is `.tbss`: zero), before any
//!    code of the image runs;
//! 4. drops the module after the image's finalizers ran (it frees every
//!    thread's dynamic block; threads must not touch it afterwards).
//!
//! Dynamic modules ([`TlsPlacement::Dynamic`]): each thread's block is
//! allocated on its first access (through `__tls_get_addr` or a TLSDESC
//! call), initialized from the image, and freed at that thread's exit or
//! when the module is dropped, whichever comes first. Module ids carry the
//! tag [`MODULE_ID_TAG`] in their top byte, so kiln's `__tls_get_addr`
//! tells them from ld.so's (small integers) and forwards those unchanged.
//!
//! Static modules live in kiln's static TLS area (see the guarantees in
//! [`static_area`](self#static-tls): same thread-pointer offset in every
//! thread; initial values reach every thread created after `initialize`
//! and every *attached* thread). A host that calls JIT'd code with
//! non-zero-initialized `thread_local`s from threads that existed before
//! the link should call [`attach_current_thread`] on them (for example in a
//! thread pool's start handler).
//!
//! # Static TLS
//! kiln reserves [`static_area_size`] bytes inside the host executable's
//! own static TLS block (a `thread_local!` of this crate). A range is
//! reused only after its module is dropped, once the area is used up,
//! while every live thread is attached (or past kiln's cleanup at its
//! exit) — every copy of it zeroed first
//! (an image file's local-exec code claims the exact range it was linked
//! against: `TlsModule::claim_static`) — so modules with only zero initial values (all C++
//! `thread_local` objects with constructors, `.tbss`) are correct in every
//! thread, before and after the link. Modules with non-zero `.tdata` are
//! correct in threads created after [`TlsModule::initialize`] and in
//! attached threads (the process's main thread, the initializing thread,
//! threads that used kiln's runtime — a lazy function's first call,
//! running initializers, `Jit::get` — and those that called
//! [`attach_current_thread`]); an unattached thread that existed before
//! sees zeros ([`unattached_threads`] lists the candidates). A torn copy is
//! possible for a thread being created at the very moment a module is
//! initialized (glibc copies the init image without a lock kiln can take). The area exists only when kiln is linked
//! into the main executable; [`static_tls_status`] says whether it does.

mod desc;
pub(crate) mod static_area;

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Mutex, PoisonError};

use super::thread::{self, DtvEntry};

/// Top byte of every kiln TLS module id (`'K'`); ld.so's ids are small.
pub const MODULE_ID_TAG: u64 = 0x4b << 56;
const TAG_MASK: u64 = 0xff << 56;

/// Where a module's per-thread storage lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsPlacement {
    /// Heap blocks allocated per thread on first access. Serves
    /// general/local-dynamic and TLSDESC code only.
    Dynamic,
    /// kiln's static TLS area (fixed thread-pointer offset); fails if it is
    /// unavailable or full. Serves every model.
    Static,
    /// Static if possible, otherwise dynamic.
    PreferStatic,
}

/// A TLS request kiln cannot satisfy.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// Initial-exec/local-exec code needs a static thread-pointer offset,
    /// and the module holding the variable is not static (user error or
    /// implementation limit; the message says which and how to avoid it).
    #[error(
        "thread_local `{variable}` in {object} is accessed with the initial-exec/local-exec TLS model \
         ({relocation}), which needs static TLS, but TLS module `{module}` is dynamic: {reason}; \
         compile {object} with -fPIC (global-dynamic model) to avoid static TLS"
    )]
    NeedsStaticTls {
        /// Variable named by the relocation.
        variable: String,
        /// Object containing the relocation.
        object: String,
        /// Relocation type, e.g. `R_X86_64_GOTTPOFF`.
        relocation: String,
        /// The module's name.
        module: String,
        /// Why the module is not static.
        reason: String,
    },
    /// A static placement was required and could not be had.
    #[error(
        "TLS module `{module}` ({size} bytes, align {align}) cannot be placed in static TLS: {reason}"
    )]
    StaticUnavailable {
        /// The module's name.
        module: String,
        /// Requested size.
        size: usize,
        /// Requested alignment.
        align: usize,
        /// Why.
        reason: String,
    },
    /// The requested layout is invalid (user error: corrupt object).
    #[error("TLS module `{module}` has an invalid layout: size {size}, align {align}")]
    BadLayout {
        /// The module's name.
        module: String,
        /// Requested size.
        size: usize,
        /// Requested alignment.
        align: usize,
    },
    /// [`TlsModule::initialize`] got more bytes than the module's size, or
    /// was called twice (linker bug).
    #[error("TLS module `{module}`: {reason}")]
    BadImage {
        /// The module's name.
        module: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// kiln could not write a static module's initial values where glibc
    /// copies them from for new threads (implementation limit; threads
    /// created from now on would see zeros).
    #[error(
        "TLS module `{module}`: {reason}; threads created from now on would not see its initial values"
    )]
    StaticInit {
        /// The module's name.
        module: String,
        /// What failed.
        reason: &'static str,
    },
    /// TLSDESC for dynamic modules needs XSAVE to preserve vector registers
    /// (implementation limit).
    #[error(
        "TLSDESC access to dynamic TLS module `{module}` is unsupported on this CPU (no XSAVE); \
         compile with -mtls-dialect=gnu"
    )]
    TlsDescUnsupported {
        /// The module's name.
        module: String,
    },
}

/// `tls_index` as passed to `__tls_get_addr`.
#[repr(C)]
#[derive(Debug)]
pub(crate) struct TlsIndex {
    module: u64,
    offset: u64,
}

#[derive(Debug)]
enum Storage {
    Dynamic,
    /// Thread-pointer offset of the block, and its area offset.
    Static {
        tp_offset: i64,
        area_off: usize,
    },
}

#[derive(Debug)]
struct ModuleEntry {
    id: u64,
    name: String,
    layout: Layout,
    image: Option<Box<[u8]>>,
    storage: Storage,
    /// Why the module is not static (empty when it is), for errors of
    /// other images' initial-exec code that binds to it.
    static_reason: String,
    /// Dynamic blocks by thread key.
    blocks: HashMap<u64, usize>,
    /// TLSDESC arguments handed out, one per variable (offset) however
    /// many images bind to it — a long-lived module other images link
    /// against again and again does not grow; boxed because GOT entries
    /// point at them, so they must not move when the map grows.
    desc_args: HashMap<u64, Box<desc::DescArg>>,
}

#[derive(Debug, Default)]
struct Table {
    slots: Vec<Option<ModuleEntry>>,
    generations: Vec<u32>,
    free: Vec<u32>,
}

static TABLE: Mutex<Option<Table>> = Mutex::new(None);

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    let mut guard = TABLE.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Table::default))
}

fn slot_of(id: u64) -> usize {
    (id & 0xffff_ffff) as usize
}

/// A TLS descriptor for a 16-byte TLSDESC GOT entry: write `resolver` at
/// the entry and `argument` 8 bytes after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsDescriptor {
    /// Address of the resolver function.
    pub resolver: usize,
    /// The resolver's argument.
    pub argument: usize,
}

/// One JIT TLS module (an image's TLS template). Dropping it unregisters
/// the module and frees every thread's dynamic block.
#[derive(Debug)]
pub struct TlsModule {
    id: u64,
    name: String,
    tp_offset: Option<i64>,
    static_reason: String,
    /// Its range of the static area: (area offset, size).
    area: Option<(usize, usize)>,
}

impl TlsModule {
    /// Registers a module of `size` bytes aligned to `align` (a power of
    /// two); `name` (the image or object) appears in errors.
    pub fn new(
        name: &str,
        size: usize,
        align: usize,
        placement: TlsPlacement,
    ) -> Result<TlsModule, TlsError> {
        let align = align.max(1);
        let layout =
            Layout::from_size_align(size.max(1), align).map_err(|_| TlsError::BadLayout {
                module: name.to_owned(),
                size,
                align,
            })?;
        let (storage, static_reason) = match placement {
            TlsPlacement::Dynamic => (Storage::Dynamic, "it was registered as dynamic".to_owned()),
            TlsPlacement::Static | TlsPlacement::PreferStatic => {
                match static_area::reserve(size, align) {
                    Ok((area_off, tp_offset)) => (
                        Storage::Static {
                            tp_offset,
                            area_off,
                        },
                        String::new(),
                    ),
                    Err(e) => {
                        let reason = match e {
                            static_area::ReserveError::Unavailable(why) => why.to_owned(),
                            static_area::ReserveError::Exhausted { available } => format!(
                                "it needs {size} bytes and kiln's static TLS area has {available} of its {} bytes left",
                                static_area::AREA_SIZE
                            ),
                            static_area::ReserveError::ReuseBlocked { unattached } => format!(
                                "kiln's static TLS area is used up; a removed module's range would fit, but {unattached} live thread(s) not attached to the area may hold its old values there (attach every thread that runs JIT'd code with runtime::tls::attach_current_thread)"
                            ),
                            static_area::ReserveError::TooAligned => format!(
                                "alignment {align} exceeds the static area's {}",
                                static_area::AREA_ALIGN
                            ),
                        };
                        if placement == TlsPlacement::Static {
                            return Err(TlsError::StaticUnavailable {
                                module: name.to_owned(),
                                size,
                                align,
                                reason,
                            });
                        }
                        (Storage::Dynamic, reason)
                    }
                }
            }
        };
        Ok(register(name, layout, storage, static_reason))
    }

    /// Registers a module in exactly `[area_off, area_off + size)` of
    /// kiln's static TLS area (an image's local-exec code addresses it at
    /// the thread-pointer offsets fixed when it was linked): fails if that
    /// range is out of bounds or was handed out in this process.
    pub(crate) fn claim_static(
        name: &str,
        size: usize,
        align: usize,
        area_off: usize,
    ) -> Result<TlsModule, static_area::ClaimError> {
        let layout = Layout::from_size_align(size.max(1), align.max(1))
            .map_err(|_| static_area::ClaimError::OutOfBounds)?;
        let tp_offset = static_area::claim(area_off, size, align.max(1))?;
        let storage = Storage::Static {
            tp_offset,
            area_off,
        };
        Ok(register(name, layout, storage, String::new()))
    }

    /// Its range of kiln's static TLS area: (offset in the area, size).
    pub(crate) fn static_range(&self) -> Option<(usize, usize)> {
        self.area
    }

    /// Drops the module and gives its static range back for
    /// [`TlsModule::claim_static`] (the same image loaded from its file):
    /// only for a module whose image's code never ran, so no thread holds
    /// values of it.
    pub(crate) fn release_unused(mut self) {
        let had_image = with_table(|t| {
            t.slots[slot_of(self.id)]
                .as_ref()
                .and_then(|e| e.image.as_deref())
                .is_some_and(|i| i.iter().any(|&b| b != 0))
        });
        // Given back here, not retired by the drop.
        let area = self.area.take();
        drop(self);
        if let Some((off, size)) = area {
            static_area::release_unused(off, size, had_image);
        }
    }

    /// The module id for `tls_index.ti_module` (GOT entry of TLSGD/TLSLD).
    pub fn module_id(&self) -> u64 {
        self.id
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the module lives in kiln's static TLS area.
    pub fn is_static(&self) -> bool {
        self.tp_offset.is_some()
    }

    /// Thread-pointer offset of the block (static modules only).
    pub fn tp_offset(&self) -> Option<i64> {
        self.tp_offset
    }

    /// The value of `R_X86_64_TPOFF32/64` and of a `R_X86_64_GOTTPOFF` GOT
    /// entry for the variable at `offset` in this module; `variable`,
    /// `object` and `relocation` only name things in the error.
    pub fn static_tp_offset(
        &self,
        offset: u64,
        variable: &str,
        object: &str,
        relocation: &str,
    ) -> Result<i64, TlsError> {
        let user = || (variable.into(), object.into(), relocation.into());
        tp_offset_in(
            self.tp_offset,
            offset,
            &self.name,
            &self.static_reason,
            user,
        )
    }

    /// The TLSDESC descriptor for the variable at `offset` in this module.
    /// Its resolver returns the variable's address minus the thread
    /// pointer, preserving every register but `rax` (and flags).
    pub fn tlsdesc(&self, offset: u64) -> Result<TlsDescriptor, TlsError> {
        descriptor(self.id, self.tp_offset, &self.name, offset)
    }

    /// The value the engine holds for this module's thread-local at
    /// `offset`, through which another image's thread-local references
    /// bind to it ([`Foreign::of`]): a tag, the module's slot and the
    /// offset. `None` for a slot or an offset too large to encode (16 M
    /// modules at once, a 4 GiB TLS block). The slot's generation is not
    /// in it: the engine holds the value only while the module's image
    /// defines the symbol, and an image that bound it before that image
    /// failed depends on the symbol, so fails too — its code, bound to
    /// whatever module took the slot since, never runs.
    pub(crate) fn exported(&self, offset: u64) -> Option<u64> {
        let slot = self.id & 0xffff_ffff;
        (slot < EXPORT_SLOTS && offset <= u64::from(u32::MAX))
            .then_some(EXPORT_TAG | slot << 32 | offset)
    }

    /// Sets the module's initial image (the relocated `.tdata` bytes; the
    /// remainder up to the size is zero). Call exactly once, after fixup
    /// and before any code of the image runs.
    pub fn initialize(&self, tdata: &[u8]) -> Result<(), TlsError> {
        let bad = |reason| TlsError::BadImage {
            module: self.name.clone(),
            reason,
        };
        let area_off = with_table(|t| {
            let entry = t.slots[slot_of(self.id)]
                .as_mut()
                .ok_or(bad("not registered"))?;
            if entry.image.is_some() {
                return Err(bad("initialized twice"));
            }
            if tdata.len() > entry.layout.size() {
                return Err(bad(".tdata image larger than the module"));
            }
            entry.image = Some(tdata.into());
            Ok(match entry.storage {
                Storage::Static { area_off, .. } => Some(area_off),
                Storage::Dynamic => None,
            })
        })?;
        if let Some(area_off) = area_off {
            static_area::initialize(area_off, tdata).map_err(|reason| TlsError::StaticInit {
                module: self.name.clone(),
                reason,
            })?;
        }
        Ok(())
    }

    /// This thread's address of the variable at `offset` (what
    /// `__tls_get_addr` returns), allocating the thread's block if needed.
    pub fn address(&self, offset: u64) -> *mut u8 {
        block_for(self.id).wrapping_add(offset as usize)
    }
}

/// Top byte of the engine's value of an exported thread-local
/// ([`TlsModule::exported`]; `'T'`).
const EXPORT_TAG: u64 = 0x54 << 56;
/// Slots an exported value can name (24 bits between tag and offset).
const EXPORT_SLOTS: u64 = 1 << 24;

/// The TLSDESC descriptor for the variable at `offset` of module `id`
/// (named `name`; static at thread-pointer offset `tp`, or dynamic).
fn descriptor(
    id: u64,
    tp: Option<i64>,
    name: &str,
    offset: u64,
) -> Result<TlsDescriptor, TlsError> {
    if let Some(base) = tp {
        return Ok(TlsDescriptor {
            resolver: desc::static_resolver(),
            argument: (base + offset as i64) as usize,
        });
    }
    if !desc::prepare_dynamic() {
        return Err(TlsError::TlsDescUnsupported {
            module: name.to_owned(),
        });
    }
    let argument = with_table(|t| {
        let entry = t.slots[slot_of(id)].as_mut().filter(|e| e.id == id)?;
        let arg = (entry.desc_args.entry(offset))
            .or_insert_with(|| Box::new(desc::DescArg { id, offset }));
        Some(&**arg as *const desc::DescArg as usize)
    });
    Ok(TlsDescriptor {
        resolver: desc::dynamic_resolver(),
        argument: argument.unwrap_or(0),
    })
}

/// The thread-pointer offset of the variable at `offset` of a module
/// static at `tp`, or the error naming why initial-exec/local-exec code
/// cannot reach it: `user` gives the variable, the object and the
/// relocation, asked only then.
fn tp_offset_in(
    tp: Option<i64>,
    offset: u64,
    module: &str,
    static_reason: &str,
    user: impl FnOnce() -> (String, String, String),
) -> Result<i64, TlsError> {
    let Some(base) = tp else {
        let (variable, object, relocation) = user();
        return Err(TlsError::NeedsStaticTls {
            variable,
            object,
            relocation,
            module: module.to_owned(),
            reason: static_reason.to_owned(),
        });
    };
    Ok(base + offset as i64)
}

/// A thread-local of another image, found from the value its image
/// exported ([`TlsModule::exported`]): what a reference binds to.
#[derive(Debug, Clone)]
pub(crate) struct Foreign {
    id: u64,
    offset: u64,
    module: String,
    tp_offset: Option<i64>,
    static_reason: String,
    /// Its module has its initial image: code of its image may run.
    initialized: bool,
}

impl Foreign {
    /// The thread-local `value` names, if it is an exported value whose
    /// module is registered.
    pub(crate) fn of(value: u64) -> Option<Foreign> {
        if value & TAG_MASK != EXPORT_TAG {
            return None;
        }
        let slot = ((value >> 32) & (EXPORT_SLOTS - 1)) as usize;
        let offset = value & 0xffff_ffff;
        with_table(|t| {
            let entry = t.slots.get(slot)?.as_ref()?;
            (offset <= entry.layout.size() as u64).then(|| Foreign {
                id: entry.id,
                offset,
                module: entry.name.clone(),
                tp_offset: match entry.storage {
                    Storage::Static { tp_offset, .. } => Some(tp_offset),
                    Storage::Dynamic => None,
                },
                static_reason: entry.static_reason.clone(),
                initialized: entry.image.is_some(),
            })
        })
    }

    /// Its module's id (`tls_index.ti_module`).
    pub(crate) fn module_id(&self) -> u64 {
        self.id
    }

    /// Its offset in its module's block (`tls_index.ti_offset`).
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Its thread-pointer offset, for initial-exec/local-exec code: as
    /// [`TlsModule::static_tp_offset`], `user` naming the variable, the
    /// object and the relocation in the error (called only for one).
    pub(crate) fn static_tp_offset(
        &self,
        user: impl FnOnce() -> (String, String, String),
    ) -> Result<i64, TlsError> {
        tp_offset_in(
            self.tp_offset,
            self.offset,
            &self.module,
            &self.static_reason,
            user,
        )
    }

    /// Its TLSDESC descriptor, as [`TlsModule::tlsdesc`].
    pub(crate) fn tlsdesc(&self) -> Result<TlsDescriptor, TlsError> {
        descriptor(self.id, self.tp_offset, &self.module, self.offset)
    }
}

/// The calling thread's instance of the thread-local whose engine value
/// (a [`kiln_engine::SymbolDef`]'s address, with the
/// [`kiln_engine::SymbolFlags::THREAD_LOCAL`] flag) is `value` — what
/// `dlsym` gives for a thread-local; allocated on this thread's first
/// access. `None` when `value` names no registered module's variable, or
/// one not initialized yet (its image is not Ready).
pub fn thread_local_address(value: u64) -> Option<*mut u8> {
    let foreign = Foreign::of(value).filter(|f| f.initialized)?;
    Some(block_for(foreign.id).wrapping_add(foreign.offset as usize))
}

/// Files a module with `storage` in the table.
fn register(name: &str, layout: Layout, storage: Storage, static_reason: String) -> TlsModule {
    let (tp_offset, area) = match storage {
        Storage::Static {
            tp_offset,
            area_off,
        } => (Some(tp_offset), Some((area_off, layout.size()))),
        Storage::Dynamic => (None, None),
    };
    let id = with_table(|t| {
        let slot = match t.free.pop() {
            Some(s) => s as usize,
            None => {
                t.slots.push(None);
                t.generations.push(0);
                t.slots.len() - 1
            }
        };
        t.generations[slot] = (t.generations[slot] + 1) & 0x00ff_ffff;
        let id = MODULE_ID_TAG | (u64::from(t.generations[slot]) << 32) | slot as u64;
        t.slots[slot] = Some(ModuleEntry {
            id,
            name: name.to_owned(),
            layout,
            image: None,
            storage,
            static_reason: static_reason.clone(),
            blocks: HashMap::new(),
            desc_args: HashMap::new(),
        });
        id
    });
    TlsModule {
        id,
        name: name.to_owned(),
        tp_offset,
        static_reason,
        area,
    }
}

impl Drop for TlsModule {
    fn drop(&mut self) {
        let entry = with_table(|t| {
            let slot = slot_of(self.id);
            let entry = t.slots.get_mut(slot)?.take()?;
            t.free.push(slot as u32);
            Some(entry)
        });
        if let Some(entry) = entry {
            for (_, block) in entry.blocks {
                // SAFETY: allocated in `block_for` with this layout; removed
                // from the table, so no thread can free it again.
                unsafe { std::alloc::dealloc(block as *mut u8, entry.layout) };
            }
        }
        // Threads may still hold its values there: reused only when every
        // copy can be zeroed (`static_area::reuse`).
        if let Some((off, size)) = self.area {
            static_area::retire(off, size);
        }
    }
}

/// Attaches the calling thread to kiln's static TLS area: its copies of
/// static modules with non-zero initial values are initialized now and
/// kept initialized for modules linked later. Threads that use kiln's
/// runtime attach implicitly; call this from threads that existed before a
/// link and run JIT'd initial-exec/local-exec code without ever calling
/// into kiln's runtime.
pub fn attach_current_thread() {
    thread::current();
}

/// Kernel thread ids of the live threads that are not attached (see
/// [`attach_current_thread`]): the threads that would see zeros instead of
/// the initial values of a static module with non-zero `.tdata` initialized
/// now, should they run its initial-exec/local-exec code without attaching.
/// A host can warn about them, or attach them first. Racy by nature
/// (threads come and go); for diagnostics.
pub fn unattached_threads() -> Vec<i32> {
    static_area::unattached_threads()
}

/// Whether kiln's static TLS area is usable in this process, or why not.
pub fn static_tls_status() -> Result<(), String> {
    static_area::host().map(|_| ()).map_err(str::to_owned)
}

/// Total size of kiln's static TLS area, in bytes.
pub fn static_area_size() -> usize {
    static_area::AREA_SIZE
}

/// Bytes of the static TLS area not yet handed out.
pub fn static_area_available() -> usize {
    static_area::available()
}

fn die(message: &str) -> ! {
    eprintln!("kiln runtime: {message}");
    std::process::abort()
}

/// This thread's block of module `id`, allocating and initializing it on
/// first use. Aborts on ids that are not registered: that is JIT code
/// running after its image was removed, and no value could be right.
pub(crate) fn block_for(id: u64) -> *mut u8 {
    let state = thread::current();
    let slot = slot_of(id);
    // SAFETY: this thread's live state; the borrow is not held across calls
    // that could reach this thread's state again.
    let cached = unsafe { (*state).dtv_entry(slot) };
    if let Some(e) = cached.filter(|e| e.id == id) {
        return e.block;
    }
    // SAFETY: this thread's live state, read without holding a borrow.
    let key = unsafe { (*state).key };
    let block = with_table(|t| {
        let Some(entry) = t
            .slots
            .get_mut(slot)
            .and_then(Option::as_mut)
            .filter(|e| e.id == id)
        else {
            die(&format!(
                "thread-local access to TLS module {id:#x}, which is not registered (was its image removed?)"
            ));
        };
        match entry.storage {
            Storage::Static { tp_offset, .. } => {
                thread::thread_pointer().wrapping_add_signed(tp_offset as isize) as *mut u8
            }
            Storage::Dynamic => {
                let Some(image) = entry.image.as_deref() else {
                    die(&format!(
                        "TLS module `{}` used before it was initialized",
                        entry.name
                    ));
                };
                // SAFETY: the layout has a non-zero size.
                let block = unsafe { std::alloc::alloc(entry.layout) };
                if block.is_null() {
                    std::alloc::handle_alloc_error(entry.layout);
                }
                // SAFETY: `block` has `layout.size() >= image.len()` bytes.
                unsafe {
                    std::ptr::copy_nonoverlapping(image.as_ptr(), block, image.len());
                    std::ptr::write_bytes(
                        block.add(image.len()),
                        0,
                        entry.layout.size() - image.len(),
                    );
                }
                entry.blocks.insert(key, block as usize);
                block
            }
        }
    });
    // SAFETY: this thread's live state.
    unsafe { (*state).set_dtv(slot, DtvEntry { id, block }) };
    block
}

/// Frees the calling (exiting) thread's dynamic blocks that are still
/// registered.
pub(crate) fn release_thread_blocks(key: u64, dtv: &[DtvEntry]) {
    with_table(|t| {
        for e in dtv.iter().filter(|e| e.id != 0) {
            let Some(entry) = t
                .slots
                .get_mut(slot_of(e.id))
                .and_then(Option::as_mut)
                .filter(|m| m.id == e.id)
            else {
                continue;
            };
            if let Some(block) = entry.blocks.remove(&key) {
                // SAFETY: allocated in `block_for` with this layout, removed
                // from the table under its lock.
                unsafe { std::alloc::dealloc(block as *mut u8, entry.layout) };
            }
        }
    });
}

unsafe extern "C" {
    #[link_name = "__tls_get_addr"]
    fn real_tls_get_addr(ti: *const TlsIndex) -> *mut c_void;
    /// Defined in the `global_asm!` below.
    fn __kiln_rt_tls_get_addr(ti: *const TlsIndex) -> *mut c_void;
}

// Fast path: a kiln module whose block this thread already has (the same
// walk as the TLSDESC fast path in `desc`, free to clobber caller-saved
// registers). Anything else goes to Rust, after realigning the stack: gcc's
// general-dynamic call sequences do not guarantee a 16-byte aligned stack
// (gcc PR58066).
std::arch::global_asm!(
    ".pushsection .text.__kiln_rt_tls_get_addr,\"ax\",@progbits",
    ".globl __kiln_rt_tls_get_addr",
    ".hidden __kiln_rt_tls_get_addr",
    ".type __kiln_rt_tls_get_addr,@function",
    ".p2align 4",
    "__kiln_rt_tls_get_addr:",
    "    mov rax, qword ptr [rdi]",          // module id
    "    mov rcx, rax",
    "    shr rcx, 56",
    "    cmp rcx, 0x4b",                     // MODULE_ID_TAG
    "    jne 2f",
    "    mov rdx, qword ptr [rip + {tpoff}]",
    "    test rdx, rdx",
    "    jz 2f",
    "    mov rdx, qword ptr fs:[rdx]",       // ThreadState*
    "    test rdx, rdx",
    "    jz 2f",
    "    mov ecx, eax",                      // slot
    "    cmp rcx, qword ptr [rdx + 8]",      // dtv_len
    "    jae 2f",
    "    shl rcx, 4",
    "    add rcx, qword ptr [rdx]",          // &dtv[slot]
    "    cmp rax, qword ptr [rcx]",          // same module id?
    "    jne 2f",
    "    mov rax, qword ptr [rcx + 8]",      // block
    "    add rax, qword ptr [rdi + 8]",      // + offset
    "    ret",
    "2:",
    "    push rbp",
    "    mov rbp, rsp",
    "    and rsp, -16",
    "    call {imp}",
    "    mov rsp, rbp",
    "    pop rbp",
    "    ret",
    ".size __kiln_rt_tls_get_addr, . - __kiln_rt_tls_get_addr",
    ".popsection",
    tpoff = sym desc::STATE_TPOFF,
    imp = sym tls_get_addr,
);

unsafe extern "C" fn tls_get_addr(ti: *const TlsIndex) -> *mut c_void {
    // SAFETY: JIT'd code passes a pointer to its GOT's tls_index pair.
    let (module, offset) = unsafe { ((*ti).module, (*ti).offset) };
    if module & TAG_MASK != MODULE_ID_TAG {
        // SAFETY: not kiln's: ld.so gets the same argument.
        return unsafe { real_tls_get_addr(ti) };
    }
    block_for(module).wrapping_add(offset as usize).cast()
}

/// The overrides this module provides.
pub(crate) fn overrides() -> Vec<(&'static str, usize)> {
    vec![(
        "__tls_get_addr",
        __kiln_rt_tls_get_addr as *const () as usize,
    )]
}

#[cfg(test)]
mod tests;
