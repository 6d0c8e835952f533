//! Compiles the bundled example program (`bundled/*.c`) into objects that
//! the `kiln` binary embeds and runs when given no inputs. Only with the
//! `cli` feature: the library needs none of it.

#[cfg(not(feature = "cli"))]
fn main() {}

#[cfg(feature = "cli")]
fn main() {
    let sources = ["bundled/main.c", "bundled/math.c", "bundled/words.c"];
    for s in &sources {
        println!("cargo:rerun-if-changed={s}");
    }
    let objects = cc::Build::new()
        .files(sources)
        // The objects are JIT'd, not linked into kiln: a sanitizer build of
        // kiln (`-Zsanitizer=address`, for which cc adds
        // `-fsanitize=address`) must not instrument them — they would name
        // the sanitizer's runtime, which the host does not export.
        .flag("-fno-sanitize=address")
        .opt_level(2)
        .warnings(true)
        .compile_intermediates();
    let out = std::path::PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut list = String::from(
        "/// The bundled example's objects: (name, bytes).\npub(crate) const BUNDLED: &[(&str, &[u8])] = &[\n",
    );
    for (src, obj) in sources.iter().zip(&objects) {
        let name = std::path::PathBuf::from(src).with_extension("o");
        let name = name
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("bundled.o");
        list.push_str(&format!(
            "    ({name:?}, include_bytes!({:?})),\n",
            obj.display().to_string()
        ));
    }
    list.push_str("];\n");
    std::fs::write(out.join("bundled.rs"), list).expect("OUT_DIR is writable");
}
