//! Pass: resolve externals. One question for every external name live
//! code references (the linker's own symbols excluded); every missing
//! non-weak one is reported in one error, with the objects referencing it.

use std::collections::HashMap;

use super::Prepared;
use crate::error::LinkError;
use crate::graph::SymbolId;

impl Prepared {
    /// Phase (b), part 1, by id: every named external live code references
    /// (the linker's own symbols excluded), sorted by name. Answer with
    /// [`Prepared::resolve_external_ids`].
    pub fn external_symbols(&self) -> Vec<(SymbolId, &str)> {
        let mut out = self.external_symbols_unordered();
        out.sort_unstable_by(|a, b| a.1.cmp(b.1));
        out
    }

    /// [`Prepared::external_symbols`] in order of first reference, not
    /// sorted: for a host that looks them up by id and needs no order (the
    /// engine's object layer). Sorting the names of a Cranelift object's
    /// ~2,000 externals cost ~1 M instructions a link.
    pub(crate) fn external_symbols_unordered(&self) -> Vec<(SymbolId, &str)> {
        self.external_refs
            .iter()
            .filter_map(|&id| Some((id, self.graph.symbols[id.index()].name.as_deref()?)))
            .collect()
    }

    /// Phase (b), part 1: every external name live code references (names
    /// the linker provides itself excluded), sorted. From the references
    /// the GOT/PLT scan collected ([`Prepared::external_symbols`]), not a
    /// second walk over every edge.
    pub fn external_names(&self) -> Vec<String> {
        self.external_symbols()
            .into_iter()
            .map(|(_, n)| n.to_string())
            .collect()
    }

    /// Phase (b), part 2: record the answers for `names` (same order).
    /// Every missing non-weak name is reported in one error with the objects
    /// referencing it.
    pub fn resolve_externals(
        &mut self,
        names: &[&str],
        answers: &[Option<u64>],
    ) -> Result<(), LinkError> {
        let answers: Vec<(SymbolId, Option<u64>)> = names
            .iter()
            .enumerate()
            .filter_map(|(i, name)| {
                let id = self.graph.global_id(name)?;
                Some((id, answers.get(i).copied().flatten()))
            })
            .collect();
        self.resolve_external_ids(&answers)
    }

    /// The externals among `answers` (symbol, whether its definition is
    /// thread-local) whose references disagree with their definition on
    /// being thread-local, each with its error naming the objects that
    /// reference it: thread-local references bind to other images'
    /// thread-locals through their TLS module, plain ones to addresses.
    pub(crate) fn thread_local_mismatches(
        &self,
        answers: impl IntoIterator<Item = (SymbolId, bool)>,
    ) -> Vec<(SymbolId, LinkError)> {
        let g = &self.graph;
        answers
            .into_iter()
            .filter(|&(id, tls)| g.symbols.get(id.index()).is_some_and(|s| s.tls != tls))
            .map(|(id, tls)| {
                let mut objects: Vec<&str> = g
                    .blocks
                    .iter()
                    .filter(|b| b.live && b.edges.iter().any(|e| e.target == id))
                    .map(|b| g.object_name(b.object))
                    .collect();
                objects.sort_unstable();
                objects.dedup();
                let e = LinkError::ThreadLocalMismatch {
                    symbol: g.symbol_name(id),
                    objects: objects.join(", "),
                    used_as_thread_local: !tls,
                };
                (id, e)
            })
            .collect()
    }

    /// Records that the externals `ids` are data, not code (the resolver
    /// knows; the relocations do not). Non-PIE code that cannot reach one
    /// defined in JIT memory then fails to link, naming it, instead of
    /// being pointed at a PLT stub as a function would be.
    pub fn mark_data_externals(&mut self, ids: impl IntoIterator<Item = SymbolId>) {
        self.jit_data.extend(ids);
    }

    /// The error for non-PIE code of this image referring to data `sym` of
    /// another image out of its 32-bit reach: names the first such place.
    pub(super) fn data_out_of_reach(&self, sym: SymbolId) -> LinkError {
        let g = &self.graph;
        let place = g.blocks.iter().filter(|b| b.live).find_map(|b| {
            let e = b
                .edges
                .iter()
                .find(|e| e.target == sym && e.reach32().is_some())?;
            Some((b, e))
        });
        let (object, section, offset, reloc) = match place {
            Some((b, e)) => (
                g.object_name(b.object).to_string(),
                b.input_section.to_string(),
                b.input_offset + u64::from(e.offset),
                e.kind.name,
            ),
            None => (String::new(), String::new(), 0, "a 32-bit reference"),
        };
        LinkError::DataOutOfReach {
            object,
            section,
            offset,
            reloc,
            symbol: g.symbol_name(sym),
        }
    }

    /// Phase (b), part 2, by id: record the address of each external
    /// (`None`: not found). Every missing non-weak one is reported in one
    /// error with the objects referencing it.
    pub fn resolve_external_ids(
        &mut self,
        answers: &[(SymbolId, Option<u64>)],
    ) -> Result<(), LinkError> {
        let missing: Vec<String> = self
            .resolve_external_ids_or(answers, 0)
            .into_iter()
            .map(|id| self.graph.symbol_name(id))
            .collect();
        if !missing.is_empty() {
            // Only now find who references them (a second walk over the edges).
            let refs: HashMap<Box<str>, Vec<crate::graph::ObjectId>> =
                self.graph.undefined_names().into_iter().collect();
            let mut missing: Vec<(String, Vec<String>)> = missing
                .into_iter()
                .map(|name| {
                    let objs = refs
                        .get(name.as_str())
                        .map(|objs| {
                            objs.iter()
                                .map(|o| self.graph.object_name(Some(*o)).to_string())
                                .collect()
                        })
                        .unwrap_or_default();
                    (name, objs)
                })
                .collect();
            missing.sort();
            return Err(LinkError::MissingSymbols { missing });
        }
        Ok(())
    }

    /// [`Prepared::resolve_external_ids`], but a strong reference without
    /// an answer is given `placeholder` instead of failing the link; returns
    /// those references' symbols. For the object layer's batches: the units
    /// that reference them fail, and run no code.
    pub(crate) fn resolve_external_ids_or(
        &mut self,
        answers: &[(SymbolId, Option<u64>)],
        placeholder: u64,
    ) -> Vec<SymbolId> {
        let mut missing = Vec::new();
        self.externals.reserve(answers.len());
        for &(id, answer) in answers {
            let Some(sym) = self.graph.symbols.get(id.index()) else {
                continue;
            };
            match answer {
                Some(addr) => {
                    self.externals.insert(id, addr);
                }
                None if sym.weak_ref => {
                    self.externals.insert(id, 0);
                }
                None => {
                    self.externals.insert(id, placeholder);
                    missing.push(id);
                }
            }
        }
        missing
    }
}
