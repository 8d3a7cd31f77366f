//! The `parallel_for` callback that compiled code calls, and the workers that share its tasks.
//!
//! A run happens on the caller's thread, which takes part in every parallel kernel itself:
//! `threads − 1` workers of a rayon pool are woken when the run starts and spin on a shared
//! slot ([`Slot`]) where `parallel_for` publishes its chunks, claiming them beside the caller,
//! until a little after the run ends (so that back-to-back runs find them awake: on a VM a
//! sleeping vCPU woke in tens of microseconds, and a 2-thread run of a small model took
//! longer than a 1-thread one). A run that starts while another holds the slot (two threads
//! running one session) goes through the pool the ordinary rayon way instead.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_abi::{Context, TaskFn};
use rayon::prelude::*;

/// How long workers keep spinning after a run ends, for the next one.
const LINGER: Duration = Duration::from_micros(200);

/// The chunks of one `parallel_for` at a time, claimed by the caller and the spinning workers.
///
/// Each thread owns a contiguous range of the chunks (the caller the first), claims from it
/// first and then from the others' (so that a thread done early takes work from one that is
/// behind): consecutive kernels over the same rows (a softmax's or a normalization's passes)
/// give each thread the same rows, which stay in its own cache. With the chunks claimed in
/// one shared order, the rows moved between the cores from pass to pass, and a 2-thread
/// softmax over 12×128×128 took 0.032 ms against 0.023 ms.
///
/// A thread's `cursor` holds the publication's epoch (high 32 bits) and its next chunk (low
/// bits); a claim is a compare-and-swap on it, so a worker that read the fields of an older
/// publication never runs a chunk with them. After a publication its cursors stay open with
/// every chunk claimed; the next one first closes them all (chunk index past any count), then
/// rewrites the fields, which the caller does only once every chunk of the last one has
/// finished.
struct Slot {
    cursors: Box<[Cursor]>,
    task: AtomicUsize,
    ctx: AtomicUsize,
    n: AtomicI64,
    chunks: AtomicI64,
    finished: Finished,
}

/// How many chunks of the current publication have finished, on a cache line of its own:
/// each thread adds the chunks it ran once, when it finds no more to claim. Counted chunk by
/// chunk, next to the fields the workers read on every claim, the line crossed between the
/// cores about twice a chunk; batched, a 12×128×128 softmax at 2 threads took 1.7% less and
/// EfficientNet-B0 2.7% less (paired runs of the whole `kiln bench`).
#[repr(align(64))]
struct Finished(AtomicI64);

/// One thread's cursor, on a cache line of its own (the threads claim at once).
#[repr(align(64))]
struct Cursor(AtomicU64);

const CLOSED: u64 = u32::MAX as u64;

impl Slot {
    /// The first chunk of thread `t`'s range of `chunks`.
    fn first(&self, t: usize, chunks: i64) -> i64 {
        chunks * t as i64 / self.cursors.len() as i64
    }

    /// Opens publication `epoch`: each cursor at the start of its thread's range.
    fn open(&self, epoch: u64, chunks: i64) {
        for (t, c) in self.cursors.iter().enumerate() {
            c.0.store((epoch << 32) | self.first(t, chunks) as u64, Ordering::Release);
        }
    }

    /// Closes every cursor for the fields to change (the next publication is `epoch`).
    fn close(&self, epoch: u64) {
        for c in self.cursors.iter() {
            c.0.store((epoch << 32) | CLOSED, Ordering::Release);
        }
    }

    /// Claims and runs chunks of the current publication until none is left, from thread
    /// `me`'s range first and then from the others' (only once its own range of this
    /// publication is open); returns how many it ran.
    fn work(&self, me: usize) -> i64 {
        let threads = self.cursors.len();
        // Nothing before this thread's own range is open: a worker that saw its cursor still
        // closed and then the caller's already open took the caller's chunks, and then the
        // two took turns through both ranges, so that consecutive kernels over the same rows
        // ran them on different cores (a softmax's four passes at 2 threads took 0.082 ms,
        // and 0.054 with each range kept).
        let own = self.cursors[me].0.load(Ordering::Acquire);
        if own & CLOSED == CLOSED {
            return 0;
        }
        let epoch = own >> 32;
        let mut ran = 0;
        for t in (0..threads).map(|i| (me + i) % threads) {
            let cursor = &self.cursors[t].0;
            loop {
                let v = cursor.load(Ordering::Acquire);
                if v >> 32 != epoch {
                    break;
                }
                let (task, ctx, n, chunks) = (
                    self.task.load(Ordering::Relaxed),
                    self.ctx.load(Ordering::Relaxed),
                    self.n.load(Ordering::Relaxed),
                    self.chunks.load(Ordering::Relaxed),
                );
                let c = (v & CLOSED) as i64;
                if c >= self.first(t + 1, chunks) {
                    break;
                }
                if cursor.compare_exchange_weak(v, v + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                    continue;
                }
                let (s, e) = (n * c / chunks, n * (c + 1) / chunks);
                if s < e {
                    // SAFETY: the claim succeeded on this publication's epoch, so the fields
                    // read before it are this publication's (they are rewritten only after all
                    // of its chunks finished); the compiled task reads the context, which
                    // outlives the publication, and writes disjoint output ranges.
                    unsafe {
                        let task: TaskFn = std::mem::transmute::<usize, TaskFn>(task);
                        task(ctx as *const Context, s, e)
                    };
                }
                ran += 1;
            }
        }
        if ran > 0 {
            self.finished.0.fetch_add(ran, Ordering::AcqRel);
        }
        ran
    }
}

pub(crate) struct Pool {
    pool: rayon::ThreadPool,
    /// How many times compiled code shared out tasks (`parallel_for` with work to share).
    shared: AtomicU64,
    /// Whether the last run shared out any tasks: a program that does not (its kernels all
    /// too small) runs with no worker woken.
    last_run_shared: AtomicBool,
    /// Held by the run that uses the slot.
    slot_owner: Mutex<()>,
    slot: Slot,
    /// The number of the latest run on the slot, and whether it ended (and when, in
    /// microseconds since `epoch`).
    run: AtomicU64,
    ended_at: AtomicU64,
    epoch: Instant,
}

thread_local! {
    /// Whether this thread is running a program on its pool's slot.
    static ON_SLOT: Cell<bool> = const { Cell::new(false) };
}

impl Pool {
    pub fn new(threads: usize) -> Arc<Pool> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("kiln-worker-{i}"))
            .build()
            .expect("creating the worker thread pool");
        // `threads` 0 is rayon's default count: the pool's own count decides.
        let threads = pool.current_num_threads();
        Arc::new(Pool {
            pool,
            shared: AtomicU64::new(0),
            last_run_shared: AtomicBool::new(true),
            slot_owner: Mutex::new(()),
            slot: Slot {
                cursors: (0..threads).map(|_| Cursor(AtomicU64::new(CLOSED))).collect(),
                task: AtomicUsize::new(0),
                ctx: AtomicUsize::new(0),
                n: AtomicI64::new(0),
                chunks: AtomicI64::new(0),
                finished: Finished(AtomicI64::new(0)),
            },
            run: AtomicU64::new(0),
            ended_at: AtomicU64::new(u64::MAX),
            epoch: Instant::now(),
        })
    }

    fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// How many pieces `parallel_for` cuts `n` tasks into: small ones (a claim costs one
    /// compare-and-swap, and a product of 18 tiles in 8 chunks left one thread a third of a
    /// chunk behind the other).
    fn chunks(&self, n: i64) -> i64 {
        (self.threads() as i64 * 16).min(n).max(1)
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Runs the compiled entry point (see the module doc).
    pub fn run(self: &Arc<Self>, entry: kiln_abi::EntryFn, ctx: &Context) -> i32 {
        let before = self.shared.load(Ordering::Relaxed);
        if self.threads() <= 1 || !self.last_run_shared.load(Ordering::Relaxed) {
            // One thread, or a program too small to share: the caller's thread alone. Should
            // it share out tasks after all, `parallel_for` hands them to the pool, and the
            // next run wakes the workers.
            // SAFETY: the caller's context points at live buffers of the planned sizes for
            // the duration of the call.
            let status = unsafe { entry(ctx) };
            self.last_run_shared.store(self.shared.load(Ordering::Relaxed) != before, Ordering::Relaxed);
            return status;
        }
        let Ok(_owner) = self.slot_owner.try_lock() else {
            // Another run holds the slot: this one runs on a worker of the pool, whose
            // `parallel_for` shares tasks the rayon way.
            let ctx = SendCtx(ctx);
            // SAFETY: as above; `install` does not outlive the call.
            return self.pool.install(move || unsafe { entry(ctx.get()) });
        };
        let run = self.run.fetch_add(1, Ordering::AcqRel) + 1;
        self.ended_at.store(u64::MAX, Ordering::Release);
        let helpers = self.threads() - 1;
        let pool = Arc::clone(self);
        self.pool.spawn_broadcast(move |b| {
            if b.index() >= helpers {
                return;
            }
            loop {
                if pool.run.load(Ordering::Acquire) != run {
                    return; // a newer run has its own workers
                }
                if pool.slot.work(b.index() + 1) == 0 {
                    let ended = pool.ended_at.load(Ordering::Acquire);
                    if ended != u64::MAX && pool.now_us().saturating_sub(ended) > LINGER.as_micros() as u64 {
                        return;
                    }
                    std::hint::spin_loop();
                }
            }
        });
        ON_SLOT.with(|s| s.set(true));
        // SAFETY: as above.
        let status = unsafe { entry(ctx) };
        ON_SLOT.with(|s| s.set(false));
        self.ended_at.store(self.now_us(), Ordering::Release);
        self.last_run_shared.store(self.shared.load(Ordering::Relaxed) != before, Ordering::Relaxed);
        status
    }

    /// Shares `[0, n)` of `task` out on the slot, takes part, and returns when every chunk has
    /// finished.
    fn share_on_slot(&self, task: TaskFn, ctx: *const Context, n: i64) {
        let s = &self.slot;
        let chunks = self.chunks(n);
        let epoch = (s.cursors[0].0.load(Ordering::Relaxed) >> 32) + 1;
        // Closed (the last publication left them open, every chunk claimed) while the fields
        // change.
        s.close(epoch);
        s.task.store(task as usize, Ordering::Relaxed);
        s.ctx.store(ctx as usize, Ordering::Relaxed);
        s.n.store(n, Ordering::Relaxed);
        s.chunks.store(chunks, Ordering::Relaxed);
        s.finished.0.store(0, Ordering::Relaxed);
        s.open(epoch, chunks);
        s.work(0);
        while s.finished.0.load(Ordering::Acquire) < chunks {
            std::hint::spin_loop();
        }
        // The cursors stay open, every chunk claimed, until the next publication closes
        // them before it rewrites the fields: closing them here too moved their lines to this
        // core and back once more a kernel.
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

/// Runs `task` over `[0, n)` in a few contiguous chunks per thread.
pub(crate) unsafe extern "C" fn parallel_for(
    runtime: *mut core::ffi::c_void,
    task: TaskFn,
    ctx: *const Context,
    n: i64,
) {
    // SAFETY: `runtime` is the `Pool` the session passed in the context.
    let pool = unsafe { &*(runtime as *const Pool) };
    let threads = pool.threads() as i64;
    if threads <= 1 || n <= 1 {
        // Nothing to share out: run on the calling thread, with no hand-off to a worker.
        // SAFETY: as below.
        unsafe { task(ctx, 0, n) };
        return;
    }
    pool.shared.fetch_add(1, Ordering::Relaxed);
    if ON_SLOT.with(Cell::get) {
        pool.share_on_slot(task, ctx, n);
        return;
    }
    let ctx = SendCtx(ctx);
    let chunks = pool.chunks(n);
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
