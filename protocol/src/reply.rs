//! Reply codes, the error a handler returns, and the one rule that turns an error into
//! a close method (RabbitMQ's `rabbit_binary_generator:map_exception`).
//!
//! A handler returns `Err(AmqpError::not_found("no queue 'q' in vhost '/'"))`; the
//! connection calls `close_method(&error, channel)` and sends what it returns. Soft
//! errors (3xx, 403-406) close the channel; hard errors (320, 402, 5xx) and any error
//! on channel 0 close the connection.

use std::fmt;

use super::method::{ChannelClose, ConnectionClose, Method};
use super::types::{truncate_at_char_boundary, ShortStr, SHORTSTR_LEN_MAX};

/// The reply codes of AMQP 0-9-1 (spec section 1.2, "constants").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ReplyCode {
    Success = 200,
    ContentTooLarge = 311,
    NoRoute = 312,
    NoConsumers = 313,
    ConnectionForced = 320,
    InvalidPath = 402,
    AccessRefused = 403,
    NotFound = 404,
    ResourceLocked = 405,
    PreconditionFailed = 406,
    FrameError = 501,
    SyntaxError = 502,
    CommandInvalid = 503,
    ChannelError = 504,
    UnexpectedFrame = 505,
    ResourceError = 506,
    NotAllowed = 530,
    NotImplemented = 540,
    InternalError = 541,
}

impl ReplyCode {
    const ALL: [ReplyCode; 19] = [
        ReplyCode::Success,
        ReplyCode::ContentTooLarge,
        ReplyCode::NoRoute,
        ReplyCode::NoConsumers,
        ReplyCode::ConnectionForced,
        ReplyCode::InvalidPath,
        ReplyCode::AccessRefused,
        ReplyCode::NotFound,
        ReplyCode::ResourceLocked,
        ReplyCode::PreconditionFailed,
        ReplyCode::FrameError,
        ReplyCode::SyntaxError,
        ReplyCode::CommandInvalid,
        ReplyCode::ChannelError,
        ReplyCode::UnexpectedFrame,
        ReplyCode::ResourceError,
        ReplyCode::NotAllowed,
        ReplyCode::NotImplemented,
        ReplyCode::InternalError,
    ];

    pub fn code(self) -> u16 {
        self as u16
    }

    /// A hard error is a connection exception; the spec marks these `hard-error`
    /// (320, 402, 501-506, 530, 540, 541). The others close only a channel.
    pub fn is_hard(self) -> bool {
        matches!(
            self,
            ReplyCode::ConnectionForced
                | ReplyCode::InvalidPath
                | ReplyCode::FrameError
                | ReplyCode::SyntaxError
                | ReplyCode::CommandInvalid
                | ReplyCode::ChannelError
                | ReplyCode::UnexpectedFrame
                | ReplyCode::ResourceError
                | ReplyCode::NotAllowed
                | ReplyCode::NotImplemented
                | ReplyCode::InternalError
        )
    }

    /// The name RabbitMQ puts at the front of a reply text, e.g. "NOT_FOUND".
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::Success => "REPLY_SUCCESS",
            ReplyCode::ContentTooLarge => "CONTENT_TOO_LARGE",
            ReplyCode::NoRoute => "NO_ROUTE",
            ReplyCode::NoConsumers => "NO_CONSUMERS",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::InvalidPath => "INVALID_PATH",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::FrameError => "FRAME_ERROR",
            ReplyCode::SyntaxError => "SYNTAX_ERROR",
            ReplyCode::CommandInvalid => "COMMAND_INVALID",
            ReplyCode::ChannelError => "CHANNEL_ERROR",
            ReplyCode::UnexpectedFrame => "UNEXPECTED_FRAME",
            ReplyCode::ResourceError => "RESOURCE_ERROR",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }

    pub fn from_u16(code: u16) -> Option<ReplyCode> {
        ReplyCode::ALL.into_iter().find(|c| c.code() == code)
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

/// A protocol error: what a handler returns when a client's request must be refused.
/// `class_id`/`method_id` name the method that failed (0/0 when none did).
#[derive(Clone, Debug, PartialEq)]
pub struct AmqpError {
    pub code: ReplyCode,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

macro_rules! constructors {
    ($($name:ident => $code:ident,)*) => {
        $(
            #[doc = concat!("An error with reply code `", stringify!($code), "`.")]
            pub fn $name(text: impl Into<String>) -> Self {
                AmqpError::new(ReplyCode::$code, text)
            }
        )*
    };
}

impl AmqpError {
    pub fn new(code: ReplyCode, text: impl Into<String>) -> Self {
        AmqpError {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    constructors! {
        content_too_large => ContentTooLarge,
        no_route => NoRoute,
        no_consumers => NoConsumers,
        connection_forced => ConnectionForced,
        invalid_path => InvalidPath,
        access_refused => AccessRefused,
        not_found => NotFound,
        resource_locked => ResourceLocked,
        precondition_failed => PreconditionFailed,
        frame_error => FrameError,
        syntax_error => SyntaxError,
        command_invalid => CommandInvalid,
        channel_error => ChannelError,
        unexpected_frame => UnexpectedFrame,
        resource_error => ResourceError,
        not_allowed => NotAllowed,
        not_implemented => NotImplemented,
        internal_error => InternalError,
    }

    /// Names the method that failed, as the close method reports it.
    pub fn with_method(mut self, class_id: u16, method_id: u16) -> Self {
        self.class_id = class_id;
        self.method_id = method_id;
        self
    }

    /// RabbitMQ's reply text, "NOT_FOUND - no queue 'x' in vhost '/'". Over 255 bytes,
    /// RabbitMQ keeps the first 252 and appends "..." (rabbit_binary_generator:
    /// amqp_exception_explanation); we cut at the char boundary at or before byte 252,
    /// since a shortstr must stay UTF-8.
    pub fn reply_text(&self) -> ShortStr {
        let mut text = format!("{} - {}", self.code.name(), self.text);
        if text.len() > SHORTSTR_LEN_MAX {
            let kept = truncate_at_char_boundary(&text, SHORTSTR_LEN_MAX - 3).len();
            text.truncate(kept);
            text.push_str("...");
        }
        ShortStr::from(text)
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} - {}", self.code.name(), self.text)
    }
}

impl std::error::Error for AmqpError {}

/// RabbitMQ's map_exception: a soft error on a channel other than 0 closes the channel,
/// anything else closes the connection.
pub fn close_method(error: &AmqpError, channel: u16) -> Method {
    let reply_code = error.code.code();
    let reply_text = error.reply_text();
    if error.code.is_hard() || channel == 0 {
        ConnectionClose {
            reply_code,
            reply_text,
            class_id: error.class_id,
            method_id: error.method_id,
        }
        .into()
    } else {
        ChannelClose {
            reply_code,
            reply_text,
            class_id: error.class_id,
            method_id: error.method_id,
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_hardness_matches_the_spec() {
        for code in ReplyCode::ALL {
            assert_eq!(ReplyCode::from_u16(code.code()), Some(code));
            let hard = matches!(code.code(), 320 | 402 | 501..=506 | 530 | 540 | 541);
            assert_eq!(code.is_hard(), hard, "{code}");
        }
        assert_eq!(ReplyCode::from_u16(999), None);
        assert_eq!(ReplyCode::NotFound.name(), "NOT_FOUND");
    }

    #[test]
    fn soft_error_on_a_channel_closes_the_channel() {
        let e = AmqpError::not_found("no queue 'q' in vhost '/'").with_method(50, 10);
        let Method::ChannelClose(close) = close_method(&e, 3) else {
            panic!("expected channel.close")
        };
        assert_eq!(close.reply_code, 404);
        assert_eq!(close.reply_text, "NOT_FOUND - no queue 'q' in vhost '/'");
        assert_eq!((close.class_id, close.method_id), (50, 10));
    }

    #[test]
    fn hard_error_or_channel_zero_closes_the_connection() {
        let e = AmqpError::command_invalid("second channel.open");
        assert!(matches!(close_method(&e, 3), Method::ConnectionClose(_)));
        let e = AmqpError::precondition_failed("x");
        let Method::ConnectionClose(close) = close_method(&e, 0) else {
            panic!("expected connection.close")
        };
        assert_eq!(close.reply_code, 406);
    }

    #[test]
    fn reply_text_is_cut_at_a_char_boundary() {
        let e = AmqpError::not_found("ü".repeat(200));
        let text = e.reply_text();
        // "NOT_FOUND - " is 12 bytes, then 120 two-byte chars fill 252.
        assert_eq!(text.len(), 255);
        assert!(text.starts_with("NOT_FOUND - üü"));
        assert!(text.ends_with("ü..."));
        let e = AmqpError::not_found(format!("a{}", "ü".repeat(200)));
        assert_eq!(e.reply_text().len(), 254);
        assert!(e.reply_text().ends_with("ü..."));
    }

    #[test]
    fn reply_text_of_255_bytes_is_kept_whole() {
        let e = AmqpError::not_found("x".repeat(255 - 12));
        assert_eq!(e.reply_text().len(), 255);
        assert!(e.reply_text().ends_with("xxx"));
        let e = AmqpError::not_found("x".repeat(256 - 12));
        assert_eq!(e.reply_text().len(), 255);
        assert!(e.reply_text().ends_with("xxx..."));
    }
}
