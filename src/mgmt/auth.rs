//! HTTP basic auth against the broker's users (checked by shard 0, which
//! holds them), and RabbitMQ's user tags: `management` may use the API for
//! what its vhosts hold, `policymaker` also policies, `monitoring` also
//! sees every connection and the node, `administrator` everything.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::http::{header, HeaderMap};

use crate::broker::control::{ControlReply, ControlRequest};
use crate::config;
use crate::metadata::password::base64_decode;
use crate::mgmt::error::ApiError;
use crate::mgmt::plane::Plane;

/// What a user may do through the API, by RabbitMQ's tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    Management,
    Policymaker,
    Monitoring,
    Administrator,
}

#[derive(Clone, Debug)]
pub(crate) struct ApiUser {
    pub(crate) name: String,
    pub(crate) tags: Vec<String>,
}

impl ApiUser {
    pub(crate) fn has(&self, level: Level) -> bool {
        self.tags.iter().any(|tag| match tag.as_str() {
            "administrator" => true,
            // RabbitMQ: monitoring and policymaker each include
            // management, not each other.
            "monitoring" => matches!(level, Level::Monitoring | Level::Management),
            "policymaker" => matches!(level, Level::Policymaker | Level::Management),
            "management" => level == Level::Management,
            _ => false,
        })
    }
}

/// Credentials shard 0 accepted lately, so that a client polling the API
/// costs the shard one check a second, not one per request (and a request
/// one round trip to a shard fewer).
#[derive(Default)]
pub(crate) struct AuthCache {
    accepted: HashMap<(String, IpAddr), (ApiUser, Instant)>,
}

impl AuthCache {
    /// Forgets every accepted login, after a change to users or
    /// permissions.
    pub(crate) fn clear(&mut self) {
        self.accepted.clear();
    }
}

/// The user of a request, if its credentials are right and it may use the
/// API at `level`; RabbitMQ's 401s otherwise.
pub(crate) async fn authenticate(
    plane: &Plane,
    cache: &Mutex<AuthCache>,
    headers: &HeaderMap,
    peer: IpAddr,
    level: Level,
) -> Result<ApiUser, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let key = (header, peer);
    let cached = {
        let cache = cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .accepted
            .get(&key)
            .filter(|(_, at)| at.elapsed() < config::MANAGEMENT_AUTH_CACHE)
            .map(|(user, _)| user.clone())
    };
    let user = match cached {
        Some(user) => user,
        None => {
            let user = check_with_shard(plane, headers, peer).await?;
            let mut cache = cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.accepted.len() >= config::MANAGEMENT_AUTH_CACHE_ENTRIES_MAX {
                cache.accepted.clear();
            }
            cache.accepted.insert(key, (user.clone(), Instant::now()));
            user
        }
    };
    check_level(user, level)
}

async fn check_with_shard(
    plane: &Plane,
    headers: &HeaderMap,
    peer: IpAddr,
) -> Result<ApiUser, ApiError> {
    let Some((user, password)) = credentials(headers) else {
        return Err(ApiError::not_authorized("Login failed"));
    };
    let reply = plane
        .ask(
            0,
            ControlRequest::Authenticate {
                user,
                password,
                peer,
            },
        )
        .await?;
    let Some((name, tags)) = (match reply {
        ControlReply::User(found) => found,
        _ => None,
    }) else {
        return Err(ApiError::not_authorized("Login failed"));
    };
    Ok(ApiUser { name, tags })
}

fn check_level(user: ApiUser, level: Level) -> Result<ApiUser, ApiError> {
    // RabbitMQ's words (and spelling) for a user without the tag needed.
    let refused = |reason: &str| ApiError {
        status: axum::http::StatusCode::UNAUTHORIZED,
        error: "not_authorised",
        reason: reason.into(),
    };
    if !user.has(Level::Management) {
        return Err(refused("Not management user"));
    }
    if !user.has(level) {
        return Err(refused(match level {
            Level::Management => "Not management user",
            Level::Policymaker => "Not policymaker user",
            Level::Monitoring => "Not monitor user",
            Level::Administrator => "Not administrator user",
        }));
    }
    Ok(user)
}

fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(base64_decode(encoded.trim())?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}
