//! Bad input never panics or crashes the linker: real objects with random
//! byte flips and truncations (fixed-seed PRNG) are linked without running
//! any of their code; each mutant links or fails with an error.

mod common;

use std::path::PathBuf;

use common::*;
use kiln_linker::{HostSymbols, LinkError, Linker};

fn mutate(rng: &mut Rng, data: &[u8]) -> Vec<u8> {
    let mut m = data.to_vec();
    match rng.below(10) {
        // Truncation.
        0 | 1 => m.truncate(rng.below(data.len())),
        // A few random bytes anywhere.
        2..=5 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
        }
        // Single bit flips, biased to the end of the file where the section
        // headers, symbol table and relocations live.
        6..=8 => {
            for _ in 0..1 + rng.below(3) {
                let start = m.len() / 2;
                let i = start + rng.below(m.len() - start);
                m[i] ^= 1 << rng.below(8);
            }
        }
        // The ELF header.
        _ => {
            let i = rng.below(64.min(m.len()));
            m[i] = rng.next() as u8;
        }
    }
    m
}

fn objects() -> Vec<(String, Vec<u8>)> {
    let dir = scratch("mutation");
    let mut out = Vec::new();
    let srcs: [(&str, &str, &[&str]); 3] = [
        ("gcc", "prog_a.c", &["-O2", "-fcommon"]),
        ("gcc", "prog_b.c", &["-O2"]),
        ("g++", "cpp_b.cpp", &["-O2"]),
    ];
    for (cc, src, flags) in srcs {
        let o: PathBuf = compile(
            cc,
            &c_dir().join(src),
            flags,
            &[],
            &dir.join(format!("{src}.o")),
        );
        out.push((src.to_string(), std::fs::read(o).expect("read object")));
    }
    out
}

/// The variant of `e`, for the tally.
fn kind(e: &LinkError) -> &'static str {
    match e {
        LinkError::Malformed { .. } => "Malformed",
        LinkError::UnsupportedRelocation { .. } => "UnsupportedRelocation",
        LinkError::Fixup { .. } => "Fixup",
        LinkError::MissingSymbols { .. } => "MissingSymbols",
        LinkError::DuplicateSymbols { .. } => "DuplicateSymbols",
        LinkError::DiscardedReference { .. } => "DiscardedReference",
        LinkError::Runtime { .. } => "Runtime",
        LinkError::Tls { .. } => "Tls",
        LinkError::Memory { .. } => "Memory",
        _ => "other",
    }
}

#[test]
fn twenty_thousand_object_mutants_link_or_fail_cleanly() {
    let objs = objects();
    let host = HostSymbols::new();
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut linked = 0usize;
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    let start = std::time::Instant::now();
    const MUTANTS: usize = 20_000;
    for n in 0..MUTANTS {
        let which = n % 3;
        let mut linker = Linker::new(Default::default());
        // prog_a and prog_b need each other; the mutant comes second, so
        // that an error blaming the first input is caught.
        if which < 2 {
            let other = &objs[1 - which];
            linker.add_object_bytes(other.0.clone(), other.1.clone());
        }
        let mutant = mutate(&mut rng, &objs[which].1);
        let name = format!("mutant-{n}-{}", objs[which].0);
        linker.add_object_bytes(name.clone(), mutant);
        match linker.link(&host) {
            Ok(image) => {
                assert!(image.is_finalized());
                linked += 1;
            }
            Err(e) => {
                let msg = e.to_string();
                // Only the mutant is malformed: these errors are about it
                // and must name it, never the object beside it.
                if matches!(
                    e,
                    LinkError::Malformed { .. }
                        | LinkError::UnsupportedRelocation { .. }
                        | LinkError::Runtime { .. }
                ) {
                    assert!(msg.starts_with(&format!("{name}: ")), "{msg}");
                }
                // Only the mutant can ask for gigabytes.
                if matches!(e, LinkError::Memory { .. }) {
                    assert!(msg.contains(&format!("largest input: {name} ")), "{msg}");
                }
                *kinds.entry(kind(&e)).or_default() += 1;
            }
        }
    }
    let failed: usize = kinds.values().sum();
    eprintln!(
        "{MUTANTS} mutants: {linked} linked, {failed} failed cleanly ({kinds:?}), in {:?}",
        start.elapsed()
    );
    assert!(linked > MUTANTS / 20, "too few mutants linked: {linked}");
    assert!(failed > MUTANTS / 20, "too few mutants rejected: {failed}");
    // The mutations reach past the ELF header: into symbols, sections and
    // relocations, not only the reader's first checks.
    for k in ["Malformed", "MissingSymbols", "UnsupportedRelocation"] {
        assert!(kinds.contains_key(k), "no {k} error among {kinds:?}");
    }
}

/// The global functions and data `bytes` defines.
fn defined_names(bytes: &[u8]) -> Vec<String> {
    use object::{Object as _, ObjectSymbol as _};
    let file = object::File::parse(bytes).expect("an original object parses");
    file.symbols()
        .filter(|s| s.is_global() && s.is_definition())
        .filter_map(|s| s.name().ok().map(str::to_string))
        .collect()
}

/// Two objects that need each other and link as one batch (no weak
/// definition, no initializer): code, data, a string, a libc call.
fn batch_objects() -> Vec<(String, Vec<u8>)> {
    let dir = scratch("mutation-batch");
    let a = "#include <string.h>\nint b_twice(int);\nstatic const char msg[] = \"hello\";\n\
             int counter = 3;\nint a_len(void) { return (int)strlen(msg); }\n\
             int a_calls_b(int x) { return b_twice(x) + a_len(); }\n";
    let b = "extern int counter;\nint a_len(void);\n\
             int b_twice(int x) { return 2 * x + counter + a_len(); }\n";
    compiled_pair(
        &dir,
        "gcc",
        [("batch_a", a, &["-O2"]), ("batch_b", b, &["-O0"])],
    )
}

/// Two objects `(name, source, flags)` compiled by `cc` in `dir`, named
/// `<name>.o`.
fn compiled_pair(
    dir: &std::path::Path,
    cc: &str,
    pair: [(&str, &str, &[&str]); 2],
) -> Vec<(String, Vec<u8>)> {
    pair.into_iter()
        .map(|(name, src, flags)| {
            let o = compile_c_text_with(cc, dir, name, src, flags);
            (format!("{name}.o"), std::fs::read(o).expect("read object"))
        })
        .collect()
}

/// Mutants through a JIT: each object added alone (its unit reads what it
/// offers from the parse) and every name the originals define looked up
/// Ready — the two objects of [`batch_objects`] linked as one batch with
/// the mutant, prog_b and the C++ object alone. Each answers or fails
/// with an error — never a panic, a crash or a hang.
#[test]
fn object_mutants_added_one_by_one_to_a_jit_link_or_fail_cleanly() {
    use kiln_engine::{LookupSet, RequiredState, SearchOrder};
    let mut objs = batch_objects();
    objs.extend(objects().into_iter().skip(1));
    let names: Vec<Vec<String>> = objs.iter().map(|(_, b)| defined_names(b)).collect();
    let mut rng = Rng(0x5eed_1234_abcd_0002);
    let (mut linked, mut refused, mut failed) = (0usize, 0usize, 0usize);
    const MUTANTS: usize = 5_000;
    for n in 0..MUTANTS {
        let which = n % objs.len();
        let jit = kiln_linker::Jit::builder()
            .dispatcher(kiln_engine::InPlaceDispatcher)
            .build()
            .expect("a JIT");
        let mut wanted: Vec<&str> = names[which].iter().map(String::as_str).collect();
        if which < 2 {
            let other = &objs[1 - which];
            jit.add_object_named(&other.0, &other.1)
                .expect("the original adds");
            wanted.extend(names[1 - which].iter().map(String::as_str));
        }
        let mutant = mutate(&mut rng, &objs[which].1);
        let name = format!("mutant-{n}-{}", objs[which].0);
        if let Err(e) = jit.add_object_named(&name, &mutant) {
            assert!(!e.to_string().is_empty());
            refused += 1;
            continue;
        }
        let session = jit.session();
        let set = LookupSet::weak(session.intern_all(wanted.iter().copied()));
        let order = SearchOrder::new().with(jit.app(), kiln_engine::DylibLookup::All);
        match session.lookup(&order, &set, RequiredState::Ready).wait() {
            Ok(_) => linked += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                failed += 1;
            }
        }
    }
    eprintln!(
        "{MUTANTS} mutants added one by one: {refused} refused, {linked} linked, {failed} failed cleanly"
    );
    assert!(linked > 0 && failed > 0 && refused > 0);
}

/// How a mutant pair is linked before each name is asked on its own.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// One lookup of every name, in place: the pair is one batch.
    Together,
    /// Two lookups of half the names each, from two threads at once, on a
    /// pool of two workers: batches as the timing makes them.
    Racing,
    /// Nothing: each name's lookup links what it needs alone.
    Alone,
}

/// One start's answer: which names are Ready, and the first failure's
/// error (for the report: a difference names its cause).
struct Answer {
    ready: Vec<bool>,
    first_error: Option<String>,
}

/// Which of `names` are Ready in `jit`'s app, asked one by one after
/// `start`.
fn ready_names(jit: &kiln_linker::Jit, names: &[&str], start: Start) -> Answer {
    use kiln_engine::{DylibLookup, LookupSet, RequiredState, SearchOrder};
    let session = jit.session();
    let order = SearchOrder::new().with(jit.app(), DylibLookup::All);
    let ask = |names: &[&str]| {
        let set = LookupSet::weak(session.intern_all(names.iter().copied()));
        session.lookup(&order, &set, RequiredState::Ready).wait()
    };
    match start {
        Start::Together => drop(ask(names)),
        Start::Racing => {
            let (a, b) = names.split_at(names.len() / 2);
            // The helper attaches before either asks, as a host's threads
            // should: a retired static TLS range is reused only while every
            // live thread is attached.
            let both = std::sync::Barrier::new(2);
            std::thread::scope(|s| {
                s.spawn(|| {
                    kiln_linker::runtime::tls::attach_current_thread();
                    both.wait();
                    drop(ask(b))
                });
                both.wait();
                drop(ask(a));
            });
        }
        Start::Alone => {}
    }
    let mut first_error = None;
    let ready = (names.iter())
        .map(|n| match ask(&[n]) {
            Ok(_) => true,
            Err(e) => {
                first_error.get_or_insert_with(|| format!("{n}: {e}"));
                false
            }
        })
        .collect();
    Answer { ready, first_error }
}

/// Two more objects that need each other, built with `-fPIC`, each with
/// thread-locals of its own (general-dynamic or descriptor access) and a
/// table of pointers to strings. Units with thread-locals link alone even
/// when one lookup starts both (`joins_batches`): the pair checks that
/// rule, and the reader's checks of thread-local symbols and relocations.
fn pic_tls_batch_objects() -> Vec<(String, Vec<u8>)> {
    let dir = scratch("mutation-batch-tls");
    let a = "int b_sum(int);\n__thread int ta = 5;\nstatic __thread long tb;\n\
             int a_tls(int x) { tb += x; return ta + (int)tb; }\n\
             int a_calls_b(int x) { return b_sum(x) + a_tls(x); }\n";
    let b = "int a_tls(int);\nconst char *names[] = {\"x\", \"yy\", \"zzz\"};\n\
             static __thread int tc = 7;\n\
             int b_sum(int x) { tc++; return names[x % 3][0] + tc + a_tls(1); }\n";
    compiled_pair(
        &dir,
        "gcc",
        [
            ("tls_a", a, &["-O2", "-fPIC"]),
            ("tls_b", b, &["-O0", "-fPIC"]),
        ],
    )
}

/// A third pair, built by clang (its relocations: `GOTPCRELX`, TLS
/// descriptors): a position-independent executable's code with a libc
/// call, a global array and a string, and `-fPIC` code with a thread-local
/// of its own (general-dynamic: it links whether or not kiln's static TLS
/// area has room left, which the other tests of this process share), a
/// table of strings and a `double`.
fn clang_batch_objects() -> Vec<(String, Vec<u8>)> {
    assert!(need_tool("clang"));
    let dir = scratch("mutation-batch-clang");
    let a = "#include <stdio.h>\nint b_sum(int);\nstatic const char *msg = \"hi %d\\n\";\n\
             long big[1000];\n\
             int a_big(int x) { big[x & 7] = x; return (int)big[3]; }\n\
             int a_calls_b(int x) { printf(msg, x); return b_sum(x) + a_big(x); }\n";
    let b = "int a_big(int);\nconst char *names[] = {\"x\", \"yy\", \"zzz\"};\n\
             extern long big[];\nstatic __thread int tc = 7;\ndouble d = 2.5;\n\
             int b_sum(int x) { tc++; return names[x % 3][0] + tc + a_big(1) + (int)(d * x) + (int)big[1]; }\n";
    compiled_pair(
        &dir,
        "clang",
        [("clang_a", a, &["-O2"]), ("clang_b", b, &["-O1", "-fPIC"])],
    )
}

/// The answer never depends on batching: a batch pair with one mutant,
/// linked as one batch, as two racing lookups batch it, and each object
/// alone (one lookup a name), makes the same names Ready and fails the
/// same others.
#[test]
fn object_mutants_in_a_batch_answer_as_when_linked_alone() {
    // JIT memory (one 1 GiB slab) and kiln's static TLS area are the
    // process's: another test's mutant (a `.bss` flipped to 512 MiB, a
    // thread-local turned local-exec) would leave a start short of them,
    // an answer decided by the timing of tests.
    if !in_own_process("object_mutants_in_a_batch_answer_as_when_linked_alone") {
        return;
    }
    mutants_answer_alike(batch_objects(), 0x5eed_1234_abcd_0003);
    mutants_answer_alike(pic_tls_batch_objects(), 0x5eed_1234_abcd_0004);
    mutants_answer_alike(clang_batch_objects(), 0x5eed_1234_abcd_0005);
}

/// [`object_mutants_in_a_batch_answer_as_when_linked_alone`] of one pair.
fn mutants_answer_alike(objs: Vec<(String, Vec<u8>)>, seed: u64) {
    let names: Vec<Vec<String>> = objs.iter().map(|(_, b)| defined_names(b)).collect();
    let wanted: Vec<&str> = names.iter().flatten().map(String::as_str).collect();
    let mut rng = Rng(seed);
    let (mut compared, mut differed) = (0usize, Vec::new());
    const MUTANTS: usize = 2_000;
    for n in 0..MUTANTS {
        let which = n % 2;
        let mutant = mutate(&mut rng, &objs[which].1);
        let name = format!("mutant-{n}-{}", objs[which].0);
        let mut answers = Vec::new();
        for start in [Start::Alone, Start::Together, Start::Racing] {
            let builder = kiln_linker::Jit::builder();
            let jit = match start {
                Start::Racing => builder.threads(2),
                _ => builder.dispatcher(kiln_engine::InPlaceDispatcher),
            }
            .build()
            .expect("a JIT");
            let other = &objs[1 - which];
            jit.add_object_named(&other.0, &other.1)
                .expect("the original adds");
            if jit.add_object_named(&name, &mutant).is_err() {
                break;
            }
            answers.push((start, ready_names(&jit, &wanted, start)));
        }
        if let [(_, alone), others @ ..] = &answers[..]
            && !others.is_empty()
        {
            compared += 1;
            for (start, answer) in others {
                if answer.ready != alone.ready {
                    differed.push(format!(
                        "mutant {n}, {start:?}: {:?} (first error: {:?}); alone: {:?} (first error: {:?})",
                        answer.ready, answer.first_error, alone.ready, alone.first_error
                    ));
                }
            }
        }
    }
    eprintln!("{compared} of {MUTANTS} mutants linked every way");
    assert!(compared > MUTANTS / 4, "too few mutants added: {compared}");
    assert!(
        differed.is_empty(),
        "{} answers differ from linking alone (names {wanted:?}):\n{}",
        differed.len(),
        differed[..differed.len().min(5)].join("\n")
    );
}

#[test]
fn mutated_archives_link_or_fail_cleanly() {
    let dir = scratch("mutation-ar");
    let (main, b) = compile_prog_ab(&dir);
    let lib = dir.join("libb.a");
    let _ = std::fs::remove_file(&lib);
    let st = std::process::Command::new("ar")
        .arg("rcs")
        .arg(&lib)
        .arg(&b)
        .status()
        .expect("ar");
    assert!(st.success());
    let main_bytes = std::fs::read(main).unwrap();
    let ar_bytes = std::fs::read(lib).unwrap();
    let host = HostSymbols::new();
    let mut rng = Rng(0xa5c1_1e55_0000_0002);
    let (mut linked, mut failed) = (0usize, 0usize);
    for n in 0..3_000 {
        let mutant = mutate(&mut rng, &ar_bytes);
        let mut linker = Linker::new(Default::default());
        linker.add_object_bytes("prog_a.o", main_bytes.clone());
        let result = linker
            .add_archive_bytes(format!("mutant-{n}.a"), mutant)
            .and_then(|l| l.link(&host));
        match result {
            Ok(_) => linked += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                failed += 1;
            }
        }
    }
    eprintln!("3000 archive mutants: {linked} linked, {failed} failed cleanly");
    assert!(linked > 0 && failed > 0);
}

/// aarch64 objects (gcc -O2 -fPIE; and the `__thread` program at -fPIE,
/// local-exec and initial-exec, and -fPIC, TLSDESC), linked into an image
/// (imaging mode: the target is taken from the objects; nothing runs):
/// 5,000 mutants each link or fail with an error about the mutant — never
/// a panic.
#[test]
fn five_thousand_aarch64_object_mutants_link_or_fail_cleanly() {
    let cc = "aarch64-linux-gnu-gcc";
    assert!(need_tool(cc));
    let dir = scratch("mutation-aarch64");
    // Pairs of objects linked together, one of them mutated.
    let pairs: Vec<Vec<(String, Vec<u8>)>> = [
        [
            ("prog_a.c", "-fPIE", "-fcommon"),
            ("prog_b.c", "-fPIE", "-O2"),
        ],
        [("tls_a.c", "-fPIE", "-O2"), ("tls_b.c", "-fPIE", "-O2")],
        [("tls_a.c", "-fPIC", "-O2"), ("tls_b.c", "-fPIC", "-O2")],
    ]
    .iter()
    .map(|pair| {
        pair.iter()
            .map(|(src, pic, extra)| {
                let o = compile(
                    cc,
                    &c_dir().join(src),
                    &["-O2", pic, extra],
                    &[],
                    &dir.join(format!("{src}{pic}.o")),
                );
                (src.to_string(), std::fs::read(o).expect("read object"))
            })
            .collect()
    })
    .collect();
    let host = HostSymbols::new();
    let mut rng = Rng(0x5eed_aa64_0000_0001);
    let mut linked = 0usize;
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    const MUTANTS: usize = 5_000;
    for n in 0..MUTANTS {
        let which = n % 2;
        let objs = &pairs[n / 2 % pairs.len()];
        let mut options = kiln_linker::LinkOptions::default();
        options.imaging = true;
        let mut linker = Linker::new(options);
        let other = &objs[1 - which];
        linker.add_object_bytes(other.0.clone(), other.1.clone());
        let name = format!("mutant-{n}-{}", objs[which].0);
        linker.add_object_bytes(name.clone(), mutate(&mut rng, &objs[which].1));
        match linker.link(&host) {
            Ok(_) => linked += 1,
            Err(e) => {
                let msg = e.to_string();
                if matches!(
                    e,
                    LinkError::Malformed { .. } | LinkError::UnsupportedRelocation { .. }
                ) {
                    assert!(msg.starts_with(&format!("{name}: ")), "{msg}");
                }
                *kinds.entry(kind(&e)).or_default() += 1;
            }
        }
    }
    let failed: usize = kinds.values().sum();
    eprintln!("{MUTANTS} aarch64 mutants: {linked} linked, {failed} failed cleanly ({kinds:?})");
    assert!(linked > MUTANTS / 20, "too few mutants linked: {linked}");
    assert!(failed > MUTANTS / 20, "too few mutants rejected: {failed}");
    for k in ["Malformed", "UnsupportedRelocation"] {
        assert!(kinds.contains_key(k), "no {k} error among {kinds:?}");
    }
}
