//! The lookup fast path against the actor on the same state (kiln issue 8
//! §1.2): wherever the fast path answers, the actor's search — run right
//! after, on the same state — must give the same answer (the same
//! definitions, from the same dylibs of the order).

use proptest::prelude::*;

use super::*;
use crate::dispatch::InPlaceDispatcher;
use crate::responsibility::Responsibility;
use crate::symbol::SymbolFlags;
use crate::unit::absolute_symbols;

const NAMES: [&str; 3] = ["a", "b", "c"];

/// How one name is defined in one dylib.
#[derive(Clone, Copy, Debug)]
enum Def {
    Absent,
    /// Absent, but the dylib's generator defines it when asked.
    Generated,
    /// Ready at once (absolute), with these flags.
    Ready {
        exported: bool,
    },
    /// A unit not yet materialized.
    Lazy,
    /// A unit that failed (a lookup made it fail before the check).
    Failed,
    /// Ready, side-effects-only.
    SideEffectsOnly,
}

fn def_strategy() -> impl Strategy<Value = Def> {
    prop_oneof![
        3 => Just(Def::Absent),
        2 => Just(Def::Generated),
        3 => any::<bool>().prop_map(|exported| Def::Ready { exported }),
        1 => Just(Def::Lazy),
        1 => Just(Def::Failed),
        1 => Just(Def::SideEffectsOnly),
    ]
}

#[derive(Clone, Debug)]
struct DylibSpec {
    defs: [Def; 3],
    removed: bool,
}

#[derive(Clone, Debug)]
struct Case {
    dylibs: Vec<DylibSpec>,
    /// Indices into `dylibs`, with "exported only".
    order: Vec<(usize, bool)>,
    /// Indices into `NAMES`.
    names: Vec<usize>,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let dylib = (
        [def_strategy(), def_strategy(), def_strategy()],
        prop::bool::weighted(0.1),
    )
        .prop_map(|(defs, removed)| DylibSpec { defs, removed });
    prop::collection::vec(dylib, 1..=3).prop_flat_map(|dylibs| {
        let n = dylibs.len();
        (
            Just(dylibs),
            prop::collection::vec((0..n, any::<bool>()), 1..=3),
            prop::collection::vec(0..NAMES.len(), 1..=3),
        )
            .prop_map(|(dylibs, order, names)| Case {
                dylibs,
                order,
                names,
            })
    })
}

/// Defines, when asked, the names its dylib generates.
struct Provides(Vec<SymbolName>, u64);

impl Generator for Provides {
    fn generate(&self, req: crate::generator::GenerateRequest) {
        let defs: Vec<(SymbolName, SymbolDef)> = req
            .names()
            .iter()
            .filter(|n| self.0.contains(n))
            .map(|n| (n.clone(), SymbolDef::new(self.1, SymbolFlags::EXPORTED)))
            .collect();
        let dylib = req.dylib().clone();
        if !defs.is_empty() {
            let _ = dylib.define(absolute_symbols(defs));
        }
    }
}

/// A unit for `name` that emits at `address`, or fails.
struct Unit {
    name: SymbolName,
    address: u64,
    fails: bool,
}

impl MaterializationUnit for Unit {
    fn name(&self) -> &str {
        "unit"
    }
    fn symbols(&self) -> Vec<(SymbolName, crate::symbol::SymbolFlags)> {
        vec![(self.name.clone(), SymbolFlags::EXPORTED)]
    }
    fn materialize(self: Box<Self>, r: Responsibility) {
        if self.fails {
            return r.fail(Error::msg("fails"));
        }
        let def = SymbolDef::new(self.address, SymbolFlags::EXPORTED);
        let _ = r.resolve(&[(self.name.clone(), def)]);
        let _ = r.emit(Vec::new());
    }
    fn discard(&mut self, _: &Dylib, _: &SymbolName) {}
}

/// Builds the case's state in a fresh session.
fn build(case: &Case) -> (Session, Vec<Dylib>) {
    let s = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let mut dylibs = Vec::new();
    for (di, spec) in case.dylibs.iter().enumerate() {
        let d = s.create_dylib(&format!("d{di}")).unwrap();
        let address = |ni: usize| 0x1000 * (di as u64 + 1) + 0x10 * ni as u64;
        let mut generated = Vec::new();
        for (ni, def) in spec.defs.iter().enumerate() {
            let name = s.intern(NAMES[ni]);
            let fixed =
                |flags| d.define_absolute([(name.clone(), SymbolDef::new(address(ni), flags))]);
            match def {
                Def::Absent => {}
                Def::Generated => generated.push(name),
                Def::Ready { exported: true } => fixed(SymbolFlags::EXPORTED).unwrap(),
                Def::Ready { exported: false } => fixed(SymbolFlags::NONE).unwrap(),
                Def::SideEffectsOnly => fixed(SymbolFlags::SIDE_EFFECTS_ONLY).unwrap(),
                Def::Lazy | Def::Failed => {
                    let fails = matches!(def, Def::Failed);
                    d.define(Unit {
                        name: name.clone(),
                        address: address(ni),
                        fails,
                    })
                    .unwrap();
                    if fails {
                        assert!(d.lookup_ready(&[NAMES[ni]]).is_err());
                    }
                }
            }
        }
        if !generated.is_empty() {
            d.add_generator(Provides(generated, 0x1000 * (di as u64 + 1) + 0x800))
                .unwrap();
        }
        dylibs.push(d);
    }
    for (d, spec) in dylibs.iter().zip(&case.dylibs) {
        if spec.removed {
            s.remove_dylib(d).unwrap();
        }
    }
    (s, dylibs)
}

/// One name's answer: the name, its definition (address, flag bits) and the
/// position in the order of the dylib it came from.
type Answer = (String, Option<(u64, u8)>, Option<usize>);

/// The answer as comparable data, per name in request order.
fn answer(map: &SymbolMap) -> Vec<Answer> {
    map.by_request()
        .map(|(n, d)| {
            (
                n.to_string(),
                d.map(|d| (d.address, d.flags.bits())),
                map.found_in(n),
            )
        })
        .collect()
}

/// Runs the fast path, then (if it answered) the actor on the same state.
/// Returns whether the fast path answered.
fn check(case: &Case) -> Result<bool, TestCaseError> {
    let (s, dylibs) = build(case);
    let order: SearchOrder = case
        .order
        .iter()
        .map(|&(d, exported_only)| {
            let v = if exported_only {
                DylibLookup::ExportedOnly
            } else {
                DylibLookup::All
            };
            (dylibs[d].clone(), v)
        })
        .collect();
    let set = LookupSet::required(case.names.iter().map(|&n| s.intern(NAMES[n])));
    let fast = s.fast_lookup(&order, &set);
    // `ready_defs` (the public form) answers exactly where the fast path
    // does, with the same definitions.
    let names: Vec<SymbolName> = case.names.iter().map(|&n| s.intern(NAMES[n])).collect();
    let defs = s.ready_defs(&order, &names);
    let fast_defs = fast.as_ref().map(|f| {
        f.by_request()
            .map(|(_, d)| d.copied())
            .collect::<Option<Vec<SymbolDef>>>()
    });
    prop_assert_eq!(defs.map(Some), fast_defs);
    let Some(fast) = fast else {
        s.end();
        return Ok(false);
    };
    let slow = s
        .slow_lookup(
            &order,
            &set,
            RequiredState::Ready,
            LookupKind::Static,
            AwaitDefinitions::No,
            None,
        )
        .wait();
    s.end();
    match slow {
        Ok(slow) => prop_assert_eq!(answer(&fast), answer(&slow)),
        Err(e) => prop_assert!(
            false,
            "fast path answered {:?}, the actor failed: {e}",
            answer(&fast)
        ),
    }
    Ok(true)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn the_fast_path_answers_as_the_actor_does(case in case_strategy()) {
        check(&case)?;
    }
}

fn spec(defs: [Def; 3], removed: bool) -> DylibSpec {
    DylibSpec { defs, removed }
}

/// The case: `jd`'s generator can provide `a`, `jd2` has `a` Ready.
#[test]
fn a_generator_earlier_in_the_order_is_asked_first() {
    let case = Case {
        dylibs: vec![
            spec([Def::Generated, Def::Absent, Def::Absent], false),
            spec(
                [Def::Ready { exported: true }, Def::Absent, Def::Absent],
                false,
            ),
        ],
        order: vec![(0, true), (1, true)],
        names: vec![0],
    };
    check(&case).unwrap();
}

/// A removed dylib in the order: both paths fail (the fast path defers).
#[test]
fn a_removed_dylib_in_the_order_fails_both_paths() {
    let case = Case {
        dylibs: vec![
            spec([Def::Absent; 3], true),
            spec(
                [Def::Ready { exported: true }, Def::Absent, Def::Absent],
                false,
            ),
        ],
        order: vec![(0, true), (1, true)],
        names: vec![0],
    };
    check(&case).unwrap();
    // Also when the removed dylib comes after the definition.
    let case = Case {
        order: vec![(1, true), (0, true)],
        ..case
    };
    check(&case).unwrap();
}

/// The kit is not vacuous: the fast path answers where nothing stands in
/// its way.
#[test]
fn the_fast_path_answers_ready_definitions() {
    let case = Case {
        dylibs: vec![
            spec(
                [Def::Absent, Def::Ready { exported: false }, Def::Absent],
                false,
            ),
            spec([Def::Ready { exported: true }; 3], false),
        ],
        order: vec![(0, true), (1, false)],
        names: vec![0, 1, 2],
    };
    assert!(check(&case).unwrap(), "the fast path should have answered");
}
