//! Every AMQP 0-9-1 method warren speaks, with RabbitMQ's extensions, listed once in
//! `methods!` below in spec order. The macro generates, from that one table, a struct
//! per method, the `Method` enum, and decode, encode, ids and names.
//!
//! Method frame payload:
//!
//! ```text
//! +--------------+---------------+-----------------------------------+
//! | class-id u16 | method-id u16 | arguments, in the order listed     |
//! +--------------+---------------+-----------------------------------+
//! ```
//!
//! Reserved arguments (`reserved-1` tickets, the out-of-band shortstr of channel.open,
//! the known-hosts of connection.open-ok, ...) appear in the table as `_` and are not
//! struct fields: they are written as zero or empty and skipped when read. Bit arguments
//! pack into shared octets (see types.rs). A method whose arguments are truncated or
//! followed by extra bytes fails to decode, as in RabbitMQ's generated decoder.
//!
//! Field names are the spec's with '-' as '_'; `no-wait` is `nowait` and the exchange
//! `type` is `kind`.

use bytes::{Bytes, BytesMut};

use super::frame::FrameError;
use super::table::FieldTable;
use super::types::{ArgLen, ArgSink, ArgWriter, Reader, ShortStr};

/// The Rust type of each AMQP domain used in the table.
macro_rules! wire_type {
    (octet) => {
        u8
    };
    (short) => {
        u16
    };
    (long) => {
        u32
    };
    (longlong) => {
        u64
    };
    (bit) => {
        bool
    };
    (shortstr) => {
        ShortStr
    };
    (longstr) => {
        Bytes
    };
    (table) => {
        FieldTable
    };
}

/// Builds a method struct from its argument list, leaving out reserved (`_`) arguments.
macro_rules! method_struct {
    (@munch $doc:expr, $name:ident [$($fields:tt)*]) => {
        #[doc = $doc]
        #[derive(Clone, Debug, PartialEq, Default)]
        pub struct $name { $($fields)* }
    };
    (@munch $doc:expr, $name:ident [$($fields:tt)*] _ : $kind:ident, $($rest:tt)*) => {
        method_struct!(@munch $doc, $name [$($fields)*] $($rest)*);
    };
    (@munch $doc:expr, $name:ident [$($fields:tt)*] $field:ident : $kind:ident, $($rest:tt)*) => {
        method_struct!(@munch $doc, $name [$($fields)* pub $field: wire_type!($kind),] $($rest)*);
    };
}

/// Encodes or decodes one argument; a reserved argument is written as its type's
/// default and read and dropped.
macro_rules! method_arg {
    (write $sink:ident, $m:ident, _, $kind:ident) => {
        $sink.$kind(&Default::default())
    };
    (write $sink:ident, $m:ident, $field:ident, $kind:ident) => {
        $sink.$kind(&$m.$field)
    };
    (read $reader:ident, $m:ident, _, $kind:ident) => {
        $reader.$kind()?
    };
    (read $reader:ident, $m:ident, $field:ident, $kind:ident) => {
        $m.$field = $reader.$kind()?
    };
}

/// One method's arguments, encodable without first wrapping them in `Method`:
/// the per-message methods (basic.deliver) are written straight from their
/// struct, which spares moving the large enum around on the hot path.
pub trait MethodArgs {
    const CLASS_ID: u16;
    const METHOD_ID: u16;

    fn write_args<S: ArgSink>(&self, sink: &mut S);

    fn args_len(&self) -> usize {
        let mut len = ArgLen::default();
        self.write_args(&mut len);
        len.len
    }

    fn encode_args(&self, buf: &mut BytesMut) {
        let mut writer = ArgWriter::new(buf);
        self.write_args(&mut writer);
    }
}

macro_rules! methods {
    ($(
        $name:ident = ($class_id:literal, $method_id:literal, $label:literal, content: $content:literal) {
            $($field:tt : $kind:ident),* $(,)?
        }
    )*) => {
        $(
            method_struct!(@munch
                concat!("`", $label, "` (class ", $class_id, ", method ", $method_id, ")."),
                $name [] $($field : $kind,)*);

            impl $name {
                pub const CLASS_ID: u16 = $class_id;
                pub const METHOD_ID: u16 = $method_id;
                pub const NAME: &'static str = $label;

                /// Writes the arguments through `sink`, in wire order.
                #[allow(unused_variables)]
                fn write_args<S: ArgSink>(&self, sink: &mut S) {
                    let m = self;
                    $( method_arg!(write sink, m, $field, $kind); )*
                }

                /// Reads the arguments, rejecting truncated or overlong input.
                #[allow(unused_mut, clippy::field_reassign_with_default)]
                fn read_args(args: &Bytes) -> Result<Self, FrameError> {
                    let mut reader = Reader::new(args);
                    let mut m = Self::default();
                    $( method_arg!(read reader, m, $field, $kind); )*
                    reader.finish($label)?;
                    Ok(m)
                }
            }

            impl MethodArgs for $name {
                const CLASS_ID: u16 = $class_id;
                const METHOD_ID: u16 = $method_id;

                fn write_args<S: ArgSink>(&self, sink: &mut S) {
                    $name::write_args(self, sink)
                }
            }

            impl From<$name> for Method {
                fn from(m: $name) -> Method {
                    Method::$name(m)
                }
            }
        )*

        /// Any method, as carried by a method frame.
        #[derive(Clone, Debug, PartialEq)]
        pub enum Method {
            $( $name($name), )*
        }

        impl Method {
            /// (class-id, method-id, name) of every method, in spec order.
            pub const ALL: &'static [(u16, u16, &'static str)] = &[
                $( ($class_id, $method_id, $label), )*
            ];

            pub fn class_id(&self) -> u16 {
                match self { $( Method::$name(_) => $class_id, )* }
            }

            pub fn method_id(&self) -> u16 {
                match self { $( Method::$name(_) => $method_id, )* }
            }

            /// The spec's name, e.g. "basic.publish".
            pub fn name(&self) -> &'static str {
                match self { $( Method::$name(_) => $label, )* }
            }

            /// Whether content (a header frame and body frames) follows this method.
            pub fn has_content(&self) -> bool {
                match self { $( Method::$name(_) => $content, )* }
            }

            /// Decodes the arguments of method `class_id`/`method_id`.
            pub fn decode(class_id: u16, method_id: u16, args: &Bytes) -> Result<Method, FrameError> {
                match (class_id, method_id) {
                    $( ($class_id, $method_id) => $name::read_args(args).map(Method::$name), )*
                    _ => Err(FrameError::UnknownMethod { class_id, method_id }),
                }
            }

            /// Writes the arguments only, without class and method ids.
            pub fn encode_args(&self, buf: &mut BytesMut) {
                let mut writer = ArgWriter::new(buf);
                match self { $( Method::$name(m) => m.write_args(&mut writer), )* }
            }

            /// Length of the arguments `encode_args` writes.
            pub fn args_len(&self) -> usize {
                let mut len = ArgLen::default();
                match self { $( Method::$name(m) => m.write_args(&mut len), )* }
                len.len
            }
        }
    };
}

methods! {
    // connection (10)
    ConnectionStart = (10, 10, "connection.start", content: false) {
        version_major: octet,
        version_minor: octet,
        server_properties: table,
        mechanisms: longstr,
        locales: longstr,
    }
    ConnectionStartOk = (10, 11, "connection.start-ok", content: false) {
        client_properties: table,
        mechanism: shortstr,
        response: longstr,
        locale: shortstr,
    }
    ConnectionSecure = (10, 20, "connection.secure", content: false) {
        challenge: longstr,
    }
    ConnectionSecureOk = (10, 21, "connection.secure-ok", content: false) {
        response: longstr,
    }
    ConnectionTune = (10, 30, "connection.tune", content: false) {
        channel_max: short,
        frame_max: long,
        heartbeat: short,
    }
    ConnectionTuneOk = (10, 31, "connection.tune-ok", content: false) {
        channel_max: short,
        frame_max: long,
        heartbeat: short,
    }
    ConnectionOpen = (10, 40, "connection.open", content: false) {
        virtual_host: shortstr,
        _: shortstr, // capabilities
        _: bit,      // insist
    }
    ConnectionOpenOk = (10, 41, "connection.open-ok", content: false) {
        _: shortstr, // known-hosts
    }
    ConnectionClose = (10, 50, "connection.close", content: false) {
        reply_code: short,
        reply_text: shortstr,
        class_id: short,
        method_id: short,
    }
    ConnectionCloseOk = (10, 51, "connection.close-ok", content: false) {}
    ConnectionBlocked = (10, 60, "connection.blocked", content: false) {
        reason: shortstr,
    }
    ConnectionUnblocked = (10, 61, "connection.unblocked", content: false) {}
    ConnectionUpdateSecret = (10, 70, "connection.update-secret", content: false) {
        new_secret: longstr,
        reason: shortstr,
    }
    ConnectionUpdateSecretOk = (10, 71, "connection.update-secret-ok", content: false) {}

    // channel (20)
    ChannelOpen = (20, 10, "channel.open", content: false) {
        _: shortstr, // out-of-band
    }
    ChannelOpenOk = (20, 11, "channel.open-ok", content: false) {
        _: longstr, // channel-id
    }
    ChannelFlow = (20, 20, "channel.flow", content: false) {
        active: bit,
    }
    ChannelFlowOk = (20, 21, "channel.flow-ok", content: false) {
        active: bit,
    }
    ChannelClose = (20, 40, "channel.close", content: false) {
        reply_code: short,
        reply_text: shortstr,
        class_id: short,
        method_id: short,
    }
    ChannelCloseOk = (20, 41, "channel.close-ok", content: false) {}

    // exchange (40)
    ExchangeDeclare = (40, 10, "exchange.declare", content: false) {
        _: short, // ticket
        exchange: shortstr,
        kind: shortstr,
        passive: bit,
        durable: bit,
        auto_delete: bit,
        internal: bit,
        nowait: bit,
        arguments: table,
    }
    ExchangeDeclareOk = (40, 11, "exchange.declare-ok", content: false) {}
    ExchangeDelete = (40, 20, "exchange.delete", content: false) {
        _: short, // ticket
        exchange: shortstr,
        if_unused: bit,
        nowait: bit,
    }
    ExchangeDeleteOk = (40, 21, "exchange.delete-ok", content: false) {}
    ExchangeBind = (40, 30, "exchange.bind", content: false) {
        _: short, // ticket
        destination: shortstr,
        source: shortstr,
        routing_key: shortstr,
        nowait: bit,
        arguments: table,
    }
    ExchangeBindOk = (40, 31, "exchange.bind-ok", content: false) {}
    ExchangeUnbind = (40, 40, "exchange.unbind", content: false) {
        _: short, // ticket
        destination: shortstr,
        source: shortstr,
        routing_key: shortstr,
        nowait: bit,
        arguments: table,
    }
    // 51, not 41: RabbitMQ's extension spec numbers it so.
    ExchangeUnbindOk = (40, 51, "exchange.unbind-ok", content: false) {}

    // queue (50)
    QueueDeclare = (50, 10, "queue.declare", content: false) {
        _: short, // ticket
        queue: shortstr,
        passive: bit,
        durable: bit,
        exclusive: bit,
        auto_delete: bit,
        nowait: bit,
        arguments: table,
    }
    QueueDeclareOk = (50, 11, "queue.declare-ok", content: false) {
        queue: shortstr,
        message_count: long,
        consumer_count: long,
    }
    QueueBind = (50, 20, "queue.bind", content: false) {
        _: short, // ticket
        queue: shortstr,
        exchange: shortstr,
        routing_key: shortstr,
        nowait: bit,
        arguments: table,
    }
    QueueBindOk = (50, 21, "queue.bind-ok", content: false) {}
    QueuePurge = (50, 30, "queue.purge", content: false) {
        _: short, // ticket
        queue: shortstr,
        nowait: bit,
    }
    QueuePurgeOk = (50, 31, "queue.purge-ok", content: false) {
        message_count: long,
    }
    QueueDelete = (50, 40, "queue.delete", content: false) {
        _: short, // ticket
        queue: shortstr,
        if_unused: bit,
        if_empty: bit,
        nowait: bit,
    }
    QueueDeleteOk = (50, 41, "queue.delete-ok", content: false) {
        message_count: long,
    }
    QueueUnbind = (50, 50, "queue.unbind", content: false) {
        _: short, // ticket
        queue: shortstr,
        exchange: shortstr,
        routing_key: shortstr,
        arguments: table,
    }
    QueueUnbindOk = (50, 51, "queue.unbind-ok", content: false) {}

    // basic (60)
    BasicQos = (60, 10, "basic.qos", content: false) {
        prefetch_size: long,
        prefetch_count: short,
        global: bit,
    }
    BasicQosOk = (60, 11, "basic.qos-ok", content: false) {}
    BasicConsume = (60, 20, "basic.consume", content: false) {
        _: short, // ticket
        queue: shortstr,
        consumer_tag: shortstr,
        no_local: bit,
        no_ack: bit,
        exclusive: bit,
        nowait: bit,
        arguments: table,
    }
    BasicConsumeOk = (60, 21, "basic.consume-ok", content: false) {
        consumer_tag: shortstr,
    }
    BasicCancel = (60, 30, "basic.cancel", content: false) {
        consumer_tag: shortstr,
        nowait: bit,
    }
    BasicCancelOk = (60, 31, "basic.cancel-ok", content: false) {
        consumer_tag: shortstr,
    }
    BasicPublish = (60, 40, "basic.publish", content: true) {
        _: short, // ticket
        exchange: shortstr,
        routing_key: shortstr,
        mandatory: bit,
        immediate: bit,
    }
    BasicReturn = (60, 50, "basic.return", content: true) {
        reply_code: short,
        reply_text: shortstr,
        exchange: shortstr,
        routing_key: shortstr,
    }
    BasicDeliver = (60, 60, "basic.deliver", content: true) {
        consumer_tag: shortstr,
        delivery_tag: longlong,
        redelivered: bit,
        exchange: shortstr,
        routing_key: shortstr,
    }
    BasicGet = (60, 70, "basic.get", content: false) {
        _: short, // ticket
        queue: shortstr,
        no_ack: bit,
    }
    BasicGetOk = (60, 71, "basic.get-ok", content: true) {
        delivery_tag: longlong,
        redelivered: bit,
        exchange: shortstr,
        routing_key: shortstr,
        message_count: long,
    }
    BasicGetEmpty = (60, 72, "basic.get-empty", content: false) {
        _: shortstr, // cluster-id
    }
    BasicAck = (60, 80, "basic.ack", content: false) {
        delivery_tag: longlong,
        multiple: bit,
    }
    BasicReject = (60, 90, "basic.reject", content: false) {
        delivery_tag: longlong,
        requeue: bit,
    }
    BasicRecoverAsync = (60, 100, "basic.recover-async", content: false) {
        requeue: bit,
    }
    BasicRecover = (60, 110, "basic.recover", content: false) {
        requeue: bit,
    }
    BasicRecoverOk = (60, 111, "basic.recover-ok", content: false) {}
    BasicNack = (60, 120, "basic.nack", content: false) {
        delivery_tag: longlong,
        multiple: bit,
        requeue: bit,
    }

    // confirm (85)
    ConfirmSelect = (85, 10, "confirm.select", content: false) {
        nowait: bit,
    }
    ConfirmSelectOk = (85, 11, "confirm.select-ok", content: false) {}

    // tx (90)
    TxSelect = (90, 10, "tx.select", content: false) {}
    TxSelectOk = (90, 11, "tx.select-ok", content: false) {}
    TxCommit = (90, 20, "tx.commit", content: false) {}
    TxCommitOk = (90, 21, "tx.commit-ok", content: false) {}
    TxRollback = (90, 30, "tx.rollback", content: false) {}
    TxRollbackOk = (90, 31, "tx.rollback-ok", content: false) {}
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::table::tests::every_type_table;
    use crate::table::FieldValue;

    fn s(text: &str) -> ShortStr {
        ShortStr::from(text)
    }

    fn args_table() -> FieldTable {
        let mut t = FieldTable::new();
        t.insert("x-message-ttl", FieldValue::I32(60_000));
        t.insert(
            "x-dead-letter-exchange",
            FieldValue::LongStr(Bytes::from_static(b"dlx")),
        );
        t
    }

    /// One instance of every method, with every field set to a non-default value
    /// (bits alternate so that packing mistakes show).
    pub(crate) fn sample_methods() -> Vec<Method> {
        vec![
            ConnectionStart {
                version_major: 0,
                version_minor: 9,
                server_properties: every_type_table(),
                mechanisms: Bytes::from_static(b"PLAIN AMQPLAIN"),
                locales: Bytes::from_static(b"en_US"),
            }
            .into(),
            ConnectionStartOk {
                client_properties: args_table(),
                mechanism: s("PLAIN"),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: s("en_US"),
            }
            .into(),
            ConnectionSecure {
                challenge: Bytes::from_static(b"challenge"),
            }
            .into(),
            ConnectionSecureOk {
                response: Bytes::from_static(b"response"),
            }
            .into(),
            ConnectionTune {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 60,
            }
            .into(),
            ConnectionTuneOk {
                channel_max: 100,
                frame_max: 65_536,
                heartbeat: 30,
            }
            .into(),
            ConnectionOpen {
                virtual_host: s("/prod"),
            }
            .into(),
            ConnectionOpenOk {}.into(),
            ConnectionClose {
                reply_code: 320,
                reply_text: s("CONNECTION_FORCED - shutdown"),
                class_id: 10,
                method_id: 40,
            }
            .into(),
            ConnectionCloseOk {}.into(),
            ConnectionBlocked {
                reason: s("low on memory"),
            }
            .into(),
            ConnectionUnblocked {}.into(),
            ConnectionUpdateSecret {
                new_secret: Bytes::from_static(b"token"),
                reason: s("refresh"),
            }
            .into(),
            ConnectionUpdateSecretOk {}.into(),
            ChannelOpen {}.into(),
            ChannelOpenOk {}.into(),
            ChannelFlow { active: true }.into(),
            ChannelFlowOk { active: true }.into(),
            ChannelClose {
                reply_code: 404,
                reply_text: s("NOT_FOUND - no queue 'q' in vhost '/'"),
                class_id: 50,
                method_id: 10,
            }
            .into(),
            ChannelCloseOk {}.into(),
            ExchangeDeclare {
                exchange: s("orders"),
                kind: s("topic"),
                passive: true,
                durable: false,
                auto_delete: true,
                internal: false,
                nowait: true,
                arguments: args_table(),
            }
            .into(),
            ExchangeDeclareOk {}.into(),
            ExchangeDelete {
                exchange: s("orders"),
                if_unused: true,
                nowait: false,
            }
            .into(),
            ExchangeDeleteOk {}.into(),
            ExchangeBind {
                destination: s("dst"),
                source: s("src"),
                routing_key: s("a.*.c"),
                nowait: true,
                arguments: args_table(),
            }
            .into(),
            ExchangeBindOk {}.into(),
            ExchangeUnbind {
                destination: s("dst"),
                source: s("src"),
                routing_key: s("a.#"),
                nowait: true,
                arguments: args_table(),
            }
            .into(),
            ExchangeUnbindOk {}.into(),
            QueueDeclare {
                queue: s("work"),
                passive: false,
                durable: true,
                exclusive: false,
                auto_delete: true,
                nowait: true,
                arguments: args_table(),
            }
            .into(),
            QueueDeclareOk {
                queue: s("amq.gen-abc"),
                message_count: 12,
                consumer_count: 3,
            }
            .into(),
            QueueBind {
                queue: s("work"),
                exchange: s("orders"),
                routing_key: s("order.*"),
                nowait: true,
                arguments: args_table(),
            }
            .into(),
            QueueBindOk {}.into(),
            QueuePurge {
                queue: s("work"),
                nowait: true,
            }
            .into(),
            QueuePurgeOk { message_count: 99 }.into(),
            QueueDelete {
                queue: s("work"),
                if_unused: true,
                if_empty: false,
                nowait: true,
            }
            .into(),
            QueueDeleteOk { message_count: 7 }.into(),
            QueueUnbind {
                queue: s("work"),
                exchange: s("orders"),
                routing_key: s("order.*"),
                arguments: args_table(),
            }
            .into(),
            QueueUnbindOk {}.into(),
            BasicQos {
                prefetch_size: 65_536,
                prefetch_count: 250,
                global: true,
            }
            .into(),
            BasicQosOk {}.into(),
            BasicConsume {
                queue: s("work"),
                consumer_tag: s("ctag-1"),
                no_local: true,
                no_ack: false,
                exclusive: true,
                nowait: false,
                arguments: args_table(),
            }
            .into(),
            BasicConsumeOk {
                consumer_tag: s("ctag-1"),
            }
            .into(),
            BasicCancel {
                consumer_tag: s("ctag-1"),
                nowait: true,
            }
            .into(),
            BasicCancelOk {
                consumer_tag: s("ctag-1"),
            }
            .into(),
            BasicPublish {
                exchange: s("orders"),
                routing_key: s("order.new"),
                mandatory: true,
                immediate: false,
            }
            .into(),
            BasicReturn {
                reply_code: 312,
                reply_text: s("NO_ROUTE"),
                exchange: s("orders"),
                routing_key: s("nowhere"),
            }
            .into(),
            BasicDeliver {
                consumer_tag: s("ctag-1"),
                delivery_tag: u64::MAX - 1,
                redelivered: true,
                exchange: s("orders"),
                routing_key: s("order.new"),
            }
            .into(),
            BasicGet {
                queue: s("work"),
                no_ack: true,
            }
            .into(),
            BasicGetOk {
                delivery_tag: 42,
                redelivered: true,
                exchange: s("orders"),
                routing_key: s("order.new"),
                message_count: 5,
            }
            .into(),
            BasicGetEmpty {}.into(),
            BasicAck {
                delivery_tag: 1 << 40,
                multiple: true,
            }
            .into(),
            BasicReject {
                delivery_tag: 17,
                requeue: true,
            }
            .into(),
            BasicRecoverAsync { requeue: true }.into(),
            BasicRecover { requeue: true }.into(),
            BasicRecoverOk {}.into(),
            BasicNack {
                delivery_tag: 23,
                multiple: false,
                requeue: true,
            }
            .into(),
            ConfirmSelect { nowait: true }.into(),
            ConfirmSelectOk {}.into(),
            TxSelect {}.into(),
            TxSelectOk {}.into(),
            TxCommit {}.into(),
            TxCommitOk {}.into(),
            TxRollback {}.into(),
            TxRollbackOk {}.into(),
        ]
    }

    #[test]
    fn samples_cover_every_method_in_spec_order() {
        let ids: Vec<(u16, u16, &str)> = sample_methods()
            .iter()
            .map(|m| (m.class_id(), m.method_id(), m.name()))
            .collect();
        assert_eq!(ids, Method::ALL);
        assert_eq!(Method::ALL.len(), 64);
    }

    #[test]
    fn every_method_round_trips_through_its_arguments() {
        for method in sample_methods() {
            let mut buf = BytesMut::new();
            method.encode_args(&mut buf);
            assert_eq!(buf.len(), method.args_len(), "{}", method.name());
            let args = buf.freeze();
            let back = Method::decode(method.class_id(), method.method_id(), &args).unwrap();
            assert_eq!(back, method);
        }
    }

    #[test]
    fn truncated_or_overlong_arguments_are_rejected() {
        for method in sample_methods() {
            let mut buf = BytesMut::new();
            method.encode_args(&mut buf);
            let args = buf.freeze();
            for cut in 0..args.len() {
                let part = args.slice(..cut);
                assert!(
                    Method::decode(method.class_id(), method.method_id(), &part).is_err(),
                    "{} cut at {cut}",
                    method.name()
                );
            }
            let mut longer = BytesMut::from(&args[..]);
            longer.extend_from_slice(&[0]);
            let longer = longer.freeze();
            assert!(Method::decode(method.class_id(), method.method_id(), &longer).is_err());
        }
    }

    #[test]
    fn unknown_method_ids_are_reported() {
        let empty = Bytes::new();
        assert_eq!(
            Method::decode(60, 99, &empty),
            Err(FrameError::UnknownMethod {
                class_id: 60,
                method_id: 99
            })
        );
        // access.request (30/10) was removed in 0-9-1.
        assert!(matches!(
            Method::decode(30, 10, &empty),
            Err(FrameError::UnknownMethod { .. })
        ));
    }

    #[test]
    fn bits_pack_into_one_octet() {
        let m: Method = QueueDeclare {
            queue: s("q"),
            passive: true,
            durable: false,
            exclusive: true,
            auto_delete: false,
            nowait: true,
            arguments: FieldTable::new(),
        }
        .into();
        let mut buf = BytesMut::new();
        m.encode_args(&mut buf);
        // ticket, shortstr "q", one octet of bits, empty table.
        assert_eq!(&buf[..], &[0, 0, 1, b'q', 0b10101, 0, 0, 0, 0]);
    }

    #[test]
    fn has_content_only_for_publish_return_deliver_get_ok() {
        let with_content: Vec<&str> = sample_methods()
            .iter()
            .filter(|m| m.has_content())
            .map(|m| m.name())
            .collect();
        assert_eq!(
            with_content,
            [
                "basic.publish",
                "basic.return",
                "basic.deliver",
                "basic.get-ok"
            ]
        );
    }
}
