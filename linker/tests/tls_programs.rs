//! Generated C programs whose objects use each other's thread-locals,
//! each object compiled for a TLS model picked at random (general-dynamic,
//! TLSDESC, initial-exec, local-exec; gcc and clang), run four ways: as a
//! native executable, in a JIT as one image (one `add_objects` call), in a
//! JIT object by object (each its own image, references bound to the
//! other images' TLS modules), and lazily (each object linked on its first
//! call, from whichever thread makes it). Each program's driver runs its work in the
//! calling thread, in a thread it creates, and in the calling thread again
//! (whose thread-locals kept what the first run left): every answer must
//! equal the native one. In a process of its own: kiln's static TLS
//! area, which initial-exec and local-exec code needs, is one for the
//! process and its ranges are never reused (the programs are sized to fit).

mod common;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::{Rng, compile_c_text_with, run_native, scratch};
use kiln_linker::Jit;

/// Programs generated (each linked three ways).
const PROGRAMS: u64 = 24;

/// One object's compiler and flags: the TLS model its extern accesses use.
const MODELS: &[(&str, &[&str])] = &[
    ("gcc", &["-O2", "-fPIC"]),
    ("gcc", &["-O1", "-fPIC", "-mtls-dialect=gnu2"]),
    ("gcc", &["-O2", "-fPIC", "-ftls-model=initial-exec"]),
    ("gcc", &["-O2", "-ftls-model=local-exec"]),
    ("gcc", &["-O0"]),
    ("clang", &["-O2", "-fPIC"]),
    ("clang", &["-O1", "-ftls-model=initial-exec"]),
];

/// A thread-local of one object: its name, C type, initial value (`None`:
/// zero, in `.tbss`), and whether other objects may use it (`static`
/// ones may not).
struct Var {
    name: String,
    ty: &'static str,
    init: Option<i64>,
    shared: bool,
}

/// The objects of program `seed`: (name, C source), the driver last.
fn program(seed: u64) -> Vec<(String, String)> {
    let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let objects = 2 + rng.below(3);
    let types = ["int", "long", "short", "unsigned char"];
    let vars: Vec<Vec<Var>> = (0..objects)
        .map(|i| {
            (0..1 + rng.below(3))
                .map(|j| Var {
                    name: format!("t{i}_{j}"),
                    ty: types[rng.below(types.len())],
                    init: (rng.below(3) != 0).then(|| 1 + rng.below(90) as i64),
                    shared: j == 0 || rng.below(4) != 0,
                })
                .collect()
        })
        .collect();
    let mut out = Vec::new();
    for i in 0..objects {
        let mut src = String::new();
        for v in &vars[i] {
            let storage = if v.shared { "" } else { "static " };
            let init = v.init.map_or(String::new(), |x| format!(" = {x}"));
            let _ = writeln!(src, "{storage}__thread {} {}{init};", v.ty, v.name);
        }
        let used: Vec<&Var> = (0..3)
            .map(|_| {
                let k = rng.below(objects);
                let pick = &vars[k][rng.below(vars[k].len())];
                if k == i || pick.shared {
                    pick
                } else {
                    &vars[k][0]
                }
            })
            .collect();
        for v in used
            .iter()
            .filter(|v| !vars[i].iter().any(|o| o.name == v.name))
        {
            let _ = writeln!(src, "extern __thread {} {};", v.ty, v.name);
        }
        let _ = writeln!(src, "long f{i}(long x) {{");
        for (n, v) in used.iter().enumerate() {
            let _ = writeln!(src, "  {} += ({})(x + {n});", v.name, v.ty);
            let _ = writeln!(src, "  x = x * 7 + (long){};", v.name);
        }
        let _ = writeln!(src, "  return x;\n}}");
        out.push((format!("p{seed}_o{i}"), src));
    }
    let mut driver = String::from("#include <pthread.h>\n");
    for i in 0..objects {
        let _ = writeln!(driver, "long f{i}(long);");
    }
    driver.push_str(
        "static void *work(void *arg) {\n  long s = (long)arg;\n  for (int r = 0; r < 3; r++) {\n",
    );
    for i in 0..objects {
        let _ = writeln!(driver, "    s = s * 31 + f{i}(s + r);");
    }
    driver.push_str(
        "  }\n  return (void *)s;\n}\n\
         long run_all(void) {\n\
           long a = (long)work((void *)1);\n\
           pthread_t t; void *other = 0;\n\
           if (pthread_create(&t, 0, work, (void *)1) != 0 || pthread_join(t, &other) != 0) return -1;\n\
           long b = (long)work((void *)1);\n\
           return a ^ ((long)other * 3) ^ (b * 5);\n\
         }\n",
    );
    out.push((format!("p{seed}_driver"), driver));
    out
}

/// Compiles program `seed`'s objects, each with a model picked at random
/// (the driver with `gcc -O2 -fPIC`).
fn compile(dir: &Path, seed: u64) -> Vec<(String, PathBuf)> {
    let mut rng = Rng(seed ^ 0x5eed);
    let sources = program(seed);
    let last = sources.len() - 1;
    sources
        .into_iter()
        .enumerate()
        .map(|(k, (name, src))| {
            let (cc, flags) = if k == last {
                ("gcc", &["-O2", "-fPIC"][..])
            } else {
                MODELS[rng.below(MODELS.len())]
            };
            let o = compile_c_text_with(cc, dir, &name, &src, flags);
            (format!("{name}.o"), o)
        })
        .collect()
}

type RunAll = extern "C" fn() -> i64;

/// How a program's objects go into the JIT.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// One `add_objects` call: one image.
    OneImage,
    /// One `add_object` each: an image each.
    Apart,
    /// One `add_object_lazily` each: each linked on its first call.
    Lazy,
}

/// `run_all` of `objects` in a fresh JIT, added as `mode` says.
fn jit_answer(objects: &[(String, Vec<u8>)], mode: Mode) -> Result<i64, String> {
    let lazy = matches!(mode, Mode::Lazy);
    let jit = (Jit::builder().threads(2).lazy(lazy).build()).map_err(|e| e.to_string())?;
    match mode {
        Mode::OneImage => jit.add_objects(objects).map_err(|e| e.to_string())?,
        Mode::Apart | Mode::Lazy => {
            for (name, bytes) in objects {
                let added = if lazy {
                    jit.add_object_lazily(name, bytes)
                } else {
                    jit.add_object_named(name, bytes)
                };
                added.map_err(|e| e.to_string())?;
            }
        }
    }
    // SAFETY: the generated driver's `long run_all(void)`.
    let run_all = unsafe { jit.get::<RunAll>("run_all") }.map_err(|e| format!("{e:?}"))?;
    Ok(run_all())
}

#[test]
fn programs_sharing_thread_locals_answer_alike_natively_in_one_image_apart_and_lazily() {
    use kiln_linker::runtime::tls;
    tls::static_tls_status().expect("kiln's static TLS area exists in a test binary");
    let dir = scratch("tls-programs");
    for seed in 0..PROGRAMS {
        let compiled = compile(&dir, seed);
        let paths: Vec<PathBuf> = compiled.iter().map(|(_, p)| p.clone()).collect();
        let main = compile_c_text_with(
            "gcc",
            &dir,
            &format!("p{seed}_main"),
            "#include <stdio.h>\nlong run_all(void);\nint main(void) { printf(\"%ld\\n\", run_all()); return 0; }\n",
            &["-O2"],
        );
        let mut native_objs = paths.clone();
        native_objs.push(main);
        let exe = dir.join(format!("p{seed}"));
        let (out, code) = run_native("gcc", &native_objs, &["-pthread"], &[], &exe);
        assert_eq!(code, 0, "program {seed}: native run failed");
        let native: i64 = out.trim().parse().expect("native answer");
        let objects: Vec<(String, Vec<u8>)> = compiled
            .iter()
            .map(|(n, p)| (n.clone(), std::fs::read(p).expect("read object")))
            .collect();
        for mode in [Mode::OneImage, Mode::Apart, Mode::Lazy] {
            let kiln = jit_answer(&objects, mode);
            assert_eq!(
                kiln,
                Ok(native),
                "program {seed} ({mode:?}; sources in {}; static TLS left: {})",
                dir.display(),
                tls::static_area_available()
            );
        }
    }
}
