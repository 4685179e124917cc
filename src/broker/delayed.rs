//! Delayed delivery: `x-delayed-message` exchanges, compatible with the
//! rabbitmq-delayed-message-exchange plugin. A message that reaches such an
//! exchange with a positive `x-delay` header (milliseconds) is held on the
//! shard that routed it, in `ShardState::delayed` under a u64 id, with one
//! `TimerEvent::Delayed { id }` in the shard's timer wheel: no task and no
//! sleep per message. When the timer fires, the message is routed from that
//! exchange on the shard's replica, by the exchange's `x-delayed-type`, and
//! enqueued on its queues wherever they live. An exchange deleted meanwhile
//! takes its held messages with it.
//!
//! What the plugin does, and warren with it:
//!
//! - `x-delay` may be any integer type, a longstr holding an integer, or a
//!   float or double (truncated); only 0 < delay <= 2^32-1 ms (Erlang's timer
//!   limit) delays, anything else routes at once. A longstr that is no
//!   integer crashes the plugin's channel; warren routes such a message at
//!   once.
//! - A held message is confirmed to a confirming publisher as soon as it is
//!   held (the plugin confirms once it has written the message to Mnesia):
//!   the confirm says nothing about the queues it will reach.
//! - A mandatory publish that is delayed is returned at once with 312
//!   NO_ROUTE and still delivered later: routing finds no queue at publish
//!   time (the plugin's known limitation, issues #7 and #136).
//! - When it is routed, the message's `x-delay` header becomes `-delay` (a
//!   signedint, headers sorted by key, as `rabbit_misc:set_table_value`
//!   leaves them), so another delayed exchange it reaches does not hold it
//!   again. A delay over 2^31 ms does not fit a signedint; warren writes a
//!   long there where RabbitMQ would wrap the value.
//!
//! Held messages live in memory; their bytes (`ShardState::delayed_bytes`,
//! kept as they come and go) count toward the memory alarm, so a publisher
//! filling a delayed exchange is blocked as one filling a queue is. A
//! persistent message held by a durable delayed exchange is also written
//! to the shard's message store, as the plugin writes it to Mnesia: a
//! publish record of the pseudo-queue `DELAYED_QUEUE_ID`, named after the
//! exchange, with its id as sequence number and its due time as deadline;
//! its confirm waits for the disk. A removal record follows when it is
//! routed or its exchange goes. After a restart or a kill -9 recovery hands
//! the held messages back (`restore_delayed`), each due at its time, at
//! once if that passed while the broker was down.

use bytes::Bytes;

use crate::broker::timers::TimerEvent;
use crate::broker::vhost::Routed;
use crate::broker::{ConfirmTarget, ShardMsg, ShardState};
use crate::metadata::exchange::Destination;
use crate::model::message::Message;
use crate::store::record::{PublishHead, DELAYED_QUEUE_ID};
use crate::store::recovery::RecoveredDelayed;
use crate::util::timer_wheel::TimerId;
use warren_protocol::{FieldValue, Properties, ShortStr};

/// The header holding a message's delay in milliseconds.
pub(crate) const DELAY_HEADER: &str = "x-delay";

/// `delivery-mode` of a persistent message.
const PERSISTENT: u8 = 2;

/// The longest delay the plugin honours: Erlang's largest timer.
pub(crate) const DELAY_MS_MAX: i64 = u32::MAX as i64;

/// A message a delayed exchange is to hold: sent by a channel to its own
/// shard (through a transaction's commit when there is one).
#[derive(Debug)]
pub struct DelayedPublish {
    /// The vhost of the exchange.
    pub vhost: ShortStr,
    /// The delayed exchange that holds the message and routes it later.
    pub exchange: ShortStr,
    pub message: Message,
    /// The CC and BCC routing keys it was published with (BCC is no longer
    /// in its headers), routed with again when it is due.
    pub extra_keys: Vec<String>,
    pub delay_ms: u64,
    pub confirm: Option<ConfirmTarget>,
}

/// A message held by a delayed exchange until its timer fires.
#[derive(Debug)]
pub(crate) struct Held {
    vhost: ShortStr,
    exchange: ShortStr,
    message: Message,
    extra_keys: Vec<String>,
    timer: TimerId,
    /// The store segment of its record; 0 if it is not stored.
    segment: u32,
}

/// The delay the plugin reads from a message's `x-delay` header
/// (`rabbit_delayed_message_utils:get_delay` and the range check of
/// `rabbit_exchange_type_delayed_message`), or None to route at once.
pub fn delay_of(properties: &Properties) -> Option<u64> {
    if !properties.has_headers() {
        return None;
    }
    let [value] = properties.header_values([DELAY_HEADER]);
    let value = value?;
    let delay = match &value {
        FieldValue::LongStr(text) => std::str::from_utf8(text).ok()?.parse::<i64>().ok()?,
        FieldValue::F32(f) if f.is_finite() => f.trunc() as i64,
        FieldValue::F64(f) if f.is_finite() => f.trunc() as i64,
        other => other.as_i64()?,
    };
    (1..=DELAY_MS_MAX).contains(&delay).then_some(delay as u64)
}

/// The properties a held message is routed with: `x-delay` set to
/// `-delay_ms`, as the plugin's `swap_delay_header` sets it. Always a fresh
/// encoding, never a slice of the original.
fn swap_delay_header(properties: &Properties, delay_ms: u64) -> Properties {
    let mut decoded = properties.decode();
    if let Some(headers) = decoded.headers.as_mut() {
        let negative = -(delay_ms as i64);
        let value = match i32::try_from(negative) {
            Ok(v) => FieldValue::I32(v),
            Err(_) => FieldValue::I64(negative),
        };
        headers.insert(DELAY_HEADER, value);
        headers.0.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    }
    decoded.encode()
}

/// The message as a delayed exchange keeps it: with `x-delay` already
/// swapped for routing, and in allocations of its own. A message fresh from
/// a publish is slices of its connection's 128 KiB read buffer, which a hold
/// of minutes or hours should not keep alive.
fn detached(message: Message, delay_ms: u64) -> Message {
    Message::new(
        message.exchange(),
        message.routing_key(),
        &swap_delay_header(&message.properties(), delay_ms),
        Bytes::copy_from_slice(&message.body),
        None,
    )
    .with_bcc_keys_of(&message)
}

impl ShardState {
    /// Holds a message for a delayed exchange and confirms it to its
    /// publisher: from now on it is the exchange's to route.
    pub(crate) fn hold_delayed(&mut self, publish: DelayedPublish) {
        let DelayedPublish {
            vhost,
            exchange,
            message,
            extra_keys,
            delay_ms,
            confirm,
        } = publish;
        // The exchange may have gone between the publish and now (only
        // through a transaction's commit): the message goes with it.
        let mut stored = false;
        let durable = self
            .vhost(&vhost)
            .and_then(|v| v.exchanges.get(exchange.as_str()))
            .map(|x| x.def.durable);
        if let Some(durable) = durable {
            let message = detached(message, delay_ms);
            let id = self.next_delayed_id;
            self.next_delayed_id += 1;
            let deadline_ms = self.timers.deadline_after_ms(delay_ms);
            let mut segment = 0;
            if durable && message.delivery_mode() == Some(PERSISTENT) {
                segment = self.store.append_publish(&PublishHead {
                    queue_id: DELAYED_QUEUE_ID,
                    seq: id,
                    delivered: false,
                    transient: false,
                    level: 0,
                    expires_at_epoch_ms: Some(self.timers.epoch_ms_of(deadline_ms)),
                    vhost: vhost.as_str(),
                    queue_name: exchange.as_str(),
                    message: &message,
                });
                stored = true;
            }
            self.hold(
                id,
                vhost,
                exchange,
                message,
                extra_keys,
                deadline_ms,
                segment,
            );
        }
        if let Some(target) = confirm {
            if stored {
                // Confirmed once its record is on disk.
                self.store.defer_confirm(target);
                return;
            }
            self.send(
                target.conn.shard,
                ShardMsg::Confirm {
                    target,
                    accepted: true,
                },
            );
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn hold(
        &mut self,
        id: u64,
        vhost: ShortStr,
        exchange: ShortStr,
        message: Message,
        extra_keys: Vec<String>,
        deadline_ms: u64,
        segment: u32,
    ) {
        let timer = self.timers.insert(deadline_ms, TimerEvent::Delayed { id });
        self.delayed_bytes += message.memory_size();
        self.delayed.insert(
            id,
            Held {
                vhost,
                exchange,
                message,
                extra_keys,
                timer,
                segment,
            },
        );
    }

    /// Takes back the held messages the store recovered at start (written
    /// into the new generation under their ids), each due at its time: at
    /// once if it passed while the broker was down. Those of an exchange
    /// that is gone are dropped.
    pub(crate) fn restore_delayed(&mut self, recovered: Vec<RecoveredDelayed>) {
        for held in recovered {
            self.next_delayed_id = self.next_delayed_id.max(held.id + 1);
            let vhost = ShortStr::from(held.vhost.as_str());
            let exchange = ShortStr::from(held.exchange.as_str());
            if !self
                .vhost(&vhost)
                .is_some_and(|v| v.exchanges.contains_key(exchange.as_str()))
            {
                self.store
                    .append_removal(DELAYED_QUEUE_ID, held.id, held.segment);
                continue;
            }
            let deadline_ms = self.timers.shard_ms_of_epoch(held.due_epoch_ms);
            // Its CC keys are in its headers, its BCC keys beside them.
            let mut extra_keys = Vec::new();
            let _ = crate::broker::sender_selected::routing_keys(
                &held.message.properties(),
                &mut extra_keys,
            );
            extra_keys.extend(held.message.bcc_keys().unwrap_or(&[]).iter().cloned());
            self.hold(
                held.id,
                vhost,
                exchange,
                held.message,
                extra_keys,
                deadline_ms,
                held.segment,
            );
        }
    }

    /// The held messages written to the store (their ids and segments),
    /// for the clean-stop index.
    pub(crate) fn stored_delayed(&self) -> Vec<(u64, u32)> {
        self.delayed
            .iter()
            .filter(|(_, held)| held.segment != 0)
            .map(|(&id, held)| (id, held.segment))
            .collect()
    }

    /// A held message is due: route it from its exchange, now.
    pub(crate) fn delayed_due(&mut self, id: u64) {
        let Some(held) = self.delayed.remove(&id) else {
            return;
        };
        if held.segment != 0 {
            // Appended before the queues' own publishes of it: a crash in
            // between loses it (at most the last group commit), it is never
            // routed twice.
            self.store
                .append_removal(DELAYED_QUEUE_ID, id, held.segment);
        }
        self.delayed_bytes = self
            .delayed_bytes
            .saturating_sub(held.message.memory_size());
        let Some(vhost) = self.vhosts.get(held.vhost.as_str()) else {
            return;
        };
        let Some(exchange) = vhost.exchanges.get(held.exchange.as_str()) else {
            return;
        };
        let message = held.message;
        let mut scratch: Vec<Destination> = Vec::new();
        let mut routed = Routed::default();
        vhost.route(
            exchange,
            message.routing_key(),
            &held.extra_keys,
            &message.properties(),
            &mut scratch,
            &mut routed,
        );
        for queue in routed.queues {
            self.send(
                queue.shard,
                ShardMsg::Enqueue {
                    queue: queue.id,
                    message: message.clone(),
                    confirm: None,
                },
            );
        }
        // With x-delay now negative no delayed exchange holds it again;
        // this only runs if a header rewrite ever stops guaranteeing that.
        for exchange in routed.delayed {
            self.hold_delayed(DelayedPublish {
                vhost: held.vhost.clone(),
                exchange,
                message: message.clone(),
                extra_keys: held.extra_keys.clone(),
                delay_ms: routed.delay_ms,
                confirm: None,
            });
        }
    }

    /// An exchange was deleted: the messages it held are dropped now rather
    /// than when their timers fire.
    pub(crate) fn drop_delayed_of(&mut self, vhost: &str, exchange: &ShortStr) {
        let ShardState {
            delayed,
            delayed_bytes,
            timers,
            store,
            ..
        } = self;
        delayed.retain(|&id, held| {
            if held.exchange == *exchange && held.vhost.as_str() == vhost {
                timers.cancel(held.timer);
                if held.segment != 0 {
                    store.append_removal(DELAYED_QUEUE_ID, id, held.segment);
                }
                *delayed_bytes = delayed_bytes.saturating_sub(held.message.memory_size());
                false
            } else {
                true
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_protocol::{BasicProperties, FieldTable};

    fn with_headers(entries: &[(&str, FieldValue)]) -> Properties {
        let mut headers = FieldTable::new();
        for (k, v) in entries {
            headers.insert(*k, v.clone());
        }
        BasicProperties {
            headers: Some(headers),
            ..Default::default()
        }
        .encode()
    }

    fn delay(value: FieldValue) -> Option<u64> {
        delay_of(&with_headers(&[
            ("a", FieldValue::Bool(true)),
            (DELAY_HEADER, value),
        ]))
    }

    #[test]
    fn integer_types_delay() {
        assert_eq!(delay(FieldValue::I32(300)), Some(300));
        assert_eq!(delay(FieldValue::U8(7)), Some(7));
        assert_eq!(delay(FieldValue::I64(DELAY_MS_MAX)), Some(u32::MAX as u64));
        assert_eq!(delay(FieldValue::U32(u32::MAX)), Some(u32::MAX as u64));
    }

    #[test]
    fn zero_negative_and_too_long_delays_route_at_once() {
        assert_eq!(delay(FieldValue::I32(0)), None);
        assert_eq!(delay(FieldValue::I32(-5)), None);
        assert_eq!(delay(FieldValue::I64(DELAY_MS_MAX + 1)), None);
        assert_eq!(delay_of(&Properties::empty()), None);
        assert_eq!(
            delay_of(&with_headers(&[("other", FieldValue::I32(5))])),
            None
        );
    }

    #[test]
    fn strings_and_floats_are_converted_as_the_plugin_converts_them() {
        let text = |s: &'static str| FieldValue::LongStr(Bytes::from_static(s.as_bytes()));
        assert_eq!(delay(text("250")), Some(250));
        assert_eq!(delay(text("+250")), Some(250));
        assert_eq!(delay(text("2.5")), None);
        assert_eq!(delay(text("soon")), None);
        assert_eq!(delay(FieldValue::F64(99.9)), Some(99));
        assert_eq!(delay(FieldValue::F32(0.5)), None);
        assert_eq!(delay(FieldValue::Bool(true)), None);
        assert_eq!(delay(FieldValue::Timestamp(5)), None);
    }

    #[test]
    fn the_first_x_delay_entry_counts() {
        let p = with_headers(&[(DELAY_HEADER, FieldValue::I32(10))]);
        let mut decoded = p.decode();
        if let Some(h) = decoded.headers.as_mut() {
            h.0.push((ShortStr::from(DELAY_HEADER), FieldValue::I32(20)));
        }
        assert_eq!(delay_of(&decoded.encode()), Some(10));
    }

    #[test]
    fn routing_swaps_x_delay_to_minus_delay_and_sorts_the_headers() {
        let p = with_headers(&[
            ("z", FieldValue::Bool(true)),
            (DELAY_HEADER, FieldValue::I64(300)),
            ("b", FieldValue::I8(1)),
        ]);
        let swapped = swap_delay_header(&p, 300).headers().unwrap();
        let keys: Vec<&str> = swapped.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["b", DELAY_HEADER, "z"]);
        assert_eq!(swapped.get(DELAY_HEADER), Some(&FieldValue::I32(-300)));
        assert_eq!(delay_of(&swap_delay_header(&p, 300)), None);
        let long = swap_delay_header(&p, 3_000_000_000).headers().unwrap();
        assert_eq!(
            long.get(DELAY_HEADER),
            Some(&FieldValue::I64(-3_000_000_000))
        );
    }
}
