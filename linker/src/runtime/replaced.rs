//! Process-wide handlers an image installed over others (signal actions,
//! libstdc++'s terminate and new handlers), with what each replaced, so
//! that the image's end can put that back.

use std::sync::{Arc, Mutex, PoisonError};

use super::dso;
use super::life::Life;

/// One handler an image installed at `key`, and what it replaced.
struct Replacement<K, P> {
    key: K,
    /// The handler's address, inside the image.
    handler: usize,
    /// What was installed before (a whole signal action, or an address).
    previous: P,
    /// The image of the replaced handler, if it lay in one.
    previous_life: Option<Arc<Life>>,
    life: Arc<Life>,
}

/// What an image's end puts back at one key.
pub(crate) struct PutBack<K, P> {
    pub(crate) key: K,
    /// The image's handler: put back only if it is still installed.
    pub(crate) handler: usize,
    /// What it replaced, or `None` if that lay in an image that is gone
    /// (or in this one): the default goes back instead.
    pub(crate) previous: Option<P>,
}

/// The handlers live images installed, oldest first.
pub(crate) struct Replacements<K, P> {
    list: Mutex<Vec<Replacement<K, P>>>,
}

impl<K: Copy + Eq, P: Copy> Replacements<K, P> {
    pub(crate) const fn new() -> Self {
        Replacements {
            list: Mutex::new(Vec::new()),
        }
    }

    /// Notes that `handler` was installed at `key` over `previous`, whose
    /// handler is `previous_handler`. A handler in no image is not kept; an
    /// image replacing its own handler keeps what it replaced first.
    pub(crate) fn record(&self, key: K, handler: usize, previous: P, previous_handler: usize) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.retain(|r| r.life.is_alive());
        let Some(life) = dso::life_of(handler) else {
            return;
        };
        let (mut previous, mut previous_life) = (previous, dso::life_of(previous_handler));
        if let Some(at) = list.iter().position(|r| {
            r.key == key && r.handler == previous_handler && Arc::ptr_eq(&r.life, &life)
        }) {
            let earlier = list.remove(at);
            (previous, previous_life) = (earlier.previous, earlier.previous_life);
        }
        list.push(Replacement {
            key,
            handler,
            previous,
            previous_life,
            life,
        });
    }

    /// Forgets what `life`'s image installed, returning what to put back.
    pub(crate) fn take_of(&self, life: &Life) -> Vec<PutBack<K, P>> {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut *list)
            .into_iter()
            .partition(|r| std::ptr::eq(Arc::as_ptr(&r.life), life));
        *list = rest;
        drop(list);
        mine.into_iter()
            .map(|r| PutBack {
                key: r.key,
                handler: r.handler,
                previous: match &r.previous_life {
                    Some(l) if std::ptr::eq(Arc::as_ptr(l), life) || !l.is_alive() => None,
                    _ => Some(r.previous),
                },
            })
            .collect()
    }
}
