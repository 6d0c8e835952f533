//! On real threads: a Ready lookup never completes before the symbol and
//! everything it transitively depends on were emitted — over random graphs
//! with cycles across dylibs, random emission orders and concurrent lookups.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::*;
use kiln_engine::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn closure(deps: &[Vec<usize>], start: usize) -> HashSet<usize> {
    let mut seen = HashSet::from([start]);
    let mut stack = vec![start];
    while let Some(n) = stack.pop() {
        for &d in &deps[n] {
            if seen.insert(d) {
                stack.push(d);
            }
        }
    }
    seen
}

#[test]
fn ready_never_precedes_transitive_emission() {
    for seed in 0..12u64 {
        let mut rng = Rng(seed);
        let n = 40 + rng.below(40) as usize;
        let dylib_count = 3;
        // Random graph with back edges (cycles) across dylibs.
        let deps: Vec<Vec<usize>> = (0..n)
            .map(|_| {
                let k = rng.below(3) as usize;
                (0..k).map(|_| rng.below(n as u64) as usize).collect()
            })
            .collect();
        let s = Session::builder().dispatcher(WorkerPool::new(3)).build();
        let dylibs: Vec<Dylib> = (0..dylib_count)
            .map(|i| s.create_dylib(&format!("d{i}")).unwrap())
            .collect();
        let names: Vec<SymbolName> = (0..n).map(|i| s.intern(&format!("s{i}"))).collect();
        let emitted: Arc<Vec<AtomicBool>> =
            Arc::new((0..n).map(|_| AtomicBool::new(false)).collect());
        for i in 0..n {
            let me = names[i].clone();
            let groups_deps: Vec<(Dylib, Vec<SymbolName>)> = deps[i]
                .iter()
                .map(|&j| (dylibs[j % dylib_count].clone(), vec![names[j].clone()]))
                .collect();
            let flag = emitted.clone();
            let delay = rng.below(200);
            dylibs[i % dylib_count]
                .define(unit(&format!("u{i}"), &[(&names[i], X)], move |r| {
                    r.resolve(&[(me.clone(), def(i as u64 * 16))]).unwrap();
                    std::thread::sleep(Duration::from_micros(delay));
                    flag[i].store(true, Ordering::SeqCst);
                    let _ = r.emit(vec![DependenceGroup::new([me], groups_deps)]);
                }))
                .unwrap();
        }
        let order: SearchOrder = dylibs
            .iter()
            .map(|d| (d.clone(), DylibLookup::ExportedOnly))
            .collect();
        let threads = 4;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (s, order, names, emitted, deps, barrier) = (
                    s.clone(),
                    order.clone(),
                    names.clone(),
                    emitted.clone(),
                    deps.clone(),
                    barrier.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    for k in 0..n {
                        let i = (k * 7 + t * 13) % n;
                        let found = s
                            .lookup(
                                &order,
                                &LookupSet::required([names[i].clone()]),
                                RequiredState::Ready,
                            )
                            .wait_timeout(Duration::from_secs(30))
                            .unwrap_or_else(|e| panic!("seed {seed}: s{i}: {e}"));
                        assert_eq!(found.get(&names[i]).unwrap().address, i as u64 * 16);
                        for j in closure(&deps, i) {
                            assert!(
                                emitted[j].load(Ordering::SeqCst),
                                "seed {seed}: s{i} Ready before s{j} was emitted"
                            );
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        s.end();
    }
}
