//! Compiles the bundled example program (`bundled/*.c`) into objects that
//! the `kiln` binary embeds and runs when given no inputs (only with the
//! `cli` feature: the library needs none of it), and the GDB JIT
//! interface's C shim (`csrc/gdb_jit.c`), which every user of the library
//! links; and, for the `kiln` binary, the order of its hit-path functions
//! (`order/kiln-hit.order`), libm loaded at start and libgcc's unwinder
//! linked in.

fn main() {
    #[cfg(feature = "cli")]
    bundled_example();
    #[cfg(feature = "cli")]
    hit_path_order();
    #[cfg(feature = "cli")]
    libm_at_start();
    #[cfg(feature = "cli")]
    static_unwinder();
    gdb_jit_shim();
}

/// libm is a `DT_NEEDED` of the `kiln` binary: every `kiln run` binds
/// JIT'd code against it (`HostSymbols::new` opens it), and loaded at
/// start `ld.so` maps it with the cache it has open for libc — a
/// `dlopen` later opened, mapped and unmapped `/etc/ld.so.cache` again (5
/// syscalls, 2 page faults, ~40 k instructions of a cache hit). Its names
/// are searched as before: `HostSymbols` asks libm's handle before the
/// process's scope. Rust passes `--as-needed`, which would drop it (kiln's
/// own code calls nothing in it).
#[cfg(feature = "cli")]
fn libm_at_start() {
    if std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu")
    {
        println!("cargo:rustc-link-arg-bin=kiln=-Wl,--push-state,--no-as-needed,-lm,--pop-state");
    }
}

/// The `kiln` binary links libgcc's unwinder (`libgcc_eh.a`, whole: every
/// `_Unwind_*` Rust's std calls is then defined in the binary, so the
/// `-lgcc_s` rustc passes is not needed and `--as-needed` drops it)
/// instead of needing libgcc_s: its
/// constructor runs a dozen `cpuid`s, ~0.2 ms of a cache hit's 1.6 ms on
/// this VM class, for programs that never unwind. The symbols stay
/// private to the binary (not exported); `runtime::unwinder` registers the
/// JIT'd code's frames with libgcc_s as well once a program loads it.
#[cfg(feature = "cli")]
fn static_unwinder() {
    if std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64")
        && std::env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux")
        && std::env::var("CARGO_CFG_TARGET_ENV").is_ok_and(|env| env == "gnu")
    {
        println!(
            "cargo:rustc-link-arg-bin=kiln=-Wl,--push-state,--whole-archive,-l:libgcc_eh.a,--pop-state"
        );
    }
}

/// The functions a `kiln run --cache` hit executes (`order/kiln-hit.order`,
/// made by `benches/hot-order`) are placed together in the `kiln` binary's
/// `.text` (lld's `--symbol-ordering-file`): scattered over its 2.6 MB they
/// cost a hit ~20 page faults of kiln's code, together ~5
/// (docs/performance-images.md, "Whole process"). Names the binary no
/// longer has are ignored. Only with rustc's default linker for the target
/// (lld through `cc`): a configured linker or linker flags (which may not
/// be lld, and GNU ld refuses the option) get no ordering.
#[cfg(feature = "cli")]
fn hit_path_order() {
    println!("cargo:rerun-if-changed=order/kiln-hit.order");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let default_linker = std::env::var_os("RUSTC_LINKER").is_none()
        && !std::env::var("CARGO_ENCODED_RUSTFLAGS").is_ok_and(|f| f.contains("link"));
    let target = std::env::var("TARGET").unwrap_or_default();
    if !default_linker || target != "x86_64-unknown-linux-gnu" {
        return;
    }
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = std::path::Path::new(&dir).join("order/kiln-hit.order");
    println!(
        "cargo:rustc-link-arg-bin=kiln=-Wl,--symbol-ordering-file={}",
        order.display()
    );
    println!("cargo:rustc-link-arg-bin=kiln=-Wl,--no-warn-symbol-ordering");
}

/// The bundled example's objects, listed in `OUT_DIR/bundled.rs`.
#[cfg(feature = "cli")]
fn bundled_example() {
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

/// The GDB JIT interface's symbols (`csrc/gdb_jit.c`), linked into the
/// crate so that every executable using kiln (the `kiln` binary, tests,
/// hosts) defines them: the archive member is kept because the crate calls
/// `kiln_gdb_jit_descriptor` / `kiln_gdb_jit_notify`, defined beside them.
fn gdb_jit_shim() {
    println!("cargo:rerun-if-changed=csrc/gdb_jit.c");
    cc::Build::new()
        .file("csrc/gdb_jit.c")
        .flag("-fno-sanitize=address")
        .opt_level(1)
        .warnings(true)
        .compile("kiln_gdb_jit");
}
