//! The topological order of waiting components: a doubly linked list of
//! positions carrying sparse `u64` labels (a simple order-maintenance list).
//!
//! A position belongs to one component at a time; reordering moves components
//! between existing positions, so labels never need to be searched for.
//! New positions go to either end or halfway between two neighbours; when a
//! gap is used up the caller relabels the whole list (amortized against the
//! placements since the last relabelling).

/// "No position".
pub(super) const NIL: u32 = u32::MAX;
/// Distance between consecutive labels after a relabelling and between
/// labels placed at the front or back; leaves room for 24 nested placements
/// between two neighbours.
const STRIDE: u64 = 1 << 24;
/// The label of the first position.
const MID: u64 = 1 << 63;

/// One position of the list.
#[derive(Debug, Clone, Copy)]
struct Pos {
    label: u64,
    prev: u32,
    next: u32,
    /// The component at this position.
    comp: u32,
}

/// The list. Positions of removed components are reused.
#[derive(Debug)]
pub(super) struct Order {
    pos: Vec<Pos>,
    free: Vec<u32>,
    first: u32,
    last: u32,
    len: usize,
    /// Placements since the last relabelling.
    placed: usize,
    /// Set by [`Self::relabel`], cleared by [`Self::take_relabelled`].
    relabelled: bool,
    /// Number of relabellings.
    relabels: u64,
}

impl Order {
    pub(super) fn new() -> Self {
        Order {
            pos: Vec::new(),
            free: Vec::new(),
            first: NIL,
            last: NIL,
            len: 0,
            placed: 0,
            relabelled: false,
            relabels: 0,
        }
    }

    /// Number of live positions.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn label(&self, p: u32) -> u64 {
        self.pos[p as usize].label
    }

    pub(super) fn comp(&self, p: u32) -> u32 {
        self.pos[p as usize].comp
    }

    /// Moves component `c` to position `p`.
    pub(super) fn set_comp(&mut self, p: u32, c: u32) {
        self.pos[p as usize].comp = c;
    }

    /// Whether a relabelling now would be paid for by the placements since the
    /// last one.
    pub(super) fn relabel_is_due(&self) -> bool {
        self.placed >= self.len
    }

    /// Counts a placement (for [`Self::relabel_is_due`]).
    pub(super) fn count_placement(&mut self) {
        self.placed += 1;
    }

    /// A new position for `c` between `prev` and `next` (neighbours, either
    /// may be `NIL` for an end) with `label`.
    fn link(&mut self, prev: u32, next: u32, label: u64, c: u32) -> u32 {
        let p = Pos { label, prev, next, comp: c };
        let i = match self.free.pop() {
            Some(i) => {
                self.pos[i as usize] = p;
                i
            }
            None => {
                let i = u32::try_from(self.pos.len())
                    .ok()
                    .filter(|&i| i != NIL)
                    .unwrap_or_else(|| panic!("kiln dependency graph: more than 2^32-1 positions"));
                self.pos.push(p);
                i
            }
        };
        match prev {
            NIL => self.first = i,
            _ => self.pos[prev as usize].next = i,
        }
        match next {
            NIL => self.last = i,
            _ => self.pos[next as usize].prev = i,
        }
        self.len += 1;
        i
    }

    /// Removes position `p`.
    pub(super) fn remove(&mut self, p: u32) {
        let Pos { prev, next, .. } = self.pos[p as usize];
        match prev {
            NIL => self.first = next,
            _ => self.pos[prev as usize].next = next,
        }
        match next {
            NIL => self.last = prev,
            _ => self.pos[next as usize].prev = prev,
        }
        self.len -= 1;
        self.free.push(p);
    }

    /// Number of relabellings so far.
    pub(super) fn relabels(&self) -> u64 {
        self.relabels
    }

    /// Whether labels changed since the last call (the caller refreshes the
    /// labels it caches).
    pub(super) fn take_relabelled(&mut self) -> bool {
        std::mem::take(&mut self.relabelled)
    }

    /// A position for `c` in front of every other (may relabel).
    pub(super) fn push_front(&mut self, c: u32) -> u32 {
        if self.first == NIL {
            return self.link(NIL, NIL, MID, c);
        }
        if self.label(self.first) < 2 * STRIDE {
            self.relabel();
        }
        let l = self.label(self.first) - STRIDE;
        self.link(NIL, self.first, l, c)
    }

    /// A position for `c` behind every other (may relabel).
    pub(super) fn push_back(&mut self, c: u32) -> u32 {
        if self.last == NIL {
            return self.link(NIL, NIL, MID, c);
        }
        if self.label(self.last) > u64::MAX - 2 * STRIDE {
            self.relabel();
        }
        let l = self.label(self.last) + STRIDE;
        self.link(self.last, NIL, l, c)
    }

    /// A position for `c` right after `p`, if the labels leave room.
    pub(super) fn insert_after(&mut self, p: u32, c: u32) -> Option<u32> {
        let next = self.pos[p as usize].next;
        if next == NIL {
            return Some(self.push_back(c));
        }
        let (a, b) = (self.label(p), self.label(next));
        (b - a >= 2).then(|| self.link(p, next, a + (b - a) / 2, c))
    }

    /// A position for `c` right before `p`, if the labels leave room.
    pub(super) fn insert_before(&mut self, p: u32, c: u32) -> Option<u32> {
        let prev = self.pos[p as usize].prev;
        if prev == NIL {
            return Some(self.push_front(c));
        }
        let (a, b) = (self.label(prev), self.label(p));
        (b - a >= 2).then(|| self.link(prev, p, a + (b - a) / 2, c))
    }

    /// The position before `p` (`NIL` at the front).
    pub(super) fn prev(&self, p: u32) -> u32 {
        self.pos[p as usize].prev
    }

    /// The position after `p`; `next_of(NIL)` is the first position.
    pub(super) fn next_of(&self, p: u32) -> u32 {
        match p {
            NIL => self.first,
            _ => self.pos[p as usize].next,
        }
    }

    /// The position after `p` (`NIL` at the back).
    pub(super) fn next(&self, p: u32) -> u32 {
        self.pos[p as usize].next
    }

    /// The labels of a run of `k` positions between `anchor` and `next`
    /// (either may be `NIL` for an end): the first label and the step, if
    /// there is room.
    fn run_labels(&self, anchor: u32, next: u32, k: usize) -> Option<(u64, u64)> {
        let k = k as u64;
        let span = (k + 1).checked_mul(STRIDE)?;
        let (lo, hi) = match (anchor, next) {
            (NIL, NIL) => (MID - STRIDE, MID.checked_add(k.checked_mul(STRIDE)?)?),
            (NIL, n) => {
                let h = self.label(n);
                (h.saturating_sub(span), h)
            }
            (a, NIL) => {
                let l = self.label(a);
                (l, l.saturating_add(span))
            }
            (a, n) => (self.label(a), self.label(n)),
        };
        let step = (hi - lo) / (k + 1);
        (step > 0).then_some((lo, step))
    }

    /// Whether a run of `k` positions fits between `anchor` and `next`.
    pub(super) fn run_fits(&self, anchor: u32, next: u32, k: usize) -> bool {
        self.run_labels(anchor, next, k).is_some()
    }

    /// Inserts a run of positions for `comps`, in that order, between
    /// `anchor` and `next` (neighbours; `NIL` for an end), appending them to
    /// `out`. The caller checked [`Self::run_fits`].
    pub(super) fn insert_run(&mut self, anchor: u32, next: u32, comps: &[u32], out: &mut Vec<u32>) {
        let Some((lo, step)) = self.run_labels(anchor, next, comps.len()) else {
            debug_assert!(false, "insert_run without room");
            return;
        };
        let mut prev = anchor;
        for (i, &c) in comps.iter().enumerate() {
            let p = self.link(prev, next, lo + step * (i as u64 + 1), c);
            out.push(p);
            prev = p;
        }
    }

    /// Spreads all labels `STRIDE` apart around `MID`, keeping the order.
    /// The caller must refresh the labels it caches (see
    /// [`Self::take_relabelled`]).
    pub(super) fn relabel(&mut self) {
        self.relabelled = true;
        self.relabels += 1;
        let base = MID - (self.len as u64 / 2) * STRIDE;
        let mut p = self.first;
        let mut l = base;
        while p != NIL {
            self.pos[p as usize].label = l;
            l += STRIDE;
            p = self.pos[p as usize].next;
        }
        self.placed = 0;
    }

    /// The positions in order, as `(position, label, component)`.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, u64, u32)> + '_ {
        let mut p = self.first;
        std::iter::from_fn(move || {
            if p == NIL {
                return None;
            }
            let here = self.pos[p as usize];
            let item = (p, here.label, here.comp);
            p = here.next;
            Some(item)
        })
    }
}
