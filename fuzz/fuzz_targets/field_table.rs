//! The field-table decoder: any bytes either are refused or decode to a
//! table that encodes to the length it says and decodes back to the same encoding.

#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use warren_protocol::FieldTable;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = FieldTable::decode(&Bytes::copy_from_slice(data)) else {
        return;
    };
    let mut encoded = BytesMut::new();
    table.encode(&mut encoded);
    assert_eq!(encoded.len(), table.encoded_len());
    // The encoding starts with the content's u32 length.
    let encoded = Bytes::from(encoded);
    let back =
        FieldTable::decode(&encoded.slice(4..)).expect("a table warren encoded does not decode");
    // Bytes, not values: a float NaN is not equal to itself.
    let mut again = BytesMut::new();
    back.encode(&mut again);
    assert_eq!(&again[..], &encoded[..]);
});
