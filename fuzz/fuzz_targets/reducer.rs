//! Fuzz target: `rollq::fuzzing::reducer` (the property is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rollq::fuzzing::reducer(data));
