//! W8's engine-independent parts: the 1024 distinct call targets and the
//! steady-state call loops, as the peer defines them.
//!
//! Target i is `x + 1`, compiled as its own function: each body carries an
//! empty inline-asm comment naming its index (like the peer's
//! `asm volatile("# orc_bench target %0" :: "i"(I))`), which emits no
//! instruction but keeps LLVM's function merging from folding the bodies
//! together. [`targets`] checks at first use that all addresses differ.
//!
//! The lazy-reexport side of W8 (entries, stubs, first calls) is in
//! [`crate::w8`].

use std::collections::HashSet;
use std::sync::OnceLock;

/// Number of distinct call targets (entry i calls target `i % NUM_TARGETS`).
pub const NUM_TARGETS: usize = 1024;

/// The signature of W8's bodies and entry points.
pub type TargetFn = extern "C" fn(i64) -> i64;

#[inline(never)]
extern "C" fn target<const I: usize>(x: i64) -> i64 {
    // SAFETY: the template is an assembler comment: it emits no instruction,
    // touches no register, memory, stack or flag, as the options declare.
    unsafe {
        std::arch::asm!("/* kiln W8 target {0} */", const I, options(nomem, nostack, preserves_flags))
    };
    x + 1
}

macro_rules! quad {
    ($f:ident, $base:expr, $step:expr) => {
        [
            $f!($base),
            $f!($base + $step),
            $f!($base + 2 * $step),
            $f!($base + 3 * $step),
        ]
    };
}
macro_rules! t1 {
    ($b:expr) => {
        target::<{ $b }> as TargetFn
    };
}
macro_rules! t4 {
    ($b:expr) => {
        quad!(t1, $b, 1)
    };
}
macro_rules! t16 {
    ($b:expr) => {
        quad!(t4, $b, 4)
    };
}
macro_rules! t64 {
    ($b:expr) => {
        quad!(t16, $b, 16)
    };
}
macro_rules! t256 {
    ($b:expr) => {
        quad!(t64, $b, 64)
    };
}

/// `TABLE[a][b][c][d][e]` is target `256a + 64b + 16c + 4d + e`.
static TABLE: [[[[[TargetFn; 4]; 4]; 4]; 4]; 4] = quad!(t256, 0, 256);

/// The targets, in index order. Panics if two of them share an address
/// (the build folded bodies together, which would change what W8 measures).
pub fn targets() -> &'static [TargetFn] {
    static CHECKED: OnceLock<&'static [TargetFn]> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let flat: &'static [TargetFn] = TABLE
            .as_flattened()
            .as_flattened()
            .as_flattened()
            .as_flattened();
        assert_eq!(flat.len(), NUM_TARGETS);
        let distinct: HashSet<usize> = flat.iter().map(|f| *f as usize).collect();
        assert_eq!(
            distinct.len(),
            NUM_TARGETS,
            "W8 call targets were folded together"
        );
        flat
    })
}

/// Round-robin pattern: `for r in 0..rounds { for i in 0..fns.len() { acc += fns[i](i) } }`.
#[inline(never)]
pub fn call_round_robin(fns: &[TargetFn], rounds: usize) -> i64 {
    let mut acc = 0i64;
    for _ in 0..rounds {
        for (i, f) in fns.iter().enumerate() {
            acc = acc.wrapping_add(f(i as i64));
        }
    }
    acc
}

/// Hot pattern: `for i in 0..fns.len() { for r in 0..rounds { acc += fns[i](i) } }`.
#[inline(never)]
pub fn call_hot(fns: &[TargetFn], rounds: usize) -> i64 {
    let mut acc = 0i64;
    for (i, f) in fns.iter().enumerate() {
        for _ in 0..rounds {
            acc = acc.wrapping_add(f(i as i64));
        }
    }
    acc
}

/// Σ(i+1) for i in 0..n: the result of one call of each of `n` entries.
pub fn expected_once(n: usize) -> i64 {
    (0..n as i64).fold(0i64, |s, i| s.wrapping_add(i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_distinct_and_add_one() {
        let t = targets();
        assert_eq!(t.len(), NUM_TARGETS);
        for (i, f) in t.iter().enumerate() {
            assert_eq!(f(i as i64), i as i64 + 1);
        }
    }

    #[test]
    fn loops_compute_the_peer_sums() {
        let direct: Vec<TargetFn> = (0..1000).map(|i| targets()[i % NUM_TARGETS]).collect();
        let once = expected_once(1000);
        assert_eq!(once, 500_500);
        assert_eq!(call_round_robin(&direct, 3), 3 * once);
        assert_eq!(call_hot(&direct, 3), 3 * once);
        assert_eq!(call_hot(&direct, 0), 0);
    }
}
