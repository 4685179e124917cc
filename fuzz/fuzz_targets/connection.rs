//! The whole connection state machine, fed arbitrary bytes in-process (a
//! one-shard broker without sockets, `warren::fuzzing::Broker`). After each
//! piece of input: no panic, the broker's output is whole well-formed frames
//! (or its protocol header, or a close), and the heap it keeps is bounded
//! by the input.
//!
//! The first byte chooses whether the client's opening frames (login,
//! tune, open, channel 1) come first, so that the fuzzer reaches channel
//! methods at once, and how the rest is cut into reads.

#![no_main]

mod common;

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren::fuzzing::{Broker, Step};

#[global_allocator]
static ALLOC: common::Counting = common::Counting;

/// Heap an input may make the broker keep: a fixed part (the shard's
/// tables, the connection's buffers) and a multiple of the input (messages
/// kept in queues, each with its header and index).
const HEAP_FIXED: usize = 4 << 20;
const HEAP_PER_INPUT_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut stream = if mode & 1 == 1 {
        common::opening()
    } else {
        BytesMut::new()
    };
    stream.extend_from_slice(data);
    // 0: all at once; otherwise reads of 1..=127 bytes.
    let read_size = match (mode >> 1) as usize {
        0 => stream.len().max(1),
        n => n,
    };
    let base = common::live_bytes();
    let mut broker = Broker::default();
    let client = broker.connect();
    let mut output = common::Output::default();
    let mut buf = BytesMut::new();
    let mut closed = false;
    for read in stream.chunks(read_size) {
        buf.extend_from_slice(read);
        // Each Yield parsed a turn's budget of bytes, so this ends.
        let step = loop {
            let step = broker.input(client, &mut buf);
            output.take(broker.take_output(client));
            if step != Step::Yield {
                break step;
            }
        };
        let live = common::live_bytes().saturating_sub(base);
        assert!(
            live <= HEAP_FIXED + HEAP_PER_INPUT_BYTE * stream.len(),
            "the broker keeps {live} bytes after {} bytes of input",
            stream.len()
        );
        match step {
            Step::Closed => {
                closed = true;
                break;
            }
            Step::Paused => break,
            Step::NeedMore | Step::Yield => {}
        }
    }
    broker.tick();
    output.take(broker.take_output(client));
    if closed {
        // A closed connection reads nothing more and writes nothing more.
        buf.extend_from_slice(b"\x01\x00\x00\x00\x00\x00\x00\xce");
        assert_eq!(broker.input(client, &mut buf), Step::Closed);
        assert!(
            broker.take_output(client).is_empty(),
            "output after the close"
        );
    }
    broker.disconnect(client);
    drop(broker);
});
