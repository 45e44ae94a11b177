//! libFuzzer target `state`: see `tunwall_fuzz::state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunwall_fuzz::state(data));
