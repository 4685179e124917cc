//! The management API's access-control routes, as RabbitMQ 3.10 has them:
//! vhosts, users, permissions, topic permissions, vhost and user limits.
//!
//! Reads come from shard 0's copy of the access-control database
//! (`ControlRequest::Users`); every change goes to the metadata owner as
//! a `MetaRequest::Access`, which checks it, applies it on every shard and
//! writes the definitions file before the answer, as an AMQP declare is.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::broker::metadata::{MetaRequest, Scope};
use crate::metadata::auth::{
    AccessChange, Permission, TopicPermission, User, UserLimits, Users, VhostDef, VhostLimits,
};
use crate::metadata::definitions::{Definitions, Source};
use crate::metadata::vhost::DEFAULT_VHOST;
use crate::mgmt::api::{created, json_response, no_content, parse_body, ApiResult, App, Peer};
use crate::mgmt::auth::{ApiUser, Level};
use crate::mgmt::error::ApiError;
use crate::mgmt::rates::QUEUE_FIELDS;
use warren_protocol::ShortStr;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route(
            "/api/vhosts/{vhost}/topic-permissions",
            get(vhost_topic_permissions),
        )
        .route("/api/users", get(users))
        .route(
            "/api/users/without-permissions",
            get(users_without_permissions),
        )
        .route(
            "/api/users/{user}",
            get(user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{user}/permissions", get(user_permissions))
        .route(
            "/api/users/{user}/topic-permissions",
            get(user_topic_permissions),
        )
        .route("/api/permissions", get(permissions))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/topic-permissions", get(topic_permissions))
        .route(
            "/api/topic-permissions/{vhost}/{user}",
            get(topic_permission)
                .put(put_topic_permission)
                .delete(delete_topic_permission),
        )
        .route("/api/vhost-limits", get(vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(one_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/user-limits", get(user_limits))
        .route("/api/user-limits/{user}", get(one_user_limits))
        .route(
            "/api/user-limits/{user}/{name}",
            axum::routing::put(put_user_limit).delete(delete_user_limit),
        )
}

impl App {
    fn forget_logins(&self) {
        self.auth_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// Has the metadata owner make `change`: Err with RabbitMQ's refusal
    /// (`no_such_vhost: v`, ...) as a 400.
    pub(crate) async fn access_change(&self, change: AccessChange) -> Result<(), ApiError> {
        let (sender, receiver) = crossbeam_channel::bounded(1);
        self.meta_scoped(
            Scope {
                vhost: ShortStr::from_static(DEFAULT_VHOST),
                user: String::new(),
                checked: false,
            },
            MetaRequest::Access {
                change: Box::new(change),
                reply: Some(sender),
            },
        )
        .await?;
        // The owner answered the control request after this one, so the
        // result is already there.
        match receiver.try_recv() {
            Ok(Ok(())) => {
                // A cached login may have lost its password or tags:
                // the next request is checked again.
                self.forget_logins();
                Ok(())
            }
            Ok(Err(refusal)) => Err(ApiError::bad_request(refusal)),
            Err(_) => Err(ApiError::internal("the metadata owner did not answer")),
        }
    }
}

fn tags_of(value: Option<&Value>) -> Vec<String> {
    match value {
        // RabbitMQ's API takes tags as one comma-separated string, or a list.
        Some(Value::String(s)) => s
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

// ------------------------------------------------------------------ vhosts

fn vhost_json(node: &str, def: &VhostDef, totals: &[u64; QUEUE_FIELDS]) -> Value {
    json!({
        "messages": totals[7],
        "messages_ready": totals[8],
        "messages_unacknowledged": totals[9],
        "name": def.name,
        "description": def.description,
        "tags": def.tags,
        "default_queue_type": "classic",
        "metadata": {"description": def.description, "tags": def.tags},
        "tracing": def.tracing,
        "cluster_state": {node: "running"},
    })
}

async fn vhosts(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let users = app.users().await?;
    let visible = crate::mgmt::api::Visible::of(&users, &user);
    let totals = app.vhost_totals().await?;
    let items: Vec<Value> = users
        .vhosts()
        .filter(|v| visible.sees(&v.name))
        .map(|v| {
            let t = totals.get(&v.name).copied().unwrap_or([0; QUEUE_FIELDS]);
            vhost_json(&app.node.name, v, &t)
        })
        .collect();
    Ok(json_response(&items))
}

async fn vhost(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let users = app.users().await?;
    let def = users.vhost(&vhost).ok_or_else(ApiError::not_found)?;
    let totals = app.vhost_totals().await?;
    let t = totals.get(&vhost).copied().unwrap_or([0; QUEUE_FIELDS]);
    Ok(json_response(&vhost_json(&app.node.name, def, &t)))
}

/// PUT /api/vhosts/{v}: `description`, `tags`, `tracing`. 201 for a new
/// vhost, 204 for one that was there (its metadata and tracing updated).
async fn put_vhost(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
    body: Bytes,
) -> ApiResult {
    let acting = app.user(&headers, &peer, Level::Administrator).await?;
    let body = parse_body(&body)?;
    // A vhost name travels in connection.open as a shortstr.
    if vhost.len() > warren_protocol::types::SHORTSTR_LEN_MAX {
        return Err(ApiError::bad_request("name too long"));
    }
    let existing = app.users().await?.vhost(&vhost).cloned();
    let mut def = existing.clone().unwrap_or_else(|| VhostDef::new(&vhost));
    if let Some(description) = body.get("description").and_then(Value::as_str) {
        def.description = description.to_string();
    }
    if body.get("tags").is_some() {
        def.tags = tags_of(body.get("tags"));
    }
    match body.get("tracing") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => def.tracing = *b,
        Some(Value::String(s)) if s == "true" || s == "false" => def.tracing = s == "true",
        Some(_) => return Err(ApiError::bad_request("tracing: not a boolean")),
    }
    let tracing = def.tracing;
    let reply = if existing.is_some() {
        app.access_change(AccessChange::VhostUpdated(def)).await?;
        no_content()
    } else {
        app.access_change(AccessChange::VhostAdded(def)).await?;
        // RabbitMQ gives the user who creates a vhost through the API
        // full permissions on it, so that it can go on to use it.
        app.access_change(AccessChange::PermissionSet {
            user: acting.name,
            vhost: vhost.clone(),
            permission: Permission::new(".*", ".*", ".*"),
        })
        .await?;
        created()
    };
    // The shards' firehose switch follows the vhost's flag.
    app.tracing(&vhost, Some(tracing)).await?;
    Ok(reply)
}

/// DELETE /api/vhosts/{v}: its queues and their messages go, and its
/// connections are closed with 320 CONNECTION_FORCED.
async fn delete_vhost(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if app.users().await?.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    app.forget_vhost_traces(&vhost).await;
    app.access_change(AccessChange::VhostDeleted(vhost)).await?;
    Ok(no_content())
}

// ------------------------------------------------------------------- users

fn limits_value(max_connections: Option<u64>, other: Option<u64>, other_name: &str) -> Value {
    let mut map = serde_json::Map::new();
    if let Some(n) = max_connections {
        map.insert("max-connections".into(), json!(n));
    }
    if let Some(n) = other {
        map.insert(other_name.into(), json!(n));
    }
    Value::Object(map)
}

fn user_json(u: &User) -> Value {
    let (algorithm, hash) = match &u.password {
        Some(h) => (h.algorithm.rabbit_name(), h.to_base64()),
        None => ("rabbit_password_hashing_sha256", String::new()),
    };
    json!({
        "name": u.name,
        "password_hash": hash,
        "hashing_algorithm": algorithm,
        "tags": u.tags,
        "limits": limits_value(u.limits.max_connections, u.limits.max_channels, "max-channels"),
    })
}

async fn users(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    let items: Vec<Value> = users.sorted().into_iter().map(user_json).collect();
    Ok(json_response(&items))
}

async fn users_without_permissions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    let items: Vec<Value> = users
        .sorted()
        .into_iter()
        .filter(|u| u.permissions.is_empty())
        .map(user_json)
        .collect();
    Ok(json_response(&items))
}

async fn user(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    users
        .user(&name)
        .map(|u| json_response(&user_json(u)))
        .ok_or_else(ApiError::not_found)
}

/// PUT /api/users/{u}: `password` or `password_hash` (with
/// `hashing_algorithm`), and `tags`. A user that exists keeps its
/// permissions and limits; as in RabbitMQ, it loses its password when
/// neither is given.
async fn put_user(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let body = parse_body(&body)?;
    let mut item = serde_json::Map::new();
    item.insert("name".into(), json!(name));
    item.insert("tags".into(), json!(tags_of(body.get("tags"))));
    for key in ["password", "password_hash", "hashing_algorithm"] {
        match body.get(key) {
            Some(Value::String(s)) => {
                item.insert(key.into(), json!(s));
            }
            None | Some(Value::Null) => {}
            Some(_) => return Err(ApiError::bad_request(format!("{key}: not a string"))),
        }
    }
    // The definitions reader knows RabbitMQ's user fields and hashes.
    let document = json!({ "users": [Value::Object(item)] }).to_string();
    let parsed =
        Definitions::from_json(&document, Source::Import).map_err(ApiError::bad_request)?;
    let user = parsed
        .definitions
        .users
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::internal("user not parsed"))?;
    let existed = app.users().await?.user(&name).is_some();
    app.access_change(AccessChange::UserUpdated(user)).await?;
    Ok(if existed { no_content() } else { created() })
}

async fn delete_user(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    if app.users().await?.user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    app.access_change(AccessChange::UserDeleted(name)).await?;
    Ok(no_content())
}

// ------------------------------------------------------------- permissions

fn permission_items(users: &Users, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    let mut items = Vec::new();
    for u in users.sorted() {
        for (vhost, p) in &u.permissions {
            if keep(&u.name, vhost) {
                items.push(json!({
                    "user": u.name,
                    "vhost": vhost,
                    "configure": p.configure.as_str(),
                    "write": p.write.as_str(),
                    "read": p.read.as_str(),
                }));
            }
        }
    }
    items
}

fn topic_permission_items(users: &Users, keep: impl Fn(&str, &str) -> bool) -> Vec<Value> {
    let mut items = Vec::new();
    for u in users.sorted() {
        for t in &u.topic_permissions {
            if keep(&u.name, &t.vhost) {
                items.push(json!({
                    "user": u.name,
                    "vhost": t.vhost,
                    "exchange": t.exchange,
                    "write": t.write,
                    "read": t.read,
                }));
            }
        }
    }
    items
}

async fn permissions(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    Ok(json_response(&permission_items(&users, |_, _| true)))
}

async fn vhost_permissions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    if users.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json_response(&permission_items(&users, |_, v| v == vhost)))
}

async fn user_permissions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    if users.user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json_response(&permission_items(&users, |u, _| u == name)))
}

async fn permission(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    permission_items(&users, |u, v| u == name && v == vhost)
        .first()
        .map(json_response)
        .ok_or_else(ApiError::not_found)
}

fn pattern_field(body: &Value, key: &str) -> Result<String, ApiError> {
    body.get(key)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| ApiError::bad_request(format!("[{{key_missing,{key}}}]")))
}

/// A 404 for a vhost or user that does not exist, as RabbitMQ answers a
/// permission PUT naming one.
fn user_and_vhost(users: &Users, user: &str, vhost: &str) -> Result<(), ApiError> {
    if users.user(user).is_none() || users.vhost(vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(())
}

async fn put_permission(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let body = parse_body(&body)?;
    let permission = Permission::new(
        &pattern_field(&body, "configure")?,
        &pattern_field(&body, "write")?,
        &pattern_field(&body, "read")?,
    );
    let users = app.users().await?;
    user_and_vhost(&users, &name, &vhost)?;
    let existed = users
        .user(&name)
        .is_some_and(|u| u.permissions.contains_key(&vhost));
    app.access_change(AccessChange::PermissionSet {
        user: name,
        vhost,
        permission,
    })
    .await?;
    Ok(if existed { no_content() } else { created() })
}

async fn delete_permission(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    let exists = users
        .user(&name)
        .is_some_and(|u| u.permissions.contains_key(&vhost));
    if !exists {
        return Err(ApiError::not_found());
    }
    app.access_change(AccessChange::PermissionCleared { user: name, vhost })
        .await?;
    Ok(no_content())
}

async fn topic_permissions(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    Ok(json_response(&topic_permission_items(&users, |_, _| true)))
}

async fn vhost_topic_permissions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    if users.vhost(&vhost).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json_response(&topic_permission_items(&users, |_, v| {
        v == vhost
    })))
}

async fn user_topic_permissions(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    if users.user(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(json_response(&topic_permission_items(&users, |u, _| {
        u == name
    })))
}

async fn topic_permission(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    let items = topic_permission_items(&users, |u, v| u == name && v == vhost);
    if items.is_empty() {
        return Err(ApiError::not_found());
    }
    Ok(json_response(&items))
}

async fn put_topic_permission(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let body = parse_body(&body)?;
    let exchange = pattern_field(&body, "exchange")?;
    let write = pattern_field(&body, "write")?;
    let read = pattern_field(&body, "read")?;
    let users = app.users().await?;
    user_and_vhost(&users, &name, &vhost)?;
    let existed = users.user(&name).is_some_and(|u| {
        u.topic_permissions
            .iter()
            .any(|t| t.vhost == vhost && t.exchange == exchange)
    });
    app.access_change(AccessChange::TopicPermissionSet {
        user: name,
        permission: TopicPermission {
            vhost,
            exchange,
            write,
            read,
        },
    })
    .await?;
    Ok(if existed { no_content() } else { created() })
}

/// Clears every topic permission of the user in the vhost, as RabbitMQ's
/// DELETE does.
async fn delete_topic_permission(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let users = app.users().await?;
    let exchanges: Vec<String> = users
        .user(&name)
        .map(|u| {
            u.topic_permissions
                .iter()
                .filter(|t| t.vhost == vhost)
                .map(|t| t.exchange.clone())
                .collect()
        })
        .unwrap_or_default();
    if exchanges.is_empty() {
        return Err(ApiError::not_found());
    }
    for exchange in exchanges {
        app.access_change(AccessChange::TopicPermissionCleared {
            user: name.clone(),
            vhost: vhost.clone(),
            exchange,
        })
        .await?;
    }
    Ok(no_content())
}

// ------------------------------------------------------------------ limits

fn vhost_limit_items(users: &Users, keep: impl Fn(&str) -> bool) -> Vec<Value> {
    users
        .vhosts()
        .filter(|v| keep(&v.name))
        .filter(|v| v.limits != VhostLimits::default())
        .map(|v| {
            json!({
                "vhost": v.name,
                "value": limits_value(v.limits.max_connections, v.limits.max_queues, "max-queues"),
            })
        })
        .collect()
}

fn user_limit_items(users: &Users, keep: impl Fn(&str) -> bool) -> Vec<Value> {
    users
        .sorted()
        .into_iter()
        .filter(|u| keep(&u.name))
        .filter(|u| u.limits != UserLimits::default())
        .map(|u| {
            json!({
                "user": u.name,
                "value": limits_value(u.limits.max_connections, u.limits.max_channels, "max-channels"),
            })
        })
        .collect()
}

async fn vhost_limits(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let users = app.users().await?;
    let visible = crate::mgmt::api::Visible::of(&users, &user);
    Ok(json_response(&vhost_limit_items(&users, |v| {
        visible.sees(v)
    })))
}

async fn one_vhost_limits(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    app.check_vhost(&user, &vhost).await?;
    let users = app.users().await?;
    Ok(json_response(&vhost_limit_items(&users, |v| v == vhost)))
}

/// A limit's value: a negative one is no limit, as RabbitMQ reads it.
fn limit_value(body: &Value) -> Result<Option<u64>, ApiError> {
    let value = body
        .get("value")
        .and_then(|v| {
            v.as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        })
        .ok_or_else(|| ApiError::bad_request("value: not an integer"))?;
    Ok(u64::try_from(value).ok())
}

/// Whose limit a limit call changes: RabbitMQ has the same put and delete
/// for a vhost's limits (`/api/vhost-limits`) and a user's
/// (`/api/user-limits`), with their own keys.
#[derive(Clone, Copy)]
enum LimitOf {
    Vhost,
    User,
}

/// Sets (`Some`) or clears (`None`) limit `name` of the vhost or user
/// `subject`, through the metadata owner like any definition change.
async fn set_limit(
    app: &App,
    of: LimitOf,
    subject: String,
    name: &str,
    value: Option<u64>,
) -> Result<(), ApiError> {
    let users = app.users().await?;
    let invalid = |valid: &str| {
        Err(ApiError::bad_request(format!(
            "Validation failed\n\n{name} is not a valid limit ({valid})"
        )))
    };
    let change = match of {
        LimitOf::Vhost => {
            let Some(def) = users.vhost(&subject) else {
                return Err(ApiError::not_found());
            };
            let mut limits = def.limits;
            match name {
                "max-connections" => limits.max_connections = value,
                "max-queues" => limits.max_queues = value,
                _ => return invalid("max-connections, max-queues"),
            }
            AccessChange::VhostLimitsSet {
                vhost: subject,
                limits,
            }
        }
        LimitOf::User => {
            let Some(u) = users.user(&subject) else {
                return Err(ApiError::not_found());
            };
            let mut limits = u.limits;
            match name {
                "max-connections" => limits.max_connections = value,
                "max-channels" => limits.max_channels = value,
                _ => return invalid("max-connections, max-channels"),
            }
            AccessChange::UserLimitsSet {
                user: subject,
                limits,
            }
        }
    };
    app.access_change(change).await
}

/// PUT of a limit (`{"value": N}`, a negative N clearing it) by an administrator.
async fn put_limit(
    of: LimitOf,
    app: App,
    peer: Peer,
    headers: HeaderMap,
    (subject, name): (String, String),
    body: Bytes,
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    let value = limit_value(&parse_body(&body)?)?;
    set_limit(&app, of, subject, &name, value).await?;
    Ok(no_content())
}

/// DELETE of a limit by an administrator.
async fn delete_limit(
    of: LimitOf,
    app: App,
    peer: Peer,
    headers: HeaderMap,
    (subject, name): (String, String),
) -> ApiResult {
    app.user(&headers, &peer, Level::Administrator).await?;
    set_limit(&app, of, subject, &name, None).await?;
    Ok(no_content())
}

async fn put_vhost_limit(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    put_limit(LimitOf::Vhost, app, peer, headers, path, body).await
}

async fn delete_vhost_limit(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> ApiResult {
    delete_limit(LimitOf::Vhost, app, peer, headers, path).await
}

async fn user_limits(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    let users = app.users().await?;
    let all = user.has(Level::Administrator);
    Ok(json_response(&user_limit_items(&users, |u| {
        all || u == user.name
    })))
}

async fn one_user_limits(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Management).await?;
    if !user.has(Level::Administrator) && user.name != name {
        return Err(not_administrator());
    }
    let users = app.users().await?;
    Ok(json_response(&user_limit_items(&users, |u| u == name)))
}

fn not_administrator() -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        error: "not_authorised",
        reason: "Not administrator user".into(),
    }
}

async fn put_user_limit(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    put_limit(LimitOf::User, app, peer, headers, path, body).await
}

async fn delete_user_limit(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(path): Path<(String, String)>,
) -> ApiResult {
    delete_limit(LimitOf::User, app, peer, headers, path).await
}

/// Used by the definitions import: the access-control part of a document
/// (vhosts, users, permissions, topic permissions, limits), applied
/// through the metadata owner, before its exchanges, queues and bindings.
pub(crate) async fn import_access(
    app: &App,
    definitions: &Definitions,
    _importer: &ApiUser,
) -> Result<(), ApiError> {
    let current = app.users().await?;
    for vhost in &definitions.vhosts {
        match current.vhost(&vhost.name) {
            None => {
                app.access_change(AccessChange::VhostAdded(vhost.clone()))
                    .await?
            }
            Some(existing) if existing.limits != vhost.limits => {
                app.access_change(AccessChange::VhostLimitsSet {
                    vhost: vhost.name.clone(),
                    limits: vhost.limits,
                })
                .await?
            }
            Some(_) => {}
        }
    }
    for vhost in &definitions.vhosts {
        if current.vhost(&vhost.name).is_none() {
            // VhostAdded brought its policies along.
            continue;
        }
        for policy in vhost.policies.values() {
            app.access_change(AccessChange::PolicySet(Box::new(policy.clone())))
                .await?;
        }
    }
    for user in &definitions.users {
        app.access_change(AccessChange::UserUpdated(user.clone()))
            .await?;
        if user.limits != UserLimits::default() {
            app.access_change(AccessChange::UserLimitsSet {
                user: user.name.clone(),
                limits: user.limits,
            })
            .await?;
        }
        for (vhost, permission) in &user.permissions {
            app.access_change(AccessChange::PermissionSet {
                user: user.name.clone(),
                vhost: vhost.clone(),
                permission: permission.clone(),
            })
            .await?;
        }
        for topic in &user.topic_permissions {
            app.access_change(AccessChange::TopicPermissionSet {
                user: user.name.clone(),
                permission: topic.clone(),
            })
            .await?;
        }
    }
    Ok(())
}
