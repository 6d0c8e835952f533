//! The linker's pass pipeline: one pass a file, run in order by one
//! sequencer, `run` (with `prepare` and `place`, the steps that need
//! nothing from outside the graph).
//!
//! | step | pass | file |
//! |---|---|---|
//! | 1 | report every duplicate strong definition at once | `duplicates.rs` |
//! | 2 | COMMON symbols become zero-filled blocks | `commons.rs` |
//! | 3 | prune what nothing live reaches (FDEs go with their code) | `prune.rs` |
//! | 4 | imaging mode: refuse what an image cannot express | `image_file/classify.rs` |
//! | 5 | GOT entries and PLT stubs live code asks for | `got_plt.rs` |
//! | 6 | host symbols out of 32-bit reach: copies and stubs | `reach.rs` |
//! | 7 | layout: RX, R, RW; TLS apart | `layout.rs` |
//! | 7b | calls out of the ISA's direct reach: veneers, layout again | `veneers.rs` |
//! | 8 | allocate: memory and final block addresses | `allocate.rs` |
//! | 8b | the TLS module (id, static range) | `fixup.rs` |
//! | 9 | resolve the graph's own symbols (the host may report them) | `own_symbols.rs` |
//! | 10 | resolve externals through the host | `externals.rs` |
//! | 11 | fixup: GOT, PLT, every block (rayon for large graphs) | `fixup.rs` |
//! | 12 | finalize: `.eh_frame`, init/fini, TLS image, protections, debuggers | `finalize.rs` |
//!
//! Both users run this sequence: the convenient [`crate::Linker`] through
//! [`link_graph`] (`run`, with a host that answers step 10 at once), the
//! engine's object layer ([`crate::layer`]) in its two halves around step
//! 10: `before_externals` with a `LinkHost` that reports the image's own
//! symbols to the engine, then — when the session's lookup of the
//! externals answers, which the layer does not block for —
//! `fix_up_and_finalize`. The layer may run steps 1–8 early, on a rayon
//! thread (`prepare`, what `before_externals` does first for a
//! `Start::Graph`), and then hands it the result.
//!
//! No pass names an ISA: what an edge asks for is read from its
//! `kiln_arch::EdgeDesc` (`edges.rs`), and the fixup is generic over
//! `kiln_arch::RelocArch`, entered through the graph's [`crate::isa::Isa`].

mod allocate;
mod commons;
mod duplicates;
mod edges;
mod externals;
mod finalize;
mod fixup;
mod got_plt;
mod layout;
mod own_symbols;
mod prepared;
mod prune;
mod reach;
mod types;
mod veneers;

use std::time::Instant;

pub use commons::allocate_commons;
pub use duplicates::check_duplicates;
pub use prepared::Prepared;
use prepared::Special;
pub use prune::prune;
pub use types::{
    DefinedFlags, DefinedSymbol, Finalized, ImageEnv, LinkOptions, LinkStats, PhaseTimings, Roots,
    TlsLayout,
};

use crate::error::LinkError;
use crate::graph::LinkGraph;
use crate::host::SymbolResolver;

/// Link `graph` all the way (the convenient [`crate::Linker`]): the
/// pipeline, externals answered by `resolver`.
pub fn link_graph(
    graph: LinkGraph,
    resolver: &dyn SymbolResolver,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<Finalized, LinkError> {
    let start = Start::Graph {
        graph: Box::new(graph),
        roots: &options.roots,
        below_2gib: false,
    };
    let mut host = ResolverHost {
        resolver,
        imaging: options.imaging,
    };
    let (finalized, graph) = run(start, &mut host, env, options)?;
    match graph {
        // The process exits soon: its exit releases the graph at once.
        Some(graph) if options.leave_graph_to_exit => std::mem::forget(graph),
        Some(graph) => free_graph(graph),
        None => {}
    }
    Ok(finalized)
}

/// Graphs with at least this many blocks are freed on a rayon thread.
const FREE_IN_BACKGROUND_BLOCKS: usize = 4096;

/// Frees a linked graph: a big one on a rayon thread, as the engine layer
/// frees its graphs after the emit. Its blocks' bytes, edges and names are
/// many small allocations (13.7 M instructions for the 200-object aarch64
/// synth input) that the caller of [`link_graph`] need not wait for.
fn free_graph(graph: LinkGraph) {
    if !graph.serial && graph.blocks.len() >= FREE_IN_BACKGROUND_BLOCKS {
        rayon::spawn(move || drop(graph));
    } else {
        drop(graph);
    }
}

/// Where the pipeline meets its user: the engine's object layer reports
/// the image's own addresses to its session; [`link_graph`]'s host reports
/// nothing.
pub(crate) trait LinkHost {
    /// The host's error; link errors become one with [`LinkHost::link_error`].
    type Error;

    /// `e` as the host's error.
    fn link_error(&self, e: LinkError) -> Self::Error;

    /// Step 9: the graph's own symbols have their final addresses
    /// ([`Prepared::defined_address`]).
    fn own_symbols_resolved(&mut self, prepared: &Prepared) -> Result<(), Self::Error>;
}

/// A host that answers step 10 at once: [`run`] asks it and goes on. (The
/// object layer asks its session without blocking and goes on with
/// [`fix_up_and_finalize`] when the answer comes.)
pub(crate) trait ResolvesExternals: LinkHost {
    /// Step 10: record the address of every external
    /// ([`Prepared::external_symbols`], [`Prepared::resolve_external_ids`]).
    fn resolve_externals(&mut self, prepared: &mut Prepared) -> Result<(), Self::Error>;
}

/// What [`run`] hands back: the image, and the graph to free (unless
/// [`LinkOptions::keep_graph`] kept it in [`Finalized::graph`]).
pub(crate) type FinalizedKeeping = (Finalized, Option<LinkGraph>);

/// What [`run`] starts from.
#[derive(Debug)]
pub(crate) enum Start<'a> {
    /// A graph as read: every step runs.
    Graph {
        graph: Box<LinkGraph>,
        /// Which blocks are roots for pruning.
        roots: &'a Roots,
        /// Place the image below 2 GiB although its own code would not need it.
        below_2gib: bool,
    },
    /// A graph [`prepare`]d already (steps 1–8).
    Prepared(Box<Prepared>),
}

/// The pipeline, in order: [`before_externals`] (steps 1–9), the host's
/// answer for the externals (step 10), [`fix_up_and_finalize`] (steps
/// 11–12). Hands the graph back (unless [`LinkOptions::keep_graph`] put it
/// in [`Finalized::graph`]) instead of freeing it: freeing a big graph
/// takes milliseconds, which the engine layer spends after the image is
/// emitted.
pub(crate) fn run<H: ResolvesExternals>(
    start: Start<'_>,
    host: &mut H,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<FinalizedKeeping, H::Error> {
    let mut prepared = before_externals(start, host, env, options)?;
    // 10. One question for every external; all missing ones in one error.
    let t = Instant::now();
    host.resolve_externals(&mut prepared)?;
    prepared.set_lookup_time(t.elapsed());
    // 11–12. Fixup (parallel for large graphs) and finalize memory.
    fix_up_and_finalize(prepared, env, options).map_err(|e| host.link_error(e))
}

/// Steps 1–9: [`prepare`] unless `start` is prepared already, the image's
/// TLS module, then the host hears the image's own addresses. What is
/// left needs the externals' addresses.
pub(crate) fn before_externals<H: LinkHost>(
    start: Start<'_>,
    host: &mut H,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<Prepared, H::Error> {
    let mut prepared = match start {
        Start::Graph {
            mut graph,
            roots,
            below_2gib,
        } => {
            graph.serial |= !options.parallel;
            prepare(*graph, roots, options.imaging, below_2gib).map_err(|e| host.link_error(e))?
        }
        Start::Prepared(prepared) => *prepared,
    };
    // 8b. The TLS module: its id and static range are what the image's
    // thread-locals are to other images.
    prepared
        .set_up_tls_module(env)
        .map_err(|e| host.link_error(e))?;
    // 9. The graph's own symbols are final: the engine reports them here.
    host.own_symbols_resolved(&prepared)?;
    Ok(prepared)
}

/// Steps 1–8: everything that needs nothing from outside the graph. Every
/// block ends up with its final address.
pub(crate) fn prepare(
    mut graph: LinkGraph,
    roots: &Roots,
    imaging: bool,
    below_2gib: bool,
) -> Result<Prepared, LinkError> {
    let t0 = Instant::now();
    // 0. One ISA; another than the host's only for an image.
    check_target(&graph, imaging)?;
    // 1. Report every duplicate strong definition at once.
    check_duplicates(&mut graph)?;
    // 2. COMMON symbols become zero-fill blocks.
    allocate_commons(&mut graph);
    // 3. Drop what nothing live reaches, and the FDEs of dropped code.
    prune(&mut graph, roots)?;
    // 4. Imaging mode: refuse what an image cannot express, before any memory.
    if imaging {
        crate::image_file::classify::check_graph(&graph)?;
    }
    let t1 = Instant::now();
    let mut prepared = place(graph, below_2gib)?;
    prepared.timings.prune = t1 - t0;
    prepared.timings.allocate = t1.elapsed();
    Ok(prepared)
}

/// The graph's objects are all of one ISA, and of the host's unless the
/// link makes an image (which another machine runs).
fn check_target(graph: &LinkGraph, imaging: bool) -> Result<(), LinkError> {
    graph.check_isa()?;
    let isa = graph.isa();
    if isa != crate::isa::Isa::HOST && !imaging {
        return Err(LinkError::ForeignIsa {
            object: graph
                .objects
                .first()
                .map_or_else(String::new, |o| o.name.to_string()),
            isa: isa.name(),
            host: crate::isa::Isa::HOST.name(),
        });
    }
    Ok(())
}

/// Steps 5–8 on a pruned graph: GOT and PLT, far host symbols, layout,
/// memory. The image goes below 2 GiB when its own code needs it (non-PIE:
/// 32-bit absolute addresses) or `below_2gib` asks, near the host's
/// libraries otherwise.
pub(crate) fn place(mut graph: LinkGraph, below_2gib: bool) -> Result<Prepared, LinkError> {
    // 5. What live code asks for: GOT entries, PLT stubs, placement.
    let mut requests = got_plt::scan(&graph);
    let placement = allocate::placement(&requests, below_2gib);
    // 6. Host symbols 32-bit references cannot reach from there: functions
    // get a PLT stub (their address then is the stub's), data a copy.
    let far = reach::out_of_reach_host_symbols(&graph, &requests, placement)?;
    for &sym in &far.stubs {
        requests.plt(sym);
    }
    let blocks = got_plt::add_linker_blocks(&mut graph, &requests, far.copies);
    // 7. Offsets: RX, then R, then RW, each page-aligned; TLS apart.
    let mut layout = layout::lay_out(&mut graph);
    // 7b. Calls beyond the ISA's direct reach go through veneers.
    if veneers::add_veneers(&mut graph, &layout, (&blocks.plt, blocks.plt_block)) {
        layout = layout::lay_out(&mut graph);
    }
    // 8. Memory, and every block's final address.
    allocate::allocate(graph, requests, blocks, far.stubs, layout, placement)
}

/// Steps 11–12, once every external is resolved.
pub(crate) fn fix_up_and_finalize(
    prepared: Prepared,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<FinalizedKeeping, LinkError> {
    // 11. GOT, PLT and every live block, copied into memory and fixed up.
    let fixed = fixup::fix_up(prepared, env, options, fixup::BlockErrors::Fail)?;
    // 12. Unwind info, initializers, TLS image, protections, debuggers.
    finalize::finalize(fixed, env, options)
}

/// Objects some of whose blocks could not be fixed up, each with its first
/// error (`None`: a block of no object, the linker's own).
pub(crate) type Unfixed = Vec<(Option<crate::graph::ObjectId>, LinkError)>;

/// [`fix_up_and_finalize`] of an image several units share (the object
/// layer's batch): a block that cannot be fixed up does not fail the
/// image; the first error of each object whose blocks failed is returned
/// with it, for its unit to fail alone (its code never runs).
pub(crate) fn fix_up_and_finalize_apart(
    prepared: Prepared,
    env: &ImageEnv,
    options: &LinkOptions,
) -> Result<(FinalizedKeeping, Unfixed), LinkError> {
    let mut fixed = fixup::fix_up(prepared, env, options, fixup::BlockErrors::Collect)?;
    let failed = std::mem::take(&mut fixed.failed_objects);
    Ok((finalize::finalize(fixed, env, options)?, failed))
}

/// [`link_graph`]'s host: externals from a [`SymbolResolver`].
struct ResolverHost<'a> {
    resolver: &'a dyn SymbolResolver,
    /// The link makes an image: what its loader binds itself needs no
    /// answer here.
    imaging: bool,
}

impl LinkHost for ResolverHost<'_> {
    type Error = LinkError;

    fn link_error(&self, e: LinkError) -> LinkError {
        e
    }

    fn own_symbols_resolved(&mut self, _: &Prepared) -> Result<(), LinkError> {
        // A standalone link needs nothing more.
        Ok(())
    }
}

impl ResolvesExternals for ResolverHost<'_> {
    fn resolve_externals(&mut self, prepared: &mut Prepared) -> Result<(), LinkError> {
        let names = prepared.external_names();
        let refs: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
        let mut answers = self.resolver.resolve(&refs);
        if self.imaging {
            // The image imports them by name; every loader of its ISA binds
            // them to a copy of its own (no process exports them).
            let isa = prepared.graph.isa();
            for (answer, name) in answers.iter_mut().zip(&refs) {
                if answer.is_none() && isa.loaders_bind(name) {
                    *answer = Some(0);
                }
            }
        }
        prepared.resolve_externals(&refs, &answers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host that records what the sequencer asks of it, and fails where
    /// told to.
    struct Recorder {
        calls: Vec<&'static str>,
        fail_own_symbols: bool,
    }

    impl LinkHost for Recorder {
        type Error = LinkError;

        fn link_error(&self, e: LinkError) -> LinkError {
            e
        }

        fn own_symbols_resolved(&mut self, prepared: &Prepared) -> Result<(), LinkError> {
            // Steps 1–8 are done: the image has its memory.
            assert!(prepared.memory_range().1 > 0);
            self.calls.push("own symbols");
            if self.fail_own_symbols {
                return Err(LinkError::engine_bug("refused by the host"));
            }
            Ok(())
        }
    }

    impl ResolvesExternals for Recorder {
        fn resolve_externals(&mut self, prepared: &mut Prepared) -> Result<(), LinkError> {
            self.calls.push("externals");
            prepared.resolve_external_ids(&[])
        }
    }

    fn start() -> Start<'static> {
        Start::Graph {
            graph: Box::new(LinkGraph::new()),
            roots: &Roots::All,
            below_2gib: false,
        }
    }

    /// The one sequencer asks its host for the image's own symbols, then
    /// for the externals, once each, and finalizes the image; the graph
    /// comes back to be freed by the caller.
    #[test]
    fn the_sequencer_asks_the_host_once_each_in_order() {
        let mut host = Recorder {
            calls: Vec::new(),
            fail_own_symbols: false,
        };
        let options = LinkOptions::default();
        let (done, graph) = run(start(), &mut host, &ImageEnv::default(), &options)
            .unwrap_or_else(|e| panic!("an empty graph links: {e}"));
        assert_eq!(host.calls, ["own symbols", "externals"]);
        assert!(graph.is_some() && done.graph.is_none());
        assert_ne!(
            done.dso_handle, 0,
            "the image's __dso_handle slot is placed"
        );
    }

    /// A host's error stops the pipeline where it happens: no lookup, no
    /// fixup.
    #[test]
    fn a_host_error_stops_the_sequencer() {
        let mut host = Recorder {
            calls: Vec::new(),
            fail_own_symbols: true,
        };
        let Err(err) = run(
            start(),
            &mut host,
            &ImageEnv::default(),
            &LinkOptions::default(),
        ) else {
            panic!("the host refused, yet the image linked");
        };
        assert!(err.to_string().contains("refused by the host"), "{err}");
        assert_eq!(host.calls, ["own symbols"]);
    }
}
