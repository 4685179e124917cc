//! Checks the codec against an independent implementation: the `amq-protocol` crate
//! (lapin's codec, a dev-dependency). Every method, a field table with every type, a
//! content header with all 14 properties and a body frame are encoded by one side and
//! decoded by the other, in both directions.
//!
//! `to_amq` maps our values to amq-protocol's, field by field; the comparisons are made
//! on amq-protocol's types, whose tables are ordered maps, so entry order (ours keeps
//! wire order, theirs sorts) does not matter.
//!
//! Known difference: amq-protocol's `basic.qos` has no `prefetch_size` field; it reads
//! and drops the value and always writes 0.

use amq_protocol::frame::{
    gen_frame, parse_frame as amq_parse_frame, AMQPContentHeader, AMQPFrame, WriteContext,
};
use amq_protocol::protocol::{basic, channel, confirm, connection, exchange, queue, tx, AMQPClass};
use amq_protocol::types::{
    AMQPValue, ByteArray as AmqByteArray, DecimalValue, FieldArray, FieldTable as AmqFieldTable,
    LongString, ShortString,
};
use bytes::{Bytes, BytesMut};

use super::frame::{parse_frame, write_body, write_content_header, write_method, Frame};
use super::method::tests::sample_methods;
use super::method::*;
use super::properties::tests::{all_set, subset};
use super::properties::BasicProperties;
use super::table::tests::every_type_table;
use super::table::{FieldTable, FieldValue};
use super::types::ShortStr;

fn ss(s: &ShortStr) -> ShortString {
    s.as_str().into()
}

fn ls(b: &Bytes) -> LongString {
    b.to_vec().into()
}

fn value(v: &FieldValue) -> AMQPValue {
    match v {
        FieldValue::Bool(x) => AMQPValue::Boolean(*x),
        FieldValue::I8(x) => AMQPValue::ShortShortInt(*x),
        FieldValue::U8(x) => AMQPValue::ShortShortUInt(*x),
        FieldValue::I16(x) => AMQPValue::ShortInt(*x),
        FieldValue::U16(x) => AMQPValue::ShortUInt(*x),
        FieldValue::I32(x) => AMQPValue::LongInt(*x),
        FieldValue::U32(x) => AMQPValue::LongUInt(*x),
        FieldValue::I64(x) => AMQPValue::LongLongInt(*x),
        FieldValue::F32(x) => AMQPValue::Float(*x),
        FieldValue::F64(x) => AMQPValue::Double(*x),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        FieldValue::LongStr(b) => AMQPValue::LongString(ls(b)),
        FieldValue::ByteArray(b) => AMQPValue::ByteArray(AmqByteArray::from(b.to_vec())),
        FieldValue::Array(a) => {
            AMQPValue::FieldArray(FieldArray::from(a.iter().map(value).collect::<Vec<_>>()))
        }
        FieldValue::Timestamp(x) => AMQPValue::Timestamp(*x),
        FieldValue::Table(t) => AMQPValue::FieldTable(table(t)),
        FieldValue::Void => AMQPValue::Void,
    }
}

fn table(t: &FieldTable) -> AmqFieldTable {
    let mut out = AmqFieldTable::default();
    for (k, v) in t.iter() {
        out.insert(ss(k), value(v));
    }
    out
}

fn properties(p: &BasicProperties) -> basic::AMQPProperties {
    let mut out = basic::AMQPProperties::default();
    if let Some(v) = &p.content_type {
        out = out.with_content_type(ss(v));
    }
    if let Some(v) = &p.content_encoding {
        out = out.with_content_encoding(ss(v));
    }
    if let Some(v) = &p.headers {
        out = out.with_headers(table(v));
    }
    if let Some(v) = p.delivery_mode {
        out = out.with_delivery_mode(v);
    }
    if let Some(v) = p.priority {
        out = out.with_priority(v);
    }
    if let Some(v) = &p.correlation_id {
        out = out.with_correlation_id(ss(v));
    }
    if let Some(v) = &p.reply_to {
        out = out.with_reply_to(ss(v));
    }
    if let Some(v) = &p.expiration {
        out = out.with_expiration(ss(v));
    }
    if let Some(v) = &p.message_id {
        out = out.with_message_id(ss(v));
    }
    if let Some(v) = p.timestamp {
        out = out.with_timestamp(v);
    }
    if let Some(v) = &p.kind {
        out = out.with_type(ss(v));
    }
    if let Some(v) = &p.user_id {
        out = out.with_user_id(ss(v));
    }
    if let Some(v) = &p.app_id {
        out = out.with_app_id(ss(v));
    }
    if let Some(v) = &p.cluster_id {
        out = out.with_cluster_id(ss(v));
    }
    out
}

/// Our method as amq-protocol's, field by field.
fn to_amq(m: &Method) -> AMQPClass {
    use AMQPClass as C;
    match m {
        Method::ConnectionStart(m) => {
            C::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: m.version_major,
                version_minor: m.version_minor,
                server_properties: table(&m.server_properties),
                mechanisms: ls(&m.mechanisms),
                locales: ls(&m.locales),
            }))
        }
        Method::ConnectionStartOk(m) => {
            C::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: table(&m.client_properties),
                mechanism: ss(&m.mechanism),
                response: ls(&m.response),
                locale: ss(&m.locale),
            }))
        }
        Method::ConnectionSecure(m) => {
            C::Connection(connection::AMQPMethod::Secure(connection::Secure {
                challenge: ls(&m.challenge),
            }))
        }
        Method::ConnectionSecureOk(m) => {
            C::Connection(connection::AMQPMethod::SecureOk(connection::SecureOk {
                response: ls(&m.response),
            }))
        }
        Method::ConnectionTune(m) => {
            C::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: m.channel_max,
                frame_max: m.frame_max,
                heartbeat: m.heartbeat,
            }))
        }
        Method::ConnectionTuneOk(m) => {
            C::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
                channel_max: m.channel_max,
                frame_max: m.frame_max,
                heartbeat: m.heartbeat,
            }))
        }
        Method::ConnectionOpen(m) => {
            C::Connection(connection::AMQPMethod::Open(connection::Open {
                virtual_host: ss(&m.virtual_host),
            }))
        }
        Method::ConnectionOpenOk(_) => {
            C::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {}))
        }
        Method::ConnectionClose(m) => {
            C::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: m.reply_code,
                reply_text: ss(&m.reply_text),
                class_id: m.class_id,
                method_id: m.method_id,
            }))
        }
        Method::ConnectionCloseOk(_) => {
            C::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {}))
        }
        Method::ConnectionBlocked(m) => {
            C::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                reason: ss(&m.reason),
            }))
        }
        Method::ConnectionUnblocked(_) => {
            C::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {}))
        }
        Method::ConnectionUpdateSecret(m) => C::Connection(connection::AMQPMethod::UpdateSecret(
            connection::UpdateSecret {
                new_secret: ls(&m.new_secret),
                reason: ss(&m.reason),
            },
        )),
        Method::ConnectionUpdateSecretOk(_) => C::Connection(
            connection::AMQPMethod::UpdateSecretOk(connection::UpdateSecretOk {}),
        ),
        Method::ChannelOpen(_) => C::Channel(channel::AMQPMethod::Open(channel::Open {})),
        Method::ChannelOpenOk(_) => C::Channel(channel::AMQPMethod::OpenOk(channel::OpenOk {})),
        Method::ChannelFlow(m) => C::Channel(channel::AMQPMethod::Flow(channel::Flow {
            active: m.active,
        })),
        Method::ChannelFlowOk(m) => C::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
            active: m.active,
        })),
        Method::ChannelClose(m) => C::Channel(channel::AMQPMethod::Close(channel::Close {
            reply_code: m.reply_code,
            reply_text: ss(&m.reply_text),
            class_id: m.class_id,
            method_id: m.method_id,
        })),
        Method::ChannelCloseOk(_) => C::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
        Method::ExchangeDeclare(m) => {
            C::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: ss(&m.exchange),
                kind: ss(&m.kind),
                passive: m.passive,
                durable: m.durable,
                auto_delete: m.auto_delete,
                internal: m.internal,
                nowait: m.nowait,
                arguments: table(&m.arguments),
            }))
        }
        Method::ExchangeDeclareOk(_) => {
            C::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {}))
        }
        Method::ExchangeDelete(m) => C::Exchange(exchange::AMQPMethod::Delete(exchange::Delete {
            exchange: ss(&m.exchange),
            if_unused: m.if_unused,
            nowait: m.nowait,
        })),
        Method::ExchangeDeleteOk(_) => {
            C::Exchange(exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {}))
        }
        Method::ExchangeBind(m) => C::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
            destination: ss(&m.destination),
            source: ss(&m.source),
            routing_key: ss(&m.routing_key),
            nowait: m.nowait,
            arguments: table(&m.arguments),
        })),
        Method::ExchangeBindOk(_) => C::Exchange(exchange::AMQPMethod::BindOk(exchange::BindOk {})),
        Method::ExchangeUnbind(m) => C::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
            destination: ss(&m.destination),
            source: ss(&m.source),
            routing_key: ss(&m.routing_key),
            nowait: m.nowait,
            arguments: table(&m.arguments),
        })),
        Method::ExchangeUnbindOk(_) => {
            C::Exchange(exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {}))
        }
        Method::QueueDeclare(m) => C::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: ss(&m.queue),
            passive: m.passive,
            durable: m.durable,
            exclusive: m.exclusive,
            auto_delete: m.auto_delete,
            nowait: m.nowait,
            arguments: table(&m.arguments),
        })),
        Method::QueueDeclareOk(m) => C::Queue(queue::AMQPMethod::DeclareOk(queue::DeclareOk {
            queue: ss(&m.queue),
            message_count: m.message_count,
            consumer_count: m.consumer_count,
        })),
        Method::QueueBind(m) => C::Queue(queue::AMQPMethod::Bind(queue::Bind {
            queue: ss(&m.queue),
            exchange: ss(&m.exchange),
            routing_key: ss(&m.routing_key),
            nowait: m.nowait,
            arguments: table(&m.arguments),
        })),
        Method::QueueBindOk(_) => C::Queue(queue::AMQPMethod::BindOk(queue::BindOk {})),
        Method::QueuePurge(m) => C::Queue(queue::AMQPMethod::Purge(queue::Purge {
            queue: ss(&m.queue),
            nowait: m.nowait,
        })),
        Method::QueuePurgeOk(m) => C::Queue(queue::AMQPMethod::PurgeOk(queue::PurgeOk {
            message_count: m.message_count,
        })),
        Method::QueueDelete(m) => C::Queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: ss(&m.queue),
            if_unused: m.if_unused,
            if_empty: m.if_empty,
            nowait: m.nowait,
        })),
        Method::QueueDeleteOk(m) => C::Queue(queue::AMQPMethod::DeleteOk(queue::DeleteOk {
            message_count: m.message_count,
        })),
        Method::QueueUnbind(m) => C::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
            queue: ss(&m.queue),
            exchange: ss(&m.exchange),
            routing_key: ss(&m.routing_key),
            arguments: table(&m.arguments),
        })),
        Method::QueueUnbindOk(_) => C::Queue(queue::AMQPMethod::UnbindOk(queue::UnbindOk {})),
        // amq-protocol has no prefetch_size (see the module doc).
        Method::BasicQos(m) => C::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: m.prefetch_count,
            global: m.global,
        })),
        Method::BasicQosOk(_) => C::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
        Method::BasicConsume(m) => C::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: ss(&m.queue),
            consumer_tag: ss(&m.consumer_tag),
            no_local: m.no_local,
            no_ack: m.no_ack,
            exclusive: m.exclusive,
            nowait: m.nowait,
            arguments: table(&m.arguments),
        })),
        Method::BasicConsumeOk(m) => C::Basic(basic::AMQPMethod::ConsumeOk(basic::ConsumeOk {
            consumer_tag: ss(&m.consumer_tag),
        })),
        Method::BasicCancel(m) => C::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
            consumer_tag: ss(&m.consumer_tag),
            nowait: m.nowait,
        })),
        Method::BasicCancelOk(m) => C::Basic(basic::AMQPMethod::CancelOk(basic::CancelOk {
            consumer_tag: ss(&m.consumer_tag),
        })),
        Method::BasicPublish(m) => C::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ss(&m.exchange),
            routing_key: ss(&m.routing_key),
            mandatory: m.mandatory,
            immediate: m.immediate,
        })),
        Method::BasicReturn(m) => C::Basic(basic::AMQPMethod::Return(basic::Return {
            reply_code: m.reply_code,
            reply_text: ss(&m.reply_text),
            exchange: ss(&m.exchange),
            routing_key: ss(&m.routing_key),
        })),
        Method::BasicDeliver(m) => C::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: ss(&m.consumer_tag),
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: ss(&m.exchange),
            routing_key: ss(&m.routing_key),
        })),
        Method::BasicGet(m) => C::Basic(basic::AMQPMethod::Get(basic::Get {
            queue: ss(&m.queue),
            no_ack: m.no_ack,
        })),
        Method::BasicGetOk(m) => C::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
            delivery_tag: m.delivery_tag,
            redelivered: m.redelivered,
            exchange: ss(&m.exchange),
            routing_key: ss(&m.routing_key),
            message_count: m.message_count,
        })),
        Method::BasicGetEmpty(_) => C::Basic(basic::AMQPMethod::GetEmpty(basic::GetEmpty {})),
        Method::BasicAck(m) => C::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: m.delivery_tag,
            multiple: m.multiple,
        })),
        Method::BasicReject(m) => C::Basic(basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: m.delivery_tag,
            requeue: m.requeue,
        })),
        Method::BasicRecoverAsync(m) => {
            C::Basic(basic::AMQPMethod::RecoverAsync(basic::RecoverAsync {
                requeue: m.requeue,
            }))
        }
        Method::BasicRecover(m) => C::Basic(basic::AMQPMethod::Recover(basic::Recover {
            requeue: m.requeue,
        })),
        Method::BasicRecoverOk(_) => C::Basic(basic::AMQPMethod::RecoverOk(basic::RecoverOk {})),
        Method::BasicNack(m) => C::Basic(basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: m.delivery_tag,
            multiple: m.multiple,
            requeue: m.requeue,
        })),
        Method::ConfirmSelect(m) => C::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: m.nowait,
        })),
        Method::ConfirmSelectOk(_) => {
            C::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {}))
        }
        Method::TxSelect(_) => C::Tx(tx::AMQPMethod::Select(tx::Select {})),
        Method::TxSelectOk(_) => C::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
        Method::TxCommit(_) => C::Tx(tx::AMQPMethod::Commit(tx::Commit {})),
        Method::TxCommitOk(_) => C::Tx(tx::AMQPMethod::CommitOk(tx::CommitOk {})),
        Method::TxRollback(_) => C::Tx(tx::AMQPMethod::Rollback(tx::Rollback {})),
        Method::TxRollbackOk(_) => C::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})),
    }
}

/// Decodes one whole frame with amq-protocol, insisting nothing is left over.
fn amq_decode(bytes: &[u8]) -> AMQPFrame {
    match amq_parse_frame(bytes) {
        Ok((rest, frame)) => {
            assert!(rest.is_empty(), "amq-protocol left {} bytes", rest.len());
            frame
        }
        Err(e) => panic!("amq-protocol could not parse our frame: {e:?}"),
    }
}

/// Encodes one frame with amq-protocol.
fn amq_encode(frame: &AMQPFrame) -> BytesMut {
    let ctx =
        gen_frame(frame)(WriteContext::from(Vec::<u8>::new())).expect("amq-protocol gen_frame");
    BytesMut::from(&ctx.write[..])
}

/// Decodes one whole frame with our codec, insisting nothing is left over.
fn our_decode(mut buf: BytesMut) -> Frame {
    let frame = parse_frame(&mut buf, 0)
        .expect("our parse_frame")
        .expect("a complete frame");
    assert!(buf.is_empty(), "we left {} bytes", buf.len());
    frame
}

#[test]
fn amq_protocol_decodes_every_method_we_encode() {
    for method in sample_methods() {
        let mut buf = BytesMut::new();
        write_method(&mut buf, 7, &method);
        match amq_decode(&buf) {
            AMQPFrame::Method(channel, class) => {
                assert_eq!(channel, 7);
                assert_eq!(class, to_amq(&method), "{}", method.name());
            }
            other => panic!("{}: amq-protocol saw {other:?}", method.name()),
        }
    }
}

#[test]
fn we_decode_every_method_amq_protocol_encodes() {
    for method in sample_methods() {
        let theirs = to_amq(&method);
        let buf = amq_encode(&AMQPFrame::Method(9, theirs.clone()));
        let Frame::Method {
            channel,
            method: ours,
        } = our_decode(buf)
        else {
            panic!("not a method frame")
        };
        assert_eq!(channel, 9);
        assert_eq!(
            (ours.class_id(), ours.method_id()),
            (method.class_id(), method.method_id())
        );
        assert_eq!(to_amq(&ours), theirs, "{}", method.name());
        if let Method::BasicQos(qos) = &ours {
            assert_eq!(
                qos.prefetch_size, 0,
                "amq-protocol always writes prefetch_size 0"
            );
        }
    }
}

#[test]
fn field_table_with_every_type_crosses_both_ways() {
    let ours = every_type_table();
    let method: Method = ConnectionStartOk {
        client_properties: ours.clone(),
        mechanism: "PLAIN".into(),
        response: Bytes::from_static(b"\0a\0b"),
        locale: "en_US".into(),
    }
    .into();
    let mut buf = BytesMut::new();
    write_method(&mut buf, 0, &method);
    let AMQPFrame::Method(_, AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok))) =
        amq_decode(&buf)
    else {
        panic!("not a start-ok")
    };
    assert_eq!(start_ok.client_properties, table(&ours));

    let buf = amq_encode(&AMQPFrame::Method(0, to_amq(&method)));
    let Frame::Method {
        method: Method::ConnectionStartOk(back),
        ..
    } = our_decode(buf)
    else {
        panic!("not a start-ok")
    };
    assert_eq!(table(&back.client_properties), table(&ours));
    assert_eq!(back.client_properties.len(), ours.len());
}

#[test]
fn content_header_with_all_properties_crosses_both_ways() {
    // All 14 properties, then a spread of subsets so that the skipping logic of both
    // decoders is exercised.
    let mut cases = vec![all_set(), BasicProperties::default()];
    cases.extend([0x8000u16, 0x2000, 0x1800, 0x0040, 0x0004, 0xa5a4, 0x5a58].map(subset));
    for props in cases {
        let wire = props.encode();
        let mut buf = BytesMut::new();
        write_content_header(&mut buf, 4, 60, 123_456, &wire);
        let AMQPFrame::Header(channel, class_id, header) = amq_decode(&buf) else {
            panic!("not a header")
        };
        assert_eq!((channel, class_id), (4, 60));
        assert_eq!(header.body_size, 123_456);
        assert_eq!(header.properties, properties(&props));

        let theirs = AMQPFrame::Header(
            4,
            60,
            Box::new(AMQPContentHeader {
                class_id: 60,
                body_size: 123_456,
                properties: properties(&props),
            }),
        );
        let Frame::Header { channel, header } = our_decode(amq_encode(&theirs)) else {
            panic!("not a header")
        };
        assert_eq!(channel, 4);
        assert_eq!((header.class_id, header.body_size), (60, 123_456));
        assert_eq!(properties(&header.properties.decode()), properties(&props));
        assert_eq!(header.properties.flags(), wire.flags());
    }
}

#[test]
fn body_and_heartbeat_frames_cross_both_ways() {
    let body: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
    let mut buf = BytesMut::new();
    write_body(&mut buf, 2, &body, 0);
    assert_eq!(amq_decode(&buf), AMQPFrame::Body(2, body.clone()));
    let Frame::Body { channel, payload } =
        our_decode(amq_encode(&AMQPFrame::Body(2, body.clone())))
    else {
        panic!("not a body")
    };
    assert_eq!((channel, &payload[..]), (2, &body[..]));

    let mut buf = BytesMut::new();
    super::frame::write_heartbeat(&mut buf);
    assert_eq!(amq_decode(&buf), AMQPFrame::Heartbeat(0));
    assert_eq!(
        our_decode(amq_encode(&AMQPFrame::Heartbeat(0))),
        Frame::Heartbeat { channel: 0 }
    );
}
