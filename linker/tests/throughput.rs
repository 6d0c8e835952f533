//! Link throughput on a generated program: 200 objects × 100 functions,
//! each calling 20 functions in other objects (~400k relocations). Ignored
//! by default (it compiles 200 files); run with
//! `cargo test --release -p kiln-linker --test throughput -- --ignored --nocapture`.

mod common;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use common::*;
use kiln_linker::passes::{self, ImageEnv, LinkOptions};
use kiln_linker::{HostSymbols, Linker};

const OBJECTS: usize = 200;
const FUNCS: usize = 100;
const CALLS: usize = 20;

fn generate(dir: &std::path::Path) -> Vec<PathBuf> {
    let srcs: Vec<PathBuf> = (0..OBJECTS)
        .map(|o| {
            let mut s = String::new();
            for k in 0..CALLS {
                let _ = writeln!(s, "int f_{}_{}(int);", (o + k + 1) % OBJECTS, 0);
            }
            for f in 0..FUNCS {
                for k in 0..CALLS {
                    let _ = writeln!(
                        s,
                        "int f_{}_{}(int);",
                        (o + k + 1) % OBJECTS,
                        (f + k) % FUNCS
                    );
                }
                let _ = writeln!(
                    s,
                    "int f_{o}_{f}(int x) {{ if (x <= 0) return {f}; int s = 0;"
                );
                for k in 0..CALLS {
                    let _ = writeln!(
                        s,
                        "  s += f_{}_{}(x - {});",
                        (o + k + 1) % OBJECTS,
                        (f + k) % FUNCS,
                        k + 1
                    );
                }
                let _ = writeln!(s, "  return s; }}");
            }
            let p = dir.join(format!("gen_{o}.c"));
            std::fs::write(&p, s).expect("write");
            p
        })
        .collect();
    std::thread::scope(|sc| {
        let hs: Vec<_> = (0..2)
            .map(|t| {
                let srcs = &srcs;
                sc.spawn(move || {
                    srcs.iter()
                        .skip(t)
                        .step_by(2)
                        .map(|p| {
                            let o = p.with_extension("o");
                            if !o.exists() {
                                compile("gcc", p, &["-O1"], &[], &o);
                            }
                            o
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter()
            .flat_map(|h| h.join().expect("compile"))
            .collect()
    })
}

#[test]
#[ignore = "compiles 200 files; a measurement, not a check"]
fn large_graph_throughput() {
    let dir = scratch("throughput");
    let objs = generate(&dir);
    let host = HostSymbols::new();
    for round in 0..3 {
        let t0 = Instant::now();
        let mut linker = Linker::new(LinkOptions::default());
        // SAFETY: the test's own objects, whose code runs below.
        unsafe { linker.run_initializers_at_link() };
        for o in &objs {
            linker.add_object_file(o).expect("read");
        }
        let t1 = Instant::now();
        let graph = linker.build_graph().expect("graph");
        let t2 = Instant::now();
        let f = passes::link_graph(graph, &host, &ImageEnv::default(), &LinkOptions::default())
            .expect("link");
        let t3 = Instant::now();
        let relocs = f.stats.relocations;
        eprintln!("round {round}: phases {:?}", f.stats.timings);
        eprintln!(
            "round {round}: {} objects, {relocs} relocations: read files {:?}, parse {:?}, link {:?}; \
             parse+link {:.1} M relocations/s",
            f.stats.objects,
            t1 - t0,
            t2 - t1,
            t3 - t2,
            relocs as f64 / (t3 - t1).as_secs_f64() / 1e6
        );
        // Sanity: the generated program runs (f(1) sums the base cases).
        let sym = f.symbols.get("f_0_0").copied().expect("f_0_0");
        // SAFETY: `f_0_0` is `int f_0_0(int)` from the generated source.
        let func: extern "C" fn(i32) -> i32 = unsafe { std::mem::transmute(sym as usize) };
        let expect: i32 = (0..CALLS).map(|k| (k % FUNCS) as i32).sum();
        assert_eq!(func(1), expect);
    }
}
