//! HTTP basic auth against the broker's users (checked by shard 0, which
//! holds them), and RabbitMQ's user tags: `management` may use the API for
//! what its vhosts hold, `policymaker` also policies, `monitoring` also
//! sees every connection and the node, `administrator` everything.

use std::net::IpAddr;

use axum::http::{header, HeaderMap};

use crate::broker::control::{ControlReply, ControlRequest};
use crate::mgmt::error::ApiError;
use crate::mgmt::json::base64_decode;
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

/// The user of a request, if its credentials are right and it may use the
/// API at `level`; RabbitMQ's 401s otherwise.
pub(crate) async fn authenticate(
    plane: &Plane,
    headers: &HeaderMap,
    peer: IpAddr,
    level: Level,
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
    let user = ApiUser { name, tags };
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
