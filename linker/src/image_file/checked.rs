//! Image files checked in this process, kept in their parsed form, so that
//! loading the same unchanged file again only maps, rebases, binds and
//! protects: no read-only view of the file mapped again, no table parsed
//! and checked again, no import name list built again.
//!
//! An entry is the file's read-only mapping (populated only when the whole
//! file is to be hashed: otherwise the loader reads the header and tables,
//! not the code), the descriptor it was
//! opened with, its [`Parsed`] form (every check of a first load passed,
//! content hash included), its import names, its export table (shared
//! by every image loaded from it, each at its own base) and the last
//! resolver's answers for its imports while that resolver says they stay
//! ([`KeptAnswers`]), and how a load maps it at its final protections
//! ([`FinalPlan`]: the mappings, the pages a load writes and their bytes
//! as the file gives them). It is found by the file's
//! identity as [`verified`] defines it — device, inode, size, mtime, ctime —
//! taken with a `stat` of the path: a file replaced by a rename has another
//! inode, a file written in place another ctime, and either is opened,
//! hashed and checked as a first load is. Only settled files (ctime at
//! least [`verified::RACY`] older than the clock) are kept, for the reason
//! [`verified`] gives. The entry holds its descriptor open, so its inode
//! cannot be freed and its number reused while it is kept.
//!
//! What a kept entry costs: one descriptor, a read-only mapping of the file
//! (address space; its pages are the page cache's) and the parsed tables,
//! for at most [`CAPACITY`] files. Loaded images do not use the entry once
//! loaded: evicting it unloads nothing.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rustc_hash::FxHashMap;

use super::load::{FinalPlan, ImportNames, export_table, final_plan, import_names};
use super::read::{self, Parsed};
use super::{ImageError, verified};
use crate::host::SymbolResolver;
use crate::image::SortedSymbols;
use crate::memory::FileBytes;

/// At most this many files are kept (then one is evicted per new one).
pub(crate) const CAPACITY: usize = 64;

/// An image file that passed every check a load makes, parsed.
pub(crate) struct CheckedFile {
    // Field order is drop order: `parsed` and `names` borrow `bytes`.
    parsed: Parsed<'static>,
    names: ImportNames<'static>,
    /// The export table at base 0 (names copied: it borrows nothing).
    exports: SortedSymbols,
    /// The last resolver's answers for `names`, while they stay.
    answers: KeptAnswers,
    /// How a load maps it at its final protections, if it can.
    plan: Option<FinalPlan>,
    bytes: FileBytes,
    file: std::fs::File,
    id: verified::Identity,
}

impl CheckedFile {
    /// Maps `file` (identity `id`, taken before it was opened or right
    /// after) and checks it as [`read::parse_file`] does: the content hash
    /// once per unchanged file, then every table.
    fn new(
        file_name: &str,
        file: std::fs::File,
        id: verified::Identity,
    ) -> Result<CheckedFile, ImageError> {
        // A file not hashed yet is read whole (the hash): its pages mapped
        // in one call rather than faulted in one by one. Otherwise the
        // header and tables are all that is read.
        let populate = !verified::is_known(&id);
        // SAFETY: a private read-only mapping of the file's size as its
        // `fstat` said; the file not changing while it is mapped is
        // `load_file`'s contract (and an entry is used only while the file
        // keeps the identity it had when it was checked).
        let bytes =
            unsafe { FileBytes::map_sized(&file, id.size(), populate) }.map_err(|source| {
                ImageError::Io {
                    name: file_name.to_string(),
                    what: "map",
                    source,
                }
            })?;
        // SAFETY: the slice points into `bytes`'s mapping (or its owned,
        // empty buffer), whose address does not change when `bytes` moves
        // and which stays mapped until `bytes` drops — after `parsed` and
        // `names`, the only holders of the slice (field order). The
        // `'static` never leaves this struct: `parsed` and `names` hand
        // out borrows bounded by `&self`.
        let view: &'static [u8] =
            unsafe { std::slice::from_raw_parts(bytes.as_ptr(), bytes.len()) };
        let parsed = read::parse_file(file_name, view, &id)?;
        let names = import_names(&parsed);
        let exports = export_table(&parsed);
        let plan = final_plan(&parsed);
        Ok(CheckedFile {
            parsed,
            names,
            exports,
            answers: KeptAnswers::default(),
            plan,
            bytes,
            file,
            id,
        })
    }

    /// The parsed, checked tables.
    pub(crate) fn parsed(&self) -> &Parsed<'_> {
        &self.parsed
    }

    /// The import names a resolver is asked for.
    pub(crate) fn names(&self) -> &ImportNames<'_> {
        &self.names
    }

    /// The export table at base 0.
    pub(crate) fn exports(&self) -> &SortedSymbols {
        &self.exports
    }

    /// Where the resolver's answers for the import names are kept.
    pub(crate) fn answers(&self) -> &KeptAnswers {
        &self.answers
    }

    /// How a load maps it at its final protections, if it can.
    pub(crate) fn final_plan(&self) -> Option<&FinalPlan> {
        self.plan.as_ref()
    }

    /// The open file, to map segments from.
    pub(crate) fn file(&self) -> &std::fs::File {
        &self.file
    }

    /// The file's bytes (the read-only mapping).
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The file's identity when it was checked.
    pub(crate) fn identity(&self) -> &verified::Identity {
        &self.id
    }
}

/// A resolver's answers for a kept file's import names, with the
/// resolver's stamp ([`SymbolResolver::answers_stamp`]): a later load
/// through a resolver with the same stamp uses them instead of asking it
/// (for `HostSymbols`, 89 hash lookups for Lua's image, ~40% of what a
/// re-load was left with). Answers are kept only when the resolver says
/// every one of them stays while its stamp does.
#[derive(Default)]
pub(crate) struct KeptAnswers(Mutex<Option<(u64, Answers)>>);

/// A resolver's answers, one per import name.
type Answers = Arc<[Option<u64>]>;

impl KeptAnswers {
    /// `resolver`'s answers for `names`: the kept ones if its stamp is
    /// theirs, else asked (and kept if it stamps them).
    pub(crate) fn resolve(&self, resolver: &dyn SymbolResolver, names: &[&str]) -> Answers {
        let lock = || self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(stamp) = resolver.answers_stamp()
            && let Some((kept, answers)) = &*lock()
            && *kept == stamp
        {
            return Arc::clone(answers);
        }
        // Asked without the lock held: the resolver is the caller's code.
        let (answers, stamp) = resolver.resolve_stamped(names);
        let answers: Answers = Arc::from(answers);
        if let Some(stamp) = stamp {
            *lock() = Some((stamp, Arc::clone(&answers)));
        }
        answers
    }
}

/// (device, inode) → the checked file.
type Table = FxHashMap<(u64, u64), Arc<CheckedFile>>;

static CHECKED: Mutex<Option<Table>> = Mutex::new(None);

fn table() -> std::sync::MutexGuard<'static, Option<Table>> {
    CHECKED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The kept entry for a file with identity `id`, if it has that identity.
fn lookup(id: &verified::Identity) -> Option<Arc<CheckedFile>> {
    let t = table();
    let c = t.as_ref()?.get(&id.key())?;
    (c.id == *id).then(|| Arc::clone(c))
}

/// Keeps `c` (settled files only), replacing any entry for its inode.
fn keep(c: &Arc<CheckedFile>) {
    let mut guard = table();
    let t = guard.get_or_insert_with(Table::default);
    let key = c.id.key();
    if !c.id.is_settled() {
        t.remove(&key);
        return;
    }
    if t.len() >= CAPACITY
        && !t.contains_key(&key)
        && let Some(&old) = t.keys().next()
    {
        t.remove(&old);
    }
    t.insert(key, Arc::clone(c));
}

/// The image file at `path` (called `file_name` in errors), checked: the
/// kept entry if the file still has the identity it was checked with, else
/// the file opened, mapped and checked now (and kept if settled).
pub(crate) fn open(path: &Path, file_name: &str) -> Result<Arc<CheckedFile>, ImageError> {
    let io = |what, source| ImageError::Io {
        name: file_name.to_string(),
        what,
        source,
    };
    let now = verified::now();
    // A `stat` of the path finds a kept entry (none kept yet, as at a
    // process's first load: no `stat`); if it fails, `open` below says why.
    let any_kept = table().as_ref().is_some_and(|t| !t.is_empty());
    if any_kept && let Ok(meta) = std::fs::metadata(path) {
        let id = verified::Identity::new(&meta, now, verified::RACY);
        if let Some(c) = lookup(&id) {
            return Ok(c);
        }
    }
    let file = std::fs::File::open(path).map_err(|e| io("open", e))?;
    let meta = file.metadata().map_err(|e| io("stat", e))?;
    let id = verified::Identity::new(&meta, now, verified::RACY);
    let c = Arc::new(CheckedFile::new(file_name, file, id)?);
    keep(&c);
    Ok(c)
}

/// [`open`] of a file already open (at any position): checked now (the
/// content hash once per unchanged file), and kept if settled.
pub(crate) fn from_file(
    file: std::fs::File,
    file_name: &str,
) -> Result<Arc<CheckedFile>, ImageError> {
    let now = verified::now();
    let meta = file.metadata().map_err(|source| ImageError::Io {
        name: file_name.to_string(),
        what: "stat",
        source,
    })?;
    let id = verified::Identity::new(&meta, now, verified::RACY);
    if let Some(c) = lookup(&id) {
        return Ok(c);
    }
    let c = Arc::new(CheckedFile::new(file_name, file, id)?);
    keep(&c);
    Ok(c)
}
