//! The dependency graph: decides when emitted symbols become Ready.
//!
//! This is a pure data structure. It knows nothing of names, dylibs or
//! threads; the engine's state actor maps symbols to dense [`NodeId`]s and
//! calls it.
//!
//! # Semantics
//!
//! A node starts *unemitted*. It is emitted exactly once, with its
//! dependencies (edges dependant → dependency), as part of an
//! [`EmitGroup`] in a call to [`DepGraph::emit`]. A node is **Ready** exactly
//! when it and every node it transitively reaches are emitted and none has
//! failed. Nodes of one cycle (strongly connected component) therefore become
//! Ready together, in the same call. [`DepGraph::fail`] fails every waiting
//! node that transitively depends on a failed node. Ready and failed nodes
//! leave the graph; only *waiting* nodes (emitted, not yet Ready) and the
//! unemitted nodes they wait on are stored.
//!
//! # Algorithm
//!
//! The graph is kept *condensed*: every waiting strongly connected component
//! (SCC) is one component with a representative slot, a member list and
//! three intrusive, circular, doubly linked edge lists: its out-edges to
//! waiting components, its *pending* out-edges (to nodes not emitted yet) and
//! its in-edges. Edges inside a component are deleted when the component
//! forms, so the component's out-edge plus pending counts are exactly its
//! number of edges to nodes that are not Ready yet. That sum is the
//! readiness counter:
//!
//! * **Ready cascade.** A waiting component whose counter is zero is Ready.
//!   Its in-edges are walked once; each one decrements its source
//!   component's counter, and components that reach zero follow.
//! * **Pending edges.** An edge to a node not emitted yet can take part in no
//!   cycle and no search, so it waits in the pending list, which searches
//!   never scan; when its target is emitted it moves to the out-list (once).
//!   A big component that calls many symbols of units still to come is
//!   therefore not rescanned by every search that touches it.
//! * **Order.** Out-edges are only ever added when their source is emitted,
//!   so a cycle can only close through a node being emitted. Waiting
//!   components sit in a topological order (dependants before dependencies):
//!   an order-maintenance list of positions with sparse `u64` labels
//!   (`order.rs`), so comparing two components is comparing two integers.
//! * **Placement.** A node being emitted goes right behind its last waiting
//!   dependant, or, if nothing waits on it yet, right before its first
//!   waiting dependency (in front of everything if neither). Then none of its
//!   edges point backwards unless a dependant already comes after a
//!   dependency — no search at all for chains emitted in either direction,
//!   for groups, or for a cycle until the edge that closes it.
//! * **Backward edges.** All the edges of a node being emitted go in first;
//!   those `x → y` with `y` before `x` then start *one* two-way search
//!   (Haeupler, Kavitha, Mathew, Sen and Tarjan, *Incremental cycle
//!   detection, topological ordering, and strong component maintenance*,
//!   TALG 2012): forward from all those `y` in increasing label order and
//!   backward from `x` in decreasing label order, alternating single edge
//!   traversals, until the two frontiers cross or one side runs out. Its
//!   cost follows the smaller side's edges, not the whole region between the
//!   labels that Pearce and Kelly's algorithm searches — nor the edge list of
//!   a big component on the other side, which node-by-node alternation would
//!   scan whole. The expanded ancestors of `x` and descendants of the `y`s on
//!   the wrong side of the crossing point move there as one run (ancestors
//!   first), keeping their relative order.
//! * **Cycles.** If the two searches meet, the edges closed a cycle. Every
//!   node of the new SCC was expanded by one of the searches, so two passes
//!   over the edges they scanned find it (what the `y`s reach that reaches
//!   `x`). The SCC becomes one component placed in the run between the
//!   ancestors and the descendants, where every edge of the contracted graph
//!   points forwards, so contraction needs no further search. It merges into
//!   the SCC's component with the most members and edges: the smaller
//!   components' members are relabelled, their internal edges deleted and
//!   their other edges moved. Only the smaller side is touched, so a big SCC
//!   that keeps growing is not rescanned.
//! * **Groups.** A group with several defs and several deps gets one hidden
//!   node (defs → hidden → deps), so it costs `defs + deps` edges instead of
//!   `defs × deps`, and one search for all its deps. The hidden node is
//!   always emitted, so reachability between real nodes, and with it
//!   readiness and failure, is unchanged.
//! * **Bulk batches.** A batch of at least 64 defs plus deps — a whole
//!   unit of hundreds of symbols, each its own group — skips placement and
//!   searches when that pays: its edges go in, then one pass (Tarjan's
//!   algorithm over out-edges) finds the SCCs of everything the batch
//!   reaches, contracts each into its biggest component and moves the
//!   reached components, in topological order, behind all others. The
//!   reached set is closed under out-edges, so every edge still points
//!   forwards. The pass is taken when a search bounded by eight times the
//!   batch's size finds the reached region that small (the usual link
//!   shape: the big SCC of the units emitted so far, whose internal edges
//!   are gone, and a few others), or, failing that, over the whole graph
//!   when the batch brings an eighth of the stored slots plus edges. Either
//!   way the batch pays for the pass; searching per node there would
//!   rescan the big components on both sides of each search.
//! * **Failure** walks in-edges backwards from the failed nodes, so it costs
//!   the size of the failed region.
//!
//! # Complexity
//!
//! With `n` nodes and `m` edges over the graph's lifetime:
//!
//! * emission, placement, pending-edge moves, the Ready cascade and failure
//!   are `O(n + m)` in total, plus label maintenance: a new position takes
//!   half of a gap, and a used-up gap relabels a doubling neighbourhood until
//!   it has room (Dietz–Sleator style, without their worst-case density
//!   bounds);
//! * contraction relabels a member only when its component at least doubles
//!   (`O(n log n)` in total) and moves each edge only while it is on the
//!   smaller side;
//! * an emitted node with backward edges costs one two-way search,
//!   `O(k log k)` for `k` edges traversed (two binary heaps), plus the SCC
//!   extraction over the same edges when it closes a cycle;
//! * a bulk batch of size `k` (defs plus deps) costs at most `8k` for the
//!   bounded check and `O(8k)` for the pass (the region it reaches, or the
//!   whole graph when that is at most `8k`): `O(m + n)` over the lifetime
//!   for bulk batches, plus the contraction and label costs above.
//!
//! **Worst case:** incremental topological ordering and SCC maintenance have
//! no known near-linear algorithm. Haeupler et al. prove `O(m^{3/2})` in
//! total for a two-way search that balances edges; this one balances edge
//! traversals but orders each side by label with a heap and claims no bound
//! beyond the trivial `O(n · (n + m) log n)`, which an adversarial emission
//! order could approach. What it does on the orders the engine sees is
//! measured, deterministically, in `benches/benches/dep_graph.rs`
//! ([`GraphStats`] and instruction counts): at N = 2.5k / 10k / 40k,
//! components expanded by searches stay near-proportional to N (random DAG
//! in random order: 2.1k / 8.3k / 35k; one cycle emitted in random order:
//! 11k / 55k / 252k; chains of 5-cycles in random order: 6.6k / 29k / 139k),
//! and chains in either direction and the W5 DAG emitted dependants first
//! need no search. On link shapes like W9's (symbols in 10 or 100 units,
//! four calls each, three of them to random units, units emitted forward,
//! in reverse or in a random order, each unit one batch) the graph spends,
//! at 10k / 100k / 1M edges, about 1,080 / 1,080 / 1,110 instructions per
//! edge with each unit one group (the object layer's shape; 980 / 950 / 960
//! with 100 units) and 650 / 620 / 620 with one group per symbol (730 /
//! 650 / 630 with 100 units); the three orders stay within 5 % of each
//! other, and searches scan 1.2–1.8 edges per edge at every size. Before
//! bulk batches the unit-group shapes cost 1,460 / 1,540 / 1,650 (10
//! units) and 1,240 / 1,260 / 1,330 (100 units), one group per symbol in
//! 100 units 1,160 / 1,240 / 1,930, and in 10 units 1,190 / 1,810 /
//! 8,040 (a big component on each side of most searches — the SCC of the
//! units emitted so far, a cycle inside the unit being emitted — made each
//! search scan about the smaller of their edge lists: 2.4, 8.3 and 65
//! edges scanned per edge). Figures: `valgrind --tool=callgrind
//! --toggle-collect='dep_graph::run_link'` on `KILN_GRAPH_ONCE=<shape>/<n>`
//! (2026-12-05).
//!
//! Memory is `O(waiting + unemitted-but-depended-on + edges among them)`,
//! plus one `u32` per [`NodeId`] up to the largest id seen (the id → slot
//! index). Slots and edges of Ready and failed nodes are reused.
//!
//! # Caller contract
//!
//! Emitting a node twice, emitting a failed node, and depending on a Ready or
//! failed node are caller bugs. They cause no undefined behaviour and no
//! panic: a second emission of a waiting node is ignored; a failed or Ready
//! node is forgotten, so emitting it again or depending on it treats it as a
//! new node.

mod order;
#[cfg(test)]
mod tests;

use order::Order;

/// A node: a dense id chosen by the caller (the engine uses symbol ids).
pub type NodeId = u32;

/// One dependence group of an emission: every node in `defs` depends on every
/// node in `deps`.
#[derive(Debug, Clone, Copy)]
pub struct EmitGroup<'a> {
    /// The nodes this group emits.
    pub defs: &'a [NodeId],
    /// The nodes every def depends on. A def listed here is ignored for
    /// itself (no self-edges) but still a dependency of the group's other
    /// defs.
    pub deps: &'a [NodeId],
}

/// "No slot / no edge".
const NIL: u32 = u32::MAX;
/// The smallest batch (defs plus deps over its groups) emitted in bulk.
const BULK_MIN: usize = 64;
/// A batch is emitted in bulk when it brings at least this fraction
/// (`1/BULK_RATIO`) of the stored slots plus edges.
const BULK_RATIO: usize = 8;
/// Index of the out-edge list (keyed by the edge's source).
const OUT: usize = 0;
/// Index of the in-edge list (keyed by the edge's target).
const IN: usize = 1;
/// Index of the pending out-edge list: out-edges whose target is not emitted
/// yet. They use the edge's `OUT` links; searches never scan them.
const PEND: usize = 2;

/// The end (`OUT` or `IN`) whose links list `list` uses.
fn dir_of(list: usize) -> usize {
    if list == IN { IN } else { OUT }
}

/// What a slot currently holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// On the free list.
    Free,
    /// A node some waiting node depends on, not yet emitted (no label, no
    /// out-edges).
    Unemitted,
    /// Emitted, not yet Ready (has a label while it is a representative).
    Waiting,
}

/// One node (real or hidden). The fields from `label` on are meaningful only
/// while the slot is its component's representative.
#[derive(Debug, Clone)]
struct Slot {
    /// The caller's id (meaningless for hidden nodes).
    node: NodeId,
    kind: Kind,
    /// A group's hidden node: never reported, never looked up.
    hidden: bool,
    /// Representative of this slot's component.
    comp: u32,
    /// Next member of the same component (`NIL` ends the list).
    next_member: u32,
    /// Epoch marks (`MARK_*`): forward search, backward search, SCC and
    /// contraction sets and failed inputs, misc (queue, failure visit, SCC).
    mark: [u32; 4],
    /// Epoch of the emission that emitted this node.
    emitted_in: u32,
    /// Topological label (dependants have smaller labels than dependencies),
    /// a copy of the label of position `pos` in the order.
    label: u64,
    /// Position in the order.
    pos: u32,
    /// Number of member slots.
    size: u32,
    /// First and last member slot.
    members: [u32; 2],
    /// Heads of the out-edge (to waiting targets), in-edge and pending
    /// (to unemitted targets) lists.
    head: [u32; 3],
    /// Lengths of the out-edge, in-edge and pending lists.
    len: [u32; 3],
    /// A failed input this component reaches (during [`DepGraph::fail`]).
    root: NodeId,
}

/// Mark indices into [`Slot::mark`].
const MARK_F: usize = 0;
const MARK_B: usize = 1;
const MARK_M: usize = 2;
const MARK_X: usize = 3;

/// An edge `ends[OUT]` → `ends[IN]`, linked into its source component's
/// out-list and its target component's in-list.
#[derive(Debug, Clone, Copy)]
struct Edge {
    /// Source and target slot.
    ends: [u32; 2],
    /// `link[dir] = [next, prev]` in the list `dir`.
    link: [[u32; 2]; 2],
}

/// Counters of the work a [`DepGraph`] has done, for benchmarks and for tests
/// that check an emission order needs no search.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GraphStats {
    /// Edges that pointed backwards in the topological order and needed a
    /// search of their affected region, plus bulk batches laid out afresh.
    pub searches: u64,
    /// Components visited by those searches (forward plus backward).
    pub visited: u64,
    /// Edges traversed by those searches, by the extraction of the SCCs
    /// they found and by the passes over the graph after bulk batches.
    pub scanned: u64,
    /// Searches that closed a cycle (each contracts one new SCC).
    pub cycles: u64,
    /// Neighbourhoods of the order relabelled because a label gap was used
    /// up.
    pub relabels: u64,
}

/// The dependency graph of waiting nodes. See the [module docs](self).
#[derive(Debug)]
pub struct DepGraph {
    /// `NodeId` → slot, `NIL` if the node is not stored.
    index: Vec<u32>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    edges: Vec<Edge>,
    /// Free edges, chained through `link[OUT][0]`.
    free_edges: u32,
    /// Edges in use.
    live_edges: usize,
    /// Per slot, Tarjan's index and low link during [`Self::tarjan`] (the
    /// low link is `NIL` once the component's SCC is out); grown with the
    /// slots, valid where `MARK_X` holds the pass's epoch.
    tarjan: Vec<[u32; 2]>,
    /// The topological order of the waiting components.
    order: Order,
    /// Number of waiting real nodes.
    waiting: usize,
    /// Epoch counter for marks; 0 is never a live epoch.
    epoch: u32,
    /// Scratch buffers, kept to avoid reallocating.
    stack: Vec<u32>,
    fwd: Vec<u32>,
    bwd: Vec<u32>,
    targets: Vec<u32>,
    touched: Vec<u32>,
    pool: Vec<u32>,
    relabelled: Vec<u32>,
    bwd_targets: Vec<u32>,
    fheap: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32)>>,
    bheap: std::collections::BinaryHeap<(u64, u32)>,
    /// Work counters.
    stats: GraphStats,
}

impl Default for DepGraph {
    fn default() -> Self {
        Self::new()
    }
}

impl DepGraph {
    /// An empty graph.
    pub fn new() -> Self {
        DepGraph {
            index: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            edges: Vec::new(),
            free_edges: NIL,
            live_edges: 0,
            tarjan: Vec::new(),
            order: Order::new(),
            waiting: 0,
            epoch: 0,
            stack: Vec::new(),
            fwd: Vec::new(),
            bwd: Vec::new(),
            targets: Vec::new(),
            touched: Vec::new(),
            pool: Vec::new(),
            relabelled: Vec::new(),
            bwd_targets: Vec::new(),
            fheap: std::collections::BinaryHeap::new(),
            bheap: std::collections::BinaryHeap::new(),
            stats: GraphStats::default(),
        }
    }

    /// Emits one batch (one unit's emission).
    ///
    /// Precondition (the caller filters): no dep is Ready or failed. Deps may
    /// be nodes emitted in this same batch (intra-unit cycles), waiting nodes
    /// emitted earlier, or nodes never emitted. Self-deps are ignored. Pushes
    /// onto `ready` every node that became Ready because of this call (the
    /// batch's own defs and earlier waiting nodes), each once.
    ///
    /// A def that is already waiting from an earlier call is ignored (caller
    /// bug). A def listed in several groups of this batch gets the
    /// dependencies of all of them.
    pub fn emit(&mut self, groups: &[EmitGroup<'_>], ready: &mut Vec<NodeId>) {
        let batch = self.next_epoch();
        let mut touched = std::mem::take(&mut self.touched);
        let mut targets = std::mem::take(&mut self.targets);
        touched.clear();
        // One group without dependencies: no def can wait on another.
        let alone = groups.len() == 1 && groups[0].deps.is_empty();
        let bulk = self.bulk_mode(groups);
        for group in groups {
            // Which defs does this call emit? Skip (caller bug) defs that an
            // earlier call already emitted.
            let first_touched = touched.len();
            for &d in group.defs {
                if alone && self.slot_of(d).is_none() {
                    // Nothing to wait for and nobody waiting on it: Ready
                    // without ever taking a slot.
                    ready.push(d);
                    continue;
                }
                let s = self.ensure_slot(d);
                match self.slots[s as usize].kind {
                    Kind::Waiting if self.slots[s as usize].emitted_in != batch => continue,
                    _ => touched.push(s),
                }
            }
            let defs = first_touched..touched.len();
            if defs.is_empty() {
                continue;
            }
            targets.clear();
            for &t in group.deps {
                let s = self.ensure_slot(t);
                targets.push(s);
            }
            if defs.len() > 1 && targets.len() > 1 {
                // defs → hidden → deps: defs + deps edges, not defs × deps.
                let h = self.alloc_slot(0, true);
                if bulk.is_some() {
                    // Emitted first, so the defs' edges to it go straight
                    // to the out-lists instead of waiting as pending edges
                    // and moving when it is emitted (the order does not
                    // matter in bulk: the batch is laid out afterwards).
                    self.emit_node_unordered(h, &[], batch);
                }
                for i in defs {
                    let d = touched[i];
                    self.add_node(d, &[h], batch, bulk);
                }
                self.add_node(h, &targets, batch, bulk);
                touched.push(h);
            } else {
                for i in defs {
                    let d = touched[i];
                    self.add_node(d, &targets, batch, bulk);
                }
            }
        }
        if let Some(region) = bulk {
            self.rebuild(&touched, region);
        }
        // Readiness is decided once the whole batch is in.
        let queued = self.next_epoch();
        let mut queue = std::mem::take(&mut self.stack);
        queue.clear();
        for &s in &touched {
            let c = self.slots[s as usize].comp;
            let cs = &mut self.slots[c as usize];
            if cs.kind == Kind::Waiting
                && cs.len[OUT] == 0
                && cs.len[PEND] == 0
                && cs.mark[MARK_X] != queued
            {
                cs.mark[MARK_X] = queued;
                queue.push(c);
            }
        }
        self.cascade(&mut queue, ready);
        self.stack = queue;
        self.touched = touched;
        self.targets = targets;
    }

    /// Fails `nodes` (waiting or never emitted).
    ///
    /// Pushes `(dependant, root)` for every waiting node that transitively
    /// depends on one of them — `root` is one failed input it reaches — and
    /// removes them. Waiting nodes among `nodes` themselves are removed too and
    /// reported as `(n, n)`.
    pub fn fail(&mut self, nodes: &[NodeId], failed: &mut Vec<(NodeId, NodeId)>) {
        let ep = self.next_epoch();
        let mut visit = std::mem::take(&mut self.fwd);
        visit.clear();
        // Stamp the inputs (MARK_M) and seed the visit (MARK_X).
        for &n in nodes {
            let Some(s) = self.slot_of(n) else { continue };
            self.slots[s as usize].mark[MARK_M] = ep;
            let c = self.slots[s as usize].comp;
            let cs = &mut self.slots[c as usize];
            if cs.mark[MARK_X] != ep {
                cs.mark[MARK_X] = ep;
                cs.root = n;
                visit.push(c);
            }
        }
        // Everything that depends on them, backwards over in-edges.
        let mut i = 0;
        while i < visit.len() {
            let c = visit[i];
            i += 1;
            let root = self.slots[c as usize].root;
            let mut e = self.slots[c as usize].head[IN];
            for _ in 0..self.slots[c as usize].len[IN] {
                let edge = self.edges[e as usize];
                let s = self.slots[edge.ends[OUT] as usize].comp;
                let ss = &mut self.slots[s as usize];
                if ss.mark[MARK_X] != ep {
                    ss.mark[MARK_X] = ep;
                    ss.root = root;
                    visit.push(s);
                }
                e = edge.link[IN][0];
            }
        }
        // Report.
        for &c in &visit {
            let root = self.slots[c as usize].root;
            let mut m = self.slots[c as usize].members[0];
            while m != NIL {
                let ms = &self.slots[m as usize];
                if !ms.hidden && ms.kind == Kind::Waiting {
                    let r = if ms.mark[MARK_M] == ep { ms.node } else { root };
                    failed.push((ms.node, r));
                    self.waiting -= 1;
                }
                m = ms.next_member;
            }
        }
        // Remove: first every out-edge of a failed component (this also
        // covers every in-edge of one, since all dependants failed too), then
        // the slots.
        for &c in &visit {
            for list in [OUT, PEND] {
                let mut e = self.slots[c as usize].head[list];
                for _ in 0..self.slots[c as usize].len[list] {
                    let edge = self.edges[e as usize];
                    let next = edge.link[OUT][0];
                    let t = self.slots[edge.ends[IN] as usize].comp;
                    self.unlink_from(e, IN);
                    self.free_edge(e);
                    let ts = &self.slots[t as usize];
                    if ts.mark[MARK_X] != ep && ts.kind == Kind::Unemitted && ts.len[IN] == 0 {
                        // Nothing waits on this unemitted node any more.
                        self.free_slot(t);
                    }
                    e = next;
                }
                self.slots[c as usize].head[list] = NIL;
                self.slots[c as usize].len[list] = 0;
            }
        }
        for &c in &visit {
            if self.slots[c as usize].kind == Kind::Waiting {
                self.order.remove(self.slots[c as usize].pos);
            }
            self.free_component(c);
        }
        self.fwd = visit;
    }

    /// The work done so far (searches, visits, cycles, relabellings).
    pub fn stats(&self) -> GraphStats {
        GraphStats {
            relabels: self.order.relabels(),
            ..self.stats
        }
    }

    /// Whether `n` is emitted and not yet Ready (and not failed).
    pub fn is_waiting(&self, n: NodeId) -> bool {
        self.slot_of(n)
            .is_some_and(|s| self.slots[s as usize].kind == Kind::Waiting)
    }

    /// Whether the graph stores `n`: waiting, or never emitted but waited
    /// on. A node it does not store that is emitted without dependencies
    /// is Ready at once, so the caller may skip [`DepGraph::emit`] for it.
    pub fn stores(&self, n: NodeId) -> bool {
        self.slot_of(n).is_some()
    }

    /// Number of slots in use (real and hidden nodes stored), and the
    /// length of the id → slot index (one past the largest id seen).
    pub fn stored_len(&self) -> (usize, usize) {
        (self.slots.len() - self.free_slots.len(), self.index.len())
    }

    /// Number of waiting nodes.
    pub fn waiting_len(&self) -> usize {
        self.waiting
    }

    /// Up to `limit` never-emitted nodes that waiting node `n` transitively
    /// waits on (diagnostics and the engine's blocking-cycle detector use
    /// this). Empty if `n` is not waiting.
    pub fn blockers(&self, n: NodeId, limit: usize) -> Vec<NodeId> {
        let mut out = Vec::new();
        let Some(s) = self.slot_of(n) else { return out };
        if self.slots[s as usize].kind != Kind::Waiting || limit == 0 {
            return out;
        }
        let start = self.slots[s as usize].comp;
        let mut seen = std::collections::HashSet::new();
        seen.insert(start);
        let mut stack = vec![start];
        while let Some(c) = stack.pop() {
            for list in [OUT, PEND] {
                let mut e = self.slots[c as usize].head[list];
                for _ in 0..self.slots[c as usize].len[list] {
                    let edge = &self.edges[e as usize];
                    let t = self.slots[edge.ends[IN] as usize].comp;
                    if seen.insert(t) {
                        let ts = &self.slots[t as usize];
                        if ts.kind == Kind::Unemitted {
                            if !ts.hidden {
                                out.push(ts.node);
                                if out.len() >= limit {
                                    return out;
                                }
                            }
                        } else {
                            stack.push(t);
                        }
                    }
                    e = edge.link[OUT][0];
                }
            }
        }
        out
    }

    /// Checks the internal invariants and describes the first one broken.
    ///
    /// For tests (including the property tests of this crate); it walks the
    /// whole graph. The invariants: every component's member and edge lists are
    /// consistent with its counts, no edge is internal to a component, every
    /// edge between waiting components goes from a smaller label to a larger
    /// one, the label map holds exactly the waiting components, and every
    /// stored unemitted node has a waiting dependant.
    #[doc(hidden)]
    pub fn validate(&self) -> Result<(), String> {
        let mut waiting = 0;
        for (i, s) in self.slots.iter().enumerate() {
            let i = i as u32;
            if s.kind == Kind::Free {
                continue;
            }
            if !s.hidden && self.slot_of(s.node) != Some(i) {
                return Err(format!("slot {i} (node {}) not indexed", s.node));
            }
            if s.kind == Kind::Waiting && !s.hidden {
                waiting += 1;
            }
            let rep = &self.slots[s.comp as usize];
            if rep.comp != s.comp || rep.kind != s.kind {
                return Err(format!("slot {i}: bad representative {}", s.comp));
            }
            if s.comp == i {
                self.validate_component(i)?;
            }
        }
        self.validate_order()?;
        if waiting != self.waiting {
            return Err(format!(
                "{waiting} waiting nodes, counter says {}",
                self.waiting
            ));
        }
        Ok(())
    }

    /// [`DepGraph::validate`] of component `i` (a representative): its
    /// members, its place by kind, and its edge lists.
    fn validate_component(&self, i: u32) -> Result<(), String> {
        let s = &self.slots[i as usize];
        let mut n = 0;
        let mut m = s.members[0];
        while m != NIL {
            if self.slots[m as usize].comp != i {
                return Err(format!("member {m} of {i} points to another component"));
            }
            n += 1;
            if m == s.members[1] && self.slots[m as usize].next_member != NIL {
                return Err(format!("component {i}: tail {m} has a successor"));
            }
            m = self.slots[m as usize].next_member;
        }
        if n != s.size {
            return Err(format!("component {i}: {n} members, size {}", s.size));
        }
        match s.kind {
            Kind::Waiting => {
                if s.pos == NIL || self.order.comp(s.pos) != i || self.order.label(s.pos) != s.label
                {
                    return Err(format!("component {i}: not at its position {}", s.pos));
                }
            }
            Kind::Unemitted => {
                if s.len[OUT] != 0 || s.len[PEND] != 0 || s.len[IN] == 0 {
                    return Err(format!("unemitted {i}: {:?} edges", s.len));
                }
            }
            Kind::Free => {}
        }
        for list in [OUT, IN, PEND] {
            self.validate_edges(i, list)?;
        }
        Ok(())
    }

    /// [`DepGraph::validate`] of component `i`'s edge list `list`: linked
    /// both ways, as long as its count, every edge leaving the component
    /// from a waiting one, labels increasing along it.
    fn validate_edges(&self, i: u32, list: usize) -> Result<(), String> {
        let s = &self.slots[i as usize];
        let dir = dir_of(list);
        let mut e = s.head[list];
        for _ in 0..s.len[list] {
            let edge = &self.edges[e as usize];
            let next = edge.link[dir][0];
            if self.edges[next as usize].link[dir][1] != e {
                return Err(format!("edge {e}: broken list {dir}"));
            }
            let here = self.slots[edge.ends[dir] as usize].comp;
            let there = self.slots[edge.ends[1 - dir] as usize].comp;
            if here != i || there == i {
                return Err(format!("edge {e} in list {dir} of {i}: {here}, {there}"));
            }
            let (a, b) = if dir == OUT {
                (here, there)
            } else {
                (there, here)
            };
            let (sa, sb) = (&self.slots[a as usize], &self.slots[b as usize]);
            if sa.kind != Kind::Waiting {
                return Err(format!("edge {e} from a non-waiting component"));
            }
            if sb.kind == Kind::Waiting && sa.label >= sb.label {
                return Err(format!("edge {e}: label {} -> {}", sa.label, sb.label));
            }
            if list != IN && (list == OUT) != (sb.kind == Kind::Waiting) {
                return Err(format!("edge {e} in out-list {list}: target {:?}", sb.kind));
            }
            e = next;
        }
        if s.len[list] > 0 && e != s.head[list] {
            return Err(format!("component {i}: list {list} longer than its count"));
        }
        Ok(())
    }

    /// [`DepGraph::validate`] of the topological order: labels increasing,
    /// each position its component's, exactly the waiting components.
    fn validate_order(&self) -> Result<(), String> {
        let waiting_reps = self
            .slots
            .iter()
            .enumerate()
            .filter(|&(i, s)| s.kind == Kind::Waiting && s.comp as usize == i)
            .count();
        let mut prev = None;
        let mut positions = 0;
        for (p, label, c) in self.order.iter() {
            if prev.is_some_and(|l| l >= label) {
                return Err(format!("position {p}: label {label} not increasing"));
            }
            if self.slots[c as usize].pos != p {
                return Err(format!("position {p}: component {c} is elsewhere"));
            }
            prev = Some(label);
            positions += 1;
        }
        if positions != self.order.len() || waiting_reps != self.order.len() {
            return Err(format!(
                "{waiting_reps} components, {} labels",
                self.order.len()
            ));
        }
        Ok(())
    }

    /// Number of live edges (tests check that groups do not cost defs × deps).
    #[cfg(test)]
    fn edge_count(&self) -> usize {
        self.slots
            .iter()
            .enumerate()
            .filter(|&(i, s)| s.kind == Kind::Waiting && s.comp as usize == i)
            .map(|(_, s)| (s.len[OUT] + s.len[PEND]) as usize)
            .sum()
    }

    // ----- slots -------------------------------------------------------------

    fn slot_of(&self, n: NodeId) -> Option<u32> {
        let s = *self.index.get(n as usize)?;
        (s != NIL).then_some(s)
    }

    /// The slot of `n`, created as an unemitted node if absent.
    fn ensure_slot(&mut self, n: NodeId) -> u32 {
        if let Some(s) = self.slot_of(n) {
            return s;
        }
        let s = self.alloc_slot(n, false);
        let i = n as usize;
        if self.index.len() <= i {
            self.index.resize(i + 1, NIL);
        }
        self.index[i] = s;
        s
    }

    /// A fresh unemitted slot forming its own component.
    fn alloc_slot(&mut self, node: NodeId, hidden: bool) -> u32 {
        let s = match self.free_slots.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|&s| s != NIL)
                    .unwrap_or_else(|| panic!("kiln dependency graph: more than 2^32-1 slots"));
                self.slots.push(Slot {
                    node,
                    kind: Kind::Free,
                    hidden,
                    comp: s,
                    next_member: NIL,
                    mark: [0; 4],
                    emitted_in: 0,
                    label: 0,
                    pos: NIL,
                    size: 1,
                    members: [s, s],
                    head: [NIL; 3],
                    len: [0; 3],
                    root: 0,
                });
                s
            }
        };
        let slot = &mut self.slots[s as usize];
        slot.node = node;
        slot.kind = Kind::Unemitted;
        slot.hidden = hidden;
        slot.comp = s;
        slot.next_member = NIL;
        slot.emitted_in = 0;
        slot.label = 0;
        slot.size = 1;
        slot.members = [s, s];
        slot.head = [NIL; 3];
        slot.len = [0; 3];
        s
    }

    fn free_slot(&mut self, s: u32) {
        let slot = &mut self.slots[s as usize];
        if !slot.hidden
            && let Some(i) = self.index.get_mut(slot.node as usize)
        {
            *i = NIL;
        }
        slot.kind = Kind::Free;
        self.free_slots.push(s);
    }

    /// Frees every member of component `c` (its edges must be gone).
    fn free_component(&mut self, c: u32) {
        let mut m = self.slots[c as usize].members[0];
        while m != NIL {
            let next = self.slots[m as usize].next_member;
            self.free_slot(m);
            m = next;
        }
    }

    /// A fresh epoch for marks; on wrap-around every mark is cleared.
    fn next_epoch(&mut self) -> u32 {
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            // `emitted_in` is left alone: a stale match only hides a caller
            // bug (a second emission), and a batch must keep its own stamp.
            for s in &mut self.slots {
                s.mark = [0; 4];
            }
            self.epoch = 1;
        }
        self.epoch
    }

    // ----- edges -------------------------------------------------------------

    /// Adds edge `src → dst` to both components' lists: the source's `out`
    /// list (`OUT` if the target is waiting, `PEND` if not).
    #[inline]
    fn add_edge(&mut self, src: u32, dst: u32, out: usize) -> u32 {
        let edge = Edge {
            ends: [src, dst],
            link: [[NIL; 2]; 2],
        };
        let e = if self.free_edges != NIL {
            let e = self.free_edges;
            self.free_edges = self.edges[e as usize].link[OUT][0];
            self.edges[e as usize] = edge;
            e
        } else {
            let e = u32::try_from(self.edges.len())
                .ok()
                .filter(|&e| e != NIL)
                .unwrap_or_else(|| panic!("kiln dependency graph: more than 2^32-1 edges"));
            self.edges.push(edge);
            e
        };
        self.link_to(e, out);
        self.link_to(e, IN);
        self.live_edges += 1;
        e
    }

    /// Appends `e` to list `list` of its end's component.
    fn link_to(&mut self, e: u32, list: usize) {
        let dir = dir_of(list);
        let c = self.slots[self.edges[e as usize].ends[dir] as usize].comp as usize;
        let head = self.slots[c].head[list];
        if head == NIL {
            self.edges[e as usize].link[dir] = [e, e];
            self.slots[c].head[list] = e;
        } else {
            let tail = self.edges[head as usize].link[dir][1];
            self.edges[e as usize].link[dir] = [head, tail];
            self.edges[tail as usize].link[dir][0] = e;
            self.edges[head as usize].link[dir][1] = e;
        }
        self.slots[c].len[list] += 1;
    }

    /// Removes `e` from list `list` of its end's component.
    fn unlink_from(&mut self, e: u32, list: usize) {
        let dir = dir_of(list);
        let c = self.slots[self.edges[e as usize].ends[dir] as usize].comp as usize;
        let [next, prev] = self.edges[e as usize].link[dir];
        if next == e {
            self.slots[c].head[list] = NIL;
        } else {
            self.edges[prev as usize].link[dir][0] = next;
            self.edges[next as usize].link[dir][1] = prev;
            if self.slots[c].head[list] == e {
                self.slots[c].head[list] = next;
            }
        }
        self.slots[c].len[list] -= 1;
    }

    fn free_edge(&mut self, e: u32) {
        self.live_edges -= 1;
        self.edges[e as usize].link[OUT][0] = self.free_edges;
        self.free_edges = e;
    }

    // ----- emission ----------------------------------------------------------

    /// Emits `v` with edges to `targets`: incrementally (placed, the order
    /// repaired by a search), or, in a bulk batch, only its edges (the
    /// batch ends with [`Self::rebuild`]).
    #[inline]
    fn add_node(&mut self, v: u32, targets: &[u32], batch: u32, bulk: Option<bool>) {
        if bulk.is_some() {
            self.emit_node_unordered(v, targets, batch);
        } else {
            self.emit_node(v, targets, batch);
        }
    }

    /// Whether to emit a batch in bulk — edges first, then one pass
    /// ([`Self::rebuild`]) instead of a search per node — and over which
    /// part of the graph: `Some(true)` for the region the batch reaches,
    /// `Some(false)` for the whole graph, `None` for incremental emission.
    ///
    /// A batch of at least [`BULK_MIN`] defs plus deps goes in bulk when
    /// what its dependencies reach among the waiting components costs at
    /// most [`BULK_RATIO`] times its size (checked by a bounded search), or
    /// when it brings at least `1/BULK_RATIO` of the stored slots plus
    /// edges. Either way the pass costs `O(BULK_RATIO)` per emitted edge or
    /// node. Small batches (the engine's usual one-symbol emits) stay
    /// incremental.
    fn bulk_mode(&mut self, groups: &[EmitGroup<'_>]) -> Option<bool> {
        let size: usize = match groups {
            [one] => one.defs.len() + one.deps.len(),
            _ => groups.iter().map(|g| g.defs.len() + g.deps.len()).sum(),
        };
        if size < BULK_MIN {
            return None;
        }
        let budget = size.saturating_mul(BULK_RATIO);
        if self.reach_within(groups, budget) {
            Some(true)
        } else if budget >= self.slots.len() + self.live_edges {
            Some(false)
        } else {
            None
        }
    }

    /// Whether the waiting components the groups' dependencies reach (over
    /// out-edges) number, with the edges scanned, at most `budget`.
    #[inline(never)]
    fn reach_within(&mut self, groups: &[EmitGroup<'_>], budget: usize) -> bool {
        let seen = self.next_epoch();
        let mut stack = std::mem::take(&mut self.pool);
        stack.clear();
        let mut cost = 0usize;
        for g in groups {
            for &t in g.deps {
                let Some(s) = self.slot_of(t) else { continue };
                let c = self.slots[s as usize].comp;
                let cs = &mut self.slots[c as usize];
                if cs.kind == Kind::Waiting && cs.mark[MARK_X] != seen {
                    cs.mark[MARK_X] = seen;
                    stack.push(c);
                }
            }
        }
        while let Some(c) = stack.pop() {
            cost += 1 + self.slots[c as usize].len[OUT] as usize;
            if cost > budget {
                break;
            }
            let mut e = self.slots[c as usize].head[OUT];
            for _ in 0..self.slots[c as usize].len[OUT] {
                let edge = self.edges[e as usize];
                e = edge.link[OUT][0];
                let w = self.slots[edge.ends[IN] as usize].comp;
                if self.slots[w as usize].mark[MARK_X] != seen {
                    self.slots[w as usize].mark[MARK_X] = seen;
                    stack.push(w);
                }
            }
        }
        self.stats.scanned += cost as u64;
        stack.clear();
        self.pool = stack;
        cost <= budget
    }

    /// Emits slot `v` (or adds edges to it, if this batch already emitted
    /// it) with edges to `targets`, leaving it out of the order: a bulk
    /// batch's [`Self::rebuild`] places every component afterwards.
    #[inline(never)]
    fn emit_node_unordered(&mut self, v: u32, targets: &[u32], batch: u32) {
        if self.slots[v as usize].kind == Kind::Unemitted {
            let slot = &mut self.slots[v as usize];
            slot.kind = Kind::Waiting;
            slot.emitted_in = batch;
            slot.pos = NIL;
            if !slot.hidden {
                self.waiting += 1;
            }
            let mut e = self.slots[v as usize].head[IN];
            for _ in 0..self.slots[v as usize].len[IN] {
                let next = self.edges[e as usize].link[IN][0];
                self.unlink_from(e, PEND);
                self.link_to(e, OUT);
                e = next;
            }
        }
        let cv = self.slots[v as usize].comp;
        for &t in targets {
            let ct = self.slots[t as usize].comp;
            if t == v || ct == cv {
                continue;
            }
            let waiting = self.slots[ct as usize].kind == Kind::Waiting;
            self.add_edge(v, t, if waiting { OUT } else { PEND });
        }
    }

    /// After a bulk batch: finds the strongly connected components of the
    /// waiting components the batch reaches (`region`), or of all of them
    /// (Tarjan's algorithm, iterative, over out-edges), contracts each cycle
    /// into its biggest component, and lays those components out at the end
    /// of the order, dependants first. `touched` holds the batch's slots
    /// (the only ones not in the order yet).
    ///
    /// Moving the reached components behind all others keeps every edge
    /// pointing forwards: nothing they reach stays behind (the set is
    /// closed under out-edges), and edges into it from outside now point to
    /// the end.
    #[inline(never)]
    fn rebuild(&mut self, touched: &[u32], region: bool) {
        self.stats.searches += 1;
        let mut roots: Vec<u32> = Vec::with_capacity(touched.len());
        if !region {
            let mut p = self.order.next_of(NIL);
            while p != NIL {
                roots.push(self.order.comp(p));
                p = self.order.next(p);
            }
        }
        for &t in touched {
            let c = self.slots[t as usize].comp;
            if c == t
                && self.slots[c as usize].kind == Kind::Waiting
                && self.slots[c as usize].pos == NIL
            {
                roots.push(c);
            }
        }
        let (sccs, ends) = self.tarjan(&roots);
        // The reached components leave the order and come back at its end.
        for &c in &sccs {
            let pos = self.slots[c as usize].pos;
            if pos != NIL {
                self.order.remove(pos);
                self.slots[c as usize].pos = NIL;
            }
        }
        let mut reps: Vec<u32> = Vec::with_capacity(ends.len());
        let mut start = 0;
        for &end in &ends {
            let scc = &sccs[start..end];
            start = end;
            let rep = *scc
                .iter()
                .max_by_key(|&&c| {
                    let cs = &self.slots[c as usize];
                    cs.size as u64 + cs.len.iter().map(|&l| u64::from(l)).sum::<u64>()
                })
                .unwrap_or(&scc[0]);
            if scc.len() > 1 {
                self.stats.cycles += 1;
                self.contract(scc, rep);
            }
            reps.push(rep);
        }
        // Tarjan lists dependencies first; the order wants dependants first.
        reps.reverse();
        let slots = &mut self.slots;
        self.order
            .insert_run(self.order.last(), NIL, &reps, |i, p| {
                slots[reps[i] as usize].pos = p;
            });
        for &c in &reps {
            let pos = self.slots[c as usize].pos;
            self.slots[c as usize].label = self.order.label(pos);
        }
        self.refresh_labels();
    }

    /// Tarjan's strongly connected components of the waiting components
    /// reached from `roots` over out-edges: the components of each SCC
    /// consecutively in the first vector, each SCC ending at the next entry
    /// of the second, dependencies before dependants. Costs the components
    /// and edges reached.
    #[inline(never)]
    fn tarjan(&mut self, roots: &[u32]) -> (Vec<u32>, Vec<usize>) {
        let seen = self.next_epoch();
        if self.tarjan.len() < self.slots.len() {
            self.tarjan.resize(self.slots.len(), [NIL; 2]);
        }
        let mut stack: Vec<u32> = Vec::new();
        // The depth-first path: (component, next out-edge, out-edges left).
        let mut frames: Vec<(u32, u32, u32)> = Vec::new();
        let (mut sccs, mut ends) = (Vec::with_capacity(roots.len()), Vec::new());
        let mut next_index = 0u32;
        let mut scanned = 0u64;
        let tarjan = &mut self.tarjan;
        let mut enter = |slots: &mut [Slot],
                         c: u32,
                         frames: &mut Vec<(u32, u32, u32)>,
                         stack: &mut Vec<u32>,
                         tarjan: &mut [[u32; 2]]| {
            let cs = &mut slots[c as usize];
            cs.mark[MARK_X] = seen;
            tarjan[c as usize] = [next_index, next_index];
            next_index += 1;
            stack.push(c);
            frames.push((c, cs.head[OUT], cs.len[OUT]));
        };
        for &root in roots {
            if self.slots[root as usize].mark[MARK_X] == seen {
                continue;
            }
            enter(&mut self.slots, root, &mut frames, &mut stack, tarjan);
            while let Some(frame) = frames.last_mut() {
                let c = frame.0;
                if frame.2 > 0 {
                    let edge = self.edges[frame.1 as usize];
                    frame.1 = edge.link[OUT][0];
                    frame.2 -= 1;
                    scanned += 1;
                    let w = self.slots[edge.ends[IN] as usize].comp;
                    if self.slots[w as usize].mark[MARK_X] != seen {
                        enter(&mut self.slots, w, &mut frames, &mut stack, tarjan);
                    } else if tarjan[w as usize][1] != NIL {
                        // On the stack: w's SCC is not out yet.
                        let index = tarjan[w as usize][0];
                        let low = &mut tarjan[c as usize][1];
                        *low = (*low).min(index);
                    }
                    continue;
                }
                frames.pop();
                let [index, low] = tarjan[c as usize];
                if let Some(&(parent, _, _)) = frames.last() {
                    let pl = &mut tarjan[parent as usize][1];
                    *pl = (*pl).min(low);
                }
                if low == index {
                    while let Some(w) = stack.pop() {
                        tarjan[w as usize][1] = NIL;
                        sccs.push(w);
                        if w == c {
                            break;
                        }
                    }
                    ends.push(sccs.len());
                }
            }
        }
        self.stats.scanned += scanned;
        (sccs, ends)
    }

    /// Emits slot `v` (or, if this batch already emitted it through another
    /// group, adds edges) with edges to `targets`, then repairs the order
    /// for all of the new edges that point backwards with one search.
    fn emit_node(&mut self, v: u32, targets: &[u32], batch: u32) {
        if self.slots[v as usize].kind == Kind::Unemitted {
            let slot = &mut self.slots[v as usize];
            slot.kind = Kind::Waiting;
            slot.emitted_in = batch;
            if !slot.hidden {
                self.waiting += 1;
            }
            // Its dependants' edges to it now point at a waiting node.
            let mut e = self.slots[v as usize].head[IN];
            for _ in 0..self.slots[v as usize].len[IN] {
                let next = self.edges[e as usize].link[IN][0];
                self.unlink_from(e, PEND);
                self.link_to(e, OUT);
                e = next;
            }
            self.place(v, targets);
        }
        let cv = self.slots[v as usize].comp;
        let lv = self.slots[cv as usize].label;
        let seen = self.next_epoch();
        let mut back = std::mem::take(&mut self.bwd_targets);
        back.clear();
        for &t in targets {
            let ct = self.slots[t as usize].comp;
            if t == v || ct == cv {
                continue;
            }
            let waiting = self.slots[ct as usize].kind == Kind::Waiting;
            self.add_edge(v, t, if waiting { OUT } else { PEND });
            let ts = &mut self.slots[ct as usize];
            if waiting && ts.label < lv && ts.mark[MARK_M] != seen {
                ts.mark[MARK_M] = seen;
                back.push(ct);
            }
        }
        if !back.is_empty() {
            self.reorder(cv, &back);
        }
        self.bwd_targets = back;
    }

    /// Gives freshly emitted `v` (its own component, in-edges from waiting
    /// dependants, about to get edges to `targets`) a label that needs no
    /// search when possible.
    fn place(&mut self, v: u32, targets: &[u32]) {
        // Highest label among dependants, lowest among waiting dependencies.
        let mut after: Option<(u64, u32)> = None;
        let mut e = self.slots[v as usize].head[IN];
        for _ in 0..self.slots[v as usize].len[IN] {
            let edge = self.edges[e as usize];
            let c = self.slots[edge.ends[OUT] as usize].comp;
            let l = self.slots[c as usize].label;
            if after.is_none_or(|(a, _)| l > a) {
                after = Some((l, c));
            }
            e = edge.link[IN][0];
        }
        let mut before: Option<(u64, u32)> = None;
        for &t in targets {
            let c = self.slots[t as usize].comp;
            let cs = &self.slots[c as usize];
            if cs.kind == Kind::Waiting && c != v && before.is_none_or(|(b, _)| cs.label < b) {
                before = Some((cs.label, c));
            }
        }
        let pos = match (after, before) {
            // Right behind the last dependant: if a dependency comes earlier,
            // the search window is as small as it can be.
            (Some((_, a)), _) => self.order.insert_after(self.slots[a as usize].pos, v),
            // Right before the first dependency.
            (None, Some((_, b))) => self.order.insert_before(self.slots[b as usize].pos, v),
            (None, None) => self.order.push_front(v),
        };
        self.slots[v as usize].pos = pos;
        self.slots[v as usize].label = self.order.label(pos);
        self.refresh_labels();
    }

    /// After the order relabelled some positions, copies their new labels
    /// into the components.
    fn refresh_labels(&mut self) {
        let mut relabelled = std::mem::take(&mut self.relabelled);
        relabelled.extend(self.order.take_relabelled());
        for &p in &relabelled {
            let c = self.order.comp(p);
            self.slots[c as usize].label = self.order.label(p);
        }
        relabelled.clear();
        self.relabelled = relabelled;
    }

    /// Restores the topological order after new edges from `x` to the
    /// components `ys` (all waiting, labelled below `x`), contracting the
    /// cycle if they closed one.
    fn reorder(&mut self, x: u32, ys: &[u32]) {
        self.stats.searches += 1;
        self.two_way(x, ys);
    }

    /// The new SCC once the edges `x → ys` are in (the components on paths
    /// `y ⇝ x`), after a [`Self::two_way`] search with epoch `ep` found a
    /// cycle and ran to its stop. Such a component is a descendant of a y
    /// and an ancestor of x; labelled at most b* it was fully expanded
    /// forwards (it is below f*), above b* fully expanded backwards. So the
    /// SCC lies in `fwd ∪ bwd ∪ {x}`, and two passes over the edges the
    /// search already scanned find it: a forward-expanded component reaches x
    /// if it was discovered backwards or one of its successors reaches x
    /// (successors come later in the order: descending pass); a
    /// backward-expanded one is reached from the ys if it was discovered
    /// forwards or one of its predecessors is (ascending pass). One component
    /// escapes both: the lowest y, when the backward search ran out while the
    /// forward one was still scanning it. It is in the SCC if it reaches x,
    /// and then the backward search went through one of its edges and marked
    /// it (`step_backward`).
    fn scc_of(
        &mut self,
        x: u32,
        ys: &[u32],
        fwd: &mut [u32],
        bwd: &mut [u32],
        ep: u32,
    ) -> Vec<u32> {
        // MARK_M: "reaches x" besides MARK_B; MARK_X: "reached" besides MARK_F.
        fwd.sort_unstable_by_key(|&c| std::cmp::Reverse(self.slots[c as usize].label));
        bwd.sort_unstable_by_key(|&c| self.slots[c as usize].label);
        let mut scc = vec![x];
        for &y in ys {
            let m = self.slots[y as usize].mark;
            if m[MARK_B] == ep || m[MARK_M] == ep {
                scc.push(y);
            }
        }
        for &c in fwd.iter() {
            if self.joins_scc(c, OUT, [MARK_B, MARK_M], ep) {
                scc.push(c);
            }
        }
        for &c in bwd.iter() {
            if self.joins_scc(c, IN, [MARK_F, MARK_X], ep) {
                scc.push(c);
            }
        }
        scc.sort_unstable();
        scc.dedup();
        scc
    }

    /// One step of [`Self::scc_of`]'s passes over component `c`, whose
    /// edges in direction `dir` (OUT: successors, IN: predecessors) the
    /// search scanned: `c` is in the SCC if it carries `marks[0]` (found
    /// by the search from the other side) or a neighbour that way carries
    /// either mark; then it gets `marks[1]` ("in the SCC", for the
    /// components after it in the pass).
    fn joins_scc(&mut self, c: u32, dir: usize, marks: [usize; 2], ep: u32) -> bool {
        let other_end = 1 - dir;
        let mut joins = self.slots[c as usize].mark[marks[0]] == ep;
        let mut e = self.slots[c as usize].head[dir];
        for _ in 0..self.slots[c as usize].len[dir] {
            if joins {
                break;
            }
            self.stats.scanned += 1;
            let edge = self.edges[e as usize];
            e = edge.link[dir][0];
            let n = &self.slots[self.slots[edge.ends[other_end] as usize].comp as usize];
            joins = n.mark[marks[0]] == ep || n.mark[marks[1]] == ep;
        }
        if joins {
            self.slots[c as usize].mark[marks[1]] = ep;
        }
        joins
    }

    /// Contracts the components `scc` (waiting, strongly connected) into
    /// `rep`, which already stands where the merged component belongs (see
    /// [`Self::move_run`]); the others are already out of the order. Their
    /// edges inside the SCC are deleted, the rest move to `rep`'s lists; no
    /// edge can point backwards. Only the components other than `rep` are
    /// touched, so `rep` should be the one with the most members and edges.
    fn contract(&mut self, scc: &[u32], rep: u32) {
        let ep = self.next_epoch();
        for &c in scc {
            self.slots[c as usize].mark[MARK_M] = ep;
        }
        let mut relink = std::mem::take(&mut self.pool);
        relink.clear();
        for &c in scc {
            if c == rep {
                continue;
            }
            for list in [OUT, IN, PEND] {
                let dir = dir_of(list);
                while self.slots[c as usize].head[list] != NIL {
                    let e = self.slots[c as usize].head[list];
                    let o = self.slots[self.edges[e as usize].ends[1 - dir] as usize].comp;
                    self.unlink_from(e, list);
                    if list != PEND && self.slots[o as usize].mark[MARK_M] == ep {
                        // Internal: drop it from the other end's list too.
                        self.unlink_from(e, if list == IN { OUT } else { IN });
                        self.free_edge(e);
                    } else {
                        relink.push(e);
                        relink.push(list as u32);
                    }
                }
            }
            let mut m = self.slots[c as usize].members[0];
            while m != NIL {
                self.slots[m as usize].comp = rep;
                m = self.slots[m as usize].next_member;
            }
            let (first, last, size) = {
                let cs = &self.slots[c as usize];
                (cs.members[0], cs.members[1], cs.size)
            };
            let tail = self.slots[rep as usize].members[1];
            self.slots[tail as usize].next_member = first;
            let r = &mut self.slots[rep as usize];
            r.members[1] = last;
            r.size += size;
        }
        for pair in relink.chunks_exact(2) {
            self.link_to(pair[0], pair[1] as usize);
        }
        self.pool = relink;
    }

    /// Restores the order after edges `x → ys` (each `y` labelled below `x`)
    /// with a two-way search that visits the region in label order and stops
    /// as soon as the two frontiers cross (Haeupler, Kavitha, Mathew, Sen
    /// and Tarjan, *Incremental cycle detection, topological ordering, and
    /// strong component maintenance*, TALG 2012, §3). The two searches
    /// alternate single edge traversals, not node expansions, so the cost
    /// follows the smaller side's edges: a component with many edges (a big
    /// SCC that everything calls) is not scanned whole when the other side
    /// is small. The forward search starts from all the `ys` at once, so one
    /// search serves every new edge of `x`.
    ///
    /// If the edges close a cycle, the new SCC is contracted and placed with
    /// the rest (see [`Self::move_run`]).
    fn two_way(&mut self, x: u32, ys: &[u32]) {
        use std::cmp::Reverse;
        let ub = self.slots[x as usize].label;
        let lb = ys
            .iter()
            .map(|&y| self.slots[y as usize].label)
            .min()
            .unwrap_or(ub);
        let ep = self.next_epoch();
        let mut fheap = std::mem::take(&mut self.fheap);
        let mut bheap = std::mem::take(&mut self.bheap);
        let mut fwd = std::mem::take(&mut self.fwd);
        let mut bwd = std::mem::take(&mut self.bwd);
        fheap.clear();
        bheap.clear();
        fwd.clear();
        bwd.clear();
        for &y in ys {
            self.slots[y as usize].mark[MARK_F] = ep;
            fheap.push(Reverse((self.slots[y as usize].label, y)));
        }
        self.slots[x as usize].mark[MARK_B] = ep;
        bheap.push((ub, x));
        // The component each side is scanning: (component, next edge, edges
        // left). A component counts as expanded once all its edges are.
        let mut fcur: Option<(u32, u32, u32)> = None;
        let mut bcur: Option<(u32, u32, u32)> = None;
        let label = |g: &Self, c: u32| g.slots[c as usize].label;
        let mut forward = true;
        let mut cycle = false;
        // Invariant: every descendant of a y labelled below the live forward
        // frontier is expanded (fwd), every ancestor of x labelled above the
        // live backward frontier too (bwd).
        loop {
            let fl = fcur.map(|c| c.0).or(fheap.peek().map(|r| r.0.1));
            let bl = bcur.map(|c| c.0).or(bheap.peek().map(|&(_, c)| c));
            let (Some(f), Some(b)) = (fl, bl) else { break };
            if label(self, f) > label(self, b) {
                break;
            }
            if forward {
                let (c, e, left) = match fcur {
                    Some(cur) => cur,
                    None => {
                        fheap.pop();
                        let cs = &self.slots[f as usize];
                        (f, cs.head[OUT], cs.len[OUT])
                    }
                };
                fcur = if left == 0 {
                    fwd.push(c);
                    None
                } else {
                    self.stats.scanned += 1;
                    cycle |= self.step_forward(e, ub, ep, &mut fheap);
                    Some((c, self.edges[e as usize].link[OUT][0], left - 1))
                };
            } else {
                let (c, e, left) = match bcur {
                    Some(cur) => cur,
                    None => {
                        bheap.pop();
                        let cs = &self.slots[b as usize];
                        (b, cs.head[IN], cs.len[IN])
                    }
                };
                bcur = if left == 0 {
                    bwd.push(c);
                    None
                } else {
                    self.stats.scanned += 1;
                    cycle |= self.step_backward(e, lb, ep, &mut bheap);
                    Some((c, self.edges[e as usize].link[IN][0], left - 1))
                };
            }
            forward = !forward;
        }
        self.stats.visited += (fwd.len() + bwd.len()) as u64;
        // The pivot: right after the live backward frontier b*, or just
        // before the live forward one f* if the backward search is done.
        let bl = bcur.map(|c| c.0).or(bheap.peek().map(|&(_, c)| c));
        let fl = fcur.map(|c| c.0).or(fheap.peek().map(|r| r.0.1));
        let pivot = match (bl, fl) {
            (Some(b), _) => Some((label(self, b), self.slots[b as usize].pos)),
            (None, Some(f)) => Some((
                label(self, f) - 1,
                self.order.prev(self.slots[f as usize].pos),
            )),
            (None, None) => None,
        };
        let scc = if cycle {
            self.stats.cycles += 1;
            Some(self.scc_of(x, ys, &mut fwd, &mut bwd, ep))
        } else {
            None
        };
        self.move_run(pivot, &mut fwd, &mut bwd, scc.as_deref());
        self.fheap = fheap;
        self.bheap = bheap;
        self.fwd = fwd;
        self.bwd = bwd;
    }

    /// One forward edge `e` of the search: pushes its target if waiting and
    /// labelled below `ub`. Returns whether the target is an ancestor of x
    /// (a cycle; the search goes on to bound the region the SCC lies in).
    fn step_forward(
        &mut self,
        e: u32,
        ub: u64,
        ep: u32,
        fheap: &mut std::collections::BinaryHeap<std::cmp::Reverse<(u64, u32)>>,
    ) -> bool {
        let d = self.slots[self.edges[e as usize].ends[IN] as usize].comp;
        let ds = &mut self.slots[d as usize];
        if ds.label < ub && ds.mark[MARK_F] != ep {
            ds.mark[MARK_F] = ep;
            fheap.push(std::cmp::Reverse((ds.label, d)));
        }
        ds.mark[MARK_B] == ep
    }

    /// One backward edge `e` of the search: pushes its source if labelled
    /// above `lb`. Returns whether the source is a descendant of a y.
    fn step_backward(
        &mut self,
        e: u32,
        lb: u64,
        ep: u32,
        bheap: &mut std::collections::BinaryHeap<(u64, u32)>,
    ) -> bool {
        let s = self.slots[self.edges[e as usize].ends[OUT] as usize].comp;
        let ss = &mut self.slots[s as usize];
        if ss.label > lb && ss.mark[MARK_B] != ep {
            ss.mark[MARK_B] = ep;
            bheap.push((ss.label, s));
        }
        if ss.mark[MARK_F] == ep {
            // It reaches x even if it is the lowest y, never discovered
            // backwards (see `scc_of`).
            ss.mark[MARK_M] = ep;
            return true;
        }
        false
    }

    /// Second half of [`Self::two_way`]: with the frontiers crossed at the
    /// pivot (`after`, a label, and `start`, the position at or before
    /// which the run goes), moves the expanded ancestors of x above the
    /// pivot and the expanded descendants of the ys at or below it into one
    /// run at the pivot: first the ancestors, then the descendants, each in
    /// their old order. Nothing else needs to move: an unexpanded ancestor
    /// of x is labelled at most the pivot, an unexpanded descendant of a y
    /// above it.
    ///
    /// If the edges closed a cycle, every component of the new SCC (`scc`)
    /// is among the moved ones (or is x itself, unexpanded at b*). The SCC is
    /// contracted into one component placed between the ancestors and the
    /// descendants: no ancestor outside the SCC is a descendant of it, no
    /// descendant outside it an ancestor of it, and no edge goes from such a
    /// descendant to such an ancestor (it would put both in the SCC). So
    /// every edge of the contracted graph points forwards, and contraction
    /// needs no further search.
    fn move_run(
        &mut self,
        pivot: Option<(u64, u32)>,
        fwd: &mut Vec<u32>,
        bwd: &mut Vec<u32>,
        scc: Option<&[u32]>,
    ) {
        let label = |slots: &[Slot], c: u32| slots[c as usize].label;
        // (No pivot is not reached: the search stops while one side is
        // live.) Then pivot after the last expanded descendant.
        let (after, start) = match pivot {
            Some(p) => p,
            None => {
                let Some(&m) = fwd.iter().max_by_key(|&&c| label(&self.slots, c)) else {
                    return;
                };
                (label(&self.slots, m), self.slots[m as usize].pos)
            }
        };
        let moving = self.next_epoch();
        let mut rep = NIL;
        if let Some(scc) = scc {
            let weight = |s: &Slot| {
                s.size as u64 + s.len[OUT] as u64 + s.len[IN] as u64 + s.len[PEND] as u64
            };
            for &c in scc {
                self.slots[c as usize].mark[MARK_X] = moving;
                if rep == NIL || weight(&self.slots[c as usize]) > weight(&self.slots[rep as usize])
                {
                    rep = c;
                }
            }
        }
        let slots = &self.slots;
        let in_scc = |c: u32| slots[c as usize].mark[MARK_X] == moving;
        fwd.retain(|&c| label(slots, c) <= after && !in_scc(c));
        bwd.retain(|&c| label(slots, c) > after && !in_scc(c));
        fwd.sort_unstable_by_key(|&c| label(slots, c));
        bwd.sort_unstable_by_key(|&c| label(slots, c));
        // Anchor: the last position at or before `start` that stays.
        for &c in fwd.iter().chain(bwd.iter()) {
            self.slots[c as usize].mark[MARK_X] = moving;
        }
        let stays = |g: &Self, p: u32| g.slots[g.order.comp(p) as usize].mark[MARK_X] != moving;
        let mut anchor = start;
        while anchor != order::NIL && !stays(self, anchor) {
            anchor = self.order.prev(anchor);
        }
        let mut next = self.order.next_of(anchor);
        while next != order::NIL && !stays(self, next) {
            next = self.order.next(next);
        }
        let mut run = std::mem::take(&mut self.stack);
        run.clear();
        run.extend(bwd.iter().copied());
        if let Some(scc) = scc {
            for &c in scc {
                if c != rep {
                    self.order.remove(self.slots[c as usize].pos);
                }
            }
            run.push(rep);
        }
        run.extend(fwd.iter().copied());
        for &c in &run {
            self.order.remove(self.slots[c as usize].pos);
        }
        let mut positions = std::mem::take(&mut self.pool);
        positions.clear();
        self.order
            .insert_run(anchor, next, &run, |_, p| positions.push(p));
        for (&c, &p) in run.iter().zip(positions.iter()) {
            self.slots[c as usize].pos = p;
        }
        for &p in &positions {
            let c = self.order.comp(p);
            self.slots[c as usize].label = self.order.label(p);
        }
        self.refresh_labels();
        self.stack = run;
        self.pool = positions;
        if let Some(scc) = scc {
            self.contract(scc, rep);
        }
    }

    /// Makes every component in `queue` Ready (their out-lists are empty),
    /// and every component that becomes Ready as a consequence.
    fn cascade(&mut self, queue: &mut Vec<u32>, ready: &mut Vec<NodeId>) {
        while let Some(c) = queue.pop() {
            // Its dependants lose one pending edge each.
            let mut e = self.slots[c as usize].head[IN];
            for _ in 0..self.slots[c as usize].len[IN] {
                let edge = self.edges[e as usize];
                let next = edge.link[IN][0];
                let s = self.slots[edge.ends[OUT] as usize].comp;
                // `c` is waiting: the edge is in its source's out-list.
                self.unlink_from(e, OUT);
                self.free_edge(e);
                let ss = &self.slots[s as usize];
                if ss.len[OUT] == 0 && ss.len[PEND] == 0 {
                    queue.push(s);
                }
                e = next;
            }
            self.order.remove(self.slots[c as usize].pos);
            let mut m = self.slots[c as usize].members[0];
            while m != NIL {
                let ms = &self.slots[m as usize];
                let next = ms.next_member;
                if !ms.hidden {
                    ready.push(ms.node);
                    self.waiting -= 1;
                }
                self.free_slot(m);
                m = next;
            }
        }
    }
}
