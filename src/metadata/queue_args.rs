//! Queue arguments: the `arguments` table of `queue.declare`, checked the way
//! RabbitMQ 3.10 checks it and parsed into [`QueueArgs`], the typed form the
//! queue's owner uses for TTLs, length limits, dead-lettering and priorities.
//! The metadata owner calls [`QueueArgs::parse`] before it creates a queue,
//! and [`check_equivalent`] when a queue is declared again; the raw table
//! stays on `QueueMeta` beside the parsed form.
//!
//! A new queue's arguments are checked in RabbitMQ's order, and the first
//! failure is the one reported (rabbit_channel's queue.declare handler, then
//! `rabbit_amqqueue:check_declare_arguments`):
//!
//! 1. `x-dead-letter-exchange` must be a longstr (rabbit_channel, before
//!    anything else): "invalid type 'signedint' for arg
//!    'x-dead-letter-exchange' in queue 'q' in vhost '/'".
//! 2. `x-queue-type` must name a known type. warren has classic and quorum
//!    queues and refuses "stream" here (see below).
//! 3. Each argument of the queue's type present, in RabbitMQ's
//!    `declare_args()` order (not the table's): "invalid arg 'x-message-ttl'
//!    for queue 'q' in vhost '/': {value_negative,-1}". The part after the
//!    colon is the Erlang term RabbitMQ formats with `~p`; `Term` below
//!    reproduces that printing.
//! 4. Arguments that only other queue types take, in table order: "invalid
//!    arg 'x-delivery-limit' for queue 'q' in vhost '/' of queue type
//!    rabbit_classic_queue".
//! 5. For a quorum queue, the declaration's flags
//!    (`rabbit_quorum_queue:declare`, [`check_queue_type_flags`]):
//!    auto-delete, then exclusive, then non-durable are refused.
//!
//! Any other key, `x-` or not, is ignored. All of these are 406
//! PRECONDITION_FAILED channel errors. An existing queue's arguments are not
//! checked again: RabbitMQ only compares the keys in
//! [`EQUIVALENT_QUEUE_ARGUMENTS`] with the new declaration's.
//!
//! **Where warren does not follow RabbitMQ.** RabbitMQ crashes (541
//! INTERNAL_ERROR, closing the connection) on two inputs where warren
//! answers 406 instead: a server-named queue with an unknown or non-string
//! `x-queue-type`, and a redeclaration whose value differs from a decimal's
//! (its `rabbit_misc:val/1` reads `{Scale,Value}` as `{Type,Value}`).
//! Erlang's `~p` wraps terms wider than 80 columns over several lines;
//! warren prints them on one (only tables and arrays get that wide).
//!
//! **Queue types.** "classic" (or no `x-queue-type`) and "quorum" are
//! accepted. A quorum queue takes its own set of arguments
//! (`rabbit_quorum_queue:capabilities()`): `x-delivery-limit` and the
//! in-memory limits, but no `x-max-priority`, `x-queue-mode`,
//! `x-queue-version` or `x-queue-master-locator`; its redeclarations compare
//! that set. It lives on one node: the queue's owner gives it quorum
//! semantics (delivery count, delivery limit, requeue order), not
//! replication (docs/design.md). "stream" is refused with a 406 that names
//! the reason, rather than quietly making a queue with other semantics.

use bytes::Bytes;

use crate::metadata::vhost::DEFAULT_VHOST;
use warren_protocol::{AmqpError, FieldTable, FieldValue, ShortStr};

/// The longest `x-message-ttl` and `x-expires` RabbitMQ accepts: ten years in
/// milliseconds (`rabbit_misc:check_expiry`).
pub(crate) const EXPIRY_MS_MAX: u64 = 315_360_000_000;

/// The highest `x-max-priority` (`?MAX_SUPPORTED_PRIORITY`).
pub(crate) const PRIORITY_MAX: u8 = 255;

/// The arguments RabbitMQ compares when a classic queue is declared again, in
/// the order it compares them (`rabbit_classic_queue:capabilities()`,
/// `queue_arguments`): the first difference is the one reported.
pub(crate) const EQUIVALENT_QUEUE_ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// Arguments only quorum or stream queues take. A classic queue declared with
/// one of them is refused (`rabbit_queue_type:arguments(queue_arguments)`
/// minus the classic queue's own).
const OTHER_QUEUE_TYPE_ARGUMENTS: &[&str] = &[
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-initial-cluster-size",
    "x-max-age",
    "x-max-in-memory-bytes",
    "x-max-in-memory-length",
    "x-queue-leader-locator",
    "x-quorum-initial-group-size",
    "x-stream-max-segment-size-bytes",
];

/// The arguments a quorum queue takes, in RabbitMQ's order
/// (`rabbit_quorum_queue:capabilities()`, `queue_arguments`): what a
/// redeclaration compares, the first difference being the one reported.
const QUORUM_QUEUE_ARGUMENTS: &[&str] = &[
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// Arguments of classic or stream queues that a quorum queue refuses (every
/// queue type's arguments minus the quorum queue's own).
const NOT_QUORUM_ARGUMENTS: &[&str] = &[
    "x-max-priority",
    "x-queue-mode",
    "x-queue-version",
    "x-queue-master-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// What kind of queue a declaration makes (`x-queue-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QueueType {
    #[default]
    Classic,
    /// A quorum queue on one node: quorum semantics, no replication yet.
    Quorum,
}

impl QueueType {
    /// The type a table names; classic when it names none (or one this
    /// broker refuses, which `QueueArgs::parse` reports first).
    pub(crate) fn of(args: &FieldTable) -> QueueType {
        match args.get(QUEUE_TYPE) {
            Some(FieldValue::LongStr(kind)) if kind.as_ref() == b"quorum" => QueueType::Quorum,
            _ => QueueType::Classic,
        }
    }

    /// RabbitMQ's module name for the type, as its error texts print it.
    fn module(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
        }
    }
}

const DEAD_LETTER_EXCHANGE: &str = "x-dead-letter-exchange";
const QUEUE_TYPE: &str = "x-queue-type";

/// What a queue does when a publish would take it over `x-max-length` or
/// `x-max-length-bytes` (`x-overflow`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest messages to make room.
    #[default]
    DropHead,
    /// Refuse the new message (a nack to a confirming publisher).
    RejectPublish,
    /// Refuse the new message and dead-letter it.
    RejectPublishDlx,
}

impl Overflow {
    pub(crate) fn parse(name: &[u8]) -> Option<Overflow> {
        match name {
            b"drop-head" => Some(Overflow::DropHead),
            b"reject-publish" => Some(Overflow::RejectPublish),
            b"reject-publish-dlx" => Some(Overflow::RejectPublishDlx),
            _ => None,
        }
    }
}

/// A queue's arguments, checked and typed. `Default` is a queue declared with
/// no arguments.
///
/// `x-queue-mode`, `x-queue-version` and `x-queue-master-locator` are checked
/// as RabbitMQ checks them but not kept: they tune RabbitMQ's storage and
/// clustering and change nothing a client can observe in warren.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueueArgs {
    /// `x-message-ttl`: how long a message may wait in the queue, 0 to
    /// [`EXPIRY_MS_MAX`].
    pub message_ttl_ms: Option<u64>,
    /// `x-expires`: the queue is deleted after this long unused, 1 to
    /// [`EXPIRY_MS_MAX`].
    pub expires_ms: Option<u64>,
    /// `x-max-length`: ready messages at most.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: total body bytes of ready messages at most.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`. `Some("")` is the default exchange. RabbitMQ
    /// accepts any longstr here; one that is no valid shortstr (over 255
    /// bytes, or not UTF-8) can name no exchange and is kept lossily.
    pub dead_letter_exchange: Option<ShortStr>,
    /// `x-dead-letter-routing-key` (only with an exchange), kept like the
    /// exchange name.
    pub dead_letter_routing_key: Option<ShortStr>,
    /// `x-max-priority`: 0 to [`PRIORITY_MAX`].
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`.
    pub single_active_consumer: bool,
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-delivery-limit` (quorum queues only): a message returned more
    /// often than this is dead-lettered (or dropped) instead of requeued.
    /// RabbitMQ does not check the value at declare; one that is no
    /// non-negative integer sets no limit, as RabbitMQ's comparison
    /// `DeliveryCount > Limit` never holds for it.
    pub delivery_limit: Option<u64>,
}

impl QueueArgs {
    /// Checks a new queue's arguments as RabbitMQ 3.10 does and parses them.
    /// `queue` is the queue's name, which the error texts quote.
    pub(crate) fn parse(queue: &str, args: &FieldTable) -> Result<QueueArgs, AmqpError> {
        if let Some(value) = args.get(DEAD_LETTER_EXCHANGE) {
            if !matches!(value, FieldValue::LongStr(_)) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid type '{}' for arg '{}' in {}",
                    value.type_name(),
                    DEAD_LETTER_EXCHANGE,
                    resource(queue)
                )));
            }
        }
        check_argument(queue, args, QUEUE_TYPE, check_queue_type)?;
        if let Some(kind) = args.get(QUEUE_TYPE).and_then(FieldValue::as_bytes) {
            if !matches!(kind.as_ref(), b"classic" | b"quorum") {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg '{}' for {}: queue type '{}' is not supported by warren, \
                     which has classic and quorum queues only",
                    QUEUE_TYPE,
                    resource(queue),
                    String::from_utf8_lossy(kind)
                )));
            }
        }
        let queue_type = QueueType::of(args);
        let (checks, refused) = match queue_type {
            QueueType::Classic => (CLASSIC_QUEUE_CHECKS, OTHER_QUEUE_TYPE_ARGUMENTS),
            QueueType::Quorum => (QUORUM_QUEUE_CHECKS, NOT_QUORUM_ARGUMENTS),
        };
        for (key, check) in checks {
            check_argument(queue, args, key, *check)?;
        }
        for (key, _) in args {
            if refused.contains(&key.as_str()) {
                return Err(AmqpError::precondition_failed(format!(
                    "invalid arg '{}' for {} of queue type {}",
                    key,
                    resource(queue),
                    queue_type.module()
                )));
            }
        }

        // Every value below has passed its check, so the conversions hold.
        let non_negative = |key: &str| {
            args.get(key)
                .and_then(FieldValue::as_i64)
                .and_then(|n| u64::try_from(n).ok())
        };
        Ok(QueueArgs {
            message_ttl_ms: non_negative("x-message-ttl"),
            expires_ms: non_negative("x-expires"),
            max_length: non_negative("x-max-length"),
            max_length_bytes: non_negative("x-max-length-bytes"),
            overflow: args
                .get("x-overflow")
                .and_then(FieldValue::as_bytes)
                .and_then(|name| Overflow::parse(name))
                .unwrap_or_default(),
            dead_letter_exchange: args.get(DEAD_LETTER_EXCHANGE).and_then(lossy_shortstr),
            dead_letter_routing_key: args
                .get("x-dead-letter-routing-key")
                .and_then(lossy_shortstr),
            max_priority: non_negative("x-max-priority").and_then(|n| u8::try_from(n).ok()),
            single_active_consumer: args
                .get("x-single-active-consumer")
                .and_then(FieldValue::as_bool)
                .unwrap_or(false),
            queue_type,
            delivery_limit: match queue_type {
                QueueType::Classic => None,
                QueueType::Quorum => non_negative("x-delivery-limit"),
            },
        })
    }
}

/// The flags a quorum queue refuses, checked after its arguments and in
/// RabbitMQ's order (`rabbit_quorum_queue:declare`): auto-delete, an
/// exclusive owner, then non-durable. `durable` is the flag as the queue
/// would get it (an exclusive queue is never durable). Classic queues take
/// any flags.
pub(crate) fn check_queue_type_flags(
    queue: &str,
    args: &QueueArgs,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
) -> Result<(), AmqpError> {
    if args.queue_type != QueueType::Quorum {
        return Ok(());
    }
    let refused = if auto_delete {
        "auto-delete"
    } else if exclusive {
        "exclusive-owner"
    } else if !durable {
        "non-durable"
    } else {
        return Ok(());
    };
    Err(AmqpError::precondition_failed(format!(
        "invalid property '{}' for {}",
        refused,
        resource(queue)
    )))
}

/// RabbitMQ refuses a server-named quorum or stream queue before it looks at
/// anything else (rabbit_channel: "Cannot declare a server-named queue for
/// type ~p"). RabbitMQ crashes on an unknown or non-string `x-queue-type`
/// here (541, closing the connection); warren leaves those to
/// [`QueueArgs::parse`] and its 406.
pub(crate) fn check_server_named(args: &FieldTable) -> Result<(), AmqpError> {
    let module = match args.get(QUEUE_TYPE) {
        Some(FieldValue::LongStr(kind)) if kind.as_ref() == b"quorum" => "rabbit_quorum_queue",
        Some(FieldValue::LongStr(kind)) if kind.as_ref() == b"stream" => "rabbit_stream_queue",
        _ => return Ok(()),
    };
    Err(AmqpError::precondition_failed(format!(
        "Cannot declare a server-named queue for type {}",
        module
    )))
}

/// Compares a redeclaration's arguments with the queue's, as RabbitMQ does
/// (`rabbit_misc:assert_args_equivalence`): only the keys in
/// [`EQUIVALENT_QUEUE_ARGUMENTS`], each equal when the two values are the same
/// Erlang term. So 1000 as a byte, a signedint or a long are equal, as are a
/// longstr and a byte array with the same bytes; 1000 and 1000.0 are not.
/// A missing `x-queue-type` equals "classic".
pub(crate) fn check_equivalent(
    queue: &str,
    received: &FieldTable,
    current: &FieldTable,
) -> Result<(), AmqpError> {
    // The existing queue's type decides which arguments are compared
    // (`rabbit_amqqueue:assert_args_equivalence`).
    let compared = match QueueType::of(current) {
        QueueType::Classic => EQUIVALENT_QUEUE_ARGUMENTS,
        QueueType::Quorum => QUORUM_QUEUE_ARGUMENTS,
    };
    for key in compared {
        let (new, old) = (received.get(key), current.get(key));
        let classic_by_default = match (new, old) {
            (Some(only), None) | (None, Some(only)) => {
                *key == QUEUE_TYPE
                    && matches!(only, FieldValue::LongStr(kind) if kind.as_ref() == b"classic")
            }
            _ => false,
        };
        if !classic_by_default {
            check_arg_equivalent("queue", queue, key, new, old)?;
        }
    }
    Ok(())
}

/// Compares one argument of a redeclaration (`new`) with the declared one
/// (`old`) as `rabbit_misc:assert_args_equivalence1` does, for a `what`
/// ("queue", "exchange") named `name`: equal when both are missing or both
/// are the same Erlang term, otherwise 406 with RabbitMQ's text.
pub(crate) fn check_arg_equivalent(
    what: &str,
    name: &str,
    key: &str,
    new: Option<&FieldValue>,
    old: Option<&FieldValue>,
) -> Result<(), AmqpError> {
    let equal = match (new, old) {
        (None, None) => true,
        (Some(new), Some(old)) => Term::of(new) == Term::of(old),
        _ => false,
    };
    if equal {
        return Ok(());
    }
    // With both values present RabbitMQ prints only the values; with one
    // missing, the other with its type (rabbit_misc:val/1).
    let (new_text, old_text) = match (new, old) {
        (Some(new), Some(old)) => (bare_value(new), bare_value(old)),
        (new, old) => (typed_value(new), typed_value(old)),
    };
    Err(AmqpError::precondition_failed(format!(
        "inequivalent arg '{}' for {} '{}' in vhost '{}': received {} but current is {}",
        key, what, name, DEFAULT_VHOST, new_text, old_text
    )))
}

/// "queue 'q' in vhost '/'" (`rabbit_misc:rs/1`).
fn resource(queue: &str) -> String {
    format!("queue '{}' in vhost '{}'", queue, DEFAULT_VHOST)
}

fn lossy_shortstr(value: &FieldValue) -> Option<ShortStr> {
    value
        .as_bytes()
        .map(|b| ShortStr::from(String::from_utf8_lossy(b).into_owned()))
}

/// `'~s'` for a binary, `'~p'` for anything else, and "none" for void: its
/// value is `undefined`, which `rabbit_misc:val/1` takes for a missing one.
/// (A decimal's `{Scale,Value}` it takes for a `{Type,Value}` pair and
/// crashes on; warren prints it as `'{2,5}'` instead, see the module doc.)
fn bare_value(value: &FieldValue) -> String {
    match Term::of(value) {
        Term::Atom("undefined") => "none".to_string(),
        Term::Binary(b) => format!("'{}'", String::from_utf8_lossy(&b)),
        term => format!("'{}'", term.render()),
    }
}

fn typed_value(value: Option<&FieldValue>) -> String {
    match value {
        None => "none".to_string(),
        Some(value) => {
            let shown = match Term::of(value) {
                Term::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                term => term.render(),
            };
            format!("the value '{}' of type '{}'", shown, value.type_name())
        }
    }
}

// ---------------------------------------------------------------- checks

/// Why RabbitMQ refused an argument: the Erlang term its error text prints.
#[derive(Debug)]
enum Invalid {
    /// `{value_negative,N}`
    Negative(i64),
    /// `{value_zero,0}`
    Zero,
    /// `{value_too_large,N}`
    TooLarge(i64),
    /// `{max_value_exceeded,N}`
    MaxExceeded(i64),
    /// `{unacceptable_type,T}`
    UnacceptableType(&'static str),
    /// A bare atom, such as `invalid_overflow`.
    Atom(&'static str),
    /// An Erlang string (a list of character codes, here bytes), such as
    /// "expected integer, got longstr".
    Text(Vec<u8>),
}

impl Invalid {
    fn render(&self) -> String {
        match self {
            Invalid::Negative(n) => format!("{{value_negative,{}}}", n),
            Invalid::Zero => "{value_zero,0}".to_string(),
            Invalid::TooLarge(n) => format!("{{value_too_large,{}}}", n),
            Invalid::MaxExceeded(n) => format!("{{max_value_exceeded,{}}}", n),
            Invalid::UnacceptableType(t) => format!("{{unacceptable_type,{}}}", t),
            Invalid::Atom(a) => a.to_string(),
            Invalid::Text(chars) => erlang_string(chars),
        }
    }
}

type Check = fn(&FieldValue, &FieldTable) -> Result<(), Invalid>;

/// RabbitMQ's `declare_args()` in its order, kept to the arguments a classic
/// queue takes.
const CLASSIC_QUEUE_CHECKS: &[(&str, Check)] = &[
    ("x-expires", check_expires),
    ("x-message-ttl", check_message_ttl),
    (DEAD_LETTER_EXCHANGE, check_dead_letter_exchange),
    ("x-dead-letter-routing-key", check_dead_letter_routing_key),
    ("x-max-length", check_non_negative),
    ("x-max-length-bytes", check_non_negative),
    ("x-max-priority", check_max_priority),
    ("x-overflow", check_overflow),
    ("x-queue-mode", check_queue_mode),
    ("x-queue-version", check_queue_version),
    ("x-single-active-consumer", check_bool),
    (QUEUE_TYPE, check_queue_type),
];

/// RabbitMQ's `declare_args()` in its order, kept to the arguments a quorum
/// queue takes (`x-delivery-limit` is not among them: RabbitMQ does not
/// check its value).
const QUORUM_QUEUE_CHECKS: &[(&str, Check)] = &[
    ("x-expires", check_expires),
    ("x-message-ttl", check_message_ttl),
    (DEAD_LETTER_EXCHANGE, check_dead_letter_exchange),
    ("x-dead-letter-routing-key", check_dead_letter_routing_key),
    ("x-dead-letter-strategy", check_dead_letter_strategy),
    ("x-max-length", check_non_negative),
    ("x-max-length-bytes", check_non_negative),
    ("x-max-in-memory-length", check_non_negative),
    ("x-max-in-memory-bytes", check_non_negative),
    ("x-overflow", check_overflow),
    ("x-single-active-consumer", check_bool),
    (QUEUE_TYPE, check_queue_type),
    ("x-quorum-initial-group-size", check_initial_cluster_size),
    ("x-queue-leader-locator", check_queue_leader_locator),
];

fn check_argument(
    queue: &str,
    args: &FieldTable,
    key: &str,
    check: Check,
) -> Result<(), AmqpError> {
    let Some(value) = args.get(key) else {
        return Ok(());
    };
    check(value, args).map_err(|invalid| {
        AmqpError::precondition_failed(format!(
            "invalid arg '{}' for {}: {}",
            key,
            resource(queue),
            invalid.render()
        ))
    })
}

/// byte, short, signedint, long and their unsigned forms; not timestamp,
/// decimal or floats (`?INTEGER_ARG_TYPES`).
fn integer(value: &FieldValue) -> Result<i64, Invalid> {
    value.as_i64().ok_or_else(|| {
        Invalid::Text(format!("expected integer, got {}", value.type_name()).into_bytes())
    })
}

fn non_negative(value: &FieldValue) -> Result<i64, Invalid> {
    match integer(value)? {
        n if n < 0 => Err(Invalid::Negative(n)),
        n => Ok(n),
    }
}

fn expiry(n: i64) -> Result<(), Invalid> {
    if n < 0 {
        Err(Invalid::Negative(n))
    } else if n as u64 > EXPIRY_MS_MAX {
        Err(Invalid::TooLarge(n))
    } else {
        Ok(())
    }
}

fn check_non_negative(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    non_negative(value).map(|_| ())
}

fn check_expires(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match integer(value)? {
        0 => Err(Invalid::Zero),
        n => expiry(n),
    }
}

fn check_message_ttl(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    expiry(integer(value)?)
}

fn check_max_priority(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match non_negative(value)? {
        n if n > i64::from(PRIORITY_MAX) => Err(Invalid::MaxExceeded(n)),
        _ => Ok(()),
    }
}

fn check_bool(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match value {
        FieldValue::Bool(_) => Ok(()),
        other => Err(Invalid::UnacceptableType(other.type_name())),
    }
}

/// The text of a longstr, or `{unacceptable_type,T}` for any other type.
fn longstr(value: &FieldValue) -> Result<&Bytes, Invalid> {
    match value {
        FieldValue::LongStr(b) => Ok(b),
        other => Err(Invalid::UnacceptableType(other.type_name())),
    }
}

fn check_dead_letter_exchange(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    longstr(value).map(|_| ())
}

fn check_dead_letter_routing_key(value: &FieldValue, args: &FieldTable) -> Result<(), Invalid> {
    longstr(value)?;
    if args.contains_key(DEAD_LETTER_EXCHANGE) {
        Ok(())
    } else {
        Err(Invalid::Atom("routing_key_but_no_dlx_defined"))
    }
}

fn check_overflow(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match Overflow::parse(longstr(value)?) {
        Some(_) => Ok(()),
        None => Err(Invalid::Atom("invalid_overflow")),
    }
}

fn check_queue_mode(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    let mode = longstr(value)?;
    if matches!(mode.as_ref(), b"default" | b"lazy") {
        return Ok(());
    }
    Err(Invalid::Text(
        [b"unsupported queue mode '", mode.as_ref(), b"'"].concat(),
    ))
}

fn check_queue_version(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match non_negative(value)? {
        1 | 2 => Ok(()),
        n => Err(Invalid::Text(
            format!("unsupported queue version '{}'", n).into_bytes(),
        )),
    }
}

/// `rabbit_amqqueue:check_dlxstrategy_arg`.
fn check_dead_letter_strategy(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match longstr(value)?.as_ref() {
        b"at-most-once" | b"at-least-once" => Ok(()),
        _ => Err(Invalid::Atom("invalid_dlx_strategy")),
    }
}

/// `rabbit_amqqueue:check_initial_cluster_size_arg`: a positive integer.
fn check_initial_cluster_size(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match non_negative(value)? {
        0 => Err(Invalid::Zero),
        _ => Ok(()),
    }
}

/// `rabbit_amqqueue:check_queue_leader_locator_arg`.
fn check_queue_leader_locator(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    match longstr(value)?.as_ref() {
        b"client-local" | b"random" | b"least-leaders" | b"balanced" => Ok(()),
        _ => Err(Invalid::Atom("invalid_queue_locator_arg")),
    }
}

fn check_queue_type(value: &FieldValue, _: &FieldTable) -> Result<(), Invalid> {
    let kind = longstr(value)?;
    if matches!(kind.as_ref(), b"classic" | b"quorum" | b"stream") {
        return Ok(());
    }
    Err(Invalid::Text(
        [b"unsupported queue type '", kind.as_ref(), b"'"].concat(),
    ))
}

// ---------------------------------------------------------------- Erlang terms

/// A field value as the Erlang term RabbitMQ holds it, for comparing values
/// as RabbitMQ compares them and printing them as `~p` prints them.
#[derive(Clone, Debug, PartialEq)]
enum Term {
    Integer(i128),
    Float(f64),
    Atom(&'static str),
    Binary(Bytes),
    Tuple(Vec<Term>),
    List(Vec<Term>),
}

impl Term {
    /// `rabbit_binary_parser`'s value for a field: integers of every width and
    /// timestamps are integers, floats are widened to doubles, a decimal is
    /// `{Scale,Value}`, an array `[{Type,Value}]`, a table
    /// `[{Key,Type,Value}]`, and void is `undefined`.
    fn of(value: &FieldValue) -> Term {
        match value {
            FieldValue::Bool(b) => Term::Atom(if *b { "true" } else { "false" }),
            FieldValue::I8(_)
            | FieldValue::U8(_)
            | FieldValue::I16(_)
            | FieldValue::U16(_)
            | FieldValue::I32(_)
            | FieldValue::U32(_)
            | FieldValue::I64(_) => Term::Integer(value.as_i64().map_or(0, i128::from)),
            FieldValue::Timestamp(t) => Term::Integer(i128::from(*t)),
            FieldValue::F32(f) => Term::Float(f64::from(*f)),
            FieldValue::F64(f) => Term::Float(*f),
            FieldValue::Decimal { scale, value } => Term::Tuple(vec![
                Term::Integer(i128::from(*scale)),
                Term::Integer(i128::from(*value)),
            ]),
            FieldValue::LongStr(b) | FieldValue::ByteArray(b) => Term::Binary(b.clone()),
            FieldValue::Array(values) => Term::List(
                values
                    .iter()
                    .map(|v| Term::Tuple(vec![Term::Atom(v.type_name()), Term::of(v)]))
                    .collect(),
            ),
            FieldValue::Table(table) => Term::List(
                table
                    .iter()
                    .map(|(k, v)| {
                        Term::Tuple(vec![
                            Term::Binary(Bytes::copy_from_slice(k.as_bytes())),
                            Term::Atom(v.type_name()),
                            Term::of(v),
                        ])
                    })
                    .collect(),
            ),
            FieldValue::Void => Term::Atom("undefined"),
        }
    }

    /// `~p`, on one line. (Erlang breaks a term wider than 80 columns over
    /// several lines; only tables and arrays get that wide, and RabbitMQ's
    /// texts for those are not reproduced line for line.)
    fn render(&self) -> String {
        let mut out = String::new();
        self.render_into(&mut out);
        out
    }

    fn render_into(&self, out: &mut String) {
        match self {
            Term::Integer(n) => out.push_str(&n.to_string()),
            Term::Float(f) => out.push_str(&erlang_float(*f)),
            Term::Atom(a) => out.push_str(a),
            Term::Binary(b) => {
                out.push_str("<<");
                if b.is_empty() {
                } else if is_printable_latin1(b) {
                    out.push_str(&erlang_string(b));
                } else {
                    let bytes: Vec<String> = b.iter().map(u8::to_string).collect();
                    out.push_str(&bytes.join(","));
                }
                out.push_str(">>");
            }
            Term::Tuple(items) | Term::List(items) => {
                let (open, close) = match self {
                    Term::Tuple(_) => ('{', '}'),
                    _ => ('[', ']'),
                };
                out.push(open);
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.render_into(out);
                }
                out.push(close);
            }
        }
    }
}

/// `io_lib:printable_latin1_list/1`, the test `~p` applies to strings and
/// binaries (RabbitMQ runs with the default latin1 printable range).
fn is_printable_latin1(chars: &[u8]) -> bool {
    chars
        .iter()
        .all(|&c| matches!(c, 32..=126 | 160..=255 | b'\n' | b'\r' | b'\t' | 11 | 8 | 12 | 27))
}

/// An Erlang string as `~p` prints it: quoted and escaped when printable,
/// else the list of its character codes. The characters are bytes, written
/// through unchanged, so UTF-8 in a client's value comes back as it went in.
fn erlang_string(chars: &[u8]) -> String {
    if !is_printable_latin1(chars) {
        let codes: Vec<String> = chars.iter().map(u8::to_string).collect();
        return format!("[{}]", codes.join(","));
    }
    let mut out = Vec::with_capacity(chars.len() + 2);
    out.push(b'"');
    for &c in chars {
        let escaped: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            11 => b"\\v",
            8 => b"\\b",
            12 => b"\\f",
            27 => b"\\e",
            _ => {
                out.push(c);
                continue;
            }
        };
        out.extend_from_slice(escaped);
    }
    out.push(b'"');
    String::from_utf8_lossy(&out).into_owned()
}

/// A float as Erlang's `~p` prints it: the shortest digits that read back
/// to the same float, placed as `io_lib_format:insert_decimal/2` places them
/// (plain notation unless an exponent is shorter: 100.0, 1.0e3, 0.0001, 1.0e-5).
fn erlang_float(f: f64) -> String {
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.to_string();
    }
    if !f.is_finite() {
        // Erlang has no such floats; RabbitMQ would not have parsed the frame.
        return f.to_string();
    }
    // Rust's `{:e}` is also the shortest round-trip form: "-1.234e5", "1e3".
    let scientific = format!("{:e}", f.abs());
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let exponent: i64 = exponent.parse().unwrap_or(0);
    let sign = if f < 0.0 { "-" } else { "" };
    format!("{}{}", sign, insert_decimal(exponent + 1, &digits))
}

/// `io_lib_format:insert_decimal(Place, Digits)`: `place` digits go before
/// the point.
fn insert_decimal(place: i64, digits: &str) -> String {
    let len = digits.len() as i64;
    if place == 0 {
        return format!("0.{}", digits);
    }
    if (0..len).contains(&place) {
        let (whole, fraction) = digits.split_at(place as usize);
        return format!("{}.{}", whole, fraction);
    }
    let exponent = (place - 1).to_string();
    let exponent_dot = if len == 1 { 2 } else { 1 };
    let exponent_cost = exponent.len() as i64 + 1 + exponent_dot;
    let plain = if place < 0 {
        (2 - place <= exponent_cost)
            .then(|| format!("0.{}{}", "0".repeat((-place) as usize), digits))
    } else {
        (place - len + 2 <= exponent_cost)
            .then(|| format!("{}{}.0", digits, "0".repeat((place - len) as usize)))
    };
    plain.unwrap_or_else(|| {
        let (first, rest) = digits.split_at(1);
        if rest.is_empty() {
            format!("{}.0e{}", first, exponent)
        } else {
            format!("{}.{}e{}", first, rest, exponent)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| (ShortStr::from(*k), v.clone()))
            .collect()
    }

    fn s(text: &str) -> FieldValue {
        FieldValue::LongStr(Bytes::copy_from_slice(text.as_bytes()))
    }

    fn refused(entries: &[(&str, FieldValue)]) -> String {
        let error = QueueArgs::parse("q", &table(entries)).expect_err("should be refused");
        assert_eq!(error.code.code(), 406, "{error}");
        error.text
    }

    const PREFIX: &str = "invalid arg '";

    #[test]
    fn no_arguments_parse_to_the_default() {
        assert_eq!(
            QueueArgs::parse("q", &FieldTable::new()).unwrap(),
            QueueArgs::default()
        );
        assert_eq!(QueueArgs::default().overflow, Overflow::DropHead);
    }

    #[test]
    fn every_argument_is_parsed() {
        let args = table(&[
            ("x-message-ttl", FieldValue::I32(60_000)),
            ("x-expires", FieldValue::U32(1_800_000)),
            ("x-max-length", FieldValue::I64(10)),
            ("x-max-length-bytes", FieldValue::U16(4096)),
            ("x-overflow", s("reject-publish-dlx")),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("dead")),
            ("x-max-priority", FieldValue::U8(255)),
            ("x-single-active-consumer", FieldValue::Bool(true)),
            ("x-queue-mode", s("lazy")),
            ("x-queue-version", FieldValue::I8(2)),
            ("x-queue-type", s("classic")),
            ("x-queue-master-locator", FieldValue::I64(-1)),
            ("x-unknown", s("ignored")),
            ("not-x", FieldValue::Void),
        ]);
        let parsed = QueueArgs::parse("q", &args).unwrap();
        assert_eq!(
            parsed,
            QueueArgs {
                message_ttl_ms: Some(60_000),
                expires_ms: Some(1_800_000),
                max_length: Some(10),
                max_length_bytes: Some(4096),
                overflow: Overflow::RejectPublishDlx,
                dead_letter_exchange: Some(ShortStr::from("")),
                dead_letter_routing_key: Some(ShortStr::from("dead")),
                max_priority: Some(255),
                single_active_consumer: true,
                queue_type: QueueType::Classic,
                delivery_limit: None,
            }
        );
    }

    #[test]
    fn bounds_are_inclusive() {
        let max = EXPIRY_MS_MAX as i64;
        let ok = |entries: &[(&str, FieldValue)]| QueueArgs::parse("q", &table(entries)).unwrap();
        assert_eq!(
            ok(&[("x-message-ttl", FieldValue::I8(0))]).message_ttl_ms,
            Some(0)
        );
        assert_eq!(
            ok(&[("x-message-ttl", FieldValue::I64(max))]).message_ttl_ms,
            Some(EXPIRY_MS_MAX)
        );
        assert_eq!(
            ok(&[("x-expires", FieldValue::I64(max))]).expires_ms,
            Some(EXPIRY_MS_MAX)
        );
        assert_eq!(ok(&[("x-expires", FieldValue::I16(1))]).expires_ms, Some(1));
        assert_eq!(
            ok(&[("x-max-priority", FieldValue::I8(0))]).max_priority,
            Some(0)
        );
        assert_eq!(
            ok(&[("x-max-length", FieldValue::I8(0))]).max_length,
            Some(0)
        );
        assert_eq!(
            ok(&[("x-max-length-bytes", FieldValue::I64(i64::MAX))]).max_length_bytes,
            Some(i64::MAX as u64)
        );
    }

    #[test]
    fn integer_arguments_refuse_other_types_and_out_of_range_values() {
        for key in [
            "x-message-ttl",
            "x-expires",
            "x-max-length",
            "x-max-length-bytes",
            "x-max-priority",
        ] {
            for (value, name) in [
                (s("1"), "longstr"),
                (FieldValue::Bool(true), "bool"),
                (FieldValue::F64(1.0), "double"),
                (FieldValue::F32(1.0), "float"),
                (FieldValue::Timestamp(1), "timestamp"),
                (FieldValue::Decimal { scale: 0, value: 1 }, "decimal"),
                (FieldValue::ByteArray(Bytes::from_static(b"1")), "binary"),
                (FieldValue::Void, "void"),
            ] {
                assert_eq!(
                    refused(&[(key, value)]),
                    format!(
                        "{PREFIX}{key}' for queue 'q' in vhost '/': \"expected integer, got {name}\""
                    )
                );
            }
            assert_eq!(
                refused(&[(key, FieldValue::I32(-1))]),
                format!("{PREFIX}{key}' for queue 'q' in vhost '/': {{value_negative,-1}}")
            );
        }
        let text =
            |key: &str, term: &str| format!("{PREFIX}{key}' for queue 'q' in vhost '/': {term}");
        assert_eq!(
            refused(&[("x-expires", FieldValue::U8(0))]),
            text("x-expires", "{value_zero,0}")
        );
        assert_eq!(
            refused(&[("x-expires", FieldValue::I64(315_360_000_001))]),
            text("x-expires", "{value_too_large,315360000001}")
        );
        assert_eq!(
            refused(&[("x-message-ttl", FieldValue::I64(315_360_000_001))]),
            text("x-message-ttl", "{value_too_large,315360000001}")
        );
        assert_eq!(
            refused(&[("x-max-priority", FieldValue::I16(256))]),
            text("x-max-priority", "{max_value_exceeded,256}")
        );
    }

    #[test]
    fn string_and_bool_arguments_refuse_other_types_and_values() {
        let text =
            |key: &str, term: &str| format!("{PREFIX}{key}' for queue 'q' in vhost '/': {term}");
        assert_eq!(
            refused(&[("x-overflow", s("drop-tail"))]),
            text("x-overflow", "invalid_overflow")
        );
        assert_eq!(
            refused(&[("x-overflow", FieldValue::I32(1))]),
            text("x-overflow", "{unacceptable_type,signedint}")
        );
        assert_eq!(
            refused(&[("x-single-active-consumer", s("true"))]),
            text("x-single-active-consumer", "{unacceptable_type,longstr}")
        );
        assert_eq!(
            refused(&[("x-dead-letter-routing-key", s("k"))]),
            text(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined"
            )
        );
        assert_eq!(
            refused(&[
                ("x-dead-letter-exchange", s("dlx")),
                ("x-dead-letter-routing-key", FieldValue::I8(1))
            ]),
            text("x-dead-letter-routing-key", "{unacceptable_type,byte}")
        );
        assert_eq!(
            refused(&[("x-queue-mode", s("eager"))]),
            text("x-queue-mode", "\"unsupported queue mode 'eager'\"")
        );
        assert_eq!(
            refused(&[("x-queue-mode", FieldValue::Bool(true))]),
            text("x-queue-mode", "{unacceptable_type,bool}")
        );
        assert_eq!(
            refused(&[("x-queue-version", FieldValue::I32(3))]),
            text("x-queue-version", "\"unsupported queue version '3'\"")
        );
        assert_eq!(
            refused(&[("x-queue-type", s("fancy"))]),
            text("x-queue-type", "\"unsupported queue type 'fancy'\"")
        );
        assert_eq!(
            refused(&[("x-queue-type", FieldValue::I32(1))]),
            text("x-queue-type", "{unacceptable_type,signedint}")
        );
        // A dead-letter exchange of the wrong type is caught first, with its own text.
        assert_eq!(
            refused(&[
                ("x-message-ttl", FieldValue::I32(-1)),
                ("x-dead-letter-exchange", FieldValue::I32(1))
            ]),
            "invalid type 'signedint' for arg 'x-dead-letter-exchange' in queue 'q' in vhost '/'"
        );
    }

    #[test]
    fn streams_are_refused_and_quorum_queues_take_their_own_arguments() {
        let text = refused(&[("x-queue-type", s("stream"))]);
        assert!(
            text.starts_with(&format!("{PREFIX}x-queue-type' for queue 'q' in vhost '/': queue type 'stream' is not supported")),
            "{text}"
        );
        let quorum = |extra: &[(&str, FieldValue)]| {
            let mut entries = vec![("x-queue-type", s("quorum"))];
            entries.extend(extra.iter().cloned());
            QueueArgs::parse("q", &table(&entries))
        };
        let parsed = quorum(&[("x-delivery-limit", FieldValue::I32(3))]).unwrap();
        assert_eq!(
            (parsed.queue_type, parsed.delivery_limit),
            (QueueType::Quorum, Some(3))
        );
        assert_eq!(
            quorum(&[("x-max-priority", FieldValue::I32(3))]).unwrap_err().text,
            format!("{PREFIX}x-max-priority' for queue 'q' in vhost '/' of queue type rabbit_quorum_queue")
        );
        assert_eq!(
            quorum(&[("x-dead-letter-strategy", s("sometimes"))])
                .unwrap_err()
                .text,
            format!(
                "{PREFIX}x-dead-letter-strategy' for queue 'q' in vhost '/': invalid_dlx_strategy"
            )
        );
        let flags = |durable, exclusive, auto_delete| {
            check_queue_type_flags("q", &parsed, durable, exclusive, auto_delete)
                .map_err(|e| e.text)
        };
        assert_eq!(flags(true, false, false), Ok(()));
        assert_eq!(
            flags(false, true, true),
            Err("invalid property 'auto-delete' for queue 'q' in vhost '/'".to_string())
        );
        assert_eq!(
            flags(false, true, false),
            Err("invalid property 'exclusive-owner' for queue 'q' in vhost '/'".to_string())
        );
        assert_eq!(
            flags(false, false, false),
            Err("invalid property 'non-durable' for queue 'q' in vhost '/'".to_string())
        );
        let named = check_server_named(&table(&[("x-queue-type", s("quorum"))])).unwrap_err();
        assert_eq!(
            named.text,
            "Cannot declare a server-named queue for type rabbit_quorum_queue"
        );
        assert!(check_server_named(&table(&[("x-queue-type", s("classic"))])).is_ok());
        assert!(check_server_named(&table(&[("x-queue-type", s("fancy"))])).is_ok());
    }

    #[test]
    fn other_queue_types_arguments_are_refused_in_table_order() {
        assert_eq!(
            refused(&[
                ("x-max-age", s("1D")),
                ("x-delivery-limit", FieldValue::I32(3))
            ]),
            "invalid arg 'x-max-age' for queue 'q' in vhost '/' of queue type rabbit_classic_queue"
        );
        // ... but only once every classic argument has passed.
        assert_eq!(
            refused(&[
                ("x-delivery-limit", FieldValue::I32(3)),
                ("x-max-length", FieldValue::I32(-2))
            ]),
            "invalid arg 'x-max-length' for queue 'q' in vhost '/': {value_negative,-2}"
        );
    }

    #[test]
    fn checks_run_in_rabbitmq_order_not_table_order() {
        assert_eq!(
            refused(&[
                ("x-max-length", FieldValue::I32(-2)),
                ("x-expires", FieldValue::I32(0))
            ]),
            "invalid arg 'x-expires' for queue 'q' in vhost '/': {value_zero,0}"
        );
        // The first of duplicate keys is the one that counts, as in rabbit_misc:table_lookup.
        let args = table(&[("x-max-length", FieldValue::I32(5))]);
        let mut args = args;
        args.0
            .push((ShortStr::from("x-max-length"), FieldValue::I32(-1)));
        assert_eq!(QueueArgs::parse("q", &args).unwrap().max_length, Some(5));
    }

    #[test]
    fn unprintable_values_print_as_character_lists() {
        assert_eq!(
            refused(&[("x-queue-mode", s("a\u{1}"))]),
            format!(
                "{PREFIX}x-queue-mode' for queue 'q' in vhost '/': [{}]",
                "unsupported queue mode 'a\u{1}'"
                    .bytes()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        );
        // Latin-1 printable bytes go through: UTF-8 "é" is 0xC3 0xA9.
        assert_eq!(
            refused(&[("x-queue-mode", s("é\"\n"))]),
            "invalid arg 'x-queue-mode' for queue 'q' in vhost '/': \"unsupported queue mode 'é\\\"\\n'\""
        );
    }

    fn equivalent(
        received: &[(&str, FieldValue)],
        current: &[(&str, FieldValue)],
    ) -> Result<(), String> {
        check_equivalent("q", &table(received), &table(current)).map_err(|e| {
            assert_eq!(e.code.code(), 406);
            e.text
        })
    }

    #[test]
    fn equal_values_of_other_integer_widths_are_equivalent() {
        let ttl = |v| vec![("x-message-ttl", v)];
        for v in [
            FieldValue::U8(100),
            FieldValue::I16(100),
            FieldValue::U32(100),
            FieldValue::Timestamp(100),
        ] {
            assert_eq!(equivalent(&ttl(v), &ttl(FieldValue::I64(100))), Ok(()));
        }
        assert_eq!(
            equivalent(&ttl(FieldValue::F64(100.0)), &ttl(FieldValue::I64(100))),
            Err("inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received '100.0' but current is '100'".into())
        );
        // Void's value is `undefined`, which RabbitMQ prints as a missing value.
        assert_eq!(
            equivalent(&ttl(FieldValue::Void), &ttl(FieldValue::I64(100))),
            Err("inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received none but current is '100'".into())
        );
        assert_eq!(
            equivalent(&ttl(FieldValue::Void), &[]),
            Err("inequivalent arg 'x-message-ttl' for queue 'q' in vhost '/': received the value 'undefined' of type 'void' but current is none".into())
        );
        // Keys outside the list are not compared.
        assert_eq!(equivalent(&[("x-other", FieldValue::I8(1))], &[]), Ok(()));
        // A missing x-queue-type is "classic".
        assert_eq!(equivalent(&[("x-queue-type", s("classic"))], &[]), Ok(()));
        assert_eq!(equivalent(&[], &[("x-queue-type", s("classic"))]), Ok(()));
    }

    #[test]
    fn inequivalent_texts_match_rabbitmq() {
        let text = |key: &str, rest: &str| {
            Err(format!(
                "inequivalent arg '{key}' for queue 'q' in vhost '/': received {rest}"
            ))
        };
        assert_eq!(
            equivalent(&[("x-message-ttl", FieldValue::I32(2000))], &[]),
            text(
                "x-message-ttl",
                "the value '2000' of type 'signedint' but current is none"
            )
        );
        assert_eq!(
            equivalent(&[], &[("x-dead-letter-exchange", s("dlx"))]),
            text(
                "x-dead-letter-exchange",
                "none but current is the value 'dlx' of type 'longstr'"
            )
        );
        assert_eq!(
            equivalent(
                &[("x-max-length", FieldValue::I8(3))],
                &[("x-max-length", FieldValue::I64(2))]
            ),
            text("x-max-length", "'3' but current is '2'")
        );
        assert_eq!(
            equivalent(
                &[("x-overflow", s("reject-publish"))],
                &[("x-overflow", s("drop-head"))]
            ),
            text("x-overflow", "'reject-publish' but current is 'drop-head'")
        );
        assert_eq!(
            equivalent(
                &[("x-single-active-consumer", FieldValue::Bool(false))],
                &[("x-single-active-consumer", FieldValue::Bool(true))]
            ),
            text("x-single-active-consumer", "'false' but current is 'true'")
        );
        assert_eq!(
            equivalent(
                &[("x-expires", s("1000"))],
                &[("x-expires", FieldValue::I32(1000))]
            ),
            text("x-expires", "'1000' but current is '1000'")
        );
        assert_eq!(
            equivalent(&[("x-queue-type", s("quorum"))], &[]),
            text(
                "x-queue-type",
                "the value 'quorum' of type 'longstr' but current is none"
            )
        );
        // The first key in RabbitMQ's order is reported.
        assert_eq!(
            equivalent(
                &[
                    ("x-max-length", FieldValue::I8(3)),
                    ("x-expires", FieldValue::I32(5))
                ],
                &[]
            ),
            text(
                "x-expires",
                "the value '5' of type 'signedint' but current is none"
            )
        );
    }

    #[test]
    fn terms_print_as_erlang_prints_them() {
        let p = |v: FieldValue| Term::of(&v).render();
        assert_eq!(p(FieldValue::Decimal { scale: 2, value: 5 }), "{2,5}");
        assert_eq!(p(FieldValue::Void), "undefined");
        assert_eq!(p(FieldValue::Array(vec![])), "[]");
        let mut inner = FieldTable::new();
        inner.insert("a", FieldValue::I64(1));
        inner.insert("b", s("x y"));
        inner.insert("c", FieldValue::ByteArray(Bytes::from_static(&[1, 2])));
        inner.insert("d", FieldValue::Array(vec![FieldValue::Bool(true), s("")]));
        assert_eq!(
            p(FieldValue::Table(inner)),
            "[{<<\"a\">>,long,1},{<<\"b\">>,longstr,<<\"x y\">>},{<<\"c\">>,binary,<<1,2>>},\
             {<<\"d\">>,array,[{bool,true},{longstr,<<>>}]}]"
        );
    }

    #[test]
    fn floats_print_as_erlang_prints_them() {
        // Each pair was printed by `io:format("~p", [F])` on Erlang/OTP 25.
        for (f, text) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.5, "-2.5"),
            (15.0, "15.0"),
            (100.0, "100.0"),
            (1000.0, "1.0e3"),
            (1234.0, "1234.0"),
            (12340.0, "12340.0"),
            (123400.0, "1.234e5"),
            (100000.0, "1.0e5"),
            (999999.0, "999999.0"),
            (2.0e10, "2.0e10"),
            (1.0e21, "1.0e21"),
            (123456789012345680000.0, "1.2345678901234568e20"),
            (0.1, "0.1"),
            (0.5, "0.5"),
            (0.001, "0.001"),
            (0.0001, "0.0001"),
            (0.00001, "1.0e-5"),
            (1.2e-5, "1.2e-5"),
            (3.25159, "3.25159"),
            (1.100000023841858, "1.100000023841858"),
            (1.0e300, "1.0e300"),
            (5.0e-324, "5.0e-324"),
            (f64::MAX, "1.7976931348623157e308"),
        ] {
            assert_eq!(erlang_float(f), text, "{f:e}");
        }
        // A float field is widened to a double, then printed.
        assert_eq!(
            Term::of(&FieldValue::F32(1.1)).render(),
            "1.100000023841858"
        );
    }
}
