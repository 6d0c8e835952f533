//! A `#![no_std]` staticlib called from C (`nostd_main.c`). Its `core`
//! member holds code this program never uses whose unwind info names
//! `rust_eh_personality`, which nothing defines: `ld` links it only with
//! `--gc-sections`, and kiln only because it drops unreached library code.
#![no_std]

use core::fmt::Write;
use core::panic::PanicInfo;

#[panic_handler]
fn panic(_info: &PanicInfo) -> ! {
    loop {}
}

/// The sum of `n` numbers at `p`.
///
/// # Safety
/// `p` points to `n` readable `u32`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ns_sum(p: *const u32, n: usize) -> u32 {
    // SAFETY: the caller's contract.
    let s = unsafe { core::slice::from_raw_parts(p, n) };
    s.iter().fold(0u32, |a, &b| a.wrapping_add(b))
}

struct Buf<'a> {
    bytes: &'a mut [u8],
    len: usize,
}

impl Write for Buf<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(core::fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Formats `v` into `buf` (`len` bytes); returns the bytes written.
///
/// # Safety
/// `buf` points to `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ns_format(buf: *mut u8, len: usize, v: u32) -> usize {
    // SAFETY: the caller's contract.
    let bytes = unsafe { core::slice::from_raw_parts_mut(buf, len) };
    let mut w = Buf { bytes, len: 0 };
    let _ = write!(w, "value={v} hex={v:#x} float={:.2}", v as f64 / 3.0);
    w.len
}
