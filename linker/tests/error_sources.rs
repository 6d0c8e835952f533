//! Errors keep their causes: a linker error built from another library's
//! error (the ELF reader's, the engine's, the loader's, the TLS runtime's)
//! returns it, typed, from `source()`, and its message still names what
//! failed and where.

mod common;

use common::*;
use kiln_engine::{Session, WorkerPool};
use kiln_linker::archive::Archive;
use kiln_linker::image_file::{self, ImageError};
use kiln_linker::layer::ObjectLayer;
use kiln_linker::runtime::tls::TlsError;
use kiln_linker::{HostSymbols, LinkError, LinkOptions, Linker};

/// The `T` that `e`'s `source()` is, if it is one.
fn source_as<T: std::error::Error + 'static>(e: &dyn std::error::Error) -> Option<&T> {
    e.source().and_then(|s| s.downcast_ref::<T>())
}

#[test]
fn an_object_the_elf_reader_refuses_keeps_its_error() {
    let mut linker = Linker::new(LinkOptions::default());
    linker.add_object_bytes("short.o", b"\x7fELF\x02\x01\x01".to_vec());
    let err = linker
        .link(&HostSymbols::new())
        .expect_err("a 7-byte object linked");
    assert!(matches!(err, LinkError::Malformed { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("short.o: not an ELF64 little-endian file: "),
        "{msg}"
    );
    let reader = source_as::<object::read::Error>(&err)
        .unwrap_or_else(|| panic!("source is the ELF reader's error: {err:?}"));
    assert!(msg.ends_with(&reader.to_string()), "{msg}");
}

#[test]
fn an_archive_the_reader_refuses_keeps_its_error() {
    let err = Archive::parse("bad.a", b"!<arch>\nnot a member header".to_vec())
        .expect_err("a truncated archive parsed");
    let msg = err.to_string();
    assert!(msg.starts_with("bad.a: not an archive: "), "{msg}");
    assert!(
        source_as::<object::read::Error>(&err).is_some(),
        "source is the archive reader's error: {err:?}"
    );
}

#[test]
fn a_library_that_cannot_be_loaded_says_why() {
    let mut host = HostSymbols::new();
    // SAFETY: a library that is not there: nothing is loaded.
    let err = unsafe { host.load_library("kiln-no-such-library", &[]) }
        .expect_err("a library that does not exist loaded");
    assert!(matches!(err, LinkError::Library { .. }), "{err:?}");
    assert!(
        source_as::<libloading::Error>(&err).is_some(),
        "source is the loader's error: {err:?}"
    );
    // libloading's own message is only "dlopen failed": dlerror's text is
    // its source, and the message quotes it.
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot load library libkiln-no-such-library.so: dlopen failed: ")
            && msg.contains("cannot open shared object file"),
        "{msg}"
    );
}

#[test]
fn a_definition_the_engine_refuses_keeps_its_error() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("error-sources-engine");
    let obj = compile_c_text(&dir, "twice", "int twice(void) { return 2; }", &["-O2"]);
    let bytes = std::fs::read(&obj).expect("read the object");
    let session = Session::builder().dispatcher(WorkerPool::new(1)).build();
    let layer = ObjectLayer::new(&session);
    let app = session.create_dylib("app").expect("dylib");
    layer
        .add_object(&app, None, "twice.o", &bytes)
        .expect("the first definition");
    let err = layer
        .add_object(&app, None, "again.o", &bytes)
        .expect_err("`twice` was defined twice in one dylib");
    assert!(matches!(err, LinkError::Engine { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("again.o: duplicate definitions in dylib 'app': twice"),
        "{msg}"
    );
    let engine = source_as::<kiln_engine::Error>(&err)
        .unwrap_or_else(|| panic!("source is the engine's error: {err:?}"));
    assert!(
        matches!(engine, kiln_engine::Error::DuplicateDefinitions { .. }),
        "{engine:?}"
    );
}

/// A saved image of `int answer(void)`, compiled in the scratch directory
/// `dir` (one per test: tests run at once, and one compiling `answer.o`
/// while another reads it gave the reader half an object).
fn answer_image(dir: &str) -> Vec<u8> {
    let dir = scratch(dir);
    let obj = compile_c_text(
        &dir,
        "answer",
        "int answer(void) { return 42; }",
        &["-O2", "-fPIC"],
    );
    let (mut linker, id) = common::images::imaging_linker(&[obj]);
    let image = linker.link(&HostSymbols::new()).expect("links");
    image.save_image(&id).expect("saves")
}

#[test]
fn an_image_the_engine_refuses_keeps_the_engines_error() {
    if !need_tool("gcc") {
        return;
    }
    let image = answer_image("error-sources-image-twice");
    let session = Session::builder().dispatcher(WorkerPool::new(1)).build();
    let layer = ObjectLayer::new(&session);
    let app = session.create_dylib("app").expect("dylib");
    // SAFETY: the test's own image; nothing of it is looked up or run.
    unsafe { layer.add_image(&app, None, "a.kimg", image.clone()) }.expect("the first add");
    // SAFETY: the test's own image again; nothing of it is looked up or run.
    let err = unsafe { layer.add_image(&app, None, "b.kimg", image) }
        .expect_err("`answer` was defined twice in one dylib");
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "b.kimg: defining the image's symbols: duplicate definitions in dylib 'app': answer"
        ),
        "{msg}"
    );
    let link = source_as::<LinkError>(&err)
        .unwrap_or_else(|| panic!("source is the linker's error: {err:?}"));
    assert!(
        matches!(
            source_as::<kiln_engine::Error>(link),
            Some(kiln_engine::Error::DuplicateDefinitions { .. })
        ),
        "the linker's error's source is the engine's: {link:?}"
    );
}

#[test]
fn an_image_whose_elf_container_is_damaged_keeps_the_readers_error() {
    if !need_tool("gcc") {
        return;
    }
    let mut image = answer_image("error-sources-image-damaged");
    // e_phoff (ELF64 header offset 0x20): far past the end of the file.
    image[0x20..0x28].copy_from_slice(&0x7fff_ffff_0000u64.to_le_bytes());
    image_file::reseal(&mut image);
    let err = image_file::inspect("damaged.kimg", &image)
        .expect_err("an image with its program headers out of the file was read");
    assert!(matches!(err, ImageError::Container { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("damaged.kimg: malformed image: program headers: "),
        "{msg}"
    );
    assert!(
        source_as::<object::read::Error>(&err).is_some(),
        "source is the ELF reader's error: {err:?}"
    );
}

/// Initial-exec/local-exec code (`-fPIE`) whose thread-locals do not fit
/// kiln's static TLS area: the TLS runtime's refusal is the source.
#[test]
fn a_tls_refusal_keeps_the_tls_runtimes_error() {
    if !need_tool("gcc") {
        return;
    }
    let dir = scratch("error-sources-tls");
    let obj = compile_c_text(
        &dir,
        "bigtls",
        "__thread char big_tls[8 << 20];\n\
         int main(void) { big_tls[1] = 1; return big_tls[0]; }\n",
        &["-O2", "-fPIE"],
    );
    let mut linker = Linker::new(LinkOptions::default());
    linker.add_object_file(&obj).expect("reads the object");
    let err = linker
        .link(&HostSymbols::new())
        .expect_err("8 MiB of initial-exec thread-locals linked");
    assert!(matches!(err, LinkError::Tls { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.starts_with("thread-local storage: the thread-pointer offset of `big_tls`: ")
            && msg.contains("bigtls.o")
            && msg.contains("-fPIC"),
        "{msg}"
    );
    assert!(
        matches!(
            source_as::<TlsError>(&err),
            Some(TlsError::NeedsStaticTls { .. })
        ),
        "source is the TLS runtime's error: {err:?}"
    );
}

/// A linker error inside an image error, inside an engine error: the
/// engine's `downcast_ref` walks the `source()` chain and finds it (a
/// `Box<LinkError>` field would have been a `Box`, not a `LinkError`).
#[test]
fn a_link_error_inside_an_image_error_is_found_through_the_engine() {
    let link = LinkError::MissingSymbols {
        missing: vec![("lost".into(), vec!["app.o".into()])],
    };
    let image = ImageError::Link {
        name: "app.kimg".into(),
        source: kiln_linker::Cause::new(link),
    };
    assert!(source_as::<LinkError>(&image).is_some(), "{image:?}");
    let engine = kiln_engine::Error::external(image);
    assert!(
        matches!(
            engine.downcast_ref::<LinkError>(),
            Some(LinkError::MissingSymbols { .. })
        ),
        "{engine:?}"
    );
}
