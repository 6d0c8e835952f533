//! Unit tests of the dependency graph, one per case of the module docs.

use super::{DepGraph, EmitGroup, NodeId};

/// Emits one single-def group per `(def, deps)` pair, all in one batch, and
/// returns the nodes that became Ready, sorted.
fn emit(g: &mut DepGraph, groups: &[(&[NodeId], &[NodeId])]) -> Vec<NodeId> {
    let groups: Vec<EmitGroup<'_>> = groups
        .iter()
        .map(|&(defs, deps)| EmitGroup { defs, deps })
        .collect();
    let mut ready = Vec::new();
    g.emit(&groups, &mut ready);
    g.validate().unwrap();
    ready.sort_unstable();
    ready
}

/// Emits `def` alone depending on `deps`.
fn emit1(g: &mut DepGraph, def: NodeId, deps: &[NodeId]) -> Vec<NodeId> {
    emit(g, &[(&[def], deps)])
}

fn fail(g: &mut DepGraph, nodes: &[NodeId]) -> Vec<(NodeId, NodeId)> {
    let mut failed = Vec::new();
    g.fail(nodes, &mut failed);
    g.validate().unwrap();
    failed.sort_unstable();
    failed
}

#[test]
fn no_deps_is_ready_at_once() {
    let mut g = DepGraph::new();
    assert_eq!(emit1(&mut g, 7, &[]), [7]);
    assert!(!g.is_waiting(7));
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn chain_emitted_dependants_first() {
    // i depends on i-1, emitted from the top: everything waits until 0.
    let n = 50;
    let mut g = DepGraph::new();
    for i in (1..n).rev() {
        assert!(emit1(&mut g, i, &[i - 1]).is_empty());
        assert!(g.is_waiting(i));
    }
    assert_eq!(g.waiting_len(), n as usize - 1);
    assert_eq!(g.blockers(n - 1, 10), [0]);
    let ready = emit1(&mut g, 0, &[]);
    assert_eq!(ready, (0..n).collect::<Vec<_>>());
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn chain_emitted_dependencies_first_in_orc_order() {
    // W3's order in ORC: 1, 2, …, n-1 (each on its waiting predecessor), then 0.
    let n = 50;
    let mut g = DepGraph::new();
    for i in 1..n {
        assert!(emit1(&mut g, i, &[i - 1]).is_empty());
    }
    assert_eq!(emit1(&mut g, 0, &[]), (0..n).collect::<Vec<_>>());
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn chain_emitted_in_dependency_order_is_ready_one_by_one() {
    // The caller drops deps that are Ready, so each emit has none.
    let mut g = DepGraph::new();
    assert_eq!(emit1(&mut g, 0, &[]), [0]);
    assert_eq!(emit1(&mut g, 1, &[]), [1]);
}

#[test]
fn two_cycle_across_batches() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 1, &[2]).is_empty());
    assert_eq!(emit1(&mut g, 2, &[1]), [1, 2]);
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn n_cycle_closes_at_the_last_emit() {
    for n in [3u32, 10, 100] {
        let mut g = DepGraph::new();
        for i in 0..n - 1 {
            assert!(emit1(&mut g, i, &[(i + 1) % n]).is_empty(), "n={n} i={i}");
        }
        assert_eq!(emit1(&mut g, n - 1, &[0]), (0..n).collect::<Vec<_>>());
        assert_eq!(g.waiting_len(), 0);
    }
}

#[test]
fn n_cycle_emitted_backwards_and_interleaved() {
    let n = 40u32;
    // Backwards.
    let mut g = DepGraph::new();
    for i in (1..n).rev() {
        assert!(emit1(&mut g, i, &[(i + 1) % n]).is_empty());
    }
    assert_eq!(emit1(&mut g, 0, &[1]), (0..n).collect::<Vec<_>>());
    // Evens, then odds: segments join as the odds arrive.
    let mut g = DepGraph::new();
    for i in (0..n)
        .filter(|i| i % 2 == 0)
        .chain((0..n).filter(|i| i % 2 == 1))
    {
        let ready = emit1(&mut g, i, &[(i + 1) % n]);
        if i == n - 1 {
            assert_eq!(ready, (0..n).collect::<Vec<_>>());
        } else {
            assert!(ready.is_empty());
        }
    }
}

#[test]
fn cycle_with_an_unemitted_tail_waits() {
    // 0 -> 1 -> 2 -> 0, and 1 -> 9 never emitted.
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[2, 9]).is_empty());
    assert!(emit1(&mut g, 2, &[0]).is_empty());
    assert_eq!(g.waiting_len(), 3);
    for n in 0..3 {
        assert!(g.is_waiting(n));
        assert_eq!(g.blockers(n, 5), [9]);
    }
    assert_eq!(emit1(&mut g, 9, &[]), [0, 1, 2, 9]);
}

#[test]
fn cycles_joined_by_a_later_emit() {
    // Two 2-cycles {0,1} and {2,3}; 1 also waits on 2 and 3 on 4.
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[0, 2]).is_empty());
    assert!(emit1(&mut g, 2, &[3]).is_empty());
    assert!(emit1(&mut g, 3, &[2, 4]).is_empty());
    // 4 closes a big cycle back to 0: all five together.
    assert_eq!(emit1(&mut g, 4, &[0]), [0, 1, 2, 3, 4]);
}

#[test]
fn diamond() {
    // 0 -> {1, 2} -> 3
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1, 2]).is_empty());
    assert!(emit1(&mut g, 1, &[3]).is_empty());
    assert!(emit1(&mut g, 2, &[3]).is_empty());
    assert_eq!(g.blockers(0, 10), [3]);
    assert_eq!(emit1(&mut g, 3, &[]), [0, 1, 2, 3]);
}

#[test]
fn diamond_partial_readiness() {
    // 0 -> {1, 2}; 1 -> 3; 2 has no deps but is emitted late.
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1, 2]).is_empty());
    assert!(emit1(&mut g, 1, &[3]).is_empty());
    assert_eq!(emit1(&mut g, 3, &[]), [1, 3]);
    assert!(g.is_waiting(0));
    assert_eq!(emit1(&mut g, 2, &[]), [0, 2]);
}

#[test]
fn intra_batch_cycle_and_self_dep() {
    let mut g = DepGraph::new();
    // One unit emitting a 3-cycle in three groups, one with a self-dep.
    let ready = emit(&mut g, &[(&[0], &[1, 0]), (&[1], &[2]), (&[2], &[0])]);
    assert_eq!(ready, [0, 1, 2]);
    // The same with a dependency outside the batch.
    let ready = emit(&mut g, &[(&[10], &[11]), (&[11], &[10, 12])]);
    assert!(ready.is_empty());
    assert_eq!(g.blockers(10, 5), [12]);
    assert_eq!(emit1(&mut g, 12, &[]), [10, 11, 12]);
}

#[test]
fn batch_defs_depending_on_later_defs_of_the_same_batch() {
    let mut g = DepGraph::new();
    let ready = emit(&mut g, &[(&[0], &[1]), (&[1], &[2]), (&[2], &[])]);
    assert_eq!(ready, [0, 1, 2]);
}

#[test]
fn earlier_waiting_nodes_become_ready_in_a_later_batch() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[5]).is_empty());
    assert!(emit1(&mut g, 1, &[5]).is_empty());
    assert_eq!(emit(&mut g, &[(&[5], &[6]), (&[6], &[])]), [0, 1, 5, 6]);
}

#[test]
fn large_group_uses_a_hidden_node() {
    let defs: Vec<NodeId> = (0..100).collect();
    let deps: Vec<NodeId> = (1000..1100).collect();
    let mut g = DepGraph::new();
    assert!(emit(&mut g, &[(&defs, &deps)]).is_empty());
    assert_eq!(g.waiting_len(), 100);
    // defs + deps edges, not defs x deps.
    assert_eq!(g.edge_count(), 200);
    let mut b = g.blockers(5, 1000);
    b.sort_unstable();
    assert_eq!(b, deps);
    // A group whose deps include its own defs: they form one SCC.
    let mut ready = emit(&mut g, &[(&deps, &defs)]);
    ready.sort_unstable();
    assert_eq!(ready, (0..100).chain(1000..1100).collect::<Vec<_>>());
    assert_eq!(g.edge_count(), 0);
}

#[test]
fn group_dep_on_own_def_still_binds_the_other_defs() {
    // Group {0, 1} depends on {1, 9}: 0 -> 1 -> 9 (no 1 -> 1).
    let mut g = DepGraph::new();
    assert!(emit(&mut g, &[(&[0, 1], &[1, 9])]).is_empty());
    // Failing 1 (waiting) takes 0 with it.
    assert_eq!(fail(&mut g, &[1]), [(0, 1), (1, 1)]);
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn def_in_two_groups_gets_both_deps() {
    let mut g = DepGraph::new();
    assert!(emit(&mut g, &[(&[0], &[5]), (&[0, 1], &[6])]).is_empty());
    assert_eq!(emit1(&mut g, 6, &[]), [1, 6]);
    assert_eq!(emit1(&mut g, 5, &[]), [0, 5]);
}

#[test]
fn failure_before_emission_of_the_dependency() {
    // 0 -> 1 -> 2 (2 never emitted), 3 -> 1.
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[2]).is_empty());
    assert!(emit1(&mut g, 3, &[1]).is_empty());
    assert!(emit1(&mut g, 4, &[5]).is_empty());
    assert_eq!(fail(&mut g, &[2]), [(0, 2), (1, 2), (3, 2)]);
    assert_eq!(g.waiting_len(), 1);
    assert!(g.is_waiting(4));
    assert!(!g.is_waiting(0));
    // Failing something nothing depends on reports nothing.
    assert!(fail(&mut g, &[77]).is_empty());
}

#[test]
fn failure_of_a_waiting_node_after_emission() {
    // 0 -> 1 -> 2; 1 is emitted, then fails (e.g. its tracker is removed).
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[2]).is_empty());
    assert_eq!(fail(&mut g, &[1]), [(0, 1), (1, 1)]);
    // 2 is no longer depended on and can be emitted normally.
    assert_eq!(emit1(&mut g, 2, &[]), [2]);
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn failure_through_a_cycle() {
    // Cycle 0 -> 1 -> 2 -> 0, 1 -> 3 (unemitted), 4 -> 0, 5 unrelated.
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[2, 3]).is_empty());
    assert!(emit1(&mut g, 2, &[0]).is_empty());
    assert!(emit1(&mut g, 4, &[0]).is_empty());
    assert!(emit1(&mut g, 5, &[6]).is_empty());
    assert_eq!(fail(&mut g, &[3]), [(0, 3), (1, 3), (2, 3), (4, 3)]);
    assert_eq!(g.waiting_len(), 1);
    // Failing a waiting member of a cycle reports it as its own root.
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[0, 3]).is_empty());
    assert_eq!(fail(&mut g, &[1]), [(0, 1), (1, 1)]);
}

#[test]
fn failure_with_several_roots() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[10]).is_empty());
    assert!(emit1(&mut g, 1, &[11]).is_empty());
    assert!(emit1(&mut g, 2, &[0, 1]).is_empty());
    let failed = fail(&mut g, &[10, 11]);
    assert_eq!(failed.len(), 3);
    assert!(failed.contains(&(0, 10)));
    assert!(failed.contains(&(1, 11)));
    assert!(failed.contains(&(2, 10)) || failed.contains(&(2, 11)));
}

#[test]
fn blockers_respects_limit_and_non_waiting_nodes() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1, 2, 3, 4]).is_empty());
    assert_eq!(g.blockers(0, 2).len(), 2);
    assert_eq!(g.blockers(0, 0).len(), 0);
    let mut all = g.blockers(0, 100);
    all.sort_unstable();
    assert_eq!(all, [1, 2, 3, 4]);
    // Unemitted and unknown nodes have no blockers.
    assert!(g.blockers(1, 10).is_empty());
    assert!(g.blockers(99, 10).is_empty());
}

#[test]
fn blockers_through_waiting_nodes_and_cycles() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    assert!(emit1(&mut g, 1, &[0, 2]).is_empty());
    assert!(emit1(&mut g, 2, &[3]).is_empty());
    assert_eq!(g.blockers(0, 10), [3]);
}

#[test]
fn double_emission_is_ignored() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 0, &[1]).is_empty());
    // Caller bug: 0 again, with a different dependency. Ignored.
    assert!(emit1(&mut g, 0, &[2]).is_empty());
    assert_eq!(g.waiting_len(), 1);
    assert_eq!(g.blockers(0, 10), [1]);
    assert_eq!(emit1(&mut g, 1, &[]), [0, 1]);
}

#[test]
fn memory_is_reused_after_ready() {
    let mut g = DepGraph::new();
    for round in 0..10u32 {
        let base = round * 100;
        for i in 0..99 {
            assert!(emit1(&mut g, base + i, &[base + i + 1]).is_empty());
        }
        assert_eq!(emit1(&mut g, base + 99, &[base]).len(), 100);
    }
    // Ready nodes gave their slots and edges back.
    assert!(g.slots.len() <= 101, "{} slots", g.slots.len());
    assert!(g.edges.len() <= 100, "{} edges", g.edges.len());
    assert_eq!(g.order.len(), 0);
}

#[test]
fn large_and_sparse_ids() {
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 1_000_000, &[3]).is_empty());
    assert_eq!(g.blockers(1_000_000, 4), [3]);
    assert_eq!(emit1(&mut g, 3, &[]), [3, 1_000_000]);
}

#[test]
fn many_placements_between_neighbours_force_relabelling() {
    // Node 0 waits on 1 (both waiting, 1 blocked on `far`). Then 2, 3, …
    // each sit between the previous one and 1: 0 -> 2 -> 1 first, then
    // 2 -> 3 -> 1, …, exhausting the label gap many times over.
    let far = 1_000;
    let mut g = DepGraph::new();
    assert!(emit1(&mut g, 1, &[far]).is_empty());
    assert!(emit1(&mut g, 0, &[2]).is_empty());
    for i in 2..200 {
        assert!(emit1(&mut g, i, &[1, i + 1]).is_empty(), "i={i}");
        g.validate().unwrap();
    }
    assert!(emit1(&mut g, 200, &[1]).is_empty());
    assert!(g.stats().relabels > 0, "{:?}", g.stats());
    let ready = emit1(&mut g, far, &[]);
    // 0, 1, 2..=200 and far.
    assert_eq!(ready.len(), 202);
    assert_eq!(g.waiting_len(), 0);
}

#[test]
fn placement_needs_no_search_for_chains_and_one_for_a_cycle() {
    let n = 1000;
    // Dependants first.
    let mut g = DepGraph::new();
    for i in (1..n).rev() {
        emit1(&mut g, i, &[i - 1]);
    }
    assert_eq!(emit1(&mut g, 0, &[]).len(), n as usize);
    assert_eq!(g.stats().searches, 0);
    // ORC's W3 order: dependencies first, each waiting on the first.
    let mut g = DepGraph::new();
    for i in 1..n {
        emit1(&mut g, i, &[i - 1]);
    }
    assert_eq!(emit1(&mut g, 0, &[]).len(), n as usize);
    assert_eq!(g.stats().searches, 0);
    // One cycle emitted in order: one search, when it closes, visiting each
    // component a bounded number of times.
    let mut g = DepGraph::new();
    for i in 0..n - 1 {
        emit1(&mut g, i, &[i + 1]);
    }
    assert_eq!(emit1(&mut g, n - 1, &[0]).len(), n as usize);
    let stats = g.stats();
    assert_eq!((stats.searches, stats.cycles), (1, 1));
    assert!(stats.visited <= 3 * u64::from(n), "{stats:?}");
}

#[test]
fn growing_scc_absorbs_small_cycles() {
    // A big SCC {0, 1} that keeps absorbing new 2-cycles hanging off it.
    let mut g = DepGraph::new();
    emit1(&mut g, 0, &[1]);
    emit1(&mut g, 1, &[0, 2]);
    for i in 1..200u32 {
        let (a, b) = (2 * i, 2 * i + 1);
        // a -> b -> (back into the big SCC) and a is what the SCC waits on.
        assert!(emit1(&mut g, a, &[b]).is_empty());
        assert!(emit1(&mut g, b, &[0, a + 2]).is_empty());
    }
    assert_eq!(g.waiting_len(), 400);
    assert_eq!(g.blockers(0, 10), [400]);
    assert_eq!(emit1(&mut g, 400, &[]).len(), 401);
}
