//! The symbol records, by id, in chunks that never move.
//!
//! A contiguous `Vec` doubles when it is full: a session holding 22k
//! records that defines a few more copied all of them into fresh pages
//! (about 12 % of the synth link's page faults under an allocator whose
//! `realloc` copies), and one block above the mmap threshold is mapped
//! fresh by every session. Here the first chunk
//! grows geometrically up to [`CHUNK`] records, and every later chunk is
//! allocated at that size once: growing copies nothing, and each chunk
//! (64 KiB) stays under glibc's smallest mmap threshold, so its pages come
//! from the heap and are reused after a session ends instead of being
//! mapped fresh.

use std::ops::{Index, IndexMut};

use super::Sym;
use crate::actor::SymId;

/// Records per chunk, as a power of two.
const CHUNK_BITS: u32 = 10;
/// Records per chunk.
const CHUNK: usize = 1 << CHUNK_BITS;

/// Symbol records by id.
#[derive(Default)]
pub(super) struct SymRecords {
    /// Every chunk but the last is full (holds [`CHUNK`] records).
    chunks: Vec<Vec<Sym>>,
    /// Records in all chunks.
    len: usize,
}

impl SymRecords {
    /// How many records there are.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `more` records; only the first chunk can be
    /// short of room (later ones are allocated full size). The first chunk
    /// at least doubles when it grows: many small defines (a unit of ten
    /// symbols each) grew it by exactly what each asked and copied it
    /// every time.
    pub(super) fn reserve(&mut self, more: usize) {
        if self.chunks.len() <= 1 {
            let first = self.first_chunk();
            let need = first.len() + more;
            if need > first.capacity() {
                let want = need.max(first.capacity() * 2).min(CHUNK);
                first.reserve_exact(want.saturating_sub(first.len()));
            }
        }
    }

    /// Stores `sym` in the last record of `free` (the ids given back), or
    /// appends it; its id, and the record.
    #[inline]
    pub(super) fn store(&mut self, free: &mut Vec<SymId>, sym: Sym) -> (SymId, &Sym) {
        let at = match free.pop() {
            Some(sid) => {
                self[sid as usize] = sym;
                sid as usize
            }
            None => self.push(sym),
        };
        let sid =
            SymId::try_from(at).unwrap_or_else(|_| unreachable!("more than 2^32 live symbols"));
        (sid, &self[at])
    }

    /// Appends `sym`, returning its index.
    #[inline]
    pub(super) fn push(&mut self, sym: Sym) -> usize {
        let at = self.len;
        match self.chunks.last_mut() {
            Some(last) if last.len() < last.capacity() => last.push(sym),
            _ => self.push_to_new_room(sym),
        }
        self.len += 1;
        at
    }

    /// [`SymRecords::push`] when the last chunk has no room left: the
    /// first chunk doubles (up to [`CHUNK`]); after that, a new chunk.
    #[cold]
    fn push_to_new_room(&mut self, sym: Sym) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => {
                let want = (last.capacity() * 2).clamp(4, CHUNK);
                last.reserve_exact(want - last.len());
                last.push(sym);
            }
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(sym);
                self.chunks.push(chunk);
            }
            None => self.chunks.push(vec![sym]),
        }
    }

    fn first_chunk(&mut self) -> &mut Vec<Sym> {
        if self.chunks.is_empty() {
            self.chunks.push(Vec::new());
        }
        &mut self.chunks[0]
    }
}

impl Index<usize> for SymRecords {
    type Output = Sym;
    fn index(&self, at: usize) -> &Sym {
        &self.chunks[at >> CHUNK_BITS][at & (CHUNK - 1)]
    }
}

impl IndexMut<usize> for SymRecords {
    fn index_mut(&mut self, at: usize) -> &mut Sym {
        &mut self.chunks[at >> CHUNK_BITS][at & (CHUNK - 1)]
    }
}

#[cfg(test)]
mod tests {
    use smallvec::SmallVec;

    use super::{CHUNK, Sym, SymRecords};
    use crate::actor::state::SlabKey;
    use crate::name::SymbolName;
    use crate::symbol::{SymbolFlags, SymbolState};

    fn record(address: u64) -> Sym {
        Sym {
            dylib: 0,
            name: SymbolName::unnamed(),
            flags: SymbolFlags::NONE,
            state: SymbolState::Lazy,
            address,
            unit: SlabKey::NONE,
            resp: SlabKey::NONE,
            tracker: 0,
            waiters: SmallVec::new(),
        }
    }

    /// Many small reservations (a define of ten symbols at a time) grow
    /// the first chunk geometrically, not by each reservation's size.
    #[test]
    fn small_reservations_grow_the_first_chunk_geometrically() {
        let mut r = SymRecords::default();
        let mut growths = 0;
        let mut capacity = 0;
        for i in 0..CHUNK / 10 {
            r.reserve(10);
            for j in 0..10 {
                r.push(record((i * 10 + j) as u64));
            }
            if r.chunks[0].capacity() != capacity {
                capacity = r.chunks[0].capacity();
                growths += 1;
            }
        }
        assert!(growths <= 8, "the first chunk grew {growths} times");
    }

    /// Records never move once their chunk is full (growing past it
    /// copies none of them), and no chunk holds more than `CHUNK` records.
    #[test]
    fn growing_moves_no_record() {
        let mut r = SymRecords::default();
        r.reserve(3);
        let mut firsts = Vec::new();
        for i in 0..(2 * CHUNK + 5) {
            assert_eq!(r.push(record(i as u64)), i);
            if i % CHUNK == CHUNK - 1 {
                // A full chunk (the first one grew to get there).
                firsts.push((i + 1 - CHUNK, &r[i + 1 - CHUNK] as *const Sym));
            }
            for &(at, ptr) in &firsts {
                assert!(std::ptr::eq(&r[at], ptr), "record {at} moved at {i}");
            }
        }
        assert_eq!(r.len(), 2 * CHUNK + 5);
        assert!(r.chunks.iter().all(|c| c.capacity() <= CHUNK));
        for i in [0, CHUNK - 1, CHUNK, 2 * CHUNK + 4] {
            assert_eq!(r[i].address, i as u64);
        }
        r[CHUNK].address = 7;
        assert_eq!(r[CHUNK].address, 7);
    }
}
