//! Fuzz target: `rollq::fuzzing::shared_key` (the property is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rollq::fuzzing::shared_key(data));
