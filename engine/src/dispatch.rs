//! Where user code runs: materializers, generators and completion callbacks
//! are [`Task`]s handed to a [`Dispatcher`], never run by the state actor.
//!
//! A blocking wait on a [`WorkerPool`] thread helps: it runs other queued
//! tasks while it waits, so a bounded pool cannot deadlock on lookups whose
//! materializers are queued behind it. Helping nests (a task run by a wait
//! may wait and help in turn), so past 16 tasks nested on one thread a
//! wait starts a spare worker to stand in for it and only waits: a chain
//! of materializers that each block on the next does not grow one stack
//! without bound. The [`InPlaceDispatcher`]'s waits run the tasks queued
//! on their thread.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;

use crate::generator::{GenerateRequest, Generator};
use crate::sync::{Arc, Condvar, Mutex, MutexGuard, thread, thread_local_const};

/// A unit of work for a dispatcher.
pub struct Task {
    description: &'static str,
    body: Body,
}

/// What a task runs.
enum Body {
    Closure(Box<dyn FnOnce() + Send>),
    /// A generator's call: the most frequent task the engine makes, kept
    /// without an allocation of its own.
    Generate(Arc<dyn Generator>, GenerateRequest),
}

impl Task {
    /// A task that runs `f`; `description` says what it is (for debugging).
    pub fn new(description: &'static str, f: impl FnOnce() + Send + 'static) -> Self {
        Task {
            description,
            body: Body::Closure(Box::new(f)),
        }
    }

    /// A task that calls `generator` with `request`.
    pub(crate) fn generate(generator: Arc<dyn Generator>, request: GenerateRequest) -> Self {
        Task {
            description: "definition generator",
            body: Body::Generate(generator, request),
        }
    }

    /// What this task does.
    pub fn description(&self) -> &'static str {
        self.description
    }

    /// Runs the task. Panics inside engine-made tasks are caught and turned
    /// into failures before they get here; a panicking user callback is
    /// caught by the worker pool.
    pub fn run(self) {
        match self.body {
            Body::Closure(f) => f(),
            Body::Generate(generator, request) => generator.generate(request),
        }
    }
}

impl fmt::Debug for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("description", &self.description)
            .finish()
    }
}

/// Runs tasks. Implement it to put kiln's work on your own executor.
pub trait Dispatcher: Send + Sync + 'static {
    /// Runs `task` now or later, on any thread.
    fn dispatch(&self, task: Task);
    /// Stops accepting work and waits for running work to finish. Called by
    /// `Session::end`.
    fn shutdown(&self) {}
}

/// Runs every task on the dispatching thread before `dispatch` returns:
/// deterministic, for tests and single-threaded hosts. A task dispatched
/// while another runs on this thread waits in this thread's queue and runs
/// after it, in order — or while it blocks in a lookup's wait, which runs
/// the queue first — so a chain of units that each start the next runs
/// one after another, not nested in one another on the stack.
#[derive(Debug, Default, Clone, Copy)]
pub struct InPlaceDispatcher;

impl InPlaceDispatcher {
    /// The in-place dispatcher.
    pub fn new() -> Self {
        InPlaceDispatcher
    }
}

impl Dispatcher for InPlaceDispatcher {
    fn dispatch(&self, task: Task) {
        in_place::run_or_queue(task);
    }
}

/// The in-place dispatcher's per-thread queue.
pub(crate) mod in_place {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::Task;
    use crate::sync::thread_local_const;

    /// Tasks dispatched in place while a task runs on this thread.
    struct Queue {
        running: bool,
        tasks: VecDeque<Task>,
    }

    thread_local_const! {
        static QUEUE: RefCell<Queue> = RefCell::new(Queue {
            running: false,
            tasks: VecDeque::new(),
        });
    }

    /// Runs `task` and then every task dispatched meanwhile, unless a task
    /// runs on this thread already: then `task` waits its turn.
    pub(crate) fn run_or_queue(task: Task) {
        let mut task = Some(task);
        let first = QUEUE.try_with(|q| {
            let mut q = q.borrow_mut();
            if q.running {
                q.tasks.extend(task.take());
                false
            } else {
                q.running = true;
                true
            }
        });
        match (first, task.take()) {
            (Ok(true), Some(task)) => {
                let _running = Running;
                task.run();
                while let Some(task) = pop() {
                    task.run();
                }
            }
            // This thread's locals are gone (`exit()` runs `atexit`
            // handlers after them): nothing can be queued; run it here.
            (Err(_), Some(task)) => task.run(),
            _ => {}
        }
    }

    /// Clears `running` however the loop ends: a panicking task unwinds to
    /// the dispatcher's caller, and the tasks behind it run at the next
    /// dispatch or wait on this thread.
    struct Running;

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = QUEUE.try_with(|q| q.borrow_mut().running = false);
        }
    }

    /// The next task waiting in this thread's queue.
    pub(crate) fn pop() -> Option<Task> {
        QUEUE
            .try_with(|q| q.borrow_mut().tasks.pop_front())
            .ok()
            .flatten()
    }
}

/// Starts a new thread per task (like ORC's unbounded dynamic pool). Under
/// `kiln_loom` the threads are loom's (the models themselves dispatch in place).
#[derive(Debug, Default, Clone, Copy)]
pub struct ThreadPerTask;

impl Dispatcher for ThreadPerTask {
    fn dispatch(&self, task: Task) {
        // Detached: the task owns everything it needs.
        let _detached = thread::spawn(move || task.run());
    }
}

/// A fixed pool of worker threads with a shared queue.
pub struct WorkerPool {
    shared: Arc<PoolShared>,
    workers: Mutex<Vec<thread::JoinHandle<()>>>,
    /// The forks counted when the pool started ([`crate::fork`]): a child
    /// forked since has none of its threads to stop or join.
    forks: u64,
}

pub(crate) struct PoolShared {
    queue: Mutex<PoolQueue>,
    /// Signalled when a task arrives, at shutdown, and when a lookup that a
    /// helping worker waits on completes.
    wakeup: Condvar,
    /// Signalled when a lookup completes, for waits too deep to help
    /// (which a task's arrival must not wake in place of a worker).
    deep: Condvar,
    /// What every worker runs first on its thread, spares too.
    start: Arc<dyn Fn() + Send + Sync>,
}

struct PoolQueue {
    tasks: VecDeque<Task>,
    shutdown: bool,
}

thread_local_const! {
    static CURRENT_POOL: std::cell::RefCell<Option<Arc<PoolShared>>> = std::cell::RefCell::new(None);
}

impl WorkerPool {
    /// A pool of `threads` workers (at least one).
    pub fn new(threads: usize) -> Self {
        Self::with_start(threads, || {})
    }

    /// [`WorkerPool::new`], each worker calling `start` first, on its own
    /// thread (like rayon's `start_handler`): for per-thread set-up a
    /// linker's runtime needs before any task runs there. Returns once
    /// every worker has run it; a spare worker started later (standing in
    /// for one parked in a deep wait) runs it too, before its first task.
    pub fn with_start(threads: usize, start: impl Fn() + Send + Sync + 'static) -> Self {
        let started = Arc::new(Started::default());
        let shared = Arc::new(PoolShared {
            queue: Mutex::new(PoolQueue {
                tasks: VecDeque::new(),
                shutdown: false,
            }),
            wakeup: Condvar::new(),
            deep: Condvar::new(),
            start: Arc::new(start),
        });
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (shared, started) = (shared.clone(), started.clone());
            let handle = thread::spawn_named(format!("kiln-worker-{i}"), move || {
                // Counted even if `start` panics: the pool's maker waits.
                let count = StartCounted(started);
                (shared.start)();
                drop(count);
                worker_loop(shared)
            });
            match handle {
                Ok(h) => workers.push(h),
                // Could not start more threads: the pool runs with fewer.
                Err(_) if !workers.is_empty() => break,
                Err(e) => panic!("kiln: cannot start a worker thread: {e}"),
            }
        }
        let mut count = started.count.lock();
        while *count < workers.len() {
            count = started.done.wait(count);
        }
        drop(count);
        WorkerPool {
            shared,
            workers: Mutex::new(workers),
            forks: crate::fork::forks(),
        }
    }

    /// A pool with one worker per available core.
    pub fn with_available_parallelism() -> Self {
        Self::new(Self::available_threads())
    }

    /// One worker per available core (two when the count is unknown): the
    /// size of [`WorkerPool::with_available_parallelism`]'s pool, for a
    /// host that sizes its own ([`WorkerPool::with_start`]).
    pub fn available_threads() -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }
}

/// How many workers of a new pool have run their start hook.
#[derive(Default)]
struct Started {
    count: Mutex<usize>,
    done: Condvar,
}

/// Counts its worker as started when dropped (after the hook, or while
/// the hook's panic unwinds).
struct StartCounted(Arc<Started>);

impl Drop for StartCounted {
    fn drop(&mut self) {
        *self.0.count.lock() += 1;
        self.0.done.notify_all();
    }
}

impl fmt::Debug for WorkerPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerPool")
            .field("workers", &self.workers.lock().len())
            .finish()
    }
}

fn worker_loop(shared: Arc<PoolShared>) {
    let _ = CURRENT_POOL.try_with(|p| *p.borrow_mut() = Some(shared.clone()));
    worker_loop_until(&shared, &|| false);
    let _ = CURRENT_POOL.try_with(|p| *p.borrow_mut() = None);
}

/// Runs `shared`'s tasks until it shuts down or, between tasks, `stop()`.
fn worker_loop_until(shared: &PoolShared, stop: &dyn Fn() -> bool) {
    loop {
        let task = {
            let mut q = shared.queue.lock();
            loop {
                if stop() {
                    break None;
                }
                if let Some(t) = q.tasks.pop_front() {
                    break Some(t);
                }
                if q.shutdown {
                    break None;
                }
                q = shared.wakeup.wait(q);
            }
        };
        match task {
            Some(task) => run_guarded(task),
            None => break,
        }
    }
}

/// How many tasks a thread runs nested in its waits (each a helping wait
/// above the one before) before it stops helping: a chain of materializers
/// that each block on the next would otherwise stack every one of them on
/// one thread. Under loom, one: a model reaches the deep wait's path with
/// a chain of two waits, within its three threads.
const MAX_HELP_DEPTH: usize = if cfg!(kiln_loom) { 1 } else { 16 };

thread_local_const! {
    /// Tasks this thread is running inside its helping waits.
    static HELP_DEPTH: Cell<usize> = Cell::new(0);
}

thread_local_const! {
    /// The spare standing in for this worker while lookups polled on it
    /// are pending (see [`PoolShared::stand_in`]); a plain `std` reference
    /// count, held only by those lookups.
    static STAND_IN: std::cell::RefCell<std::sync::Weak<Spare>> =
        std::cell::RefCell::new(std::sync::Weak::new());
}

/// A worker standing in for one that cannot run the queue: a wait too
/// deep to help, or a task awaiting lookups as futures (its executor may
/// park the thread until woken, and the tasks queued meanwhile — the unit
/// awaited, defined later, say — need a worker). It runs the queue's tasks
/// like any worker and ends, once between tasks, when dropped.
pub(crate) struct Spare {
    stop: Arc<std::sync::atomic::AtomicBool>,
    pool: Arc<PoolShared>,
}

impl Spare {
    /// Starts one for `shared`; `None` if no thread starts (a deep waiter
    /// then helps after all).
    fn start(shared: &Arc<PoolShared>) -> Option<Spare> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pool, stopped) = (shared.clone(), stop.clone());
        let started = thread::spawn_named("kiln-spare-worker".into(), move || {
            (pool.start)();
            let _ = CURRENT_POOL.try_with(|p| *p.borrow_mut() = Some(pool.clone()));
            worker_loop_until(&pool, &|| {
                stopped.load(std::sync::atomic::Ordering::Acquire)
            });
            let _ = CURRENT_POOL.try_with(|p| *p.borrow_mut() = None);
        });
        started.is_ok().then(|| Spare {
            stop,
            pool: shared.clone(),
        })
    }
}

impl Drop for Spare {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        drop(self.pool.queue.lock());
        self.pool.wakeup.notify_all();
    }
}

/// Runs `task` inside a helping wait: counted in [`HELP_DEPTH`].
fn run_nested(task: Task) {
    let _ = HELP_DEPTH.try_with(|d| d.set(d.get() + 1));
    run_guarded(task);
    let _ = HELP_DEPTH.try_with(|d| d.set(d.get() - 1));
}

/// Sleeps on `cv` with the queue's guard `q` until woken, or until
/// `deadline` if there is one: `None` once it has passed.
fn sleep_until<'a>(
    cv: &Condvar,
    q: MutexGuard<'a, PoolQueue>,
    deadline: Option<std::time::Instant>,
) -> Option<MutexGuard<'a, PoolQueue>> {
    match deadline {
        None => Some(cv.wait(q)),
        Some(at) => {
            let now = std::time::Instant::now();
            (now < at).then(|| cv.wait_timeout(q, at - now))
        }
    }
}

/// Runs a task so that a panicking user callback cannot kill a worker.
fn run_guarded(task: Task) {
    let description = task.description();
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.run())).is_err() {
        eprintln!("kiln: a task ({description}) panicked; the worker continues");
    }
}

impl Dispatcher for WorkerPool {
    fn dispatch(&self, task: Task) {
        let mut q = self.shared.queue.lock();
        if q.shutdown {
            drop(q);
            // After shutdown, run here rather than lose the work (its
            // responsibility would otherwise fail as abandoned anyway).
            run_guarded(task);
            return;
        }
        q.tasks.push_back(task);
        drop(q);
        self.shared.wakeup.notify_one();
    }

    fn shutdown(&self) {
        if crate::fork::forks() != self.forks {
            // A forked child: the workers are not here (a lock one held at
            // the fork stays held), so there is nothing to stop or join.
            return;
        }
        self.shared.queue.lock().shutdown = true;
        self.shared.wakeup.notify_all();
        let on_worker = CURRENT_POOL
            .try_with(|p| {
                p.borrow()
                    .as_ref()
                    .is_some_and(|cur| Arc::ptr_eq(cur, &self.shared))
            })
            .unwrap_or(false);
        if on_worker {
            // A worker cannot join itself; the others finish on their own.
            return;
        }
        let workers = std::mem::take(&mut *self.workers.lock());
        for w in workers {
            let _ = w.join();
        }
    }
}

impl Drop for WorkerPool {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The pool the current thread works for, if any.
pub(crate) fn current_pool() -> Option<Arc<PoolShared>> {
    // During thread teardown (e.g. from an `atexit` hook) the slot may be
    // gone: then this thread works for no pool.
    CURRENT_POOL.try_with(|p| p.borrow().clone()).ok().flatten()
}

impl PoolShared {
    /// Runs queued tasks on this worker until `done()` holds (returns true)
    /// or `deadline` passes (returns false); sleeps when there is nothing to
    /// run. [`MAX_HELP_DEPTH`] tasks nested on this thread already: a
    /// [`Spare`] runs them instead. Whoever makes `done()` true must call
    /// [`PoolShared::wake`].
    pub(crate) fn help_until(
        self: &Arc<Self>,
        done: &dyn Fn() -> bool,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        if HELP_DEPTH.try_with(Cell::get).unwrap_or(0) >= MAX_HELP_DEPTH
            && let Some(_spare) = Spare::start(self)
        {
            // Deep enough: no more tasks nested above this wait. A spare
            // worker stands in for this thread while it only waits.
            return self.wait_until(done, deadline);
        }
        loop {
            let task = {
                let mut q = self.queue.lock();
                loop {
                    if done() {
                        return true;
                    }
                    if let Some(t) = q.tasks.pop_front() {
                        break t;
                    }
                    q = match sleep_until(&self.wakeup, q, deadline) {
                        Some(q) => q,
                        None => return false,
                    };
                }
            };
            run_nested(task);
        }
    }

    /// Runs queued tasks on this worker while `done()` does not hold and
    /// the queue has some, without waiting: polling a lookup as a future on
    /// a worker helps as a blocking wait does — else a materializer awaiting
    /// a unit queued behind it on a one-thread pool waits forever. Not past
    /// [`MAX_HELP_DEPTH`] nested tasks.
    pub(crate) fn help_now(&self, done: &dyn Fn() -> bool) {
        while !done() && HELP_DEPTH.try_with(Cell::get).unwrap_or(0) < MAX_HELP_DEPTH {
            let Some(task) = self.queue.lock().tasks.pop_front() else {
                return;
            };
            run_nested(task);
        }
    }

    /// The spare worker standing in for this one while futures it polls
    /// are pending — shared by all of them (the thread is parked once,
    /// however many it awaits) and ended when the last lets go: the one
    /// already standing in, else a new one; `None` if no thread starts.
    pub(crate) fn stand_in(self: &Arc<Self>) -> Option<std::sync::Arc<Spare>> {
        let current = STAND_IN
            .try_with(|s| s.borrow().upgrade())
            .ok()
            .flatten()
            .filter(|s| Arc::ptr_eq(&s.pool, self));
        if current.is_some() {
            return current;
        }
        let spare = std::sync::Arc::new(Spare::start(self)?);
        let _ = STAND_IN.try_with(|s| *s.borrow_mut() = std::sync::Arc::downgrade(&spare));
        Some(spare)
    }

    /// Waits, running nothing, until `done()` holds (true) or `deadline`
    /// passes (false), woken by [`PoolShared::wake`] on `deep`: tasks
    /// arriving wake the threads that run them, not this one.
    fn wait_until(&self, done: &dyn Fn() -> bool, deadline: Option<std::time::Instant>) -> bool {
        let mut q = self.queue.lock();
        loop {
            if done() {
                return true;
            }
            q = match sleep_until(&self.deep, q, deadline) {
                Some(q) => q,
                None => return false,
            };
        }
    }

    /// Wakes helping workers so they re-check their condition. Taking the
    /// queue lock orders this after any check made under it: no lost wakeup.
    pub(crate) fn wake(&self) {
        drop(self.queue.lock());
        self.wakeup.notify_all();
        self.deep.notify_all();
    }
}
