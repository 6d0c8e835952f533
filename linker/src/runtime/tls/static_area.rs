//! kiln's static TLS area: a reservation inside the host executable's own
//! static TLS block, at the same thread-pointer offset in every thread, so
//! initial-exec (`R_X86_64_GOTTPOFF`) and local-exec (`R_X86_64_TPOFF32`)
//! code can address JIT'd `thread_local` variables.
//!
//! How it works. [`Reservation`] is a `const`-initialized `thread_local!` of
//! this crate with a non-zero header, so it lands in the executable's
//! `.tdata` (part of its `PT_TLS` init image). glibc places the executable's
//! TLS block at a fixed negative offset from the thread pointer in every
//! thread (TLS variant II), and copies the `PT_TLS` init image into each new
//! thread's block when it creates the thread. kiln hands out ranges of the
//! reservation to JIT TLS modules (bump allocation; once the bump pointer
//! is at the end, a range whose module is gone — [`retire`] — is reused,
//! but only while every live thread is attached, its copies zeroed first;
//! an image file's local-exec code [`claim`]s the exact range it was
//! linked against, and a range whose module's code never ran can be given
//! back for that with [`release_unused`]) and, when
//! a module's `.tdata` image is final ([`initialize`]):
//! 1. writes it into the executable's in-memory init image (briefly making
//!    that page writable), so **every thread created afterwards** starts
//!    with the module's initial values — glibc copies them;
//! 2. writes it into the copy of every **attached** thread: the process's
//!    main thread (attached before `main` by an `.init_array` entry of this
//!    crate), threads that called [`super::attach_current_thread`], threads
//!    that used kiln's runtime (any `__tls_get_addr`, TLSDESC slow path,
//!    `thread_local` destructor registration, a lazy function's first
//!    call, running the object layer's initializers — which `Jit::get`
//!    does), and the thread that initializes the module;
//! 3. bumps an epoch (the number of initialized modules) in the header of
//!    the init image and of each written copy. A thread that attaches later
//!    compares its copy's epoch with the current one and initializes
//!    exactly the modules its copy lacks, so values written by JIT code in
//!    threads created after a module was initialized are never clobbered.
//!
//! Guarantees. A module whose `.tdata` image is all zero (including every
//! C++ `thread_local` object with a constructor, whose storage and guard
//! live in `.tbss`) is correct in every thread, whenever it was created:
//! a fresh range is zero everywhere, and a range is reused only when every
//! thread's copy of it can be (and is) zeroed. A module with non-zero initial values is
//! correct in every thread created after [`initialize`] returned and in
//! every attached thread; a thread that existed before and never attaches
//! sees zeros instead of the initial values. A thread being created
//! concurrently with [`initialize`] may copy a torn image (glibc copies
//! without a lock kiln can take). All of this needs kiln to be linked into
//! the main executable (not a `dlopen`ed library); otherwise the area is
//! unavailable and callers get an error naming the variable and the flag.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::c_int;
use std::mem::offset_of;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::runtime::thread;

/// Bytes available to JIT TLS modules over the life of the process.
pub(crate) const AREA_SIZE: usize = 32 * 1024;
/// Largest alignment a module may ask for in the area.
pub(crate) const AREA_ALIGN: usize = 64;

const MAGIC: [u8; 16] = *b"kiln-static-TLS\x01";

#[repr(C, align(64))]
pub(crate) struct Reservation {
    magic: [u8; 16],
    /// Number of initialized modules this copy holds.
    epoch: u64,
    _pad: [u8; 40],
    area: [u8; AREA_SIZE],
}

thread_local! {
    static RESERVATION: UnsafeCell<Reservation> = const {
        UnsafeCell::new(Reservation { magic: MAGIC, epoch: 0, _pad: [0; 40], area: [0; AREA_SIZE] })
    };
}

/// Where the reservation lives in the executable.
#[derive(Debug)]
pub(crate) struct Host {
    /// Address of the reservation inside the executable's `PT_TLS` init image.
    image_addr: usize,
    /// Protection of the `PT_LOAD` segment holding the init image.
    segment_prot: c_int,
    /// Page-aligned `[start, end)` that ld.so made read-only (RELRO).
    relro: (usize, usize),
    /// `&RESERVATION - thread pointer`, the same in every thread.
    pub(crate) reservation_tp_offset: isize,
    /// Offset of the reservation in the executable's TLS block (what
    /// glibc's `tls_index.ti_offset` for it would be).
    #[cfg_attr(not(test), allow(dead_code, reason = "read by tests only"))]
    pub(crate) block_offset: usize,
}

#[derive(Debug, Default)]
struct Area {
    /// Bump pointer: [`reserve`] hands out ranges from here on, never
    /// below.
    next: usize,
    /// Ranges handed out (by [`reserve`] or [`claim`]) and not given back
    /// unused ([`release_unused`]), `[start, end)`: never claimed again.
    taken: Vec<(usize, usize)>,
    /// Ranges of `taken` whose modules are gone ([`retire`]): [`reserve`]
    /// hands them out again once the bump pointer is at the end, when
    /// every live thread is attached (so every copy can be zeroed).
    retired: Vec<(usize, usize)>,
    /// Initialized modules with non-zero images (and zeroed reused
    /// ranges): (area offset, image), from epoch `dropped` on.
    initialized: Vec<(usize, Arc<[u8]>)>,
    /// Epochs before the log's first entry: dropped when a range was
    /// reused, as every live thread's copy was at the latest epoch then.
    dropped: usize,
    /// Attached threads: key → (address of their reservation copy, tid).
    threads: HashMap<u64, (usize, libc::pid_t)>,
    /// Threads that detached at their exit and may still be listed live:
    /// they run no code of a module initialized after that, so they do not
    /// keep a retired range from being reused ([`unattached`] forgets those
    /// gone).
    exiting: Vec<libc::pid_t>,
}

impl Area {
    /// Drops the exiting threads no longer among `live` (the process's
    /// threads just listed): they are gone, and their tids may be another
    /// thread's one day.
    fn forget_gone(&mut self, live: &[libc::pid_t]) {
        self.exiting.retain(|tid| live.contains(tid));
    }
}

static AREA: Mutex<Option<Area>> = Mutex::new(None);

fn with_area<R>(f: impl FnOnce(&mut Area) -> R) -> R {
    let mut guard = AREA.lock().unwrap_or_else(PoisonError::into_inner);
    f(guard.get_or_insert_with(Area::default))
}

fn own_reservation() -> usize {
    RESERVATION.with(|r| r.get() as usize)
}

/// The host executable's reservation, or why there is none.
pub(crate) fn host() -> Result<&'static Host, &'static str> {
    static HOST: OnceLock<Result<Host, &'static str>> = OnceLock::new();
    HOST.get_or_init(|| {
        // The engine's own timer thread may run a host's callbacks (a
        // timed-out lookup's): attached like any other, it does not block
        // a retired range's reuse.
        kiln_engine::on_timer_thread(super::attach_current_thread);
        detect()
    })
    .as_ref()
    .map_err(|e| *e)
}

/// What [`inspect_main`] found about the executable's TLS init image.
struct Found {
    /// Address of the reservation inside the init image.
    at: usize,
    /// Its offset from the start of the image.
    pos: usize,
    /// Protection of the `PT_LOAD` segment holding it.
    prot: c_int,
    /// Page-aligned RELRO range of the executable (empty if none).
    relro: (usize, usize),
    /// `PT_TLS` `p_memsz` and `p_align`.
    memsz: usize,
    align: usize,
}

struct Search {
    anchor: usize,
    result: Option<Result<Found, &'static str>>,
}

/// dl_iterate_phdr callback: inspects only the first object (the main program).
unsafe extern "C" fn inspect_main(
    info: *mut libc::dl_phdr_info,
    _: usize,
    data: *mut libc::c_void,
) -> c_int {
    // SAFETY: `data` is the `Search` passed by `detect`; `info` is valid for
    // this call (dl_iterate_phdr contract).
    let (search, info) = unsafe { (&mut *data.cast::<Search>(), &*info) };
    // SAFETY: glibc provides `dlpi_phnum` program headers at `dlpi_phdr`.
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let base = info.dlpi_addr as usize;
    let contains = |p: &libc::Elf64_Phdr, addr: usize| {
        let start = base + p.p_vaddr as usize;
        addr >= start && addr < start + p.p_memsz as usize
    };
    let loads = || phdrs.iter().filter(|p| p.p_type == libc::PT_LOAD);
    if !loads().any(|p| contains(p, search.anchor)) {
        search.result = Some(Err(
            "kiln is not linked into the main executable (static TLS offsets of a dlopen'ed library differ between threads)",
        ));
        return 1;
    }
    let Some(tls) = phdrs.iter().find(|p| p.p_type == libc::PT_TLS) else {
        search.result = Some(Err("the executable has no PT_TLS segment"));
        return 1;
    };
    let image = base + tls.p_vaddr as usize;
    let filesz = tls.p_filesz as usize;
    // SAFETY: the PT_TLS init image is mapped read-only for the process lifetime.
    let bytes = unsafe { std::slice::from_raw_parts(image as *const u8, filesz) };
    let Some(pos) = bytes.windows(MAGIC.len()).position(|w| w == MAGIC) else {
        search.result = Some(Err(
            "kiln's static TLS reservation is not in the executable's TLS init image",
        ));
        return 1;
    };
    let at = image + pos;
    let page = page_size();
    let relro = phdrs
        .iter()
        .find(|p| p.p_type == libc::PT_GNU_RELRO)
        .map_or((0, 0), |p| {
            let start = base + p.p_vaddr as usize;
            // What ld.so's _dl_protect_relro makes read-only.
            (
                start & !(page - 1),
                (start + p.p_memsz as usize) & !(page - 1),
            )
        });
    let Some(segment) = loads().find(|p| contains(p, at)) else {
        search.result = Some(Err("the TLS init image is outside every PT_LOAD segment"));
        return 1;
    };
    let mut prot = 0;
    if segment.p_flags & libc::PF_R != 0 {
        prot |= libc::PROT_READ;
    }
    if segment.p_flags & libc::PF_W != 0 {
        prot |= libc::PROT_WRITE;
    }
    if segment.p_flags & libc::PF_X != 0 {
        prot |= libc::PROT_EXEC;
    }
    search.result = Some(Ok(Found {
        at,
        pos,
        prot,
        relro,
        memsz: tls.p_memsz as usize,
        align: tls.p_align as usize,
    }));
    1
}

fn detect() -> Result<Host, &'static str> {
    let mut search = Search {
        anchor: detect as *const () as usize,
        result: None,
    };
    // SAFETY: the callback only reads program headers and writes `search`.
    unsafe { libc::dl_iterate_phdr(Some(inspect_main), (&raw mut search).cast()) };
    let Found {
        at: image_addr,
        pos,
        prot: segment_prot,
        relro,
        memsz,
        align,
    } = search
        .result
        .unwrap_or(Err("dl_iterate_phdr reported no objects"))?;
    let tp = thread::thread_pointer();
    let mine = own_reservation();
    let reservation_tp_offset = mine as isize - tp as isize;
    // Variant II: the executable's block ends at (roughly) the thread
    // pointer, and the reservation sits `pos` bytes into it.
    let block_start = mine.wrapping_sub(pos);
    let below = tp.wrapping_sub(block_start);
    if reservation_tp_offset >= 0 || below < memsz || below > memsz + align.max(1) + 64 {
        return Err("the executable's TLS block is not where glibc's TLS variant II puts it");
    }
    Ok(Host {
        image_addr,
        segment_prot,
        relro,
        reservation_tp_offset,
        block_offset: pos,
    })
}

/// Reason a range could not be reserved.
#[derive(Debug)]
pub(crate) enum ReserveError {
    Unavailable(&'static str),
    Exhausted {
        available: usize,
    },
    /// Used up, and a removed module's range would fit, but `unattached`
    /// live threads may hold its old values ([`reuse`]).
    ReuseBlocked {
        unattached: usize,
    },
    TooAligned,
}

/// Reserves `size` bytes aligned to `align`; returns (area offset,
/// thread-pointer offset of the range). Bump allocation from the highest
/// range handed out so far, skipping ranges claimed above it; at the end
/// of the area, a retired range if one fits and every thread is attached
/// ([`reuse`]).
pub(crate) fn reserve(size: usize, align: usize) -> Result<(usize, i64), ReserveError> {
    let host = host().map_err(ReserveError::Unavailable)?;
    if align > AREA_ALIGN || !align.is_power_of_two() {
        return Err(ReserveError::TooAligned);
    }
    with_area(|area| {
        let mut start = area.next.next_multiple_of(align);
        while let Some(&(_, end)) = area
            .taken
            .iter()
            .find(|&&(s, e)| s < start.saturating_add(size.max(1)) && start < e)
        {
            start = end.next_multiple_of(align);
        }
        if start > AREA_SIZE || AREA_SIZE - start < size {
            return Err(ReserveError::Exhausted {
                available: AREA_SIZE.saturating_sub(start),
            });
        }
        area.next = start + size;
        area.taken.push((start, start + size));
        Ok((start, tp_offset_of(host, start)))
    })
    .or_else(|e| match e {
        ReserveError::Exhausted { .. } => reuse(host, size, align, e),
        e => Err(e),
    })
}

/// A retired range of `size` bytes aligned to `align`, zeroed in the init
/// image and in every thread's copy — only when every live thread is
/// attached: a thread kiln cannot reach may hold the old module's values
/// there. (A thread being created at this very moment may copy the init
/// image before it is zeroed, as [`initialize`]'s torn copy.)
fn reuse(
    host: &Host,
    size: usize,
    align: usize,
    exhausted: ReserveError,
) -> Result<(usize, i64), ReserveError> {
    let fitting = |area: &Area| {
        area.retired.iter().enumerate().find_map(|(i, &(s, e))| {
            let start = s.next_multiple_of(align);
            (start.saturating_add(size) <= e).then_some((i, start))
        })
    };
    if size == 0 || with_area(|area| fitting(area).is_none()) {
        return Err(exhausted);
    }
    match unattached() {
        Some(strangers) if strangers.is_empty() => {}
        Some(strangers) => {
            return Err(ReserveError::ReuseBlocked {
                unattached: strangers.len(),
            });
        }
        None => return Err(exhausted),
    }
    let start = with_area(|area| {
        let (i, start) = fitting(area)?;
        let (s, e) = area.retired.swap_remove(i);
        let end = start + size;
        area.retired
            .extend([(s, start), (end, e)].into_iter().filter(|(a, b)| a < b));
        Some(start)
    });
    let Some(start) = start else {
        return Err(exhausted);
    };
    // Best effort, as `release_unused`: a failure leaves the old initial
    // values for threads created from now on.
    if publish(start, &vec![0; size]).is_ok() {
        // Every live thread's copy, and the init image new ones copy, are
        // at the latest epoch: no copy needs the log's entries again (so
        // it does not grow with every reuse of a long-lived host).
        with_area(|area| {
            area.dropped += area.initialized.len();
            area.initialized.clear();
        });
    }
    Ok((start, tp_offset_of(host, start)))
}

/// The live threads of the process that are not attached, by kernel
/// thread id (`None` when the threads cannot be listed).
fn unattached() -> Option<Vec<libc::pid_t>> {
    let mut tids = live_threads()?;
    let accounted: std::collections::HashSet<libc::pid_t> = with_area(|area| {
        area.forget_gone(&tids);
        let attached = area.threads.values().map(|&(_, tid)| tid);
        attached.chain(area.exiting.iter().copied()).collect()
    });
    tids.retain(|tid| !accounted.contains(tid));
    tids.sort_unstable();
    Some(tids)
}

/// The kernel thread ids of the process's live threads.
fn live_threads() -> Option<Vec<libc::pid_t>> {
    let dir = std::fs::read_dir("/proc/self/task").ok()?;
    Some(
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect(),
    )
}

/// The module of `[area_off, area_off + size)` is gone, after its code may
/// have run: [`reserve`] may hand the range out again (see [`reuse`]).
pub(crate) fn retire(area_off: usize, size: usize) {
    if size == 0 {
        return;
    }
    with_area(|area| {
        // Kept sorted and coalesced: neighbours retired apart serve a
        // larger module together.
        let r = &mut area.retired;
        r.push((area_off, area_off + size));
        r.sort_unstable();
        r.dedup_by(|next, prev| {
            let joins = next.0 <= prev.1;
            if joins {
                prev.1 = prev.1.max(next.1);
            }
            joins
        });
    });
}

fn tp_offset_of(host: &Host, area_off: usize) -> i64 {
    (host.reservation_tp_offset + (offset_of!(Reservation, area) + area_off) as isize) as i64
}

/// The thread-pointer offset of the area's first byte: what identifies
/// the area to code linked against it (the same in every process running
/// the same executable), or why there is no area.
pub(crate) fn area_tp_offset() -> Result<i64, &'static str> {
    host().map(|h| tp_offset_of(h, 0))
}

/// Why [`claim`] could not give a range.
#[derive(Debug)]
pub(crate) enum ClaimError {
    /// No static area in this process.
    Unavailable(&'static str),
    /// The range does not fit the area or is misaligned.
    OutOfBounds,
    /// Ranges overlapping it were handed out in this process (`[start, end)`).
    Taken(Vec<(usize, usize)>),
}

/// Claims exactly `[area_off, area_off + size)` (for code whose
/// thread-pointer offsets were fixed elsewhere): it must fit, be aligned
/// to `align`, and overlap no range handed out in this process (used
/// ranges are never reused). Returns its thread-pointer offset.
pub(crate) fn claim(area_off: usize, size: usize, align: usize) -> Result<i64, ClaimError> {
    let host = host().map_err(ClaimError::Unavailable)?;
    let end = area_off.checked_add(size).filter(|&e| e <= AREA_SIZE);
    let aligned = align <= AREA_ALIGN && align.is_power_of_two() && area_off.is_multiple_of(align);
    let Some(end) = end.filter(|_| aligned) else {
        return Err(ClaimError::OutOfBounds);
    };
    with_area(|area| {
        let overlapping: Vec<(usize, usize)> = (area.taken.iter())
            .filter(|&&(s, e)| s < end.max(area_off + 1) && area_off < e)
            .copied()
            .collect();
        if !overlapping.is_empty() {
            return Err(ClaimError::Taken(overlapping));
        }
        area.taken.push((area_off, end));
        Ok(tp_offset_of(host, area_off))
    })
}

/// The ranges handed out in this process that overlap `[area_off,
/// area_off + size)` (none: [`claim`] would give it).
pub(crate) fn overlapping(area_off: usize, size: usize) -> Vec<(usize, usize)> {
    let end = area_off.saturating_add(size).max(area_off + 1);
    with_area(|area| {
        (area.taken.iter())
            .filter(|&&(s, e)| s < end && area_off < e)
            .copied()
            .collect()
    })
}

/// Gives back `[area_off, area_off + size)`, whose module's code never
/// ran, so that [`claim`] can hand it out again (to the same image loaded
/// from its file). A non-zero initial image published for it is replaced
/// by zeros first, as never-used ranges hold.
pub(crate) fn release_unused(area_off: usize, size: usize, had_image: bool) {
    if had_image {
        // Best effort: a failure leaves the old initial values for new
        // threads; the next `initialize` of the range overwrites them.
        let _ = publish(area_off, &vec![0; size]);
    }
    with_area(|area| area.taken.retain(|&r| r != (area_off, area_off + size)));
}

/// Writes `bytes` at `dst` (a reservation copy or the init image).
///
/// # Safety
/// `dst` must be a live reservation copy or the init image (made writable).
unsafe fn write_module(reservation: usize, area_off: usize, image: &[u8], epoch: u64) {
    let dst = (reservation + offset_of!(Reservation, area) + area_off) as *mut u8;
    // SAFETY: per contract, `dst..dst + image.len()` lies inside the
    // reservation (reserve() checked the range) and nobody else accesses it
    // now: the module's code has not run yet, and other modules' ranges are
    // disjoint.
    unsafe {
        std::ptr::copy_nonoverlapping(image.as_ptr(), dst, image.len());
        ((reservation + offset_of!(Reservation, epoch)) as *mut u64).write_volatile(epoch);
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096)
}

/// Makes `[addr, addr + len)` of the executable's TLS init image writable,
/// runs `write`, and gives each page back the protection ld.so left it
/// with (read-only inside RELRO, the segment's otherwise).
///
/// # Safety
/// The range must lie inside the reservation's part of the init image.
unsafe fn with_image_writable(
    host: &Host,
    addr: usize,
    len: usize,
    write: impl FnOnce(),
) -> Result<(), &'static str> {
    let page = page_size();
    let lo = addr & !(page - 1);
    let hi = (addr + len).next_multiple_of(page);
    // SAFETY: the pages belong to the executable's loaded image; only their
    // protection changes, and it is restored below.
    if unsafe {
        libc::mprotect(
            lo as *mut libc::c_void,
            hi - lo,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    } != 0
    {
        return Err("could not make the executable's TLS init image writable (mprotect failed)");
    }
    write();
    for p in (lo..hi).step_by(page) {
        let prot = if (host.relro.0..host.relro.1).contains(&p) {
            libc::PROT_READ
        } else {
            host.segment_prot
        };
        // SAFETY: the same pages of the executable's loaded image, given back their protection.
        unsafe { libc::mprotect(p as *mut libc::c_void, page, prot) };
    }
    Ok(())
}

/// Publishes the final `.tdata` image of the module at `area_off`: into the
/// executable's init image and every attached thread's copy. Fails only if
/// the init image cannot be made writable; attached threads are written
/// anyway.
pub(crate) fn initialize(area_off: usize, image: &[u8]) -> Result<(), &'static str> {
    if image.iter().all(|&b| b == 0) {
        return Ok(()); // never-reused ranges are zero in every thread already
    }
    publish(area_off, image)
}

/// [`initialize`], zeros included.
fn publish(area_off: usize, image: &[u8]) -> Result<(), &'static str> {
    let Ok(host) = host() else { return Ok(()) };
    let image: Arc<[u8]> = Arc::from(image);
    thread::current(); // attaches this thread
    with_area(|area| {
        area.initialized.push((area_off, Arc::clone(&image)));
        let epoch = (area.dropped + area.initialized.len()) as u64;
        for &(reservation, _) in area.threads.values() {
            // SAFETY: attached threads detach (under this lock) before their
            // TLS memory goes away, so `reservation` is a live copy.
            unsafe { write_module(reservation, area_off, &image, epoch) };
        }
        let len = offset_of!(Reservation, area) + area_off + image.len();
        let write = || {
            // SAFETY: `with_image_writable` made the range writable.
            unsafe { write_module(host.image_addr, area_off, &image, epoch) }
        };
        // SAFETY: header through the module's bytes: inside the reservation.
        unsafe { with_image_writable(host, host.image_addr, len, write) }
    })
}

/// Attaches the calling thread (idempotent per key): initializes the modules
/// its copy lacks and records it for future [`initialize`] calls.
pub(crate) fn attach(key: u64) {
    if host().is_err() {
        return;
    }
    let mine = own_reservation();
    with_area(|area| {
        // SAFETY: this thread's own copy; other threads only write it under
        // this lock, which we hold.
        let have =
            unsafe { ((mine + offset_of!(Reservation, epoch)) as *const u64).read_volatile() };
        let epoch = area.dropped + area.initialized.len();
        let have = usize::try_from(have).unwrap_or(usize::MAX).min(epoch);
        // A copy older than the log (a thread created while a range was
        // being reused) gets all of it.
        let from = have.saturating_sub(area.dropped);
        let epoch = epoch as u64;
        for (off, image) in &area.initialized[from..] {
            // SAFETY: our own live copy.
            unsafe { write_module(mine, *off, image, epoch) };
        }
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        area.threads.insert(key, (mine, tid));
    });
}

/// [`Area::exiting`] is pruned of threads gone once it holds this many (a
/// host that starts and ends threads by the million keeps it short).
const EXITING_PRUNED_AT: usize = 64;

/// Forgets the calling thread (at its exit), which is then [`Area::exiting`]
/// until it is gone.
pub(crate) fn detach(key: u64) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let crowded = with_area(|area| {
        area.threads.remove(&key);
        area.exiting.push(tid);
        area.exiting.len() >= EXITING_PRUNED_AT
    });
    if crowded && let Some(live) = live_threads() {
        with_area(|area| area.forget_gone(&live));
    }
}

/// Live threads of the process that are not attached, by kernel thread id.
pub(crate) fn unattached_threads() -> Vec<libc::pid_t> {
    unattached().unwrap_or_default()
}

/// Bytes of the area not yet handed out.
pub(crate) fn available() -> usize {
    with_area(|area| AREA_SIZE.saturating_sub(area.next))
}

#[cfg(test)]
pub(crate) fn exiting_for_tests() -> usize {
    with_area(|area| area.exiting.len())
}

#[cfg(test)]
pub(crate) fn own_reservation_for_tests() -> usize {
    own_reservation()
}

#[cfg(test)]
pub(crate) fn init_image_addr_for_tests() -> usize {
    host().map_or(0, |h| h.image_addr)
}

/// Runs `f` under the area's lock: no module's init image is being
/// written (and its pages writable) meanwhile.
#[cfg(test)]
pub(crate) fn with_area_locked_for_tests<R>(f: impl FnOnce() -> R) -> R {
    with_area(|_| f())
}
