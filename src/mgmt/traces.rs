//! The management API's trace routes, as the rabbitmq_tracing plugin has
//! them: `/api/traces`, `/api/traces/{vhost}`, `/api/traces/{vhost}/{name}`
//! (GET, PUT, DELETE), `/api/trace-files` and `/api/trace-files/{name}`
//! (GET as text, DELETE), all for administrators.
//!
//! A trace is run-time state, as in the plugin (whose traces live in an
//! ETS table): the list lives here, on the control-plane thread, and is
//! gone after a restart; its log file stays. Starting a trace opens its
//! file through the writer thread (`trace_files`), gives every shard the
//! vhost's new list of traces with the channel to the writer, and turns
//! the vhost's firehose on if it was the vhost's first trace; stopping
//! the vhost's last trace turns the firehose off, whether or not
//! `trace_on` had turned it on before, as the plugin's
//! `rabbit_tracing_traces:stop` does.
//!
//! warren adds `dropped` to a trace's JSON: the records the shards
//! dropped because the writer was behind.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde_json::{Map, Value};
use tracing::error;

use crate::broker::control::{ControlReply, ControlRequest};
use crate::broker::trace::FileTraceSpec;
use crate::config;
use crate::metadata::auth::AccessChange;
use crate::mgmt::api::{created, json_response, no_content, parse_body, ApiResult, App, Peer};
use crate::mgmt::auth::Level;
use crate::mgmt::error::ApiError;
use crate::mgmt::trace_files::{self, Command, TraceWriter};
use crate::mgmt::trace_format::TraceFormat;

/// RabbitMQ's answer when a trace could not start.
const START_FAILED: &str = "Something went wrong trying to start the trace - check the logs.";

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/traces", get(all_traces))
        .route("/api/traces/{vhost}", get(vhost_traces))
        .route(
            "/api/traces/{vhost}/{name}",
            get(one_trace).put(put_trace).delete(delete_trace),
        )
        .route("/api/trace-files", get(files))
        .route("/api/trace-files/{name}", get(file).delete(delete_file))
}

struct Trace {
    id: u64,
    format: TraceFormat,
    pattern: String,
    max_payload_bytes: Option<u64>,
    /// Shown as the plugin shows it; warren's traces need no connection.
    tracer_connection_username: Option<String>,
}

/// The traces, by (vhost, name), and the writer thread's handle (started
/// with the first trace).
pub(crate) struct Traces {
    directory: PathBuf,
    node: String,
    shard_count: usize,
    writer: Option<TraceWriter>,
    traces: BTreeMap<(String, String), Trace>,
    next_id: u64,
}

impl Traces {
    pub(crate) fn new(data_dir: &std::path::Path, node: String, shard_count: usize) -> Traces {
        Traces {
            directory: data_dir.join("traces"),
            node,
            shard_count,
            writer: None,
            traces: BTreeMap::new(),
            next_id: 1,
        }
    }

    fn writer(&mut self) -> Result<&TraceWriter, ApiError> {
        if self.writer.is_none() {
            let writer =
                TraceWriter::start(self.directory.clone(), self.node.clone(), self.shard_count)
                    .map_err(|e| {
                        error!(error = %e, "cannot start the trace writer");
                        ApiError::bad_request(START_FAILED)
                    })?;
            self.writer = Some(writer);
        }
        self.writer
            .as_ref()
            .ok_or_else(|| ApiError::bad_request(START_FAILED))
    }

    /// `vhost`'s traces as the shards need them.
    fn specs(&self, vhost: &str) -> Vec<FileTraceSpec> {
        self.traces
            .iter()
            .filter(|((v, _), _)| v == vhost)
            .map(|(_, t)| FileTraceSpec {
                id: t.id,
                pattern: t.pattern.clone(),
                max_payload_bytes: t.max_payload_bytes,
            })
            .collect()
    }
}

impl App {
    fn traces(&self) -> MutexGuard<'_, Traces> {
        // Only this thread locks it, and never across an await.
        self.traces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Gives every shard `vhost`'s traces and its channel to the writer.
    async fn send_traces(&self, vhost: &str) -> Result<(), ApiError> {
        let (specs, writers) = {
            let mut traces = self.traces();
            let specs = traces.specs(vhost);
            let writers = traces.writer()?.events.clone();
            (specs, writers)
        };
        for (shard, writer) in writers.into_iter().enumerate() {
            self.plane
                .ask(
                    shard,
                    ControlRequest::SetFileTraces {
                        vhost: vhost.to_string(),
                        traces: specs.clone(),
                        writer,
                    },
                )
                .await?;
        }
        Ok(())
    }

    /// The records the shards dropped, per trace id.
    async fn dropped(&self) -> Result<BTreeMap<u64, u64>, ApiError> {
        let mut dropped = BTreeMap::new();
        if self.traces().traces.is_empty() {
            return Ok(dropped);
        }
        for reply in self
            .plane
            .ask_all(|| ControlRequest::FileTraceDrops)
            .await?
        {
            if let ControlReply::FileTraceDrops(counts) = reply {
                for (id, count) in counts {
                    *dropped.entry(id).or_insert(0) += count;
                }
            }
        }
        Ok(dropped)
    }

    /// Turns `vhost`'s firehose on or off as `rabbit_trace:start/stop`
    /// would: its `tracing` flag and every shard's switch.
    async fn set_vhost_tracing(&self, vhost: &str, on: bool) -> Result<(), ApiError> {
        let Some(mut def) = self.users().await?.vhost(vhost).cloned() else {
            return Ok(());
        };
        if def.tracing != on {
            def.tracing = on;
            self.access_change(AccessChange::VhostUpdated(def)).await?;
        }
        self.tracing(vhost, Some(on)).await?;
        Ok(())
    }

    async fn vhost_exists(&self, vhost: &str) -> Result<bool, ApiError> {
        Ok(self.users().await?.vhost(vhost).is_some())
    }

    /// Stops every trace of a vhost that is being deleted.
    pub(crate) async fn forget_vhost_traces(&self, vhost: &str) {
        let names: Vec<String> = self
            .traces()
            .traces
            .keys()
            .filter(|(v, _)| v == vhost)
            .map(|(_, n)| n.clone())
            .collect();
        for name in names {
            let _ = self.stop_trace(vhost, &name).await;
        }
    }

    async fn stop_trace(&self, vhost: &str, name: &str) -> Result<bool, ApiError> {
        let (removed, last) = {
            let mut traces = self.traces();
            let removed = traces.traces.remove(&(vhost.to_string(), name.to_string()));
            let last = !traces.traces.keys().any(|(v, _)| v == vhost);
            (removed, last)
        };
        let Some(trace) = removed else {
            return Ok(false);
        };
        // The shards stop sending first, then the writer writes what they
        // sent and closes the file.
        self.send_traces(vhost).await?;
        let (done, closed) = tokio::sync::oneshot::channel();
        let sent = self
            .traces()
            .writer
            .as_ref()
            .map(|w| w.commands.send(Command::Close { id: trace.id, done }));
        if let Some(Ok(())) = sent {
            let _ = tokio::time::timeout(config::CONTROL_REPLY_TIMEOUT, closed).await;
        }
        if last {
            self.set_vhost_tracing(vhost, false).await?;
        }
        Ok(true)
    }
}

fn trace_json(vhost: &str, name: &str, trace: &Trace, dropped: u64) -> Value {
    let mut map = Map::new();
    map.insert("vhost".into(), vhost.into());
    map.insert("name".into(), name.into());
    map.insert("format".into(), trace.format.name().into());
    map.insert("pattern".into(), trace.pattern.as_str().into());
    if let Some(max) = trace.max_payload_bytes {
        map.insert("max_payload_bytes".into(), max.into());
    }
    if let Some(user) = &trace.tracer_connection_username {
        map.insert("tracer_connection_username".into(), user.as_str().into());
    }
    map.insert("dropped".into(), dropped.into());
    Value::Object(map)
}

async fn list_json(app: &App, vhost: Option<&str>) -> Result<Vec<Value>, ApiError> {
    let dropped = app.dropped().await?;
    let traces = app.traces();
    Ok(traces
        .traces
        .iter()
        .filter(|((v, _), _)| vhost.is_none_or(|vhost| vhost == v))
        .map(|((v, n), t)| trace_json(v, n, t, dropped.get(&t.id).copied().unwrap_or(0)))
        .collect())
}

/// GET /api/traces
async fn all_traces(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    Ok(json_response(&list_json(&app, None).await?))
}

/// GET /api/traces/{vhost}
async fn vhost_traces(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if !app.vhost_exists(&vhost).await? {
        return Err(ApiError::not_found());
    }
    Ok(json_response(&list_json(&app, Some(&vhost)).await?))
}

/// GET /api/traces/{vhost}/{name}
async fn one_trace(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let dropped = app.dropped().await?;
    let traces = app.traces();
    let trace = traces
        .traces
        .get(&(vhost.clone(), name.clone()))
        .ok_or_else(ApiError::not_found)?;
    let count = dropped.get(&trace.id).copied().unwrap_or(0);
    Ok(json_response(&trace_json(&vhost, &name, trace, count)))
}

/// PUT /api/traces/{vhost}/{name} with `format` and `pattern` (both
/// required) and `max_payload_bytes`, checked as the plugin checks them.
async fn put_trace(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if !app.vhost_exists(&vhost).await? {
        return Err(ApiError::not_found());
    }
    let body = parse_body(&body)?;
    let missing: Vec<&str> = ["format", "pattern"]
        .into_iter()
        .filter(|key| body.get(*key).is_none())
        .collect();
    if !missing.is_empty() {
        let keys: Vec<String> = missing
            .iter()
            .map(|key| format!("{{key_missing,{key}}}"))
            .collect();
        return Err(ApiError::bad_request(format!("[{}]", keys.join(","))));
    }
    let max_payload_bytes = match body.get("max_payload_bytes") {
        None => None,
        Some(value) => Some(
            value
                .as_u64()
                .ok_or_else(|| ApiError::bad_request("max_payload_bytes not integer"))?,
        ),
    };
    let format = body
        .get("format")
        .and_then(Value::as_str)
        .and_then(TraceFormat::parse)
        .ok_or_else(|| ApiError::bad_request("format not json or text"))?;
    let pattern = body
        .get("pattern")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("pattern not a string"))?
        .to_string();
    // The plugin binds a queue with the pattern: a short string.
    if pattern.len() > warren_protocol::types::SHORTSTR_LEN_MAX {
        return Err(ApiError::bad_request("pattern too long"));
    }
    // The name is the file's name, `<name>.log`, in the trace directory.
    if !trace_files::safe_file_name(&name) || name.len() > config::TRACE_NAME_LEN_MAX {
        return Err(ApiError::bad_request(
            "trace name not usable as a file name",
        ));
    }
    let tracer_connection_username = body
        .get("tracer_connection_username")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let key = (vhost.clone(), name.clone());
    let (first, opened) = {
        let mut traces = app.traces();
        if traces.traces.contains_key(&key) {
            return Err(ApiError::bad_request(format!(
                "trace {name} already exists in vhost {vhost}"
            )));
        }
        let id = traces.next_id;
        traces.next_id += 1;
        let first = !traces.traces.keys().any(|(v, _)| *v == vhost);
        let (done, opened) = tokio::sync::oneshot::channel();
        traces
            .writer()?
            .commands
            .send(Command::Open {
                id,
                file_name: format!("{name}.log"),
                format,
                max_payload_bytes,
                done,
            })
            .map_err(|_| ApiError::bad_request(START_FAILED))?;
        traces.traces.insert(
            key.clone(),
            Trace {
                id,
                format,
                pattern,
                max_payload_bytes,
                tracer_connection_username,
            },
        );
        (first, opened)
    };
    let started = match tokio::time::timeout(config::CONTROL_REPLY_TIMEOUT, opened).await {
        Ok(Ok(Ok(()))) => true,
        Ok(Ok(Err(_))) | Ok(Err(_)) | Err(_) => false,
    };
    if !started {
        app.traces().traces.remove(&key);
        return Err(ApiError::bad_request(START_FAILED));
    }
    app.send_traces(&vhost).await?;
    if first {
        app.set_vhost_tracing(&vhost, true).await?;
    }
    Ok(created())
}

/// DELETE /api/traces/{vhost}/{name}
async fn delete_trace(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if app.stop_trace(&vhost, &name).await? {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}

fn directory(app: &App) -> PathBuf {
    app.traces().directory.clone()
}

/// GET /api/trace-files: every file of the trace directory.
async fn files(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let directory = directory(&app);
    let files = tokio::task::spawn_blocking(move || trace_files::list(&directory))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let items: Vec<Value> = files
        .into_iter()
        .map(|(name, size)| serde_json::json!({"name": name, "size": size}))
        .collect();
    Ok(json_response(&items))
}

/// GET /api/trace-files/{name}: the file, as text/plain.
async fn file(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if !trace_files::safe_file_name(&name) {
        return Err(ApiError::not_found());
    }
    let path = directory(&app).join(&name);
    let content = tokio::task::spawn_blocking(move || {
        if !path.is_file() {
            return None;
        }
        std::fs::read(path).ok()
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .ok_or_else(ApiError::not_found)?;
    let mut response = content.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// DELETE /api/trace-files/{name}. A running trace goes on writing to the
/// file it has open, as in RabbitMQ.
async fn delete_file(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if !trace_files::safe_file_name(&name) {
        return Err(ApiError::not_found());
    }
    let path = directory(&app).join(&name);
    let deleted =
        tokio::task::spawn_blocking(move || path.is_file() && std::fs::remove_file(path).is_ok())
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
    if deleted {
        Ok(no_content())
    } else {
        Err(ApiError::not_found())
    }
}

/// The handle `App` keeps.
pub(crate) fn shared(
    data_dir: &std::path::Path,
    node: String,
    shard_count: usize,
) -> Arc<Mutex<Traces>> {
    Arc::new(Mutex::new(Traces::new(data_dir, node, shard_count)))
}
