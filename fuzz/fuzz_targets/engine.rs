//! libFuzzer target `engine`: see `tunwall_fuzz::engine`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunwall_fuzz::engine(data));
