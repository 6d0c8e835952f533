//! Property tests of `kiln_engine::graph::DepGraph` against a brute-force
//! oracle that recomputes reachability from scratch after every operation.
//!
//! Operations are drawn as raw numbers and interpreted against the oracle's
//! current state, so every generated sequence respects the caller contract
//! (deps are never Ready or failed, defs are emitted once) and shrinking keeps
//! working. The link shapes (W9-like: many symbols per unit, random calls
//! across units, large SCCs) are also checked against petgraph's SCCs.

use std::collections::BTreeSet;

use kiln_engine::graph::{DepGraph, EmitGroup, NodeId};
use proptest::prelude::*;

/// The oracle's view of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Never emitted (and not failed).
    Unseen,
    /// Emitted with these dependencies, not Ready.
    Waiting(Vec<NodeId>),
    Ready,
    Failed,
}

#[derive(Debug)]
struct Oracle {
    st: Vec<State>,
}

impl Oracle {
    fn new(n: usize) -> Self {
        Oracle {
            st: vec![State::Unseen; n],
        }
    }

    fn deps(&self, n: NodeId) -> &[NodeId] {
        match &self.st[n as usize] {
            State::Waiting(d) => d,
            _ => &[],
        }
    }

    /// Waiting nodes that reach one of `targets` (reverse reachability;
    /// the targets themselves are included when waiting).
    fn waiting_reaching(&self, targets: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        // Reverse adjacency over waiting nodes.
        let mut rev: Vec<Vec<NodeId>> = vec![Vec::new(); self.st.len()];
        for (i, s) in self.st.iter().enumerate() {
            if let State::Waiting(d) = s {
                for &t in d {
                    rev[t as usize].push(i as NodeId);
                }
            }
        }
        let mut seen: BTreeSet<NodeId> = targets.clone();
        let mut stack: Vec<NodeId> = targets.iter().copied().collect();
        while let Some(n) = stack.pop() {
            for &s in &rev[n as usize] {
                if seen.insert(s) {
                    stack.push(s);
                }
            }
        }
        seen.into_iter()
            .filter(|&n| matches!(self.st[n as usize], State::Waiting(_)))
            .collect()
    }

    /// Unseen nodes `n` transitively waits on.
    fn blockers(&self, n: NodeId) -> BTreeSet<NodeId> {
        let mut seen = BTreeSet::from([n]);
        let mut stack = vec![n];
        let mut out = BTreeSet::new();
        while let Some(c) = stack.pop() {
            for &t in self.deps(c) {
                if seen.insert(t) {
                    match self.st[t as usize] {
                        State::Unseen => {
                            out.insert(t);
                        }
                        State::Waiting(_) => stack.push(t),
                        State::Ready => {}
                        State::Failed => panic!("oracle: {c} depends on failed {t}"),
                    }
                }
            }
        }
        out
    }

    /// Whether `a` reaches `b` through waiting nodes (or is `b`).
    fn reaches(&self, a: NodeId, b: NodeId) -> bool {
        let mut seen = BTreeSet::from([a]);
        let mut stack = vec![a];
        while let Some(c) = stack.pop() {
            if c == b {
                return true;
            }
            for &t in self.deps(c) {
                if seen.insert(t) {
                    stack.push(t);
                }
            }
        }
        false
    }

    /// Applies an emission; returns the nodes that became Ready.
    fn emit(&mut self, groups: &[(Vec<NodeId>, Vec<NodeId>)]) -> BTreeSet<NodeId> {
        for (defs, deps) in groups {
            for &d in defs {
                let mut list = match std::mem::replace(&mut self.st[d as usize], State::Ready) {
                    State::Waiting(l) => l,
                    _ => Vec::new(),
                };
                list.extend(deps.iter().copied().filter(|&t| t != d));
                self.st[d as usize] = State::Waiting(list);
            }
        }
        let unseen: BTreeSet<NodeId> = (0..self.st.len() as NodeId)
            .filter(|&n| self.st[n as usize] == State::Unseen)
            .collect();
        let blocked = self.waiting_reaching(&unseen);
        let ready: BTreeSet<NodeId> = (0..self.st.len() as NodeId)
            .filter(|&n| matches!(self.st[n as usize], State::Waiting(_)) && !blocked.contains(&n))
            .collect();
        for &n in &ready {
            self.st[n as usize] = State::Ready;
        }
        ready
    }

    /// The nodes that may be emitted or depended on.
    fn live(&self) -> Vec<NodeId> {
        (0..self.st.len() as NodeId)
            .filter(|&n| matches!(self.st[n as usize], State::Unseen | State::Waiting(_)))
            .collect()
    }

    fn unseen(&self) -> Vec<NodeId> {
        (0..self.st.len() as NodeId)
            .filter(|&n| self.st[n as usize] == State::Unseen)
            .collect()
    }
}

/// Reads raw numbers cyclically; past the end it counts on, deterministically.
struct Raw<'a> {
    raw: &'a [u16],
    i: usize,
}

impl Raw<'_> {
    fn next(&mut self, modulo: usize) -> usize {
        let v = self.raw.get(self.i).map_or(self.i, |&v| v as usize);
        self.i += 1;
        if modulo == 0 { 0 } else { v % modulo }
    }
}

/// Checks everything observable about `g` against the oracle.
fn check_state(g: &DepGraph, o: &Oracle) -> Result<(), TestCaseError> {
    g.validate().map_err(TestCaseError::fail)?;
    let waiting: Vec<NodeId> = (0..o.st.len() as NodeId)
        .filter(|&n| matches!(o.st[n as usize], State::Waiting(_)))
        .collect();
    prop_assert_eq!(g.waiting_len(), waiting.len());
    for n in 0..o.st.len() as NodeId {
        prop_assert_eq!(g.is_waiting(n), waiting.contains(&n), "is_waiting({})", n);
    }
    // Blockers of a few waiting nodes (the oracle's walk is the slow part).
    for &n in waiting.iter().take(4) {
        let expected = o.blockers(n);
        let all: BTreeSet<NodeId> = g.blockers(n, usize::MAX).into_iter().collect();
        prop_assert_eq!(&all, &expected, "blockers({})", n);
        let one = g.blockers(n, 1);
        prop_assert_eq!(one.len(), expected.len().min(1));
        prop_assert!(one.iter().all(|b| expected.contains(b)));
    }
    Ok(())
}

/// Runs one emission through the graph and the oracle and compares them.
fn run_emit(
    g: &mut DepGraph,
    o: &mut Oracle,
    groups: &[(Vec<NodeId>, Vec<NodeId>)],
) -> Result<(), TestCaseError> {
    let eg: Vec<EmitGroup<'_>> = groups
        .iter()
        .map(|(d, p)| EmitGroup { defs: d, deps: p })
        .collect();
    let mut ready = Vec::new();
    g.emit(&eg, &mut ready);
    let got: BTreeSet<NodeId> = ready.iter().copied().collect();
    prop_assert_eq!(
        got.len(),
        ready.len(),
        "a node reported Ready twice: {:?}",
        ready
    );
    let expected = o.emit(groups);
    prop_assert_eq!(got, expected, "emit {:?}", groups);
    check_state(g, o)
}

/// Runs one failure through the graph and the oracle and compares them.
fn run_fail(g: &mut DepGraph, o: &mut Oracle, nodes: &[NodeId]) -> Result<(), TestCaseError> {
    let mut failed = Vec::new();
    g.fail(nodes, &mut failed);
    let inputs: BTreeSet<NodeId> = nodes.iter().copied().collect();
    let expected = o.waiting_reaching(&inputs);
    let got: BTreeSet<NodeId> = failed.iter().map(|&(d, _)| d).collect();
    prop_assert_eq!(got.len(), failed.len(), "a node failed twice: {:?}", failed);
    prop_assert_eq!(&got, &expected, "fail {:?}", nodes);
    for &(d, root) in &failed {
        prop_assert!(
            inputs.contains(&root),
            "root {} of {} is not an input",
            root,
            d
        );
        if inputs.contains(&d) {
            prop_assert_eq!(root, d, "failed input {} must be its own root", d);
        } else {
            prop_assert!(o.reaches(d, root), "{} does not reach its root {}", d, root);
        }
    }
    for n in expected.iter().chain(inputs.iter()) {
        o.st[*n as usize] = State::Failed;
    }
    check_state(g, o)
}

/// One operation: `(selector, raw numbers)`.
fn ops() -> impl Strategy<Value = Vec<(u8, Vec<u16>)>> {
    prop::collection::vec(
        (any::<u8>(), prop::collection::vec(any::<u16>(), 0..24)),
        1..40,
    )
}

/// Interprets `raw` as an emission against the oracle's state.
fn draw_emission(o: &Oracle, raw: &mut Raw<'_>) -> Vec<(Vec<NodeId>, Vec<NodeId>)> {
    let mut cand = o.unseen();
    if cand.is_empty() {
        return Vec::new();
    }
    let ndefs = 1 + raw.next(cand.len().min(6));
    let mut defs = Vec::new();
    for _ in 0..ndefs {
        defs.push(cand.swap_remove(raw.next(cand.len())));
    }
    let ngroups = 1 + raw.next(ndefs);
    let mut groups: Vec<(Vec<NodeId>, Vec<NodeId>)> = vec![(Vec::new(), Vec::new()); ngroups];
    for &d in &defs {
        groups[raw.next(ngroups)].0.push(d);
        // Sometimes a def is in two groups.
        if raw.next(8) == 0 {
            let other = raw.next(ngroups);
            if !groups[other].0.contains(&d) {
                groups[other].0.push(d);
            }
        }
    }
    let live = o.live();
    for g in &mut groups {
        for _ in 0..raw.next(5) {
            g.1.push(live[raw.next(live.len())]);
        }
    }
    groups
}

/// `default` cases, or `PROPTEST_CASES / divisor` when that is set; no
/// failure files.
fn cases(default: u32, divisor: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .map_or(default, |c| c.div_ceil(divisor)),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    // About 1 s each in debug on this machine; PROPTEST_CASES overrides.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(1000),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random emissions (cycles, groups, intra-batch deps) and failures.
    #[test]
    fn emit_and_fail_match_the_oracle(n in 2usize..24, ops in ops()) {
        let mut g = DepGraph::new();
        let mut o = Oracle::new(n);
        for (sel, raw) in &ops {
            let mut raw = Raw { raw, i: 0 };
            if sel % 5 == 4 {
                let live = o.live();
                if live.is_empty() {
                    continue;
                }
                let k = 1 + raw.next(2);
                let nodes: Vec<NodeId> = (0..k).map(|_| live[raw.next(live.len())]).collect();
                run_fail(&mut g, &mut o, &nodes)?;
            } else {
                let groups = draw_emission(&o, &mut raw);
                if !groups.is_empty() {
                    run_emit(&mut g, &mut o, &groups)?;
                }
            }
        }
    }

    /// A fixed random graph (with cycles) emitted completely, in a random
    /// order split into random batches: every emit must match the oracle and,
    /// without failures, every node must end Ready.
    #[test]
    fn whole_graph_in_random_order(
        n in 2usize..60,
        edges in prop::collection::vec((any::<u16>(), any::<u16>()), 0..150),
        order_keys in prop::collection::vec(any::<u32>(), 60),
        cuts in prop::collection::vec(any::<u8>(), 60),
        fail_at in prop::option::weighted(0.2, any::<(u16, u16)>()),
    ) {
        whole_graph(n, &edges, &order_keys, &cuts, fail_at)?;
    }
}

proptest! {
    // A few seconds in debug; PROPTEST_CASES (divided by 40) overrides.
    #![proptest_config(cases(25, 40))]

    /// The same on larger graphs (deeper searches, label gaps used up).
    #[test]
    fn larger_graphs_in_random_order(
        n in 100usize..400,
        edges in prop::collection::vec((any::<u16>(), any::<u16>()), 0..900),
        order_keys in prop::collection::vec(any::<u32>(), 400),
        cuts in prop::collection::vec(any::<u8>(), 400),
        fail_at in prop::option::weighted(0.2, any::<(u16, u16)>()),
    ) {
        whole_graph(n, &edges, &order_keys, &cuts, fail_at)?;
    }
}

/// Body of the whole-graph properties: `n` nodes, `edges` taken modulo `n`,
/// emitted in the order of `order_keys`, in batches of `1 + cuts[i] % 4`,
/// with one failure injected if `fail_at` says so.
fn whole_graph(
    n: usize,
    edges: &[(u16, u16)],
    order_keys: &[u32],
    cuts: &[u8],
    fail_at: Option<(u16, u16)>,
) -> Result<(), TestCaseError> {
    let mut deps: Vec<Vec<NodeId>> = vec![Vec::new(); n];
    for &(a, b) in edges {
        deps[a as usize % n].push((b as usize % n) as NodeId);
    }
    let mut order: Vec<NodeId> = (0..n as NodeId).collect();
    order.sort_by_key(|&i| order_keys[i as usize]);
    let mut g = DepGraph::new();
    let mut o = Oracle::new(n);
    let mut i = 0;
    let mut failures = false;
    while i < n {
        let len = 1 + cuts[i] as usize % 4;
        let batch: Vec<NodeId> = order[i..(i + len).min(n)]
            .iter()
            .copied()
            .filter(|&d| o.st[d as usize] == State::Unseen)
            .collect();
        i += len;
        // The caller drops deps that are Ready (or failed).
        let groups: Vec<(Vec<NodeId>, Vec<NodeId>)> = batch
            .iter()
            .map(|&d| {
                let live: Vec<NodeId> = deps[d as usize]
                    .iter()
                    .copied()
                    .filter(|&t| matches!(o.st[t as usize], State::Unseen | State::Waiting(_)))
                    .collect();
                (vec![d], live)
            })
            .collect();
        if !groups.is_empty() {
            run_emit(&mut g, &mut o, &groups)?;
        }
        if let Some((at, which)) = fail_at
            && at as usize % n == i.min(n - 1)
        {
            let live = o.live();
            if !live.is_empty() {
                run_fail(&mut g, &mut o, &[live[which as usize % live.len()]])?;
                failures = true;
            }
        }
    }
    if !failures {
        prop_assert_eq!(g.waiting_len(), 0);
        prop_assert!(o.st.iter().all(|s| *s == State::Ready));
    }
    Ok(())
}

/// A link-like shape (the object layer's, W9's): `n` symbols in `units`
/// units of consecutive ids, each symbol calling up to four others — the
/// first in its own unit, the rest anywhere, so units form large cycles.
/// `calls[i]` are raw numbers taken modulo the ranges.
fn link_calls(n: usize, units: usize, raw: &[(u16, u16, u16, u8)]) -> (usize, Vec<Vec<NodeId>>) {
    let per = n.div_ceil(units);
    let calls = (0..n)
        .map(|i| {
            let (a, b, c, k) = raw[i % raw.len()];
            let u = i / per;
            let lo = u * per;
            let hi = ((u + 1) * per).min(n);
            // Salt the raw numbers with the index so a short `raw` still
            // gives every symbol its own calls.
            let salt = |v: u16| (v as usize).wrapping_mul(31).wrapping_add(i * 7919);
            let mut out: Vec<NodeId> = [
                lo + salt(a) % (hi - lo),
                salt(b) % n,
                salt(c) % n,
                salt(a ^ c) % n,
            ]
            .into_iter()
            .take(k as usize % 5)
            .map(|t| t as NodeId)
            .collect();
            out.sort_unstable();
            out.dedup();
            out
        })
        .collect();
    (per, calls)
}

/// The order units are emitted in.
#[derive(Clone, Copy, Debug)]
enum Emission {
    /// Unit 0 first: most calls across units point to units not emitted yet.
    Forward,
    /// The last unit first.
    Reverse,
    /// By the drawn keys.
    Random,
}

fn emission_order() -> impl Strategy<Value = Emission> {
    prop_oneof![
        Just(Emission::Forward),
        Just(Emission::Reverse),
        Just(Emission::Random)
    ]
}

/// The `units` units in `emission` order (`keys` ordering the random one).
fn unit_order(units: usize, emission: Emission, keys: &[u32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..units).collect();
    match emission {
        Emission::Forward => {}
        Emission::Reverse => order.reverse(),
        Emission::Random => order.sort_by_key(|&u| keys[u % keys.len()]),
    }
    order
}

/// The emission of one unit, as the engine would see it: one group whose
/// defs depend on the unit's external references (`split` > 1 cuts the
/// unit into that many groups, each with its own external references), or
/// one group per symbol with its own calls. Ready deps are dropped, as the
/// engine's state actor does; `live` says which nodes are not Ready.
fn unit_groups(
    defs: &[NodeId],
    calls: &[Vec<NodeId>],
    per_symbol: bool,
    split: usize,
    live: impl Fn(NodeId) -> bool,
) -> Vec<(Vec<NodeId>, Vec<NodeId>)> {
    if per_symbol {
        return defs
            .iter()
            .map(|&d| {
                let deps = calls[d as usize].iter().copied().filter(|&t| live(t));
                (vec![d], deps.collect())
            })
            .collect();
    }
    let (lo, hi) = match (defs.first(), defs.last()) {
        (Some(&lo), Some(&hi)) => (lo, hi),
        _ => return Vec::new(),
    };
    defs.chunks(defs.len().div_ceil(split.max(1)))
        .map(|part| {
            let mut deps: Vec<NodeId> = part
                .iter()
                .flat_map(|&d| calls[d as usize].iter().copied())
                .filter(|&t| (t < lo || t > hi) && live(t))
                .collect();
            deps.sort_unstable();
            deps.dedup();
            (part.to_vec(), deps)
        })
        .collect()
}

proptest! {
    // About 1 s in debug; PROPTEST_CASES (divided by 4) overrides.
    #![proptest_config(cases(250, 4))]

    /// Link shapes (many symbols per unit, random calls across units, large
    /// SCCs), units emitted forward, in reverse or in a random order, as unit groups or per-symbol
    /// groups, sometimes with a failure: every emit matches the oracle.
    #[test]
    fn link_shapes_match_the_oracle(
        n in 8usize..120,
        units in 1usize..10,
        raw in prop::collection::vec(any::<(u16, u16, u16, u8)>(), 1..120),
        order_keys in prop::collection::vec(any::<u32>(), 10),
        emission in emission_order(),
        per_symbol in any::<bool>(),
        split in 1usize..4,
        fail_at in prop::option::weighted(0.2, any::<(u8, u16)>()),
    ) {
        let (per, calls) = link_calls(n, units, &raw);
        let units = n.div_ceil(per);
        let order = unit_order(units, emission, &order_keys);
        let mut g = DepGraph::new();
        let mut o = Oracle::new(n);
        for (step, &u) in order.iter().enumerate() {
            let defs: Vec<NodeId> = (u * per..((u + 1) * per).min(n))
                .map(|i| i as NodeId)
                .filter(|&d| o.st[d as usize] == State::Unseen)
                .collect();
            let groups = unit_groups(&defs, &calls, per_symbol, split, |t| {
                matches!(o.st[t as usize], State::Unseen | State::Waiting(_))
            });
            if !groups.is_empty() {
                run_emit(&mut g, &mut o, &groups)?;
            }
            if let Some((at, which)) = fail_at
                && at as usize % units == step
            {
                let live = o.live();
                if !live.is_empty() {
                    run_fail(&mut g, &mut o, &[live[which as usize % live.len()]])?;
                }
            }
        }
    }
}

/// Emits a link shape unit by unit and returns, for every symbol, the step
/// (unit emission) in which the graph reported it Ready.
fn ready_steps(
    n: usize,
    per: usize,
    calls: &[Vec<NodeId>],
    order: &[usize],
    per_symbol: bool,
    split: usize,
) -> Result<Vec<Option<usize>>, TestCaseError> {
    let mut g = DepGraph::new();
    let mut at: Vec<Option<usize>> = vec![None; n];
    let mut ready = Vec::new();
    for (step, &u) in order.iter().enumerate() {
        let defs: Vec<NodeId> = (u * per..((u + 1) * per).min(n))
            .map(|i| i as NodeId)
            .collect();
        let groups = unit_groups(&defs, calls, per_symbol, split, |t| {
            at[t as usize].is_none()
        });
        let eg: Vec<EmitGroup<'_>> = groups
            .iter()
            .map(|(d, p)| EmitGroup { defs: d, deps: p })
            .collect();
        ready.clear();
        g.emit(&eg, &mut ready);
        for &r in &ready {
            prop_assert!(at[r as usize].is_none(), "{} Ready twice", r);
            at[r as usize] = Some(step);
        }
        if step % 8 == 0 {
            g.validate().map_err(TestCaseError::fail)?;
        }
    }
    g.validate().map_err(TestCaseError::fail)?;
    prop_assert_eq!(g.waiting_len(), 0);
    Ok(at)
}

/// The step in which each symbol must become Ready, from petgraph's strongly
/// connected components (an oracle independent of the graph's own and of
/// the brute-force one): the latest emission among everything it reaches.
/// Each group is a node of its own (emitted with its unit), so the oracle
/// graph stays linear in size.
fn petgraph_ready_steps(
    n: usize,
    per: usize,
    calls: &[Vec<NodeId>],
    order: &[usize],
    per_symbol: bool,
    split: usize,
) -> Vec<usize> {
    use petgraph::graph::{DiGraph, NodeIndex};
    let units = n.div_ceil(per);
    let mut step_of_unit = vec![0; units];
    for (step, &u) in order.iter().enumerate() {
        step_of_unit[u] = step;
    }
    let mut g: DiGraph<usize, ()> = DiGraph::new();
    for i in 0..n {
        g.add_node(step_of_unit[i / per]);
    }
    for (u, &step) in step_of_unit.iter().enumerate() {
        let defs: Vec<NodeId> = (u * per..((u + 1) * per).min(n))
            .map(|i| i as NodeId)
            .collect();
        for (gdefs, deps) in unit_groups(&defs, calls, per_symbol, split, |_| true) {
            let h = g.add_node(step);
            for d in gdefs {
                g.add_edge(NodeIndex::new(d as usize), h, ());
            }
            for t in deps {
                g.add_edge(h, NodeIndex::new(t as usize), ());
            }
        }
    }
    // Tarjan lists the SCCs dependencies first. petgraph's recurses once a
    // node on the depth-first path: on a thread with room for the deepest
    // shape (a test thread's 2 MiB is not, in a debug build).
    let sccs = std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(256 << 20)
            .spawn_scoped(s, || petgraph::algo::tarjan_scc(&g))
            .expect("spawn the oracle's thread")
            .join()
            .expect("the oracle's thread")
    });
    let mut done: Vec<Option<usize>> = vec![None; g.node_count()];
    for scc in sccs {
        let mut t = scc.iter().map(|&v| g[v]).max().unwrap_or(0);
        for &v in &scc {
            for w in g.neighbors(v) {
                if let Some(s) = done[w.index()] {
                    t = t.max(s);
                }
            }
        }
        for &v in &scc {
            done[v.index()] = Some(t);
        }
    }
    done[..n].iter().map(|s| s.unwrap_or(usize::MAX)).collect()
}

proptest! {
    // A few seconds in debug; PROPTEST_CASES (divided by 40) overrides.
    #![proptest_config(cases(24, 40))]

    /// Larger link shapes (up to 4,000 symbols in up to 60 units, emitted
    /// forward, in reverse or in a random order) against petgraph's SCCs: every symbol becomes Ready exactly in the emission
    /// after which everything it reaches is emitted.
    #[test]
    fn link_shapes_match_petgraph_sccs(
        n in 200usize..4000,
        units in 2usize..60,
        raw in prop::collection::vec(any::<(u16, u16, u16, u8)>(), 1..400),
        order_keys in prop::collection::vec(any::<u32>(), 60),
        emission in emission_order(),
        per_symbol in any::<bool>(),
        split in 1usize..4,
    ) {
        let (per, calls) = link_calls(n, units, &raw);
        let units = n.div_ceil(per);
        let order = unit_order(units, emission, &order_keys);
        let got = ready_steps(n, per, &calls, &order, per_symbol, split)?;
        let expected = petgraph_ready_steps(n, per, &calls, &order, per_symbol, split);
        for i in 0..n {
            prop_assert_eq!(got[i], Some(expected[i]), "symbol {}", i);
        }
    }
}

/// A chain as deep as the link shapes get (4,000 symbols each calling the
/// next, two units, emitted in reverse): the oracle's depth-first search
/// (petgraph's `tarjan_scc` recurses once a node) must not overflow a test
/// thread's stack, as it once did in CI on a random shape.
#[test]
fn the_oracle_takes_the_deepest_chain_a_shape_can_have() {
    let n = 4_000;
    let calls: Vec<Vec<NodeId>> = (0..n)
        .map(|i| {
            if i + 1 < n {
                vec![(i + 1) as NodeId]
            } else {
                Vec::new()
            }
        })
        .collect();
    let per = n / 2;
    let order = [1, 0];
    let got = ready_steps(n, per, &calls, &order, true, 1).expect("the graph's own steps");
    let expected = petgraph_ready_steps(n, per, &calls, &order, true, 1);
    for i in 0..n {
        assert_eq!(got[i], Some(expected[i]), "symbol {i}");
    }
}

/// The weak shape of the incremental search (issue 12 §4): one group per
/// symbol in ten units of 2,000 symbols, four calls each, units emitted in
/// a random order. Searching per emitted symbol scanned a big component on
/// each side again and again (8 edges scanned per edge at 10k edges, 27 at
/// 100k, 65 at 1M); each unit is now emitted in bulk with one pass over the
/// graph, so the edges scanned stay a small multiple of the edges given.
#[test]
fn per_symbol_groups_in_big_units_scan_each_edge_a_bounded_number_of_times() {
    let n = 20_000;
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as u16
    };
    let raw: Vec<(u16, u16, u16, u8)> = (0..4096).map(|_| (next(), next(), next(), 4)).collect();
    let (per, calls) = link_calls(n, 10, &raw);
    let order = unit_order(10, Emission::Random, &[7, 3, 9, 1, 5, 0, 8, 2, 6, 4]);
    let mut g = DepGraph::new();
    let mut ready_at = vec![false; n];
    let mut ready = Vec::new();
    let mut edges = 0;
    for &u in &order {
        let defs: Vec<NodeId> = (u * per..((u + 1) * per).min(n))
            .map(|i| i as NodeId)
            .collect();
        let groups = unit_groups(&defs, &calls, true, 1, |t| !ready_at[t as usize]);
        edges += groups.iter().map(|(_, deps)| deps.len()).sum::<usize>();
        let eg: Vec<EmitGroup<'_>> = groups
            .iter()
            .map(|(d, p)| EmitGroup { defs: d, deps: p })
            .collect();
        ready.clear();
        g.emit(&eg, &mut ready);
        for &r in &ready {
            ready_at[r as usize] = true;
        }
    }
    assert!(ready_at.iter().all(|&r| r), "every symbol Ready");
    let scanned = g.stats().scanned as usize;
    assert!(
        scanned <= 3 * edges,
        "{scanned} edges scanned for {edges} edges given"
    );
}
