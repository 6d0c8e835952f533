//! What the fast-path models share, under loom (`fast_path_model.rs`) and
//! under shuttle (`fast_path_shuttle.rs`).

use kiln_engine::*;

/// The flags of every symbol the models define.
pub(crate) const X: SymbolFlags = SymbolFlags::EXPORTED;

/// Defines every name asked at 0x100.
pub(crate) struct Provides;

impl Generator for Provides {
    fn generate(&self, req: GenerateRequest) {
        let defs: Vec<_> = req
            .names()
            .iter()
            .map(|n| (n.clone(), SymbolDef::new(0x100, X)))
            .collect();
        req.dylib().define_absolute(defs).unwrap();
    }
}

/// Looks `name` up Ready through `order` (exported symbols only) and
/// returns its address.
pub(crate) fn lookup(s: &Session, order: &[&Dylib], name: &SymbolName) -> Result<u64> {
    let order: SearchOrder = order
        .iter()
        .map(|d| ((*d).clone(), DylibLookup::ExportedOnly))
        .collect();
    let found = s
        .lookup(
            &order,
            &LookupSet::required([name.clone()]),
            RequiredState::Ready,
        )
        .wait()?;
    Ok(found.get(name).expect("required name found").address)
}
