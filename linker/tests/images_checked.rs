//! `image_file::load_file` keeps each settled file it checked in its parsed
//! form (`linker/src/image_file/checked.rs`): a later load of the unchanged
//! file maps, rebases, binds and protects only. These tests check that a
//! kept form is never used for a file that changed, and that loads sharing
//! one kept form still get their own pages.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use kiln_linker::image_file;
use kiln_linker::{HostSymbols, LinkedImage, SymbolResolver};

/// `src` compiled and saved as an image file at `dir/name.kimg`, then aged
/// past the 2 s within which a changed file is checked on every load (so
/// that loads keep it).
fn aged_image(dir: &Path, name: &str, src: &str) -> PathBuf {
    let o = compile_c_text(dir, name, src, &["-O2", "-fPIC"]);
    let (mut linker, id) = common::images::imaging_linker(&[o]);
    // Names the host lacks (a test's hooks) are saved as imports by name.
    let host = HostSymbols::new();
    let resolver = |names: &[&str]| -> Vec<Option<u64>> {
        host.resolve(names)
            .into_iter()
            .map(|a| Some(a.unwrap_or(0)))
            .collect()
    };
    let image = linker.link(&resolver).expect("links");
    let bytes = image.save_image(&id).expect("saves");
    let path = dir.join(format!("{name}.kimg"));
    std::fs::write(&path, bytes).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    path
}

/// `int f(void)` at `name` in `image`.
fn func(image: &LinkedImage, name: &str) -> extern "C" fn() -> i32 {
    let f = image.symbol(name).unwrap_or_else(|| panic!("no {name}"));
    // SAFETY: the tests' images define `name` as `int name(void)`.
    unsafe { std::mem::transmute::<usize, extern "C" fn() -> i32>(f as usize) }
}

/// The file range of section `name` of the image file `bytes`.
fn section(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let le = object::LittleEndian;
    let h = object::elf::FileHeader64::<object::LittleEndian>::parse(bytes).expect("ELF");
    let sections = h.sections(le, bytes).expect("sections");
    let (_, s) = sections
        .iter()
        .enumerate()
        .find(|(_, s)| sections.section_name(le, s) == Ok(name.as_bytes()))
        .unwrap_or_else(|| panic!("no {name}"));
    let at = s.sh_offset(le) as usize;
    at..at + s.sh_size(le) as usize
}

/// A file loaded (and kept) and then rewritten in place — same inode, same
/// size — with a table no load may accept (an export past the image's end)
/// and a content hash that matches: the next load checks it again and
/// refuses it, rather than loading the kept form of the old bytes.
#[test]
fn a_kept_image_file_changed_in_place_is_checked_again() {
    use std::io::{Seek, SeekFrom, Write};
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-changed");
    let path = aged_image(&dir, "k", "int k_val(void) { return 7; }\n");
    let host = HostSymbols::new();
    for _ in 0..2 {
        // SAFETY: the test's own image, saved just now.
        let image = unsafe { image_file::load_file(&path, &host) }.expect("loads");
        assert_eq!(func(&image, "k_val")(), 7);
    }
    let mut bytes = std::fs::read(&path).expect("read");
    let exports = section(&bytes, ".kiln.exports");
    assert!(exports.len() >= 24, "an export record");
    bytes[exports.start..exports.start + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    image_file::reseal(&mut bytes);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.write_all(&bytes).expect("write in place");
    drop(f);
    // SAFETY: the test's own image; the file must be refused before it is mapped.
    let e = unsafe { image_file::load_file(&path, &host) }
        .expect_err("an export past the image's end is refused");
    assert!(e.to_string().contains("export offset"), "{e}");
}

/// Two loads of one unchanged file (the second from the kept form) each
/// get their own pages: a static counter counts apart in each; unloading
/// one leaves the other running, and a third load starts afresh.
#[test]
fn two_loads_of_one_image_file_have_their_own_pages_and_unload_alone() {
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-twice");
    let path = aged_image(
        &dir,
        "t",
        "static int n;\nint t_bump(void) { return ++n; }\n",
    );
    let host = HostSymbols::new();
    // SAFETY: the test's own image (three loads of it, dropped in any
    // order: it links against nothing).
    let (a, b) = unsafe {
        (
            image_file::load_file(&path, &host).expect("loads"),
            image_file::load_file(&path, &host).expect("loads again"),
        )
    };
    assert_ne!(a.symbol("t_bump"), b.symbol("t_bump"));
    let (bump_a, bump_b) = (func(&a, "t_bump"), func(&b, "t_bump"));
    assert_eq!((bump_a(), bump_a(), bump_b()), (1, 2, 1));
    drop(a);
    assert_eq!((bump_b(), bump_b()), (2, 3));
    // SAFETY: the test's own image; it links against nothing.
    let c = unsafe { image_file::load_file(&path, &host) }.expect("loads a third time");
    assert_eq!((func(&c, "t_bump")(), bump_b()), (1, 4));
    drop(b);
    assert_eq!(func(&c, "t_bump")(), 2);
}

/// An image resealed with a damaged `.eh_frame` record length (the hash
/// matches, the tables are fine) passes the parser, which then leaves the
/// records' walk to the load: the load refuses it before libgcc sees it —
/// from the bytes, from the file, and again from the file's kept form.
#[test]
fn a_resealed_image_with_a_damaged_eh_frame_is_refused_on_every_load() {
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-eh-frame");
    let path = aged_image(
        &dir,
        "e",
        "int e_val(int x) { return x * 3; }\nint e_twice(int x) { return e_val(x) + e_val(x + 1); }\n",
    );
    let mut bytes = std::fs::read(&path).expect("read");
    let eh = section(&bytes, ".eh_frame");
    assert!(eh.len() > 8, "an .eh_frame with records");
    // The first record's length, past the section's end.
    bytes[eh.start..eh.start + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
    image_file::reseal(&mut bytes);
    let host = HostSymbols::new();
    // SAFETY: refused before anything runs (the point of the test).
    let e = unsafe { image_file::load("e.kimg", &bytes, &host) }.expect_err("refused");
    assert!(e.to_string().contains("malformed .eh_frame"), "{e}");
    let damaged = dir.join("damaged.kimg");
    std::fs::write(&damaged, &bytes).expect("write");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    for _ in 0..2 {
        // SAFETY: refused before anything runs (the point of the test).
        let e = unsafe { image_file::load_file(&damaged, &host) }.expect_err("refused");
        assert!(e.to_string().contains("malformed .eh_frame"), "{e}");
    }
}

/// `int k_hook(void) { return value; }` as `dir/tag/libhook.so`.
fn hook_library(dir: &Path, tag: &str, value: i32) -> PathBuf {
    let sub = dir.join(tag);
    std::fs::create_dir_all(&sub).expect("dir");
    let o = compile_c_text(
        &sub,
        "hook",
        &format!("int k_hook(void) {{ return {value}; }}\n"),
        &["-O2", "-fPIC"],
    );
    let so = sub.join("libhook.so");
    let st = std::process::Command::new("gcc")
        .arg("-shared")
        .arg(&o)
        .arg("-o")
        .arg(&so)
        .status()
        .expect("gcc runs");
    assert!(st.success(), "gcc -shared");
    so
}

/// A kept file keeps the answers of the resolver it was last loaded with
/// while that resolver's answers stay (its stamp): loads through another
/// resolver — another `HostSymbols` whose library defines the import
/// differently, or a closure (no stamp) — bind to that resolver's answers.
#[test]
fn kept_answers_are_used_only_with_the_resolver_that_gave_them() {
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-answers");
    let (one, two) = (hook_library(&dir, "one", 1), hook_library(&dir, "two", 2));
    let path = aged_image(
        &dir,
        "h",
        "int k_hook(void);\nint k_call(void) { return k_hook() * 10; }\n",
    );
    let mut h1 = HostSymbols::new();
    // SAFETY: the test's own library, built above.
    unsafe { h1.load_path(&one) }.expect("loads libhook one");
    let mut h2 = HostSymbols::new();
    // SAFETY: the test's own library, built above.
    unsafe { h2.load_path(&two) }.expect("loads libhook two");
    extern "C" fn three() -> i32 {
        3
    }
    let closure = |names: &[&str]| -> Vec<Option<u64>> {
        let hook = three as extern "C" fn() -> i32 as usize as u64;
        names
            .iter()
            .map(|n| (*n == "k_hook").then_some(hook))
            .collect()
    };
    let resolvers: [(&dyn SymbolResolver, i32); 6] = [
        (&h1, 10),
        (&h1, 10),
        (&h2, 20),
        (&h2, 20),
        (&closure, 30),
        (&h1, 10),
    ];
    for (i, (resolver, want)) in resolvers.into_iter().enumerate() {
        // SAFETY: the test's own image; `k_hook` is `int (void)` in every
        // resolver's answer.
        let image = unsafe { image_file::load_file(&path, resolver) }.expect("loads");
        assert_eq!(func(&image, "k_call")(), want, "load {i}");
    }
}

/// `ImageFile::load` loads the file the `ImageFile` opened and checked (a
/// `kiln run --cache` hit's entry): through its descriptor, without going
/// back to the path — removed here, so a load by path would fail — and
/// each load gets its own pages.
#[test]
fn an_image_file_loads_from_what_it_opened_without_its_path() {
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-opened");
    let path = aged_image(
        &dir,
        "o",
        "static int n;\nint o_bump(void) { return ++n; }\n",
    );
    let file = image_file::ImageFile::open(&path).expect("opens");
    std::fs::remove_file(&path).expect("remove");
    let host = HostSymbols::new();
    // SAFETY: the test's own image, not changed while loaded (its inode
    // stays, held by `file`); it links against nothing.
    let (a, b) = unsafe {
        (
            file.load(&host).expect("loads"),
            file.load(&host).expect("loads again"),
        )
    };
    assert_eq!(
        (
            func(&a, "o_bump")(),
            func(&a, "o_bump")(),
            func(&b, "o_bump")()
        ),
        (1, 2, 1)
    );
    // SAFETY: the test's own image (the path is gone: refused with an I/O error).
    let e = unsafe { image_file::load_file(&path, &host) }.expect_err("no path");
    assert!(e.to_string().contains("open"), "{e}");
}

/// The readable bytes of `image`'s memory (its pages that `/proc/self/maps`
/// shows readable), as (offset in the image, bytes).
fn readable_memory(image: &LinkedImage) -> Vec<(u64, Vec<u8>)> {
    let (base, size) = image.memory_range();
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let mut out = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (s, e) = (
            u64::from_str_radix(s, 16).expect("start"),
            u64::from_str_radix(e, 16).expect("end"),
        );
        let (s, e) = (s.max(base), e.min(base + size));
        if s >= e || !perms.starts_with('r') {
            continue;
        }
        // SAFETY: `[s, e)` is mapped readable (maps says so) inside the
        // image, which stays loaded while the slice is copied.
        let bytes = unsafe { std::slice::from_raw_parts(s as *const u8, (e - s) as usize) };
        out.push((s - base, bytes.to_vec()));
    }
    out
}

/// The image ranges `[addr, addr + size)` of the allocated sections of
/// the image file `bytes` (what a load must show as the file has it).
fn loaded_ranges(bytes: &[u8]) -> Vec<(u64, u64)> {
    use object::read::elf::{FileHeader as _, SectionHeader as _};
    let le = object::LittleEndian;
    let Ok(h) = object::elf::FileHeader64::<object::LittleEndian>::parse(bytes) else {
        return Vec::new();
    };
    let Ok(sections) = h.sections(le, bytes) else {
        return Vec::new();
    };
    sections
        .iter()
        // SHF_ALLOC.
        .filter(|s| s.sh_flags(le).0 & 2 != 0)
        .map(|s| (s.sh_addr(le), s.sh_addr(le).saturating_add(s.sh_size(le))))
        .collect()
}

/// Whether `b` is `a` loaded at another base: the same readable pages, each
/// word equal or apart by exactly the difference of the bases (a rebased
/// word). A byte outside `sections` (padding after a section on its last
/// page) may read as the file has it in `b` (mapped) and as zero in `a`
/// (copied): `ld.so` maps such pages alike.
fn same_image_at_two_bases(a: &LinkedImage, b: &LinkedImage, sections: &[(u64, u64)]) -> bool {
    let delta = b.memory_range().0.wrapping_sub(a.memory_range().0);
    let padding = |at: u64| !sections.iter().any(|&(s, e)| s <= at && at < e);
    let (ma, mb) = (readable_memory(a), readable_memory(b));
    let word_alike = |at: u64, wa: &[u8], wb: &[u8]| {
        wa == wb
            || (wa.len() == 8
                && u64::from_le_bytes(wa.try_into().expect("8")).wrapping_add(delta)
                    == u64::from_le_bytes(wb.try_into().expect("8")))
            || wa
                .iter()
                .zip(wb)
                .enumerate()
                .all(|(k, (x, y))| x == y || (*x == 0 && padding(at + k as u64)))
    };
    ma.len() == mb.len()
        && ma.iter().zip(&mb).all(|((oa, ba), (ob, bb))| {
            oa == ob
                && ba.len() == bb.len()
                && (ba.chunks(8).zip(bb.chunks(8)).enumerate())
                    .all(|(k, (wa, wb))| word_alike(oa + 8 * k as u64, wa, wb))
        })
}

/// A load of a file (`load_file`: segments mapped at their final
/// protections, the written pages written without a writable mapping) and
/// a load of the same bytes (`load`: mapped read-write, written, then
/// protected) agree on 3,000 mutants — byte flips, truncations, resealed
/// damage to the header and tables —: both load or both fail, and what
/// loads is the same image at its two bases, page protections included
/// (readable pages alike).
#[test]
fn loads_of_files_and_of_bytes_agree_on_mutants() {
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-mutants");
    let src = "static int counter;\n\
               static int (*hook)(void);\n\
               int seven(void) { return 7; }\n\
               int bump(void) { hook = seven; return ++counter + hook(); }\n\
               const char *const names[] = { \"a\", \"b\", \"c\" };\n\
               const char *name(int i) { return names[i % 3]; }\n";
    let path = aged_image(&dir, "m", src);
    let good = std::fs::read(&path).expect("read");
    let host = HostSymbols::new();
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let file = dir.join("mutant.kimg");
    // The sections' places as saved (a mutant's section headers may lie;
    // the loader reads the segments).
    let sections = loaded_ranges(&good);
    let (mut loaded, mut refused) = (0usize, 0usize);
    for i in 0..3000 {
        let mut v = good.clone();
        match i % 3 {
            0 => rng.flip_bits(&mut v),
            1 => v.truncate(rng.below(good.len())),
            _ => {
                // Anywhere but the code (whoever can reseal runs code).
                let text = section(&good, ".text");
                for _ in 0..=rng.below(3) {
                    let mut at = rng.below(v.len());
                    if text.contains(&at) {
                        at = text.end + rng.below(v.len() - text.end);
                    }
                    v[at] = rng.next() as u8;
                }
                image_file::reseal(&mut v);
            }
        }
        std::fs::write(&file, &v).expect("write the mutant");
        // SAFETY: the test's own image or a mutant of it; a mutant that
        // loads is never called (its initializers never run).
        let from_file = unsafe { image_file::load_file(&file, &host) };
        // SAFETY: the test's own image or a mutant of it; a mutant that loads is never called.
        let from_bytes = unsafe { image_file::load("mutant.kimg", &v, &host) };
        match (from_file, from_bytes) {
            (Ok(a), Ok(b)) => {
                assert!(
                    same_image_at_two_bases(&b, &a, &sections),
                    "mutant {i}: the loads differ"
                );
                loaded += 1;
            }
            (Err(a), Err(b)) => {
                assert!(!a.to_string().is_empty() && !b.to_string().is_empty());
                refused += 1;
            }
            (a, b) => panic!(
                "mutant {i}: load_file {:?}, load {:?}",
                a.map(|_| "loaded"),
                b.map(|_| "loaded")
            ),
        }
    }
    eprintln!("{loaded} mutants loaded, {refused} refused, alike from a file and from bytes");
    assert!(
        loaded > 100 && refused > 1000,
        "{loaded} loaded, {refused} refused"
    );
    // The unchanged image runs alike from the file.
    // SAFETY: the test's own image.
    let image = unsafe { image_file::load_file(&path, &host) }.expect("loads");
    assert_eq!(func(&image, "bump")(), 8);
    assert_eq!(func(&image, "bump")(), 9);
}

/// Set in the child process of
/// [`a_forked_child_loads_images_into_its_own_memory`]: the image's path.
const FORK_CHILD: &str = "KILN_IMAGES_CHECKED_FORK_CHILD";

/// A load writes the pages it must write (rebased words in read-only
/// pages) through `/proc/self/mem`, opened once per process. A forked
/// child inherits that descriptor, which names its parent's memory: the
/// child's own loads must open its own, or they patch the parent and run
/// on unpatched pages. Run in a process of its own (this test's binary
/// again, one test thread), since forking the test harness's process with
/// its threads is not safe.
#[test]
fn a_forked_child_loads_images_into_its_own_memory() {
    if let Some(path) = std::env::var_os(FORK_CHILD) {
        fork_and_load(Path::new(&path));
        return;
    }
    assert!(need_tool("gcc"), "gcc is needed");
    let dir = scratch("images-checked-fork");
    // `px` is a rebased word in read-only data: written at load (read
    // through a volatile pointer so that the compiler cannot fold it).
    let path = aged_image(
        &dir,
        "f",
        "static int x = 5;\nint *const px = &x;\n\
         int f_get(void) { int *const *volatile p = &px; return **p; }\n",
    );
    let exe = std::env::current_exe().expect("test binary path");
    let out = std::process::Command::new(exe)
        .args([
            "--exact",
            "a_forked_child_loads_images_into_its_own_memory",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(FORK_CHILD, &path)
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("forked child loaded: 5"),
        "status {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The child half: load `path` (opening `/proc/self/mem`), fork, load it
/// again in the grandchild and call it there.
fn fork_and_load(path: &Path) {
    let host = HostSymbols::new();
    // SAFETY: the test's own image, saved by the parent test.
    let first = unsafe { image_file::load_file(path, &host) }.expect("loads");
    assert_eq!(func(&first, "f_get")(), 5);
    // SAFETY: this process runs one test on one thread (`--test-threads=1`
    // and nothing else started): the child may use the allocator.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: the test's own image, loaded in the forked child; nothing of it runs.
        let status = match unsafe { image_file::load_file(path, &host) } {
            Ok(image) => {
                if func(&image, "f_get")() == 5 {
                    0
                } else {
                    3
                }
            }
            Err(_) => 4,
        };
        // SAFETY: ends the forked child without running the parent's
        // exit handlers or test harness teardown twice.
        unsafe { libc::_exit(status) };
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child's load ran wrong: wait status {status:#x}"
    );
    assert_eq!(func(&first, "f_get")(), 5, "the parent's image is intact");
    println!("forked child loaded: 5");
}
