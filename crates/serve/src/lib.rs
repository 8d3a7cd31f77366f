//! `kiln serve`: compiled models behind the Open Inference Protocol (KServe's V2 protocol,
//! spoken by Triton, KServe, Seldon MLServer and OpenVINO Model Server and by their clients),
//! over HTTP/REST ([`http`]) and gRPC ([`grpc`]), with Triton's binary tensor and model
//! repository extensions.
//!
//! A model repository ([`repository`]) holds `NAME/VERSION/model.kiln`; each loaded version
//! has a queue and worker threads ([`scheduler`]) that gather concurrent requests into one
//! run where the model has a run-time batch dim (dynamic batching). Both protocols decode a
//! request into [`tensor::Input`]s and call [`Server::infer`], which checks it against the
//! model (the runtime's own checks, before it can share a run with others), bounds it (the
//! [`Limits`]) and waits for its outputs. Prometheus metrics are at `/metrics` on the HTTP
//! port; logs are `tracing` events on stderr. Built on the runtime alone: no LLVM.

pub mod generated {
    #![allow(clippy::all, clippy::pedantic)]
    include!("generated/inference.rs");
}
pub mod grpc;
pub mod http;
pub mod repository;
pub mod scheduler;
pub mod tensor;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kiln_runtime::{Tensor, TensorRef};

use crate::repository::{ModelOptions, Repository, Version};
use crate::tensor::Input;

/// `kiln serve`'s options (shared by `kiln serve` and the runtime-only `kiln-serve`).
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// The model repository: a directory of `NAME/VERSION/model.kiln` (VERSION a positive
    /// integer; a request naming no version gets the highest). `NAME/config.json` may set
    /// the model's own `threads`, `instances`, `max_queue` and `dynamic_batching` (false, true
    /// or {"max_batch": N, "delay_us": N}), overriding these flags.
    #[arg(long)]
    pub model_repository: PathBuf,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The HTTP/REST port (0: any free port; the ready line names it).
    #[arg(long, default_value_t = 8000)]
    pub http_port: u16,
    /// The gRPC port (0: any free port).
    #[arg(long, default_value_t = 8001)]
    pub grpc_port: u16,
    /// Intra-op threads of each model (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Runs in flight per model version.
    #[arg(long, default_value_t = 1)]
    pub instances: usize,
    /// Dynamic batching's largest batch (default: the model's batch dim bound).
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// How long the oldest queued request waits for others to batch with, in microseconds.
    #[arg(long, default_value_t = 500)]
    pub batch_delay_us: u64,
    /// Run every request on its own, even for models with a batch dim.
    #[arg(long)]
    pub no_batching: bool,
    /// The largest request body (HTTP) or message (gRPC), in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    pub max_request_bytes: usize,
    /// The most elements one input tensor may have.
    #[arg(long, default_value_t = 1 << 24)]
    pub max_tensor_elements: usize,
    /// The most inference requests in flight (queued or running) over all models; more are
    /// refused with 503 / UNAVAILABLE.
    #[arg(long, default_value_t = 256)]
    pub max_concurrent_requests: usize,
    /// The most requests queued per model version; more are refused with 503 / UNAVAILABLE.
    #[arg(long, default_value_t = 128)]
    pub max_queue: usize,
    /// A request not answered in this time (reading its body included) fails with 408 /
    /// DEADLINE_EXCEEDED; an HTTP client that has not sent a request's headers in this time
    /// is disconnected.
    #[arg(long, default_value_t = 60_000)]
    pub request_timeout_ms: u64,
    /// Log lines as `text` or `json` (one object per line), on stderr. `RUST_LOG` filters
    /// them (default `info`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

/// What went wrong with a request, and the protocol's answer to it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServeError {
    pub kind: ErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorKind {
    /// 400 / INVALID_ARGUMENT: a malformed request, or one the model cannot take.
    BadRequest,
    /// 404 / NOT_FOUND: no such model or version.
    NotFound,
    /// 503 / UNAVAILABLE: a limit on requests in flight or queued.
    Unavailable,
    /// 413 / RESOURCE_EXHAUSTED: a body past --max-request-bytes.
    TooLarge,
    /// 408 / DEADLINE_EXCEEDED.
    Timeout,
    /// 500 / INTERNAL: the model's run failed for a reason not the request's.
    Internal,
}

impl ServeError {
    pub fn bad_request(m: impl Into<String>) -> ServeError {
        ServeError { kind: ErrorKind::BadRequest, message: m.into() }
    }
    pub fn not_found(m: impl Into<String>) -> ServeError {
        ServeError { kind: ErrorKind::NotFound, message: m.into() }
    }
    pub fn unavailable(m: impl Into<String>) -> ServeError {
        ServeError { kind: ErrorKind::Unavailable, message: m.into() }
    }
    pub fn internal(m: impl Into<String>) -> ServeError {
        ServeError { kind: ErrorKind::Internal, message: m.into() }
    }
    fn label(&self) -> &'static str {
        match self.kind {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ServeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServeError {}

/// The bounds every request is held to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_request_bytes: usize,
    pub max_tensor_elements: usize,
    pub timeout: Duration,
}

/// An inference request, decoded from either protocol.
pub struct InferRequest {
    pub model: String,
    pub version: Option<String>,
    pub inputs: Vec<Input>,
    /// The outputs asked for, by name (`None`: all, in the model's order).
    pub outputs: Option<Vec<String>>,
}

/// What both protocols serve: the repository, the limits, and the requests in flight.
pub struct Server {
    pub repository: Repository,
    pub limits: Limits,
    in_flight: Arc<tokio::sync::Semaphore>,
    max_in_flight: usize,
}

impl Server {
    pub fn new(repository: Repository, limits: Limits, max_in_flight: usize) -> Server {
        Server { repository, limits, in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight)), max_in_flight }
    }

    /// Loads (or reloads) model `name` from the repository, off the I/O threads.
    pub async fn load(self: &Arc<Self>, name: String) -> Result<(), ServeError> {
        let server = self.clone();
        tokio::task::spawn_blocking(move || server.repository.load(&name))
            .await
            .map_err(|e| ServeError::internal(format!("loading stopped: {e}")))?
    }

    /// Whether the server is ready: every model it loaded is.
    pub fn ready(&self) -> bool {
        self.repository.all_ready()
    }

    /// Runs one request: the model version it names, and its outputs in the order asked.
    pub async fn infer(
        &self,
        req: InferRequest,
        protocol: &'static str,
    ) -> Result<(Arc<Version>, Vec<Tensor>), ServeError> {
        let start = std::time::Instant::now();
        let name = req.model.clone();
        let result = self.infer_inner(req).await;
        // Named models only: names a client makes up must not grow the metrics without bound.
        let unknown = matches!(&result, Err(e) if e.kind == ErrorKind::NotFound);
        let model = if unknown { "(unknown)".to_string() } else { name.clone() };
        let version = result.as_ref().map_or(String::new(), |(v, _)| v.version.to_string());
        let labels = [("model", model.clone()), ("version", version), ("protocol", protocol.to_string())];
        metrics::counter!("kiln_requests_total", &labels).increment(1);
        match &result {
            Ok(_) => {
                metrics::histogram!("kiln_request_duration_seconds", &labels).record(start.elapsed().as_secs_f64())
            }
            Err(e) => {
                let labels =
                    [("model", model.clone()), ("protocol", protocol.to_string()), ("reason", e.label().to_string())];
                metrics::counter!("kiln_request_failures_total", &labels).increment(1);
                tracing::warn!(model = name, protocol, error = %e.message, "request failed");
            }
        }
        result
    }

    async fn infer_inner(&self, req: InferRequest) -> Result<(Arc<Version>, Vec<Tensor>), ServeError> {
        let _permit = self.in_flight.clone().try_acquire_owned().map_err(|_| {
            ServeError::unavailable(format!(
                "the server has {} requests in flight, its limit (--max-concurrent-requests); try again",
                self.max_in_flight
            ))
        })?;
        let v = self.repository.get(&req.model, req.version.as_deref())?;
        let inputs = order_inputs(&v, req.inputs)?;
        let outputs = req.outputs;
        if let Some(names) = &outputs {
            if let Some(n) = names.iter().find(|n| !v.session.outputs().iter().any(|o| &o.name == *n)) {
                let have: Vec<&str> = v.session.outputs().iter().map(|o| o.name.as_str()).collect();
                return Err(ServeError::bad_request(format!(
                    "model `{}` has no output `{n}` (its outputs: {})",
                    v.name,
                    have.join(", ")
                )));
            }
            if let Some(n) = names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n) {
                return Err(ServeError::bad_request(format!("output `{n}` is asked for twice")));
            }
        }
        let rx = v.scheduler.submit(inputs).map_err(|full| {
            ServeError::unavailable(format!(
                "model `{}` version {} has {} requests queued, its limit (--max-queue); try again",
                v.name, v.version, full.0
            ))
        })?;
        let results =
            rx.await.map_err(|_| ServeError::internal("the model's worker stopped"))?.map_err(|e| run_error(&v, e))?;
        let results = match outputs {
            None => results,
            Some(names) => {
                let specs = v.session.outputs();
                let mut all: Vec<Option<Tensor>> = results.into_iter().map(Some).collect();
                names
                    .iter()
                    .map(|n| all[specs.iter().position(|o| &o.name == n).expect("checked")].take().expect("asked once"))
                    .collect()
            }
        };
        Ok((v, results))
    }
}

/// A run's failure as the protocol's error: the request's fault (400) when the runtime
/// rejected what it was given.
fn run_error(v: &Version, e: kiln_runtime::RuntimeError) -> ServeError {
    use kiln_runtime::RuntimeError as R;
    let message = format!("model `{}` version {}: {e}", v.name, v.version);
    match e {
        R::Io { .. }
        | R::Artifact(_)
        | R::WrongTarget { .. }
        | R::MissingFeatures { .. }
        | R::Load(_)
        | R::Manifest(_)
        | R::Status(_) => ServeError::internal(message),
        _ => ServeError::bad_request(message),
    }
}

/// The request's inputs in the model's order, each named once and checked as the runtime
/// would check them; a value given for an input compiled in must be the value compiled in.
fn order_inputs(v: &Version, given: Vec<Input>) -> Result<Vec<Input>, ServeError> {
    let s = &v.session;
    let mut slots: Vec<Option<Input>> = vec![None; s.inputs().len()];
    let err = |e: kiln_runtime::RuntimeError| ServeError::bad_request(format!("model `{}`: {e}", v.name));
    for input in given {
        match s.input_index(&input.name).map_err(err)? {
            Some(i) if slots[i].is_some() => {
                return Err(ServeError::bad_request(format!("input `{}` is given twice", input.name)))
            }
            Some(i) => slots[i] = Some(input),
            None => s
                .check_frozen(&input.name, TensorRef { dtype: input.dtype, shape: &input.shape, data: &input.data })
                .map_err(err)?,
        }
    }
    let missing: Vec<&str> =
        s.inputs().iter().zip(&slots).filter(|(_, x)| x.is_none()).map(|(t, _)| t.name.as_str()).collect();
    if !missing.is_empty() {
        return Err(ServeError::bad_request(format!(
            "model `{}`: missing input{} `{}`",
            v.name,
            if missing.len() > 1 { "s" } else { "" },
            missing.join("`, `")
        )));
    }
    let inputs: Vec<Input> = slots.into_iter().map(|x| x.expect("checked")).collect();
    // The dtype in the protocol's words (the runtime's check would name Kiln's).
    for (i, spec) in inputs.iter().zip(s.inputs()) {
        if i.dtype as i32 != spec.dtype {
            let want = kiln_runtime::DType::from_i32(spec.dtype).and_then(tensor::datatype_name).unwrap_or("?");
            let got = tensor::datatype_name(i.dtype).unwrap_or("?");
            return Err(ServeError::bad_request(format!(
                "model `{}`: input `{}` is {want}, not {got}",
                v.name, i.name
            )));
        }
    }
    let refs: Vec<TensorRef> =
        inputs.iter().map(|i| TensorRef { dtype: i.dtype, shape: &i.shape, data: &i.data }).collect();
    s.check(&refs).map_err(err)?;
    Ok(inputs)
}

/// Starts the server and serves until SIGINT or SIGTERM, then finishes the requests in flight.
pub fn run(args: ServeArgs) -> Result<(), Box<dyn std::error::Error>> {
    init_logs(&args.log_format);
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("kiln_batch_size".into()),
            &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0],
        )?
        .install_recorder()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("kiln-serve-io").build()?;
    rt.block_on(serve(args, metrics))
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second server in one process keeps the first's subscriber.
    let _ = if format == "json" { builder.json().try_init() } else { builder.try_init() };
}

async fn serve(
    args: ServeArgs,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Result<(), Box<dyn std::error::Error>> {
    let started = std::time::Instant::now();
    let options = ModelOptions {
        threads: args.threads,
        instances: args.instances,
        batching: !args.no_batching,
        max_batch: args.max_batch,
        batch_delay: Duration::from_micros(args.batch_delay_us),
        max_queue: args.max_queue,
    };
    let root = args.model_repository.clone();
    // (Each model that failed to load is logged, and left unavailable with its reason.)
    let (repository, _failed) = tokio::task::spawn_blocking(move || Repository::open(&root, options)).await??;
    let limits = Limits {
        max_request_bytes: args.max_request_bytes,
        max_tensor_elements: args.max_tensor_elements,
        timeout: Duration::from_millis(args.request_timeout_ms),
    };
    let models = repository.index(true).len();
    let server = Arc::new(Server::new(repository, limits, args.max_concurrent_requests));

    let http_listener = tokio::net::TcpListener::bind((args.host.as_str(), args.http_port))
        .await
        .map_err(|e| format!("cannot listen on {}:{} (HTTP): {e}", args.host, args.http_port))?;
    let grpc_listener = tokio::net::TcpListener::bind((args.host.as_str(), args.grpc_port))
        .await
        .map_err(|e| format!("cannot listen on {}:{} (gRPC): {e}", args.host, args.grpc_port))?;
    let (http_addr, grpc_addr): (SocketAddr, SocketAddr) = (http_listener.local_addr()?, grpc_listener.local_addr()?);

    // Histogram samples wait in the recorder until upkeep folds them into their buckets (a
    // scrape does it too): without this, a server nobody scrapes grows with every request.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let http = http::serve(http_listener, http::router(server.clone(), metrics), stop_rx.clone(), limits.timeout);
    let grpc = tonic::transport::Server::builder()
        .timeout(limits.timeout)
        .add_service(grpc::service(server.clone()))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true)),
            async move {
                let mut rx = stop_rx;
                let _ = rx.wait_for(|&s| s).await;
            },
        );
    tracing::info!(%http_addr, %grpc_addr, models, startup_ms = started.elapsed().as_millis() as u64, "ready");
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "kiln serve: ready, HTTP on {http_addr}, gRPC on {grpc_addr}, {models} models")?;
        out.flush()?;
    }
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing the requests in flight");
        let _ = stop_tx.send(true);
    });
    let ((), g) = tokio::join!(http, grpc);
    g?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
