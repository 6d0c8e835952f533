//! The dependency graphs of W3–W5, the SplitMix64 generator and the
//! `edge_hash` fingerprint, exactly as the peer README defines them.

use std::fmt;

/// SplitMix64 (wrapping arithmetic; the peer's W5 generator and hash).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The shape of a graph workload's dependencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphShape {
    /// W3: symbol i depends on i-1 (a chain; symbol 0 has none).
    Chain,
    /// W4: symbol i depends on (i+1) mod N (one cycle through all N).
    Cycle,
    /// W5: for i in 1..N, `draws` times j = next() % i, duplicates dropped.
    FaninDag {
        /// Draws per symbol (`--deps`, default 4).
        draws: usize,
        /// SplitMix64 seed (`--seed`, default 42).
        seed: u64,
    },
}

/// Dependency lists: `deps[i]` holds the indices symbol i depends on, in
/// generation order.
#[derive(Clone, PartialEq, Eq)]
pub struct Dependencies {
    deps: Vec<Vec<usize>>,
}

impl fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dependencies")
            .field("symbols", &self.deps.len())
            .field("edges", &self.edge_count())
            .field("edge_hash", &format_args!("{:016x}", self.edge_hash()))
            .finish()
    }
}

impl Dependencies {
    /// Generates the dependencies of `n` symbols of the given shape.
    pub fn generate(shape: GraphShape, n: usize) -> Self {
        let mut deps = vec![Vec::new(); n];
        match shape {
            GraphShape::Chain => {
                for (i, d) in deps.iter_mut().enumerate().skip(1) {
                    d.push(i - 1);
                }
            }
            GraphShape::Cycle => {
                for (i, d) in deps.iter_mut().enumerate() {
                    d.push((i + 1) % n);
                }
            }
            GraphShape::FaninDag { draws, seed } => {
                let mut rng = SplitMix64::new(seed);
                for (i, d) in deps.iter_mut().enumerate().skip(1) {
                    for _ in 0..draws {
                        // `usize` -> `u64` is lossless on every supported target,
                        // and the result is < i, so it converts back losslessly.
                        let j = (rng.next_u64() % i as u64) as usize;
                        if !d.contains(&j) {
                            d.push(j);
                        }
                    }
                }
            }
        }
        Dependencies { deps }
    }

    /// Number of symbols.
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// True if there are no symbols.
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The dependencies of symbol `i`.
    pub fn of(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }

    /// Total number of edges.
    pub fn edge_count(&self) -> usize {
        self.deps.iter().map(Vec::len).sum()
    }

    /// The order-independent fingerprint of the edge set.
    pub fn edge_hash(&self) -> u64 {
        edge_hash(
            self.deps
                .iter()
                .enumerate()
                .flat_map(|(i, d)| d.iter().map(move |&j| (i, j))),
        )
    }
}

/// `edge_hash`: wrapping sum over all edges i→j of the first output of a
/// SplitMix64 seeded with `(i << 32) + j`.
pub fn edge_hash(edges: impl IntoIterator<Item = (usize, usize)>) -> u64 {
    edges.into_iter().fold(0u64, |acc, (i, j)| {
        let seed = (i as u64).wrapping_shl(32).wrapping_add(j as u64);
        acc.wrapping_add(SplitMix64::new(seed).next_u64())
    })
}

/// The edge counts and hashes published in the peer README, for the
/// configurations it lists: `(edges, edge_hash)`, or `None` if the README
/// gives no value for this shape and size.
pub fn published_fingerprint(shape: GraphShape, n: usize) -> Option<(usize, u64)> {
    match (shape, n) {
        (GraphShape::Chain, 10_000) => Some((9_999, 0x0c86_eb8f_a6be_f228)),
        (GraphShape::Cycle, 10_000) => Some((10_000, 0xac02_cadd_ea28_1974)),
        (GraphShape::FaninDag { draws: 4, seed: 42 }, n) => match n {
            1_250 => Some((4_944, 0x125b_78fe_a2cb_36c5)),
            2_500 => Some((9_941, 0x2b17_12c9_5df3_9598)),
            5_000 => Some((19_939, 0xceba_9cb0_ba4c_aae8)),
            10_000 => Some((39_933, 0x12ef_e776_2b29_0fc0)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAG: GraphShape = GraphShape::FaninDag { draws: 4, seed: 42 };

    #[test]
    fn splitmix_reference_values() {
        // Reference outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(r.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(r.next_u64(), 0x06c4_5d18_8009_454f);
    }

    #[test]
    fn readme_fingerprints_w3_w4_w5() {
        for (shape, n) in [
            (GraphShape::Chain, 10_000),
            (GraphShape::Cycle, 10_000),
            (DAG, 1_250),
            (DAG, 2_500),
            (DAG, 5_000),
            (DAG, 10_000),
        ] {
            let d = Dependencies::generate(shape, n);
            let want = published_fingerprint(shape, n).expect("published");
            assert_eq!((d.edge_count(), d.edge_hash()), want, "{shape:?} N={n}");
        }
    }

    #[test]
    fn shapes_are_as_defined() {
        let c = Dependencies::generate(GraphShape::Chain, 5);
        assert!(c.of(0).is_empty());
        assert_eq!(c.of(4), &[3]);
        let y = Dependencies::generate(GraphShape::Cycle, 5);
        assert_eq!(y.of(4), &[0]);
        assert_eq!(y.of(0), &[1]);
        let d = Dependencies::generate(DAG, 1_000);
        assert!(d.of(0).is_empty());
        assert_eq!(d.of(1), &[0], "every draw for i=1 is 0, deduplicated");
        for i in 1..d.len() {
            let deps = d.of(i);
            assert!(!deps.is_empty() && deps.len() <= 4);
            assert!(deps.iter().all(|&j| j < i), "a DAG: deps point backwards");
            let mut s = deps.to_vec();
            s.sort_unstable();
            s.dedup();
            assert_eq!(s.len(), deps.len(), "no duplicate edges");
        }
    }

    #[test]
    fn hash_is_order_independent_and_edge_sensitive() {
        let a = edge_hash([(1, 0), (2, 1), (3, 0)]);
        assert_eq!(a, edge_hash([(3, 0), (1, 0), (2, 1)]));
        assert_ne!(a, edge_hash([(1, 0), (2, 1), (3, 1)]));
        assert_ne!(edge_hash([(0, 1)]), edge_hash([(1, 0)]));
        assert_eq!(edge_hash(std::iter::empty()), 0);
    }

    #[test]
    fn no_fingerprint_for_unpublished_sizes() {
        assert_eq!(published_fingerprint(GraphShape::Chain, 2_500), None);
        assert_eq!(published_fingerprint(DAG, 40_000), None);
        assert_eq!(
            published_fingerprint(GraphShape::FaninDag { draws: 3, seed: 42 }, 10_000),
            None
        );
    }
}
