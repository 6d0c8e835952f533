//! The topological order of waiting components: a doubly linked list of
//! positions carrying sparse `u64` labels (an order-maintenance list).
//!
//! Comparing two components is comparing their labels. New positions (one,
//! or a run) go between two neighbours, spread over the gap between their
//! labels; when a gap is used up, [`Order::make_room`] spreads a neighbourhood
//! that doubles until it has room (Dietz and Sleator's relabelling idea,
//! without their worst-case density thresholds).

/// "No position".
pub(super) const NIL: u32 = u32::MAX;
/// Distance between consecutive labels after a relabelling and between
/// labels placed at the front or back; leaves room for 24 nested placements
/// between two neighbours.
const STRIDE: u64 = 1 << 24;
/// The label of the first position.
const MID: u64 = 1 << 63;
/// The smallest spacing [`Order::make_room`] settles for (unless it spreads
/// the whole list).
const MIN_STEP: u64 = 1 << 16;

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
    /// Positions whose label changed since [`Self::take_relabelled`].
    relabelled: Vec<u32>,
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
            relabelled: Vec::new(),
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

    /// A new position for `c` between `prev` and `next` (neighbours, either
    /// may be `NIL` for an end) with `label`.
    fn link(&mut self, prev: u32, next: u32, label: u64, c: u32) -> u32 {
        let p = Pos {
            label,
            prev,
            next,
            comp: c,
        };
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

    /// The positions whose labels changed since the last call (the caller
    /// refreshes the labels it caches).
    pub(super) fn take_relabelled(&mut self) -> std::vec::Drain<'_, u32> {
        self.relabelled.drain(..)
    }

    /// The last position (`NIL` if the list is empty).
    pub(super) fn last(&self) -> u32 {
        self.last
    }

    /// A position for `c` in front of every other.
    pub(super) fn push_front(&mut self, c: u32) -> u32 {
        self.insert_one(NIL, self.first, c)
    }

    /// A position for `c` right after `p`.
    pub(super) fn insert_after(&mut self, p: u32, c: u32) -> u32 {
        self.insert_one(p, self.pos[p as usize].next, c)
    }

    /// A position for `c` right before `p`.
    pub(super) fn insert_before(&mut self, p: u32, c: u32) -> u32 {
        self.insert_one(self.pos[p as usize].prev, p, c)
    }

    fn insert_one(&mut self, anchor: u32, next: u32, c: u32) -> u32 {
        let mut out = [NIL];
        self.insert_run(anchor, next, &[c], |i, p| out[i] = p);
        out[0]
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

    /// Inserts a run of positions for `comps`, in that order, between
    /// `anchor` and `next` (neighbours; `NIL` for an end), relabelling a
    /// neighbourhood first if the labels leave no room. `placed(i, p)` is told
    /// the position of `comps[i]`.
    pub(super) fn insert_run(
        &mut self,
        anchor: u32,
        next: u32,
        comps: &[u32],
        mut placed: impl FnMut(usize, u32),
    ) {
        let (lo, step) = match self.run_labels(anchor, next, comps.len()) {
            Some(r) => r,
            None => {
                self.make_room(anchor, next, comps.len());
                // make_room leaves at least one step per new position.
                self.run_labels(anchor, next, comps.len()).unwrap_or((0, 0))
            }
        };
        debug_assert!(step > 0, "no room after make_room");
        let mut prev = anchor;
        for (i, &c) in comps.iter().enumerate() {
            let p = self.link(prev, next, lo + step * (i as u64 + 1), c);
            placed(i, p);
            prev = p;
        }
    }

    /// Relabels a window of positions around the gap between `anchor` and
    /// `next` (neighbours; `NIL` for an end) so that a run of `k` positions
    /// fits there. The window doubles until its labels can be spread at least
    /// `MIN_STEP` apart (or it is the whole list), so its cost is about the
    /// size of the crowded neighbourhood.
    pub(super) fn make_room(&mut self, anchor: u32, next: u32, k: usize) {
        let (mut first, mut last, mut count) = match (anchor, next) {
            (NIL, NIL) => return,
            (NIL, n) => (n, n, 1u64),
            (a, NIL) => (a, a, 1),
            (a, n) => (a, n, 2),
        };
        let k = k as u64;
        loop {
            let before = self.pos[first as usize].prev;
            let after = self.pos[last as usize].next;
            let lo = if before == NIL { 0 } else { self.label(before) };
            let hi = if after == NIL {
                u64::MAX
            } else {
                self.label(after)
            };
            let step = (hi - lo) / (count + k + 1);
            if step >= MIN_STEP || (before == NIL && after == NIL) {
                // Spread the window, leaving k steps free right after the
                // anchor (at the start if the run goes to the front).
                let mut i = if anchor == NIL { k } else { 0 };
                let mut p = first;
                loop {
                    i += 1;
                    self.pos[p as usize].label = lo + step * i;
                    self.relabelled.push(p);
                    if p == anchor {
                        i += k;
                    }
                    if p == last {
                        break;
                    }
                    p = self.pos[p as usize].next;
                }
                self.relabels += 1;
                return;
            }
            let grow = count;
            for _ in 0..grow {
                let b = self.pos[first as usize].prev;
                if b != NIL {
                    first = b;
                    count += 1;
                }
                let a = self.pos[last as usize].next;
                if a != NIL {
                    last = a;
                    count += 1;
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use super::{NIL, Order};

    /// Labels strictly increase along the list and the count matches.
    fn check(o: &Order) -> Vec<u32> {
        let items: Vec<(u32, u64, u32)> = o.iter().collect();
        assert_eq!(items.len(), o.len());
        for w in items.windows(2) {
            assert!(w[0].1 < w[1].1, "labels {} !< {}", w[0].1, w[1].1);
        }
        items.iter().map(|&(_, _, c)| c).collect()
    }

    #[test]
    fn nested_insertions_make_room() {
        let mut o = Order::new();
        let a = o.push_front(0);
        let b = o.insert_after(a, 1);
        // Always between `a` and the last inserted: halves the gap each time.
        let mut prev = b;
        for c in 2..2000 {
            prev = o.insert_before(prev, c);
        }
        assert!(o.relabels() > 0);
        let order = check(&o);
        let mut expected = vec![0];
        expected.extend((2..2000).rev());
        expected.push(1);
        assert_eq!(order, expected);
        let _ = o.take_relabelled().count();
    }

    #[test]
    fn runs_and_both_ends() {
        let mut o = Order::new();
        let mut first = o.push_front(0);
        for c in 1..300 {
            first = o.push_front(c);
        }
        let mut placed = Vec::new();
        // Large runs into the same gap, many times.
        for round in 0..50u32 {
            let comps: Vec<u32> = (0..64).map(|i| 1000 + round * 64 + i).collect();
            o.insert_run(first, o.next_of(first), &comps, |_, p| placed.push(p));
        }
        let mut last = NIL;
        for (p, _, _) in o.iter() {
            last = p;
        }
        o.insert_run(last, NIL, &[7777], |_, _| {});
        o.insert_run(NIL, o.next_of(NIL), &[8888], |_, _| {});
        let order = check(&o);
        assert_eq!(order.len(), 300 + 50 * 64 + 2);
        assert_eq!(order[0], 8888);
        assert_eq!(*order.last().unwrap_or(&0), 7777);
        for p in placed {
            o.remove(p);
        }
        assert_eq!(check(&o).len(), 302);
    }
}
