//! The management API's errors, in RabbitMQ's JSON shape:
//! `{"error": "...", "reason": "..."}` with the HTTP status RabbitMQ gives.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use warren_protocol::{AmqpError, ReplyCode};

#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) error: &'static str,
    pub(crate) reason: String,
}

impl ApiError {
    pub(crate) fn not_found() -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "Object Not Found",
            reason: "Not Found".into(),
        }
    }

    pub(crate) fn bad_request(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error: "bad_request",
            reason: reason.into(),
        }
    }

    pub(crate) fn not_authorized(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            error: "not_authorized",
            reason: reason.into(),
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "unavailable",
            reason: reason.into(),
        }
    }

    pub(crate) fn internal(reason: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "internal_server_error",
            reason: reason.into(),
        }
    }

    /// An AMQP refusal from the metadata owner, as RabbitMQ's management
    /// API reports it: a missing object is 404, anything else the client
    /// asked wrongly is 400 with the AMQP error's text.
    pub(crate) fn from_amqp(error: AmqpError) -> ApiError {
        match error.code {
            ReplyCode::NotFound => ApiError {
                status: StatusCode::NOT_FOUND,
                error: "not_found",
                reason: error.text,
            },
            ReplyCode::InternalError => ApiError::internal(error.text),
            _ => ApiError::bad_request(error.text),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "reason": self.reason});
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        response
    }
}
