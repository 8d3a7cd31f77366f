//! Each model version's queue and the threads that run it: requests wait in a bounded queue;
//! a worker takes the oldest and, with dynamic batching, the requests behind it of the same
//! shape (but for the batch dim) up to the largest batch, waiting at most the batching delay
//! for more; runs them as one and hands each its rows of the outputs.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kiln_runtime::{RuntimeError, Session, Tensor, TensorRef};
use tokio::sync::oneshot;

use crate::tensor::Input;

/// How a model's requests are gathered into batches: along dim 0 of every input and output.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// The most rows (the sum of the requests' dim 0) one run takes.
    pub max: usize,
    /// How long the oldest request waits for others before its batch runs anyway.
    pub delay: Duration,
}

/// What a request gets back: its outputs, or why the run failed.
pub type Reply = Result<Vec<Tensor>, RuntimeError>;

struct Job {
    inputs: Vec<Input>,
    /// Its dim 0 (the batch dim's size) when batching.
    rows: usize,
    enqueued: Instant,
    reply: oneshot::Sender<Reply>,
}

impl Job {
    /// Whether `other` can share a run with this job: every input of the same shape but for
    /// dim 0.
    fn fits(&self, other: &Job) -> bool {
        self.inputs.iter().zip(&other.inputs).all(|(a, b)| a.shape.get(1..) == b.shape.get(1..))
    }
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Queue {
    state: Mutex<State>,
    /// Signalled when a job arrives or the queue closes.
    wake: Condvar,
    session: Arc<Session>,
    batching: Option<Batching>,
    max_queue: usize,
    model: String,
    version: String,
}

/// The queue of one model version and its worker threads, which end when it is dropped
/// (after running what is queued).
pub struct Scheduler {
    queue: Arc<Queue>,
}

/// The queue already holds its limit of requests.
#[derive(Debug)]
pub struct QueueFull(pub usize);

impl Scheduler {
    pub fn new(
        session: Arc<Session>,
        batching: Option<Batching>,
        instances: usize,
        max_queue: usize,
        model: &str,
        version: &str,
    ) -> std::io::Result<Scheduler> {
        let queue = Arc::new(Queue {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            session,
            batching,
            max_queue,
            model: model.to_string(),
            version: version.to_string(),
        });
        // Made first: if a thread cannot be started, dropping it stops those that were.
        let scheduler = Scheduler { queue };
        for i in 0..instances.max(1) {
            let q = scheduler.queue.clone();
            std::thread::Builder::new().name(format!("kiln-serve-{model}-{version}-{i}")).spawn(move || q.work())?;
        }
        Ok(scheduler)
    }

    pub fn batching(&self) -> Option<Batching> {
        self.queue.batching
    }

    /// Queues a request whose inputs (in the model's order) the session has checked.
    pub fn submit(&self, inputs: Vec<Input>) -> Result<oneshot::Receiver<Reply>, QueueFull> {
        let (reply, rx) = oneshot::channel();
        let rows = if self.queue.batching.is_some() { inputs.first().map_or(1, |i| i.shape[0]) } else { 1 };
        let mut st = self.queue.lock();
        if st.jobs.len() >= self.queue.max_queue {
            return Err(QueueFull(self.queue.max_queue));
        }
        st.jobs.push_back(Job { inputs, rows, enqueued: Instant::now(), reply });
        self.queue.note_queue_length(&st);
        drop(st);
        // Every worker: one waiting out its batching delay may now have a full batch.
        self.queue.wake.notify_all();
        Ok(rx)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.queue.lock().closed = true;
        self.queue.wake.notify_all();
    }
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A worker thread: takes batches until the queue closes and is empty.
    fn work(&self) {
        while let Some(batch) = self.next_batch() {
            self.run(batch);
        }
    }

    /// Waits for the next batch: the oldest job, and with batching the jobs that fit with it,
    /// oldest first, once they fill the largest batch or the oldest has waited the delay.
    fn next_batch(&self) -> Option<Vec<Job>> {
        let mut st = self.lock();
        let first = loop {
            if let Some(j) = st.jobs.pop_front() {
                break j;
            }
            if st.closed {
                return None;
            }
            st = self.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        };
        let Some(b) = self.batching else {
            self.note_queue_length(&st);
            return Some(vec![first]);
        };
        let deadline = first.enqueued + b.delay;
        loop {
            let waiting: usize = st.jobs.iter().filter(|j| first.fits(j)).map(|j| j.rows).sum();
            let now = Instant::now();
            if first.rows + waiting >= b.max || st.closed || now >= deadline {
                break;
            }
            st = self.wake.wait_timeout(st, deadline - now).unwrap_or_else(|e| e.into_inner()).0;
        }
        let mut rows = first.rows;
        let mut batch = vec![first];
        let mut i = 0;
        while i < st.jobs.len() {
            let j = &st.jobs[i];
            if batch[0].fits(j) && rows + j.rows <= b.max {
                rows += j.rows;
                batch.push(st.jobs.remove(i).expect("in range"));
            } else {
                i += 1;
            }
        }
        self.note_queue_length(&st);
        Some(batch)
    }

    fn note_queue_length(&self, st: &State) {
        metrics::gauge!("kiln_queue_length", "model" => self.model.clone(), "version" => self.version.clone())
            .set(st.jobs.len() as f64);
    }

    /// Runs a batch and replies to each job; a job whose client has gone is dropped unrun.
    fn run(&self, jobs: Vec<Job>) {
        let labels = [("model", self.model.clone()), ("version", self.version.clone())];
        let (jobs, gone): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| !j.reply.is_closed());
        if !gone.is_empty() {
            metrics::counter!("kiln_requests_abandoned_total", &labels).increment(gone.len() as u64);
        }
        if jobs.is_empty() {
            return;
        }
        let start = Instant::now();
        for j in &jobs {
            metrics::histogram!("kiln_queue_duration_seconds", &labels).record((start - j.enqueued).as_secs_f64());
        }
        metrics::histogram!("kiln_batch_size", &labels).record(jobs.iter().map(|j| j.rows).sum::<usize>() as f64);
        let replies = if jobs.len() == 1 { vec![self.run_one(&jobs[0].inputs)] } else { self.run_batch(&jobs) };
        metrics::histogram!("kiln_compute_duration_seconds", &labels).record(start.elapsed().as_secs_f64());
        for (j, reply) in jobs.into_iter().zip(replies) {
            let _ = j.reply.send(reply);
        }
    }

    /// Runs several jobs as one batch; each job's reply holds its rows of the outputs.
    fn run_batch(&self, jobs: &[Job]) -> Vec<Reply> {
        let total: usize = jobs.iter().map(|j| j.rows).sum();
        let Ok(outputs) = self.run_joined(jobs, total) else {
            // A run-time data check failed (an index out of range, …): each request runs on
            // its own, so that only the one that caused it gets the error.
            return jobs.iter().map(|j| self.run_one(&j.inputs)).collect();
        };
        let mut row = 0;
        jobs.iter()
            .map(|j| {
                let mine = outputs
                    .iter()
                    .map(|t| {
                        let per_row = t.data.len() / total;
                        let mut shape = t.shape.clone();
                        shape[0] = j.rows;
                        Tensor {
                            name: t.name.clone(),
                            dtype: t.dtype,
                            shape,
                            data: t.data[row * per_row..(row + j.rows) * per_row].to_vec(),
                        }
                    })
                    .collect();
                row += j.rows;
                Ok(mine)
            })
            .collect()
    }

    fn run_one(&self, inputs: &[Input]) -> Reply {
        let refs: Vec<TensorRef> =
            inputs.iter().map(|i| TensorRef { dtype: i.dtype, shape: &i.shape, data: &i.data }).collect();
        self.session.run(&refs)
    }

    /// Runs the jobs as one batch of `total` rows: each input joined along dim 0, each output
    /// checked to have `total` rows.
    fn run_joined(&self, jobs: &[Job], total: usize) -> Reply {
        let joined: Vec<(Vec<usize>, Vec<u8>)> = (0..jobs[0].inputs.len())
            .map(|k| {
                let mut shape = jobs[0].inputs[k].shape.clone();
                shape[0] = total;
                let mut data = Vec::with_capacity(jobs.iter().map(|j| j.inputs[k].data.len()).sum());
                for j in jobs {
                    data.extend_from_slice(&j.inputs[k].data);
                }
                (shape, data)
            })
            .collect();
        let refs: Vec<TensorRef> = jobs[0]
            .inputs
            .iter()
            .zip(&joined)
            .map(|(i, (shape, data))| TensorRef { dtype: i.dtype, shape, data })
            .collect();
        let outputs = self.session.run(&refs)?;
        if let Some(t) = outputs.iter().find(|t| t.shape.first() != Some(&total)) {
            return Err(RuntimeError::Check(format!(
                "output `{}` of a batch of {total} has shape {:?}, not {total} rows",
                t.name, t.shape
            )));
        }
        Ok(outputs)
    }
}
