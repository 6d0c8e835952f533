//! Streams buffered in an image's memory: flushed and unbuffered before
//! that memory is released.
//!
//! `setvbuf`, `setbuf` and `setbuffer` hand stdio a buffer the program
//! owns; C programs often pass a static array. stdio keeps using it for
//! as long as the stream is open, so a stream of the host (`stdout`, say)
//! buffered in a removed image's data would have stdio write into released
//! memory. Before an image's memory goes, every open stream whose buffer
//! lies in it is flushed and made unbuffered (stdio's own one-byte buffer
//! inside the `FILE`). glibc's list of open streams is walked under its
//! lock, which also keeps them from being closed meanwhile (glibc takes
//! that lock before a stream's own, as `fflush(NULL)` does).

use std::ffi::{c_char, c_int, c_void};

/// The start of glibc's `struct _IO_FILE` (`<bits/types/struct_FILE.h>`),
/// up to the link to the next open stream: the fields read here.
#[repr(C)]
struct FileHead {
    flags: c_int,
    read_ptr: *mut c_char,
    read_end: *mut c_char,
    read_base: *mut c_char,
    write_base: *mut c_char,
    write_ptr: *mut c_char,
    write_end: *mut c_char,
    buf_base: *mut c_char,
    buf_end: *mut c_char,
    save_base: *mut c_char,
    backup_base: *mut c_char,
    save_end: *mut c_char,
    markers: *mut c_void,
    chain: *mut FileHead,
}

unsafe extern "C" {
    /// glibc's list of open streams, newest first (`libio.h`).
    static _IO_list_all: *mut FileHead;
    fn _IO_list_lock();
    fn _IO_list_unlock();
}

/// Flushes every open stream whose buffer lies in `[start, start + len)`
/// and leaves it unbuffered; returns how many there were.
pub(crate) fn unbuffer_streams_in(start: usize, len: usize) -> usize {
    let inside = |p: *mut c_char| (start..start.saturating_add(len)).contains(&(p as usize));
    let mut found = 0;
    // SAFETY: glibc's list lock held, the list's streams are open and
    // stay so; each is read through the public layout of `FILE`, and
    // flushed and re-buffered through stdio's own calls (which take the
    // stream's lock after the list's, glibc's order).
    unsafe {
        _IO_list_lock();
        let mut file = _IO_list_all;
        while !file.is_null() {
            if inside((*file).buf_base) {
                let stream = file.cast::<libc::FILE>();
                libc::fflush(stream);
                libc::setvbuf(stream, std::ptr::null_mut(), libc::_IONBF, 0);
                found += 1;
            }
            file = (*file).chain;
        }
        _IO_list_unlock();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stream buffered in a range is found, flushed and unbuffered; one
    /// buffered elsewhere is left alone.
    #[test]
    fn streams_buffered_in_a_range_are_flushed_and_unbuffered() {
        let dir = std::env::temp_dir().join(format!("kiln-stdio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("out.txt");
        let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let mut buffer = vec![0u8; 4096];
        let range = (buffer.as_ptr() as usize, buffer.len());
        // SAFETY: a valid path and mode.
        let stream = unsafe { libc::fopen(c_path.as_ptr(), c"w".as_ptr()) };
        assert!(!stream.is_null());
        // SAFETY: the stream just opened, a buffer that outlives its use.
        let rc = unsafe {
            libc::setvbuf(
                stream,
                buffer.as_mut_ptr().cast(),
                libc::_IOFBF,
                buffer.len(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: the open stream and a NUL-terminated line.
        assert!(unsafe { libc::fputs(c"buffered\n".as_ptr(), stream) } >= 0);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "",
            "still buffered"
        );
        assert_eq!(unbuffer_streams_in(range.0 + range.1, 64), 0, "not there");
        assert_eq!(unbuffer_streams_in(range.0, range.1), 1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "buffered\n");
        buffer.fill(0xff);
        drop(buffer);
        // SAFETY: the open stream and a NUL-terminated line.
        assert!(unsafe { libc::fputs(c"after\n".as_ptr(), stream) } >= 0);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "buffered\nafter\n",
            "unbuffered: written at once, not into the old buffer"
        );
        // SAFETY: the stream opened above, closed once.
        assert_eq!(unsafe { libc::fclose(stream) }, 0);
        std::fs::remove_dir_all(&dir).ok();
    }
}
