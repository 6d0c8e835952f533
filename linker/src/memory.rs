//! Memory for linked images: one reserved address-space slab per reach class,
//! carved into allocations with explicit states.
//!
//! * The **near** slab (1 GiB, reserved `PROT_NONE`) is placed, when the
//!   address space allows, within ±2 GiB of every segment of the objects
//!   the loader has mapped (`dl_iterate_phdr`): of them all if they lie
//!   close enough together, else of the shared libraries (the C library,
//!   libm, libstdc++ …, which the loader maps next to each other), else of
//!   the object that holds `stdout`. So every JIT'd byte is in the small
//!   code model's reach of every other one *and* of that host code and data,
//!   wherever the host (or a sanitizer moving its mappings) put them. A
//!   few `MAP_FIXED_NOREPLACE` guesses under the libraries come first;
//!   if none is free, the free ranges are read from `/proc/self/maps`
//!   (without it, hints are probed). [`Slab::reaches`] says, address by address, what is in reach:
//!   the passes send 32-bit references to anything else through a PLT stub
//!   (code) or a copy (data).
//! * The **low** slab (256 MiB) lies entirely below 2 GiB, for non-PIE code
//!   (`R_X86_64_32`/`32S`); it is reserved on first use with
//!   `MAP_FIXED_NOREPLACE` hints.
//!
//! An [`Allocation`] goes writing (RW) → finalized (RX / R / RW per segment)
//! → released (back to `PROT_NONE`, pages returned with `MADV_DONTNEED`, the
//! range back to the slab's free list). No page is ever writable and
//! executable at once. Pages mapped from a file may get their final
//! protection when mapped (`Allocation::map_file_final`: a loaded image's
//! text is then never writable) and be written without a writable mapping
//! (`Allocation::write_at`, through `/proc/self/mem`); `finalize` leaves
//! them as they are. Raw pointers, `mprotect` and `/proc/self/mem` stay in
//! this module.
//! A small allocation written once and finalized soon after (a linked
//! image: [`Allocation::new_staged_aligned`]) is written in the heap
//! instead, its pages left `PROT_NONE` until `finalize` gives them their
//! final protections and writes them through `/proc/self/mem`: no page of
//! it is ever writable, and no protection is ever taken away — which would
//! flush the translation from every CPU running one of the process's
//! threads.
//! A large allocation's pages can be mapped ahead of the writes that fill
//! it ([`Allocation::prefault`], on a rayon thread), instead of one page
//! fault per page while the linker copies and relocates; the linker maps
//! only the runs it writes ([`Allocation::prefault_runs`]), never zero-fill
//! or padding, which may be far larger. An allocation's base can be aligned
//! beyond a page ([`Allocation::new_aligned`]) for blocks that ask for it.

use std::ffi::c_void;
use std::ops::RangeInclusive;
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags};

use crate::error::LinkError;
use crate::graph::Prot;

/// [`Allocation::prefault`] maps the pages of allocations this large up
/// front, in one call instead of one page fault each (synth's 7 MB image:
/// 1,800 faults)...
const PREFAULT_BYTES: u64 = 256 << 10;
/// ...and on another thread from this size on (the caller goes on with its
/// own work: synth's 7 MB take ~3 ms to map).
const PREFAULT_BACKGROUND_BYTES: u64 = 2 << 20;

/// Runs this large that [`Allocation::prefault_runs`] maps ask for
/// transparent huge pages (`MADV_HUGEPAGE`) for the 2 MiB-aligned
/// stretches inside them: each is then one page for `MADV_POPULATE_WRITE`
/// instead of 512 (synth's 7 MB image: three huge pages; see
/// docs/performance-link.md). Only stretches inside written runs: a huge
/// page reaching into zero-fill would map it all.
const HUGE_PAGES_BYTES: u64 = 4 << 20;

/// A transparent huge page (x86-64 and aarch64 with 4 KiB pages).
const HUGE_PAGE: u64 = 2 << 20;

/// [`Allocation::new_staged_aligned`] stages allocations up to this size.
/// Staged, each written page costs a copy and a fault in the kernel's
/// write; in place, a finalize costs one `mprotect` (and its flush) per
/// run of one protection. A linked object of a few functions has two or
/// three runs of one page each.
const STAGE_BYTES: u64 = 64 << 10;

/// An allocation's pages being mapped on another thread
/// ([`Allocation::prefault`]). Waiting for it, or dropping it, returns once
/// no thread touches the range for it any more.
#[derive(Debug)]
pub struct Prefault(Option<Arc<(Mutex<PrefaultState>, Condvar)>>);

/// Where a background [`Prefault`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrefaultState {
    /// Queued on rayon, not started.
    Pending,
    /// A rayon thread is mapping the pages.
    Running,
    /// Done, or called off before it started.
    Over,
}

impl Prefault {
    /// Returns once no thread maps pages for this prefault any more: at
    /// once if it is over, or calls it off if it has not started (a rayon
    /// pool busy elsewhere — or this very thread being its only worker —
    /// never makes the caller wait), else waits for the running thread.
    pub fn wait(&mut self) {
        let Some(shared) = self.0.take() else {
            return;
        };
        let (lock, cond) = &*shared;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match *state {
                PrefaultState::Pending => {
                    *state = PrefaultState::Over;
                    return;
                }
                PrefaultState::Running => {
                    state = cond.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
                PrefaultState::Over => return,
            }
        }
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.wait();
    }
}

/// Page size used for protection boundaries.
pub const PAGE: u64 = 4096;
const NEAR_SIZE: u64 = 1 << 30;
const LOW_SIZE: u64 = 256 << 20;
const LOW_LIMIT: u64 = 1 << 31;
/// How far a 32-bit PC-relative field reaches, less a margin for addends
/// (a reference to `sym + 4 MiB` still fits): what [`Slab::reaches`] asks
/// between any byte of the slab and a target.
pub const REACH: u64 = (2 << 30) - (64 << 20);
/// Near slab bases are aligned to this (huge-page friendly).
const NEAR_ALIGN: u64 = 2 << 20;
/// Gaps between the libraries' lowest byte and the near slab's end tried
/// before `/proc/self/maps` is read ([`Slab::reserve_within`]).
const QUICK_GAPS: [u64; 3] = [64 << 20, 320 << 20, 640 << 20];

/// Which slab an allocation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Near the host's shared libraries (default).
    Near,
    /// Below 2 GiB, for non-PIE code.
    Low,
}

/// Whether `addr` lies in one of kiln's JIT memory slabs (reserved so far).
pub(crate) fn in_jit_memory(addr: u64) -> bool {
    [Placement::Near, Placement::Low].into_iter().any(|p| {
        Slab::get(p).ok().flatten().is_some_and(|s| {
            let (base, size) = s.range();
            addr >= base && addr - base < size
        })
    })
}

/// A reserved range of address space.
#[derive(Debug)]
pub struct Slab {
    base: u64,
    size: u64,
    /// Free ranges `(start, len)` sorted by start, page-aligned.
    free: Mutex<Vec<(u64, u64)>>,
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

impl Slab {
    fn reserve_at(hint: u64, size: u64, fixed: bool) -> Option<u64> {
        let mut flags = MapFlags::PRIVATE | MapFlags::NORESERVE;
        if fixed {
            flags |= MapFlags::FIXED_NOREPLACE;
        }
        // SAFETY: an anonymous PROT_NONE mapping; with FIXED_NOREPLACE the
        // kernel never replaces an existing mapping, and without it the hint
        // is only a hint. Nothing references the range yet.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                hint as *mut c_void,
                size as usize,
                ProtFlags::empty(),
                flags,
            )
        }
        .ok()?;
        Some(p as u64)
    }

    fn unreserve(base: u64, size: u64) {
        // SAFETY: the range was just mapped by `reserve_at` and never handed out.
        let _ = unsafe { rustix::mm::munmap(base as *mut c_void, size as usize) };
    }

    /// A slab over `[base, base + size)`, all free but the page at each
    /// 4 GiB boundary: libgcc's unwinder drops the FDE of a function whose
    /// address has zero low 32 bits (`add_fdes` takes it for a discarded
    /// link-once function, as its 4-byte encodings cannot tell), so a C++
    /// exception through code placed there would end in `std::terminate`.
    fn new(base: u64, size: u64) -> Slab {
        const BOUNDARY: u64 = 1 << 32;
        let end = base + size;
        let mut free = Vec::new();
        let mut at = base;
        while at < end {
            let boundary = at.next_multiple_of(BOUNDARY);
            if boundary >= end {
                free.push((at, end - at));
                break;
            }
            if boundary > at {
                free.push((at, boundary - at));
            }
            at = boundary + PAGE;
        }
        Slab {
            base,
            size,
            free: Mutex::new(free),
        }
    }

    /// The near slab: within [`REACH`] of the host's loaded objects if the
    /// address space allows (see the module doc), else anywhere.
    /// `Err`: the OS's refusal of a reservation anywhere.
    fn near() -> Result<Slab, std::io::Error> {
        let objects = crate::host::loaded_objects();
        // Read at most once for all the target spans (not at all if a
        // first guess fits: see `reserve_within`).
        let mut maps = None;
        for (lo, hi) in near_targets(&objects) {
            // Every slab byte within REACH of both ends of the targets.
            let bases = hi.saturating_sub(REACH).max(NEAR_ALIGN)
                ..=lo.saturating_add(REACH).saturating_sub(NEAR_SIZE);
            if let Some(b) = Self::reserve_within(bases, NEAR_SIZE, lo, &mut maps) {
                return Ok(Self::new(b, NEAR_SIZE));
            }
        }
        // Anywhere: 32-bit references to the host then go through stubs
        // and copies.
        let b = Self::reserve_at(0, NEAR_SIZE, false).ok_or_else(std::io::Error::last_os_error)?;
        Ok(Self::new(b, NEAR_SIZE))
    }

    /// Reserve `size` bytes at a base in `bases`: below `below` if possible
    /// (under the libraries, where the kernel maps top-down anyway, and
    /// away from the gap it keeps for the main stack to grow), highest first.
    /// `maps`: the free ranges, once read (`Some(None)`: no `/proc`).
    fn reserve_within(
        bases: RangeInclusive<u64>,
        size: u64,
        below: u64,
        maps: &mut Option<Option<Vec<(u64, u64)>>>,
    ) -> Option<u64> {
        let (lo, hi) = (*bases.start(), *bases.end());
        if lo > hi {
            return None;
        }
        let down = |x: u64| x & !(NEAR_ALIGN - 1);
        // First without `/proc/self/maps` (reading and parsing it was most
        // of a cache hit's slab placement: ~0.23 M instructions and 10
        // syscalls): a few bases under `below`, gaps away from what the
        // kernel mapped right under the libraries after them (file
        // mappings, arenas, thread stacks). NOREPLACE takes one only if it
        // is wholly free; else the free ranges are read as before.
        for gap in QUICK_GAPS {
            let Some(b) = below.checked_sub(size + gap).map(|b| down(b.min(hi))) else {
                continue;
            };
            if b < lo || b == 0 {
                continue;
            }
            if let Some(got) = Self::reserve_at(b, size, true) {
                if bases.contains(&got) {
                    return Some(got);
                }
                // A kernel without MAP_FIXED_NOREPLACE took it as a hint.
                Self::unreserve(got, size);
            }
        }
        let hints: Vec<u64> = match maps.get_or_insert_with(free_ranges) {
            // The highest aligned base of each free range that fits.
            Some(free) => free
                .iter()
                .rev()
                .filter_map(|&(start, end)| {
                    let b = down(end.checked_sub(size)?.min(hi));
                    (b >= start.max(lo)).then_some(b)
                })
                .collect(),
            // No /proc: probe every 64 MiB, from the top.
            None => (0..)
                .map(|i: u64| down(hi.saturating_sub(i * (64 << 20))))
                .take_while(|&b| b >= lo && b > 0)
                .take(64)
                .collect(),
        };
        let mut hints = hints;
        // Stable: each half keeps its highest-first order.
        hints.sort_by_key(|&b| b.saturating_add(size) > below);
        for hint in hints {
            if let Some(b) = Self::reserve_at(hint, size, true) {
                if bases.contains(&b) {
                    return Some(b);
                }
                // A kernel without MAP_FIXED_NOREPLACE took it as a hint.
                Self::unreserve(b, size);
            }
        }
        None
    }

    fn low() -> Option<Slab> {
        for hint in [
            0x4000_0000u64,
            0x2000_0000,
            0x5000_0000,
            0x1000_0000,
            0x6000_0000,
        ] {
            if let Some(b) = Self::reserve_at(hint, LOW_SIZE, true) {
                if b + LOW_SIZE <= LOW_LIMIT {
                    return Some(Self::new(b, LOW_SIZE));
                }
                Self::unreserve(b, LOW_SIZE);
            }
        }
        None
    }

    /// The process-wide slab for `placement` (`None`: low memory unavailable).
    pub fn get(placement: Placement) -> Result<Option<&'static Slab>, LinkError> {
        // The OS error is kept by its number (an `io::Error` is not `Clone`),
        // so every link told of the failure gets it as its source.
        static NEAR: OnceLock<Result<Slab, Option<i32>>> = OnceLock::new();
        static LOW: OnceLock<Option<Slab>> = OnceLock::new();
        match placement {
            Placement::Near => {
                match NEAR.get_or_init(|| Slab::near().map_err(|e| e.raw_os_error())) {
                    Ok(s) => Ok(Some(s)),
                    Err(code) => Err(LinkError::Memory {
                        detail: format!("cannot reserve {NEAR_SIZE:#x} bytes of address space"),
                        source: code.map_or_else(
                            || std::io::Error::other("the OS gave no reason"),
                            std::io::Error::from_raw_os_error,
                        ),
                    }),
                }
            }
            Placement::Low => Ok(LOW.get_or_init(Slab::low).as_ref()),
        }
    }

    /// Whether `addr` is within [`REACH`] of every byte of the slab, so a
    /// 32-bit PC-relative reference from any image in it to `addr` fits.
    pub fn reaches(&self, addr: u64) -> bool {
        addr.abs_diff(self.base) <= REACH && addr.abs_diff(self.base + self.size) <= REACH
    }

    /// Start and length of the slab.
    pub fn range(&self) -> (u64, u64) {
        (self.base, self.size)
    }

    #[cfg(test)]
    fn take(&self, len: u64) -> Option<u64> {
        self.take_aligned(len, PAGE)
    }

    /// The first free `len` bytes starting at a multiple of `align` (a
    /// power of two): what is left of the free range before and after them
    /// stays free.
    fn take_aligned(&self, len: u64, align: u64) -> Option<u64> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let fits = |&(start, l): &(u64, u64)| {
            let at = start.checked_next_multiple_of(align)?;
            (at.checked_add(len)? <= start + l).then_some(at)
        };
        let i = free.iter().position(|r| fits(r).is_some())?;
        let (start, l) = free[i];
        let at = fits(&free[i])?;
        let tail = (at + len, start + l - (at + len));
        match (at > start, tail.1 > 0) {
            (false, false) => {
                free.remove(i);
            }
            (false, true) => free[i] = tail,
            (true, false) => free[i] = (start, at - start),
            (true, true) => {
                free[i] = (start, at - start);
                free.insert(i + 1, tail);
            }
        }
        Some(at)
    }

    fn give_back(&self, start: u64, len: u64) {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let i = free.partition_point(|&(s, _)| s < start);
        free.insert(i, (start, len));
        // Coalesce with the neighbours.
        if i + 1 < free.len() && free[i].0 + free[i].1 == free[i + 1].0 {
            free[i].1 += free[i + 1].1;
            free.remove(i + 1);
        }
        if i > 0 && free[i - 1].0 + free[i - 1].1 == free[i].0 {
            free[i - 1].1 += free[i].1;
            free.remove(i);
        }
    }
}

/// The address spans the near slab should reach, best first: every loaded
/// object; the shared libraries; the object holding `stdout` (the data C
/// code names most). Only spans a slab can reach whole are returned.
fn near_targets(objects: &[crate::host::LoadedObject]) -> Vec<(u64, u64)> {
    let span = |objs: &mut dyn Iterator<Item = &crate::host::LoadedObject>| {
        objs.filter_map(|o| o.span())
            .reduce(|(a, b), (c, d)| (a.min(c), b.max(d)))
    };
    let stdout = stdout_address();
    let sets = [
        span(&mut objects.iter()),
        span(&mut objects.iter().filter(|o| !o.main)),
        span(
            &mut objects
                .iter()
                .filter(|o| stdout.is_some_and(|a| o.contains(a))),
        ),
    ];
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (lo, hi) in sets.into_iter().flatten() {
        if (hi - lo).saturating_add(NEAR_SIZE) <= 2 * REACH && !out.contains(&(lo, hi)) {
            out.push((lo, hi));
        }
    }
    out
}

/// Where `stdout` is, as JIT'd code resolving it would see it.
fn stdout_address() -> Option<u64> {
    // SAFETY: dlsym only reads the loader's tables; the name is a valid C string.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"stdout".as_ptr()) };
    (!p.is_null()).then_some(p as u64)
}

/// The unmapped ranges `[start, end)` of the address space below the
/// highest user address, from `/proc/self/maps` (`None` without it).
fn free_ranges() -> Option<Vec<(u64, u64)>> {
    #[cfg(test)]
    tests::MAPS_READS.with(|n| n.set(n.get() + 1));
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let mut used: Vec<(u64, u64)> = maps
        .lines()
        .filter_map(|line| {
            let (range, _) = line.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect();
    used.sort_unstable();
    // Leave the first 4 GiB alone (non-PIE programs, the low slab).
    let mut free = Vec::new();
    let mut at = 1u64 << 32;
    for (start, end) in used {
        if start > at {
            free.push((at, start));
        }
        at = at.max(end);
    }
    Some(free)
}

/// Writes into this process's memory through `/proc/self/mem`.
mod proc_mem {
    use std::os::unix::fs::FileExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    /// The file, opened read-write, and the process it belongs to: a
    /// forked child's descriptor still names its parent's memory, so a
    /// process whose id changed opens it again. Shared: threads write
    /// through it at once (`pwrite` has no file offset to share).
    static FILE: Mutex<Option<(u32, Arc<std::fs::File>)>> = Mutex::new(None);
    /// Set once opening or writing failed: later writes do not try again.
    pub(super) static REFUSED: AtomicBool = AtomicBool::new(false);

    /// The file, opened on first use; `None` if it cannot be or a write
    /// through it failed before.
    fn file() -> Option<Arc<std::fs::File>> {
        if REFUSED.load(Ordering::Relaxed) {
            return None;
        }
        let pid = std::process::id();
        let mut file = FILE.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((p, f)) = file.as_ref()
            && *p == pid
        {
            return Some(f.clone());
        }
        let opened = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/proc/self/mem");
        match opened {
            Ok(f) => {
                let f = Arc::new(f);
                *file = Some((pid, f.clone()));
                Some(f)
            }
            Err(_) => {
                REFUSED.store(true, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether writes may be tried (the file opens, no write failed yet).
    pub(super) fn usable() -> bool {
        file().is_some()
    }

    /// Writes `bytes` at `addr` of this process; `false` if that is not
    /// possible here (no `/proc`, or the kernel refuses such writes). The
    /// caller owns `[addr, addr + bytes.len())`, mapped, and no other
    /// thread uses it while it is written.
    pub(super) fn write(addr: u64, bytes: &[u8]) -> bool {
        let Some(file) = file() else {
            return false;
        };
        let written = file.write_all_at(bytes, addr).is_ok();
        if !written {
            REFUSED.store(true, Ordering::Relaxed);
        }
        written
    }
}

/// The state of an [`Allocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemState {
    /// Read-write, not executable; being filled.
    Writing,
    /// Final protections applied; never writable and executable at once.
    Finalized,
    /// Returned to the slab.
    Released,
}

/// A page-aligned piece of a slab owned by one linked image.
#[derive(Debug)]
pub struct Allocation {
    slab: &'static Slab,
    base: u64,
    len: u64,
    state: MemState,
    /// Some pages map a file ([`Allocation::map_file`]).
    file_backed: bool,
    /// Runs `(offset, len)` left inaccessible by [`Allocation::new_covered`]
    /// until `map_file` maps them: while any is, the bytes are not handed
    /// out ([`Allocation::bytes_mut`]).
    pending: Vec<(u64, u64)>,
    /// Runs `(offset, len, protection)` mapped at their final protection
    /// ([`Allocation::map_file_final`]): not writable, so while any is the
    /// bytes are not handed out; [`Allocation::finalize`] leaves a run of
    /// pages inside one of them with that protection as it is.
    final_runs: Vec<(u64, u64, MprotectFlags)>,
    /// The bytes of a small allocation, written here, in the heap, while
    /// its pages stay inaccessible: [`Allocation::finalize`] gives the
    /// pages their final protections and writes them through
    /// `/proc/self/mem` ([`Allocation::new_staged_aligned`]). `None`: the
    /// pages are written in place.
    staged: Option<Vec<u8>>,
}

/// `[0, len)` as maximal runs `(offset, len, flags)` of one final
/// protection: each page has the protection of the last segment covering it
/// (segments rounded up to whole pages), `PROT_NONE` if none does.
fn protection_runs(
    len: u64,
    segments: &[(u64, u64, Prot)],
) -> Result<Vec<(u64, u64, MprotectFlags)>, LinkError> {
    // Sized up front: no growth (a load applies these once per image).
    let mut bounds = Vec::with_capacity(2 + 2 * segments.len());
    bounds.extend([0, len]);
    let mut painted = Vec::with_capacity(segments.len());
    for &(off, seg_len, prot) in segments {
        if seg_len == 0 {
            continue;
        }
        let seg_len = seg_len.div_ceil(PAGE) * PAGE;
        if off % PAGE != 0 || off.checked_add(seg_len).is_none_or(|end| end > len) {
            return Err(LinkError::Memory {
                detail: format!("segment {off:#x}+{seg_len:#x} is not inside the allocation"),
                source: std::io::Error::from_raw_os_error(22),
            });
        }
        bounds.extend([off, off + seg_len]);
        painted.push((off, off + seg_len, prot_flags(prot)));
    }
    bounds.sort_unstable();
    bounds.dedup();
    let mut runs: Vec<(u64, u64, MprotectFlags)> = Vec::with_capacity(bounds.len());
    for w in bounds.windows(2) {
        let (start, end) = (w[0], w[1]);
        let flags = painted
            .iter()
            .rev()
            .find(|&&(s, e, _)| s <= start && end <= e)
            .map_or(MprotectFlags::empty(), |&(_, _, f)| f);
        match runs.last_mut() {
            Some((o, l, f)) if *f == flags && *o + *l == start => *l += end - start,
            _ => runs.push((start, end - start, flags)),
        }
    }
    Ok(runs)
}

fn prot_flags(p: Prot) -> MprotectFlags {
    match p {
        Prot::ReadExec => MprotectFlags::READ | MprotectFlags::EXEC,
        Prot::Read => MprotectFlags::READ,
        Prot::ReadWrite => MprotectFlags::READ | MprotectFlags::WRITE,
    }
}

impl Allocation {
    /// Carve `len` bytes (rounded up to pages) from the slab for `placement`
    /// and make them read-write. `Ok(None)`: the low slab is unavailable.
    /// The bytes read as zero, reused or not (a released range is given
    /// back only after `MADV_DONTNEED` emptied it), so callers write only
    /// what is not zero and leave the other pages untouched (unfaulted).
    pub fn new(len: u64, placement: Placement) -> Result<Option<Allocation>, LinkError> {
        Self::new_aligned(len, PAGE, placement)
    }

    /// [`Allocation::new`] at an address that is a multiple of `align` (a
    /// power of two; less than a page means a page): an image whose blocks
    /// ask for more than a page's alignment gets it at their addresses,
    /// not only at their offsets in the image.
    pub fn new_aligned(
        len: u64,
        align: u64,
        placement: Placement,
    ) -> Result<Option<Allocation>, LinkError> {
        let Some(slab) = Slab::get(placement)? else {
            return Ok(None);
        };
        let len = len.max(1).div_ceil(PAGE).saturating_mul(PAGE);
        Self::take_in(slab, len, align.max(PAGE), &[(0, len)]).map(Some)
    }

    /// [`Allocation::new_aligned`] for memory written once and finalized
    /// soon after (a linked image), staged when small: up to
    /// `STAGE_BYTES` (64 KiB) the bytes are written in the heap and copied into
    /// the pages when finalized, each page made readable, executable or
    /// writable once and never changed after. In place, each page goes
    /// read-write → final, and taking write permission away flushes the
    /// page's translation from every CPU running one of the process's
    /// threads (an interprocessor interrupt each, which under a hypervisor
    /// exits to it): with two threads linking small objects, that was a
    /// quarter of their CPU time. Without `/proc/self/mem`, as
    /// `new_aligned`.
    pub fn new_staged_aligned(
        len: u64,
        align: u64,
        placement: Placement,
    ) -> Result<Option<Allocation>, LinkError> {
        let len = len.max(1).div_ceil(PAGE).saturating_mul(PAGE);
        if len > STAGE_BYTES || !proc_mem::usable() {
            return Self::new_aligned(len, align, placement);
        }
        let Some(slab) = Slab::get(placement)? else {
            return Ok(None);
        };
        let mut a = Self::take_in(slab, len, align.max(PAGE), &[])?;
        a.staged = Some(vec![0; len as usize]);
        Ok(Some(a))
    }

    /// [`Allocation::new`] for memory whose runs `covered` (`(offset, len)`:
    /// page-aligned, ascending, disjoint, inside) are about to be mapped
    /// from a file with [`Allocation::map_file`], each exactly once: only
    /// the pages outside them are made read-write now (the file mapping
    /// makes its own pages read-write; an image covered whole by its file
    /// needs no `mprotect` here). [`Allocation::bytes_mut`] answers `None`
    /// until every covered run is mapped. Runs that are not well-formed are
    /// ignored (the whole allocation is made read-write, as by `new`).
    pub fn new_covered(
        len: u64,
        placement: Placement,
        covered: &[(u64, u64)],
    ) -> Result<Option<Allocation>, LinkError> {
        Self::new_covered_aligned(len, PAGE, placement, covered)
    }

    /// [`Allocation::new_covered`] at an address that is a multiple of
    /// `align` (a power of two; less than a page means a page), as
    /// [`Allocation::new_aligned`]: a loaded image whose blocks ask for
    /// more than a page's alignment.
    pub fn new_covered_aligned(
        len: u64,
        align: u64,
        placement: Placement,
        covered: &[(u64, u64)],
    ) -> Result<Option<Allocation>, LinkError> {
        let Some(slab) = Slab::get(placement)? else {
            return Ok(None);
        };
        let len = len.max(1).div_ceil(PAGE).saturating_mul(PAGE);
        let well_formed = covered.iter().all(|&(o, l)| {
            o.is_multiple_of(PAGE)
                && l.is_multiple_of(PAGE)
                && l > 0
                && o.checked_add(l).is_some_and(|e| e <= len)
        }) && covered.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0);
        let covered = if well_formed { covered } else { &[] };
        // The complement of `covered` in [0, len).
        let mut open = Vec::with_capacity(covered.len() + 1);
        let mut at = 0;
        for &(o, l) in covered {
            if o > at {
                open.push((at, o - at));
            }
            at = o + l;
        }
        if at < len {
            open.push((at, len - at));
        }
        let mut a = Self::take_in(slab, len, align.max(PAGE), &open)?;
        a.pending = covered.to_vec();
        Ok(Some(a))
    }

    /// [`Allocation::new`] from `slab`.
    #[cfg(test)]
    fn new_in(slab: &'static Slab, len: u64) -> Result<Allocation, LinkError> {
        let len = len.max(1).div_ceil(PAGE).saturating_mul(PAGE);
        Self::take_in(slab, len, PAGE, &[(0, len)])
    }

    /// `len` bytes (whole pages) from `slab` at a multiple of `align`, the
    /// runs `writable` of them made read-write.
    fn take_in(
        slab: &'static Slab,
        len: u64,
        align: u64,
        writable: &[(u64, u64)],
    ) -> Result<Allocation, LinkError> {
        let base = slab.take_aligned(len, align).ok_or_else(|| LinkError::Memory {
            detail: format!(
                "the JIT slab at {:#x} ({:#x} bytes) has no free range of {len:#x} bytes aligned to {align:#x}",
                slab.base, slab.size
            ),
            source: std::io::Error::from_raw_os_error(12),
        })?;
        for &(off, run) in writable {
            // SAFETY: [base, base+len) lies inside the slab's reservation and
            // was just removed from its free list, so this allocation owns
            // it alone; the run lies inside it (callers).
            let r = unsafe {
                rustix::mm::mprotect(
                    (base + off) as *mut c_void,
                    run as usize,
                    prot_flags(Prot::ReadWrite),
                )
            };
            if let Err(e) = r {
                // Pages made read-write are still empty: put them back as
                // the slab keeps its free ranges, inaccessible.
                // SAFETY: [base, base+len) is this allocation's alone (taken
                // from the slab's free list above).
                let _ = unsafe {
                    rustix::mm::mprotect(base as *mut c_void, len as usize, MprotectFlags::empty())
                };
                slab.give_back(base, len);
                return Err(LinkError::Memory {
                    detail: format!("mprotect({:#x}, {run:#x}, RW)", base + off),
                    source: io(e),
                });
            }
        }
        Ok(Allocation {
            slab,
            base,
            len,
            state: MemState::Writing,
            file_backed: false,
            pending: Vec::new(),
            final_runs: Vec::new(),
            staged: None,
        })
    }

    /// Map the allocation's pages now, because every one is about to be
    /// written: large allocations on a rayon thread if `background` (wait
    /// with the returned [`Prefault`] before finalizing; dropping it waits
    /// too), smaller ones here, small ones not at all. Best effort: kernels
    /// before 5.14 say EINVAL, and the pages then fault in as they are
    /// written.
    pub fn prefault(&self, background: bool) -> Prefault {
        self.prefault_runs(vec![(0, self.len)], background)
    }

    /// [`Allocation::prefault`] for the runs `(offset, len)` of the
    /// allocation only (the pages that will be written; rounded out to
    /// whole pages, clipped to the allocation): zero-fill such as `.bss`,
    /// and padding, stay unmapped until touched, however large. Large runs
    /// are mapped on a rayon thread only if `background`; otherwise here.
    pub fn prefault_runs(&self, runs: Vec<(u64, u64)>, background: bool) -> Prefault {
        let base = self.base;
        let runs: Vec<(u64, usize)> = runs
            .into_iter()
            .filter_map(|(off, len)| {
                let start = off - off % PAGE;
                let end = off.checked_add(len)?.min(self.len).next_multiple_of(PAGE);
                (end > start).then(|| (base + start, (end - start) as usize))
            })
            .collect();
        let total: u64 = runs.iter().map(|&(_, l)| l as u64).sum();
        if self.state != MemState::Writing || total < PREFAULT_BYTES || self.staged.is_some() {
            return Prefault(None);
        }
        let populate = move || {
            for &(base, len) in &runs {
                if len as u64 >= HUGE_PAGES_BYTES {
                    let from = base.next_multiple_of(HUGE_PAGE);
                    let to = (base + len as u64) / HUGE_PAGE * HUGE_PAGE;
                    Self::advise_huge_pages(from, to - from);
                }
                Self::populate(base, len);
            }
        };
        if total < PREFAULT_BACKGROUND_BYTES || !background {
            populate();
            return Prefault(None);
        }
        let shared = Arc::new((Mutex::new(PrefaultState::Pending), Condvar::new()));
        let job = shared.clone();
        rayon::spawn(move || {
            let (lock, cond) = &*job;
            {
                let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
                if *state != PrefaultState::Pending {
                    return;
                }
                *state = PrefaultState::Running;
            }
            populate();
            *lock.lock().unwrap_or_else(PoisonError::into_inner) = PrefaultState::Over;
            cond.notify_all();
        });
        Prefault(Some(shared))
    }

    /// `MADV_HUGEPAGE` for `[base, base + len)`, a range of an allocation
    /// being written ([`Allocation::release`] maps fresh pages over it, so
    /// the advice goes with them). Best effort: without transparent huge
    /// pages the call fails, and pages stay small.
    fn advise_huge_pages(base: u64, len: u64) {
        // SAFETY: [base, base+len) is one allocation's range inside a slab's
        // reservation, never unmapped; the advice only says which page size
        // backs anonymous pages faulted in later, and never changes contents.
        let _ = unsafe {
            rustix::mm::madvise(base as *mut c_void, len as usize, Advice::LinuxHugepage)
        };
    }

    /// `MADV_POPULATE_WRITE` of `[base, base + len)`, a range of an
    /// allocation being written (errors ignored: see below).
    fn populate(base: u64, len: usize) {
        // SAFETY: [base, base+len) lies in a slab, whose reservation is
        // never unmapped. Populating only maps pages and never changes
        // contents (a fresh page reads as zero either way, a page already
        // written is left as it is), so it may run while other threads
        // write the range, and even after the range changed state: on a
        // PROT_NONE or read-only range the call fails, and the error is
        // ignored. Owners wait for the `Prefault` before finalizing all
        // the same, so that it is over by then.
        let _ =
            unsafe { rustix::mm::madvise(base as *mut c_void, len, Advice::LinuxPopulateWrite) };
    }

    /// Start address.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Length in bytes (whole pages).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the allocation is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Current state.
    pub fn state(&self) -> MemState {
        self.state
    }

    /// The bytes, read-only, while writing (an image for another ISA stays
    /// so: it never runs here). `None` once finalized or released.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        if let Some(staged) = &self.staged {
            return (self.state == MemState::Writing).then_some(staged.as_slice());
        }
        if self.state != MemState::Writing
            || !self.pending.is_empty()
            || !self.final_runs.is_empty()
        {
            return None;
        }
        // SAFETY: in the Writing state with no run pending and none mapped
        // at its final protection, the whole range is mapped read-write
        // and owned by this allocation alone; writes need `&mut self`
        // (`bytes_mut`), which the `&self` borrow excludes while the slice
        // lives.
        Some(unsafe { std::slice::from_raw_parts(self.base as *const u8, self.len as usize) })
    }

    /// The bytes, while writing. `None` once finalized or released.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        if let Some(staged) = &mut self.staged {
            return (self.state == MemState::Writing).then_some(staged.as_mut_slice());
        }
        if self.state != MemState::Writing
            || !self.pending.is_empty()
            || !self.final_runs.is_empty()
        {
            return None;
        }
        // SAFETY: in the Writing state with no run pending and none mapped
        // at its final protection, the whole range is mapped read-write
        // (`take_in` or `map_file`) and owned by this
        // allocation alone (taken from the free list); the `&mut self`
        // borrow makes the slice exclusive for its lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len as usize) })
    }

    /// Maps `len` bytes of `file` from `file_offset` at `off` in the
    /// allocation, copy-on-write (`MAP_PRIVATE`) and read-write until
    /// [`finalize`](Self::finalize): a page is read from the page cache when
    /// first touched and copied only when written, so pages never written
    /// are shared with the page cache and cost no copy. `off`, `len` and
    /// `file_offset` are page multiples and the range lies inside the
    /// allocation. Releasing the allocation maps fresh zero pages back.
    ///
    /// The file must not change while the allocation lives (as for
    /// `dlopen`: pages not yet touched are read when first used).
    pub fn map_file(
        &mut self,
        off: u64,
        len: u64,
        file: &std::fs::File,
        file_offset: u64,
    ) -> Result<(), LinkError> {
        self.map_file_prot(
            off,
            len,
            file,
            file_offset,
            ProtFlags::READ | ProtFlags::WRITE,
        )
    }

    /// [`Allocation::map_file`] at the pages' final protection `prot`
    /// rather than read-write: [`Allocation::finalize`] then leaves them as
    /// they are (no `mprotect`; and pages written at load, through
    /// [`Allocation::write_at`], need no TLB flush when they stop being
    /// writable, as they never were). From then on the bytes are not handed
    /// out ([`Allocation::bytes_mut`] answers `None`).
    pub(crate) fn map_file_final(
        &mut self,
        off: u64,
        len: u64,
        file: &std::fs::File,
        file_offset: u64,
        prot: Prot,
    ) -> Result<(), LinkError> {
        let flags = prot_flags(prot);
        self.map_file_prot(
            off,
            len,
            file,
            file_offset,
            ProtFlags::from_bits_retain(flags.bits()),
        )?;
        if len > 0 {
            self.final_runs.push((off, len, flags));
        }
        Ok(())
    }

    fn map_file_prot(
        &mut self,
        off: u64,
        len: u64,
        file: &std::fs::File,
        file_offset: u64,
        prot: ProtFlags,
    ) -> Result<(), LinkError> {
        let bad = |detail: String| LinkError::Memory {
            detail,
            source: std::io::Error::from_raw_os_error(22),
        };
        if self.state != MemState::Writing {
            return Err(bad("map_file on memory that is no longer writable".into()));
        }
        let aligned = [off, len, file_offset]
            .iter()
            .all(|v| v.is_multiple_of(PAGE));
        if !aligned || off.checked_add(len).is_none_or(|end| end > self.len) {
            return Err(bad(format!(
                "file range {file_offset:#x}+{len:#x} at {off:#x} is not page-aligned inside the allocation"
            )));
        }
        if len == 0 {
            return Ok(());
        }
        self.unstage()?;
        // From here on a failure may have replaced part of the range.
        self.file_backed = true;
        // SAFETY: [base+off, base+off+len) lies inside this allocation,
        // which owns it alone (checked above); MAP_FIXED replaces only those
        // pages of the slab's reservation, which nothing else references
        // while the allocation is being written.
        unsafe {
            rustix::mm::mmap(
                (self.base + off) as *mut c_void,
                len as usize,
                prot,
                MapFlags::PRIVATE | MapFlags::FIXED,
                file,
                file_offset,
            )
        }
        .map_err(|e| LinkError::Memory {
            detail: format!("mmap of a file at {:#x} ({len:#x} bytes)", self.base + off),
            source: io(e),
        })?;
        self.pending.retain(|&run| run != (off, len));
        Ok(())
    }

    /// Writes `bytes` at `off` (inside the allocation, which is being
    /// written), whatever the pages' protection: through the process's
    /// `/proc/self/mem`, as a debugger writes into a tracee, when the kernel
    /// allows it (it copies a private page on write as a fault would, with
    /// neither the fault nor a writable mapping); else the pages are made
    /// read-write and written, and [`Allocation::finalize`] protects them
    /// again.
    pub(crate) fn write_at(&mut self, off: u64, bytes: &[u8]) -> Result<(), LinkError> {
        let end = off.checked_add(bytes.len() as u64);
        if self.state != MemState::Writing || end.is_none_or(|e| e > self.len) {
            return Err(LinkError::Memory {
                detail: format!(
                    "write of {:#x} bytes at {off:#x} outside the allocation being written",
                    bytes.len()
                ),
                source: std::io::Error::from_raw_os_error(22),
            });
        }
        if let Some(staged) = &mut self.staged {
            staged[off as usize..][..bytes.len()].copy_from_slice(bytes);
            return Ok(());
        }
        self.write_at_with(off, bytes, proc_mem::write)
    }

    /// [`Allocation::write_at`], `poke` writing through `/proc/self/mem`
    /// (`false`: not possible). `off` and `bytes` lie inside the
    /// allocation, which is being written (the caller checked).
    fn write_at_with(
        &mut self,
        off: u64,
        bytes: &[u8],
        poke: fn(u64, &[u8]) -> bool,
    ) -> Result<(), LinkError> {
        if bytes.is_empty() || poke(self.base + off, bytes) {
            return Ok(());
        }
        let start = off - off % PAGE;
        let end = (off + bytes.len() as u64)
            .next_multiple_of(PAGE)
            .min(self.len);
        self.protect(start, end - start, prot_flags(Prot::ReadWrite))?;
        // The pages are read-write now: no final protection is left to keep.
        self.final_runs
            .retain(|&(o, l, _)| o + l <= start || end <= o);
        // SAFETY: [base+off, base+off+len) lies inside this allocation
        // (checked above), which owns it alone, and was just made
        // read-write; `bytes` is the caller's memory, not the allocation's
        // (it is borrowed immutably while `self` is borrowed mutably).
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.base + off) as *mut u8,
                bytes.len(),
            );
        }
        Ok(())
    }

    /// Apply final protections: `segments` are `(offset, len, prot)` with
    /// page-aligned offsets (a later segment wins a page two cover); pages
    /// not covered become `PROT_NONE`. One `mprotect` per run of pages of
    /// one protection, each page going from read-write straight to its
    /// final protection: no page is ever W and X at once. A staged
    /// allocation's pages go from `PROT_NONE` to their final protection,
    /// then are written ([`Allocation::new_staged_aligned`]).
    pub fn finalize(&mut self, segments: &[(u64, u64, Prot)]) -> Result<(), LinkError> {
        self.finalize_with(segments, proc_mem::write)
    }

    /// [`Allocation::finalize`], `poke` writing a staged allocation's pages
    /// through `/proc/self/mem` (`false`: not possible).
    fn finalize_with(
        &mut self,
        segments: &[(u64, u64, Prot)],
        poke: fn(u64, &[u8]) -> bool,
    ) -> Result<(), LinkError> {
        if self.state != MemState::Writing {
            return Ok(());
        }
        let runs = protection_runs(self.len, segments)?;
        if let Some(staged) = self.staged.take() {
            if let Err(e) = self.write_staged(&runs, &staged, poke) {
                // Still being written: the bytes stay where they were.
                self.staged = Some(staged);
                return Err(e);
            }
            self.state = MemState::Finalized;
            return Ok(());
        }
        for (off, len, flags) in runs {
            // Pages a file mapping gave this protection already stay so.
            let mapped_so = self
                .final_runs
                .iter()
                .any(|&(o, l, f)| f == flags && o <= off && off + len <= o + l);
            if !mapped_so {
                self.protect(off, len, flags)?;
            }
        }
        self.final_runs.clear();
        // Code was written through the data side; x86-64 keeps caches coherent.
        self.state = MemState::Finalized;
        Ok(())
    }

    /// Gives the inaccessible pages of a staged allocation their final
    /// protections (`runs`, from `PROT_NONE`: no translation to flush) and
    /// writes `staged`'s pages into them — the pages that are not all zero
    /// (fresh pages read as zero) — through `/proc/self/mem`, or, where the
    /// kernel refuses that, through a read-write spell.
    fn write_staged(
        &mut self,
        runs: &[(u64, u64, MprotectFlags)],
        staged: &[u8],
        poke: fn(u64, &[u8]) -> bool,
    ) -> Result<(), LinkError> {
        for &(off, len, flags) in runs {
            if flags.is_empty() {
                continue;
            }
            self.protect(off, len, flags)?;
            for (at, bytes) in nonzero_page_runs(staged, off, len) {
                if flags.contains(MprotectFlags::WRITE) || !poke(self.base + at, bytes) {
                    self.copy_in(at, bytes, flags)?;
                }
            }
        }
        Ok(())
    }

    /// Copies `bytes` to `off`, a range of pages of this allocation whose
    /// protection is `flags`: made read-write for it if they are not.
    fn copy_in(&mut self, off: u64, bytes: &[u8], flags: MprotectFlags) -> Result<(), LinkError> {
        let len = (bytes.len() as u64).next_multiple_of(PAGE);
        if !flags.contains(MprotectFlags::WRITE) {
            self.protect(off, len, prot_flags(Prot::ReadWrite))?;
        }
        // SAFETY: [base+off, base+off+len) lies inside this allocation
        // (`nonzero_page_runs` stays inside the run it was given), which
        // owns it alone and has just made it (or found it) read-write;
        // `bytes` is the caller's heap buffer, not these pages.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                (self.base + off) as *mut u8,
                bytes.len(),
            );
        }
        if !flags.contains(MprotectFlags::WRITE) {
            self.protect(off, len, flags)?;
        }
        Ok(())
    }

    /// Moves a staged allocation's bytes into its pages, made read-write:
    /// from then on it is written in place (a file is about to be mapped
    /// over some of its pages).
    fn unstage(&mut self) -> Result<(), LinkError> {
        let Some(staged) = self.staged.take() else {
            return Ok(());
        };
        if let Err(e) = self.protect(0, self.len, prot_flags(Prot::ReadWrite)) {
            self.staged = Some(staged);
            return Err(e);
        }
        for (at, bytes) in nonzero_page_runs(&staged, 0, self.len) {
            self.copy_in(at, bytes, prot_flags(Prot::ReadWrite))?;
        }
        Ok(())
    }

    fn protect(&self, off: u64, len: u64, flags: MprotectFlags) -> Result<(), LinkError> {
        // SAFETY: the range lies inside this allocation (checked by callers),
        // which owns it; changing its protection affects no other owner.
        unsafe { rustix::mm::mprotect((self.base + off) as *mut c_void, len as usize, flags) }
            .map_err(|e| LinkError::Memory {
                detail: format!("mprotect({:#x}, {len:#x})", self.base + off),
                source: io(e),
            })
    }

    /// Release the memory now (also done on drop).
    pub fn release(&mut self) {
        if self.state == MemState::Released {
            return;
        }
        let emptied = if self.file_backed || self.len >= HUGE_PAGES_BYTES {
            // Dropping the pages of a private file mapping would read the
            // file again, and a range asked to take huge pages would keep
            // asking (`MADV_NOHUGEPAGE` marks it too: neither merges with
            // the reservation again): map anonymous (zero) pages, with no
            // advice, over the whole range.
            // SAFETY: the range belongs to this allocation and no code or
            // data of the image is used after this (its finalizers already
            // ran); MAP_FIXED replaces only this allocation's pages, inside
            // the slab's reservation.
            unsafe {
                rustix::mm::mmap_anonymous(
                    self.base as *mut c_void,
                    self.len as usize,
                    ProtFlags::empty(),
                    MapFlags::PRIVATE | MapFlags::FIXED | MapFlags::NORESERVE,
                )
            }
            .map(|_| ())
        } else {
            // (The anonymous mapping above is `PROT_NONE` already.)
            let _ = self.protect(0, self.len, MprotectFlags::empty());
            // SAFETY: the range belongs to this allocation and no code or
            // data of the image is used after this (its finalizers already
            // ran); dropping its pages affects nothing else.
            unsafe {
                rustix::mm::madvise(
                    self.base as *mut c_void,
                    self.len as usize,
                    Advice::LinuxDontNeed,
                )
            }
        };
        // Fresh allocations read as zero (`new`): a range whose pages could
        // not be dropped is never handed out again.
        if emptied.is_ok() {
            self.slab.give_back(self.base, self.len);
        }
        self.state = MemState::Released;
    }
}

/// The runs `(offset, bytes)` of whole pages of `bytes[off..off + len]`
/// with a byte that is not zero (a run's last page may be short if the
/// buffer ends there).
fn nonzero_page_runs(bytes: &[u8], off: u64, len: u64) -> Vec<(u64, &[u8])> {
    let end = (off + len).min(bytes.len() as u64) as usize;
    let mut runs: Vec<(u64, &[u8])> = Vec::new();
    let mut run: Option<usize> = None;
    let mut at = off as usize;
    while at < end {
        let page_end = (at + PAGE as usize).min(end);
        let nonzero = bytes[at..page_end].iter().any(|&b| b != 0);
        match (nonzero, run) {
            (true, None) => run = Some(at),
            (false, Some(start)) => {
                runs.push((start as u64, &bytes[start..at]));
                run = None;
            }
            _ => {}
        }
        at = page_end;
    }
    if let Some(start) = run {
        runs.push((start as u64, &bytes[start..end]));
    }
    runs
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.release();
    }
}

/// An input file's bytes: read into memory, or the file mapped read-only.
///
/// Mapping saves the CLI a page fault per page and a copy per byte: `read`
/// copies each page of the page cache into a fresh heap page (one fault
/// each: on the 200-object synth input, 4,700 of kiln's 15,000 faults),
/// while a mapping reads the page cache's own pages, each fault mapping
/// the cached pages around it too. Not `MAP_POPULATE`: populating holds
/// the process's memory-map lock while it maps every page, and the threads
/// opening and parsing other inputs meanwhile wait on it to grow their
/// heaps (synth's `kiln run --noexec`: 2–3.5 ms more system time, 1.4 ms
/// more wall, the same on one thread; docs/performance-link.md).
pub struct FileBytes(FileRepr);

enum FileRepr {
    Owned(Vec<u8>),
    /// `unmap`: whether dropping the value unmaps it.
    Mapped {
        ptr: *const u8,
        len: usize,
        unmap: bool,
    },
}

// SAFETY: a mapping is read-only, never written through, and unmapped only
// by `drop` (or never), which has the value alone; sharing or moving it across threads
// is as safe as sharing a `&[u8]`.
unsafe impl Send for FileBytes {}
// SAFETY: see `Send`: the bytes are never written while the value lives.
unsafe impl Sync for FileBytes {}

impl FileBytes {
    /// `file`'s bytes, mapped private and read-only; pages are faulted in
    /// as they are read. An empty file is read (nothing to map).
    ///
    /// # Safety
    ///
    /// The file must not be truncated or written while the value (or any
    /// clone of an `Arc` holding it) lives: a shrunk file raises `SIGBUS`
    /// on access, a written one changes the bytes under the reader. As
    /// `ld`, mold and lld assume of their inputs.
    pub unsafe fn map(file: &std::fs::File) -> std::io::Result<FileBytes> {
        let len = file.metadata()?.len();
        // SAFETY: as this function's; `len` is the file's size.
        unsafe { FileBytes::map_sized(file, len, false) }
    }

    /// `file`'s `len` bytes (its size, as the caller's `fstat` said),
    /// mapped private and read-only, with `MAP_POPULATE` if `populate`:
    /// without it pages are faulted in as they are read — for a reader that
    /// touches a few pages of a large file (a loader checking an image's
    /// header and tables), where populating would map every page up front.
    ///
    /// # Safety
    ///
    /// As for [`FileBytes::map`]; `len` must be the file's size (a longer
    /// mapping raises `SIGBUS` past the file's end).
    pub(crate) unsafe fn map_sized(
        file: &std::fs::File,
        len: u64,
        populate: bool,
    ) -> std::io::Result<FileBytes> {
        let flags = if populate {
            MapFlags::POPULATE
        } else {
            MapFlags::empty()
        };
        // SAFETY: as this function's.
        unsafe { FileBytes::map_with(file, len, flags) }
    }

    /// [`FileBytes::map`] of `len` bytes with `flags` added to
    /// `MAP_PRIVATE`.
    ///
    /// # Safety
    ///
    /// As for [`FileBytes::map_sized`].
    unsafe fn map_with(
        file: &std::fs::File,
        len: u64,
        flags: MapFlags,
    ) -> std::io::Result<FileBytes> {
        let len = usize::try_from(len)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::FileTooLarge))?;
        if len == 0 {
            return Ok(FileBytes(FileRepr::Owned(Vec::new())));
        }
        // SAFETY: a new private read-only mapping at an address the kernel
        // picks: it replaces nothing; `drop` unmaps exactly this range.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ,
                MapFlags::PRIVATE | flags,
                file,
                0,
            )
        }
        .map_err(io)?;
        Ok(FileBytes(FileRepr::Mapped {
            ptr: ptr.cast::<u8>().cast_const(),
            len,
            unmap: true,
        }))
    }

    /// Leaves a mapping mapped until the process exits: dropping the value
    /// no longer unmaps it. For a process that links once and then runs or
    /// exits (the CLI): the kernel drops every mapping at exit in one pass,
    /// while a `munmap` per input costs a call and a TLB flush on every
    /// thread (on synth, 200 of them while the link's threads run). The
    /// pages are the page cache's, clean: keeping them mapped costs address
    /// space only (the kernel may still reclaim them).
    pub fn keep_mapped(mut self) -> FileBytes {
        if let FileRepr::Mapped { unmap, .. } = &mut self.0 {
            *unmap = false;
        }
        self
    }

    /// Whether the bytes are a mapping of the file (not a copy).
    pub fn is_mapped(&self) -> bool {
        matches!(self.0, FileRepr::Mapped { .. })
    }

    /// The bytes as a vector: moved out if owned, copied if mapped.
    pub fn into_vec(mut self) -> Vec<u8> {
        if let FileRepr::Owned(v) = &mut self.0 {
            return std::mem::take(v);
        }
        self.to_vec()
    }
}

/// No bytes (an empty, owned buffer).
impl Default for FileBytes {
    fn default() -> FileBytes {
        FileBytes(FileRepr::Owned(Vec::new()))
    }
}

impl From<Vec<u8>> for FileBytes {
    fn from(v: Vec<u8>) -> FileBytes {
        FileBytes(FileRepr::Owned(v))
    }
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            FileRepr::Owned(v) => v,
            // SAFETY: `ptr..ptr + len` is this value's own read-only
            // mapping, alive until `drop`; `map`'s caller promised the file
            // keeps its length and bytes meanwhile.
            FileRepr::Mapped { ptr, len, .. } => unsafe { std::slice::from_raw_parts(*ptr, *len) },
        }
    }
}

impl std::fmt::Debug for FileBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBytes")
            .field("len", &self.len())
            .field("mapped", &self.is_mapped())
            .finish()
    }
}

impl Drop for FileBytes {
    fn drop(&mut self) {
        if let FileRepr::Mapped {
            ptr,
            len,
            unmap: true,
        } = self.0
        {
            // SAFETY: the mapping `map` made, unmapped once, here; no slice
            // of it outlives `self` (they borrow it).
            let _ = unsafe { rustix::mm::munmap(ptr.cast_mut().cast::<c_void>(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// How often this thread read `/proc/self/maps` in [`free_ranges`].
        pub(super) static MAPS_READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// In a fresh process (this test binary run again for this test alone:
    /// the other tests' slabs and threads would take the room it needs).
    #[test]
    fn the_near_slab_is_placed_without_reading_the_maps_when_there_is_room() {
        const NAME: &str =
            "memory::tests::the_near_slab_is_placed_without_reading_the_maps_when_there_is_room";
        if std::env::var_os("KILN_NEAR_SLAB_CHILD").is_none() {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
                .env("KILN_NEAR_SLAB_CHILD", "1")
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{text}");
            assert!(text.contains("1 passed"), "{text}");
            return;
        }
        let objects = crate::host::loaded_objects();
        let (lo, hi) = *near_targets(&objects)
            .first()
            .expect("a reachable target span");
        let before = MAPS_READS.with(|n| n.get());
        let slab = Slab::near().expect("near slab");
        let read = MAPS_READS.with(|n| n.get()) - before;
        let (base, size) = slab.range();
        // The reach guarantee holds as with the maps.
        assert!(
            slab.reaches(lo) && slab.reaches(hi - 1),
            "{base:#x}+{size:#x} vs {lo:#x}..{hi:#x}"
        );
        assert!(
            base + size <= lo,
            "under the libraries: {base:#x}+{size:#x} vs {lo:#x}"
        );
        assert_eq!(read, 0, "/proc/self/maps read {read} times");
        Slab::unreserve(base, size);
    }

    #[test]
    fn a_mapped_file_reads_as_its_bytes() {
        let dir = std::env::temp_dir().join(format!("kiln-filebytes-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("input.bin");
        let data: Vec<u8> = (0..3 * PAGE as usize + 17).map(|i| (i * 7) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the test's own file, not changed while mapped.
        let mapped = unsafe { FileBytes::map(&file) }.unwrap();
        assert!(mapped.is_mapped());
        assert_eq!(&mapped[..], &data[..]);
        assert_eq!(mapped.into_vec(), data);
        // Not populated: the same bytes, faulted in as read.
        for populate in [false, true] {
            // SAFETY: the test's own file, not changed while mapped; the length is the file's.
            let lazy = unsafe { FileBytes::map_sized(&file, data.len() as u64, populate) }.unwrap();
            assert!(lazy.is_mapped());
            assert_eq!(&lazy[..], &data[..]);
        }
        // An empty file has nothing to map: it reads as no bytes.
        let empty_path = dir.join("empty.bin");
        std::fs::write(&empty_path, b"").unwrap();
        let empty = std::fs::File::open(&empty_path).unwrap();
        // SAFETY: the test's own (empty) file, not changed while mapped.
        let empty = unsafe { FileBytes::map(&empty) }.unwrap();
        assert!(!empty.is_mapped());
        assert!(empty.is_empty());
        let owned = FileBytes::from(data.clone());
        assert!(!owned.is_mapped());
        assert_eq!(owned.into_vec(), data);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn states_and_reuse() {
        let mut a = Allocation::new(10_000, Placement::Near).unwrap().unwrap();
        assert_eq!(a.len(), 3 * PAGE);
        a.bytes_mut().unwrap()[0] = 0xc3;
        a.finalize(&[(0, PAGE, Prot::ReadExec), (PAGE, 2 * PAGE, Prot::Read)])
            .unwrap();
        assert_eq!(a.state(), MemState::Finalized);
        assert!(a.bytes_mut().is_none());
        drop(a);
        let b = Allocation::new(PAGE, Placement::Near).unwrap().unwrap();
        let (sb, sl) = b.slab.range();
        assert!(b.base() >= sb && b.base() < sb + sl);
    }

    /// Final protections are one run per protection: a later segment wins
    /// a page two cover, uncovered pages are `PROT_NONE`, neighbours of one
    /// protection merge, and a segment outside the allocation is refused.
    #[test]
    fn protections_are_applied_in_maximal_runs() {
        let (rx, r, rw) = (Prot::ReadExec, Prot::Read, Prot::ReadWrite);
        let (frx, fr, frw) = (prot_flags(rx), prot_flags(r), prot_flags(rw));
        let none = MprotectFlags::empty();
        // Text then read-only data covering everything: two calls.
        assert_eq!(
            protection_runs(5 * PAGE, &[(0, 3 * PAGE - 10, rx), (3 * PAGE, 2 * PAGE, r)]).unwrap(),
            vec![(0, 3 * PAGE, frx), (3 * PAGE, 2 * PAGE, fr)]
        );
        // Neighbours of one protection merge; gaps are PROT_NONE.
        assert_eq!(
            protection_runs(
                6 * PAGE,
                &[(PAGE, PAGE, r), (2 * PAGE, 1, r), (4 * PAGE, PAGE, rw)]
            )
            .unwrap(),
            vec![
                (0, PAGE, none),
                (PAGE, 2 * PAGE, fr),
                (3 * PAGE, PAGE, none),
                (4 * PAGE, PAGE, frw),
                (5 * PAGE, PAGE, none)
            ]
        );
        // The later of two segments sharing a page wins it.
        assert_eq!(
            protection_runs(3 * PAGE, &[(0, 2 * PAGE, rx), (PAGE, 2 * PAGE, rw)]).unwrap(),
            vec![(0, PAGE, frx), (PAGE, 2 * PAGE, frw)]
        );
        assert_eq!(
            protection_runs(2 * PAGE, &[]).unwrap(),
            vec![(0, 2 * PAGE, none)]
        );
        assert!(protection_runs(2 * PAGE, &[(PAGE, 2 * PAGE, r)]).is_err());
        assert!(protection_runs(2 * PAGE, &[(1, PAGE, r)]).is_err());
        // Applied: the pages have those protections.
        let mut a = Allocation::new(4 * PAGE, Placement::Near).unwrap().unwrap();
        a.finalize(&[(0, PAGE, rx), (2 * PAGE, 2 * PAGE, r)])
            .unwrap();
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let prot_at = |addr: u64| {
            maps.lines()
                .find(|l| {
                    let (range, _) = l.split_once(' ').unwrap();
                    let (s, e) = range.split_once('-').unwrap();
                    let (s, e) = (
                        u64::from_str_radix(s, 16).unwrap(),
                        u64::from_str_radix(e, 16).unwrap(),
                    );
                    s <= addr && addr < e
                })
                .map(|l| l.split(' ').nth(1).unwrap().to_string())
        };
        assert_eq!(prot_at(a.base()).as_deref(), Some("r-xp"));
        assert_eq!(prot_at(a.base() + PAGE).as_deref(), Some("---p"));
        assert_eq!(prot_at(a.base() + 3 * PAGE).as_deref(), Some("r--p"));
    }

    /// The loaders write only what is not zero: a reused range reads as
    /// zero, whatever the previous owner wrote and however it protected it.
    /// A slab of the test's own, so no other test takes the ranges.
    /// Covered runs are not made read-write before the file is mapped
    /// there; the bytes are handed out only once every run is mapped, and
    /// then read as the file (covered) and zero (the rest).
    #[test]
    fn covered_allocations_take_the_alignment_asked_for() {
        // A page first, so that the next free address is not aligned by chance.
        let pad = Allocation::new(PAGE, Placement::Near).unwrap().unwrap();
        for align in [1 << 16, 1 << 21] {
            let a = Allocation::new_covered_aligned(3 * PAGE, align, Placement::Near, &[])
                .unwrap()
                .unwrap();
            assert_eq!(a.base() % align, 0, "{:#x} aligned to {align:#x}", a.base());
        }
        drop(pad);
    }

    #[test]
    fn covered_runs_wait_for_their_file_mapping() {
        let path = std::env::temp_dir().join(format!("kiln-covered-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 2 * PAGE as usize]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut a = Allocation::new_covered(3 * PAGE, Placement::Near, &[(PAGE, 2 * PAGE)])
            .unwrap()
            .unwrap();
        assert!(
            a.bytes_mut().is_none(),
            "bytes handed out before the file is mapped"
        );
        assert_eq!(prot_at(a.base()), "rw-");
        assert_eq!(
            prot_at(a.base() + PAGE),
            "---",
            "a covered page was made writable"
        );
        a.map_file(PAGE, 2 * PAGE, &file, 0).unwrap();
        let bytes = a.bytes_mut().expect("every covered run is mapped");
        assert!(bytes[..PAGE as usize].iter().all(|&b| b == 0));
        assert!(bytes[PAGE as usize..].iter().all(|&b| b == 7));
        bytes[0] = 1;
        bytes[PAGE as usize] = 1;
        drop(a);
        std::fs::remove_file(&path).unwrap();
    }

    /// The protection letters (`r-x`, …) of the mapping holding `addr`.
    fn prot_at(addr: u64) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find_map(|l| {
                let (range, rest) = l.split_once(' ')?;
                let (s, e) = range.split_once('-')?;
                let (s, e) = (
                    u64::from_str_radix(s, 16).ok()?,
                    u64::from_str_radix(e, 16).ok()?,
                );
                (s <= addr && addr < e).then(|| rest[..3].to_string())
            })
            .unwrap()
    }

    /// A staged allocation's pages stay inaccessible while it is written
    /// (in the heap) and are finalized straight to their protections: an
    /// executable page that runs what was written, a read-only page that
    /// reads it, and an all-zero page left untouched. So also when the
    /// kernel refuses writes through `/proc/self/mem` (a read-write spell
    /// instead).
    #[test]
    fn staged_allocations_are_inaccessible_until_finalized_to_their_protections() {
        let refused: fn(u64, &[u8]) -> bool = |_, _| false;
        for poke in [proc_mem::write as fn(u64, &[u8]) -> bool, refused] {
            let mut a = Allocation::new_staged_aligned(3 * PAGE, PAGE, Placement::Near)
                .unwrap()
                .unwrap();
            assert!(a.staged.is_some(), "/proc/self/mem is readable here");
            assert_eq!(prot_at(a.base()), "---");
            let mem = a.bytes_mut().unwrap();
            // mov eax, 42; ret
            mem[..6].copy_from_slice(&[0xb8, 42, 0, 0, 0, 0xc3]);
            mem[PAGE as usize + 100] = 9;
            assert!(a.prefault(true).0.is_none(), "nothing to map ahead");
            a.finalize_with(
                &[(0, PAGE, Prot::ReadExec), (PAGE, 2 * PAGE, Prot::Read)],
                poke,
            )
            .unwrap();
            assert!(a.bytes().is_none());
            assert_eq!(prot_at(a.base()), "r-x");
            assert_eq!(prot_at(a.base() + PAGE), "r--");
            assert_eq!(
                resident(a.base() + 2 * PAGE, PAGE),
                0,
                "an all-zero page was written"
            );
            // SAFETY: the allocation's three pages are mapped readable.
            let mem =
                unsafe { std::slice::from_raw_parts(a.base() as *const u8, 3 * PAGE as usize) };
            assert_eq!(mem[PAGE as usize + 100], 9);
            assert!(mem[2 * PAGE as usize..].iter().all(|&b| b == 0));
            // SAFETY: the first page is executable and holds `mov eax, 42; ret`.
            let f: extern "C" fn() -> u32 = unsafe { std::mem::transmute(a.base()) };
            assert_eq!(f(), 42);
        }
    }

    /// Larger allocations are written in place, read-write until finalized.
    #[test]
    fn large_allocations_are_not_staged() {
        let a = Allocation::new_staged_aligned(STAGE_BYTES + PAGE, PAGE, Placement::Near)
            .unwrap()
            .unwrap();
        assert!(a.staged.is_none());
        assert_eq!(prot_at(a.base()), "rw-");
    }

    /// A file mapped over part of a staged allocation moves the staged
    /// bytes into its pages first: both read as written.
    #[test]
    fn mapping_a_file_into_a_staged_allocation_keeps_what_was_written() {
        let path = std::env::temp_dir().join(format!("kiln-unstage-{}", std::process::id()));
        std::fs::write(&path, vec![5u8; PAGE as usize]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut a = Allocation::new_staged_aligned(2 * PAGE, PAGE, Placement::Near)
            .unwrap()
            .unwrap();
        a.bytes_mut().unwrap()[3] = 1;
        a.map_file(PAGE, PAGE, &file, 0).unwrap();
        assert!(a.staged.is_none());
        let mem = a.bytes().unwrap();
        assert_eq!(mem[3], 1);
        assert!(mem[PAGE as usize..].iter().all(|&b| b == 5));
        drop(a);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn nonzero_page_runs_skip_zero_pages() {
        let p = PAGE as usize;
        let mut bytes = vec![0u8; 5 * p - 10];
        bytes[1] = 1;
        bytes[p + 7] = 1;
        bytes[3 * p] = 1;
        bytes[5 * p - 11] = 1;
        let runs: Vec<(u64, usize)> = nonzero_page_runs(&bytes, 0, 5 * PAGE)
            .into_iter()
            .map(|(at, b)| (at, b.len()))
            .collect();
        assert_eq!(runs, [(0, 2 * p), (3 * PAGE, 2 * p - 10)]);
        let runs: Vec<(u64, usize)> = nonzero_page_runs(&bytes, PAGE, 2 * PAGE)
            .into_iter()
            .map(|(at, b)| (at, b.len()))
            .collect();
        assert_eq!(runs, [(PAGE, p)]);
        assert!(nonzero_page_runs(&bytes, 2 * PAGE, PAGE).is_empty());
    }

    /// Pages mapped from a file at their final protection are written
    /// without ever being writable (through `/proc/self/mem`), or, where
    /// that is refused, made writable and protected again by `finalize`;
    /// either way they read as written, keep their protection and are not
    /// handed out as bytes meanwhile.
    #[test]
    fn final_mappings_are_written_without_being_writable() {
        let path = std::env::temp_dir().join(format!("kiln-final-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 2 * PAGE as usize]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let refused: fn(u64, &[u8]) -> bool = |_, _| false;
        for (poke, in_place) in [
            (proc_mem::write as fn(u64, &[u8]) -> bool, true),
            (refused, false),
        ] {
            let mut a = Allocation::new_covered(2 * PAGE, Placement::Near, &[(0, 2 * PAGE)])
                .unwrap()
                .unwrap();
            a.map_file_final(0, PAGE, &file, 0, Prot::ReadExec).unwrap();
            a.map_file_final(PAGE, PAGE, &file, PAGE, Prot::Read)
                .unwrap();
            assert!(a.bytes_mut().is_none(), "read-only pages handed out");
            assert_eq!(prot_at(a.base() + PAGE), "r--");
            a.write_at_with(PAGE + 8, &[1, 2, 3], poke).unwrap();
            // Written in place, or (refused: by the test, or by this
            // kernel) through a writable mapping.
            let poked = in_place && !proc_mem::REFUSED.load(std::sync::atomic::Ordering::Relaxed);
            assert_eq!(prot_at(a.base() + PAGE), if poked { "r--" } else { "rw-" });
            assert!(
                a.write_at(2 * PAGE - 1, &[1, 2]).is_err(),
                "a write past the end"
            );
            a.finalize(&[(0, PAGE, Prot::ReadExec), (PAGE, PAGE, Prot::Read)])
                .unwrap();
            assert_eq!(prot_at(a.base()), "r-x");
            assert_eq!(prot_at(a.base() + PAGE), "r--");
            // SAFETY: the allocation's two pages are mapped readable.
            let mem =
                unsafe { std::slice::from_raw_parts(a.base() as *const u8, 2 * PAGE as usize) };
            assert_eq!(
                &mem[PAGE as usize + 7..PAGE as usize + 12],
                &[7, 1, 2, 3, 7]
            );
            assert!(mem[..PAGE as usize].iter().all(|&b| b == 7));
        }
        // The file itself is unchanged (the pages were private copies).
        assert!(std::fs::read(&path).unwrap().iter().all(|&b| b == 7));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn reused_memory_reads_as_zero() {
        const SIZE: u64 = 64 * PAGE;
        let base = Slab::reserve_at(0, SIZE, false).expect("reserve a test slab");
        let slab: &'static Slab = Box::leak(Box::new(Slab::new(base, SIZE)));
        let mut released = Vec::new();
        for _ in 0..8 {
            let mut a = Allocation::new_in(slab, 3 * PAGE).unwrap();
            a.bytes_mut().unwrap().fill(0xa5);
            a.finalize(&[(0, PAGE, Prot::ReadExec), (PAGE, 2 * PAGE, Prot::ReadWrite)])
                .unwrap();
            released.push(a);
        }
        let mut bases: Vec<u64> = released.iter().map(Allocation::base).collect();
        drop(released);
        // First fit hands the same ranges out again.
        let mut again: Vec<Allocation> = (0..8)
            .map(|_| Allocation::new_in(slab, 3 * PAGE).unwrap())
            .collect();
        let mut reused: Vec<u64> = again.iter().map(Allocation::base).collect();
        bases.sort_unstable();
        reused.sort_unstable();
        assert_eq!(reused, bases, "the released ranges are handed out again");
        for b in &mut again {
            assert!(b.bytes_mut().unwrap().iter().all(|&x| x == 0));
        }
    }

    /// Resident pages of `[base, base+len)` (mincore).
    fn resident(base: u64, len: u64) -> usize {
        let mut vec = vec![0u8; (len / PAGE) as usize];
        // SAFETY: the range is mapped (an allocation in its writing state),
        // page-aligned, and `vec` has one byte per page of it.
        let r = unsafe { libc::mincore(base as *mut c_void, len as usize, vec.as_mut_ptr()) };
        assert_eq!(r, 0, "mincore");
        vec.iter().filter(|&&b| b & 1 != 0).count()
    }

    #[test]
    fn prefault_maps_pages_and_keeps_contents() {
        // Below the threshold: nothing happens.
        let small = Allocation::new(PAGE, Placement::Near).unwrap().unwrap();
        let mut p = small.prefault(true);
        p.wait();
        // Synchronous.
        let mut mid = Allocation::new(PREFAULT_BYTES, Placement::Near)
            .unwrap()
            .unwrap();
        mid.bytes_mut().unwrap()[5] = 7;
        let mut p = mid.prefault(true);
        p.wait();
        assert_eq!(resident(mid.base(), mid.len()), (mid.len() / PAGE) as usize);
        assert_eq!(mid.bytes_mut().unwrap()[5], 7, "contents kept");
        // In the background, written meanwhile, then waited for.
        let mut big = Allocation::new(PREFAULT_BACKGROUND_BYTES * 2, Placement::Near)
            .unwrap()
            .unwrap();
        let mut p = big.prefault(true);
        let bytes = big.bytes_mut().unwrap();
        for (i, b) in bytes.iter_mut().enumerate().step_by(PAGE as usize) {
            *b = (i / PAGE as usize) as u8 | 1;
        }
        p.wait();
        p.wait();
        let bytes = big.bytes_mut().unwrap();
        for (i, b) in bytes.iter().enumerate().step_by(PAGE as usize) {
            assert_eq!(
                *b,
                (i / PAGE as usize) as u8 | 1,
                "page {}",
                i / PAGE as usize
            );
        }
        big.finalize(&[(0, big.len(), Prot::Read)]).unwrap();
        // Dropped without waiting: the drop waits (or calls it off).
        let other = Allocation::new(PREFAULT_BACKGROUND_BYTES, Placement::Near)
            .unwrap()
            .unwrap();
        drop(other.prefault(true));
    }

    #[test]
    fn prefault_runs_maps_only_the_runs() {
        // Under the background size: populated here, before returning.
        let a = Allocation::new(PREFAULT_BACKGROUND_BYTES / 2, Placement::Near)
            .unwrap()
            .unwrap();
        let pages = (a.len() / PAGE) as usize;
        let runs = vec![(0, 64 << 10), (256 << 10, (200 << 10) + 1)];
        drop(a.prefault_runs(runs, true));
        let mut vec = vec![0u8; pages];
        // SAFETY: the allocation's pages are mapped (read-write) and
        // page-aligned, and `vec` has one byte per page of it.
        let rc =
            unsafe { libc::mincore(a.base() as *mut c_void, a.len() as usize, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        let resident: Vec<usize> = (0..pages).filter(|&i| vec[i] & 1 != 0).collect();
        let want: Vec<usize> = (0..16).chain(64..115).collect();
        assert_eq!(resident, want);
    }

    /// The `VmFlags` of the mapping holding `addr` (`/proc/self/smaps`).
    fn vm_flags(addr: u64) -> Vec<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
        let mut inside = false;
        for line in smaps.lines() {
            if let Some((range, _)) = line.split_once(' ')
                && let Some((lo, hi)) = range.split_once('-')
                && let (Ok(lo), Ok(hi)) = (u64::from_str_radix(lo, 16), u64::from_str_radix(hi, 16))
            {
                inside = (lo..hi).contains(&addr);
            } else if inside && let Some(flags) = line.strip_prefix("VmFlags:") {
                return flags.split_whitespace().map(str::to_string).collect();
            }
        }
        panic!("{addr:#x} is not mapped");
    }

    /// A large written run asks for huge pages for the 2 MiB stretches
    /// inside it, and only those (zero-fill after it stays small, and
    /// unmapped); released, the range has no advice left (it merges with
    /// the reservation again).
    #[test]
    fn a_large_prefaulted_run_asks_for_huge_pages_and_release_takes_it_back() {
        let mut a = Allocation::new_aligned(12 << 20, HUGE_PAGE, Placement::Near)
            .unwrap()
            .unwrap();
        let base = a.base();
        let written = 6 << 20;
        let mut prefault = a.prefault_runs(vec![(0, written)], true);
        // On rayon: waited for here rather than called off.
        let shared = prefault.0.clone().expect("a background prefault");
        while *shared.0.lock().unwrap() != PrefaultState::Over {
            std::thread::yield_now();
        }
        prefault.wait();
        assert!(vm_flags(base + (2 << 20)).contains(&"hg".to_string()));
        assert!(!vm_flags(base + written + (2 << 20)).contains(&"hg".to_string()));
        assert_eq!(resident(base + written, 4 << 20), 0, "zero-fill mapped");
        a.release();
        let flags = vm_flags(base + (2 << 20));
        assert!(!flags.iter().any(|f| f == "hg" || f == "nh"), "{flags:?}");
    }

    #[test]
    fn a_prefault_that_has_not_started_is_called_off() {
        let shared = Arc::new((Mutex::new(PrefaultState::Pending), Condvar::new()));
        let mut p = Prefault(Some(shared.clone()));
        p.wait();
        assert_eq!(*shared.0.lock().unwrap(), PrefaultState::Over);
    }

    #[test]
    fn aligned_takes_leave_the_rest_free() {
        let s = Slab::new(0x11000, 0x60000);
        let a = s.take_aligned(0x1000, 0x10000).unwrap();
        assert_eq!(a, 0x20000);
        assert_eq!(
            *s.free.lock().unwrap(),
            vec![(0x11000, 0xf000), (0x21000, 0x50000)]
        );
        // Fits only after the first free range.
        assert_eq!(s.take_aligned(0x20000, 0x20000), Some(0x40000));
        assert_eq!(s.take_aligned(0x1000, 0x40000), None);
        s.give_back(a, 0x1000);
        s.give_back(0x40000, 0x20000);
        assert_eq!(*s.free.lock().unwrap(), vec![(0x11000, 0x60000)]);
    }

    #[test]
    fn free_list_coalesces() {
        let s = Slab::new(0x10000, 0x10000);
        let a = s.take(0x4000).unwrap();
        let b = s.take(0x4000).unwrap();
        let c = s.take(0x8000).unwrap();
        assert!(s.take(0x1000).is_none());
        s.give_back(b, 0x4000);
        s.give_back(a, 0x4000);
        s.give_back(c, 0x8000);
        assert_eq!(*s.free.lock().unwrap(), vec![(0x10000, 0x10000)]);
    }

    /// libgcc drops the FDE of code whose address has zero low 32 bits
    /// (it takes them for a removed link-once function): a C++ exception
    /// through such a function terminates. A slab that starts at, or
    /// crosses, a 4 GiB boundary never hands out the page there.
    #[test]
    fn no_allocation_starts_at_a_4gib_boundary() {
        const G4: u64 = 1 << 32;
        for (base, size) in [(7 * G4, 0x8000), (7 * G4 - 0x4000, 0x8000)] {
            let s = Slab::new(base, size);
            let mut got = Vec::new();
            while let Some(a) = s.take(0x1000) {
                got.push(a);
            }
            assert!(got.iter().all(|a| a % G4 != 0), "{got:#x?}");
            assert_eq!(got.len(), 7, "only the boundary page is withheld");
            for a in got {
                s.give_back(a, 0x1000);
            }
            assert!(s.free.lock().unwrap().iter().all(|&(a, _)| a % G4 != 0));
        }
    }

    fn object(name: &str, main: bool, segments: &[(u64, u64)]) -> crate::host::LoadedObject {
        crate::host::LoadedObject {
            name: name.into(),
            main,
            segments: segments.to_vec(),
        }
    }

    #[test]
    fn near_targets_drop_what_no_slab_can_reach_with_the_rest() {
        const G: u64 = 1 << 30;
        // The main program far below the libraries (a PIE at 0x55…, the
        // libraries at 0x7f…): the libraries alone are the target.
        let libs = [
            object("", true, &[(0x5555_0000_0000, 0x5555_0010_0000)]),
            object("libc.so.6", false, &[(0x7f00_0000_0000, 0x7f00_0020_0000)]),
            object("libm.so.6", false, &[(0x7f00_4000_0000, 0x7f00_4010_0000)]),
        ];
        let t = near_targets(&libs);
        assert_eq!(t.first(), Some(&(0x7f00_0000_0000, 0x7f00_4010_0000)));
        // Everything close together: all of it.
        let close = [
            object(
                "",
                true,
                &[(0x7f00_0000_0000 - G, 0x7f00_0000_0000 - G + 4096)],
            ),
            object("libc.so.6", false, &[(0x7f00_0000_0000, 0x7f00_0020_0000)]),
        ];
        assert_eq!(
            near_targets(&close).first(),
            Some(&(0x7f00_0000_0000 - G, 0x7f00_0020_0000))
        );
        // Libraries spread over more than a slab can reach: none of them
        // (what holds `stdout` in this process is not among them).
        let spread = [
            object("liba.so", false, &[(0x7f00_0000_0000, 0x7f00_0000_1000)]),
            object(
                "libb.so",
                false,
                &[(0x7f00_0000_0000 + 4 * G, 0x7f01_0000_0000 + 4 * G)],
            ),
        ];
        assert!(near_targets(&spread).is_empty());
    }

    #[test]
    fn near_slab_reaches_the_c_library_and_the_loader() {
        let slab = Slab::get(Placement::Near).unwrap().unwrap();
        let stdout = stdout_address().expect("stdout");
        assert!(
            slab.reaches(stdout),
            "stdout at {stdout:#x}: {:?}",
            slab.range()
        );
        // Loaded at process start, so before any slab: every segment of
        // the objects holding `stdout` and `dlsym` is in reach.
        let dlsym = libc::dlsym as *const () as u64;
        for o in crate::host::loaded_objects() {
            if o.main || !(o.contains(stdout) || o.contains(dlsym)) {
                continue;
            }
            for &(start, end) in &o.segments {
                assert!(
                    slab.reaches(start) && slab.reaches(end - 1),
                    "{} {start:#x}-{end:#x} out of reach of {:?}",
                    o.name,
                    slab.range()
                );
            }
        }
    }

    #[test]
    fn reserve_within_keeps_to_the_window() {
        // A window in the free space far from everything: reserved inside it.
        let free = free_ranges().expect("/proc/self/maps");
        let &(start, end) = free
            .iter()
            .find(|&&(s, e)| e - s >= 8 * NEAR_SIZE)
            .expect("a large free range");
        let lo = (start + NEAR_SIZE) & !(NEAR_ALIGN - 1);
        let hi = lo + 2 * NEAR_SIZE;
        assert!(hi + PAGE <= end);
        let b = Slab::reserve_within(lo..=hi, PAGE, lo, &mut None).expect("reserved");
        assert!((lo..=hi).contains(&b), "{b:#x} outside {lo:#x}..={hi:#x}");
        Slab::unreserve(b, PAGE);
        // An empty window: nothing.
        assert!(Slab::reserve_within(hi..=lo, PAGE, lo, &mut None).is_none());
    }

    #[test]
    fn low_slab_is_below_2gib() {
        if let Some(a) = Allocation::new(PAGE, Placement::Low).unwrap() {
            assert!(a.base() + a.len() <= LOW_LIMIT);
        }
    }
}
