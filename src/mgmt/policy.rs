//! The management API's policy routes, as RabbitMQ 3.10 has them:
//! `/api/policies`, `/api/policies/{vhost}` and
//! `/api/policies/{vhost}/{name}` (GET, PUT, DELETE), for users tagged
//! `policymaker` or `administrator`, and what a queue or exchange listing
//! shows of the policy that applies (`policy`,
//! `effective_policy_definition`).
//!
//! Reads come from shard 0's copy of the access-control database, where
//! the policies live; a change goes to the metadata owner as an
//! `AccessChange::PolicySet`/`PolicyCleared`, which every shard applies
//! to its own queues and exchanges before the answer.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::metadata::auth::{AccessChange, Users};
use crate::metadata::definitions::policy_json;
use crate::metadata::policy::{self, ApplyTo, Policy};
use crate::mgmt::api::{
    created, json_response, no_content, parse_body, ApiResult, App, Peer, Visible,
};
use crate::mgmt::auth::Level;
use crate::mgmt::error::ApiError;
use crate::util::json::Json;

pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/api/policies", get(policies))
        .route("/api/policies/{vhost}", get(vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(one_policy).put(put_policy).delete(delete_policy),
        )
}

/// serde's JSON as the definitions format's.
pub(crate) fn to_json(value: &Value) -> Json {
    match value {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Json::Int(i),
            None => Json::Float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => Json::Str(s.clone()),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Value::Object(members) => Json::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
    }
}

/// The definitions format's JSON as serde's.
pub(crate) fn to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Int(i) => json!(i),
        Json::Float(f) => json!(f),
        Json::Str(s) => Value::String(s.clone()),
        Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Json::Object(members) => Value::Object(
            members
                .iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect(),
        ),
    }
}

/// The policy that applies to a queue (`queue` true) or exchange of
/// `vhost`, as the listings show it: its name and its definition.
pub(crate) fn applied(
    users: &Users,
    vhost: &str,
    name: &str,
    queue: bool,
) -> (Option<String>, Value) {
    match policy::matching(users.policies(vhost), name, queue) {
        Some(p) => (Some(p.name.clone()), to_value(&p.definition)),
        None => (None, json!({})),
    }
}

fn items(users: &Users, keep: impl Fn(&str) -> bool) -> Vec<Value> {
    users
        .vhosts()
        .filter(|v| keep(&v.name))
        .flat_map(|v| v.policies.values())
        .map(|p| to_value(&policy_json(p)))
        .collect()
}

async fn policies(State(app): State<App>, peer: Peer, headers: HeaderMap) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Policymaker).await?;
    let users = app.users().await?;
    let visible = Visible::of(&users, &user);
    Ok(json_response(&items(&users, |v| visible.sees(v))))
}

async fn vhost_policies(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path(vhost): Path<String>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Policymaker).await?;
    app.check_vhost(&user, &vhost).await?;
    let users = app.users().await?;
    Ok(json_response(&items(&users, |v| v == vhost)))
}

async fn one_policy(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Policymaker).await?;
    app.check_vhost(&user, &vhost).await?;
    let users = app.users().await?;
    users
        .vhost(&vhost)
        .and_then(|v| v.policies.get(&name))
        .map(|p| json_response(&to_value(&policy_json(p))))
        .ok_or_else(ApiError::not_found)
}

/// RabbitMQ's answer to a policy it refuses.
fn invalid(reason: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("Validation failed\n\n{reason}\n"))
}

/// The policy a PUT body describes, checked as `rabbit_policy:set` does.
fn policy_of(vhost: &str, name: &str, body: &Value) -> Result<Policy, ApiError> {
    let missing = |key: &str| invalid(format!("Key \"{key}\" not found in policy"));
    let pattern = match body.get("pattern") {
        Some(Value::String(p)) => p.clone(),
        Some(other) => {
            return Err(invalid(format!(
                "pattern should be a string, actually was {other}"
            )))
        }
        None => return Err(missing("pattern")),
    };
    let definition = body
        .get("definition")
        .ok_or_else(|| missing("definition"))?;
    let apply_to = match body.get("apply-to") {
        None | Some(Value::Null) => ApplyTo::All,
        Some(value) => value.as_str().and_then(ApplyTo::parse).ok_or_else(|| {
            invalid(format!(
                "apply-to should be one of [<<\"all\">>,<<\"exchanges\">>,<<\"queues\">>], \
                 actually was {value}"
            ))
        })?,
    };
    let priority = match body.get("priority") {
        None | Some(Value::Null) => 0,
        Some(Value::Number(n)) if n.as_i64().is_some() => n.as_i64().unwrap_or(0),
        // rabbitmqadmin and the web UI send it as a string.
        Some(Value::String(s)) if s.trim().parse::<i64>().is_ok() => {
            s.trim().parse::<i64>().unwrap_or(0)
        }
        Some(other) => {
            return Err(invalid(format!(
                "priority should be a number, actually was {other}"
            )))
        }
    };
    Policy::new(
        vhost,
        name,
        &pattern,
        apply_to,
        priority,
        to_json(definition),
    )
    .map_err(invalid)
}

async fn put_policy(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Policymaker).await?;
    app.check_vhost(&user, &vhost).await?;
    let body = parse_body(&body)?;
    let policy = policy_of(&vhost, &name, &body)?;
    let users = app.users().await?;
    let existed = users
        .vhost(&vhost)
        .is_some_and(|v| v.policies.contains_key(&name));
    app.access_change(AccessChange::PolicySet(Box::new(policy)))
        .await?;
    Ok(if existed { no_content() } else { created() })
}

async fn delete_policy(
    State(app): State<App>,
    peer: Peer,
    headers: HeaderMap,
    Path((vhost, name)): Path<(String, String)>,
) -> ApiResult {
    let user = app.user(&headers, &peer, Level::Policymaker).await?;
    app.check_vhost(&user, &vhost).await?;
    let users = app.users().await?;
    if !users
        .vhost(&vhost)
        .is_some_and(|v| v.policies.contains_key(&name))
    {
        return Err(ApiError::not_found());
    }
    app.access_change(AccessChange::PolicyCleared { vhost, name })
        .await?;
    Ok(no_content())
}
