//! Feeds arbitrary bytes to `parse_frame`, as a socket would, and decodes everything
//! lazily decodable in what comes out. Nothing a client sends may panic.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use warren_protocol::{parse_frame, Frame};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    // Each successful parse removes at least 8 bytes, so this loop is bounded by the
    // input length.
    while let Ok(Some(frame)) = parse_frame(&mut buf, 131_072) {
        if let Frame::Header { header, .. } = frame {
            let properties = header.properties;
            let decoded = properties.decode();
            assert_eq!(properties.headers(), decoded.headers);
            assert_eq!(properties.expiration(), decoded.expiration);
            assert_eq!(properties.delivery_mode(), decoded.delivery_mode);
        }
    }
});
