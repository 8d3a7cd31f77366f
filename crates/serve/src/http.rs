//! The HTTP/REST side of the protocol (axum): health, metadata, inference with JSON tensors or
//! Triton's binary tensor extension (the JSON header's length in
//! `Inference-Header-Content-Length`, each binary tensor's bytes after it in order), the
//! model repository extension, and Prometheus metrics at `/metrics`; bodies may be gzip or
//! deflate compressed either way.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::repository::Version;
use crate::tensor::{datatype_name, decode_input, json_values, Elements};
use crate::{ErrorKind, InferRequest, ServeError, Server};

/// The binary tensor extension's header: the length of the JSON part of the body.
pub const HEADER_LENGTH: &str = "inference-header-content-length";

/// The extensions the server speaks (server metadata).
pub const EXTENSIONS: [&str; 2] = ["binary_tensor_data", "model_repository"];

#[derive(Clone)]
struct App {
    server: Arc<Server>,
    metrics: PrometheusHandle,
}

pub fn router(server: Arc<Server>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/v2/health/live", get(|| async { StatusCode::OK }))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2", get(server_metadata))
        .route("/v2/models/{name}", get(model_metadata))
        .route("/v2/models/{name}/versions/{version}", get(model_metadata))
        .route("/v2/models/{name}/ready", get(model_ready))
        .route("/v2/models/{name}/versions/{version}/ready", get(model_ready))
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer))
        .route("/v2/repository/index", post(index))
        .route("/v2/repository/models/{name}/load", post(load))
        .route("/v2/repository/models/{name}/unload", post(unload))
        .route("/metrics", get(|State(app): State<App>| async move { app.metrics.render() }))
        .fallback(|| async { ServeError::not_found("no such endpoint of the inference protocol") })
        .with_state(App { server, metrics })
        // gzip or deflate bodies both ways (`Content-Encoding`, `Accept-Encoding`), as Triton
        // and its clients' `request_compression_algorithm` / `response_compression_algorithm`
        // do; a request's size limit applies to what it inflates to.
        .layer(tower_http::decompression::RequestDecompressionLayer::new())
        .layer(tower_http::compression::CompressionLayer::new())
}

/// Serves `router` on `listener` until `stop` turns true, then lets the connections finish
/// their requests. Each connection is hyper's HTTP/1 with a timer, so that a client must send a
/// request's headers within `header_timeout` (axum's own `serve` sets no timer, and a client
/// trickling headers would hold its connection open for ever); the body is bounded by the
/// request timeout in [`infer`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
    header_timeout: std::time::Duration,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // (Out of file descriptors, say: wait rather than spin.)
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|&s| s) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection closed");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = match self.kind {
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::Timeout => StatusCode::REQUEST_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(json!({ "error": self.message }))).into_response()
    }
}

type Params = Path<HashMap<String, String>>;

fn name_version(p: &HashMap<String, String>) -> (&str, Option<&str>) {
    (p.get("name").map_or("", String::as_str), p.get("version").map(String::as_str))
}

async fn server_ready(State(app): State<App>) -> StatusCode {
    if app.server.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

async fn server_metadata() -> Json<Value> {
    Json(json!({ "name": "kiln", "version": env!("CARGO_PKG_VERSION"), "extensions": EXTENSIONS }))
}

async fn model_metadata(State(app): State<App>, Path(p): Params) -> Result<Json<Value>, ServeError> {
    let (name, version) = name_version(&p);
    let v = app.server.repository.get(name, version)?;
    let tensors = |ts: &[kiln_runtime::abi::manifest::TensorSpec]| -> Vec<Value> {
        ts.iter()
            .map(|t| {
                let (name, datatype, shape) = Version::tensor_metadata(t);
                json!({ "name": name, "datatype": datatype, "shape": shape })
            })
            .collect()
    };
    let versions: Vec<String> = app.server.repository.versions(name).iter().map(u64::to_string).collect();
    Ok(Json(json!({
        "name": v.name,
        "versions": versions,
        "platform": "kiln",
        "inputs": tensors(v.session.inputs()),
        "outputs": tensors(v.session.outputs()),
    })))
}

async fn model_ready(State(app): State<App>, Path(p): Params) -> Result<StatusCode, ServeError> {
    let (name, version) = name_version(&p);
    app.server.repository.get(name, version).map(|_| StatusCode::OK)
}

#[derive(Deserialize, Default)]
struct IndexBody {
    #[serde(default)]
    ready: bool,
}

async fn index(State(app): State<App>, body: Bytes) -> Result<Json<Value>, ServeError> {
    let req: IndexBody = if body.is_empty() { IndexBody::default() } else { parse_json(&body)? };
    let rows: Vec<Value> = app
        .server
        .repository
        .index(req.ready)
        .into_iter()
        .map(|r| {
            let mut o = json!({ "name": r.name, "state": r.state });
            if !r.version.is_empty() {
                o["version"] = r.version.into();
            }
            if !r.reason.is_empty() {
                o["reason"] = r.reason.into();
            }
            o
        })
        .collect();
    Ok(Json(Value::Array(rows)))
}

async fn load(State(app): State<App>, Path(name): Path<String>) -> Result<StatusCode, ServeError> {
    app.server.load(name).await.map(|_| StatusCode::OK)
}

async fn unload(State(app): State<App>, Path(name): Path<String>) -> Result<StatusCode, ServeError> {
    app.server.repository.unload(&name).map(|_| StatusCode::OK)
}

fn parse_json<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ServeError> {
    serde_json::from_slice(bytes).map_err(|e| ServeError::bad_request(format!("malformed request JSON: {e}")))
}

#[derive(Deserialize)]
struct InferBody {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputBody>,
    #[serde(default)]
    outputs: Option<Vec<OutputBody>>,
}

#[derive(Deserialize)]
struct InputBody {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
struct OutputBody {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

async fn infer(State(app): State<App>, Path(p): Params, headers: HeaderMap, body: Body) -> Response {
    let timeout = app.server.limits.timeout;
    match tokio::time::timeout(timeout, infer_http(&app.server, &p, &headers, body)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => e.into_response(),
        Err(_) => ServeError {
            kind: ErrorKind::Timeout,
            message: format!("the request was not answered within {} ms (--request-timeout-ms)", timeout.as_millis()),
        }
        .into_response(),
    }
}

async fn infer_http(
    server: &Server,
    p: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let (name, version) = name_version(p);
    let limit = server.limits.max_request_bytes;
    let too_large = || ServeError {
        kind: ErrorKind::TooLarge,
        message: format!("the request body is larger than the server's limit of {limit} bytes (--max-request-bytes)"),
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
        if std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>()) {
            too_large()
        } else {
            ServeError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    let json_len = match headers.get(HEADER_LENGTH) {
        None => body.len(),
        Some(v) => {
            v.to_str().ok().and_then(|s| s.trim().parse::<usize>().ok()).filter(|&n| n <= body.len()).ok_or_else(
                || {
                    ServeError::bad_request(format!(
                        "header Inference-Header-Content-Length is {v:?}, not a length within the body's {} bytes",
                        body.len()
                    ))
                },
            )?
        }
    };
    let req: InferBody = parse_json(&body[..json_len])?;
    let mut binary = body.slice(json_len..);
    let max_elements = server.limits.max_tensor_elements;
    let mut inputs = Vec::with_capacity(req.inputs.len());
    for i in &req.inputs {
        let elements = match i.parameters.get("binary_data_size") {
            Some(n) => {
                let n = n.as_u64().map(|n| n as usize).filter(|&n| n <= binary.len()).ok_or_else(|| {
                    ServeError::bad_request(format!(
                        "input `{}`: binary_data_size {n} is not a length within the {} bytes of binary data left",
                        i.name,
                        binary.len()
                    ))
                })?;
                Elements::Raw(binary.split_to(n))
            }
            None => Elements::Json(i.data.as_ref().ok_or_else(|| {
                ServeError::bad_request(format!(
                    "input `{}` has neither `data` nor a binary_data_size parameter",
                    i.name
                ))
            })?),
        };
        inputs.push(decode_input(&i.name, &i.datatype, &i.shape, elements, max_elements)?);
    }
    if !binary.is_empty() {
        return Err(ServeError::bad_request(format!("{} bytes of binary data no input claims", binary.len())));
    }
    let all_binary = req.parameters.get("binary_data_output").and_then(Value::as_bool).unwrap_or(false);
    let mut wants_binary = Vec::new();
    let outputs = match &req.outputs {
        None => None,
        Some(outs) => {
            for o in outs {
                if o.parameters.contains_key("classification") {
                    return Err(ServeError::bad_request(format!(
                        "output `{}`: the classification extension is not supported",
                        o.name
                    )));
                }
                wants_binary.push(o.parameters.get("binary_data").and_then(Value::as_bool).unwrap_or(all_binary));
            }
            Some(outs.iter().map(|o| o.name.clone()).collect())
        }
    };
    let request = InferRequest { model: name.to_string(), version: version.map(str::to_string), inputs, outputs };
    let (v, tensors) = server.infer(request, "http").await?;

    let mut out_json = Vec::with_capacity(tensors.len());
    let mut blobs = Vec::new();
    for (k, t) in tensors.into_iter().enumerate() {
        let shape: Vec<i64> = t.shape.iter().map(|&d| d as i64).collect();
        let mut o = json!({ "name": t.name, "datatype": datatype_name(t.dtype).unwrap_or(""), "shape": shape });
        if *wants_binary.get(k).unwrap_or(&all_binary) {
            o["parameters"] = json!({ "binary_data_size": t.data.len() });
            blobs.push(t.data);
        } else {
            o["data"] = Value::Array(json_values(t.dtype, &t.data));
        }
        out_json.push(o);
    }
    let mut head = json!({ "model_name": v.name, "model_version": v.version.to_string(), "outputs": out_json });
    if let Some(id) = req.id {
        head["id"] = id.into();
    }
    let head = serde_json::to_vec(&head).expect("JSON values serialize");
    if blobs.is_empty() {
        return Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], head).into_response());
    }
    let json_len = head.len();
    let mut body = head;
    body.reserve(blobs.iter().map(Vec::len).sum());
    for b in blobs {
        body.extend_from_slice(&b);
    }
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::HeaderName::from_static(HEADER_LENGTH), HeaderValue::from(json_len)),
        ],
        body,
    )
        .into_response())
}
