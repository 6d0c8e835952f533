//! Units of one layer that one engine step starts together (a lookup that
//! needs several objects added one by one), linked as one image: one
//! allocation, one fixup pass, calls between them direct, no lookups of
//! each other's symbols ([`MaterializationUnit::materialize_batch`]).
//!
//! The first unit's responsibility absorbs the others'
//! ([`Responsibility::absorb`]): the image's symbols are resolved once and
//! emitted once, as one group on every external — as an image of
//! [`super::ObjectLayer::add_objects`] is. Yet each unit fails on its own
//! when it references a symbol that is missing or failed, or when its code
//! cannot be fixed up, as if it had been linked alone: the responsibility
//! is split back by unit ([`Responsibility::delegate`]), those units fail
//! with the error their own link would give, and the others are emitted
//! each on what it references — so the engine fails those that reach a
//! failed unit, too. A unit that fails runs no code (batched units have no
//! initializers, and its symbols are never Ready); its bytes stay in the
//! image until the tracker is removed. When the image as a whole cannot be
//! laid out (steps 1–8: a COMDAT group two units carry, an object of
//! another ISA, memory for all at once), each unit is linked again alone
//! from its object's bytes ([`link_each_alone`]): the answer never depends
//! on whether one lookup started the units together. (Once the image's
//! symbols are resolved, other links may hold their addresses: a failure
//! of the whole image after that — its memory's protection, a block of the
//! linker's own — fails every unit.)
//!
//! Only units that link the same together as apart join
//! ([`joins_batches`]), in a dylib that looks in itself first for every
//! symbol, hidden ones too — so a name resolves inside the batch exactly
//! where the unit's own lookup would have found it. The others run alone,
//! each in a task of its own, as they would without the batch.

use std::sync::Arc;
use std::time::Instant;

use kiln_engine::unit::Batched;
use kiln_engine::{
    DependenceGroup, Dylib, DylibLookup, Error, LookupKind, LookupRequest, LookupSet,
    MaterializationUnit, RequiredState, Responsibility, SymbolDef, SymbolFlags, SymbolMap,
    SymbolName,
};

use super::{
    ObjectLayer, ObjectUnit, UnitInput, interned_externals, link_error, panic_message, track_image,
};
use crate::error::LinkError;
use crate::graph::{FxHashMap, LinkGraph, ObjectId, SectionRole, SymbolId};
use crate::passes::{self, LinkHost, Prepared, Roots};
use crate::runtime;

/// Whether a unit of `graph` (offering globals with `flags`) links the same
/// in a batch as alone: no weak definition (another unit may win it), no
/// initializer or finalizer (a unit that fails in a batch must run no
/// code), no archive member (pruned against its own roots), no
/// thread-locals of its own (a batch's TLS block is one: whether it gets
/// a range of kiln's static TLS area, which code of the local-exec and
/// initial-exec models needs, would depend on the other units) — and, learned
/// while its globals are listed, no `__start_`/`__stop_` reference (it
/// would span every unit's sections), no reference to another image's
/// thread-local (binding one can fail at fixup, which would fail every
/// unit of the image) and no global of local scope (two units may each
/// have one). Asked once, when the unit is made.
pub(super) fn joins_batches(graph: &LinkGraph, flags: &[SymbolFlags]) -> bool {
    !flags.iter().any(|f| f.is_weak())
        && !graph.sections.iter().any(|s| s.role.is_init_fini())
        && !graph.objects.iter().any(|o| o.library)
        && !graph
            .sections
            .iter()
            .any(|s| matches!(s.role, SectionRole::TlsData | SectionRole::TlsBss))
}

/// A name the linker defines as the start or end of a section.
pub(super) fn delimits_a_section(name: &str) -> bool {
    name.starts_with("__start_") || name.starts_with("__stop_")
}

/// [`ObjectUnit`]'s `materialize_batch`: the units that can join are linked
/// together; each other one runs alone, in a task of its own (as without
/// the batch: a pool links them side by side).
pub(super) fn materialize_together(
    first: Box<ObjectUnit>,
    r: Responsibility,
    others: Vec<Batched>,
) {
    let together = looks_in_itself_first(&r);
    let mut joining = Vec::with_capacity(others.len() + 1);
    for other in others {
        let joins = together
            && other
                .downcast_ref::<ObjectUnit>()
                .is_some_and(ObjectUnit::can_join);
        if !joins {
            other.dispatch();
            continue;
        }
        match other.downcast::<ObjectUnit>() {
            Ok(unit) => joining.push(unit),
            Err(other) => other.dispatch(),
        }
    }
    if together && first.can_join() {
        joining.insert(0, (first, r));
    } else {
        first.materialize(r);
    }
    match joining.len() {
        0 => {}
        1 => {
            for (unit, r) in joining {
                unit.materialize(r);
            }
        }
        _ => link_together(joining),
    }
}

/// The dylib's link order starts with itself, every symbol visible: where
/// a unit's lookup finds a symbol another unit of the batch defines.
fn looks_in_itself_first(r: &Responsibility) -> bool {
    let order = r.dylib().link_order();
    order
        .entries()
        .first()
        .is_some_and(|(d, how)| d == r.dylib() && *how == DylibLookup::All)
}

/// A unit of a batch and its part of the merged graph.
struct Member {
    unit: Box<ObjectUnit>,
    /// Its objects in the merged graph: `first..end`.
    objects: (u32, u32),
    /// Its globals by id in the merged graph; their names move to the
    /// batch's definitions at step 9.
    globals: Vec<(SymbolName, SymbolId)>,
    /// Its definitions: `defs[start..end]` of the batch.
    defs: (usize, usize),
}

/// Steps 1–9 of the merged graph of `joining` under one responsibility,
/// then its externals asked once for all.
fn link_together(mut joining: Vec<(Box<ObjectUnit>, Responsibility)>) {
    joining.sort_by_key(|(unit, _)| unit.order);
    let started = Instant::now();
    let layer = joining[0].0.layer.clone();
    let (graph, mut members, r) = match merge(joining) {
        Ok(merged) => merged,
        Err(failed) => {
            for (r, e) in failed {
                r.fail(e);
            }
            return;
        }
    };
    let options = &layer.shared.options;
    let prepared = match passes::prepare(
        layer.own(graph),
        &Roots::All,
        options.imaging,
        layer.below_2gib(),
    ) {
        Ok(prepared) => prepared,
        // The image as a whole cannot be laid out (one unit's COMDAT copy
        // replaced by another's, memory for all at once): which unit fails
        // is for its own link to say.
        Err(_) => {
            let alone = members.into_iter().map(|m| {
                let names = m.globals.into_iter().map(|(n, _)| n).collect();
                (m.unit, names)
            });
            return link_each_alone(r, alone.collect());
        }
    };
    let mut host = BatchHost {
        r: &r,
        members: &mut members,
        defs: Vec::new(),
    };
    let start = passes::Start::Prepared(Box::new(prepared));
    let env = super::image_env(&image_name(host.members));
    let prepared = match passes::before_externals(start, &mut host, &env, options) {
        Ok(prepared) => prepared,
        Err(e) => return r.fail(e),
    };
    let defs = host.defs;
    let session = layer.session.clone();
    let externals = interned_externals(&prepared, &session);
    let order = r.dylib().link_order();
    let lookup = session.lookup_with(
        &LookupRequest::new(
            order.clone(),
            LookupSet::weak(externals.iter().map(|(_, n)| n.clone())),
            RequiredState::Resolved,
        )
        .kind(LookupKind::Static),
    );
    let batch = Batch {
        layer,
        r,
        members,
        defs,
        prepared,
        externals,
        order,
        started,
        prepared_at: Instant::now(),
    };
    lookup.on_complete(move |found| match found {
        Ok(found) => {
            let answers = Answers::of_union(&batch, &found);
            batch.finish(answers);
        }
        // Some external failed: which units reference it is for each
        // unit's own lookup to say.
        Err(_) => batch.ask_each(),
    });
}

/// The units' graphs merged, in order, with each one's objects and globals
/// in the merged graph, and the first's responsibility, which absorbed
/// the others'; or each responsibility with the error that stopped it.
#[allow(clippy::type_complexity)]
fn merge(
    joining: Vec<(Box<ObjectUnit>, Responsibility)>,
) -> Result<(LinkGraph, Vec<Member>, Responsibility), Vec<(Responsibility, Error)>> {
    let mut joining = joining.into_iter();
    let Some((first_unit, mut first)) = joining.next() else {
        return Err(Vec::new());
    };
    let mut merged = LinkGraph::default();
    let (symbols, blocks, globals) = room_for(&first_unit, joining.as_slice());
    merged.reserve(symbols, blocks, globals);
    let mut members = Vec::with_capacity(joining.len() + 1);
    let mut others = Vec::with_capacity(joining.len());
    for (i, (mut unit, r)) in std::iter::once((first_unit, None))
        .chain(joining.map(|(u, r)| (u, Some(r))))
        .enumerate()
    {
        let (graph, parsed) = match unit.input.take() {
            Some(UnitInput::Graph(graph)) => (graph, false),
            Some(UnitInput::Parsed(graph)) => (graph, true),
            _ => {
                let bug = Error::msg(format!(
                    "{}: a unit joined a batch without its graph (linker bug)",
                    unit.name
                ));
                return Err(std::iter::once(first)
                    .chain(others)
                    .chain(r)
                    .map(|r| (r, bug.clone()))
                    .collect());
            }
        };
        let globals = std::mem::take(&mut unit.globals);
        // A parsed first graph is adopted (its ids stay); the others are
        // merged as their parse gave them, their names entered once.
        let (objects, globals) = if i == 0 && !parsed {
            let end = graph.objects.len() as u32;
            merged = *graph;
            ((0, end), globals)
        } else {
            let (ObjectId(start), map) = merged.merge_mapped(*graph);
            let globals = globals
                .into_iter()
                .map(|(n, id)| (n, map[id.index()]))
                .collect();
            ((start, merged.objects.len() as u32), globals)
        };
        others.extend(r);
        members.push(Member {
            unit,
            objects,
            globals,
            defs: (0, 0),
        });
    }
    // One engine request for all: the others' symbols are the first's to
    // resolve and emit.
    match first.absorb(others) {
        Ok(()) => Ok((merged, members, first)),
        Err(e) => Err(vec![(first, e)]),
    }
}

/// Room for the merged graph of `first` and `others`: every symbol and
/// block, and every global a unit offers plus the most names one unit
/// references (the others' references are mostly to what a unit offers).
/// Taken at once, the merged name table is not rehashed at each unit's
/// growth (at 100,000 names, 2 % of W9's time).
fn room_for(
    first: &ObjectUnit,
    others: &[(Box<ObjectUnit>, Responsibility)],
) -> (usize, usize, usize) {
    let (mut symbols, mut blocks, mut offered, mut referenced) = (0, 0, 0, 0);
    for unit in std::iter::once(first).chain(others.iter().map(|(u, _)| &**u)) {
        if let Some(UnitInput::Graph(graph) | UnitInput::Parsed(graph)) = &unit.input {
            symbols += graph.symbols.len();
            blocks += graph.blocks.len();
            let globals = graph.globals.len().max(graph.unmerged_globals.len());
            referenced = usize::max(referenced, globals.saturating_sub(unit.globals.len()));
        }
        offered += unit.globals.len();
    }
    (symbols, blocks, offered + referenced)
}

/// Step 9 of a batch: the units' own addresses, resolved at once.
struct BatchHost<'a> {
    r: &'a Responsibility,
    members: &'a mut [Member],
    /// Every unit's definitions, reported at step 9, emitted at the end.
    defs: Vec<(SymbolName, SymbolDef)>,
}

impl LinkHost for BatchHost<'_> {
    type Error = Error;

    fn link_error(&self, e: LinkError) -> Error {
        link_error(e)
    }

    fn own_symbols_resolved(&mut self, prepared: &Prepared) -> Result<(), Error> {
        let count = self.members.iter().map(|m| m.globals.len()).sum();
        let mut defs = Vec::with_capacity(count);
        for m in self.members.iter_mut() {
            let start = defs.len();
            // Joined units have no weak definitions: each owes all it offered.
            for ((n, id), &flags) in std::mem::take(&mut m.globals)
                .into_iter()
                .zip(&m.unit.flags)
            {
                if let Some(address) = prepared.exported_value(id).map_err(link_error)? {
                    defs.push((n, SymbolDef::new(address, flags)));
                }
            }
            m.defs = (start, defs.len());
        }
        self.r.resolve(&defs)?;
        self.defs = defs;
        Ok(())
    }
}

/// A batch waiting for its externals.
struct Batch {
    layer: ObjectLayer,
    /// Every unit's responsibility, absorbed by the first's.
    r: Responsibility,
    members: Vec<Member>,
    defs: Vec<(SymbolName, SymbolDef)>,
    prepared: Prepared,
    /// The merged graph's externals, as asked.
    externals: Vec<(SymbolId, SymbolName)>,
    /// The dylib's link order, which they were looked up through.
    order: kiln_engine::SearchOrder,
    started: Instant,
    prepared_at: Instant,
}

/// What the session answered for a batch's externals.
struct Answers {
    /// By external: its definition and the dylib it was found in.
    defs: Vec<Option<(SymbolDef, Dylib)>>,
    /// By unit: why it fails, if it does.
    failed: Vec<Option<Error>>,
}

impl Answers {
    /// From the one lookup of every external.
    fn of_union(batch: &Batch, found: &SymbolMap) -> Answers {
        let entries = batch.order.entries();
        let defs = found
            .by_request()
            .map(|(name, def)| {
                let source = found.found_in(name)?;
                Some((*def?, entries.get(source)?.0.clone()))
            })
            .collect();
        Answers {
            defs,
            failed: vec![None; batch.members.len()],
        }
    }

    /// The found ones of `wanted` (indices of externals), by dylib.
    fn by_dylib(
        &self,
        externals: &[(SymbolId, SymbolName)],
        wanted: impl Iterator<Item = usize>,
    ) -> Vec<(Dylib, Vec<SymbolName>)> {
        super::by_dylib(wanted.filter_map(|i| {
            let (_, dylib) = self.defs[i].as_ref()?;
            Some((externals[i].1.clone(), dylib))
        }))
    }
}

/// What a batch's units reference: by unit, the other units and the
/// externals (by index in [`Batch::externals`]).
struct References {
    units: Vec<Vec<usize>>,
    externals: Vec<Vec<usize>>,
}

/// One pass over the merged graph's references (only when some unit
/// fails, or its lookup did).
fn references(
    graph: &LinkGraph,
    members: &[Member],
    externals: &[(SymbolId, SymbolName)],
) -> References {
    let external_index: FxHashMap<SymbolId, usize> = externals
        .iter()
        .enumerate()
        .map(|(i, (id, _))| (*id, i))
        .collect();
    let n = members.len();
    // Each object's unit, by object id (members hold consecutive ranges).
    let objects = members.last().map_or(0, |m| m.objects.1 as usize);
    let mut unit_of_object = vec![None; objects];
    for (unit, m) in members.iter().enumerate() {
        unit_of_object[m.objects.0 as usize..m.objects.1 as usize].fill(Some(unit));
    }
    let unit_of = |o: ObjectId| unit_of_object.get(o.index()).copied().flatten();
    let (mut units, mut externals) = (vec![Vec::new(); n], vec![Vec::new(); n]);
    graph.visit_references(|from, to, defined_in| {
        let Some(from) = unit_of(from) else { return };
        match defined_in {
            Some(o) => {
                if let Some(to) = unit_of(o).filter(|&to| to != from) {
                    units[from].push(to);
                }
            }
            None => {
                if let Some(&i) = external_index.get(&to) {
                    externals[from].push(i);
                }
            }
        }
    });
    // An external no unit's code references (only the linker's own
    // blocks, if any) is the first unit's: asked, and failing it, rather
    // than left to the placeholder.
    let mut referenced = vec![false; external_index.len()];
    for &i in externals.iter().flatten() {
        referenced[i] = true;
    }
    if let Some(first) = externals.first_mut() {
        first.extend((0..referenced.len()).filter(|&i| !referenced[i]));
    }
    for list in units.iter_mut().chain(externals.iter_mut()) {
        list.sort_unstable();
        list.dedup();
    }
    References { units, externals }
}

impl Batch {
    /// Asks each unit's externals on its own (after the union failed), then
    /// finishes with what each answered.
    fn ask_each(self) {
        let refs = references(self.prepared.graph(), &self.members, &self.externals);
        let session = &self.layer.session;
        let lookups = refs
            .externals
            .iter()
            .map(|wanted| {
                let request = LookupRequest::new(
                    self.order.clone(),
                    LookupSet::weak(wanted.iter().map(|&i| self.externals[i].1.clone())),
                    RequiredState::Resolved,
                )
                .kind(LookupKind::Static);
                session.lookup_with(&request)
            })
            .collect();
        // The last answer finishes the batch.
        super::when_all_complete(lookups, move |results| {
            let answers = self.answers_of_each(&refs, results);
            self.finish(answers);
        });
    }

    /// The answers of each unit's own lookup (one result a unit, in
    /// order), put together.
    fn answers_of_each(
        &self,
        refs: &References,
        results: Vec<kiln_engine::Result<SymbolMap>>,
    ) -> Answers {
        let entries = self.order.entries();
        let mut answers = Answers {
            defs: vec![None; self.externals.len()],
            failed: vec![None; self.members.len()],
        };
        for (unit, result) in results.into_iter().enumerate() {
            match result {
                Ok(found) => {
                    for (&i, (name, def)) in refs.externals[unit].iter().zip(found.by_request()) {
                        let source = found.found_in(name).and_then(|s| entries.get(s));
                        if let (Some(def), Some((dylib, _))) = (def, source) {
                            answers.defs[i] = Some((*def, dylib.clone()));
                        }
                    }
                }
                Err(e) => answers.failed[unit] = Some(e),
            }
        }
        answers
    }

    /// Steps 10–12 with the `answers`, then the units emitted (or some
    /// failed).
    fn finish(self, mut answers: Answers) {
        let Batch {
            layer,
            r,
            members,
            defs,
            prepared,
            externals,
            order: _,
            started,
            prepared_at,
        } = self;
        let linked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let times = (started, prepared_at);
            link_image(
                &layer,
                &r,
                &members,
                prepared,
                &externals,
                &mut answers,
                times,
            )
        }));
        match linked {
            Ok(Ok((None, graph))) => {
                // Every unit links: the image's symbols as one group on
                // every external, as one image's.
                let deps = answers.by_dylib(&externals, 0..externals.len());
                let symbols = defs.into_iter().map(|(n, _)| n);
                let _ = r.emit(vec![DependenceGroup::new(symbols, deps)]);
                drop(graph);
            }
            Ok(Ok((Some(refs), graph))) => {
                emit_apart(r, members, defs, &externals, answers, &refs);
                drop(graph);
            }
            // The image as a whole failed after its symbols were resolved
            // (its memory's protection, a block of the linker's own): not
            // linked again alone — other links may hold those addresses
            // already; failing, their units fail with these.
            Ok(Err(e)) => r.fail(e),
            Err(panic) => {
                let unit = Arc::from(r.unit_name());
                let message = panic_message(&*panic);
                r.fail(Error::Panicked { unit, message });
            }
        }
    }
}

/// Each unit of a batch whose image could not be linked as a whole,
/// linked alone from its source under its part of `r` (`units`: each
/// with the names it offered): each gets the answer its own link gives,
/// never an error of another unit's or of the batch's.
fn link_each_alone(mut r: Responsibility, units: Vec<(Box<ObjectUnit>, Vec<SymbolName>)>) {
    let mut alone = Vec::with_capacity(units.len());
    for (unit, names) in units {
        match r.delegate(&names) {
            Ok(unit_r) => alone.push((unit, unit_r)),
            Err(e) => return r.fail(e),
        }
    }
    // Owes nothing now.
    let _ = r.emit(Vec::new());
    for (unit, unit_r) in alone {
        match unit.again_alone() {
            Ok(unit) => unit.materialize(unit_r),
            Err(e) => unit_r.fail(link_error(e)),
        }
    }
}

/// The name of a batch's image: its first unit's, and how many more.
fn image_name(members: &[Member]) -> String {
    match members {
        [first, rest @ ..] => format!("{} (+{} linked with it)", first.unit.name, rest.len()),
        [] => String::new(),
    }
}

/// Steps 10–12 of a batch's image: externals recorded (a missing one fails
/// the units that reference it, and only them), fixup, finalize, the image
/// tracked. Returns the units' references when some unit fails (for their
/// emission apart), and the graph to free after the emit.
fn link_image(
    layer: &ObjectLayer,
    r: &Responsibility,
    members: &[Member],
    mut prepared: Prepared,
    externals: &[(SymbolId, SymbolName)],
    answers: &mut Answers,
    (started, prepared_at): (Instant, Instant),
) -> Result<(Option<References>, Option<LinkGraph>), Error> {
    let resolved_at = Instant::now();
    prepared.set_lookup_time(resolved_at - prepared_at);
    let found_tls = externals.iter().zip(&answers.defs);
    let found_tls =
        found_tls.filter_map(|((id, _), d)| Some((*id, d.as_ref()?.0.flags.is_thread_local())));
    let misfits = prepared.thread_local_mismatches(found_tls);
    let mut data = Vec::new();
    let given: Vec<(SymbolId, Option<u64>)> = externals
        .iter()
        .zip(&answers.defs)
        .map(|((id, _), def)| {
            if def.as_ref().is_some_and(|(d, _)| !d.flags.is_callable()) {
                data.push(*id);
            }
            let misfit = misfits.iter().any(|(m, _)| m == id);
            (
                *id,
                def.as_ref().filter(|_| !misfit).map(|(d, _)| d.address),
            )
        })
        .collect();
    // Only units that fail reference a missing (or misfit) symbol, and
    // they run no code: their references are fixed up to a place inside
    // the image, which every kind of reference reaches.
    let placeholder = prepared.dso_handle();
    let missing = prepared.resolve_external_ids_or(&given, placeholder);
    prepared.mark_data_externals(data);
    let some_fail = !missing.is_empty() || !misfits.is_empty();
    let mut refs = (some_fail || answers.failed.iter().any(Option::is_some))
        .then(|| references(prepared.graph(), members, externals));
    if let Some(refs) = &refs {
        fail_misfits(members, externals, &misfits, refs, answers);
        fail_missing(members, externals, &missing, refs, answers);
    }
    let name = image_name(members);
    let dso = runtime::DsoHandle::new_at(name.clone(), prepared.dso_handle() as usize)
        .map_err(|e| link_error(LinkError::runtime(&name, e)))?;
    let env = super::image_env(&name);
    let mut options = layer.shared.options.clone();
    options.symbol_table = false;
    let ((finalized, graph), unfixed) =
        passes::fix_up_and_finalize_apart(prepared, &env, &options).map_err(link_error)?;
    if !unfixed.is_empty() {
        fail_unfixed(members, unfixed, answers)?;
        if refs.is_none() {
            let Some(g) = graph.as_ref().or(finalized.graph.as_ref()) else {
                let bug = LinkError::engine_bug("a batch's graph is gone after its fixup");
                return Err(link_error(bug));
            };
            refs = Some(references(g, members, externals));
        }
    }
    let stats = finalized.stats;
    let finalized_at = Instant::now();
    let image = members[0].unit.layer_image(&name, finalized, dso, r)?;
    let times = (
        prepared_at - started,
        resolved_at - prepared_at,
        finalized_at - resolved_at,
    );
    track_image(layer, r, image, times, &stats)?;
    Ok((refs, graph))
}

/// Each unit with an object whose blocks could not be fixed up (`unfixed`:
/// the object and its first error) fails with that error — the error its
/// own link would have given — unless it fails already. A block no unit
/// owns (the linker's own) fails the whole image, as alone.
fn fail_unfixed(
    members: &[Member],
    unfixed: passes::Unfixed,
    answers: &mut Answers,
) -> Result<(), Error> {
    for (object, e) in unfixed {
        // Members hold consecutive ranges of objects, in order.
        let unit = object.and_then(|o| {
            let u = members.partition_point(|m| m.objects.1 <= o.0);
            members.get(u).filter(|m| m.objects.0 <= o.0).map(|_| u)
        });
        match unit.and_then(|u| answers.failed.get_mut(u)) {
            Some(failed) => {
                failed.get_or_insert_with(|| link_error(e));
            }
            None => return Err(link_error(e)),
        }
    }
    Ok(())
}

/// Each unit that references a `missing` external fails with the error
/// its own link would have given (unless it fails already).
fn fail_missing(
    members: &[Member],
    externals: &[(SymbolId, SymbolName)],
    missing: &[SymbolId],
    refs: &References,
    answers: &mut Answers,
) {
    for (unit, m) in members.iter().enumerate() {
        if answers.failed[unit].is_some() {
            continue;
        }
        let mut names: Vec<(String, Vec<String>)> = refs.externals[unit]
            .iter()
            .filter(|&&i| missing.contains(&externals[i].0))
            .map(|&i| (externals[i].1.to_string(), vec![m.unit.name.clone()]))
            .collect();
        if !names.is_empty() {
            names.sort();
            let e = LinkError::MissingSymbols { missing: names };
            answers.failed[unit] = Some(link_error(e));
        }
    }
}

/// Fails each unit that references an external its definition disagrees
/// with on being thread-local (`misfits`), as linked alone it would.
fn fail_misfits(
    members: &[Member],
    externals: &[(SymbolId, SymbolName)],
    misfits: &[(SymbolId, LinkError)],
    refs: &References,
    answers: &mut Answers,
) {
    for (unit, m) in members.iter().enumerate() {
        let misfit = refs.externals[unit]
            .iter()
            .find_map(|&i| misfits.iter().find(|(id, _)| *id == externals[i].0));
        if let (None, Some((_, e))) = (&answers.failed[unit], misfit)
            && let LinkError::ThreadLocalMismatch {
                symbol,
                used_as_thread_local,
                ..
            } = e
        {
            let e = LinkError::ThreadLocalMismatch {
                symbol: symbol.clone(),
                objects: m.unit.name.clone(),
                used_as_thread_local: *used_as_thread_local,
            };
            answers.failed[unit] = Some(link_error(e));
        }
    }
}

/// Some unit fails: the batch's responsibility is split back by unit, the
/// failing ones fail, and each other unit is emitted depending on the
/// units and externals it references — the engine fails those that reach
/// a failed unit, with its cause.
fn emit_apart(
    mut r: Responsibility,
    members: Vec<Member>,
    defs: Vec<(SymbolName, SymbolDef)>,
    externals: &[(SymbolId, SymbolName)],
    answers: Answers,
    refs: &References,
) {
    let own = r.dylib().clone();
    let names = |m: &Member| -> Vec<SymbolName> {
        defs[m.defs.0..m.defs.1]
            .iter()
            .map(|(n, _)| n.clone())
            .collect()
    };
    let firsts: Vec<Option<SymbolName>> =
        members.iter().map(|m| names(m).first().cloned()).collect();
    let mut apart = Vec::with_capacity(members.len());
    for m in &members {
        match r.delegate(&names(m)) {
            Ok(unit_r) => apart.push(unit_r),
            Err(e) => return r.fail(e),
        }
    }
    // Owes nothing now.
    let _ = r.emit(Vec::new());
    let mut failed = answers.failed.clone();
    let mut emitting = Vec::new();
    for (u, unit_r) in apart.into_iter().enumerate() {
        match failed[u].take() {
            Some(e) => unit_r.fail(e),
            None => emitting.push((u, unit_r)),
        }
    }
    for (u, unit_r) in emitting {
        let mut deps = answers.by_dylib(externals, refs.externals[u].iter().copied());
        let units: Vec<SymbolName> = refs.units[u]
            .iter()
            .filter_map(|&v| firsts[v].clone())
            .collect();
        if !units.is_empty() {
            deps.push((own.clone(), units));
        }
        let _ = unit_r.emit(vec![DependenceGroup::new(names(&members[u]), deps)]);
    }
}
