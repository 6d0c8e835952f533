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
            let mut linker = Linker::new(Default::default());
            for o in &sets[round % 2] {
                linker.add_object_file(o).expect("read object");
            }
            linker.run_initializers(false);
            let image = linker.link(&host).expect("link");
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
