//! The model repository: a directory laid out like Triton's, `ROOT/NAME/VERSION/model.kiln`
//! (VERSION a positive integer), with an optional `ROOT/NAME/config.json` of the model's own
//! settings. Every version found is loaded; a request that names no version gets the highest. Models are loaded, reloaded and unloaded by name at run time
//! (the protocol's model repository extension); a request in flight keeps the version it
//! started on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kiln_runtime::abi::manifest::{Manifest, TensorSpec};
use kiln_runtime::{DType, Session, SessionOptions};

use crate::scheduler::{Batching, Scheduler};
use crate::tensor::datatype_name;
use crate::ServeError;

/// The artifact's file name in each version directory.
pub const ARTIFACT: &str = "model.kiln";
/// A model's own settings, in its directory (optional).
pub const CONFIG: &str = "config.json";

/// How models are loaded and run.
#[derive(Clone, Debug)]
pub struct ModelOptions {
    /// Intra-op threads of each session (0: one per core).
    pub threads: usize,
    /// Runs in flight per model version.
    pub instances: usize,
    /// Whether requests to a model with a batch dim are batched.
    pub batching: bool,
    /// The largest batch (`None`: the batch dim's upper bound).
    pub max_batch: Option<usize>,
    /// How long the oldest request waits for others.
    pub batch_delay: Duration,
    pub max_queue: usize,
}

/// A loaded model version.
pub struct Version {
    pub name: String,
    pub version: u64,
    pub session: Arc<Session>,
    pub scheduler: Scheduler,
}

impl Version {
    /// A tensor's protocol metadata: name, type name and shape with -1 for run-time dims.
    pub fn tensor_metadata(t: &TensorSpec) -> (String, &'static str, Vec<i64>) {
        let dtype = DType::from_i32(t.dtype).and_then(datatype_name).unwrap_or("");
        let shape = t
            .shape
            .iter()
            .enumerate()
            .map(|(d, &n)| if t.dim_slots.get(d).is_some_and(|&s| s >= 0) { -1 } else { n as i64 })
            .collect();
        (t.name.clone(), dtype, shape)
    }
}

enum Entry {
    Ready(BTreeMap<u64, Arc<Version>>),
    /// Why it is not loaded: unloaded, or its loading failed.
    Unavailable(String),
}

pub struct Repository {
    root: PathBuf,
    options: ModelOptions,
    models: RwLock<BTreeMap<String, Entry>>,
}

/// One row of the repository's index.
pub struct IndexRow {
    pub name: String,
    pub version: String,
    pub state: &'static str,
    pub reason: String,
}

impl Repository {
    /// Opens the repository and loads every model in it; the errors of those that failed to
    /// load (each also left unavailable, with its reason).
    pub fn open(root: &Path, options: ModelOptions) -> Result<(Repository, Vec<ServeError>), ServeError> {
        let names = std::fs::read_dir(root)
            .map_err(|e| {
                ServeError::bad_request(format!("cannot read the model repository `{}`: {e}", root.display()))
            })?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect::<Vec<_>>();
        let repo = Repository { root: root.to_path_buf(), options, models: RwLock::new(BTreeMap::new()) };
        let errors = names.iter().filter_map(|n| repo.load(n).err()).collect();
        Ok((repo, errors))
    }

    /// Loads (or reloads) model `name` from the repository: every version directory in it.
    /// On failure the model's previous versions stay loaded.
    pub fn load(&self, name: &str) -> Result<(), ServeError> {
        if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\']) {
            return Err(ServeError::bad_request(format!("`{name}` is not a model name")));
        }
        let dir = self.root.join(name);
        match self.load_versions(name, &dir) {
            Ok(versions) => {
                tracing::info!(model = name, versions = ?versions.keys().collect::<Vec<_>>(), "loaded");
                self.write().insert(name.to_string(), Entry::Ready(versions));
                Ok(())
            }
            Err(e) => {
                tracing::error!(model = name, error = %e.message, "failed to load");
                let mut models = self.write();
                // (A name with no directory is not a model of the repository: not listed.)
                if dir.is_dir() && !matches!(models.get(name), Some(Entry::Ready(_))) {
                    models.insert(name.to_string(), Entry::Unavailable(e.message.clone()));
                }
                Err(e)
            }
        }
    }

    fn load_versions(&self, name: &str, dir: &Path) -> Result<BTreeMap<u64, Arc<Version>>, ServeError> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            let kind =
                if e.kind() == std::io::ErrorKind::NotFound { ServeError::not_found } else { ServeError::bad_request };
            kind(format!("model `{name}`: cannot read `{}`: {e}", dir.display()))
        })?;
        let options = self.model_options(name, dir)?;
        let mut versions = BTreeMap::new();
        for e in entries.filter_map(|e| e.ok()) {
            let Some(v) = e.file_name().to_str().and_then(|s| s.parse::<u64>().ok()).filter(|&v| v > 0) else {
                continue;
            };
            let path = e.path().join(ARTIFACT);
            if !path.is_file() {
                continue;
            }
            versions.insert(v, Arc::new(load_version(&options, name, v, &path)?));
        }
        if versions.is_empty() {
            return Err(ServeError::bad_request(format!(
                "model `{name}`: no version in `{}` (expected {}/<version>/{ARTIFACT})",
                dir.display(),
                name
            )));
        }
        Ok(versions)
    }

    /// The server's options for model `name`, overridden by its `config.json` if it has one.
    fn model_options(&self, name: &str, dir: &Path) -> Result<ModelOptions, ServeError> {
        let path = dir.join(CONFIG);
        let mut options = self.options.clone();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(options),
            Err(e) => {
                return Err(ServeError::bad_request(format!("model `{name}`: cannot read `{}`: {e}", path.display())))
            }
        };
        let config: ModelConfig = serde_json::from_slice(&text)
            .map_err(|e| ServeError::bad_request(format!("model `{name}`: `{}`: {e}", path.display())))?;
        options.threads = config.threads.unwrap_or(options.threads);
        options.instances = config.instances.unwrap_or(options.instances);
        options.max_queue = config.max_queue.unwrap_or(options.max_queue);
        match config.dynamic_batching {
            None => {}
            Some(BatchingConfig::Enabled(on)) => options.batching = on,
            Some(BatchingConfig::Set(b)) => {
                options.batching = true;
                options.max_batch = b.max_batch.or(options.max_batch);
                options.batch_delay = b.delay_us.map_or(options.batch_delay, Duration::from_micros);
            }
        }
        Ok(options)
    }

    /// Unloads model `name`: new requests for it fail; those in flight finish.
    pub fn unload(&self, name: &str) -> Result<(), ServeError> {
        let mut models = self.write();
        match models.get(name) {
            Some(Entry::Ready(_)) => {
                models.insert(name.to_string(), Entry::Unavailable("unloaded".to_string()));
                tracing::info!(model = name, "unloaded");
                Ok(())
            }
            _ => Err(ServeError::not_found(format!("model `{name}` is not loaded"))),
        }
    }

    /// The version of model `name` a request asks for (`None` or empty: the highest).
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Version>, ServeError> {
        let models = self.read();
        let versions = match models.get(name) {
            Some(Entry::Ready(v)) => v,
            Some(Entry::Unavailable(why)) => {
                return Err(ServeError::not_found(format!("model `{name}` is not available ({why})")))
            }
            None => return Err(ServeError::not_found(format!("unknown model `{name}`"))),
        };
        match version.filter(|v| !v.is_empty()) {
            None => Ok(versions.values().next_back().expect("a loaded model has a version").clone()),
            Some(v) => v.parse::<u64>().ok().and_then(|n| versions.get(&n)).cloned().ok_or_else(|| {
                let have: Vec<String> = versions.keys().map(u64::to_string).collect();
                ServeError::not_found(format!(
                    "model `{name}` has no version `{v}` (its versions: {})",
                    have.join(", ")
                ))
            }),
        }
    }

    /// The loaded versions of model `name`, lowest first.
    pub fn versions(&self, name: &str) -> Vec<u64> {
        match self.read().get(name) {
            Some(Entry::Ready(v)) => v.keys().copied().collect(),
            _ => Vec::new(),
        }
    }

    /// Every model the repository holds (on disk or loaded), with its state.
    pub fn index(&self, ready_only: bool) -> Vec<IndexRow> {
        let models = self.read();
        let mut names: Vec<String> = models.keys().cloned().collect();
        if let Ok(dir) = std::fs::read_dir(&self.root) {
            names.extend(
                dir.filter_map(|e| e.ok())
                    .filter(|e| e.path().is_dir())
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        names.sort();
        names.dedup();
        let mut rows = Vec::new();
        for name in names {
            match models.get(&name) {
                Some(Entry::Ready(v)) => rows.extend(v.keys().map(|k| IndexRow {
                    name: name.clone(),
                    version: k.to_string(),
                    state: "READY",
                    reason: String::new(),
                })),
                Some(Entry::Unavailable(why)) if !ready_only => {
                    rows.push(IndexRow { name, version: String::new(), state: "UNAVAILABLE", reason: why.clone() })
                }
                None if !ready_only => rows.push(IndexRow {
                    name,
                    version: String::new(),
                    state: "UNAVAILABLE",
                    reason: "not loaded".into(),
                }),
                _ => {}
            }
        }
        rows
    }

    /// Whether every model the repository loaded at start (or since) is ready: none failed.
    pub fn all_ready(&self) -> bool {
        !self.read().values().any(|e| matches!(e, Entry::Unavailable(why) if why != "unloaded"))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.models.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.models.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// A model directory's own settings (`NAME/config.json`), each overriding the server's flag.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelConfig {
    threads: Option<usize>,
    instances: Option<usize>,
    max_queue: Option<usize>,
    dynamic_batching: Option<BatchingConfig>,
}

/// `"dynamic_batching": false | true | {"max_batch": N, "delay_us": N}`.
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum BatchingConfig {
    Enabled(bool),
    Set(BatchingFields),
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchingFields {
    max_batch: Option<usize>,
    delay_us: Option<u64>,
}

/// Loads one version of a model with its options.
fn load_version(options: &ModelOptions, name: &str, version: u64, path: &Path) -> Result<Version, ServeError> {
    let opts = SessionOptions { threads: options.threads, ..Default::default() };
    let session = Session::load_with(path, &opts)
        .map_err(|e| ServeError::bad_request(format!("model `{name}` version {version}: {e}")))?;
    let m = session.manifest();
    if let Some(t) =
        m.inputs.iter().chain(&m.outputs).find(|t| DType::from_i32(t.dtype).and_then(datatype_name).is_none())
    {
        return Err(ServeError::bad_request(format!(
            "model `{name}` version {version}: tensor `{}` has a dtype the inference protocol has no name for",
            t.name
        )));
    }
    let batching = batch_bound(m).filter(|_| options.batching).and_then(|hi| {
        let max = options.max_batch.map_or(hi, |n| n.min(hi));
        (max > 1).then_some(Batching { max, delay: options.batch_delay })
    });
    let version_text = version.to_string();
    tracing::info!(model = name, version, batching = ?batching.map(|b| b.max), "version loaded");
    let session = Arc::new(session);
    let scheduler =
        Scheduler::new(session.clone(), batching, options.instances, options.max_queue, name, &version_text).map_err(
            |e| ServeError::unavailable(format!("model `{name}` version {version}: cannot start its threads: {e}")),
        )?;
    Ok(Version { name: name.to_string(), version, session, scheduler })
}

/// The upper bound of the model's batch dim: a run-time dim (`--dim batch=1..N`) that is dim
/// 0 of every input and every output and no other dim of them; `None` when there is none.
pub fn batch_bound(m: &Manifest) -> Option<usize> {
    let slot = *m.inputs.first()?.dim_slots.first()?;
    let sym = m.symbols.get(usize::try_from(slot).ok()?)?;
    let batched = |t: &TensorSpec| t.dim_slots.first() == Some(&slot) && !t.dim_slots[1..].contains(&slot);
    (sym.base.is_none() && m.inputs.iter().chain(&m.outputs).all(batched) && m.frozen_inputs.is_empty())
        .then_some(sym.hi as usize)
}
