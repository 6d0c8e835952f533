//! `pthread_key_create` for JIT'd images: key destructors that never run
//! after their image's memory is released.
//!
//! glibc runs a key's destructor on every exiting thread that holds a value
//! for it — after the thread's function returned, so no `join` waits for
//! it — and keeps the bare function pointer it was given. A key created by
//! an image that is later removed would have glibc call freed memory. So a
//! key whose destructor lies in a kiln image is created with one of kiln's
//! own trampolines as its destructor instead: each trampoline is bound to
//! one slot of a table, which names the image's destructor and the image's
//! [`Life`]. The trampoline runs the destructor only while the image is
//! alive, holding the image's read lock meanwhile, so a teardown waits for a
//! destructor already running and later ones are skipped. When the image
//! goes, its keys are deleted (glibc has 1,024 for the whole process) and
//! their slots are freed.
//!
//! A freed slot is reused last (the never-used ones first, then the oldest
//! freed): a thread that read a trampoline from glibc's key table just
//! before the key was deleted, and stalls before calling it, would run the
//! slot's next owner — which takes, meanwhile, as many key creations as
//! there are free slots (1,024 less the keys alive).
//! glibc does not run key destructors for the thread that calls `exit()`,
//! and neither does a teardown for the thread that tears down: values that
//! thread holds are left to the image's finalizers.

use std::collections::VecDeque;
use std::ffi::{c_int, c_void};
use std::sync::{Arc, Mutex, PoisonError};

use super::dso;
use super::life::Life;
use super::threads::{THRD_ERROR, THRD_SUCCESS};

/// A key destructor as `pthread_key_create` takes it.
type KeyDtor = unsafe extern "C" fn(*mut c_void);

/// Trampolines, one per slot: as many as glibc has keys (`PTHREAD_KEYS_MAX`).
const SLOTS: usize = 1024;

/// What a slot's trampoline runs.
struct Bound {
    /// `None` until glibc has chosen it.
    key: Option<libc::pthread_key_t>,
    dtor: KeyDtor,
    life: Arc<Life>,
}

/// Slot `i` belongs to trampoline `i`.
struct Table {
    bound: Vec<Option<Bound>>,
    /// Freed slots, oldest first.
    freed: VecDeque<usize>,
}

static TABLE: Mutex<Table> = Mutex::new(Table {
    bound: Vec::new(),
    freed: VecDeque::new(),
});

fn with_table<R>(f: impl FnOnce(&mut Table) -> R) -> R {
    f(&mut TABLE.lock().unwrap_or_else(PoisonError::into_inner))
}

impl Table {
    /// A slot for `bound`: a never-used one, else the longest-freed one.
    fn take(&mut self, bound: Bound) -> Option<usize> {
        let slot = if self.bound.len() < SLOTS {
            self.bound.push(None);
            self.bound.len() - 1
        } else {
            self.freed.pop_front()?
        };
        self.bound[slot] = Some(bound);
        Some(slot)
    }

    /// Unbinds `slot`; it goes to the back of the reuse queue.
    fn free(&mut self, slot: usize) {
        if self.bound[slot].take().is_some() {
            self.freed.push_back(slot);
        }
    }

    fn slot_of(&self, key: libc::pthread_key_t) -> Option<usize> {
        self.bound
            .iter()
            .position(|b| b.as_ref().is_some_and(|b| b.key == Some(key)))
    }
}

/// The body of every trampoline: the slot's destructor, if its image lives.
#[inline(never)]
fn run_slot(slot: usize, value: *mut c_void) {
    let bound = with_table(|t| {
        t.bound[slot]
            .as_ref()
            .map(|b| (b.dtor, Arc::clone(&b.life)))
    });
    let Some((dtor, life)) = bound else { return };
    life.while_alive(|| {
        // SAFETY: the image that registered `dtor` for this key is alive
        // and stays so while `while_alive` runs this; glibc passes the
        // value this thread stored, as the program expects.
        unsafe { dtor(value) }
    });
}

unsafe extern "C" fn trampoline<const SLOT: usize>(value: *mut c_void) {
    run_slot(SLOT, value);
}

/// `trampoline::<0>` … `trampoline::<1023>`.
static TRAMPOLINES: [KeyDtor; SLOTS] = {
    macro_rules! eight {
        ($base:expr) => {
            [
                trampoline::<{ $base }>,
                trampoline::<{ $base + 1 }>,
                trampoline::<{ $base + 2 }>,
                trampoline::<{ $base + 3 }>,
                trampoline::<{ $base + 4 }>,
                trampoline::<{ $base + 5 }>,
                trampoline::<{ $base + 6 }>,
                trampoline::<{ $base + 7 }>,
            ]
        };
    }
    macro_rules! sixty_four {
        ($base:expr) => {
            [
                eight!($base),
                eight!($base + 8),
                eight!($base + 16),
                eight!($base + 24),
                eight!($base + 32),
                eight!($base + 40),
                eight!($base + 48),
                eight!($base + 56),
            ]
        };
    }
    let rows: [[[KeyDtor; 8]; 8]; 16] = [
        sixty_four!(0),
        sixty_four!(64),
        sixty_four!(128),
        sixty_four!(192),
        sixty_four!(256),
        sixty_four!(320),
        sixty_four!(384),
        sixty_four!(448),
        sixty_four!(512),
        sixty_four!(576),
        sixty_four!(640),
        sixty_four!(704),
        sixty_four!(768),
        sixty_four!(832),
        sixty_four!(896),
        sixty_four!(960),
    ];
    // SAFETY: `[[[T; 8]; 8]; 16]` and `[T; 1024]` have the same size and
    // layout (arrays are contiguous, no padding), in slot order.
    unsafe { std::mem::transmute::<[[[KeyDtor; 8]; 8]; 16], [KeyDtor; SLOTS]>(rows) }
};

unsafe extern "C" {
    #[link_name = "pthread_key_create"]
    fn real_key_create(key: *mut libc::pthread_key_t, dtor: Option<KeyDtor>) -> c_int;
    #[link_name = "pthread_key_delete"]
    fn real_key_delete(key: libc::pthread_key_t) -> c_int;
}

/// `pthread_key_create` for JIT'd code: a destructor inside a live kiln
/// image goes behind a trampoline; any other call is glibc's.
unsafe extern "C" fn key_create(key: *mut libc::pthread_key_t, dtor: Option<KeyDtor>) -> c_int {
    let Some((dtor, life)) = dtor.and_then(|d| Some((d, dso::life_of(d as usize)?))) else {
        // SAFETY: not a kiln image's destructor (or none): glibc's call, unchanged.
        return unsafe { real_key_create(key, dtor) };
    };
    let bound = Bound {
        // Set below, once glibc chose it; until then nobody holds the key,
        // so no thread can have a value for it.
        key: None,
        dtor,
        life,
    };
    let Some(slot) = with_table(|t| t.take(bound)) else {
        return libc::EAGAIN;
    };
    // SAFETY: `key` is the caller's out-pointer, passed on; the trampoline
    // has the destructor signature and lives as long as the process.
    let rc = unsafe { real_key_create(key, Some(TRAMPOLINES[slot])) };
    if rc != 0 {
        with_table(|t| t.free(slot));
        return rc;
    }
    // SAFETY: glibc just wrote the new key through the caller's pointer.
    let created = unsafe { *key };
    with_table(|t| {
        if let Some(b) = t.bound[slot].as_mut() {
            b.key = Some(created);
        }
    });
    0
}

/// `pthread_key_delete` for JIT'd code: a key created through
/// [`key_create`] frees its slot too.
unsafe extern "C" fn key_delete(key: libc::pthread_key_t) -> c_int {
    let Some(slot) = with_table(|t| t.slot_of(key)) else {
        // SAFETY: not a key of kiln's: glibc's call, unchanged.
        return unsafe { real_key_delete(key) };
    };
    release(key, slot)
}

/// `tss_create` for JIT'd C11 code: [`key_create`] (glibc's own
/// `tss_create` reaches `pthread_key_create` inside glibc, past kiln),
/// its result as `<threads.h>` says (`thrd_success` 0, `thrd_error` 2).
unsafe extern "C" fn tss_create(key: *mut libc::pthread_key_t, dtor: Option<KeyDtor>) -> c_int {
    // SAFETY: the caller's arguments, as `pthread_key_create` takes them
    // (`tss_t` is a `pthread_key_t`, `tss_dtor_t` a destructor).
    match unsafe { key_create(key, dtor) } {
        0 => THRD_SUCCESS,
        _ => THRD_ERROR,
    }
}

/// `tss_delete` for JIT'd C11 code: [`key_delete`] (`void`).
unsafe extern "C" fn tss_delete(key: libc::pthread_key_t) {
    // SAFETY: the caller's key, as `pthread_key_delete` takes it.
    unsafe { key_delete(key) };
}

/// Deletes `key` in glibc (so no exiting thread calls its trampoline any
/// more), then frees its slot.
fn release(key: libc::pthread_key_t, slot: usize) -> c_int {
    // SAFETY: `key` is a live key kiln created; deleting it only stops
    // glibc from running its destructor.
    let rc = unsafe { real_key_delete(key) };
    with_table(|t| t.free(slot));
    rc
}

/// Deletes the keys `life`'s image created and did not delete itself (the
/// slots bound to its life). Call once that life has ended (no trampoline
/// runs its code any more).
pub(crate) fn release_keys_of(life: &Life) {
    let keys: Vec<(libc::pthread_key_t, usize)> = with_table(|t| {
        t.bound
            .iter()
            .enumerate()
            .filter_map(|(slot, b)| {
                let b = b.as_ref()?;
                std::ptr::eq(Arc::as_ptr(&b.life), life).then_some((b.key?, slot))
            })
            .collect()
    });
    for (key, slot) in keys {
        release(key, slot);
    }
}

/// The overrides this module provides.
pub(crate) fn overrides() -> [(&'static str, usize); 5] {
    [
        ("pthread_key_create", key_create as *const () as usize),
        // libstdc++'s `__gthread_key_create` and older code call this name.
        ("__pthread_key_create", key_create as *const () as usize),
        ("pthread_key_delete", key_delete as *const () as usize),
        ("tss_create", tss_create as *const () as usize),
        ("tss_delete", tss_delete as *const () as usize),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::DsoHandle;
    use std::sync::atomic::{AtomicUsize, Ordering};

    type KeyCreate = unsafe extern "C" fn(*mut libc::pthread_key_t, Option<KeyDtor>) -> c_int;

    static RAN_WITH: AtomicUsize = AtomicUsize::new(0);

    unsafe extern "C" fn image_dtor(value: *mut c_void) {
        RAN_WITH.fetch_add(value as usize, Ordering::SeqCst);
    }

    fn create_override() -> KeyCreate {
        let addr = overrides()[0].1;
        // SAFETY: `overrides()[0]` is `key_create`, of this type.
        unsafe { std::mem::transmute::<usize, KeyCreate>(addr) }
    }

    /// Sets `value` for `key` on a new thread that then exits.
    fn exit_holding(key: libc::pthread_key_t, value: usize) {
        std::thread::spawn(move || {
            // SAFETY: a key of this process; glibc checks it.
            let rc = unsafe { libc::pthread_setspecific(key, value as *mut c_void) };
            assert_eq!(rc, 0);
        })
        .join()
        .expect("the thread");
    }

    /// A key whose destructor lies in an image runs it on exiting threads
    /// while the image lives; the image's end deletes the key; and keys
    /// and slots come back, so more images than glibc has keys can each
    /// create one in turn.
    #[test]
    fn image_keys_run_while_alive_and_go_with_the_image() {
        let create = create_override();
        for round in 0..SLOTS + 100 {
            let image = DsoHandle::new("keys");
            image.add_range(image_dtor as *const () as usize, 1);
            let mut key: libc::pthread_key_t = 0;
            // SAFETY: a valid out-pointer and destructor.
            let rc = unsafe { create(&mut key, Some(image_dtor)) };
            assert_eq!(rc, 0, "round {round}");
            if round % 256 == 0 {
                let before = RAN_WITH.load(Ordering::SeqCst);
                // `join` (a full `pthread_join`) waits for the destructor.
                exit_holding(key, 3);
                assert_eq!(RAN_WITH.load(Ordering::SeqCst), before + 3, "round {round}");
            }
            drop(image);
            // SAFETY: setting a key's value; glibc checks the key.
            let rc = unsafe { libc::pthread_setspecific(key, std::ptr::null()) };
            assert_eq!(
                rc,
                libc::EINVAL,
                "round {round}: the image's end deleted its key"
            );
        }
    }

    unsafe extern "C" fn host_dtor(_: *mut c_void) {}

    /// Without a kiln image around the destructor, the call is glibc's.
    #[test]
    fn other_keys_are_glibcs() {
        let create = create_override();
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: a valid out-pointer and destructor.
        assert_eq!(unsafe { create(&mut key, Some(host_dtor)) }, 0);
        assert_eq!(with_table(|t| t.slot_of(key)), None);
        // SAFETY: the key just created.
        assert_eq!(unsafe { real_key_delete(key) }, 0);
    }
}
