//! The content assembler: basic.publish, its content header and body frames
//! on a channel, in any order and cut into reads anywhere, against a model
//! of what they make. A consumer (no acks) on channel 2 receives every
//! message the broker assembled; each must be exactly what the model built
//! from the frames, in order, until the first frame the model says is an
//! error. Reads cut differently take the broker's single-step path for
//! whole publishes (`peek_publish`) or its frame-by-frame path; both must
//! agree with the model.

#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::fuzzing::{Broker, Step};
use warren_protocol::{
    write_body, write_content_header, write_method, BasicPublish, Frame, Method, Properties,
    ShortStr,
};

/// The broker's default `max_message_size`.
const MESSAGE_SIZE_MAX: u64 = 128 << 20;

/// What the frames so far make, as RabbitMQ's command assembler sees it.
#[derive(Default)]
struct Model {
    /// A publish waiting for its header (None) or body (Some(size)).
    pending: Option<(Option<u64>, Vec<u8>)>,
    complete: Vec<Vec<u8>>,
    /// The frames broke a rule: the channel or connection closes, and
    /// nothing more is published.
    broken: bool,
}

impl Model {
    fn publish(&mut self) {
        if self.pending.is_some() {
            self.broken = true;
        } else {
            self.pending = Some((None, Vec::new()));
        }
    }

    fn header(&mut self, size: u64) {
        match &mut self.pending {
            Some((declared @ None, _)) if size <= MESSAGE_SIZE_MAX => {
                *declared = Some(size);
                if size == 0 {
                    self.complete.push(Vec::new());
                    self.pending = None;
                }
            }
            _ => self.broken = true,
        }
    }

    fn body(&mut self, payload: &[u8]) {
        match &mut self.pending {
            Some((Some(size), body)) if body.len() as u64 + payload.len() as u64 <= *size => {
                body.extend_from_slice(payload);
                if body.len() as u64 == *size {
                    self.complete.push(std::mem::take(body));
                    self.pending = None;
                }
            }
            _ => self.broken = true,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stream = common::opening();
    common::queue_and_consumer(&mut stream, "q");
    let opening_len = stream.len();
    let mut model = Model::default();
    // Where the reads are cut, after the opening.
    let mut cuts = vec![opening_len];
    let publish: Method = BasicPublish {
        exchange: ShortStr::from(""),
        routing_key: ShortStr::from("q"),
        mandatory: false,
        immediate: false,
    }
    .into();
    let mut bytes = data.iter().copied();
    while let Some(op) = bytes.next() {
        if model.broken {
            break;
        }
        match op % 4 {
            0 => {
                write_method(&mut stream, 1, &publish);
                model.publish();
            }
            1 => {
                let size = if op & 0x80 != 0 {
                    // Any size at all, as a hostile client would announce.
                    let mut size = [0u8; 8];
                    for b in size.iter_mut() {
                        *b = bytes.next().unwrap_or(0xff);
                    }
                    u64::from_be_bytes(size)
                } else {
                    u64::from(bytes.next().unwrap_or(0)) * 3
                };
                write_content_header(&mut stream, 1, 60, size, &Properties::empty());
                model.header(size);
            }
            2 => {
                let len = usize::from(bytes.next().unwrap_or(0));
                let payload: Vec<u8> = (0..len).map(|i| (i as u8) ^ op).collect();
                // write_body writes nothing for an empty body: a frame of
                // no payload is written by hand.
                if payload.is_empty() {
                    stream.extend_from_slice(&[3, 0, 1, 0, 0, 0, 0, 0xce]);
                } else {
                    write_body(&mut stream, 1, &payload, common::FRAME_MAX);
                }
                model.body(&payload);
            }
            _ => cuts.push(stream.len()),
        }
    }
    cuts.push(0);
    cuts.push(stream.len());
    cuts.sort_unstable();
    cuts.dedup();

    let mut broker = Broker::default();
    let client = broker.connect();
    let mut output = common::Output::default();
    let mut buf = BytesMut::new();
    for pair in cuts.windows(2) {
        buf.extend_from_slice(&stream[pair[0]..pair[1]]);
        if run(&mut broker, client, &mut buf, &mut output) != Step::NeedMore {
            break;
        }
    }

    // The bodies delivered to channel 2, in order.
    let mut delivered: Vec<Vec<u8>> = Vec::new();
    let mut receiving = false;
    for frame in &output.frames {
        match frame {
            Frame::Method {
                channel: 2,
                method: Method::BasicDeliver(_),
            } => {
                delivered.push(Vec::new());
                receiving = true;
            }
            Frame::Body {
                channel: 2,
                payload,
            } if receiving => {
                delivered.last_mut().unwrap().extend_from_slice(payload);
            }
            Frame::Header { channel: 2, .. } => {}
            _ => receiving = false,
        }
    }
    if model.broken {
        assert!(
            model.complete.starts_with(&delivered),
            "delivered {} messages, not a prefix of the {} the model made",
            delivered.len(),
            model.complete.len()
        );
    } else {
        assert!(
            !output.close_sent,
            "closed on a valid stream: {:?}",
            output.frames.last()
        );
        assert_eq!(
            delivered, model.complete,
            "delivered other messages than published"
        );
    }
});

fn run(
    broker: &mut Broker,
    client: warren::fuzzing::Client,
    buf: &mut BytesMut,
    output: &mut common::Output,
) -> Step {
    loop {
        let step = broker.input(client, buf);
        output.take(broker.take_output(client));
        if step != Step::Yield {
            return step;
        }
    }
}
