//! Why the state actor is driven by a *combining* mailbox and not by a
//! dedicated thread (DESIGN.md §2: "measure both; keep the faster").
//!
//! Both variants answer the same synchronous query (a symbol's state) from a
//! table owned by one party:
//! - `combining`: kiln's real path — the calling thread becomes the driver
//!   when the mailbox is idle and applies the request itself;
//! - `dedicated_thread`: the smallest dedicated-actor design — a thread that
//!   owns an equally sized table and answers requests sent over a channel,
//!   each with a one-shot reply channel (every request is a thread hand-off).
//!
//! Under contention, `combining_2_threads` has two threads issue requests
//! through kiln at once.

use std::collections::HashMap;
use std::sync::mpsc;

use criterion::{Criterion, criterion_group, criterion_main};
use kiln_engine::{InPlaceDispatcher, Session, SymbolDef, SymbolFlags, SymbolName, SymbolState};

const SYMBOLS: usize = 1000;

fn combining(c: &mut Criterion) {
    let session = Session::builder()
        .dispatcher(InPlaceDispatcher::new())
        .build();
    let d = session.create_dylib("d").unwrap();
    let names: Vec<SymbolName> = (0..SYMBOLS)
        .map(|i| session.intern(&format!("s{i}")))
        .collect();
    d.define_absolute(
        names
            .iter()
            .map(|n| (n.clone(), SymbolDef::new(0x1000, SymbolFlags::EXPORTED))),
    )
    .unwrap();
    let mut i = 0;
    c.bench_function("mailbox/combining", |b| {
        b.iter(|| {
            i = (i + 1) % SYMBOLS;
            assert_eq!(d.symbol_state(&names[i]), Some(SymbolState::Ready));
        })
    });
    c.bench_function("mailbox/combining_2_threads", |b| {
        b.iter_custom(|iters| {
            let start = std::time::Instant::now();
            std::thread::scope(|scope| {
                for t in 0..2 {
                    let (d, names) = (&d, &names);
                    scope.spawn(move || {
                        for k in 0..iters as usize {
                            let n = &names[(k * 7 + t) % SYMBOLS];
                            assert_eq!(d.symbol_state(n), Some(SymbolState::Ready));
                        }
                    });
                }
            });
            // Time per request, over both threads' requests.
            start.elapsed() / 2
        })
    });
    session.end();
}

enum Request {
    State(u32, mpsc::SyncSender<Option<u8>>),
    Stop,
}

fn dedicated_thread(c: &mut Criterion) {
    let (tx, rx) = mpsc::channel::<Request>();
    let owner = std::thread::spawn(move || {
        let table: HashMap<u32, u8> = (0..SYMBOLS as u32).map(|i| (i, 4)).collect();
        while let Ok(Request::State(key, reply)) = rx.recv() {
            let _ = reply.send(table.get(&key).copied());
        }
    });
    let mut i = 0u32;
    c.bench_function("mailbox/dedicated_thread", |b| {
        b.iter(|| {
            i = (i + 1) % SYMBOLS as u32;
            let (reply, answer) = mpsc::sync_channel(1);
            tx.send(Request::State(i, reply)).unwrap();
            assert_eq!(answer.recv().unwrap(), Some(4));
        })
    });
    tx.send(Request::Stop).unwrap();
    owner.join().unwrap();
}

criterion_group!(benches, combining, dedicated_thread);
criterion_main!(benches);
