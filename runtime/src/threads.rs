//! The `parallel_for` callback that compiled code calls, on a rayon thread pool.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_abi::{Context, TaskFn};
use rayon::prelude::*;

/// How long a worker stays awake for one run at most (a bound, should a run end without
/// saying so).
const MAX_AWAKE: Duration = Duration::from_secs(1);

pub(crate) struct Pool {
    pool: rayon::ThreadPool,
    /// How many times compiled code shared out tasks (`parallel_for` with work to share).
    shared: AtomicU64,
    /// Whether the last run shared out any tasks: a program that does not (its kernels all
    /// too small) runs on the caller's thread, with no hand-off to the pool.
    last_run_shared: AtomicBool,
}

impl Pool {
    pub fn new(threads: usize) -> Arc<Pool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kiln-worker-{i}"))
            .build()
            .expect("creating the worker thread pool");
        Arc::new(Pool { pool, shared: AtomicU64::new(0), last_run_shared: AtomicBool::new(true) })
    }
}

impl Pool {
    /// Runs the compiled entry point on one of the pool's threads (on the caller's when
    /// there is one thread, or when the last run shared out no tasks: a tiny program).
    pub fn run(&self, entry: kiln_abi::EntryFn, ctx: &Context) -> i32 {
        if self.pool.current_num_threads() <= 1 {
            // One thread: the caller's, with no hand-off at all.
            // SAFETY: as below.
            return unsafe { entry(ctx) };
        }
        let before = self.shared.load(Ordering::Relaxed);
        if !self.last_run_shared.load(Ordering::Relaxed) {
            // SAFETY: as below. Should this run share out tasks after all, `parallel_for`
            // hands them to the pool from here, and the next run goes back to the pool.
            let status = unsafe { entry(ctx) };
            self.last_run_shared.store(self.shared.load(Ordering::Relaxed) != before, Ordering::Relaxed);
            return status;
        }
        let ctx = SendCtx(ctx);
        // Every worker is woken now and stays awake, running the run's tasks as they appear,
        // until the run ends: a worker woken only when a kernel shares out its tasks came
        // late (on a VM whose idle vCPUs sleep deeply), and after a few idle pauses a
        // 2-thread run took about as long as a 1-thread one.
        let done = Arc::new(AtomicBool::new(false));
        let awake = done.clone();
        self.pool.spawn_broadcast(move |_| {
            let start = Instant::now();
            while !awake.load(Ordering::Acquire) && start.elapsed() < MAX_AWAKE {
                if rayon::yield_now() != Some(rayon::Yield::Executed) {
                    std::hint::spin_loop();
                }
            }
        });
        // SAFETY: the caller's context points at live buffers of the planned sizes for the
        // duration of the call, which `install` does not outlive.
        let status = self.pool.install(move || unsafe { entry(ctx.get()) });
        done.store(true, Ordering::Release);
        self.last_run_shared.store(self.shared.load(Ordering::Relaxed) != before, Ordering::Relaxed);
        status
    }
}

#[derive(Clone, Copy)]
struct SendCtx(*const Context);
// SAFETY: the context is only read by tasks, and outlives the parallel_for call.
unsafe impl Send for SendCtx {}
unsafe impl Sync for SendCtx {}

impl SendCtx {
    /// Takes `self` whole, so closures capture the wrapper (Send) rather than its pointer.
    fn get(self) -> *const Context {
        self.0
    }
}

/// Runs `task` over `[0, n)` in a few contiguous chunks per worker thread.
pub(crate) unsafe extern "C" fn parallel_for(
    runtime: *mut core::ffi::c_void,
    task: TaskFn,
    ctx: *const Context,
    n: i64,
) {
    // SAFETY: `runtime` is the `Pool` the session passed in the context.
    let pool = unsafe { &*(runtime as *const Pool) };
    let ctx = SendCtx(ctx);
    let threads = pool.pool.current_num_threads() as i64;
    if threads <= 1 || n <= 1 {
        // Nothing to share out: run on the calling thread, with no hand-off to a worker.
        // SAFETY: as below.
        unsafe { task(ctx.get(), 0, n) };
        return;
    }
    pool.shared.fetch_add(1, Ordering::Relaxed);
    let chunks = (threads * 4).min(n).max(1);
    pool.pool.install(|| {
        (0..chunks).into_par_iter().for_each(|c| {
            let (s, e) = (n * c / chunks, n * (c + 1) / chunks);
            if s < e {
                // SAFETY: the compiled task reads the context and writes disjoint output ranges.
                unsafe { task(ctx.get(), s, e) };
            }
        })
    });
}
