//! Code memory that `define_function_bytes` copies each function into, as
//! cranelift-jit does: the direct path (`direct.rs`) then fixes the code up
//! where it already is and protects it, instead of copying every byte a
//! second time from a heap arena into fresh memory at finalize.
//!
//! A stage is a list of chunks, each a read-write [`Allocation`] of its
//! own holding one group's functions (the tracker that owns a placed
//! batch's memory is its group's, so a chunk never mixes groups). A chunk
//! that is full is followed by one twice as large, starting from a page:
//! a finalize of one function costs one page, a batch of N functions
//! O(log N) allocations. The pages past a chunk's last function are never
//! touched (not resident) and become inaccessible when it is protected.
//!
//! A batch the direct path refuses is linked from the chunk's bytes, read
//! in place (`stage::Chunk::bytes`): the link writes every field it
//! relocates, so fix-ups the direct path may have written there first
//! change nothing.

use kiln_linker::memory::{Allocation, MemState, PAGE, Placement};

use crate::error::Error;
use crate::module::GroupId;

/// Where a function's bytes are in a stage: chunk index, offset, length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) chunk: u32,
    pub(crate) start: u32,
    pub(crate) len: u32,
}

/// One group's functions in read-write memory, waiting to be finalized.
pub(crate) struct Chunk {
    pub(crate) group: Option<GroupId>,
    pub(crate) memory: Allocation,
    /// Bytes in use from the start.
    pub(crate) used: u64,
}

impl Chunk {
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

/// The stage: chunks in the order they were made.
#[derive(Default)]
pub(crate) struct Stage {
    pub(crate) chunks: Vec<Chunk>,
}

impl Stage {
    /// Copies `bytes`, aligned to `align` (at most a page), into a chunk of
    /// `group`'s; `Ok(None)` if no memory can be placed (the caller keeps
    /// the bytes elsewhere).
    pub(crate) fn append(
        &mut self,
        group: Option<GroupId>,
        align: u64,
        bytes: &[u8],
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
                let size = last
                    .map_or(PAGE, |i| 2 * self.chunks[i].memory.len())
                    .max(len);
                let Some(memory) = Allocation::new(size, Placement::Near)? else {
                    return Ok(None);
                };
                self.chunks.push(Chunk {
                    group,
                    memory,
                    used: 0,
                });
                self.chunks.len() - 1
            }
        };
        let chunk = &mut self.chunks[i];
        let start = chunk.used.next_multiple_of(align);
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

    /// The chunks, leaving none.
    pub(crate) fn take(&mut self) -> Vec<Chunk> {
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
            let span = stage.append(g, 16, &bytes).unwrap().unwrap();
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
        assert!(stage.append(None, 2 * PAGE, &[1]).unwrap().is_none());
        // A function larger than twice the last chunk gets a chunk its size.
        let big = vec![7u8; (10 * PAGE) as usize];
        let span = stage.append(None, 1, &big).unwrap().unwrap();
        assert_eq!(span.start, 0);
        assert!(stage.chunks[span.chunk as usize].memory.len() >= 10 * PAGE);
        assert_eq!(stage.take().len(), 5);
        assert!(stage.chunks.is_empty());
    }

    /// A batch of N functions lists N `FuncCode`s: they stay small (owned
    /// code, which is rare in a batch, is boxed).
    #[test]
    fn a_listed_function_takes_48_bytes() {
        assert!(size_of::<crate::emit::FuncCode>() <= 48);
    }
}
