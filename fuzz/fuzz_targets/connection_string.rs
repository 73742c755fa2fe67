//! Fuzz target: `rollq::fuzzing::connection_string` (the property is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rollq::fuzzing::connection_string(data));
