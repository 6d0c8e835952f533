//! Shared by the tests: executable memory that is never W+X (the x86-64
//! run tests), and the rule for tests that need an external tool.
#![allow(dead_code, reason = "each test binary uses a different part")]

use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

use kiln_arch::{Arch, X86_64};
use rustix::mm::{MapFlags, MprotectFlags, ProtFlags, mmap_anonymous, mprotect, munmap};

/// Set to `1` to let tests whose tool is missing skip instead of fail —
/// for local runs only; CI (`scripts/test`) installs every tool and never
/// sets it.
pub(crate) const SKIP_MISSING_TOOLS: &str = "KILN_SKIP_MISSING_TOOLS";

/// The Debian package that provides `tool`.
fn package_of(tool: &str) -> &str {
    match tool {
        "aarch64-linux-gnu-gcc" => "gcc-aarch64-linux-gnu",
        "aarch64-linux-gnu-objdump" | "aarch64-linux-gnu-as" | "aarch64-linux-gnu-ld" => {
            "binutils-aarch64-linux-gnu"
        }
        "qemu-aarch64-static" => "qemu-user-static",
        "cc" => "gcc",
        other => other,
    }
}

/// Checks that `tool` runs (`tool --version`) before a test that needs it.
/// A missing tool fails the test, naming the package to install; only with
/// [`SKIP_MISSING_TOOLS`]`=1` does it print a note and return `false`, and
/// the caller returns (skipped).
pub(crate) fn need_tool(tool: &str) -> bool {
    let works = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if works {
        return true;
    }
    let install = format!("apt-get install -y {}", package_of(tool));
    if std::env::var(SKIP_MISSING_TOOLS).is_ok_and(|v| v == "1") {
        eprintln!("note: skipped, {tool} is not installed ({install}; {SKIP_MISSING_TOOLS}=1)");
        return false;
    }
    panic!(
        "{tool} is not installed, and this test needs it ({install}, or set \
         {SKIP_MISSING_TOOLS}=1 to skip such tests locally)"
    );
}

// ---------------------------------------------------------------------------
// Executable memory: one code page (RW while writing, then RX) and one data
// page of pointer slots (RW).

pub(crate) const ENTRY_OFF: usize = 0;
pub(crate) const TRAMP_OFF: usize = 0x40;
pub(crate) const STUB_OFF: usize = 0x400;
pub(crate) const ENTRY_SLOT: usize = 0;
pub(crate) const MAX_STUBS: usize = 64;

pub(crate) struct Jit {
    base: *mut u8,
    page: usize,
    finalized: bool,
}

// SAFETY: after `finalize` the code page is immutable and the data page is
// only accessed through atomics; the mapping lives until drop.
unsafe impl Send for Jit {}
// SAFETY: shared references only read the finalized, immutable code page
// and touch the data page through atomics; the mapping lives until drop.
unsafe impl Sync for Jit {}

impl Jit {
    pub(crate) fn new() -> Self {
        let page = rustix::param::page_size();
        // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
        let base = unsafe {
            mmap_anonymous(
                std::ptr::null_mut(),
                2 * page,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::PRIVATE,
            )
        }
        .expect("mmap two RW pages");
        Jit {
            base: base.cast(),
            page,
            finalized: false,
        }
    }

    pub(crate) fn addr(&self, off: usize) -> u64 {
        self.base as u64 + off as u64
    }

    pub(crate) fn code_mut(&mut self) -> &mut [u8] {
        assert!(!self.finalized, "code page is RX");
        // SAFETY: the first page is mapped RW and owned by self until finalize.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.page) }
    }

    pub(crate) fn data_addr(&self, off: usize) -> u64 {
        self.addr(self.page + off)
    }

    pub(crate) fn slot(&self, off: usize) -> &AtomicU64 {
        assert_eq!(off % 8, 0);
        assert!(off + 8 <= self.page);
        // SAFETY: the data page is mapped RW for self's lifetime, `off` is 8-aligned
        // and in bounds, and the slots are only accessed atomically (and by stub loads).
        unsafe { AtomicU64::from_ptr(self.base.add(self.page + off).cast()) }
    }

    /// Writes the entry block, `n` trampolines (sharing the entry slot) and
    /// `n` redirectable stubs (stub i → slot 8 + 8i).
    pub(crate) fn layout(&mut self, n: usize, entry_target: Option<u64>) {
        assert!(n <= MAX_STUBS);
        let entry = self.addr(ENTRY_OFF);
        let entry_slot = self.data_addr(ENTRY_SLOT);
        let tramps: Vec<u64> = (0..n).map(|i| self.addr(TRAMP_OFF + 8 * i)).collect();
        let stubs: Vec<u64> = (0..n).map(|i| self.addr(STUB_OFF + 8 * i)).collect();
        let slots: Vec<u64> = (0..n).map(|i| self.data_addr(8 + 8 * i)).collect();
        let code = self.code_mut();
        code.fill(0xcc);
        X86_64::write_reentry_entry(&mut code[ENTRY_OFF..], entry, kiln_arch::resolver_address())
            .expect("entry block");
        for i in 0..n {
            X86_64::write_reentry_trampoline(&mut code[TRAMP_OFF + 8 * i..], tramps[i], entry_slot)
                .expect("trampoline");
            X86_64::write_redirectable_stub(&mut code[STUB_OFF + 8 * i..], stubs[i], slots[i])
                .expect("stub");
        }
        self.slot(ENTRY_SLOT)
            .store(entry_target.unwrap_or(entry), Ordering::Relaxed);
    }

    pub(crate) fn trampoline(&self, i: usize) -> u64 {
        self.addr(TRAMP_OFF + 8 * i)
    }
    pub(crate) fn stub(&self, i: usize) -> u64 {
        self.addr(STUB_OFF + 8 * i)
    }
    pub(crate) fn stub_slot(&self, i: usize) -> &AtomicU64 {
        self.slot(8 + 8 * i)
    }

    /// Code page RW → RX. The data page stays RW.
    pub(crate) fn finalize(&mut self) {
        // SAFETY: the first page of our own mapping; nothing executes it yet.
        unsafe {
            mprotect(
                self.base.cast::<c_void>(),
                self.page,
                MprotectFlags::READ | MprotectFlags::EXEC,
            )
        }
        .expect("mprotect RX");
        self.finalized = true;
    }
}

impl Drop for Jit {
    fn drop(&mut self) {
        // SAFETY: our own mapping; every test joins its threads before dropping it.
        let _ = unsafe { munmap(self.base.cast(), 2 * self.page) };
    }
}
