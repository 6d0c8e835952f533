//! Rearranging this test process's address space the way a sanitizer or an
//! unusual host would, before kiln reserves its slab: fill every free range
//! near some addresses with `PROT_NONE` reservations, so that the next
//! mappings — kiln's slab, a library `dlopen`ed later — land far away.
#![allow(dead_code)]

use std::ffi::c_void;

/// 4 GiB: twice the reach of a 32-bit PC-relative field.
pub(crate) const FAR: u64 = 4 << 30;

/// The mappings of this process `(start, end, name)`, from `/proc/self/maps`.
pub(crate) fn mappings() -> Vec<(u64, u64, String)> {
    let maps = std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_else(|e| panic!("this test needs /proc/self/maps: {e}"));
    let mut out: Vec<(u64, u64, String)> = maps
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (a, b) = fields.next()?.split_once('-')?;
            let name = fields.nth(4).unwrap_or("").to_string();
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                name,
            ))
        })
        .collect();
    out.sort();
    out
}

/// Lowest and highest address of the shared libraries mapped now.
pub(crate) fn library_span() -> (u64, u64) {
    let libs: Vec<(u64, u64)> = mappings()
        .into_iter()
        .filter(|(_, _, n)| n.contains(".so"))
        .map(|(a, b, _)| (a, b))
        .collect();
    let lo = libs
        .iter()
        .map(|l| l.0)
        .min()
        .expect("no shared library mapped");
    let hi = libs
        .iter()
        .map(|l| l.1)
        .max()
        .expect("no shared library mapped");
    (lo, hi)
}

/// Reserve (`PROT_NONE`, never backed) every free page of `[lo, hi)`,
/// except the 1 GiB under the main thread's stack (its room to grow).
/// The reservations stay for the life of the process. Returns the bytes
/// reserved. A hole another thread maps into meanwhile is found again on
/// the next pass.
pub(crate) fn fill(lo: u64, hi: u64) -> u64 {
    let mut total = 0;
    for _pass in 0..8 {
        let holes = holes(lo, hi);
        if holes.is_empty() {
            return total;
        }
        for (start, end) in holes {
            let len = (end - start) as usize;
            // SAFETY: an anonymous PROT_NONE reservation of a range that
            // was free a moment ago; MAP_FIXED_NOREPLACE never replaces a
            // mapping (a range taken meanwhile fails, and is retried).
            let p = unsafe {
                libc::mmap(
                    start as *mut c_void,
                    len,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE
                        | libc::MAP_ANONYMOUS
                        | libc::MAP_NORESERVE
                        | libc::MAP_FIXED_NOREPLACE,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                total += len as u64;
            }
        }
    }
    panic!("the address space near {lo:#x}..{hi:#x} keeps changing; cannot fill it");
}

/// The unmapped ranges of `[lo, hi)` (above 4 GiB, and not the 1 GiB under
/// the main thread's stack).
fn holes(lo: u64, hi: u64) -> Vec<(u64, u64)> {
    let maps = mappings();
    let stack = maps
        .iter()
        .find(|(_, _, n)| n == "[stack]")
        .map_or(u64::MAX, |m| m.0.saturating_sub(1 << 30));
    let hi = hi.min(stack);
    let mut at = lo.max(1 << 32);
    let mut holes = Vec::new();
    for (start, end, _) in &maps {
        if *start > at && at < hi {
            holes.push((at, (*start).min(hi)));
        }
        at = at.max(*end);
    }
    if at < hi {
        holes.push((at, hi));
    }
    holes.retain(|(s, e)| e > s);
    holes
}

/// Address of the C library's `stdout` variable.
pub(crate) fn stdout_address() -> u64 {
    // SAFETY: dlsym only reads the loader's tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"stdout".as_ptr()) };
    assert!(!p.is_null(), "stdout not found");
    p as u64
}

/// Whether every byte of `[base, base + len)` is within ±2 GiB of `addr`.
pub(crate) fn in_reach(base: u64, len: u64, addr: u64) -> bool {
    addr.abs_diff(base) < (2 << 30) && addr.abs_diff(base + len) < (2 << 30)
}
