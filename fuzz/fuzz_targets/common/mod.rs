//! What the broker-level targets share: a client's opening frames, a check
//! that what the broker writes is well-formed, and a heap counter.

#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{Bytes, BytesMut};
use warren_protocol::{
    parse_frame, write_method, BasicConsume, ChannelOpen, ConnectionOpen, ConnectionStartOk,
    ConnectionTuneOk, FieldTable, Frame, Method, QueueDeclare, ShortStr, PROTOCOL_HEADER,
};

/// The `frame_max` the opening frames negotiate (and warren's largest).
pub const FRAME_MAX: u32 = 131_072;

/// Counts the bytes the Rust heap holds, so a target can bound what one
/// input makes the broker keep.
pub struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only
// a counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `dealloc` is passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

pub fn live_bytes() -> usize {
    LIVE_BYTES.load(Ordering::Relaxed)
}

fn s(text: &str) -> ShortStr {
    ShortStr::from(text)
}

/// The protocol header, a PLAIN login as guest, tune-ok without
/// heartbeats, connection.open of "/" and channel.open of channel 1.
pub fn opening() -> BytesMut {
    let mut out = BytesMut::new();
    out.extend_from_slice(PROTOCOL_HEADER);
    let frames: [(u16, Method); 4] = [
        (
            0,
            ConnectionStartOk {
                client_properties: FieldTable::default(),
                mechanism: s("PLAIN"),
                response: Bytes::from_static(b"\0guest\0guest"),
                locale: s("en_US"),
            }
            .into(),
        ),
        (
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: FRAME_MAX,
                heartbeat: 0,
            }
            .into(),
        ),
        (
            0,
            ConnectionOpen {
                virtual_host: s("/"),
            }
            .into(),
        ),
        (1, ChannelOpen {}.into()),
    ];
    for (channel, method) in &frames {
        write_method(&mut out, *channel, method);
    }
    out
}

/// Declares queue `queue` on channel 1 and consumes from it, without acks,
/// on channel 2.
pub fn queue_and_consumer(out: &mut BytesMut, queue: &str) {
    write_method(
        out,
        1,
        &QueueDeclare {
            queue: s(queue),
            passive: false,
            durable: false,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
        .into(),
    );
    write_method(out, 2, &ChannelOpen {}.into());
    write_method(
        out,
        2,
        &BasicConsume {
            queue: s(queue),
            consumer_tag: s("fuzz"),
            no_local: false,
            no_ack: true,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        }
        .into(),
    );
}

/// What the broker has written to one connection so far.
#[derive(Default)]
pub struct Output {
    /// The broker sent connection.close.
    pub close_sent: bool,
    /// The broker refused the protocol header (and wrote its own).
    pub refused_header: bool,
    pub frames: Vec<Frame>,
}

impl Output {
    /// Checks the broker's latest output: whole, well-formed frames (or,
    /// first and alone, the protocol header it answers a wrong one with),
    /// and after its connection.close nothing but a close-ok.
    pub fn take(&mut self, out: BytesMut) {
        if out.is_empty() {
            return;
        }
        assert!(
            !self.refused_header,
            "the broker wrote after refusing the protocol header"
        );
        if out.starts_with(b"AMQP") {
            assert!(self.frames.is_empty(), "a protocol header after frames");
            assert_eq!(&out[..], PROTOCOL_HEADER, "a protocol header and more");
            self.refused_header = true;
            return;
        }
        let mut buf = out;
        while !buf.is_empty() {
            let frame = match parse_frame(&mut buf, FRAME_MAX) {
                Ok(Some(frame)) => frame,
                Ok(None) => panic!("the broker wrote a partial frame: {:?}", &buf[..]),
                Err(e) => panic!("the broker wrote a malformed frame ({e:?}): {:?}", &buf[..]),
            };
            if self.close_sent {
                assert!(
                    matches!(
                        &frame,
                        Frame::Method {
                            channel: 0,
                            method: Method::ConnectionCloseOk(_)
                        }
                    ),
                    "the broker wrote {frame:?} after its connection.close"
                );
            }
            if let Frame::Method {
                channel: 0,
                method: Method::ConnectionClose(_),
            } = &frame
            {
                self.close_sent = true;
            }
            self.frames.push(frame);
        }
    }
}
