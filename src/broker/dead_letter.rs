//! Dead-lettering: a message rejected, expired or dropped for length by a
//! queue with `x-dead-letter-exchange` is republished there by the queue's
//! shard, with RabbitMQ's x-death history in its headers. The target queues
//! may live on any shard; they receive an ordinary `Enqueue`.

use bytes::Bytes;
use tracing::warn;

use crate::broker::delayed::DelayedPublish;
use crate::broker::queue::{DeadLetter, DeathReason};
use crate::broker::timers::Timers;
use crate::broker::vhost::Routed;
use crate::broker::{ShardMsg, ShardState};
use crate::model::message::Message;
use warren_protocol::{FieldTable, FieldValue, ShortStr};

impl ShardState {
    /// Republishes every message the shard's queues dead-lettered.
    pub(crate) fn route_dead_letters(&mut self) {
        let mut dead = std::mem::take(&mut self.dead_letters);
        for letter in dead.drain(..) {
            self.route_dead_letter(letter);
        }
        // Keep the capacity unless dead-lettering added more meanwhile.
        if self.dead_letters.is_empty() {
            self.dead_letters = dead;
        }
    }

    fn route_dead_letter(&mut self, letter: DeadLetter) {
        let Some(queue) = self.queues.get(&letter.queue) else {
            return;
        };
        let args = &queue.meta.args;
        let Some(dlx) = args.dead_letter_exchange.clone() else {
            return;
        };
        let dlrk = args.dead_letter_routing_key.clone();
        let queue_name = queue.meta.name.clone();
        let vhost_name = queue.meta.vhost.clone();
        let Some(vhost) = self.vhosts.get(vhost_name.as_str()) else {
            return;
        };
        let Some(exchange) = vhost.exchanges.get(dlx.as_str()) else {
            // RabbitMQ drops a dead letter whose exchange does not exist.
            return;
        };
        let (message, routing_keys, deaths) =
            dead_lettered(letter.message, letter.reason, &queue_name, &dlx, dlrk);
        let mut scratch = Vec::new();
        let mut routed = Routed::default();
        vhost.route(
            exchange,
            routing_keys[0].as_str(),
            &routing_keys[1..],
            &message.properties(),
            &mut scratch,
            &mut routed,
        );
        for target in routed.queues {
            if letter.reason != DeathReason::Rejected {
                let name = self
                    .vhost(&vhost_name)
                    .and_then(|v| v.queue_by_id(target.id))
                    .map(|q| q.name.clone());
                if let Some(name) = name.filter(|n| is_cycle(n.as_str(), &deaths)) {
                    if self.dead_letter_cycles_logged.insert(name.clone()) {
                        warn!(
                            queue = %name,
                            "dead letter dropped: it went round a dead-letter cycle without a \
                             rejection (logged once per queue)"
                        );
                    }
                    continue;
                }
            }
            self.send(
                target.shard,
                ShardMsg::Enqueue {
                    queue: target.id,
                    message: message.clone(),
                    confirm: None,
                },
            );
        }
        // A dead-letter exchange of type x-delayed-message holds the message
        // if it carries a positive x-delay, as the plugin would.
        for exchange in routed.delayed {
            self.hold_delayed(DelayedPublish {
                vhost: vhost_name.clone(),
                exchange,
                message: message.clone(),
                extra_keys: routing_keys[1..].iter().map(|k| k.to_string()).collect(),
                delay_ms: routed.delay_ms,
                confirm: None,
            });
        }
    }
}

/// The message as the dead-letter exchange receives it, the routing keys to
/// route it with, and its new x-death array (for cycle detection).
fn dead_lettered(
    message: Message,
    reason: DeathReason,
    queue: &ShortStr,
    dlx: &ShortStr,
    dlrk: Option<ShortStr>,
) -> (Message, Vec<ShortStr>, Vec<FieldValue>) {
    let mut properties = message.properties().decode();
    let mut headers = properties.headers.take().unwrap_or_default();
    // The keys x-death lists: the routing key and the CC keys in the
    // headers (RabbitMQ takes them from the headers, where BCC is gone).
    let mut original_keys = vec![message.routing_key_name()];
    if let Some(FieldValue::Array(cc)) = headers.get("CC") {
        original_keys.extend(
            cc.iter()
                .filter_map(|v| v.as_str())
                .filter(|s| s.len() <= 255)
                .map(ShortStr::from),
        );
    }
    let keep_bcc = dlrk.is_none();
    let routing_keys = match dlrk {
        Some(key) => {
            headers.remove("CC");
            vec![key]
        }
        None => {
            // Routing also takes the BCC keys, as RabbitMQ routes with the
            // message's routing_keys. (A key over 255 bytes, which no
            // binding key equals, is left out, as for CC.)
            let mut keys = original_keys.clone();
            if let Some(bcc) = message.bcc_keys() {
                keys.extend(
                    bcc.iter()
                        .filter(|k| k.len() <= 255)
                        .map(|k| ShortStr::from(k.as_str())),
                );
            }
            keys
        }
    };
    let mut entry = FieldTable::new();
    entry.insert("count", FieldValue::I64(1));
    entry.insert("reason", long_str(reason.as_str()));
    entry.insert("queue", long_str(queue.as_str()));
    entry.insert("time", FieldValue::Timestamp(Timers::unix_seconds()));
    entry.insert("exchange", long_str(message.exchange()));
    entry.insert(
        "routing-keys",
        FieldValue::Array(original_keys.iter().map(|k| long_str(k.as_str())).collect()),
    );
    if let Some(expiration) = &properties.expiration {
        entry.insert("original-expiration", long_str(expiration.as_str()));
    }
    let deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(deaths)) => {
            record_death(deaths, entry, queue.as_str(), reason.as_str())
        }
        _ => {
            // The first death also gets headers of its own
            // (rabbitmq-server#1332).
            headers.insert("x-first-death-reason", long_str(reason.as_str()));
            headers.insert("x-first-death-queue", long_str(queue.as_str()));
            headers.insert("x-first-death-exchange", long_str(message.exchange()));
            vec![FieldValue::Table(entry)]
        }
    };
    // As RabbitMQ 3.13 and later do: the newest x-death entry at a glance
    // (a repeated death keeps its entry's first exchange, and so does this).
    if let Some(FieldValue::Table(newest)) = deaths.first() {
        for (header, field) in [
            ("x-last-death-reason", "reason"),
            ("x-last-death-queue", "queue"),
            ("x-last-death-exchange", "exchange"),
        ] {
            if let Some(value) = newest.get(field) {
                headers.insert(header, value.clone());
            }
        }
    }
    headers.insert("x-death", FieldValue::Array(deaths.clone()));
    // RabbitMQ hands a dead letter's headers on sorted by key.
    headers.0.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    properties.headers = Some(headers);
    // Without this the message could expire again in the queue it reaches.
    properties.expiration = None;
    // With x-dead-letter-routing-key the message's keys are that key alone
    // from now on.
    let bcc_keys = message
        .bcc_keys()
        .filter(|_| keep_bcc)
        .map(<[String]>::to_vec);
    let message = Message::new(
        dlx,
        &routing_keys[0],
        &properties.encode(),
        message.body,
        bcc_keys,
    );
    (message, routing_keys, deaths)
}

/// Adds a death to an existing x-death array: the entry for the same queue
/// and reason has its count raised and moves to the front (keeping its first
/// time, exchange and routing keys, as RabbitMQ does); otherwise the new
/// entry goes first.
fn record_death(
    deaths: Vec<FieldValue>,
    entry: FieldTable,
    queue: &str,
    reason: &str,
) -> Vec<FieldValue> {
    let same = |t: &FieldTable| {
        t.get("queue").and_then(FieldValue::as_str) == Some(queue)
            && t.get("reason").and_then(FieldValue::as_str) == Some(reason)
    };
    let mut front = None;
    let mut others = Vec::with_capacity(deaths.len() + 1);
    for death in deaths {
        match death {
            FieldValue::Table(t) if front.is_none() && same(&t) => front = Some(t),
            FieldValue::Table(t) if same(&t) => {}
            other => others.push(other),
        }
    }
    let front = match front {
        Some(mut t) => {
            let count = t.get("count").and_then(FieldValue::as_i64).unwrap_or(0);
            t.insert("count", FieldValue::I64(count + 1));
            // RabbitMQ sorts an updated entry's fields by name.
            t.0.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            t
        }
        None => entry,
    };
    let mut result = Vec::with_capacity(others.len() + 1);
    result.push(FieldValue::Table(front));
    result.extend(others);
    result
}

/// RabbitMQ's cycle rule: the message has died in `queue` before, and every
/// death since then (that one included) was automatic, not a rejection.
fn is_cycle(queue: &str, deaths: &[FieldValue]) -> bool {
    let mut seen = Vec::new();
    for death in deaths {
        seen.push(death);
        let FieldValue::Table(t) = death else {
            continue;
        };
        if t.get("queue").and_then(FieldValue::as_str) == Some(queue) {
            return seen.iter().all(|d| match d {
                FieldValue::Table(t) => {
                    t.get("reason").and_then(FieldValue::as_str) != Some("rejected")
                }
                // Something a client put there: not a fully automatic cycle.
                _ => false,
            });
        }
    }
    false
}

fn long_str(s: &str) -> FieldValue {
    FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn death(queue: &str, reason: &str, count: i64) -> FieldValue {
        let mut t = FieldTable::new();
        t.insert("count", FieldValue::I64(count));
        t.insert("reason", long_str(reason));
        t.insert("queue", long_str(queue));
        FieldValue::Table(t)
    }

    #[test]
    fn a_repeated_death_counts_up_and_moves_to_the_front() {
        let deaths = vec![death("b", "expired", 1), death("a", "expired", 1)];
        let entry = match death("a", "expired", 1) {
            FieldValue::Table(t) => t,
            _ => unreachable!(),
        };
        let deaths = record_death(deaths, entry, "a", "expired");
        assert_eq!(deaths.len(), 2);
        let first = deaths[0].as_table().unwrap();
        assert_eq!(first.get("queue").and_then(FieldValue::as_str), Some("a"));
        assert_eq!(first.get("count").and_then(FieldValue::as_i64), Some(2));
    }

    #[test]
    fn cycles_without_a_rejection_are_cycles() {
        let deaths = vec![death("a", "expired", 1), death("b", "expired", 1)];
        assert!(is_cycle("b", &deaths));
        assert!(is_cycle("a", &deaths));
        assert!(!is_cycle("c", &deaths));
        let deaths = vec![death("a", "rejected", 1), death("b", "expired", 1)];
        assert!(!is_cycle("b", &deaths));
    }
}
