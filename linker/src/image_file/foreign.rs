//! An image of another ISA (say aarch64 on this x86-64 process), given an
//! address range here so that an image linked against it records its
//! references as (build id, offset), as against an image loaded here: the
//! range is reserved, never mapped, and joins the
//! [registry](super::registry) under the image's build id. Its exports
//! answer at base + offset. Nothing of it is ever read there, let alone run.

use std::collections::HashMap;

use super::registry::Registration;
use super::{BuildId, ImageError, format, read};

/// See the module documentation.
#[derive(Debug)]
pub struct ForeignImage {
    base: u64,
    len: usize,
    exports: HashMap<String, u64>,
    /// Dropped before the range is given back.
    registration: Option<Registration>,
}

impl ForeignImage {
    /// Checks `file` (called `file_name`) as `kiln image info` does — it
    /// must be an image of another ISA than this process's, linking against
    /// no other image — and reserves its memory span here.
    pub fn reserve(file_name: &str, file: &[u8]) -> Result<ForeignImage, ImageError> {
        let p = read::parse_described(file_name, file)?;
        if p.header.machine == format::MACHINE {
            return Err(ImageError::Field {
                name: file_name.into(),
                field: "machine",
                found: format!("{} (this process's ISA)", p.header.machine),
                expected: "another ISA (an image of this one is loaded, not reserved)".into(),
            });
        }
        if !p.deps.is_empty() {
            return Err(ImageError::Field {
                name: file_name.into(),
                field: "dependency count",
                found: p.deps.len().to_string(),
                expected: "0 (an image of another ISA is linked against one level deep)".into(),
            });
        }
        let too_big = || ImageError::Field {
            name: file_name.into(),
            field: "image size",
            found: p.header.image_size.to_string(),
            expected: "a span this process can reserve".into(),
        };
        let len = usize::try_from(p.header.image_size).map_err(|_| too_big())?;
        // SAFETY: a fresh anonymous, inaccessible, unreserved-swap mapping
        // chosen by the kernel; it overlaps nothing and is unmapped on drop.
        let at = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len.max(1),
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if at == libc::MAP_FAILED {
            return Err(ImageError::Io {
                name: file_name.into(),
                what: "reserve an address range for its memory span",
                source: std::io::Error::last_os_error(),
            });
        }
        let base = at as u64;
        let exports = p
            .exports
            .iter()
            .filter(|e| e.flags & format::EXPORT_EXPORTED != 0)
            .map(|e| (e.name.to_string(), base + e.offset))
            .collect();
        let registration = Registration::new(
            base,
            p.header.image_size,
            BuildId(p.header.build_id),
            file_name,
        );
        Ok(ForeignImage {
            base,
            len,
            exports,
            registration: Some(registration),
        })
    }

    /// The address `name` answers at, if the image exports it.
    pub fn symbol(&self, name: &str) -> Option<u64> {
        self.exports.get(name).copied()
    }
}

impl Drop for ForeignImage {
    fn drop(&mut self) {
        self.registration.take();
        // SAFETY: the range `reserve` mapped, referenced by nothing now
        // that the registration is gone (nothing ever reads it).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.len.max(1)) };
    }
}
