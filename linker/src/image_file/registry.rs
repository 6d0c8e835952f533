//! The process's registry of images with a build id: which image owns an
//! address (by range), and where the image with a build id is loaded.
//!
//! An image is registered when it is mapped (loaded from a file, standalone
//! or through the engine) or when it is saved in this process; it leaves
//! the registry when its [`LinkedImage`](crate::LinkedImage) is dropped
//! (before its memory is released). A link in imaging mode asks the
//! registry which image owns each host address it binds, and records a
//! reference into a registered image as (that image's build id, offset);
//! loading an image asks it where each of its dependencies is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use super::BuildId;

/// A registered image, as [`image_at`] and [`find`] answer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisteredImage {
    /// Its build id.
    pub build_id: BuildId,
    /// Its first byte.
    pub base: u64,
    /// Its memory span.
    pub size: u64,
    /// The name it was registered under (the file name given to the loader,
    /// or the image's name when it was saved).
    pub name: String,
}

struct Entry {
    end: u64,
    build_id: BuildId,
    name: Arc<str>,
    token: u64,
    /// Where this range starts in its image (non-zero for the later pieces
    /// of an image saved from many links), and the image's whole span.
    image_offset: u64,
    image_size: u64,
}

#[derive(Default)]
struct Registry {
    /// start → entry.
    by_start: BTreeMap<u64, Entry>,
    /// build id → starts, oldest first.
    by_id: HashMap<BuildId, Vec<u64>>,
}

static REGISTRY: RwLock<Option<Registry>> = RwLock::new(None);
static TOKENS: AtomicU64 = AtomicU64::new(1);

fn answer(start: u64, e: &Entry) -> RegisteredImage {
    RegisteredImage {
        build_id: e.build_id,
        base: start.wrapping_sub(e.image_offset),
        size: e.image_size,
        name: e.name.to_string(),
    }
}

/// An image's place in the registry; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct Registration {
    start: u64,
    token: u64,
}

impl Registration {
    /// Registers `[start, start + size)` as the image `build_id`, called
    /// `name`. A range overlapping a live entry replaces it (the memory was
    /// released and reused; the old owner's drop then finds nothing).
    pub(crate) fn new(start: u64, size: u64, build_id: BuildId, name: &str) -> Registration {
        Self::insert(start, size, (0, size, true), build_id, name)
    }

    /// Registers `[start, start + len)` as the piece at `image_offset` of
    /// the image `build_id` (`image_size` bytes), saved from many links:
    /// [`image_at`] answers for it with the image's offsets; [`find`] does
    /// not (the image is not one range here).
    pub(crate) fn new_piece(
        start: u64,
        len: u64,
        (image_offset, image_size): (u64, u64),
        build_id: BuildId,
        name: &str,
    ) -> Registration {
        Self::insert(
            start,
            len,
            (image_offset, image_size, false),
            build_id,
            name,
        )
    }

    fn insert(
        start: u64,
        size: u64,
        (image_offset, image_size, whole): (u64, u64, bool),
        build_id: BuildId,
        name: &str,
    ) -> Registration {
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        let end = start.saturating_add(size.max(1));
        let mut guard = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
        let r = guard.get_or_insert_with(Registry::default);
        let stale: Vec<u64> = r
            .by_start
            .range(..end)
            .rev()
            .take_while(|(_, e)| e.end > start)
            .map(|(&s, _)| s)
            .collect();
        for s in stale {
            r.remove(s);
        }
        r.by_start.insert(
            start,
            Entry {
                end,
                build_id,
                name: Arc::from(name),
                token,
                image_offset,
                image_size,
            },
        );
        // Only a range holding the whole image is found by build id: a
        // piece alone cannot place the image's other offsets.
        if whole {
            r.by_id.entry(build_id).or_default().push(start);
        }
        Registration { start, token }
    }
}

impl Registry {
    fn remove(&mut self, start: u64) {
        if let Some(e) = self.by_start.remove(&start)
            && let Some(starts) = self.by_id.get_mut(&e.build_id)
        {
            starts.retain(|&s| s != start);
            if starts.is_empty() {
                self.by_id.remove(&e.build_id);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut guard = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(r) = guard.as_mut()
            && r.by_start.get(&self.start).map(|e| e.token) == Some(self.token)
        {
            r.remove(self.start);
        }
    }
}

/// The registered image whose memory holds `addr`, if any: an image loaded
/// from a file or saved in this process, and not yet dropped.
pub fn image_at(addr: u64) -> Option<RegisteredImage> {
    let guard = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let (&start, e) = guard.as_ref()?.by_start.range(..=addr).next_back()?;
    (addr < e.end).then(|| answer(start, e))
}

/// The image with `build_id` registered first (and still alive), if any.
pub fn find(build_id: &BuildId) -> Option<RegisteredImage> {
    let guard = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let r = guard.as_ref()?;
    let start = *r.by_id.get(build_id)?.first()?;
    r.by_start.get(&start).map(|e| answer(start, e))
}

/// Build ids of the registered images whose name ends with the file name
/// `file` (for saying which other build of a missing dependency is loaded).
pub(crate) fn named(file: &str) -> Vec<BuildId> {
    let guard = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    let Some(r) = guard.as_ref() else {
        return Vec::new();
    };
    let mut ids: Vec<BuildId> = r
        .by_start
        .values()
        .filter(|e| super::file_name_of(&e.name) == file)
        .map(|e| e.build_id)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_answer_by_address_and_leave_when_dropped() {
        // Addresses no real image has (the top of the address space).
        let base = 0xffff_fff0_0000_0000;
        let id = BuildId([0xa5; 32]);
        let r = Registration::new(base, 0x2000, id, "/x/a.kimg");
        assert_eq!(image_at(base + 0x1fff).map(|i| i.build_id), Some(id));
        assert_eq!(image_at(base + 0x2000), None);
        assert_eq!(find(&id).map(|i| (i.base, i.size)), Some((base, 0x2000)));
        assert_eq!(named("a.kimg"), vec![id]);
        // An overlapping registration replaces the stale one.
        let r2 = Registration::new(base + 0x1000, 0x1000, BuildId([0x5a; 32]), "b");
        assert_eq!(find(&id), None);
        drop(r);
        assert!(image_at(base + 0x1000).is_some(), "the newer entry stays");
        drop(r2);
        assert_eq!(image_at(base + 0x1000), None);
    }

    #[test]
    fn pieces_answer_with_their_images_offsets_and_are_not_found_by_id() {
        let (one, two) = (0xffff_ffe0_0000_0000, 0xffff_ffd0_0000_0000);
        let id = BuildId([0x3c; 32]);
        let first = Registration::new_piece(one, 0x1000, (0, 0x3000), id, "pieces");
        let second = Registration::new_piece(two, 0x2000, (0x1000, 0x3000), id, "pieces");
        let at = |a| image_at(a).map(|i| (i.build_id, a - i.base, i.size));
        assert_eq!(at(one + 0x10), Some((id, 0x10, 0x3000)));
        assert_eq!(at(two + 0x10), Some((id, 0x1010, 0x3000)));
        assert_eq!(image_at(two + 0x2000), None);
        assert_eq!(find(&id), None, "no one range holds the image");
        drop((first, second));
        assert_eq!(image_at(two), None);
    }
}
