//! Registration of an image's `.eh_frame` with libgcc's unwinder (the ones
//! `runtime/unwinder.rs` names), so C++
//! exceptions (and Rust panics) unwind through JIT'd frames: thrown in one
//! JIT'd object and caught in another, and across the host/JIT boundary in
//! both directions.
//!
//! libgcc's `__register_frame(begin)` (unwind-dw2-fde.c) takes the start of
//! a **whole** `.eh_frame` section — a sequence of CIE/FDE records ended by a
//! zero length word — not a single FDE (that is LLVM libunwind's
//! convention). It returns without registering anything if the first word is
//! zero, and it stops at the first zero length word, so a hole inside the
//! section (llvm-jitlink 22's bug with dropped FDEs) silently unregisters
//! every later FDE. [`register`] therefore walks the records first and
//! refuses a section with an inner zero word, an overrun or a missing
//! terminator. `__deregister_frame` aborts the process when given a section
//! that is not registered; [`EhFrameRegistration`] calls it exactly once.

use super::RuntimeError;
use super::unwinder;

/// A registered `.eh_frame` section; dropping it deregisters the section.
/// Drop it before the section's memory (or the code it describes) is
/// released.
#[derive(Debug)]
pub struct EhFrameRegistration {
    /// `None` for an empty section, which libgcc does not register.
    start: Option<usize>,
}

// SAFETY: the registration is a token for a process-global unwinder table;
// libgcc's registration functions are thread-safe.
unsafe impl Send for EhFrameRegistration {}
// SAFETY: `&EhFrameRegistration` offers no operation.
unsafe impl Sync for EhFrameRegistration {}

impl EhFrameRegistration {
    /// Whether a non-empty section was registered.
    pub fn is_registered(&self) -> bool {
        self.start.is_some()
    }
}

impl Drop for EhFrameRegistration {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            // SAFETY: `start` was registered by `register` and not yet
            // deregistered (we just took it); the caller of `register`
            // keeps the memory alive until this drop.
            unsafe { unwinder::deregister(start as *const u8) };
        }
    }
}

/// Checks that `section` is a well-formed sequence of CIE/FDE records filling
/// it exactly, with no zero length word inside.
pub fn validate(section: &[u8]) -> Result<(), RuntimeError> {
    let len = section.len();
    let bad = |offset, reason| RuntimeError::BadEhFrame {
        offset,
        len,
        reason,
    };
    let mut offset = 0usize;
    while offset < len {
        let word = section
            .get(offset..offset + 4)
            .ok_or_else(|| bad(offset, "truncated record length"))?;
        let length = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        let record = match length {
            0 => {
                return Err(bad(
                    offset,
                    "zero length word before the end of the section (later records would be ignored)",
                ));
            }
            0xffff_ffff => {
                let ext = section
                    .get(offset + 4..offset + 12)
                    .ok_or_else(|| bad(offset, "truncated 64-bit record length"))?;
                let mut b = [0u8; 8];
                b.copy_from_slice(ext);
                usize::try_from(u64::from_le_bytes(b))
                    .ok()
                    .and_then(|l| l.checked_add(12))
                    .ok_or_else(|| bad(offset, "64-bit record length out of range"))?
            }
            l => l as usize + 4,
        };
        if record > len - offset {
            return Err(bad(offset, "record extends past the end of the section"));
        }
        offset += record;
    }
    Ok(())
}

/// Registers the `.eh_frame` section at `start` (`len` bytes of records,
/// **followed by a 4-byte zero terminator** at `start + len` that the linker
/// must have placed there) with libgcc's unwinder.
///
/// An empty section (`len == 0`) yields a registration that does nothing.
///
/// # Safety
/// `start..start + len + 4` must be readable, hold the image's final
/// (relocated) `.eh_frame` whose FDEs describe mapped code, and stay
/// unchanged and mapped until the returned registration is dropped.
pub unsafe fn register(start: *const u8, len: usize) -> Result<EhFrameRegistration, RuntimeError> {
    if len == 0 {
        return Ok(EhFrameRegistration { start: None });
    }
    // SAFETY: the caller guarantees `len + 4` readable bytes at `start`.
    let with_terminator = unsafe { std::slice::from_raw_parts(start, len + 4) };
    let (section, terminator) = with_terminator.split_at(len);
    validate(section)?;
    if terminator != [0, 0, 0, 0] {
        return Err(RuntimeError::BadEhFrame {
            offset: len,
            len,
            reason: "no 4-byte zero terminator after the section",
        });
    }
    // SAFETY: a validated, terminated, whole .eh_frame section that the
    // caller keeps alive until the registration is dropped.
    unsafe { unwinder::register(start) };
    Ok(EhFrameRegistration {
        start: Some(start as usize),
    })
}

/// [`register`] of a section already known to pass its checks (records
/// filling it exactly, the zero terminator after it): its records are not
/// walked again. For an image file's `.eh_frame`, checked in the file's
/// bytes by the loader's parser where nothing writes it at load.
///
/// # Safety
/// As for [`register`]; moreover `start..start + len` must pass
/// [`validate`] and be followed by four zero bytes (libgcc walks the
/// records to the terminator and trusts their lengths).
pub unsafe fn register_validated(start: *const u8, len: usize) -> EhFrameRegistration {
    if len == 0 {
        return EhFrameRegistration { start: None };
    }
    // SAFETY: a validated, terminated, whole .eh_frame section (this
    // function's contract) that the caller keeps alive until the
    // registration is dropped.
    unsafe { unwinder::register(start) };
    EhFrameRegistration {
        start: Some(start as usize),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_holes_overruns_and_missing_terminators() {
        // One 12-byte record (length 8), then a hole, then another record.
        let mut s = vec![8, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4];
        assert!(validate(&s).is_ok());
        s.extend_from_slice(&[0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        let err = validate(&s)
            .expect_err("a zero-length record before the end is refused")
            .to_string();
        assert!(
            err.contains("offset 0xc") && err.contains("zero length"),
            "{err}"
        );
        let overrun = [16, 0, 0, 0, 0, 0, 0, 0];
        assert!(validate(&overrun).is_err());
        let truncated = [8, 0];
        assert!(validate(&truncated).is_err());
        let mut unterminated = vec![4, 0, 0, 0, 0, 0, 0, 0];
        unterminated.extend_from_slice(&[1, 0, 0, 0]);
        // SAFETY: the buffer holds len + 4 bytes.
        let r = unsafe { register(unterminated.as_ptr(), 8) };
        assert!(r.is_err_and(|e| e.to_string().contains("terminator")));
    }

    fn uleb(v: u8) -> u8 {
        assert!(v < 0x80);
        v
    }

    /// Builds code + .eh_frame for `fn trampoline(cb) { cb() }` in one page.
    /// Layout: code at 0, .eh_frame at 64, terminator after it.
    fn build_image() -> (Vec<u8>, usize, usize) {
        let code: [u8; 11] = [
            0x48, 0x83, 0xec, 0x08, // sub rsp, 8
            0xff, 0xd7, // call rdi
            0x48, 0x83, 0xc4, 0x08, // add rsp, 8
            0xc3, // ret
        ];
        let mut img = vec![0u8; 64];
        img[..code.len()].copy_from_slice(&code);
        let eh = img.len();
        // CIE
        let mut cie = vec![0, 0, 0, 0]; // CIE id
        cie.push(1); // version
        cie.extend_from_slice(b"zR\0");
        cie.push(uleb(1)); // code alignment
        cie.push(0x78); // data alignment -8 (sleb)
        cie.push(uleb(16)); // return address register
        cie.push(uleb(1)); // augmentation data length
        cie.push(0x1b); // FDE pointers: pcrel | sdata4
        cie.extend_from_slice(&[0x0c, 7, 8]); // def_cfa rsp+8
        cie.extend_from_slice(&[0x90, 1]); // rip at cfa-8
        while (cie.len() + 4) % 8 != 0 {
            cie.push(0); // DW_CFA_nop
        }
        img.extend_from_slice(&(cie.len() as u32).to_le_bytes());
        img.extend_from_slice(&cie);
        // FDE
        let fde_start = img.len();
        let mut fde = Vec::new();
        let cie_ptr = (fde_start + 4 - eh) as u32;
        fde.extend_from_slice(&cie_ptr.to_le_bytes());
        let pc_field = fde_start + 4 + 4;
        let pc_begin = 0i64 - pc_field as i64;
        fde.extend_from_slice(&(pc_begin as i32).to_le_bytes());
        fde.extend_from_slice(&(code.len() as u32).to_le_bytes());
        fde.push(0); // augmentation data length
        fde.extend_from_slice(&[0x44, 0x0e, 16]); // advance 4; cfa offset 16
        fde.extend_from_slice(&[0x46, 0x0e, 8]); // advance 6; cfa offset 8
        while (fde.len() + 4) % 8 != 0 {
            fde.push(0);
        }
        img.extend_from_slice(&(fde.len() as u32).to_le_bytes());
        img.extend_from_slice(&fde);
        let eh_len = img.len() - eh;
        img.extend_from_slice(&[0, 0, 0, 0]);
        (img, eh, eh_len)
    }

    extern "C-unwind" fn panicking_callback() {
        std::panic::panic_any(42u32);
    }

    #[test]
    fn a_panic_unwinds_through_a_registered_jit_frame() {
        let (img, eh, eh_len) = build_image();
        assert!(validate(&img[eh..eh + eh_len]).is_ok());
        let page = 4096;
        // SAFETY: anonymous private mapping of one page, checked below.
        let mem = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(mem, libc::MAP_FAILED);
        // SAFETY: the page is ours and large enough; then made R+X (never W+X).
        unsafe {
            std::ptr::copy_nonoverlapping(img.as_ptr(), mem.cast::<u8>(), img.len());
            assert_eq!(
                libc::mprotect(mem, page, libc::PROT_READ | libc::PROT_EXEC),
                0
            );
        }
        // SAFETY: the section is complete, terminated and stays mapped until
        // the registration is dropped below.
        let reg = unsafe { register(mem.cast::<u8>().add(eh), eh_len) };
        let reg = reg.unwrap_or_else(|e| panic!("registration failed: {e}"));
        assert!(reg.is_registered());
        // SAFETY: the page holds the trampoline's code at offset 0.
        let trampoline: extern "C-unwind" fn(extern "C-unwind" fn()) =
            unsafe { std::mem::transmute(mem) };
        for _ in 0..2 {
            let caught = std::panic::catch_unwind(|| trampoline(panicking_callback));
            let payload = caught.err().and_then(|p| p.downcast::<u32>().ok());
            assert_eq!(payload.as_deref(), Some(&42));
        }
        drop(reg);
        // SAFETY: the mapping is ours and no longer registered.
        unsafe { libc::munmap(mem, page) };
    }
}
