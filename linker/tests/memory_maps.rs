//! While kiln links, no mapping of the process is ever writable and
//! executable at once; after an image is dropped, its memory is no longer
//! accessible (back to `---p` in the reserved slab).

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use common::*;
use kiln_linker::{HostSymbols, Linker};

/// `(start, end, perms)` of every mapping.
fn maps() -> Vec<(u64, u64, String)> {
    let text = std::fs::read_to_string("/proc/self/maps").expect("read maps");
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let range = parts.next()?;
            let perms = parts.next()?.to_string();
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
                perms,
            ))
        })
        .collect()
}

#[test]
fn never_writable_and_executable_and_released_on_drop() {
    let dir = scratch("maps");
    let mut sets = Vec::new();
    for (tag, flags) in [("pie", vec!["-O2"]), ("nopie", vec!["-O2", "-fno-pie"])] {
        let mut objs = Vec::new();
        for src in ["prog_a.c", "prog_b.c"] {
            let mut f = flags.clone();
            f.push("-fcommon");
            objs.push(compile(
                "gcc",
                &c_dir().join(src),
                &f,
                &[],
                &dir.join(format!("{tag}-{src}.o")),
            ));
        }
        sets.push(objs);
    }
    let host = HostSymbols::new();
    let stop = AtomicBool::new(false);
    let scans = AtomicUsize::new(0);
    /// Stops the scanner however the linking thread leaves (a failed
    /// assertion must fail the test, not leave `scope` waiting forever).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let scanner = s.spawn(|| {
            let mut bad = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                for (a, b, p) in maps() {
                    if p.contains('w') && p.contains('x') {
                        bad.push(format!("{a:#x}-{b:#x} {p}"));
                    }
                }
                scans.fetch_add(1, Ordering::Relaxed);
            }
            bad
        });
        let stopper = StopOnDrop(&stop);
        let mut ranges = Vec::new();
        for round in 0..20 {
            let scanned = scans.load(Ordering::Relaxed);
            let mut linker = Linker::new(Default::default());
            for o in &sets[round % 2] {
                linker.add_object_file(o).expect("read object");
            }
            let image = linker.link(&host).expect("link");
            // A link can take less time than a scan: each round waits
            // until a scan has ended since it began (or the scanner is
            // gone), so the scans spread over every round.
            while scans.load(Ordering::Relaxed) <= scanned && !scanner.is_finished() {
                std::thread::yield_now();
            }
            let (base, len) = image.memory_range();
            // While alive: code is r-x, data r-- or rw-, nothing w+x.
            let live: Vec<_> = maps()
                .into_iter()
                .filter(|(a, b, _)| *a < base + len && *b > base)
                .collect();
            assert!(
                live.iter().any(|(_, _, p)| p.starts_with("r-x")),
                "{live:?}"
            );
            ranges.push((base, len));
            drop(image);
            for (a, b, p) in maps() {
                if a < base + len && b > base {
                    assert!(
                        p.starts_with("---"),
                        "after drop {a:#x}-{b:#x} is still {p}"
                    );
                }
            }
        }
        drop(stopper);
        let bad = scanner.join().expect("scanner");
        assert!(bad.is_empty(), "W+X mappings seen: {bad:?}");
        assert!(scans.load(Ordering::Relaxed) > 0);
        assert!(
            ranges.iter().any(|&(b, _)| b < 1 << 31),
            "non-PIE images lie below 2 GiB"
        );
    });
}

/// Pages of `[addr, addr + len)` resident in memory (`mincore`).
fn resident_pages(addr: u64, len: u64) -> usize {
    let page = 4096u64;
    let start = addr & !(page - 1);
    let pages = (addr + len - start).div_ceil(page) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: `vec` has one byte per page of the range, as mincore writes;
    // the range is mapped (the caller's image is alive).
    let rc = unsafe {
        libc::mincore(
            start as *mut libc::c_void,
            (pages as u64 * page) as usize,
            vec.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0, "mincore: {}", std::io::Error::last_os_error());
    vec.iter().filter(|&&v| v & 1 != 0).count()
}

/// A big `.bss` and the padding before a very aligned block cost address
/// space, not memory: linking maps only the pages it writes (the fuzzer
/// once reached 644 MB of RSS on a mutated object). Before the fix the
/// image's pages were all populated up front: every page of `big` was
/// resident.
#[test]
fn zero_fill_and_alignment_padding_stay_unmapped() {
    let dir = scratch("maps-bss");
    let obj = compile_c_text(
        &dir,
        "bigbss",
        "static char big[256 << 20];\n\
         char aligned[64] __attribute__((aligned(1 << 27))) = {1};\n\
         char *get_big(void) { return big; }\n\
         int first_aligned(void) { return aligned[0]; }\n",
        &["-O2"],
    );
    let mut linker = Linker::new(Default::default());
    linker.add_object_file(&obj).expect("read object");
    let image = linker.link(&HostSymbols::new()).expect("link");
    let get_big = image.symbol("get_big").expect("get_big");
    let aligned = image.symbol("aligned").expect("aligned");
    assert_eq!(aligned % (1 << 27), 0, "{aligned:#x}");
    // SAFETY: `get_big` is the C function above: no arguments, returns a pointer.
    let get_big: extern "C" fn() -> *const u8 = unsafe { std::mem::transmute(get_big) };
    let big = get_big() as u64;
    let (base, len) = image.memory_range();
    assert!(base <= big && big + (256 << 20) <= base + len);
    // Its first pages may share a page, or a bridged gap, with data.
    let bss = resident_pages(big, 256 << 20);
    assert!(bss <= 8, "{bss} of 65536 pages of the .bss were mapped");
    // The padding before `aligned` (the image's code page aside).
    let padding = aligned - base;
    assert!(
        resident_pages(base, padding) <= 16,
        "{} of {} pages before `aligned` were mapped",
        resident_pages(base, padding),
        padding / 4096
    );
}
