//! Thread-locals and the JIT's batches, in a process of their own: kiln's
//! static TLS area, which local-exec and initial-exec code needs, is one
//! for the process and its ranges are never reused.

mod common;

use common::{compile_c_text, scratch};

/// Two objects whose thread-locals each take two thirds of the static TLS
/// area left, their code local-exec (`gcc -O2`, position-independent
/// executable code). Linked alone, the first gets its range and the second
/// fails, naming its variable. One lookup of both must answer the same:
/// as one batch, their one TLS block got no range and both failed.
#[test]
fn objects_with_thread_locals_link_alone_in_a_batch_as_the_static_area_allows() {
    use kiln_linker::runtime::tls;
    tls::static_tls_status().expect("kiln's static TLS area exists in a test binary");
    let size = tls::static_area_available() * 2 / 3;
    let dir = scratch("batch-tls-area");
    let object = |name: &str| {
        let src = format!(
            "__thread char {name}_buf[{size}];\n\
             int {name}_f(int x) {{ {name}_buf[x & 7] = (char)x; return {name}_buf[3] + x; }}\n"
        );
        let o = compile_c_text(&dir, name, &src, &["-O2"]);
        std::fs::read(o).expect("read object")
    };
    let jit = kiln_linker::Jit::builder()
        .dispatcher(kiln_engine::InPlaceDispatcher)
        .build()
        .expect("a JIT");
    jit.add_object_named("first.o", &object("first")).unwrap();
    jit.add_object_named("second.o", &object("second")).unwrap();
    let session = jit.session();
    let order = kiln_engine::SearchOrder::new().with(jit.app(), kiln_engine::DylibLookup::All);
    let ask = |names: &[&str]| {
        let set = kiln_engine::LookupSet::weak(session.intern_all(names.iter().copied()));
        session
            .lookup(&order, &set, kiln_engine::RequiredState::Ready)
            .wait()
    };
    let _ = ask(&["first_f", "second_f"]);
    let ready: Vec<bool> = ["first_f", "second_f"]
        .iter()
        .map(|n| ask(&[n]).is_ok())
        .collect();
    assert_eq!(
        ready.iter().filter(|&&r| r).count(),
        1,
        "one object's thread-locals fit the area, as linked alone: {ready:?}"
    );
    let failed = if ready[0] { "second_f" } else { "first_f" };
    let err = ask(&[failed]).expect_err("its thread-locals do not fit");
    let prefix = failed.trim_end_matches("_f");
    assert!(
        err.to_string().contains(&format!("{prefix}_buf")),
        "the error names the variable: {err}"
    );
}
