//! Fuzz target: `rollq::fuzzing::message` (the property is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rollq::fuzzing::message(data));
