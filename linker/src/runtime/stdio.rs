//! Streams whose buffer or functions lie in an image: they outlive it
//! safely.
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
//!
//! `fopencookie` streams call the program's functions for every read,
//! write, seek and close; a stream an image opened that way and the host
//! keeps would have stdio call freed code. So JIT'd code's `fopencookie`
//! with a function inside an image opens the stream with kiln's functions,
//! which call the image's while it lives (holding its [`Life`]'s read
//! lock) and fail (`EBADF`) after it is gone; closing the stream frees
//! kiln's record.

use std::ffi::{c_char, c_int, c_void};
use std::sync::Arc;

use super::dso;
use super::life::Life;

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

type ReadFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> isize;
type WriteFn = unsafe extern "C" fn(*mut c_void, *const c_char, usize) -> isize;
type SeekFn = unsafe extern "C" fn(*mut c_void, *mut i64, c_int) -> c_int;
type CloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;

/// glibc's `cookie_io_functions_t` (passed by value).
#[repr(C)]
#[derive(Clone, Copy)]
struct CookieFns {
    read: Option<ReadFn>,
    write: Option<WriteFn>,
    seek: Option<SeekFn>,
    close: Option<CloseFn>,
}

/// What kiln's cookie functions forward to: the image's cookie and
/// functions, while the image lives.
struct Cookie {
    inner: *mut c_void,
    fns: CookieFns,
    life: Arc<Life>,
}

unsafe extern "C" {
    #[link_name = "fopencookie"]
    fn real_fopencookie(
        cookie: *mut c_void,
        mode: *const c_char,
        fns: CookieFns,
    ) -> *mut libc::FILE;
}

/// Runs `f` on the image's cookie while its image lives; else fails with
/// `EBADF` (`failed`).
///
/// # Safety
///
/// `cookie` is a `Cookie` [`fopencookie`] made, not yet closed.
unsafe fn forward<R>(cookie: *mut c_void, failed: R, f: impl FnOnce(&Cookie) -> R) -> R {
    // SAFETY: the caller's cookie: kiln's, alive until `cookie_close`.
    let cookie = unsafe { &*cookie.cast::<Cookie>() };
    let mut result = None;
    cookie.life.while_alive(|| result = Some(f(cookie)));
    result.unwrap_or_else(|| {
        // SAFETY: sets this thread's `errno`.
        unsafe { *libc::__errno_location() = libc::EBADF };
        failed
    })
}

unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, len: usize) -> isize {
    // SAFETY: stdio passes the cookie it was given; the image's `read`
    // (present, or stdio would not call this) gets stdio's arguments.
    unsafe {
        forward(cookie, -1, |c| {
            c.fns.read.map_or(-1, |f| f(c.inner, buf, len))
        })
    }
}

unsafe extern "C" fn cookie_write(cookie: *mut c_void, buf: *const c_char, len: usize) -> isize {
    // SAFETY: stdio passes the cookie it was given; the image's `write`
    // (present, or stdio would not call this) gets stdio's arguments. Its
    // error is 0 bytes: it must not return a negative value.
    unsafe {
        forward(cookie, 0, |c| {
            c.fns.write.map_or(0, |f| f(c.inner, buf, len))
        })
    }
}

unsafe extern "C" fn cookie_seek(cookie: *mut c_void, offset: *mut i64, whence: c_int) -> c_int {
    // SAFETY: stdio passes the cookie it was given; the image's `seek`
    // (present, or stdio would not call this) gets stdio's arguments.
    unsafe {
        forward(cookie, -1, |c| {
            c.fns.seek.map_or(-1, |f| f(c.inner, offset, whence))
        })
    }
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    // SAFETY: stdio passes the cookie it was given; the image's `close`,
    // if it has one, gets it.
    let rc = unsafe { forward(cookie, 0, |c| c.fns.close.map_or(0, |f| f(c.inner))) };
    // SAFETY: stdio closes a stream once: kiln's record goes with it.
    drop(unsafe { Box::from_raw(cookie.cast::<Cookie>()) });
    rc
}

/// `fopencookie` for JIT'd code: a stream whose functions lie in a live
/// kiln image goes through kiln's; any other call is glibc's.
unsafe extern "C" fn fopencookie(
    cookie: *mut c_void,
    mode: *const c_char,
    fns: CookieFns,
) -> *mut libc::FILE {
    let addresses = [
        fns.read.map(|f| f as usize),
        fns.write.map(|f| f as usize),
        fns.seek.map(|f| f as usize),
        fns.close.map(|f| f as usize),
    ];
    let Some(life) = addresses.into_iter().flatten().find_map(dso::life_of) else {
        // SAFETY: not a kiln image's functions: glibc's call, unchanged.
        return unsafe { real_fopencookie(cookie, mode, fns) };
    };
    let ours = CookieFns {
        read: fns.read.map(|_| cookie_read as ReadFn),
        write: fns.write.map(|_| cookie_write as WriteFn),
        seek: fns.seek.map(|_| cookie_seek as SeekFn),
        close: Some(cookie_close),
    };
    let record = Box::into_raw(Box::new(Cookie {
        inner: cookie,
        fns,
        life,
    }));
    // SAFETY: the caller's mode; kiln's functions, which take `record`.
    let stream = unsafe { real_fopencookie(record.cast(), mode, ours) };
    if stream.is_null() {
        // SAFETY: no stream took `record`: still ours alone.
        drop(unsafe { Box::from_raw(record) });
    }
    stream
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 1] {
    [("fopencookie", fopencookie as *const () as usize)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DsoHandle;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static WRITTEN: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn counting_write(_: *mut c_void, _: *const c_char, len: usize) -> isize {
        WRITTEN.fetch_add(len, Ordering::SeqCst);
        len as isize
    }

    fn open_counting() -> *mut libc::FILE {
        let fns = CookieFns {
            read: None,
            write: Some(counting_write),
            seek: None,
            close: None,
        };
        // SAFETY: a valid mode and functions; no cookie is needed.
        let stream = unsafe { fopencookie(std::ptr::null_mut(), c"w".as_ptr(), fns) };
        assert!(!stream.is_null());
        // SAFETY: the stream just opened: unbuffered, so writes go through.
        unsafe { libc::setvbuf(stream, std::ptr::null_mut(), libc::_IONBF, 0) };
        stream
    }

    fn write(stream: *mut libc::FILE) -> c_int {
        // SAFETY: an open stream and a NUL-terminated text.
        unsafe { libc::fputs(c"four".as_ptr(), stream) }
    }

    /// A cookie stream whose functions lie in an image writes through them
    /// while the image lives and fails once it is gone; outside any image
    /// the stream is glibc's own.
    #[test]
    fn cookie_streams_call_their_image_only_while_it_lives() {
        let host = open_counting();
        assert!(write(host) >= 0);
        let image = DsoHandle::new("cookies");
        image.add_range(counting_write as *const () as usize, 1);
        let stream = open_counting();
        assert!(write(stream) >= 0);
        drop(image);
        assert!(write(stream) < 0, "the image is gone");
        assert!(write(host) >= 0, "a host stream is glibc's");
        assert_eq!(WRITTEN.load(Ordering::SeqCst), 12);
        // SAFETY: both streams, closed once each.
        unsafe {
            libc::fclose(stream);
            libc::fclose(host);
        }
    }

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
