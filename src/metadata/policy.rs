//! Policies as RabbitMQ 3.10 keeps them (`rabbit_policy`,
//! `rabbit_policies`): per vhost, a name, a `pattern` (an unanchored
//! regular expression run on queue and exchange names), what it applies
//! to (`queues`, `exchanges` or `all`), a `priority` and a `definition` of
//! settings. The matching policy of highest priority applies to a queue or
//! exchange; for a queue, its own arguments and that policy's definition
//! combine into its effective arguments by RabbitMQ's rule: for
//! `expires`, `message-ttl`, `max-length`, `max-length-bytes` and
//! `delivery-limit` the smaller value wins, for the others the queue's
//! argument wins.
//!
//! Policies live in the vhost's `VhostDef` (so every shard's copy of the
//! access-control database has them and a deleted vhost takes its policies
//! along); they change through `AccessChange::PolicySet`/`PolicyCleared`.
//! Plain data and pure functions: no I/O.

use crate::metadata::auth::Pattern;
use crate::metadata::queue_args::{Overflow, QueueArgs, QueueType, EXPIRY_MS_MAX};
use crate::util::json::Json;
use warren_protocol::{FieldTable, ShortStr};

/// What a policy applies to (`apply-to`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum ApplyTo {
    #[default]
    All,
    Queues,
    Exchanges,
}

impl ApplyTo {
    pub(crate) fn parse(text: &str) -> Option<ApplyTo> {
        match text {
            "all" => Some(ApplyTo::All),
            "queues" => Some(ApplyTo::Queues),
            "exchanges" => Some(ApplyTo::Exchanges),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ApplyTo::All => "all",
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
        }
    }
}

/// A policy's definition, checked and typed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct PolicyDefinition {
    pub(crate) message_ttl_ms: Option<u64>,
    pub(crate) expires_ms: Option<u64>,
    pub(crate) max_length: Option<u64>,
    pub(crate) max_length_bytes: Option<u64>,
    pub(crate) overflow: Option<Overflow>,
    pub(crate) dead_letter_exchange: Option<ShortStr>,
    pub(crate) dead_letter_routing_key: Option<ShortStr>,
    pub(crate) alternate_exchange: Option<ShortStr>,
    pub(crate) delivery_limit: Option<u64>,
}

/// One policy of a vhost.
#[derive(Clone, Debug)]
pub(crate) struct Policy {
    pub(crate) vhost: String,
    pub(crate) name: String,
    pub(crate) pattern: Pattern,
    pub(crate) apply_to: ApplyTo,
    pub(crate) priority: i64,
    /// The definition as given (members in the order given), for listings
    /// and the definitions file.
    pub(crate) definition: Json,
    /// The same, checked and typed.
    pub(crate) settings: PolicyDefinition,
}

impl PartialEq for Policy {
    fn eq(&self, other: &Self) -> bool {
        self.vhost == other.vhost
            && self.name == other.name
            && self.pattern == other.pattern
            && self.apply_to == other.apply_to
            && self.priority == other.priority
            && self.definition == other.definition
    }
}
impl Eq for Policy {}

/// The definition keys warren accepts, as `rabbit_policies` registers them
/// (plus `queue-mode`, accepted and without effect, as `x-queue-mode` is).
const KEYS: &[&str] = &[
    "alternate-exchange",
    "dead-letter-exchange",
    "dead-letter-routing-key",
    "delivery-limit",
    "expires",
    "max-length",
    "max-length-bytes",
    "message-ttl",
    "overflow",
    "queue-mode",
];

/// A JSON value as Erlang's `~p` prints the term the management API
/// decoded it to: strings as binaries, what the validation texts quote.
fn erlang_term(value: &Json) -> String {
    match value {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Int(n) => n.to_string(),
        Json::Float(f) => format!("{f:e}"),
        Json::Str(s) => format!("<<\"{}\">>", s.replace('\\', "\\\\").replace('"', "\\\"")),
        Json::Array(items) => format!(
            "[{}]",
            items.iter().map(erlang_term).collect::<Vec<_>>().join(",")
        ),
        Json::Object(members) => format!(
            "[{}]",
            members
                .iter()
                .map(|(k, v)| format!("{{<<\"{}\">>,{}}}", k, erlang_term(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn non_negative(value: &Json) -> Option<u64> {
    match value {
        Json::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

/// Checks a definition as `rabbit_policy` and `rabbit_policies` do; the
/// error is RabbitMQ's text (the management API puts it after
/// "Validation failed").
pub(crate) fn check_definition(definition: &Json) -> Result<PolicyDefinition, String> {
    let Some(members) = definition.as_object() else {
        return Err(format!(
            "{} is not a valid policy definition",
            erlang_term(definition)
        ));
    };
    if members.is_empty() {
        return Err("no policy provided".into());
    }
    let unknown: Vec<&str> = members
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !KEYS.contains(k))
        .collect();
    if !unknown.is_empty() {
        let keys: Vec<String> = unknown.iter().map(|k| format!("<<\"{k}\">>")).collect();
        return Err(format!(
            "[{}] are not recognised policy settings",
            keys.join(",")
        ));
    }
    let mut settings = PolicyDefinition::default();
    for (key, value) in members {
        let bad = |what: &str| format!("{} is not a valid {}", erlang_term(value), what);
        let name = |what: &str| match value {
            Json::Str(s) if s.len() <= 255 => Ok(ShortStr::from(s.as_str())),
            _ => Err(bad(what)),
        };
        match key.as_str() {
            "message-ttl" => {
                settings.message_ttl_ms = Some(
                    non_negative(value)
                        .filter(|&n| n <= EXPIRY_MS_MAX)
                        .ok_or_else(|| bad("message TTL"))?,
                )
            }
            "expires" => {
                settings.expires_ms = Some(
                    non_negative(value)
                        .filter(|&n| (1..=EXPIRY_MS_MAX).contains(&n))
                        .ok_or_else(|| bad("queue expiry"))?,
                )
            }
            "max-length" => {
                settings.max_length =
                    Some(non_negative(value).ok_or_else(|| bad("maximum length"))?)
            }
            "max-length-bytes" => {
                settings.max_length_bytes =
                    Some(non_negative(value).ok_or_else(|| bad("maximum length in bytes"))?)
            }
            "delivery-limit" => {
                settings.delivery_limit =
                    Some(non_negative(value).ok_or_else(|| bad("delivery limit"))?)
            }
            "overflow" => {
                settings.overflow = Some(
                    value
                        .as_str()
                        .and_then(|s| Overflow::parse(s.as_bytes()))
                        .ok_or_else(|| bad("overflow value"))?,
                )
            }
            // Accepted and without effect, as `x-queue-mode` is.
            "queue-mode" if !matches!(value.as_str(), Some("default" | "lazy")) => {
                return Err(bad("queue-mode value"));
            }
            "dead-letter-exchange" => {
                settings.dead_letter_exchange = Some(name("dead letter exchange name")?)
            }
            "dead-letter-routing-key" => {
                settings.dead_letter_routing_key = Some(name("dead letter routing key")?)
            }
            "alternate-exchange" => {
                settings.alternate_exchange = Some(name("alternate exchange name")?)
            }
            _ => {}
        }
    }
    Ok(settings)
}

impl Policy {
    /// A policy checked as `rabbit_policy:set` checks it; the error is
    /// RabbitMQ's text.
    pub(crate) fn new(
        vhost: &str,
        name: &str,
        pattern: &str,
        apply_to: ApplyTo,
        priority: i64,
        definition: Json,
    ) -> Result<Policy, String> {
        let compiled = Pattern::new(pattern);
        if !compiled.is_valid() {
            return Err(format!(
                "pattern should be a regular expression but is invalid: {}",
                erlang_term(&Json::Str(pattern.to_string()))
            ));
        }
        let settings = check_definition(&definition)?;
        Ok(Policy {
            vhost: vhost.to_string(),
            name: name.to_string(),
            pattern: compiled,
            apply_to,
            priority,
            definition,
            settings,
        })
    }

    /// Whether this policy applies to the queue (or exchange) `name`.
    /// `amq.*` exchanges and the default exchange get no policy.
    pub(crate) fn applies_to(&self, name: &str, queue: bool) -> bool {
        let kind_fits = match self.apply_to {
            ApplyTo::All => true,
            ApplyTo::Queues => queue,
            ApplyTo::Exchanges => !queue,
        };
        // RabbitMQ's pattern "" matches only the empty name, which no
        // queue has; `Pattern` runs it as "^$".
        kind_fits && (queue || !(name.is_empty() || name.starts_with("amq."))) && {
            self.pattern.matches(name)
        }
    }
}

/// The policy that applies to `name` among `policies`: the matching one of
/// highest priority (on a tie, RabbitMQ's sort keeps the last in name
/// order; so does this).
pub(crate) fn matching<'a>(
    policies: impl IntoIterator<Item = &'a Policy>,
    name: &str,
    queue: bool,
) -> Option<&'a Policy> {
    let mut best: Option<&Policy> = None;
    for policy in policies {
        if policy.applies_to(name, queue) && best.is_none_or(|b| policy.priority >= b.priority) {
            best = Some(policy);
        }
    }
    best
}

fn smaller(arg: Option<u64>, policy: Option<u64>) -> Option<u64> {
    match (arg, policy) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    }
}

/// A queue's effective arguments: `declared` (checked from `arguments`)
/// combined with the policy's settings by `rabbit_amqqueue_process`'s
/// rule (`res_min` for lengths and times, `res_arg` for the rest).
pub(crate) fn effective_args(
    declared: &QueueArgs,
    arguments: &FieldTable,
    policy: Option<&PolicyDefinition>,
) -> QueueArgs {
    let Some(p) = policy else {
        return declared.clone();
    };
    let mut args = declared.clone();
    args.message_ttl_ms = smaller(declared.message_ttl_ms, p.message_ttl_ms);
    args.expires_ms = smaller(declared.expires_ms, p.expires_ms);
    args.max_length = smaller(declared.max_length, p.max_length);
    args.max_length_bytes = smaller(declared.max_length_bytes, p.max_length_bytes);
    if arguments.get("x-overflow").is_none() {
        if let Some(overflow) = p.overflow {
            args.overflow = overflow;
        }
    }
    if declared.dead_letter_exchange.is_none() {
        args.dead_letter_exchange = p.dead_letter_exchange.clone();
    }
    if declared.dead_letter_routing_key.is_none() {
        args.dead_letter_routing_key = p.dead_letter_routing_key.clone();
    }
    if declared.queue_type == QueueType::Quorum {
        args.delivery_limit = smaller(declared.delivery_limit, p.delivery_limit);
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::json::parse;

    fn policy(name: &str, pattern: &str, priority: i64, definition: &str) -> Policy {
        Policy::new(
            "/",
            name,
            pattern,
            ApplyTo::All,
            priority,
            parse(definition).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn definitions_are_checked_with_rabbitmqs_texts() {
        let check = |text: &str| check_definition(&parse(text).unwrap());
        assert_eq!(
            check(r#"{"max-length": 2, "foo": 1}"#).unwrap_err(),
            r#"[<<"foo">>] are not recognised policy settings"#
        );
        assert_eq!(
            check(r#"{"max-length": "x"}"#).unwrap_err(),
            r#"<<"x">> is not a valid maximum length"#
        );
        assert_eq!(
            check(r#"{"expires": 0}"#).unwrap_err(),
            "0 is not a valid queue expiry"
        );
        assert_eq!(
            check(r#"{"overflow": "drop"}"#).unwrap_err(),
            r#"<<"drop">> is not a valid overflow value"#
        );
        let ok = check(r#"{"max-length": 2, "queue-mode": "lazy", "dead-letter-exchange": "dlx"}"#)
            .unwrap();
        assert_eq!(ok.max_length, Some(2));
        assert_eq!(ok.dead_letter_exchange.as_deref(), Some("dlx"));
    }

    #[test]
    fn the_highest_priority_match_applies() {
        let all = [
            policy("a", "^lim\\.", 1, r#"{"max-length": 5}"#),
            policy("b", "^lim\\.x", 2, r#"{"max-length": 7}"#),
        ];
        assert_eq!(matching(&all, "lim.x", true).unwrap().name, "b");
        assert_eq!(matching(&all, "lim.y", true).unwrap().name, "a");
        assert!(matching(&all, "other", true).is_none());
        assert!(matching(&all, "amq.direct", false).is_none());
    }

    #[test]
    fn smaller_limits_win_and_arguments_win_the_rest() {
        let declared = QueueArgs {
            max_length: Some(3),
            dead_letter_exchange: Some(ShortStr::from_static("mine")),
            ..QueueArgs::default()
        };
        let p = policy(
            "p",
            ".*",
            0,
            r#"{"max-length": 10, "message-ttl": 50, "dead-letter-exchange": "theirs", "overflow": "reject-publish"}"#,
        );
        let args = effective_args(&declared, &FieldTable::default(), Some(&p.settings));
        assert_eq!(args.max_length, Some(3));
        assert_eq!(args.message_ttl_ms, Some(50));
        assert_eq!(args.dead_letter_exchange.as_deref(), Some("mine"));
        assert_eq!(args.overflow, Overflow::RejectPublish);
    }
}
