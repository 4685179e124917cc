//! The management API's routes and handlers: RabbitMQ 3.10's paths and
//! JSON shapes for what tools read and do most.
//!
//! Every handler authenticates (`auth`), checks the vhost in its path
//! (404 if it does not exist, 401 if the user has no permissions on it,
//! as RabbitMQ's `is_authorized_vhost`), asks the shards through the
//! control plane, and builds its answer on this thread. Lists show the
//! vhosts the user may see: all of them for monitoring and administrator
//! users, those it has permissions on for the rest.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Serialize;
use serde_json::{json, Value};

use crate::broker::control::{
    ConnectionInfo, ControlPublish, ControlReply, ControlRequest, DefinitionsReport, GetAckMode,
    QueueInfo, ShardReport,
};
use crate::broker::metadata::{MetaRequest, Scope};
use crate::broker::metrics::ShardMetrics;
use crate::metadata::auth::Users;
use crate::metadata::exchange::ExchangeDef;
use crate::metadata::password::{base64_decode, base64_encode};
use crate::metadata::vhost::QueueMeta;
use crate::mgmt::auth::{authenticate, ApiUser, Level};
use crate::mgmt::error::ApiError;
use crate::mgmt::json::{
    json_to_table, properties_from_json, properties_to_json, short_str, table_to_json,
};
use crate::mgmt::list::{self, Params};
use crate::mgmt::plane::Plane;
use crate::mgmt::prometheus::delivered;
use crate::mgmt::rates::{Rates, QUEUE_FIELDS};
use crate::mgmt::NodeInfo;
use crate::model::alarms::Resource;
use crate::model::ids::{ConnId, ShardId};
use warren_protocol::{
    ExchangeBind, ExchangeDeclare, ExchangeDelete, ExchangeUnbind, FieldTable, Method, QueueBind,
    QueueDeclare, QueueDelete, QueueUnbind, ShortStr,
};

#[derive(Clone)]
pub(crate) struct App {
    pub(crate) plane: Plane,
    pub(crate) node: Arc<NodeInfo>,
    /// Only this thread touches it; the mutex is for axum's `Sync` bound.
    pub(crate) rates: Arc<Mutex<Rates>>,
    pub(crate) auth_cache: Arc<Mutex<crate::mgmt::auth::AuthCache>>,
    /// The trace log files' traces (`traces`).
    pub(crate) traces: Arc<Mutex<crate::mgmt::traces::Traces>>,
    /// What does not change about each queue, for lists of queues.
    pub(crate) queue_catalog: Arc<Mutex<crate::mgmt::queue_list::QueueCatalog>>,
}

pub(crate) type Peer = ConnectInfo<SocketAddr>;
pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn router(app: App) -> Router {
    Router::<App>::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/nodes", get(nodes))
        .route("/api/nodes/{node}", get(node))
        .route("/api/extensions", get(extensions))
        .route("/api/connections", get(connections))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(close_connection),
        )
        .route("/api/channels", get(channels))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route("/api/consumers", get(consumers))
        .route("/api/consumers/{vhost}", get(vhost_consumers))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(vhost_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange).put(put_exchange).delete(delete_exchange),
        )
        .route("/api/exchanges/{vhost}/{name}/publish", post(publish))
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/source",
            get(exchange_bindings_source),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/destination",
            get(exchange_bindings_destination),
        )
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(vhost_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue).put(put_queue).delete(delete_queue),
        )
        .route(
            "/api/queues/{vhost}/{name}/contents",
            axum::routing::delete(purge_queue),
        )
        .route("/api/queues/{vhost}/{name}/get", post(get_messages))
        .route("/api/queues/{vhost}/{name}/bindings", get(queue_bindings))
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(vhost_bindings))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(bindings_between).post(create_binding),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(binding).delete(delete_binding),
        )
        .merge(crate::mgmt::access::routes())
        .merge(crate::mgmt::policy::routes())
        .merge(crate::mgmt::traces::routes())
        .route(
            "/api/definitions",
            get(export_definitions).post(import_definitions),
        )
        .route(
            "/api/definitions/{vhost}",
            get(export_vhost_definitions).post(import_vhost_definitions),
        )
        .route("/api/health/checks/alarms", get(health_alarms))
        .route("/api/health/checks/local-alarms", get(health_alarms))
        .route("/api/aliveness-test/{vhost}", get(aliveness_test))
        .fallback(|| async { ApiError::not_found() })
        .layer(axum::extract::DefaultBodyLimit::max(
            crate::config::MANAGEMENT_BODY_SIZE_MAX,
        ))
        .with_state(app)
}

pub(crate) fn json_response<T: Serialize + ?Sized>(value: &T) -> Response {
    json_response_sized(value, 128)
}

/// `json_response` into a buffer of `capacity` bytes to start with.
pub(crate) fn json_response_sized<T: Serialize + ?Sized>(value: &T, capacity: usize) -> Response {
    let mut body = Vec::with_capacity(capacity);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => json_bytes_response(body),
        Err(e) => ApiError::internal(e.to_string()).into_response(),
    }
}

/// A response of JSON already written.
pub(crate) fn json_bytes_response(body: Vec<u8>) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub(crate) fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

pub(crate) fn created() -> Response {
    StatusCode::CREATED.into_response()
}

/// The vhosts a user sees in lists (`rabbit_mgmt_util:list_visible_vhosts`):
/// every one for monitoring and administrator users, otherwise those it
/// has permissions on.
pub(crate) struct Visible {
    all: bool,
    vhosts: std::collections::HashSet<String>,
}

impl Visible {
    pub(crate) fn of(users: &Users, user: &ApiUser) -> Visible {
        Visible {
            all: user.has(Level::Monitoring),
            vhosts: users
                .user(&user.name)
                .map(|u| u.permissions.keys().cloned().collect())
                .unwrap_or_default(),
        }
    }

    pub(crate) fn sees(&self, vhost: &str) -> bool {
        self.all || self.vhosts.contains(vhost)
    }
}

/// Which vhosts a list shows: the one in the path, or those visible.
pub(crate) enum VhostFilter {
    One(String),
    Visible(Visible),
}

impl VhostFilter {
    /// The vhost in the path (checked as `App::check_vhost` does), or
    /// every vhost the user sees.
    pub(crate) fn new(
        users: &Users,
        user: &ApiUser,
        vhost: Option<&str>,
    ) -> Result<VhostFilter, ApiError> {
        match vhost {
            Some(vhost) => {
                check_vhost_in(users, user, vhost)?;
                Ok(VhostFilter::One(vhost.to_string()))
            }
            None => Ok(VhostFilter::Visible(Visible::of(users, user))),
        }
    }

    pub(crate) fn keeps(&self, vhost: &str) -> bool {
        match self {
            VhostFilter::One(v) => v == vhost,
            VhostFilter::Visible(visible) => visible.sees(vhost),
        }
    }
}

pub(crate) fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body).map_err(|_| ApiError::bad_request("not_json"))
}

fn name(s: &str) -> Result<ShortStr, ApiError> {
    short_str(s, "name").map_err(ApiError::bad_request)
}

fn flag(body: &Value, key: &str, default: bool) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(_) => Err(ApiError::bad_request(format!("{key}: not a boolean"))),
    }
}

fn arguments(body: &Value) -> Result<FieldTable, ApiError> {
    json_to_table(body.get("arguments").unwrap_or(&Value::Null), "arguments")
        .map_err(ApiError::bad_request)
}

/// `App::check_vhost` with the users at hand.
fn check_vhost_in(users: &Users, user: &ApiUser, vhost: &str) -> Result<(), ApiError> {
    if users.vhost(vhost).is_none() {
        return Err(ApiError::not_found());
    }
    if !users.may_open_vhost(&user.name, vhost) {
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: "User not authorised to access virtual host".into(),
        });
    }
    Ok(())
}

impl App {
    /// The access-control database (vhosts, users, permissions, limits)
    /// as shard 0 has it.
    pub(crate) async fn users(&self) -> Result<Users, ApiError> {
        match self.plane.ask(0, ControlRequest::Users).await? {
            ControlReply::Users(users) => Ok(*users),
            _ => Err(ApiError::internal("unexpected answer")),
        }
    }

    /// The vhost in a path: 404 if it does not exist, 401 if the user has
    /// no permissions on it (whatever its tags, as RabbitMQ's
    /// `user_matches_vhost`).
    pub(crate) async fn check_vhost(&self, user: &ApiUser, vhost: &str) -> Result<(), ApiError> {
        check_vhost_in(&self.users().await?, user, vhost)
    }

    /// What a list shows: the vhost in the path (checked), or every vhost
    /// the user sees.
    async fn filter(&self, user: &ApiUser, vhost: Option<&str>) -> Result<VhostFilter, ApiError> {
        VhostFilter::new(&self.users().await?, user, vhost)
    }

    pub(crate) async fn user(
        &self,
        headers: &HeaderMap,
        peer: &Peer,
        level: Level,
    ) -> Result<ApiUser, ApiError> {
        authenticate(&self.plane, &self.auth_cache, headers, peer.0.ip(), level).await
    }

    async fn reports(&self, queues: bool, connections: bool) -> Result<Vec<ShardReport>, ApiError> {
        let replies = self
            .plane
            .ask_all(|| ControlRequest::Report {
                queues,
                connections,
            })
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                ControlReply::Report(report) => Some(report),
                _ => None,
            })
            .collect())
    }

    async fn definitions(&self) -> Result<DefinitionsReport, ApiError> {
        self.definitions_with(false).await
    }

    async fn definitions_with(&self, export: bool) -> Result<DefinitionsReport, ApiError> {
        match self
            .plane
            .ask(0, ControlRequest::Definitions { export })
            .await?
        {
            ControlReply::Definitions(report) => Ok(report),
            _ => Err(ApiError::internal("unexpected answer")),
        }
    }

    /// A definitions change in `vhost`, made as `user` (checked against its
    /// permissions, as RabbitMQ's management API acts through a connection
    /// of the user's).
    async fn meta(
        &self,
        user: &ApiUser,
        vhost: &str,
        request: MetaRequest,
    ) -> Result<Method, ApiError> {
        self.meta_scoped(
            Scope {
                vhost: ShortStr::from(vhost),
                user: user.name.clone(),
                checked: true,
            },
            request,
        )
        .await
    }

    pub(crate) async fn meta_scoped(
        &self,
        scope: Scope,
        request: MetaRequest,
    ) -> Result<Method, ApiError> {
        match self
            .plane
            .ask(0, ControlRequest::Meta { scope, request })
            .await?
        {
            ControlReply::Meta(result) => result.map_err(ApiError::from_amqp),
            _ => Err(ApiError::internal("unexpected answer")),
        }
    }

    /// The queue as the replica has it (which shard owns it, its id).
    async fn queue_meta(&self, vhost: &str, queue: &str) -> Result<QueueMeta, ApiError> {
        let name = short_str(queue, "name").map_err(|_| ApiError::not_found())?;
        let vhost = short_str(vhost, "vhost").map_err(|_| ApiError::not_found())?;
        match self
            .plane
            .ask(0, ControlRequest::FindQueue { vhost, name })
            .await?
        {
            ControlReply::Queue(Some(meta)) => Ok(meta),
            _ => Err(ApiError::not_found()),
        }
    }
}

// ---------------------------------------------------------------- queues

/// A queue's counts for `Readings`, in `QUEUE_FIELDS` order, from its
/// figures.
pub(crate) fn queue_counts_of(
    ready: u32,
    unacked: u32,
    s: &crate::broker::queue::QueueStats,
) -> [u64; QUEUE_FIELDS] {
    [
        s.publish,
        s.deliver,
        s.deliver_no_ack,
        s.get,
        s.get_no_ack,
        s.ack,
        s.redeliver,
        u64::from(ready) + u64::from(unacked),
        u64::from(ready),
        u64::from(unacked),
    ]
}

impl App {
    /// One queue's report, from the shard that owns it.
    async fn queue_report(
        &self,
        user: &ApiUser,
        vhost: &str,
        name: &str,
    ) -> Result<QueueInfo, ApiError> {
        self.check_vhost(user, vhost).await?;
        let meta = self.queue_meta(vhost, name).await?;
        match self
            .plane
            .ask(meta.shard.index(), ControlRequest::QueueReport(meta.id))
            .await?
        {
            ControlReply::QueueReport(Some(info)) => Ok(info),
            _ => Err(ApiError::not_found()),
        }
    }
}

async fn queues(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    crate::mgmt::queue_list::list_queues(&app, &user, None, &params).await
}

async fn vhost_queues(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    crate::mgmt::queue_list::list_queues(&app, &user, Some(&vhost), &params).await
}

async fn queue(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let info = app.queue_report(&user, &vhost, &name).await?;
    let users = app.users().await?;
    crate::mgmt::queue_list::one_queue(&app, &info, &users)
}

async fn put_queue(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, queue)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let body = parse_body(&body)?;
    let queue = name(&queue)?;
    let declare = |passive: bool| -> Result<QueueDeclare, ApiError> {
        Ok(QueueDeclare {
            queue: queue.clone(),
            passive,
            durable: flag(&body, "durable", false)?,
            exclusive: false,
            auto_delete: flag(&body, "auto_delete", false)?,
            nowait: false,
            arguments: arguments(&body)?,
        })
    };
    // RabbitMQ answers 201 for a queue it created and 204 for one that
    // was there (and equivalent); without "durable" it is not durable.
    let existed = app
        .meta(&user, &vhost, MetaRequest::QueueDeclare(declare(true)?))
        .await
        .is_ok();
    app.meta(&user, &vhost, MetaRequest::QueueDeclare(declare(false)?))
        .await?;
    Ok(if existed { no_content() } else { created() })
}

async fn delete_queue(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, queue)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    app.queue_meta(&vhost, &queue).await?;
    let yes = |key: &str| params.get(key).is_some_and(|v| v == "true");
    app.meta(
        &user,
        &vhost,
        MetaRequest::QueueDelete(QueueDelete {
            queue: name(&queue)?,
            if_unused: yes("if-unused"),
            if_empty: yes("if-empty"),
            nowait: false,
        }),
    )
    .await?;
    Ok(no_content())
}

async fn purge_queue(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, queue)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let meta = app.queue_meta(&vhost, &queue).await?;
    match app
        .plane
        .ask(meta.shard.index(), ControlRequest::Purge(meta.id))
        .await?
    {
        ControlReply::Purged(Some(_)) => Ok(no_content()),
        _ => Err(ApiError::not_found()),
    }
}

async fn get_messages(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, queue)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let body = parse_body(&body)?;
    let count = body
        .get("count")
        .and_then(|c| {
            c.as_u64()
                .or_else(|| c.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| ApiError::bad_request("count: not an integer"))?;
    let count = count.min(crate::config::MANAGEMENT_GET_COUNT_MAX as u64) as u32;
    let ack_mode = match body.get("ackmode").and_then(Value::as_str) {
        Some("ack_requeue_true") | Some("reject_requeue_true") => GetAckMode::Requeue,
        Some("ack_requeue_false") => GetAckMode::Ack,
        Some("reject_requeue_false") => GetAckMode::Reject,
        _ => return Err(ApiError::bad_request("ackmode: not one of ack_requeue_true, ack_requeue_false, reject_requeue_true, reject_requeue_false")),
    };
    let encoding = body
        .get("encoding")
        .and_then(Value::as_str)
        .unwrap_or("auto");
    if encoding != "auto" && encoding != "base64" {
        return Err(ApiError::bad_request("encoding: not auto or base64"));
    }
    let truncate = body.get("truncate").and_then(|t| {
        t.as_u64()
            .or_else(|| t.as_str().and_then(|s| s.parse().ok()))
    });
    let meta = app.queue_meta(&vhost, &queue).await?;
    let reply = app
        .plane
        .ask(
            meta.shard.index(),
            ControlRequest::Get {
                queue: meta.id,
                count,
                ack_mode,
            },
        )
        .await?;
    let ControlReply::Messages(Some(messages)) = reply else {
        return Err(ApiError::not_found());
    };
    let items: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut body: &[u8] = &m.body;
            if let Some(limit) = truncate {
                body = &body[..body.len().min(limit as usize)];
            }
            let (payload, payload_encoding) = match std::str::from_utf8(body) {
                Ok(text) if encoding == "auto" => (text.to_string(), "string"),
                _ => (base64_encode(body), "base64"),
            };
            let properties = properties_to_json(&m.properties);
            // RabbitMQ renders empty properties as [] (an empty Erlang list).
            let properties = match &properties {
                Value::Object(map) if map.is_empty() => json!([]),
                _ => properties,
            };
            json!({
                "payload_bytes": m.body.len(),
                "redelivered": m.redelivered,
                "exchange": m.exchange.as_str(),
                "routing_key": m.routing_key.as_str(),
                "message_count": m.message_count,
                "properties": properties,
                "payload": payload,
                "payload_encoding": payload_encoding,
            })
        })
        .collect();
    Ok(json_response(&items))
}

// ------------------------------------------------------------- exchanges

#[derive(Serialize)]
struct ExchangeJson {
    name: String,
    vhost: String,
    #[serde(rename = "type")]
    kind: String,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: Value,
    policy: Option<String>,
    effective_policy_definition: Value,
    user_who_performed_action: &'static str,
}

fn exchange_json(vhost: &str, def: &ExchangeDef, users: &Users) -> ExchangeJson {
    let (policy, effective_policy_definition) =
        crate::mgmt::policy::applied(users, vhost, def.name.as_str(), false);
    ExchangeJson {
        name: def.name.as_str().to_string(),
        vhost: vhost.to_string(),
        kind: def.type_name().to_string(),
        durable: def.durable,
        auto_delete: def.auto_delete,
        internal: def.internal,
        arguments: table_to_json(&def.arguments),
        policy,
        effective_policy_definition,
        user_who_performed_action: "rmq-internal",
    }
}

impl App {
    async fn exchange_list(&self, filter: &VhostFilter) -> Result<Vec<ExchangeJson>, ApiError> {
        let users = self.users().await?;
        let mut items: Vec<ExchangeJson> = self
            .definitions()
            .await?
            .exchanges
            .iter()
            .filter(|(vhost, _)| filter.keeps(vhost.as_str()))
            .map(|(vhost, def)| exchange_json(vhost.as_str(), def, &users))
            .collect();
        items.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        Ok(items)
    }
}

/// The default exchange is "amq.default" in the API's paths.
fn exchange_name(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

async fn exchanges(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let filter = app.filter(&user, None).await?;
    list::respond(
        app.exchange_list(&filter).await?,
        |e| e.name.as_str(),
        &params,
    )
}

async fn vhost_exchanges(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let filter = app.filter(&user, Some(&vhost)).await?;
    list::respond(
        app.exchange_list(&filter).await?,
        |e| e.name.as_str(),
        &params,
    )
}

async fn exchange(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let wanted = exchange_name(&name);
    let definitions = app.definitions().await?;
    let (_, def) = definitions
        .exchanges
        .iter()
        .find(|(v, e)| v.as_str() == vhost && e.name.as_str() == wanted)
        .ok_or_else(ApiError::not_found)?;
    let users = app.users().await?;
    Ok(json_response(&exchange_json(&vhost, def, &users)))
}

async fn put_exchange(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let body = parse_body(&body)?;
    // RabbitMQ 3.10's defaults for a PUT: a direct exchange, not durable.
    let kind = body.get("type").and_then(Value::as_str).unwrap_or("direct");
    if exchange.starts_with("amq.") {
        // RabbitMQ's answer to a declare of a reserved name.
        return Err(ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorised",
            reason: "Access refused.".into(),
        });
    }
    let declare = |passive: bool| -> Result<ExchangeDeclare, ApiError> {
        Ok(ExchangeDeclare {
            exchange: name(&exchange)?,
            kind: name(kind)?,
            passive,
            durable: flag(&body, "durable", false)?,
            auto_delete: flag(&body, "auto_delete", false)?,
            internal: flag(&body, "internal", false)?,
            nowait: false,
            arguments: arguments(&body)?,
        })
    };
    let existed = app
        .meta(&user, &vhost, MetaRequest::ExchangeDeclare(declare(true)?))
        .await
        .is_ok();
    app.meta(&user, &vhost, MetaRequest::ExchangeDeclare(declare(false)?))
        .await?;
    Ok(if existed { no_content() } else { created() })
}

async fn delete_exchange(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, exchange)): Path<(String, String)>,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let wanted = exchange_name(&exchange);
    let exists = app
        .definitions()
        .await?
        .exchanges
        .iter()
        .any(|(v, e)| v.as_str() == vhost && e.name.as_str() == wanted);
    if !exists {
        return Err(ApiError::not_found());
    }
    app.meta(
        &user,
        &vhost,
        MetaRequest::ExchangeDelete(ExchangeDelete {
            exchange: name(wanted)?,
            if_unused: params.get("if-unused").is_some_and(|v| v == "true"),
            nowait: false,
        }),
    )
    .await?;
    Ok(no_content())
}

async fn publish(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, exchange)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let body = parse_body(&body)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("routing_key: missing"))?;
    let payload = body
        .get("payload")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("payload: missing"))?;
    let payload = match body.get("payload_encoding").and_then(Value::as_str) {
        Some("string") | None => payload.as_bytes().to_vec(),
        Some("base64") => {
            base64_decode(payload).ok_or_else(|| ApiError::bad_request("payload: not base64"))?
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "payload_encoding: not string or base64",
            ))
        }
    };
    let properties = properties_from_json(body.get("properties").unwrap_or(&Value::Null))
        .map_err(ApiError::bad_request)?;
    let reply = app
        .plane
        .ask(
            0,
            ControlRequest::Publish(Box::new(ControlPublish {
                vhost: name(&vhost)?,
                exchange: name(exchange_name(&exchange))?,
                routing_key: name(routing_key)?,
                properties,
                body: bytes::Bytes::from(payload),
            })),
        )
        .await?;
    match reply {
        ControlReply::Routed(Ok(routed)) => Ok(json_response(&json!({ "routed": routed }))),
        // RabbitMQ reports the channel error it got, as a 400.
        ControlReply::Routed(Err(e)) => Err(ApiError::bad_request(format!(
            "{} {} - {}",
            e.code.code(),
            e.code.name(),
            e.text
        ))),
        _ => Err(ApiError::internal("unexpected answer")),
    }
}

// -------------------------------------------------------------- bindings

#[derive(Serialize)]
struct BindingJson {
    source: String,
    vhost: String,
    destination: String,
    destination_type: &'static str,
    routing_key: String,
    arguments: Value,
    properties_key: String,
}

/// RabbitMQ's `properties_key`: the routing key (or "~" if empty), and a
/// hash of the arguments when there are any.
fn properties_key(routing_key: &str, arguments: &FieldTable) -> String {
    let key = if routing_key.is_empty() {
        "~".to_string()
    } else {
        percent_encode(routing_key)
    };
    if arguments.iter().next().is_none() {
        return key;
    }
    let text = table_to_json(arguments).to_string();
    // FNV-1a: any stable digest of the arguments tells bindings apart.
    let digest = text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!(
        "{key}~{}",
        base64_encode(&digest.to_be_bytes()).trim_end_matches('=')
    )
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn default_bindings(definitions: &DefinitionsReport) -> Vec<BindingJson> {
    // RabbitMQ lists every queue's implicit binding to the default exchange.
    definitions
        .queues
        .iter()
        .map(|q| BindingJson {
            source: String::new(),
            vhost: q.vhost.as_str().to_string(),
            destination: q.name.as_str().to_string(),
            destination_type: "queue",
            routing_key: q.name.as_str().to_string(),
            arguments: json!({}),
            properties_key: percent_encode(q.name.as_str()),
        })
        .collect()
}

fn binding_list(definitions: &DefinitionsReport) -> Vec<BindingJson> {
    let mut items = default_bindings(definitions);
    items.sort_by(|a, b| (&a.vhost, &a.destination).cmp(&(&b.vhost, &b.destination)));
    let mut explicit: Vec<BindingJson> = definitions
        .bindings
        .iter()
        .map(|b| BindingJson {
            source: b.source.as_str().to_string(),
            vhost: b.vhost.as_str().to_string(),
            destination: b.destination.as_str().to_string(),
            destination_type: b.destination_type,
            routing_key: b.routing_key.as_str().to_string(),
            arguments: table_to_json(&b.arguments),
            properties_key: properties_key(b.routing_key.as_str(), &b.arguments),
        })
        .collect();
    explicit.sort_by(|a, b| {
        (&a.vhost, &a.source, &a.destination, &a.routing_key).cmp(&(
            &b.vhost,
            &b.source,
            &b.destination,
            &b.routing_key,
        ))
    });
    items.extend(explicit);
    items
}

async fn bindings(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let filter = app.filter(&user, None).await?;
    let items: Vec<BindingJson> = binding_list(&app.definitions().await?)
        .into_iter()
        .filter(|b| filter.keeps(&b.vhost))
        .collect();
    list::respond(items, |b| b.source.as_str(), &params)
}

async fn vhost_bindings(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let items: Vec<BindingJson> = binding_list(&app.definitions().await?)
        .into_iter()
        .filter(|b| b.vhost == vhost)
        .collect();
    list::respond(items, |b| b.source.as_str(), &params)
}

async fn filtered_bindings(
    app: &App,
    vhost: &str,
    keep: impl Fn(&BindingJson) -> bool,
) -> Result<Vec<BindingJson>, ApiError> {
    let definitions = app.definitions().await?;
    Ok(binding_list(&definitions)
        .into_iter()
        .filter(|b| b.vhost == vhost && keep(b))
        .collect())
}

async fn exchange_bindings_source(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, exchange)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let wanted = exchange_name(&exchange).to_string();
    let items = filtered_bindings(&app, &vhost, |b| b.source == wanted).await?;
    Ok(json_response(&items))
}

async fn exchange_bindings_destination(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, exchange)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let items = filtered_bindings(&app, &vhost, |b| {
        b.destination_type == "exchange" && b.destination == exchange
    })
    .await?;
    Ok(json_response(&items))
}

async fn queue_bindings(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, queue)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let items = filtered_bindings(&app, &vhost, |b| {
        b.destination_type == "queue" && b.destination == queue
    })
    .await?;
    Ok(json_response(&items))
}

/// "q" or "e" in a binding path.
fn destination_type(kind: &str) -> Result<&'static str, ApiError> {
    match kind {
        "q" => Ok("queue"),
        "e" => Ok("exchange"),
        _ => Err(ApiError::not_found()),
    }
}

async fn bindings_between(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source).to_string();
    let items = filtered_bindings(&app, &vhost, |b| {
        b.source == source && b.destination_type == kind && b.destination == destination
    })
    .await?;
    Ok(json_response(&items))
}

async fn binding(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source).to_string();
    let items = filtered_bindings(&app, &vhost, |b| {
        b.source == source
            && b.destination_type == kind
            && b.destination == destination
            && b.properties_key == props
    })
    .await?;
    match items.into_iter().next() {
        Some(item) => Ok(json_response(&item)),
        None => Err(ApiError::not_found()),
    }
}

async fn create_binding(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, source, kind, destination)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let kind = destination_type(&kind)?;
    let body = parse_body(&body)?;
    let routing_key = body
        .get("routing_key")
        .and_then(Value::as_str)
        .unwrap_or("");
    let arguments = arguments(&body)?;
    let request = if kind == "queue" {
        MetaRequest::QueueBind(QueueBind {
            queue: name(&destination)?,
            exchange: name(exchange_name(&source))?,
            routing_key: name(routing_key)?,
            nowait: false,
            arguments: arguments.clone(),
        })
    } else {
        MetaRequest::ExchangeBind(ExchangeBind {
            destination: name(&destination)?,
            source: name(exchange_name(&source))?,
            routing_key: name(routing_key)?,
            nowait: false,
            arguments: arguments.clone(),
        })
    };
    app.meta(&user, &vhost, request).await?;
    let mut response = created();
    let location = format!(
        "/api/bindings/{}/e/{}/{}/{}/{}",
        percent_encode(&vhost),
        percent_encode(&source),
        &kind[..1],
        percent_encode(&destination),
        properties_key(routing_key, &arguments)
    );
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

async fn delete_binding(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, source, kind, destination, props)): Path<(String, String, String, String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let kind = destination_type(&kind)?;
    let source = exchange_name(&source).to_string();
    let definitions = app.definitions().await?;
    let found = definitions.bindings.iter().find(|b| {
        b.vhost.as_str() == vhost
            && b.source.as_str() == source
            && b.destination_type == kind
            && b.destination.as_str() == destination
            && properties_key(b.routing_key.as_str(), &b.arguments) == props
    });
    let Some(found) = found else {
        return Err(ApiError::not_found());
    };
    let request = if kind == "queue" {
        MetaRequest::QueueUnbind(QueueUnbind {
            queue: found.destination.clone(),
            exchange: found.source.clone(),
            routing_key: found.routing_key.clone(),
            arguments: found.arguments.clone(),
        })
    } else {
        MetaRequest::ExchangeUnbind(ExchangeUnbind {
            destination: found.destination.clone(),
            source: found.source.clone(),
            routing_key: found.routing_key.clone(),
            nowait: false,
            arguments: found.arguments.clone(),
        })
    };
    app.meta(&user, &vhost, request).await?;
    Ok(no_content())
}

// ------------------------------------------- connections, channels, consumers

/// A connection's name in the API: its peer, and where warren keeps it
/// (shard and connection id), which is how DELETE finds it.
fn connection_name(c: &ConnectionInfo) -> String {
    format!("{} -> warren/{}/{}", c.peer, c.conn.shard.0, c.conn.conn.0)
}

fn parse_connection_name(name: &str) -> Option<(ShardId, ConnId)> {
    let (_, place) = name.rsplit_once(" -> warren/")?;
    let (shard, conn) = place.split_once('/')?;
    Some((ShardId(shard.parse().ok()?), ConnId(conn.parse().ok()?)))
}

impl App {
    fn connection_json(&self, c: &ConnectionInfo) -> Value {
        json!({
            "name": connection_name(c),
            "node": self.node.name,
            "vhost": c.vhost.as_str(),
            "user": c.user,
            "user_who_performed_action": c.user,
            "state": c.state,
            "type": "network",
            "protocol": "AMQP 0-9-1",
            "auth_mechanism": "PLAIN",
            "ssl": false,
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "host": self.node.amqp_host(),
            "port": self.node.amqp_port(),
            "connected_at": c.connected_at_ms,
            "channels": c.channels.len(),
            "channel_max": c.channel_max,
            "frame_max": c.frame_max,
            "timeout": c.heartbeat_s,
            "client_properties": crate::mgmt::json::table_to_json(&c.client_properties),
            "warren_shard": c.conn.shard.0,
            "warren_published": c.published,
        })
    }

    /// Connections a user may see: all for monitoring and administrator,
    /// its own for the rest (as RabbitMQ).
    async fn connection_infos(&self, user: &ApiUser) -> Result<Vec<ConnectionInfo>, ApiError> {
        let all = user.has(Level::Monitoring);
        let mut out: Vec<ConnectionInfo> = self
            .reports(false, true)
            .await?
            .into_iter()
            .flat_map(|r| r.connections)
            .filter(|c| all || c.user == user.name)
            .collect();
        out.sort_by_key(|c| (c.conn.shard.0, c.conn.conn.0));
        Ok(out)
    }
}

async fn connections(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult {
    connections_in(app, peer, headers, params, None).await
}

async fn connections_in(
    app: App,
    peer: Peer,
    headers: HeaderMap,
    params: Params,
    vhost: Option<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    if let Some(vhost) = &vhost {
        app.check_vhost(&user, vhost).await?;
    }
    let items: Vec<Value> = app
        .connection_infos(&user)
        .await?
        .iter()
        .filter(|c| vhost.as_deref().is_none_or(|v| c.vhost.as_str() == v))
        .map(|c| app.connection_json(c))
        .collect();
    list::respond(items, |c| c["name"].as_str().unwrap_or(""), &params)
}

async fn vhost_connections(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    connections_in(app, peer, headers, params, Some(vhost)).await
}

async fn connection(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let found = app
        .connection_infos(&user)
        .await?
        .into_iter()
        .find(|c| connection_name(c) == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(json_response(&app.connection_json(&found)))
}

async fn close_connection(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let (shard, conn) = parse_connection_name(&name).ok_or_else(ApiError::not_found)?;
    if shard.index() >= app.plane.shard_count() {
        return Err(ApiError::not_found());
    }
    if !user.has(Level::Administrator) {
        // Others may close only their own connections, as in RabbitMQ.
        let own = app
            .connection_infos(&user)
            .await?
            .iter()
            .any(|c| c.conn.shard == shard && c.conn.conn == conn);
        if !own {
            return Err(ApiError::not_found());
        }
    }
    // RabbitMQ's reason, unless the client gave one (X-Reason).
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin")
        .to_string();
    match app
        .plane
        .ask(
            shard.index(),
            ControlRequest::CloseConnection { conn, reason },
        )
        .await?
    {
        ControlReply::Closed(true) => Ok(no_content()),
        _ => Err(ApiError::not_found()),
    }
}

async fn channels(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult {
    channels_in(app, peer, headers, params, None).await
}

async fn channels_in(
    app: App,
    peer: Peer,
    headers: HeaderMap,
    params: Params,
    vhost: Option<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    if let Some(vhost) = &vhost {
        app.check_vhost(&user, vhost).await?;
    }
    let mut items = Vec::new();
    for c in app.connection_infos(&user).await? {
        if vhost.as_deref().is_some_and(|v| c.vhost.as_str() != v) {
            continue;
        }
        let connection_name = connection_name(&c);
        for ch in &c.channels {
            items.push(json!({
                "name": format!("{} ({})", connection_name, ch.number),
                "node": app.node.name,
                "vhost": c.vhost.as_str(),
                "user": c.user,
                "user_who_performed_action": c.user,
                "number": ch.number,
                "state": "running",
                "consumer_count": ch.consumers,
                "messages_unacknowledged": ch.unacked,
                "messages_unconfirmed": 0,
                "messages_uncommitted": 0,
                "acks_uncommitted": 0,
                "prefetch_count": ch.prefetch_count,
                "global_prefetch_count": ch.global_prefetch_count,
                "confirm": ch.confirm,
                "transactional": ch.transactional,
                "connection_details": {
                    "name": connection_name,
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                },
            }));
        }
    }
    list::respond(items, |c| c["name"].as_str().unwrap_or(""), &params)
}

async fn vhost_channels(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    channels_in(app, peer, headers, params, Some(vhost)).await
}

async fn consumers(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> ApiResult {
    consumers_in(app, peer, headers, params, None).await
}

async fn consumers_in(
    app: App,
    peer: Peer,
    headers: HeaderMap,
    params: Params,
    vhost: Option<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let filter = app.filter(&user, vhost.as_deref()).await?;
    let reports = app.reports(true, true).await?;
    let connections: HashMap<(u16, u64), &ConnectionInfo> = reports
        .iter()
        .flat_map(|r| r.connections.iter())
        .map(|c| ((c.conn.shard.0, c.conn.conn.0), c))
        .collect();
    let mut items = Vec::new();
    for report in &reports {
        for consumer in &report.consumers {
            if !filter.keeps(consumer.vhost.as_str()) {
                continue;
            }
            let connection = connections.get(&(consumer.conn.shard.0, consumer.conn.conn.0));
            let (connection_name, peer_host, peer_port, user) = match connection {
                Some(c) => (
                    connection_name(c),
                    c.peer.ip().to_string(),
                    c.peer.port(),
                    c.user.clone(),
                ),
                None => (String::new(), String::new(), 0, String::new()),
            };
            items.push(json!({
                "consumer_tag": consumer.tag.as_str(),
                "queue": {"name": consumer.queue.as_str(), "vhost": consumer.vhost.as_str()},
                "channel_details": {
                    "name": format!("{} ({})", connection_name, consumer.channel),
                    "connection_name": connection_name,
                    "node": app.node.name,
                    "number": consumer.channel,
                    "peer_host": peer_host,
                    "peer_port": peer_port,
                    "user": user,
                },
                "ack_required": !consumer.no_ack,
                "exclusive": consumer.exclusive,
                "prefetch_count": consumer.prefetch_count,
                "active": true,
                "activity_status": "up",
                "arguments": {},
            }));
        }
    }
    list::respond(items, |c| c["consumer_tag"].as_str().unwrap_or(""), &params)
}

async fn vhost_consumers(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    Query(params): Query<Params>,
) -> ApiResult {
    consumers_in(app, peer, headers, params, Some(vhost)).await
}

// --------------------------------------------------------- node, overview

async fn whoami(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    Ok(json_response(
        &json!({"name": user.name, "tags": user.tags}),
    ))
}

async fn extensions(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Management).await?;
    Ok(json_response(&json!([])))
}

impl App {
    fn node_json(&self, reports: &[ShardReport]) -> Value {
        let alarms = self.node.alarm_board.raised();
        let node = &self.node;
        let queue_memory: u64 = reports.iter().map(|r| r.queue_memory_bytes).sum();
        json!({
            "name": node.name,
            "type": "disc",
            "running": true,
            "os_pid": std::process::id().to_string(),
            "uptime": node.started.elapsed().as_millis() as u64,
            "mem_used": (node.resident_bytes)(),
            "mem_limit": node.memory_limit_bytes,
            "mem_alarm": alarms.contains(Resource::Memory),
            "disk_free_limit": node.disk_free_limit_bytes,
            "disk_free_alarm": alarms.contains(Resource::Disk),
            "processors": node.shard_count,
            "partitions": [],
            "applications": [],
            "being_drained": false,
            "warren_shards": node.shard_count,
            "warren_queue_memory": queue_memory,
        })
    }
}

async fn nodes(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Monitoring).await?;
    let reports = app.reports(false, false).await?;
    Ok(json_response(&json!([app.node_json(&reports)])))
}

async fn node(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Monitoring).await?;
    if name != app.node.name {
        return Err(ApiError::not_found());
    }
    let reports = app.reports(false, false).await?;
    Ok(json_response(&app.node_json(&reports)))
}

/// One shard's figures in /api/overview (warren's own `warren_shards`).
#[derive(Serialize)]
struct ShardJson {
    id: usize,
    connections: u64,
    channels: u64,
    /// Queues the shard owns, and the messages in them (ready and unacked).
    queues: u64,
    messages: u64,
    /// Messages per second published by the shard's connections.
    publish_rate: f64,
    /// Messages per second delivered (and got) from the shard's queues.
    deliver_rate: f64,
    /// The fraction of time its reactor spent running tasks, over the
    /// rate's interval (the rate of Prometheus's
    /// `warren_shard_reactor_busy_seconds_total`); since the shard started
    /// on the first reading (`warren_shard_reactor_busy_ratio`).
    busy_ratio: f64,
}

impl App {
    /// Every shard's figures, as a Prometheus scrape reads them: counters
    /// each shard owns, deleted queues' and closed connections' included,
    /// so that they never go backwards.
    async fn shard_metrics(&self) -> Result<Vec<ShardMetrics>, ApiError> {
        let replies = self
            .plane
            .ask_all(|| ControlRequest::Metrics { per_object: false })
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                ControlReply::Metrics(m) => Some(*m),
                _ => None,
            })
            .collect())
    }

    /// `warren_shards`, with each shard's rates since the last reading.
    fn shards_json(
        &self,
        shards: &[ShardMetrics],
        rates: &mut Rates,
        now: Instant,
    ) -> Vec<ShardJson> {
        let uptime_s = self.node.started.elapsed().as_secs_f64().max(1e-9);
        rates.shards.resize_with(shards.len(), Default::default);
        shards
            .iter()
            .zip(rates.shards.iter_mut())
            .map(|(s, readings)| {
                let busy_us = s.reactor_busy.as_micros() as u64;
                let counts = [
                    s.published,
                    delivered(&s.classic) + delivered(&s.quorum),
                    busy_us,
                ];
                let (publish_rate, deliver_rate, busy_ratio) =
                    match readings.observe_since(now, counts) {
                        Some(r) => (r[0], r[1], r[2] / 1e6),
                        None => (0.0, 0.0, s.reactor_busy.as_secs_f64() / uptime_s),
                    };
                ShardJson {
                    id: s.shard,
                    connections: s.connections,
                    channels: s.channels,
                    queues: s.queues,
                    messages: s.messages_ready + s.messages_unacked,
                    publish_rate: publish_rate.max(0.0),
                    deliver_rate: deliver_rate.max(0.0),
                    busy_ratio: busy_ratio.clamp(0.0, 1.0),
                }
            })
            .collect()
    }
}

async fn overview(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    // Totals from the shards' own counters (no list of every queue and
    // connection), and the exchanges from shard 0's replica.
    let (shards, definitions) = tokio::try_join!(app.shard_metrics(), app.definitions())?;
    let mut totals = [0u64; QUEUE_FIELDS];
    let (mut queues, mut connections, mut channels, mut consumers) = (0, 0, 0, 0);
    for s in &shards {
        connections += s.connections;
        channels += s.channels;
        consumers += s.consumers;
        queues += s.queues;
        // The node's publish count is what its connections published, not
        // what its queues took (a fanout publish counts once).
        totals[0] += s.published;
        for stats in [&s.classic, &s.quorum] {
            totals[1] += stats.deliver;
            totals[2] += stats.deliver_no_ack;
            totals[3] += stats.get;
            totals[4] += stats.get_no_ack;
            totals[5] += stats.ack;
            totals[6] += stats.redeliver;
        }
        totals[7] += s.messages_ready + s.messages_unacked;
        totals[8] += s.messages_ready;
        totals[9] += s.messages_unacked;
    }
    let now = Instant::now();
    let (rates, warren_shards) = {
        let mut readings = app.rates.lock().unwrap_or_else(|e| e.into_inner());
        let rates = readings.overview.observe(now, totals);
        (rates, app.shards_json(&shards, &mut readings, now))
    };
    let node = &app.node;
    let listeners: Vec<Value> = node
        .amqp_listeners
        .iter()
        .map(|a| json!({"node": node.name, "protocol": "amqp", "ip_address": a.ip().to_string(), "port": a.port(), "socket_opts": []}))
        .chain(node.management_listeners.iter().map(|a| {
            json!({"node": node.name, "protocol": "http", "ip_address": a.ip().to_string(), "port": a.port(), "socket_opts": []})
        }))
        .collect();
    let mut body = json!({
        "management_version": crate::mgmt::RABBITMQ_VERSION,
        "rates_mode": "basic",
        "sample_retention_policies": {"global": [600, 3600, 28800, 86400], "basic": [600, 3600], "detailed": [600]},
        "exchange_types": [
            {"name": "direct", "description": "AMQP direct exchange, as per the AMQP specification", "enabled": true},
            {"name": "fanout", "description": "AMQP fanout exchange, as per the AMQP specification", "enabled": true},
            {"name": "headers", "description": "AMQP headers exchange, as per the AMQP specification", "enabled": true},
            {"name": "topic", "description": "AMQP topic exchange, as per the AMQP specification", "enabled": true},
            {"name": "x-delayed-message", "description": "Delayed Message Exchange", "enabled": true},
        ],
        "product_version": env!("CARGO_PKG_VERSION"),
        "product_name": "warren",
        "rabbitmq_version": crate::mgmt::RABBITMQ_VERSION,
        "cluster_name": node.name,
        "erlang_version": "none (warren is written in Rust)",
        "erlang_full_version": "none",
        "disable_stats": false,
        "enable_queue_totals": true,
        "message_stats": {
            "publish": totals[0], "publish_details": {"rate": rates[0]},
            "deliver": totals[1], "deliver_details": {"rate": rates[1]},
            "deliver_no_ack": totals[2], "deliver_no_ack_details": {"rate": rates[2]},
            "get": totals[3], "get_details": {"rate": rates[3]},
            "get_no_ack": totals[4], "get_no_ack_details": {"rate": rates[4]},
            "deliver_get": totals[1] + totals[2] + totals[3] + totals[4],
            "deliver_get_details": {"rate": rates[1] + rates[2] + rates[3] + rates[4]},
            "ack": totals[5], "ack_details": {"rate": rates[5]},
            "redeliver": totals[6], "redeliver_details": {"rate": rates[6]},
        },
        "queue_totals": {
            "messages": totals[7], "messages_details": {"rate": rates[7]},
            "messages_ready": totals[8], "messages_ready_details": {"rate": rates[8]},
            "messages_unacknowledged": totals[9], "messages_unacknowledged_details": {"rate": rates[9]},
        },
        "object_totals": {
            "channels": channels,
            "connections": connections,
            "consumers": consumers,
            "exchanges": definitions.exchanges.len(),
            "queues": queues,
        },
        "statistics_db_event_queue": 0,
        "node": node.name,
        "listeners": listeners,
        "contexts": node.management_listeners.iter().map(|a| json!({"node": node.name, "description": "RabbitMQ Management", "path": "/", "port": a.port().to_string()})).collect::<Vec<_>>(),
        "warren_shards": warren_shards,
    });
    if !user.has(Level::Monitoring) {
        // RabbitMQ leaves the node's listeners out for plain management users.
        if let Some(map) = body.as_object_mut() {
            map.remove("listeners");
            map.remove("contexts");
        }
    }
    Ok(json_response(&body))
}

async fn health_alarms(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Management).await?;
    let raised = app.node.alarm_board.raised();
    if raised.is_empty() {
        return Ok(json_response(&json!({"status": "ok"})));
    }
    let mut alarms = Vec::new();
    for (resource, name) in [(Resource::Memory, "memory"), (Resource::Disk, "disk")] {
        if raised.contains(resource) {
            alarms.push(json!({"node": app.node.name, "resource": name}));
        }
    }
    let body = json!({"status": "failed", "reason": "resource alarm(s) in effect in the cluster", "alarms": alarms});
    let mut response = json_response(&body);
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    Ok(response)
}

/// RabbitMQ's aliveness test: declares the queue `aliveness-test`,
/// publishes a message to it through the default exchange and gets it back.
async fn aliveness_test(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    const QUEUE: &str = "aliveness-test";
    app.meta(
        &user,
        &vhost,
        MetaRequest::QueueDeclare(QueueDeclare {
            queue: ShortStr::from(QUEUE),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        }),
    )
    .await?;
    let meta = app.queue_meta(&vhost, QUEUE).await?;
    let reply = app
        .plane
        .ask(
            0,
            ControlRequest::Publish(Box::new(ControlPublish {
                vhost: name(&vhost)?,
                exchange: ShortStr::from(""),
                routing_key: ShortStr::from(QUEUE),
                properties: Default::default(),
                body: bytes::Bytes::from_static(b"test_message"),
            })),
        )
        .await?;
    if !matches!(reply, ControlReply::Routed(Ok(true))) {
        return Err(ApiError::internal("aliveness test message was not routed"));
    }
    // The publish reaches the queue's shard through a mailbox: try a few
    // times, within the control plane's own deadline.
    let deadline = Instant::now() + crate::config::CONTROL_REPLY_TIMEOUT;
    loop {
        let reply = app
            .plane
            .ask(
                meta.shard.index(),
                ControlRequest::Get {
                    queue: meta.id,
                    count: 1,
                    ack_mode: GetAckMode::Ack,
                },
            )
            .await?;
        if let ControlReply::Messages(Some(messages)) = reply {
            if !messages.is_empty() {
                return Ok(json_response(&json!({"status": "ok"})));
            }
        }
        if Instant::now() > deadline {
            return Err(ApiError::internal("aliveness test message did not arrive"));
        }
        tokio::time::sleep(crate::config::TICK).await;
    }
}

// ------------------------------------------- vhosts, users, permissions
// (in `mgmt::access`)

impl App {
    /// Whether the firehose is on for `vhost`, after turning it on or off
    /// on every shard when `on` says so.
    pub(crate) async fn tracing(&self, vhost: &str, on: Option<bool>) -> Result<bool, ApiError> {
        let replies = match on {
            Some(_) => {
                self.plane
                    .ask_all(|| ControlRequest::SetTracing {
                        vhost: vhost.to_string(),
                        on,
                    })
                    .await?
            }
            // Every shard has the same switches: one answer is enough.
            None => vec![
                self.plane
                    .ask(
                        0,
                        ControlRequest::SetTracing {
                            vhost: vhost.to_string(),
                            on: None,
                        },
                    )
                    .await?,
            ],
        };
        Ok(replies.iter().any(
            |reply| matches!(reply, ControlReply::Tracing(on) if on.iter().any(|v| v == vhost)),
        ))
    }
}

impl App {
    /// The definitions export as JSON, with RabbitMQ's top-level members.
    pub(crate) async fn export(&self) -> Result<Value, ApiError> {
        let definitions = self.definitions_with(true).await?;
        let text = definitions.export_json.unwrap_or_default();
        let mut export: Value =
            serde_json::from_str(&text).map_err(|e| ApiError::internal(e.to_string()))?;
        if let Some(map) = export.as_object_mut() {
            map.insert(
                "rabbit_version".into(),
                json!(crate::mgmt::RABBITMQ_VERSION),
            );
            map.insert(
                "rabbitmq_version".into(),
                json!(crate::mgmt::RABBITMQ_VERSION),
            );
            map.insert("product_name".into(), json!("warren"));
            map.insert("product_version".into(), json!(env!("CARGO_PKG_VERSION")));
            for key in [
                "permissions",
                "topic_permissions",
                "parameters",
                "global_parameters",
                "policies",
                "users",
                "queues",
                "exchanges",
                "bindings",
            ] {
                map.entry(key).or_insert_with(|| json!([]));
            }
        }
        Ok(export)
    }
}

// ---------------------------------------------------------- definitions

async fn export_definitions(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    Ok(json_response(&app.export().await?))
}

async fn export_vhost_definitions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Administrator).await?;
    app.check_vhost(&user, &vhost).await?;
    let export = app.export().await?;
    // A vhost's export holds only what lives in it, without "vhost" members.
    let mut out = serde_json::Map::new();
    for key in [
        "rabbit_version",
        "rabbitmq_version",
        "product_name",
        "product_version",
    ] {
        out.insert(key.into(), export[key].clone());
    }
    for key in ["queues", "exchanges", "bindings", "policies", "parameters"] {
        let items: Vec<Value> = export[key]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|item| {
                        let mut item = item.clone();
                        if let Some(map) = item.as_object_mut() {
                            map.remove("vhost");
                        }
                        item
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.insert(key.into(), Value::Array(items));
    }
    Ok(json_response(&Value::Object(out)))
}

async fn import_definitions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Administrator).await?;
    import(&app, &user, &body, None).await
}

async fn import_vhost_definitions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Administrator).await?;
    app.check_vhost(&user, &vhost).await?;
    import(&app, &user, &body, Some(&vhost)).await
}

/// Imports a definitions document as RabbitMQ does: vhosts, users,
/// permissions and limits first, then each vhost's exchanges, queues and
/// bindings, one declare at a time through the metadata owner (not
/// checked against the importing administrator's permissions).
async fn import(app: &App, user: &ApiUser, body: &Bytes, vhost: Option<&str>) -> ApiResult {
    let mut value = parse_body(body)?;
    if let Some(vhost) = vhost {
        // A vhost's export names no vhost in its items: they are in this one.
        for key in ["queues", "exchanges", "bindings"] {
            if let Some(items) = value.get_mut(key).and_then(Value::as_array_mut) {
                for item in items {
                    if let Some(map) = item.as_object_mut() {
                        map.insert("vhost".into(), json!(vhost));
                    }
                }
            }
        }
    }
    let text = value.to_string();
    let parsed = crate::metadata::definitions::Definitions::from_json(
        &text,
        crate::metadata::definitions::Source::Import,
    )
    .map_err(ApiError::bad_request)?;
    let definitions = parsed.definitions;
    crate::mgmt::access::import_access(app, &definitions, user).await?;
    let top = (
        crate::metadata::vhost::DEFAULT_VHOST,
        &definitions.exchanges[..],
        &definitions.queues[..],
        &definitions.bindings[..],
    );
    let others = definitions.others.iter().map(|(name, c)| {
        (
            name.as_str(),
            &c.exchanges[..],
            &c.queues[..],
            &c.bindings[..],
        )
    });
    for (vhost, exchanges, queues, bindings) in std::iter::once(top).chain(others) {
        let scope = || Scope {
            vhost: ShortStr::from(vhost),
            user: user.name.clone(),
            checked: false,
        };
        for exchange in exchanges {
            app.meta_scoped(
                scope(),
                MetaRequest::ExchangeDeclare(ExchangeDeclare {
                    exchange: exchange.name.clone(),
                    kind: ShortStr::from(exchange.type_name()),
                    passive: false,
                    durable: exchange.durable,
                    auto_delete: exchange.auto_delete,
                    internal: exchange.internal,
                    nowait: false,
                    arguments: exchange.arguments.clone(),
                }),
            )
            .await?;
        }
        for queue in queues {
            app.meta_scoped(
                scope(),
                MetaRequest::QueueDeclare(QueueDeclare {
                    queue: queue.name.clone(),
                    passive: false,
                    durable: queue.durable,
                    exclusive: false,
                    auto_delete: queue.auto_delete,
                    nowait: false,
                    arguments: queue.arguments.clone(),
                }),
            )
            .await?;
        }
        for binding in bindings {
            let request = match binding.destination_kind {
                crate::metadata::definitions::DestinationKind::Queue => {
                    MetaRequest::QueueBind(QueueBind {
                        queue: binding.destination.clone(),
                        exchange: binding.source.clone(),
                        routing_key: binding.routing_key.clone(),
                        nowait: false,
                        arguments: binding.arguments.clone(),
                    })
                }
                crate::metadata::definitions::DestinationKind::Exchange => {
                    MetaRequest::ExchangeBind(ExchangeBind {
                        destination: binding.destination.clone(),
                        source: binding.source.clone(),
                        routing_key: binding.routing_key.clone(),
                        nowait: false,
                        arguments: binding.arguments.clone(),
                    })
                }
            };
            app.meta_scoped(scope(), request).await?;
        }
    }
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_round_trip() {
        assert_eq!(
            parse_connection_name("127.0.0.1:5000 -> warren/1/42"),
            Some((ShardId(1), ConnId(42)))
        );
        assert_eq!(
            parse_connection_name("127.0.0.1:5000 -> 127.0.0.1:5672"),
            None
        );
    }

    #[test]
    fn properties_keys_are_rabbitmqs_for_plain_bindings() {
        assert_eq!(properties_key("", &FieldTable::default()), "~");
        assert_eq!(properties_key("a.b", &FieldTable::default()), "a.b");
        assert_eq!(properties_key("a b", &FieldTable::default()), "a%20b");
    }
}
