//! An image that links against another by build id keeps it mapped: in a
//! session, removing the dependency's tracker runs its finalizers, but its
//! memory stays until the last image that links against it is removed.

mod common;

use std::path::Path;

use common::images::options;
use common::*;
use std::time::Duration;

use common::parked::{Parked, wait_until};
use kiln_engine::{
    DependenceGroup, Dylib, DylibLookup, LookupSet, RequiredState, ResourceTracker, SearchOrder,
    Session, SymbolDef, SymbolFlags, WorkerPool,
};
use kiln_linker::image_file::{self, BuildId};
use kiln_linker::layer::{HostGenerator, ObjectLayer};
use kiln_linker::{HostSymbols, LinkOptions};

fn session_with(name: &str, options: LinkOptions) -> (Session, ObjectLayer, Dylib, Dylib) {
    let session = Session::builder().dispatcher(WorkerPool::new(2)).build();
    let layer = ObjectLayer::with_options(&session, options);
    let host = session.create_dylib("<host>").expect("dylib");
    host.add_generator(HostGenerator::new(HostSymbols::new()))
        .expect("generator");
    let dylib = session.create_dylib(name).expect("dylib");
    dylib
        .set_link_order(&[(host.clone(), DylibLookup::ExportedOnly)])
        .expect("order");
    (session, layer, dylib, host)
}

/// Image A (`table`, `a_val`, importing `getpid`) and image B (`use_a`) linked against it by
/// build id: `(A's bytes, B's bytes)`. Each test gives its own `salt`:
/// the tests run side by side in one process, and the registry of loaded
/// images is the process's.
fn two_images(dir: &Path, salt: u32) -> (Vec<u8>, Vec<u8>) {
    let flags = ["-O2", "-fPIC"];
    let liba = compile_c_text(
        dir,
        "liba",
        &format!(
            "#include <unistd.h>\nint table[4] = {{1, 2, 3, 4}};\nint salt = {salt};\n\
             int a_val(void) {{ return 19 + (getpid() > 0); }}\n"
        ),
        &flags,
    );
    let useb = compile_c_text(
        dir,
        "useb",
        "extern int table[];\nint a_val(void);\nint *third = &table[2];\n\
         int use_a(void) { return a_val() + *third + table[1]; }\n",
        &flags,
    );
    let read = |p: &Path| std::fs::read(p).expect("read object");
    let (session, layer, lib, _) = session_with("liba", options(true));
    layer
        .add_object(&lib, None, "liba.o", &read(&liba))
        .expect("adds");
    lib.lookup_ready(&["a_val"]).expect("links");
    let id = BuildId::of_inputs(&options(true), [("liba.o", &read(&liba)[..])]);
    let a = layer.save_image(&lib, &id).expect("saves A");
    session.end();
    let (session, layer, app, _) = session_with("app", options(true));
    // SAFETY: the test's own image, saved above.
    unsafe { layer.add_image(&app, None, "liba.kimg", a.clone()) }.expect("adds A");
    layer
        .add_object(&app, None, "useb.o", &read(&useb))
        .expect("adds");
    app.lookup_ready(&["use_a"]).expect("links");
    let id = BuildId::of_inputs(&options(true), [("useb.o", &read(&useb)[..])]);
    let b = layer.save_image(&app, &id).expect("saves B");
    session.end();
    (a, b)
}

fn mapped(addr: u64) -> bool {
    std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .any(|l| {
            let range = l.split_whitespace().next().unwrap_or("");
            let (lo, hi) = range.split_once('-').unwrap_or(("0", "0"));
            let lo = u64::from_str_radix(lo, 16).unwrap_or(0);
            let hi = u64::from_str_radix(hi, 16).unwrap_or(0);
            lo <= addr && addr < hi && !l.contains("---p")
        })
}

#[test]
fn a_dependency_stays_mapped_until_the_last_image_linked_against_it_goes() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-keep-alive");
    let (a_bytes, b_bytes) = two_images(&dir, 1);
    let a_id = image_file::inspect("a", &a_bytes).expect("A").build_id;
    let b_id = image_file::inspect("b", &b_bytes).expect("B").build_id;
    let (session, layer, lib, host) = session_with("lib", options(false));
    let (app, ta, tb) = add_both(&session, &layer, &lib, &host, (a_bytes, b_bytes));
    let found = app.lookup_ready(&["use_a"]).expect("binds");
    let f = found.get_str("use_a").expect("use_a").address;
    a_outlives_its_tracker_while_b_is_loaded(&lib, f, &a_id, ta, tb);
    assert!(
        image_file::image_at(f).is_none_or(|i| i.build_id != b_id),
        "B is unloaded"
    );
    session.end();
}

/// B finishes binding before A does: A's addresses are Resolved (B links
/// against them) while A waits for its own import (`getpid`, parked here).
/// B, filed first, still keeps A mapped once A is filed.
#[test]
fn a_dependency_filed_after_the_image_linked_against_it_is_kept_alive_too() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("images-keep-alive-late");
    let (a_bytes, b_bytes) = two_images(&dir, 2);
    let a_id = image_file::inspect("a", &a_bytes).expect("A").build_id;
    let (session, layer, lib, host) = session_with("lib", options(false));
    let gate = session.create_dylib("gate").expect("dylib");
    lib.set_link_order(&[
        (gate.clone(), DylibLookup::ExportedOnly),
        (host.clone(), DylibLookup::ExportedOnly),
    ])
    .expect("order");
    let getpid = session.intern("getpid");
    let (parked, slot) = Parked::new(getpid.clone());
    gate.define(parked).expect("parks getpid");
    let (app, ta, tb) = add_both(&session, &layer, &lib, &host, (a_bytes, b_bytes));
    let pending = session.lookup(
        &SearchOrder::new().with(&app, DylibLookup::ExportedOnly),
        &LookupSet::required([session.intern("use_a")]),
        RequiredState::Ready,
    );
    // A asks for getpid.
    let r = slot.take();
    wait_until("B filed", || layer.stats().1 == 1);
    let real = host_getpid_address();
    r.resolve(&[(
        getpid.clone(),
        SymbolDef::new(real, SymbolFlags::EXPORTED | SymbolFlags::CALLABLE),
    )])
    .expect("resolves getpid");
    r.emit(vec![DependenceGroup::new([getpid], vec![])])
        .expect("emits getpid");
    let found = pending
        .wait_timeout(Duration::from_secs(30))
        .expect("B is Ready");
    let f = found.get_str("use_a").expect("use_a").address;
    a_outlives_its_tracker_while_b_is_loaded(&lib, f, &a_id, ta, tb);
    session.end();
}

/// `use_a` at `f` (in B, Ready) answers 25; removing A's tracker (`ta`)
/// takes A's symbols from `lib` but leaves A mapped and registered, and B
/// still reaches it; removing B's (`tb`) takes A too.
fn a_outlives_its_tracker_while_b_is_loaded(
    lib: &Dylib,
    f: u64,
    a_id: &BuildId,
    ta: ResourceTracker,
    tb: ResourceTracker,
) {
    // SAFETY: `use_a` is `int use_a(void)`, Ready and bound (callers).
    let use_a: extern "C" fn() -> i32 = unsafe { std::mem::transmute(f as usize) };
    assert_eq!(use_a(), 25);
    let a = image_file::registry::find(a_id).expect("A is loaded");
    ta.remove().expect("removes A's tracker");
    assert!(
        mapped(a.base) && image_file::image_at(a.base).is_some_and(|i| i.build_id == *a_id),
        "A went while B, linked against it, is loaded"
    );
    assert!(lib.lookup_ready(&["a_val"]).is_err(), "A's symbols left");
    assert_eq!(use_a(), 25, "B still reaches A");
    tb.remove().expect("removes B's tracker");
    assert!(
        image_file::image_at(a.base).is_none_or(|i| i.build_id != *a_id),
        "A stayed after B went"
    );
}

/// Image A added to `lib` and B to a new dylib `app` (linking against
/// `lib`, then `host`), each under a tracker of its own: `(app, A's
/// tracker, B's tracker)`.
fn add_both(
    session: &Session,
    layer: &ObjectLayer,
    lib: &Dylib,
    host: &Dylib,
    (a, b): (Vec<u8>, Vec<u8>),
) -> (Dylib, ResourceTracker, ResourceTracker) {
    let app = session.create_dylib("app").expect("dylib");
    app.set_link_order(&[
        (lib.clone(), DylibLookup::ExportedOnly),
        (host.clone(), DylibLookup::ExportedOnly),
    ])
    .expect("order");
    let ta = lib.create_tracker().expect("tracker");
    let tb = app.create_tracker().expect("tracker");
    // SAFETY: the test's own images, saved by `two_images`.
    unsafe {
        layer
            .add_image(lib, Some(&ta), "liba.kimg", a)
            .expect("adds A");
        layer
            .add_image(&app, Some(&tb), "b.kimg", b)
            .expect("adds B");
    }
    (app, ta, tb)
}

/// This process's `getpid`.
fn host_getpid_address() -> u64 {
    unsafe extern "C" {
        safe fn getpid() -> i32;
    }
    getpid as *const () as u64
}
