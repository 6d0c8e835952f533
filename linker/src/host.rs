//! Host symbols: kiln's runtime overrides, then `-l` libraries, then the
//! process itself (dlsym through libloading).

use std::ffi::c_void;
use std::path::{Path, PathBuf};

use std::sync::Mutex;

use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_LAZY, RTLD_NOW};
use rustc_hash::FxHashMap;

/// `dlopen` flag: only find an object already loaded.
const RTLD_NOLOAD: i32 = 4;

use crate::error::LinkError;

/// Answers a link's question "where are these external symbols?" in one call.
///
/// The answer has one entry per name, in order; `None` means not found.
pub trait SymbolResolver: Send + Sync {
    /// Look up every name at once.
    fn resolve(&self, names: &[&str]) -> Vec<Option<u64>>;

    /// A value that changes whenever an answer this resolver gave may
    /// change (never repeated by another resolver); `None` (the default):
    /// answers are never known to stay. A loader keeps the answers for an
    /// image file it loads often while this value stays the same (see
    /// [`SymbolResolver::resolve_stamped`]).
    fn answers_stamp(&self) -> Option<u64> {
        None
    }

    /// [`SymbolResolver::resolve`], with [`SymbolResolver::answers_stamp`]'s
    /// value if every answer is one this resolver will give again for as
    /// long as that value stays (`None`, the default: some may not).
    fn resolve_stamped(&self, names: &[&str]) -> (Vec<Option<u64>>, Option<u64>) {
        (self.resolve(names), None)
    }
}

/// A stamp no resolver used before ([`SymbolResolver::answers_stamp`]).
fn next_stamp() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl<F> SymbolResolver for F
where
    F: Fn(&[&str]) -> Vec<Option<u64>> + Send + Sync,
{
    fn resolve(&self, names: &[&str]) -> Vec<Option<u64>> {
        self(names)
    }
}

/// Sonames of the libraries kiln knows by `-l` name (on Debian `libm.so` and
/// `libc.so` are linker scripts that `dlopen` cannot read).
const KNOWN_SONAMES: &[(&str, &str)] = &[
    ("c", "libc.so.6"),
    ("m", "libm.so.6"),
    ("pthread", "libc.so.6"),
    ("dl", "libc.so.6"),
    ("rt", "libc.so.6"),
    ("stdc++", "libstdc++.so.6"),
    ("gcc_s", "libgcc_s.so.1"),
];

/// The libraries [`HostSymbols::new`] opens only when a name is found
/// nowhere else, in this order: libgcc_s's constructor runs a dozen
/// `cpuid`s (~0.2 ms on this VM class) and `dlopen(RTLD_NOW)` of libstdc++
/// binds ~2,700 symbols (a third of a millisecond), which a C program that
/// never unwinds needs neither of.
const DEFERRED_SONAMES: [&str; 2] = ["libgcc_s.so.1", "libstdc++.so.6"];

/// The host's symbols: runtime overrides, loaded libraries, the process.
#[derive(Debug)]
pub struct HostSymbols {
    overrides: &'static [(&'static str, usize)],
    libraries: Vec<(String, Library)>,
    this: Library,
    /// libgcc_s and libstdc++, each opened on the first name not found
    /// before it (`None` inside: the host has none).
    deferred: [std::sync::OnceLock<Option<Library>>; 2],
    /// Names found before, with their addresses ([`HostSymbols::lookup`]).
    found: Mutex<FxHashMap<Box<str>, u64>>,
    /// Changes (to a value never used before) whenever `found` is
    /// cleared: an answer remembered under one stamp stays while it does.
    stamp: u64,
    /// What keeps the objects that answered through the process's scope
    /// loaded while their answers are in `found`: handles by base address,
    /// and the main program's segments (never unloaded).
    pinned: Mutex<Pinned>,
}

/// See [`HostSymbols::pinned`].
#[derive(Debug, Default)]
struct Pinned {
    main: Option<Vec<(u64, u64)>>,
    handles: Vec<(u64, Library)>,
}

impl HostSymbols {
    /// The process's own symbols, plus libm, libgcc_s and libstdc++ when they
    /// exist, with kiln's runtime overrides consulted first. libgcc_s, then
    /// libstdc++, is opened on the first lookup of a name found nowhere
    /// else (so a C program that never unwinds opens neither); a name they
    /// share with a library loaded by [`HostSymbols::load_library`] comes
    /// from that library, as with `-lNAME` before them on a linker's command
    /// line. Binding a glibc function that unwinds with libgcc_s
    /// (`pthread_exit`, `backtrace`, …) loads libgcc_s first, so that it
    /// knows the JIT'd frames (`runtime/unwinder.rs`).
    pub fn new() -> Self {
        let mut host = HostSymbols {
            overrides: crate::runtime::host_overrides(),
            libraries: Vec::new(),
            this: Library::this(),
            deferred: Default::default(),
            found: Mutex::default(),
            stamp: next_stamp(),
            pinned: Mutex::default(),
        };
        // SAFETY: the system's libm: its initializers are the C library's
        // own, sound in any process that links libc.
        let _ = unsafe { host.load_path(Path::new("libm.so.6")) };
        host
    }

    /// The `k`th of [`DEFERRED_SONAMES`], opened (`RTLD_NOW | RTLD_GLOBAL`,
    /// as `load_path` does) on first use; `None` if the host has none (C
    /// programs still link).
    fn deferred(&self, k: usize) -> Option<&Library> {
        self.deferred[k]
            .get_or_init(|| {
                // SAFETY: one of the system libraries `new` promises to
                // provide (libstdc++, libgcc_s, …): their initializers are
                // sound to run in any process.
                let lib =
                    unsafe { Library::open(Some(DEFERRED_SONAMES[k]), RTLD_NOW | RTLD_GLOBAL) };
                crate::runtime::unwinder::attach_if_loaded();
                lib.ok()
            })
            .as_ref()
    }

    /// Load `-l name`, searching `dirs` (like `-L`) for `libNAME.so`, then
    /// the known sonames, then the loader's search path. As with `ld`,
    /// `:FILE` searches for `FILE` itself; a name with a `/` is a path,
    /// loaded as it is.
    ///
    /// # Safety
    ///
    /// As for [`HostSymbols::load_path`], for the library found.
    pub unsafe fn load_library(&mut self, name: &str, dirs: &[PathBuf]) -> Result<(), LinkError> {
        if name.contains('/') {
            // SAFETY: the library `name` names, which this function's caller
            // vouches for (as below).
            return unsafe { self.load_path(Path::new(name)) };
        }
        let file = match name.strip_prefix(':') {
            Some(file) => file.to_string(),
            None => format!("lib{name}.so"),
        };
        for dir in dirs {
            let p = dir.join(&file);
            // SAFETY: the library found for `name`.
            if p.exists() && unsafe { self.load_path(&p) }.is_ok() {
                return Ok(());
            }
        }
        if let Some((_, soname)) = KNOWN_SONAMES.iter().find(|(n, _)| *n == name) {
            // SAFETY: the known soname of the library `name` names.
            return unsafe { self.load_path(Path::new(soname)) };
        }
        // SAFETY: the library `name` names, from the loader's search path.
        unsafe { self.load_path(Path::new(&file)) }
    }

    /// Load a shared library by path or soname.
    ///
    /// # Safety
    ///
    /// Loading runs the library's initializers (and those of what it
    /// depends on) in this process, and JIT'd code that calls its functions
    /// trusts them: the library must be sound to load and call here, as for
    /// `dlopen`.
    pub unsafe fn load_path(&mut self, path: &Path) -> Result<(), LinkError> {
        // SAFETY: this function's caller vouches for the library.
        let lib = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) }.map_err(|e| {
            LinkError::Library {
                name: path.display().to_string(),
                source: e,
            }
        })?;
        self.libraries.push((path.display().to_string(), lib));
        crate::runtime::unwinder::attach_if_loaded();
        // A name found through the process may come from it now.
        self.found
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        self.stamp = next_stamp();
        Ok(())
    }

    /// Address of `name`, or `None`.
    ///
    /// Answers found are remembered by this `HostSymbols` (loading an
    /// image binds the same ~90 names again each time: `dlsym` through
    /// four scopes was 26 µs of a 190 µs load of Lua's image). A remembered
    /// answer stays right as long as the object defining it stays loaded
    /// and nothing earlier in the search order defines the name:
    ///
    /// - runtime overrides are static; the libraries this `HostSymbols`
    ///   opened (`-l`, libstdc++), and the libraries they depend on (whose
    ///   names `dlsym` on their handles also finds), are held open by it;
    /// - an answer from the process's own scope (`dlsym` on the main
    ///   program, which also sees libraries others opened `RTLD_GLOBAL`)
    ///   is remembered only if its object is pinned: the main program
    ///   (never unloaded) or a library this `HostSymbols` now holds a
    ///   handle to (`dlopen(RTLD_NOLOAD)` of the name `dladdr` gives, so a
    ///   `dlclose` by its opener cannot unload it);
    /// - a library opened later (`load_library`, `&mut self`) forgets
    ///   every answer; one that another part of the process opens
    ///   `RTLD_GLOBAL` later comes after everything already found in the
    ///   global scope, so it does not change those answers.
    ///
    /// Misses are not remembered (a library opened later may define them).
    pub fn lookup(&self, name: &str) -> Option<u64> {
        let remembered = self
            .found
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .copied();
        remembered.or_else(|| self.search_and_remember(name))
    }

    /// [`HostSymbols::lookup`] of a name not remembered (yet).
    fn search_and_remember(&self, name: &str) -> Option<u64> {
        let (addr, stable) = self.search(name)?;
        if stable {
            self.found
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(Box::from(name), addr);
        }
        Some(addr)
    }

    /// [`HostSymbols::lookup`] without memory: the address, and whether it
    /// may be remembered.
    fn search(&self, name: &str) -> Option<(u64, bool)> {
        if let Some(&(_, addr)) = self.overrides.iter().find(|(n, _)| *n == name) {
            return Some((addr as u64, true));
        }
        if crate::runtime::unwinder::UNWINDING_NAMES.contains(&name) {
            crate::runtime::unwinder::load();
        }
        for (_, lib) in &self.libraries {
            if let Some(a) = library_symbol(lib, name) {
                return Some((a, true));
            }
        }
        if let Some(a) = library_symbol(&self.this, name) {
            return Some((a, self.pin(a)));
        }
        (0..DEFERRED_SONAMES.len())
            .find_map(|k| library_symbol(self.deferred(k)?, name))
            .map(|a| (a, true))
    }

    /// Whether the object that defines `addr` stays loaded as long as
    /// `self`: the main program, or a library `self` now holds a handle to.
    fn pin(&self, addr: u64) -> bool {
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        let main = pinned.main.get_or_insert_with(|| {
            loaded_objects()
                .into_iter()
                .find(|o| o.main)
                .map(|o| o.segments)
                .unwrap_or_default()
        });
        if main.iter().any(|&(s, e)| (s..e).contains(&addr)) {
            return true;
        }
        let Some((fname, fbase)) = object_of(addr) else {
            return false;
        };
        if pinned.handles.iter().any(|(b, _)| *b == fbase) {
            return true;
        }
        // SAFETY: RTLD_NOLOAD only takes a reference to an object that is
        // loaded already (its initializers ran); nothing is mapped or run.
        match unsafe { Library::open(Some(&fname), RTLD_NOLOAD | RTLD_LAZY) } {
            Ok(lib) => {
                pinned.handles.push((fbase, lib));
                true
            }
            Err(_) => false,
        }
    }
}

/// The file name and base address of the loaded object containing `addr`
/// (`dladdr`), if it has a name.
fn object_of(addr: u64) -> Option<(std::ffi::OsString, u64)> {
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    // SAFETY: dladdr1 only inspects the loader's tables; `info` is a valid
    // out-pointer (flags 0: `extra` is not written).
    let ok = unsafe { dladdr1(addr as *const c_void, &mut info, std::ptr::null_mut(), 0) };
    if ok == 0 || info.fname.is_null() {
        return None;
    }
    // SAFETY: a non-null `dli_fname` is a NUL-terminated string owned by
    // the loader, valid while the object is loaded (it is: `addr` is in it,
    // and we copy the name now).
    let name = unsafe { std::ffi::CStr::from_ptr(info.fname.cast()) };
    if name.is_empty() {
        return None;
    }
    use std::os::unix::ffi::OsStrExt;
    Some((
        std::ffi::OsStr::from_bytes(name.to_bytes()).to_owned(),
        info.fbase as u64,
    ))
}

/// Address of `name` in `lib` (dlsym), or `None` if absent or null.
///
/// A name shorter than [`NAME_BUFFER`] bytes is made C's on the stack:
/// libloading's `&str` path allocated, copied and freed a `CString` per
/// lookup (a cache hit binds ~90 names).
pub(crate) fn library_symbol(lib: &Library, name: &str) -> Option<u64> {
    let mut buffer = [0u8; NAME_BUFFER];
    let on_stack;
    let owned;
    let c_name: &std::ffi::CStr = if name.len() < NAME_BUFFER {
        buffer[..name.len()].copy_from_slice(name.as_bytes());
        // `None` if `name` holds a NUL: no symbol has that name.
        on_stack = std::ffi::CStr::from_bytes_with_nul(&buffer[..=name.len()]).ok()?;
        on_stack
    } else {
        owned = std::ffi::CString::new(name).ok()?;
        &owned
    };
    // SAFETY: the symbol is only read as an address, never called or
    // dereferenced here; `*const u8` matches any symbol's address.
    let s = unsafe { lib.get::<*const u8>(c_name) }.ok()?;
    let addr = *s as u64;
    (addr != 0).then_some(addr)
}

/// Names shorter than this are looked up without an allocation.
const NAME_BUFFER: usize = 256;

impl Default for HostSymbols {
    fn default() -> Self {
        Self::new()
    }
}

impl SymbolResolver for HostSymbols {
    fn resolve(&self, names: &[&str]) -> Vec<Option<u64>> {
        self.resolve_stamped(names).0
    }

    /// Remembered answers stay until a library is loaded (`&mut self`),
    /// which changes the stamp.
    fn answers_stamp(&self) -> Option<u64> {
        Some(self.stamp)
    }

    /// The stamp when every name had a remembered answer.
    fn resolve_stamped(&self, names: &[&str]) -> (Vec<Option<u64>>, Option<u64>) {
        // Remembered answers under one lock; the rest as `lookup` finds them.
        let mut out: Vec<Option<u64>> = {
            let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
            let out: Vec<Option<u64>> = names.iter().map(|n| found.get(*n).copied()).collect();
            // Room for the answers about to be remembered, grown once.
            found.reserve(out.iter().filter(|a| a.is_none()).count());
            out
        };
        let mut all = true;
        for (a, n) in out.iter_mut().zip(names) {
            if a.is_none() {
                all = false;
                *a = self.search_and_remember(n);
            }
        }
        (out, all.then_some(self.stamp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libc_and_libm() {
        let mut h = HostSymbols::new();
        // SAFETY: the system libm.
        unsafe { h.load_library("m", &[]) }.unwrap();
        let r = h.resolve(&["printf", "cos", "kiln_surely_not_a_symbol"]);
        assert!(r[0].is_some() && r[1].is_some());
        assert!(r[2].is_none());
        // SAFETY: a library that is not there: nothing is loaded.
        assert!(unsafe { h.load_library("kiln_no_such_lib", &[]) }.is_err());
    }

    /// `-l :FILE` is the file itself (searched as `ld` does), a name with a
    /// `/` a path; a path that is not there is reported as given.
    #[test]
    fn a_colon_name_is_a_file_and_a_slash_name_a_path() {
        let mut h = HostSymbols::new();
        // SAFETY: the system libm.
        unsafe { h.load_library(":libm.so.6", &[]) }.expect("libm by its file name");
        assert!(h.resolve(&["cos"])[0].is_some());
        let libm = [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
        ]
        .iter()
        .map(|d| Path::new(d).join("libm.so.6"))
        .find(|p| p.exists())
        .expect("libm.so.6 in a standard directory");
        let path = libm.to_str().expect("a UTF-8 path");
        // SAFETY: the system libm.
        unsafe { HostSymbols::new().load_library(path, &[]) }.expect("libm by its path");
        // SAFETY: a library that is not there: nothing is loaded.
        let e =
            unsafe { h.load_library("/kiln/no/such/libfoo.so", &[]) }.expect_err("no such file");
        assert!(
            matches!(&e, LinkError::Library { name, .. } if name == "/kiln/no/such/libfoo.so"),
            "{e}"
        );
    }

    /// Answers found are remembered (those from the process's scope once
    /// their library is pinned), misses are not, and loading a library
    /// forgets every answer (it comes earlier in the search order).
    #[test]
    fn answers_are_remembered_until_a_library_is_loaded() {
        let mut h = HostSymbols::new();
        let a = h.resolve(&["printf", "kiln_surely_not_a_symbol"]);
        assert!(a[0].is_some() && a[1].is_none(), "{a:?}");
        {
            let found = h.found.lock().unwrap();
            assert_eq!(found.get("printf").copied(), a[0], "printf not remembered");
            assert!(!found.contains_key("kiln_surely_not_a_symbol"));
        }
        // What answers through the process's scope is remembered only once
        // its object is pinned: a library (held by a handle), the main
        // program (never unloaded), not memory of no object.
        let printf = a[0].unwrap();
        assert!(h.pin(printf), "libc not pinned");
        assert!(!h.pinned.lock().unwrap().handles.is_empty());
        let here = answers_are_remembered_until_a_library_is_loaded as *const () as u64;
        assert!(h.pin(here), "the test program not pinned");
        let heap = Box::new(0u64);
        assert!(!h.pin(&*heap as *const u64 as u64), "the heap pinned");
        // SAFETY: the system libm.
        unsafe { h.load_library("m", &[]) }.unwrap();
        assert!(
            h.found.lock().unwrap().is_empty(),
            "kept across a new library"
        );
        assert_eq!(h.resolve(&["printf"]), vec![a[0]]);
    }

    /// A stamp comes with answers that were all remembered; loading a
    /// library changes it; another instance never has the same.
    #[test]
    fn answers_are_stamped_when_all_were_remembered() {
        let mut h = HostSymbols::new();
        let (first, stamp) = h.resolve_stamped(&["printf"]);
        assert!(first[0].is_some() && stamp.is_none(), "not remembered yet");
        let (again, stamp) = h.resolve_stamped(&["printf"]);
        assert_eq!((again, stamp), (first.clone(), h.answers_stamp()));
        let (_, stamp) = h.resolve_stamped(&["printf", "kiln_surely_not_a_symbol"]);
        assert_eq!(stamp, None, "a miss is not remembered");
        let before = h.answers_stamp();
        // SAFETY: the system libm.
        unsafe { h.load_library("m", &[]) }.unwrap();
        assert_ne!(h.answers_stamp(), before);
        assert_eq!(h.resolve_stamped(&["printf"]).1, None, "forgotten");
        assert_eq!(h.resolve_stamped(&["printf"]).1, h.answers_stamp());
        assert_ne!(HostSymbols::new().answers_stamp(), h.answers_stamp());
    }

    /// libstdc++ is opened on the first name found nowhere else, and its
    /// names are then found (a C++ program links without `-lstdc++`).
    #[test]
    fn libstdcxx_is_opened_on_first_miss_and_then_answers() {
        let h = HostSymbols::new();
        assert!(h.deferred[1].get().is_none(), "opened eagerly");
        let r = h.resolve(&["printf", "cos"]);
        assert!(r.iter().all(Option::is_some), "{r:?}");
        assert!(h.deferred[1].get().is_none(), "opened for names libc has");
        // `std::terminate()`: libstdc++ only (found through the process
        // if another test of this process already opened it).
        let r = h.resolve(&["_ZSt9terminatev"]);
        assert!(r[0].is_some(), "libstdc++ not searched");
    }
}

/// What the host's dynamic symbol table says about a symbol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostSymbolKind {
    /// Code (`STT_FUNC`, `STT_GNU_IFUNC`).
    Function,
    /// Data (`STT_OBJECT`) of this many bytes.
    Data(u64),
}

#[repr(C)]
struct DlInfo {
    fname: *const u8,
    fbase: *mut c_void,
    sname: *const u8,
    saddr: *mut c_void,
}

#[repr(C)]
struct Elf64Sym {
    st_name: u32,
    st_info: u8,
    st_other: u8,
    st_shndx: u16,
    st_value: u64,
    st_size: u64,
}

unsafe extern "C" {
    fn dladdr1(addr: *const c_void, info: *mut DlInfo, extra: *mut *mut c_void, flags: i32) -> i32;
}

/// Kind and size of the host symbol at `addr`, from the dynamic symbol
/// table of the object that defines it (`dladdr1(RTLD_DL_SYMENT)`).
pub(crate) fn host_symbol_kind(addr: u64) -> Option<HostSymbolKind> {
    const RTLD_DL_SYMENT: i32 = 1;
    let mut info = DlInfo {
        fname: std::ptr::null(),
        fbase: std::ptr::null_mut(),
        sname: std::ptr::null(),
        saddr: std::ptr::null_mut(),
    };
    let mut sym: *mut c_void = std::ptr::null_mut();
    // SAFETY: dladdr1 only inspects the loader's tables; `info` and `sym`
    // are valid out-pointers of the types glibc documents for RTLD_DL_SYMENT.
    let ok = unsafe { dladdr1(addr as *const c_void, &mut info, &mut sym, RTLD_DL_SYMENT) };
    if ok == 0 || sym.is_null() || info.saddr as u64 != addr {
        return None;
    }
    // SAFETY: on success with RTLD_DL_SYMENT, `sym` points at the symbol's
    // ElfW(Sym) inside the loaded object's dynamic symbol table, which stays
    // mapped while the object is loaded.
    let sym = unsafe { &*(sym as *const Elf64Sym) };
    match sym.st_info & 0xf {
        2 | 10 => Some(HostSymbolKind::Function),
        1 => Some(HostSymbolKind::Data(sym.st_size)),
        _ => None,
    }
}

/// One object the dynamic loader has mapped into the process (the main
/// program, a shared library), by the address ranges of its `PT_LOAD`
/// segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LoadedObject {
    /// The loader's name for it (empty for the main program).
    pub(crate) name: String,
    /// Whether it is the main program (the first object the loader lists).
    pub(crate) main: bool,
    /// `[start, end)` of each `PT_LOAD` segment, page-rounded.
    pub(crate) segments: Vec<(u64, u64)>,
}

impl LoadedObject {
    /// Lowest and highest address of its segments.
    pub(crate) fn span(&self) -> Option<(u64, u64)> {
        let lo = self.segments.iter().map(|s| s.0).min()?;
        let hi = self.segments.iter().map(|s| s.1).max()?;
        Some((lo, hi))
    }

    /// Whether `addr` lies in one of its segments.
    pub(crate) fn contains(&self, addr: u64) -> bool {
        self.segments.iter().any(|&(s, e)| (s..e).contains(&addr))
    }
}

/// Every object mapped by the dynamic loader now (`dl_iterate_phdr`),
/// except the vDSO (the kernel's, mapped near the stack; no program
/// addresses its data PC-relatively), in the loader's order.
pub(crate) fn loaded_objects() -> Vec<LoadedObject> {
    const PT_LOAD: u32 = 1;
    const AT_SYSINFO_EHDR: libc::c_ulong = 33;
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: `data` is the `&mut Vec<LoadedObject>` passed to
        // `dl_iterate_phdr` below, alive and not otherwise borrowed during
        // the call.
        let out = unsafe { &mut *data.cast::<Vec<LoadedObject>>() };
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration
        // of the callback.
        let info = unsafe { &*info };
        let name = if info.dlpi_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null `dlpi_name` is a NUL-terminated string
            // owned by the loader, valid during the callback.
            unsafe { std::ffi::CStr::from_ptr(info.dlpi_name) }
                .to_string_lossy()
                .into_owned()
        };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: `dlpi_phdr` points at `dlpi_phnum` program headers of
            // the object, mapped while it is loaded.
            unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        let page = |x: u64| x & !(crate::memory::PAGE - 1);
        let segments = phdrs
            .iter()
            .filter(|p| p.p_type == PT_LOAD && p.p_memsz > 0)
            .map(|p| {
                let start = info.dlpi_addr.wrapping_add(p.p_vaddr);
                (
                    page(start),
                    page(start.wrapping_add(p.p_memsz) + crate::memory::PAGE - 1),
                )
            })
            .collect();
        let main = out.is_empty();
        out.push(LoadedObject {
            name,
            main,
            segments,
        });
        0
    }
    let mut out: Vec<LoadedObject> = Vec::new();
    // SAFETY: the callback matches the documented signature and only
    // touches `out` through `data`, which outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(each), (&raw mut out).cast()) };
    // SAFETY: getauxval only reads the process's auxiliary vector.
    let vdso = unsafe { libc::getauxval(AT_SYSINFO_EHDR) };
    out.retain(|o| !o.segments.is_empty() && (vdso == 0 || !o.contains(vdso)));
    out
}
