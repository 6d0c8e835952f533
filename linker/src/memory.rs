//! Memory for linked images: one reserved address-space slab per reach class,
//! carved into allocations with explicit states.
//!
//! * The **near** slab (1 GiB, reserved `PROT_NONE`) is placed, when the
//!   kernel allows, within ±2 GiB of the C library, so every JIT'd byte is in
//!   the small code model's reach of every other one *and* of libc, libm and
//!   libstdc++ (which the loader maps next to each other). Host symbols out of
//!   reach still work through the GOT and PLT.
//! * The **low** slab (256 MiB) lies entirely below 2 GiB, for non-PIE code
//!   (`R_X86_64_32`/`32S`); it is reserved on first use with
//!   `MAP_FIXED_NOREPLACE` hints.
//!
//! An [`Allocation`] goes writing (RW) → finalized (RX / R / RW per segment)
//! → released (back to `PROT_NONE`, pages returned with `MADV_DONTNEED`, the
//! range back to the slab's free list). No page is ever writable and
//! executable at once. Raw pointers and `mprotect` stay in this module.

use std::ffi::c_void;
use std::sync::{Mutex, OnceLock};

use rustix::mm::{Advice, MapFlags, MprotectFlags, ProtFlags};

use crate::error::LinkError;
use crate::graph::Prot;

/// Page size used for protection boundaries.
pub const PAGE: u64 = 4096;
const NEAR_SIZE: u64 = 1 << 30;
const LOW_SIZE: u64 = 256 << 20;
const LOW_LIMIT: u64 = 1 << 31;
/// Maximum distance from the anchor (libc) for the near slab's far end.
const NEAR_REACH: u64 = (2 << 30) - (64 << 20);

/// Which slab an allocation comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Near the host's shared libraries (default).
    Near,
    /// Below 2 GiB, for non-PIE code.
    Low,
}

/// A reserved range of address space.
#[derive(Debug)]
pub struct Slab {
    base: u64,
    size: u64,
    /// Every address of the slab is within ±2 GiB of the C library.
    near_host: bool,
    /// Free ranges `(start, len)` sorted by start, page-aligned.
    free: Mutex<Vec<(u64, u64)>>,
}

fn io(e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e.raw_os_error())
}

unsafe extern "C" {
    /// Any libc function: its address anchors the near slab.
    fn free(p: *mut c_void);
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

    fn new(base: u64, size: u64) -> Slab {
        let anchor = free as *const () as u64;
        let near_host =
            base.abs_diff(anchor) <= NEAR_REACH && (base + size).abs_diff(anchor) <= NEAR_REACH;
        Slab {
            base,
            size,
            near_host,
            free: Mutex::new(vec![(base, size)]),
        }
    }

    fn near() -> Result<Slab, LinkError> {
        let anchor = free as *const () as u64;
        let in_reach = |b: u64| {
            b.abs_diff(anchor) <= NEAR_REACH && (b + NEAR_SIZE).abs_diff(anchor) <= NEAR_REACH
        };
        let align = |x: u64| x & !((2 << 20) - 1);
        let mut hints = Vec::new();
        for step in 0..12u64 {
            let below = anchor.saturating_sub(NEAR_SIZE + (256 << 20) + step * (128 << 20));
            hints.push(align(below));
        }
        for &hint in &hints {
            if hint == 0 {
                continue;
            }
            if let Some(b) = Self::reserve_at(hint, NEAR_SIZE, true) {
                if in_reach(b) {
                    return Ok(Self::new(b, NEAR_SIZE));
                }
                Self::unreserve(b, NEAR_SIZE);
            }
        }
        // Anywhere: host symbols then go through the GOT and PLT.
        let b = Self::reserve_at(0, NEAR_SIZE, false).ok_or_else(|| LinkError::Memory {
            detail: format!("cannot reserve {NEAR_SIZE:#x} bytes of address space"),
            source: std::io::Error::last_os_error(),
        })?;
        Ok(Self::new(b, NEAR_SIZE))
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
        static NEAR: OnceLock<Result<Slab, String>> = OnceLock::new();
        static LOW: OnceLock<Option<Slab>> = OnceLock::new();
        match placement {
            Placement::Near => match NEAR.get_or_init(|| Slab::near().map_err(|e| e.to_string())) {
                Ok(s) => Ok(Some(s)),
                Err(e) => Err(LinkError::Memory {
                    detail: e.clone(),
                    source: std::io::Error::other("address space reservation failed"),
                }),
            },
            Placement::Low => Ok(LOW.get_or_init(Slab::low).as_ref()),
        }
    }

    /// Whether every address of the slab is within ±2 GiB of the C library
    /// (so PC-relative references to libc, libm, libstdc++ data reach).
    pub fn near_host(&self) -> bool {
        self.near_host
    }

    /// Start and length of the slab.
    pub fn range(&self) -> (u64, u64) {
        (self.base, self.size)
    }

    fn take(&self, len: u64) -> Option<u64> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let i = free.iter().position(|&(_, l)| l >= len)?;
        let (start, l) = free[i];
        if l == len {
            free.remove(i);
        } else {
            free[i] = (start + len, l - len);
        }
        Some(start)
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
    pub fn new(len: u64, placement: Placement) -> Result<Option<Allocation>, LinkError> {
        let Some(slab) = Slab::get(placement)? else {
            return Ok(None);
        };
        let len = len.max(1).div_ceil(PAGE).saturating_mul(PAGE);
        let base = slab.take(len).ok_or_else(|| LinkError::Memory {
            detail: format!(
                "the JIT slab at {:#x} ({:#x} bytes) has no free range of {len:#x} bytes",
                slab.base, slab.size
            ),
            source: std::io::Error::from_raw_os_error(12),
        })?;
        // SAFETY: [base, base+len) lies inside the slab's reservation and was
        // just removed from its free list, so this allocation owns it alone.
        let r = unsafe {
            rustix::mm::mprotect(
                base as *mut c_void,
                len as usize,
                prot_flags(Prot::ReadWrite),
            )
        };
        if let Err(e) = r {
            slab.give_back(base, len);
            return Err(LinkError::Memory {
                detail: format!("mprotect({base:#x}, {len:#x}, RW)"),
                source: io(e),
            });
        }
        Ok(Some(Allocation {
            slab,
            base,
            len,
            state: MemState::Writing,
        }))
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

    /// The bytes, while writing. `None` once finalized or released.
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        if self.state != MemState::Writing {
            return None;
        }
        // SAFETY: in the Writing state the whole range is mapped read-write
        // and owned by this allocation alone (taken from the free list); the
        // `&mut self` borrow makes the slice exclusive for its lifetime.
        Some(unsafe { std::slice::from_raw_parts_mut(self.base as *mut u8, self.len as usize) })
    }

    /// Apply final protections: `segments` are `(offset, len, prot)` with
    /// page-aligned offsets; pages not covered become `PROT_NONE`.
    pub fn finalize(&mut self, segments: &[(u64, u64, Prot)]) -> Result<(), LinkError> {
        if self.state != MemState::Writing {
            return Ok(());
        }
        // First drop write permission everywhere, then grant per segment:
        // no page is ever W and X at once.
        self.protect(0, self.len, MprotectFlags::empty())?;
        for &(off, len, prot) in segments {
            if len == 0 {
                continue;
            }
            let len = len.div_ceil(PAGE) * PAGE;
            if off % PAGE != 0 || off + len > self.len {
                return Err(LinkError::Memory {
                    detail: format!("segment {off:#x}+{len:#x} is not inside the allocation"),
                    source: std::io::Error::from_raw_os_error(22),
                });
            }
            self.protect(off, len, prot_flags(prot))?;
        }
        // Code was written through the data side; x86-64 keeps caches coherent.
        self.state = MemState::Finalized;
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
        let _ = self.protect(0, self.len, MprotectFlags::empty());
        // SAFETY: the range belongs to this allocation; after this no code
        // or data of the image is used (the image's finalizers already ran).
        let _ = unsafe {
            rustix::mm::madvise(
                self.base as *mut c_void,
                self.len as usize,
                Advice::LinuxDontNeed,
            )
        };
        self.slab.give_back(self.base, self.len);
        self.state = MemState::Released;
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_and_reuse() {
        let mut a = Allocation::new(10_000, Placement::Near).unwrap().unwrap();
        assert_eq!(a.len(), 3 * PAGE);
        a.bytes_mut().unwrap()[0] = 0xc3;
        a.finalize(&[(0, PAGE, Prot::ReadExec), (PAGE, 2 * PAGE, Prot::Read)])
            .unwrap();
        assert_eq!(a.state(), MemState::Finalized);
        assert!(a.bytes_mut().is_none());
        let base = a.base();
        drop(a);
        let b = Allocation::new(PAGE, Placement::Near).unwrap().unwrap();
        let (sb, sl) = b.slab.range();
        assert!(b.base() >= sb && b.base() < sb + sl);
        let _ = base;
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

    #[test]
    fn low_slab_is_below_2gib() {
        if let Some(a) = Allocation::new(PAGE, Placement::Low).unwrap() {
            assert!(a.base() + a.len() <= LOW_LIMIT);
        }
    }
}
