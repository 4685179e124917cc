//! The definitions import (`--definitions`, RabbitMQ's JSON export): any
//! text either is refused with an error or is read, planned for restore,
//! and survives being written as warren's definitions file and read back.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        warren::fuzzing::definitions_import(text);
    }
});
