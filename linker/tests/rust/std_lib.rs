//! A Rust std staticlib called from C (`std_main.c`): String, HashMap,
//! `catch_unwind`, `thread_local!` with a destructor (on the main thread
//! it runs at exit, registered through `__cxa_thread_atexit_impl`), and
//! threads.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

struct Noisy(u32);

impl Drop for Noisy {
    fn drop(&mut self) {
        println!("thread-local {} dropped", self.0);
    }
}

thread_local! {
    static TOTAL: RefCell<u32> = const { RefCell::new(0) };
    static NOISY: Noisy = const { Noisy(7) };
}

#[unsafe(no_mangle)]
pub extern "C" fn rs_work(n: u32) -> u32 {
    let mut squares: HashMap<String, u32> = HashMap::new();
    for i in 0..n {
        squares.insert(format!("k{i}"), i * i);
    }
    let mut keys: Vec<&String> = squares.keys().collect();
    keys.sort();
    println!("keys {keys:?}");
    let sum: u32 = squares.values().sum();
    // The panic message goes to stderr; only the outcome is printed.
    let caught = std::panic::catch_unwind(|| {
        if n > 2 {
            panic!("boom {n}");
        }
        n
    });
    println!("panic caught: {}", caught.is_err());
    TOTAL.with(|t| *t.borrow_mut() += sum);
    NOISY.with(|x| println!("main thread sees {}", x.0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..3)
        .map(|t| {
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                NOISY.with(|x| seen.lock().map(|mut v| v.push(t * 10 + x.0)).ok());
            })
        })
        .collect();
    for w in workers {
        w.join().ok();
    }
    let mut seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
    seen.sort();
    println!("threads saw {seen:?}");
    TOTAL.with(|t| *t.borrow())
}
