//! Pass: host symbols out of 32-bit reach. Host data that 32-bit
//! references of live code cannot reach gets a copy in the image, host
//! code a PLT stub.

use super::got_plt::Requests;
use crate::error::LinkError;
use crate::graph::Reach32;
use crate::graph::{FxHashMap, FxHashSet, LinkGraph, SymbolDef, SymbolId};
use crate::memory::Placement;

/// What [`out_of_reach_host_symbols`] found.
#[derive(Debug, Default)]
pub(super) struct OutOfReach {
    /// Host data and its size, to copy into the image.
    pub(super) copies: Vec<(SymbolId, u64)>,
    /// Host code (or what the loader cannot classify), to call through a
    /// PLT stub.
    pub(super) stubs: Vec<SymbolId>,
}

/// Host symbols that 32-bit references of live code might not reach from
/// `placement`'s slab: data (with its size, to copy into the image) and
/// everything else (to call through a PLT stub). Decided address by
/// address with what the process's loader answers now (`dlsym`), so it
/// holds wherever the host's libraries are — even one loaded far away after
/// the slab was placed. Names the loader does not know (another image's,
/// found through the engine) are assumed in reach of the near slab (both
/// images are in it) and out of reach of the low one. Finalize checks the
/// resolved addresses again: a copy or stub is used only if still needed.
///
/// A PC-relative reference cannot go through a GOT, so a copy is the only
/// way to reach far data, and it is a documented approximation: a copy of
/// read-only data (typeinfo, vtables, constants — the usual case) is exact;
/// of writable data it is a snapshot, the value at link time, with the
/// image's writes kept in its copy — a copy relocation whose library side
/// is not redirected (kiln does not rewrite a loaded library's GOT). It
/// happens only out of reach: host data named by non-PIE code, or by PIE
/// code when the library lies beyond the near slab's reach (mapped far from
/// the others, or loaded after the slab was placed). `-fPIC` code names
/// external data through the GOT and never needs it.
pub(super) fn out_of_reach_host_symbols(
    graph: &LinkGraph,
    requests: &Requests,
    placement: Placement,
) -> Result<OutOfReach, LinkError> {
    let specials = &requests.specials;
    let slab = crate::memory::Slab::get(placement)?;
    let fits = |reach: Reach32, addr: u64| match reach {
        Reach32::PcRelative => slab.is_some_and(|s| s.reaches(addr)),
        Reach32::Unsigned => addr <= u64::from(u32::MAX),
        Reach32::Signed => addr < 1 << 31,
    };
    let this = libloading::os::unix::Library::this();
    let mut host: FxHashMap<SymbolId, Option<u64>> = FxHashMap::default();
    let mut far: Vec<SymbolId> = Vec::new();
    let mut far_seen: FxHashSet<SymbolId> = FxHashSet::default();
    // The scan kept the live edges to externals (most edges target the
    // image's own symbols): the graph has not changed since.
    for e in &requests.external_edges {
        let sym = &graph.symbols[e.target.index()];
        if sym.def != SymbolDef::External {
            continue;
        }
        let Some(reach) = e.reach32() else {
            continue;
        };
        if far_seen.contains(&e.target) || specials.contains_key(&e.target) {
            continue;
        }
        let Some(name) = &sym.name else { continue };
        let addr = *host
            .entry(e.target)
            .or_insert_with(|| crate::host::library_symbol(&this, name));
        let in_reach = match addr {
            Some(a) => fits(reach, a),
            None => placement == Placement::Near,
        };
        if !in_reach && far_seen.insert(e.target) {
            far.push(e.target);
        }
    }
    let mut out = OutOfReach::default();
    for sym in far {
        match host[&sym].and_then(crate::host::host_symbol_kind) {
            Some(crate::host::HostSymbolKind::Data(size)) if size > 0 => {
                out.copies.push((sym, size));
            }
            _ => out.stubs.push(sym),
        }
    }
    Ok(out)
}
