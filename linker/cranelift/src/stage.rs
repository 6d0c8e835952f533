//! Code memory that `define_function_bytes` copies each function into, as
//! cranelift-jit does: the direct path (`direct.rs`) then fixes the code up
//! where it already is and protects it, instead of copying every byte a
//! second time from a heap arena into fresh memory at finalize.
//!
//! A stage is a list of chunks, each a read-write [`Allocation`] of its
//! own holding one group's functions (the tracker that owns a placed
//! batch's memory is its group's, so a chunk never mixes groups). A chunk
//! that is full is followed by one twice as large: a batch of N functions
//! takes O(log N) allocations. The pages past a chunk's last function are
//! not touched unless mapped ahead (below), and become inaccessible when
//! it is protected.
//!
//! A group's first chunk in a batch starts from a page, except the
//! batch's very first, which is sized for the functions declared since
//! the last finalize ([`Stage::expect_functions`], [`GUESS`] bytes each,
//! at most [`FIRST_MAX`]): a batch of a thousand functions takes one
//! chunk — one `mprotect` to make it writable, one to protect it —
//! instead of five (a batch of 100,000 takes seven, not twelve). Each
//! declaration counts toward one batch only, so defining and finalizing
//! one function at a time still takes a page each, and what a batch
//! reserves and leaves unused is at most twice [`GUESS`] bytes of address
//! space a declared function (never touched, so not memory).
//!
//! A chunk expected to hold at least [`AHEAD`] bytes (a first chunk: its
//! declarations' guess; a later one: its length) has its pages mapped
//! ahead of the writes, [`AHEAD`] bytes at a time, on a rayon thread
//! ([`Allocation::prefault_runs`]): zeroing fresh pages is most of what a
//! large batch's first touch of its code memory costs once that memory is
//! larger than the caches, and another core can do it while this one
//! copies. Mapping stops [`AHEAD`] / 2 past the bytes written and never
//! goes past what the chunk is expected to hold, so at most 1.5 ×
//! [`AHEAD`] bytes are mapped for nothing. A chunk waits for its
//! prefaults before its memory changes state ([`Chunk::settle`]; dropping
//! a chunk waits too).
//!
//! A batch the direct path refuses is linked from the chunk's bytes, read
//! in place (`stage::Chunk::bytes`): the link writes every field it
//! relocates, so fix-ups the direct path may have written there first
//! change nothing.

use kiln_linker::memory::{Allocation, MemState, PAGE, Placement, Prefault};

use crate::error::Error;
use crate::module::GroupId;

/// Where a function's bytes are in a stage: chunk index, offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) chunk: u32,
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// Bytes of a chunk's pages mapped at a time, ahead of the writes; also
/// the least chunk size that is (smaller ones fault their pages in as
/// they are written). `Allocation::prefault_runs` maps runs this large on
/// a rayon thread.
pub(crate) const AHEAD: u64 = 2 << 20;

/// One group's functions in read-write memory, waiting to be finalized.
pub(crate) struct Chunk {
    /// Pages being mapped ahead of the writes. Declared before `memory`:
    /// dropped (waited for) first.
    prefaults: Vec<Prefault>,
    pub(crate) group: Option<GroupId>,
    pub(crate) memory: Allocation,
    /// Bytes in use from the start.
    pub(crate) used: u64,
    /// Bytes from the start whose mapping was asked for.
    mapped: u64,
    /// Bytes the chunk is expected to hold (at most its length): pages
    /// past them are not mapped ahead.
    wanted: u64,
}

impl Chunk {
    /// Asks for the pages up to [`AHEAD`] / 2 past `end` (the bytes
    /// written) to be mapped, [`AHEAD`] whole bytes at a time, within what
    /// the chunk is expected to hold.
    fn map_ahead(&mut self, end: u64) {
        let len = self.wanted.min(self.memory.len());
        while len >= AHEAD && self.mapped < end + AHEAD / 2 && len - self.mapped >= AHEAD {
            let run = self.memory.prefault_runs(vec![(self.mapped, AHEAD)], true);
            self.prefaults.push(run);
            self.mapped += AHEAD;
        }
    }

    /// Returns once no thread maps pages of the chunk any more: before its
    /// memory is protected.
    pub(crate) fn settle(&mut self) {
        self.prefaults.iter_mut().for_each(Prefault::wait);
        self.prefaults.clear();
    }

    /// The bytes written so far.
    pub(crate) fn bytes(&self) -> &[u8] {
        if self.memory.state() != MemState::Writing || self.used == 0 {
            return &[];
        }
        // SAFETY: the allocation is read-write (state `Writing`) and
        // mapped for `len() >= used` bytes from `base()`; it is written only
        // through `&mut self` (`Stage::append`, the direct path's fix-ups),
        // so nothing writes it while this borrow of `self` lives.
        unsafe { std::slice::from_raw_parts(self.memory.base() as *const u8, self.used as usize) }
    }
}

/// Bytes of code expected of a declared function, to size a batch's first
/// chunk (cranelift's functions in W9 take 112 on average).
pub(crate) const GUESS: u64 = 128;

/// The largest first chunk: 32 pages, a thousand functions. (Sized for
/// 100,000 — one 16 MiB chunk instead of eleven — the main thread faulted
/// fewer code pages, but W9 did not get faster, and at 100k with M = 100
/// one process in two grew and trimmed glibc's heap every rep: 7,000 more
/// page faults a rep.)
pub(crate) const FIRST_MAX: u64 = 128 << 10;

/// The stage: chunks in the order they were made.
#[derive(Default)]
pub(crate) struct Stage {
    pub(crate) chunks: Vec<Chunk>,
    /// Bytes the batch's first chunk is sized for (0 once it is made).
    expected: u64,
}

impl Stage {
    /// Copies `bytes`, aligned to `align` (at most a page), into a chunk of
    /// `group`'s; `Ok(None)` if no memory can be placed (the caller keeps
    /// the bytes elsewhere). The chunk's pages are mapped [`AHEAD`] of the
    /// writes on a rayon thread if `ahead`
    /// ([`kiln_linker::LinkOptions::parallel`]); otherwise as written.
    pub(crate) fn append(
        &mut self,
        group: Option<GroupId>,
        align: u64,
        bytes: &[u8],
        ahead: bool,
    ) -> Result<Option<Span>, Error> {
        let align = align.max(1).next_power_of_two();
        if align > PAGE {
            return Ok(None);
        }
        let len = bytes.len() as u64;
        let fits = |c: &Chunk| {
            let start = c.used.next_multiple_of(align);
            start + len <= c.memory.len()
        };
        let last = self.chunks.iter().rposition(|c| c.group == group);
        let i = match last {
            Some(i) if fits(&self.chunks[i]) => i,
            _ => {
                let (size, wanted) = match last {
                    None => {
                        let expected = std::mem::take(&mut self.expected).clamp(PAGE, FIRST_MAX);
                        (expected.next_power_of_two().max(len), expected.max(len))
                    }
                    Some(i) => {
                        let size = (2 * self.chunks[i].memory.len()).max(len);
                        (size, size)
                    }
                };
                let Some(memory) = Allocation::new(size, Placement::Near)? else {
                    return Ok(None);
                };
                self.chunks.push(Chunk {
                    prefaults: Vec::new(),
                    group,
                    memory,
                    used: 0,
                    mapped: 0,
                    wanted,
                });
                self.chunks.len() - 1
            }
        };
        let chunk = &mut self.chunks[i];
        let start = chunk.used.next_multiple_of(align);
        if ahead {
            chunk.map_ahead(start + len);
        }
        let (Ok(index), Ok(at), Ok(n)) = (
            u32::try_from(i),
            u32::try_from(start),
            u32::try_from(bytes.len()),
        ) else {
            return Ok(None);
        };
        let Some(field) = (chunk.memory.bytes_mut())
            .and_then(|m| m.get_mut(start as usize..start as usize + bytes.len()))
        else {
            return Ok(None);
        };
        field.copy_from_slice(bytes);
        chunk.used = start + len;
        Ok(Some(Span {
            chunk: index,
            start: at,
            len: n,
        }))
    }

    /// `n` more functions were declared: the next batch's first chunk
    /// makes room for their code.
    pub(crate) fn expect_functions(&mut self, n: usize) {
        self.expected = (self.expected).saturating_add((n as u64).saturating_mul(GUESS));
    }

    /// The chunks, leaving none (a finalize: what was expected of the
    /// batch is over).
    pub(crate) fn take(&mut self) -> Vec<Chunk> {
        self.expected = 0;
        std::mem::take(&mut self.chunks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(stage: &Stage, span: Span) -> Option<GroupId> {
        stage.chunks[span.chunk as usize].group
    }

    /// Appended code lands aligned, readable where the span says; chunks
    /// double from a page; a group's code never shares a chunk with
    /// another's; alignments beyond a page are refused (kept elsewhere).
    #[test]
    fn stage_aligns_grows_and_keeps_groups_apart() {
        let mut stage = Stage::default();
        let a = GroupId::for_tests(1);
        let mut spans = Vec::new();
        for i in 0..200u32 {
            let bytes: Vec<u8> = (0..100).map(|k| (i + k) as u8).collect();
            let g = if i % 50 == 49 { Some(a) } else { None };
            let span = stage.append(g, 16, &bytes, true).unwrap().unwrap();
            assert_eq!(span.start % 16, 0);
            assert_eq!(group(&stage, span), g);
            spans.push((span, bytes));
        }
        for (span, bytes) in &spans {
            let chunk = &stage.chunks[span.chunk as usize];
            let at = span.start as usize;
            assert_eq!(&chunk.bytes()[at..at + span.len as usize], &bytes[..]);
        }
        // Ungrouped code: 200 × 112 bytes in chunks of 1, 2, 4 pages.
        let sizes: Vec<u64> = (stage.chunks.iter())
            .filter(|c| c.group.is_none())
            .map(|c| c.memory.len())
            .collect();
        assert_eq!(sizes, vec![PAGE, 2 * PAGE, 4 * PAGE]);
        assert!(stage.append(None, 2 * PAGE, &[1], true).unwrap().is_none());
        // A function larger than twice the last chunk gets a chunk its size.
        let big = vec![7u8; (10 * PAGE) as usize];
        let span = stage.append(None, 1, &big, true).unwrap().unwrap();
        assert_eq!(span.start, 0);
        assert!(stage.chunks[span.chunk as usize].memory.len() >= 10 * PAGE);
        assert_eq!(stage.take().len(), 5);
        assert!(stage.chunks.is_empty());
    }

    /// A batch's first chunk makes room for the functions declared since
    /// the last finalize, once: a thousand functions
    /// take one chunk; other groups' first chunks, and the next batch's
    /// when nothing more was declared, start from a page.
    #[test]
    fn the_first_chunk_is_sized_for_the_functions_declared() {
        let mut stage = Stage::default();
        stage.expect_functions(1000);
        let bytes = [0x90u8; 112];
        for _ in 0..1000 {
            stage.append(None, 16, &bytes, true).unwrap().unwrap();
        }
        assert_eq!(stage.chunks.len(), 1);
        assert_eq!(stage.chunks[0].memory.len(), 128 << 10);
        let other = GroupId::for_tests(3);
        stage
            .append(Some(other), 16, &bytes, true)
            .unwrap()
            .unwrap();
        assert_eq!(stage.chunks[1].memory.len(), PAGE);
        assert_eq!(stage.take().len(), 2);
        stage.append(None, 16, &bytes, true).unwrap().unwrap();
        assert_eq!(stage.chunks[0].memory.len(), PAGE);
        // A few declarations: the first chunk is a page or a few.
        stage.take();
        stage.expect_functions(40);
        stage.append(None, 16, &bytes, true).unwrap().unwrap();
        assert_eq!(stage.chunks[0].memory.len(), 2 * PAGE);
        // A large batch: the first chunk is at most `FIRST_MAX`, the next
        // ones double from it.
        stage.take();
        stage.expect_functions(100_000);
        for _ in 0..30_000 {
            stage.append(None, 16, &bytes, true).unwrap().unwrap();
        }
        let sizes: Vec<u64> = stage.chunks.iter().map(|c| c.memory.len()).collect();
        assert_eq!(sizes[0], FIRST_MAX);
        assert!(sizes.windows(2).all(|w| w[1] == 2 * w[0]), "{sizes:?}");
        assert_eq!(stage.chunks[0].wanted, FIRST_MAX);
        stage.chunks.iter_mut().for_each(Chunk::settle);
    }

    /// Chunks of at least `AHEAD` bytes have their pages mapped ahead of
    /// the writes, by whole runs, never more than a run and a half past
    /// the last byte written; smaller chunks map nothing ahead; what was
    /// written reads back, and a settled chunk can be protected.
    #[test]
    fn large_chunks_map_their_pages_ahead_of_the_writes() {
        let mut stage = Stage::default();
        let piece = vec![0x5au8; 48 << 10];
        for _ in 0..200 {
            stage.append(None, 16, &piece, true).unwrap().unwrap();
        }
        let mut large = 0;
        for chunk in &mut stage.chunks {
            let len = chunk.memory.len();
            if len < AHEAD {
                assert_eq!(chunk.mapped, 0, "a chunk of {len} bytes");
                continue;
            }
            large += 1;
            assert_eq!(chunk.mapped % AHEAD, 0);
            assert!(chunk.mapped <= len);
            assert!(chunk.mapped < chunk.used + AHEAD + AHEAD / 2);
            if len - chunk.mapped >= AHEAD {
                assert!(chunk.mapped >= chunk.used + AHEAD / 2);
            }
            assert!(chunk.bytes().iter().all(|&b| b == 0x5a || b == 0));
            chunk.settle();
            assert!(chunk.prefaults.is_empty());
            let used = chunk.used;
            (chunk
                .memory
                .finalize(&[(0, used, kiln_linker::graph::Prot::ReadExec)]))
            .unwrap();
        }
        assert!(large >= 2, "{large} large chunks");
    }

    /// A batch of N functions lists N `FuncCode`s: they stay small (owned
    /// code, which is rare in a batch, is boxed).
    #[test]
    fn a_listed_function_takes_48_bytes() {
        assert!(size_of::<crate::emit::FuncCode>() <= 48);
    }
}
