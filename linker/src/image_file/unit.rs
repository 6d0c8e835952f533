//! An image file as the engine's materialization unit: its exports are
//! defined when it is added; the first lookup maps it, resolves its exports,
//! binds its imports through the dylib's link order (at `Resolved`, so
//! cycles with other units close), finalizes it and emits its exports with
//! dependencies on what it imports — Ready only when those are.

use std::sync::Arc;

use kiln_engine::{
    DependenceGroup, Dylib, DylibLookup, Error, LookupKind, LookupRequest, LookupSet,
    MaterializationUnit, RequiredState, ResourceTracker, Responsibility, SearchOrder, SymbolDef,
    SymbolFlags, SymbolName,
};

use super::format;
use super::read::{self, Parsed};
use super::{BuildId, ImageDependency, ImageError, ImageFile, load, registry};
use crate::error::LinkError;
use crate::layer::{AddedImageFile, ObjectLayer};

/// Where an image unit's bytes are: its own copy, or the file it was
/// opened from (mapped; segments are mapped from it copy-on-write).
enum Source {
    Bytes(Arc<Vec<u8>>),
    File(ImageFile),
}

impl Source {
    fn file(&self) -> Option<&std::fs::File> {
        match self {
            Source::Bytes(_) => None,
            Source::File(f) => Some(f.file()),
        }
    }
}

struct ImageUnit {
    layer: ObjectLayer,
    name: String,
    source: Source,
    symbols: Vec<(SymbolName, SymbolFlags)>,
    order: usize,
}

fn flags(f: u32) -> SymbolFlags {
    let mut flags = SymbolFlags::NONE;
    if f & format::EXPORT_EXPORTED != 0 {
        flags |= SymbolFlags::EXPORTED;
    }
    if f & format::EXPORT_WEAK != 0 {
        flags |= SymbolFlags::WEAK;
    }
    if f & format::EXPORT_CALLABLE != 0 {
        flags |= SymbolFlags::CALLABLE;
    }
    flags
}

impl ObjectLayer {
    /// Adds the image file `bytes` (called `name` in errors) to `dylib`,
    /// owned by `tracker` (default: the dylib's default tracker). The file
    /// is checked now (header, content hash, tables); it is mapped, rebased
    /// and bound when one of its exports is first looked up, and its
    /// initializers run with [`ObjectLayer::run_initializers`], after Ready.
    /// Removing the tracker runs its finalizers, deregisters its unwind
    /// info and unmaps it.
    ///
    /// Images it links against (by build id) are found among the image
    /// files added to this layer's session (looking one of their exports up
    /// maps them; this image's exports are Ready only when theirs are) and
    /// then among the other images of [the registry](super::registry); the
    /// lookup of its exports fails listing every one missing. Those added
    /// to this layer stay mapped while this image is loaded: removing their
    /// tracker runs their finalizers and removes their symbols, and their
    /// memory goes with the last image linked against them.
    ///
    /// # Safety
    ///
    /// As for [`super::load`]: an image whose content hash checks out is
    /// trusted, and its code runs when its initializers run or its
    /// functions are called. The file must come from a trusted source, and
    /// the symbols the dylib's link order provides must be the ones it was
    /// saved against. Images it links against that this layer did not
    /// load (found in the registry: loaded with [`super::load`], say) must
    /// stay loaded while it is.
    pub unsafe fn add_image(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        bytes: Vec<u8>,
    ) -> Result<(), ImageError> {
        read::parse(name, &bytes)?;
        self.add_checked_image(dylib, tracker, name, Source::Bytes(Arc::new(bytes)))
    }

    /// [`ObjectLayer::add_image`] of an image file opened (and checked,
    /// content hash included) by [`ImageFile::open`]: not hashed again, and
    /// its segments are mapped from the file copy-on-write when it is
    /// loaded, as [`super::load_file`] does, instead of copied.
    ///
    /// # Safety
    ///
    /// As for [`ObjectLayer::add_image`]; moreover the file must not be
    /// changed in place until the image is unloaded (replacing it by a
    /// rename is fine), as for [`super::load_file`].
    pub unsafe fn add_image_from_file(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        file: ImageFile,
    ) -> Result<(), ImageError> {
        let name = file.name().to_string();
        self.add_checked_image(dylib, tracker, &name, Source::File(file))
    }

    /// Adds an image whose bytes passed [`read::parse`] (hash included).
    fn add_checked_image(
        &self,
        dylib: &Dylib,
        tracker: Option<&ResourceTracker>,
        name: &str,
        source: Source,
    ) -> Result<(), ImageError> {
        let owned;
        let parsed = match &source {
            Source::File(f) => f.parsed(),
            Source::Bytes(b) => {
                owned = read::parse_with(name, b, false)?;
                &owned
            }
        };
        let session = self.session();
        let symbols: Vec<(SymbolName, SymbolFlags)> = parsed
            .exports
            .iter()
            .map(|e| (session.intern(e.name), flags(e.flags)))
            .collect();
        // A strong export cannot be another unit's: looking it up maps
        // this image.
        let handle = symbols
            .iter()
            .find(|(_, f)| !f.contains(SymbolFlags::WEAK))
            .or(symbols.first())
            .map(|(n, _)| n.clone());
        let build_id = BuildId(parsed.header.build_id);
        let unit = ImageUnit {
            layer: self.clone(),
            name: name.to_string(),
            source,
            symbols,
            order: self.next_order(),
        };
        dylib
            .define_boxed(Box::new(unit), tracker)
            .map_err(|e| ImageError::Link {
                name: name.to_string(),
                source: crate::Cause::new(LinkError::engine("defining the image's symbols", e)),
            })?;
        if let Some(export) = handle {
            self.add_image_file(
                build_id,
                AddedImageFile {
                    dylib: dylib.name().to_string(),
                    export,
                    name: name.to_string(),
                },
            );
        }
        Ok(())
    }
}

impl MaterializationUnit for ImageUnit {
    fn name(&self) -> &str {
        &self.name
    }

    fn symbols(&self) -> Vec<(SymbolName, SymbolFlags)> {
        self.symbols.clone()
    }

    /// Maps the image and resolves its exports, asks for what it links
    /// against and returns: the rest runs when those are Resolved, as a
    /// task (as an object unit's link does), so no thread blocks on another
    /// unit in the common case. (The rest asks again, answered at once; a
    /// dependency found only by a later candidate is still waited for.)
    fn materialize(self: Box<Self>, r: Responsibility) {
        let started =
            self.with_parsed(|p| Ok((self.map_and_resolve(p, &r)?, self.ask_ahead(p, &r))));
        let (mapped, asked) = match started {
            Ok(started) => started,
            Err(e) => return r.fail(e),
        };
        crate::layer::when_all_complete(asked, move |_| {
            crate::layer::finish_unit(r, |r| Ok((self.bind_and_finish(mapped, r)?, ())));
        });
    }

    fn discard(&mut self, _dylib: &Dylib, name: &SymbolName) {
        // Another unit's definition won: the image keeps using its own.
        self.symbols.retain(|(n, _)| n != name);
    }
}

impl ImageUnit {
    /// Where dependency `d` is loaded, `(base, size)`: an image file added
    /// to the session (looked up at `Resolved`, which maps it; the export
    /// looked up joins `waits`), else any registered image with its build id.
    fn locate(
        &self,
        d: &ImageDependency,
        waits: &mut Vec<(Dylib, Vec<SymbolName>)>,
    ) -> Result<Option<(u64, u64)>, ImageError> {
        let session = self.layer.session();
        for added in self.layer.image_files(&d.build_id) {
            let Some(dylib) = session.dylib(&added.dylib) else {
                continue;
            };
            let order = SearchOrder::new().with(&dylib, DylibLookup::All);
            let found = resolved_lookup(session, order, [added.export.clone()])
                .wait()
                .map_err(|e| ImageError::Link {
                    name: self.name.clone(),
                    source: crate::Cause::new(LinkError::engine(
                        format!("loading {}", added.name),
                        e,
                    )),
                })?;
            let owner = found
                .get(&added.export)
                .and_then(|def| registry::image_at(def.address))
                .filter(|img| img.build_id == d.build_id);
            if let Some(img) = owner {
                waits.push((dylib, vec![added.export]));
                return Ok(Some((img.base, img.size)));
            }
        }
        Ok(registry::find(&d.build_id).map(|img| (img.base, img.size)))
    }

    /// The image's tables: parsed when added (the hash checked then; the
    /// unit's bytes have not changed since) — kept for a file, parsed again
    /// from bytes.
    fn with_parsed<T>(&self, f: impl FnOnce(&Parsed<'_>) -> Result<T, Error>) -> Result<T, Error> {
        match &self.source {
            Source::File(file) => f(file.parsed()),
            Source::Bytes(b) => {
                f(&read::parse_with(&self.name, b, false).map_err(Error::external)?)
            }
        }
    }

    /// (a) Maps the image and resolves its exports — own addresses first:
    /// units waiting at Resolved go on, among them an image it links
    /// against that imports from it (a cycle), which locating it waits for.
    fn map_and_resolve(&self, p: &Parsed<'_>, r: &Responsibility) -> Result<Mapped, Error> {
        let session = self.layer.session();
        let alloc = load::map_from(p, &self.name, self.source.file()).map_err(Error::external)?;
        let registration = load::register(p, &alloc, &self.name);
        let base = alloc.base();
        let owed: rustc_hash::FxHashMap<SymbolName, SymbolFlags> =
            r.symbols()?.into_iter().collect();
        let mut defs = Vec::with_capacity(owed.len());
        // The unit's symbols are the export table's names, interned when
        // it was added, in table order, less those discarded: reuse them
        // rather than intern every name again.
        let mut known = self.symbols.iter().peekable();
        for e in &p.exports {
            let n = match known.next_if(|(n, _)| n.as_str() == e.name) {
                Some((n, _)) => n.clone(),
                None => session.intern(e.name),
            };
            if let Some(&f) = owed.get(&n) {
                defs.push((n, SymbolDef::new(base + e.offset, f)));
            }
        }
        r.resolve(&defs)?;
        Ok(Mapped {
            alloc,
            registration,
            defs,
        })
    }

    /// The lookups [`ImageUnit::bind_and_finish`] makes, started without
    /// waiting: each dependency's first candidate and the imports.
    fn ask_ahead(&self, p: &Parsed<'_>, r: &Responsibility) -> Vec<kiln_engine::Lookup> {
        let session = self.layer.session();
        let mut asked = Vec::new();
        for d in &p.deps {
            let first = self
                .layer
                .image_files(&d.build_id)
                .into_iter()
                .find_map(|added| Some((session.dylib(&added.dylib)?, added.export)));
            if let Some((dylib, export)) = first {
                asked.push(resolved_lookup(
                    session,
                    SearchOrder::new().with(&dylib, DylibLookup::All),
                    [export],
                ));
            }
        }
        let names = load::import_names(p);
        let interned = names.names.iter().map(|n| session.intern(n));
        asked.push(resolved_lookup(session, r.dylib().link_order(), interned));
        asked
    }

    /// (b) Binds what the image links against — the images by build id,
    /// the imports through the link order — and (c) finalizes it: the
    /// tracker owns it. What to emit: its exports, depending on each import
    /// in the dylib it came from (and on one export of each image it links
    /// against).
    fn bind_and_finish(
        &self,
        mapped: Mapped,
        r: &Responsibility,
    ) -> Result<Vec<DependenceGroup>, Error> {
        self.with_parsed(|p| self.bind_and_finish_with(p, mapped, r))
    }

    fn bind_and_finish_with(
        &self,
        p: &Parsed<'_>,
        mapped: Mapped,
        r: &Responsibility,
    ) -> Result<Vec<DependenceGroup>, Error> {
        let err = |e: ImageError| Error::external(e);
        let Mapped {
            mut alloc,
            registration,
            defs,
        } = mapped;
        let session = self.layer.session();
        // Images it links against: all missing ones named at once.
        let mut per_dylib: Vec<(Dylib, Vec<SymbolName>)> = Vec::new();
        let deps = load::dependency_bases(
            p,
            &self.name,
            |d| self.locate(d, &mut per_dylib),
            |file| {
                let mut ids = self.layer.image_files_named(file);
                ids.extend(registry::named(file));
                ids.sort();
                ids.dedup();
                ids
            },
        )
        .map_err(err)?;
        // Imports through the link order, weakly, so every missing one is
        // named at once.
        let order = r.dylib().link_order();
        let names = load::import_names(p);
        let interned: Vec<SymbolName> = names.names.iter().map(|n| session.intern(n)).collect();
        let found = resolved_lookup(session, order.clone(), interned).wait()?;
        // An image imports addresses: a thread-local has none.
        let thread_local = found
            .by_request()
            .find(|(_, d)| d.is_some_and(|d| d.flags.is_thread_local()));
        if let Some((symbol, _)) = thread_local {
            let e = LinkError::ThreadLocalMismatch {
                symbol: symbol.to_string(),
                objects: self.name.clone(),
                used_as_thread_local: false,
            };
            let source = crate::Cause::new(e);
            return Err(err(ImageError::Link {
                name: self.name.clone(),
                source,
            }));
        }
        let answers: Vec<Option<u64>> = found
            .by_request()
            .map(|(_, d)| d.map(|d| d.address))
            .collect();
        load::bind(p, &mut alloc, &self.name, &names, &answers, &deps).map_err(err)?;
        // Final protections, runtime registration; the tracker owns it.
        let owned_exports;
        let exports = match &self.source {
            Source::File(f) => f.exports(),
            Source::Bytes(_) => {
                owned_exports = load::export_table(p);
                &owned_exports
            }
        };
        let image = load::finish(p, exports, alloc, &self.name).map_err(err)?;
        image.register_once(|| registration);
        // The image files it links against stay mapped while it is.
        self.layer.adopt(r, image, self.order, &deps)?;
        let entries = order.entries();
        for (name, _, source) in found.iter_with_source() {
            let dylib = &entries[source].0;
            match per_dylib.iter_mut().find(|(d, _)| d == dylib) {
                Some((_, names)) => names.push(name.clone()),
                None => per_dylib.push((dylib.clone(), vec![name.clone()])),
            }
        }
        Ok(vec![DependenceGroup::new(
            defs.into_iter().map(|(n, _)| n),
            per_dylib,
        )])
    }
}

/// An image mapped and its exports resolved, waiting for what it links
/// against.
struct Mapped {
    alloc: crate::memory::Allocation,
    registration: super::registry::Registration,
    defs: Vec<(SymbolName, SymbolDef)>,
}

/// A lookup of `names` through `order` at `Resolved`, weakly (missing ones
/// are named by the image's own error), as a static link's.
fn resolved_lookup(
    session: &kiln_engine::Session,
    order: SearchOrder,
    names: impl IntoIterator<Item = SymbolName>,
) -> kiln_engine::Lookup {
    session.lookup_with(
        &LookupRequest::new(order, LookupSet::weak(names), RequiredState::Resolved)
            .kind(LookupKind::Static),
    )
}
