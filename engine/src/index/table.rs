//! The lock-free table behind [`ReadIndex`]: see the module above.

use super::{Claim, IndexEntry, Probe};
use crate::name::SymbolName;
use crate::symbol::{SymbolDef, SymbolFlags};
use crate::sync::{AtomicU32, AtomicU64, AtomicUsize, OnceLock, Ordering};

/// Low 32 bits of a slot's word: the entry's flags and state bits.
const FLAGS_MASK: u64 = 0xff;
const READY: u64 = 1 << 8;
const PRESENT: u64 = 1 << 9;
/// High 32 bits: the sequence number, odd while the writer changes the slot.
const SEQ_ONE: u64 = 1 << 32;

/// The writer's value of a slot a definition in progress claimed (its key
/// set, no entry yet): see [`ReadIndex::claim`]. Never a symbol id (ids
/// index the engine's records, far fewer).
const PENDING: u32 = u32::MAX;

/// Largest load factor, as numerator over 8: misses probe until an empty
/// slot, and lookups through a link order miss in most dylibs.
const MAX_LOAD_EIGHTHS: usize = 5;

/// Tables a dylib's index can grow through: the first holds 16 slots, each
/// next one twice as many.
const GENERATIONS: usize = 48;

/// The index of one dylib.
pub(crate) struct ReadIndex {
    /// Which of `tables` is live. Only the writer advances it.
    live: AtomicUsize,
    /// Every table this index has had. Earlier ones stay allocated until the
    /// index drops, because a reader may still be probing them.
    tables: [OnceLock<Table>; GENERATIONS],
    /// Keys in the live table (present or not). Only the writer touches it.
    used: AtomicUsize,
    /// The writer's last search — it looks one name up several times in a
    /// row (a lookup's search, the definition a generator makes, Ready) —
    /// as the key, the table's generation, and the slot the search ended
    /// at: the key's, or the empty one where it would go. Keys never leave
    /// a table, so that empty slot stays the first one on the key's probe
    /// path until something fills it. Only the writer touches these.
    memo_key: AtomicUsize,
    memo_generation: AtomicUsize,
    memo_index: AtomicUsize,
}

struct Table {
    mask: usize,
    slots: Box<[Slot]>,
}

/// 32 bytes, aligned: a slot never straddles two cache lines, so a probe
/// costs at most one miss per slot (24 unaligned bytes cost a second miss
/// for a third of the slots, measured on W1 with batches of 100).
#[repr(C, align(32))]
struct Slot {
    /// The name's pointer, 0 while empty. Written once.
    key: AtomicUsize,
    /// Sequence number and flags, see the constants above.
    word: AtomicU64,
    address: AtomicU64,
    /// The writer's own value for the name (the engine's symbol id), read
    /// only by the writer: the index doubles as the actor's name table.
    sym: AtomicU32,
}

impl Table {
    fn with_capacity(slots: usize) -> Table {
        debug_assert!(slots.is_power_of_two());
        Table {
            mask: slots - 1,
            slots: (0..slots)
                .map(|_| Slot {
                    key: AtomicUsize::new(0),
                    word: AtomicU64::new(0),
                    address: AtomicU64::new(0),
                    sym: AtomicU32::new(0),
                })
                .collect(),
        }
    }

    /// Fibonacci hashing of the pointer: allocations are aligned, so the low
    /// bits alone would cluster. (Mixing the pointer better shortens probes
    /// — 6 to 1.9 on W6's names — but scatters names interned together,
    /// which a plain multiply keeps near each other: W1 lost a quarter.)
    fn home(&self, key: usize) -> usize {
        let bits = self.slots.len().trailing_zeros();
        if bits == 0 {
            return 0;
        }
        ((key as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - bits)) as usize
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: usize) -> (&Slot, bool) {
        let (i, found) = self.find_index(key);
        (&self.slots[i], found)
    }

    /// [`Table::find`], by index.
    fn find_index(&self, key: usize) -> (usize, bool) {
        let mut i = self.home(key);
        loop {
            match self.slots[i].key.load(Ordering::Acquire) {
                k if k == key => return (i, true),
                0 => return (i, false),
                _ => i = (i + 1) & self.mask,
            }
        }
    }
}

impl Slot {
    /// Reads a consistent entry (or reports the writer's interference).
    fn read(&self) -> Probe {
        let before = self.word.load(Ordering::Acquire);
        let address = self.address.load(Ordering::Acquire);
        // If `address` came from a write in progress, the writer's odd
        // sequence store happened before it and this load sees it.
        let after = self.word.load(Ordering::Relaxed);
        if before != after || before & SEQ_ONE != 0 {
            return Probe::Busy;
        }
        if before & PRESENT == 0 {
            return Probe::Absent;
        }
        Probe::Found(IndexEntry {
            def: SymbolDef::new(address, SymbolFlags::from_bits((before & FLAGS_MASK) as u8)),
            ready: before & READY != 0,
        })
    }

    /// Writer only: replaces the entry under the sequence protocol.
    fn write(&self, entry: Option<IndexEntry>) {
        let word = self.word.load(Ordering::Relaxed);
        let seq = word & !(SEQ_ONE - 1);
        self.word.store(
            seq.wrapping_add(SEQ_ONE) | (word & (SEQ_ONE - 1)),
            Ordering::Relaxed,
        );
        let bits = match entry {
            Some(e) => {
                self.address.store(e.def.address, Ordering::Release);
                PRESENT | u64::from(e.def.flags.bits()) | if e.ready { READY } else { 0 }
            }
            None => 0,
        };
        self.word
            .store(seq.wrapping_add(2 * SEQ_ONE) | bits, Ordering::Release);
    }

    fn entry(&self) -> Option<IndexEntry> {
        match self.read() {
            Probe::Found(e) => Some(e),
            _ => None,
        }
    }
}

impl ReadIndex {
    pub(crate) fn new() -> Self {
        let index = ReadIndex {
            live: AtomicUsize::new(0),
            tables: std::array::from_fn(|_| OnceLock::new()),
            used: AtomicUsize::new(0),
            memo_key: AtomicUsize::new(0),
            memo_generation: AtomicUsize::new(0),
            memo_index: AtomicUsize::new(0),
        };
        let _ = index.tables[0].set(Table::with_capacity(16));
        index
    }

    /// The live table; `None` only if a generation were published before
    /// its table, which the writer never does.
    fn live(&self) -> Option<&Table> {
        self.tables[self.live.load(Ordering::Acquire)].get()
    }

    /// The entry for `name`, read without blocking.
    pub(crate) fn get(&self, name: &SymbolName) -> Probe {
        let Some(table) = self.live() else {
            return Probe::Busy;
        };
        match table.find(name.key()) {
            (slot, true) => slot.read(),
            (_, false) => Probe::Absent,
        }
    }

    /// Loads the home slot of each name so the misses of a batch overlap
    /// instead of each waiting for the one before.
    pub(crate) fn warm<'a>(&self, names: impl Iterator<Item = &'a SymbolName>) {
        let Some(table) = self.live() else { return };
        let mut sink = 0usize;
        for name in names {
            sink ^= table.slots[table.home(name.key())]
                .key
                .load(Ordering::Relaxed);
        }
        std::hint::black_box(sink);
    }

    /// Writer only: defines or replaces `name`'s entry, and the writer's
    /// own value `sym` for it.
    pub(crate) fn set(&self, name: &SymbolName, entry: IndexEntry, sym: u32) {
        let key = name.key();
        // Everything here is the single writer's: a name the table has
        // changes in place, under the sequence word alone; a new one takes
        // the empty slot the search found, unless the table must grow first.
        let (table, mut slot, found) = self.writer_find(key);
        if found {
            slot.sym.store(sym, Ordering::Relaxed);
            slot.write(Some(entry));
            return;
        }
        if (self.used.load(Ordering::Relaxed) + 1) * 8 > table.slots.len() * MAX_LOAD_EIGHTHS {
            slot = self.grow().find(key).0;
        }
        slot.sym.store(sym, Ordering::Relaxed);
        slot.write(Some(entry));
        slot.key.store(key, Ordering::Release);
        self.used
            .store(self.used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    }

    /// Writer only: the value given with `name`'s entry, if it has one.
    /// Lock-free like a reader (the writer is the only one changing it).
    pub(crate) fn sym(&self, name: &SymbolName) -> Option<u32> {
        match self.writer_find(name.key()) {
            (_, slot, true) if slot.word.load(Ordering::Relaxed) & PRESENT != 0 => {
                Some(slot.sym.load(Ordering::Relaxed))
            }
            _ => None,
        }
    }

    /// Writer only: the live table and the slot holding `key` (or the empty
    /// slot where it would go), from the memo of the last search if it
    /// still holds.
    fn writer_find(&self, key: usize) -> (&Table, &Slot, bool) {
        let (table, index, found) = self.writer_find_index(key);
        (table, &table.slots[index], found)
    }

    /// [`ReadIndex::writer_find`], by slot index.
    fn writer_find_index(&self, key: usize) -> (&Table, usize, bool) {
        let generation = self.live.load(Ordering::Relaxed);
        let table = self.table_at(generation);
        if self.memo_key.load(Ordering::Relaxed) == key
            && self.memo_generation.load(Ordering::Relaxed) == generation
        {
            let index = self.memo_index.load(Ordering::Relaxed) & table.mask;
            match table.slots[index].key.load(Ordering::Relaxed) {
                k if k == key => return (table, index, true),
                0 => return (table, index, false),
                _ => {}
            }
        }
        let (index, found) = table.find_index(key);
        self.memo_key.store(key, Ordering::Relaxed);
        self.memo_generation.store(generation, Ordering::Relaxed);
        self.memo_index.store(index, Ordering::Relaxed);
        (table, index, found)
    }

    /// Writer only: one probe for a name a definition brings — what it
    /// finds there, and the slot the name is now sure to have. A name
    /// without a slot takes one now (its key, no entry: readers still find
    /// it absent), marked pending, so the same name met again in the same
    /// definition is [`Claim::Repeated`]. The definition then writes each
    /// claimed slot by its index ([`ReadIndex::set_at`]) or, refused,
    /// [`ReadIndex::release`]s them: a key stays, as a removed name's does.
    /// Room for the definition's names is made first
    /// ([`ReadIndex::reserve`]), so the indices handed out stay valid.
    pub(crate) fn claim(&self, name: &SymbolName) -> Claim {
        let key = name.key();
        let mut table = self.live_table();
        let (mut at, found) = table.find_index(key);
        if found {
            let slot = &table.slots[at];
            let sym = slot.sym.load(Ordering::Relaxed);
            if slot.word.load(Ordering::Relaxed) & PRESENT != 0 {
                return Claim::Defined { sym, at };
            }
            if sym == PENDING {
                return Claim::Repeated;
            }
            slot.sym.store(PENDING, Ordering::Relaxed);
            return Claim::New { at };
        }
        if (self.used.load(Ordering::Relaxed) + 1) * 8 > table.slots.len() * MAX_LOAD_EIGHTHS {
            table = self.grow();
            at = table.find_index(key).0;
        }
        let slot = &table.slots[at];
        slot.sym.store(PENDING, Ordering::Relaxed);
        // No entry yet: the slot's word says absent, so a reader finding
        // the key reads it as undefined.
        slot.key.store(key, Ordering::Release);
        self.used
            .store(self.used.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        Claim::New { at }
    }

    /// Writer only: [`ReadIndex::set`] into the slot `at` that
    /// [`ReadIndex::claim`] gave `name` (no probe); if the table grew since,
    /// by search.
    pub(crate) fn set_at(&self, at: usize, name: &SymbolName, entry: IndexEntry, sym: u32) {
        match self.live_table().slots.get(at) {
            Some(slot) if slot.key.load(Ordering::Relaxed) == name.key() => {
                slot.sym.store(sym, Ordering::Relaxed);
                slot.write(Some(entry));
            }
            _ => self.set(name, entry, sym),
        }
    }

    /// Writer only: a refused definition gives back the slot `at` it
    /// claimed for `name`: the key stays (absent, like a removed name's),
    /// no longer pending. A slot with an entry is left alone.
    pub(crate) fn release(&self, at: usize, name: &SymbolName) {
        let table = self.live_table();
        let slot = match table.slots.get(at) {
            Some(slot) if slot.key.load(Ordering::Relaxed) == name.key() => slot,
            _ => match self.writer_find(name.key()) {
                (_, slot, true) => slot,
                _ => return,
            },
        };
        if slot.word.load(Ordering::Relaxed) & PRESENT == 0 {
            slot.sym.store(0, Ordering::Relaxed);
        }
    }

    /// Loads the slots at `ats` (claimed ones), like [`ReadIndex::warm`].
    pub(crate) fn warm_at(&self, ats: impl Iterator<Item = usize>) {
        let table = self.live_table();
        let mut sink = 0usize;
        for at in ats {
            if let Some(slot) = table.slots.get(at) {
                sink ^= slot.key.load(Ordering::Relaxed);
            }
        }
        std::hint::black_box(sink);
    }

    /// Writer only: changes `name`'s entry in place; false if there is none.
    pub(crate) fn update(&self, name: &SymbolName, f: impl FnOnce(&mut IndexEntry)) -> bool {
        let (_, slot, true) = self.writer_find(name.key()) else {
            return false;
        };
        let Some(mut entry) = slot.entry() else {
            return false;
        };
        f(&mut entry);
        slot.write(Some(entry));
        true
    }

    /// Writer only: `name` is no longer defined here.
    pub(crate) fn remove(&self, name: &SymbolName) {
        if let (_, slot, true) = self.writer_find(name.key()) {
            slot.write(None);
        }
    }

    /// Writer only: nothing is defined here any more.
    pub(crate) fn clear(&self) {
        for slot in self.live_table().slots.iter() {
            if slot.key.load(Ordering::Relaxed) != 0 {
                slot.write(None);
            }
        }
    }

    /// The live table, for the (single) writer.
    fn live_table(&self) -> &Table {
        self.table_at(self.live.load(Ordering::Relaxed))
    }

    /// The table of `generation`, published already.
    fn table_at(&self, generation: usize) -> &Table {
        self.tables[generation]
            .get()
            .unwrap_or_else(|| unreachable!("generation {generation} published without a table"))
    }

    /// Writer only: makes room for `additional` new names (names without a
    /// slot yet: see [`ReadIndex::claim`]) at once, so a definition of
    /// N names grows the table (copying every entry) at most once instead
    /// of once per doubling.
    pub(crate) fn reserve(&self, additional: usize) {
        let table = self.live_table();
        let needed = self.used.load(Ordering::Relaxed).saturating_add(additional);
        if needed.saturating_mul(8) <= table.slots.len() * MAX_LOAD_EIGHTHS {
            return;
        }
        let mut slots = table.slots.len() * 2;
        while needed.saturating_mul(8) > slots * MAX_LOAD_EIGHTHS {
            slots *= 2;
        }
        self.grow_to(slots);
    }

    /// Copies the present entries (and pending claims) into the next
    /// generation, twice the size,
    /// and publishes it.
    fn grow(&self) -> &Table {
        self.grow_to(self.live_table().slots.len() * 2)
    }

    /// Copies the present entries into the next generation, of `slots`
    /// slots (a power of two larger than the live table's), and publishes it.
    fn grow_to(&self, slots: usize) -> &Table {
        let generation = self.live.load(Ordering::Relaxed);
        let old = self.live_table();
        debug_assert!(slots > old.slots.len());
        let new = Table::with_capacity(slots);
        let mut present = 0;
        for slot in old.slots.iter() {
            let key = slot.key.load(Ordering::Relaxed);
            if key == 0 {
                continue;
            }
            let sym = slot.sym.load(Ordering::Relaxed);
            let entry = slot.entry();
            // Present entries move, and so do keys a definition in progress
            // claimed (no entry yet); removed names' keys are dropped.
            if entry.is_some() || sym == PENDING {
                let (to, _) = new.find(key);
                to.sym.store(sym, Ordering::Relaxed);
                if entry.is_some() {
                    to.write(entry);
                }
                to.key.store(key, Ordering::Relaxed);
                present += 1;
            }
        }
        let next = generation + 1;
        assert!(
            next < GENERATIONS,
            "a dylib's index outgrew 2^{} slots",
            GENERATIONS + 3
        );
        let _ = self.tables[next].set(new);
        // Release: a reader that sees the new generation sees its contents.
        self.live.store(next, Ordering::Release);
        self.used.store(present, Ordering::Relaxed);
        self.live_table()
    }
}

impl Default for ReadIndex {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReadIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadIndex")
            .field("slots", &self.live().map_or(0, |t| t.slots.len()))
            .finish()
    }
}

#[cfg(all(test, not(kiln_loom)))]
mod tests {
    use super::*;
    use crate::index::Claim;
    use crate::name::Interner;

    /// Reserving room first and setting one by one agree: every name is
    /// found with its entry and value, before and after more growth.
    #[test]
    fn reserve_then_set_finds_every_name() {
        let pool = Interner::default();
        for (before, batch) in [(0, 1000), (5, 3), (100, 20_000), (13, 0)] {
            let index = ReadIndex::new();
            let names: Vec<_> = (0..before + batch)
                .map(|i| pool.intern(&format!("r{before}_{i}")))
                .collect();
            for (i, n) in names[..before].iter().enumerate() {
                index.set(n, entry(i as u64, false), i as u32);
            }
            index.reserve(batch);
            let slots = index.live_table().slots.len();
            for (i, n) in names.iter().enumerate().skip(before) {
                index.set(n, entry(i as u64, i % 2 == 0), i as u32);
            }
            assert_eq!(
                index.live_table().slots.len(),
                slots,
                "no growth after reserve"
            );
            // Names removed and defined again keep their slots: their
            // claims find them. Room reserved for all of them may grow the
            // table once; defining them again never grows it again.
            let mut after_first = 0;
            for round in 0..3 {
                for n in &names {
                    index.remove(n);
                }
                index.reserve(names.len());
                let reserved = index.live_table().slots.len();
                for (i, n) in names.iter().enumerate() {
                    let Claim::New { at } = index.claim(n) else {
                        panic!("{n}: removed, so new");
                    };
                    index.set_at(at, n, entry(i as u64, i % 2 == 0), i as u32);
                }
                assert_eq!(index.live_table().slots.len(), reserved);
                if round == 0 {
                    after_first = reserved;
                    assert!(reserved <= 2 * slots.max(16), "grown once at most");
                }
                assert_eq!(reserved, after_first, "no growth redefining again");
            }
            for (i, n) in names.iter().enumerate() {
                assert_eq!(index.sym(n), Some(i as u32));
                match index.get(n) {
                    Probe::Found(e) => assert_eq!(e.def.address, i as u64),
                    _ => panic!("{n} not found"),
                }
            }
        }
    }

    /// A definition's claims: a name defined already is reported with its
    /// value, a name claimed twice is a repeat, claimed names read as
    /// absent until written, claims move with a growing table, and a
    /// released claim is no longer pending.
    #[test]
    fn claims_report_repeats_move_with_growth_and_release() {
        let pool = Interner::default();
        let index = ReadIndex::new();
        let old = pool.intern("old");
        index.set(&old, entry(1, true), 7);
        assert!(matches!(index.claim(&old), Claim::Defined { sym: 7, .. }));
        let names: Vec<_> = (0..1000).map(|i| pool.intern(&format!("c{i}"))).collect();
        // No reserve: the claims grow the table, their keys move with it.
        let ats: Vec<usize> = (names.iter())
            .map(|n| match index.claim(n) {
                Claim::New { at } => at,
                other => panic!("{n}: {other:?}"),
            })
            .collect();
        assert!(index.live.load(Ordering::Relaxed) > 0, "the index grew");
        for n in &names {
            assert_eq!(index.claim(n), Claim::Repeated, "{n}");
            assert_eq!(index.get(n), Probe::Absent, "{n}: no entry yet");
        }
        // Stale indices (before growth) fall back to a search.
        for (n, &at) in names.iter().zip(&ats) {
            index.release(at, n);
        }
        let ats: Vec<usize> = (names.iter())
            .map(|n| match index.claim(n) {
                Claim::New { at } => at,
                other => panic!("{n} after release: {other:?}"),
            })
            .collect();
        for (i, (n, &at)) in names.iter().zip(&ats).enumerate() {
            index.set_at(at, n, entry(i as u64, true), i as u32);
        }
        for (i, n) in names.iter().enumerate() {
            assert_eq!(index.get(n), Probe::Found(entry(i as u64, true)));
            assert!(matches!(index.claim(n), Claim::Defined { sym, .. } if sym == i as u32));
        }
        assert_eq!(index.get(&old), Probe::Found(entry(1, true)));
    }

    fn entry(address: u64, ready: bool) -> IndexEntry {
        IndexEntry {
            def: SymbolDef::new(address, SymbolFlags::EXPORTED | SymbolFlags::CALLABLE),
            ready,
        }
    }

    #[test]
    fn set_get_update_remove() {
        let pool = Interner::default();
        let index = ReadIndex::new();
        let (a, b) = (pool.intern("a"), pool.intern("b"));
        assert_eq!(index.get(&a), Probe::Absent);
        assert_eq!(index.sym(&a), None);
        index.set(&a, entry(0, false), 7);
        assert_eq!(index.get(&a), Probe::Found(entry(0, false)));
        assert_eq!(index.sym(&a), Some(7));
        index.set(&a, entry(0x1000, true), 7);
        assert_eq!(index.get(&a), Probe::Found(entry(0x1000, true)));
        assert!(index.update(&a, |e| e.ready = false));
        assert_eq!(index.get(&a), Probe::Found(entry(0x1000, false)));
        assert_eq!(index.sym(&a), Some(7), "updating keeps the value");
        assert!(!index.update(&b, |e| e.ready = true));
        assert_eq!(index.sym(&b), None);
        index.remove(&a);
        assert_eq!(index.get(&a), Probe::Absent);
        assert_eq!(index.sym(&a), None, "a removed name has no value");
        assert!(!index.update(&a, |e| e.ready = true));
        index.set(&a, entry(0x2000, true), 9);
        assert_eq!(index.get(&a), Probe::Found(entry(0x2000, true)));
        assert_eq!(index.sym(&a), Some(9));
        index.clear();
        assert_eq!(index.get(&a), Probe::Absent);
        assert_eq!(index.sym(&a), None);
    }

    #[test]
    fn the_writers_memo_never_hands_out_a_slot_another_name_took() {
        // Two names with the same home slot in the first (16-slot) table.
        let pool = Interner::default();
        let index = ReadIndex::new();
        let table = index.live_table();
        let mut by_home: Vec<Vec<SymbolName>> = vec![Vec::new(); 16];
        let (a, b) = (0..)
            .find_map(|i| {
                let n = pool.intern(&format!("m{i}"));
                let home = &mut by_home[table.home(n.key())];
                home.push(n);
                (home.len() == 2).then(|| (home[0].clone(), home[1].clone()))
            })
            .unwrap_or_else(|| unreachable!("16 homes"));
        // The writer asks for `a` (missing: its memo names the empty home
        // slot), defines `b` into that very slot, then defines `a`: the memo
        // must not send `a` to `b`'s slot.
        assert_eq!(index.sym(&a), None);
        index.set(&b, entry(0x100, true), 1);
        index.set(&a, entry(0x200, false), 2);
        assert_eq!(index.get(&b), Probe::Found(entry(0x100, true)));
        assert_eq!(index.sym(&b), Some(1));
        assert_eq!(index.get(&a), Probe::Found(entry(0x200, false)));
        assert_eq!(index.sym(&a), Some(2));
    }

    #[test]
    fn growing_keeps_every_present_entry_and_drops_removed_ones() {
        let pool = Interner::default();
        let index = ReadIndex::new();
        let names: Vec<_> = (0..10_000).map(|i| pool.intern(&format!("s{i}"))).collect();
        for (i, n) in names.iter().enumerate() {
            index.set(n, entry(16 * i as u64, i % 2 == 0), i as u32);
            if i % 3 == 0 {
                index.remove(n);
            }
        }
        for (i, n) in names.iter().enumerate() {
            let (want, sym) = if i % 3 == 0 {
                (Probe::Absent, None)
            } else {
                (
                    Probe::Found(entry(16 * i as u64, i % 2 == 0)),
                    Some(i as u32),
                )
            };
            assert_eq!(index.get(n), want, "name {n}");
            assert_eq!(
                index.sym(n),
                sym,
                "name {n}: the value moves with the entry"
            );
        }
        assert!(
            index.used.load(Ordering::Relaxed) < 10_000,
            "removed entries are not copied"
        );
        assert!(index.live.load(Ordering::Relaxed) > 0, "the index grew");
    }

    #[test]
    fn defining_the_same_names_again_never_grows_the_table() {
        let pool = Interner::default();
        let index = ReadIndex::new();
        let names: Vec<_> = (0..8).map(|i| pool.intern(&format!("r{i}"))).collect();
        for round in 0..1_000u64 {
            for n in &names {
                index.set(n, entry(round, true), 0);
            }
            for n in &names {
                index.remove(n);
            }
        }
        assert_eq!(
            index.live.load(Ordering::Relaxed),
            0,
            "still the first table"
        );
        assert_eq!(index.used.load(Ordering::Relaxed), names.len());
    }

    /// The writer keeps rewriting every entry until each reader has read
    /// entries many times while it wrote (and for at least 200 rounds):
    /// the readers overlap the writes however the threads are scheduled
    /// (in a release build, 200 rounds alone were over before a reader
    /// started, 5 runs in 8).
    #[test]
    fn readers_on_other_threads_never_see_a_torn_entry() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        const READERS: usize = 2;
        const READS: u64 = 20_000;
        let pool = Interner::default();
        let index = std::sync::Arc::new(ReadIndex::new());
        let names: Vec<_> = (0..2_000).map(|i| pool.intern(&format!("t{i}"))).collect();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let seen: std::sync::Arc<[AtomicU64; READERS]> =
            std::sync::Arc::new(std::array::from_fn(|_| AtomicU64::new(0)));
        let readers: Vec<_> = (0..READERS)
            .map(|r| {
                let (index, names) = (index.clone(), names.clone());
                let (stop, seen) = (stop.clone(), seen.clone());
                std::thread::spawn(move || {
                    while !stop.load(Relaxed) {
                        for n in &names {
                            // The writer keeps address == 16 * round and
                            // ready == (round is odd): a torn read breaks it.
                            if let Probe::Found(e) = index.get(n) {
                                assert_eq!(e.ready, (e.def.address / 16) % 2 == 1, "{n}: {e:?}");
                                seen[r].fetch_add(1, Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let mut round = 0u64;
        while round < 200 || seen.iter().any(|s| s.load(Relaxed) < READS) {
            for n in &names {
                index.set(n, entry(16 * round, round % 2 == 1), 0);
            }
            round += 1;
            if started.elapsed() > std::time::Duration::from_secs(60) {
                break;
            }
        }
        stop.store(true, Relaxed);
        for r in readers {
            r.join().expect("reader panicked");
        }
        for (r, s) in seen.iter().enumerate() {
            let s = s.load(Relaxed);
            assert!(
                s >= READS,
                "reader {r} read {s} entries while the writer wrote"
            );
        }
    }
}
