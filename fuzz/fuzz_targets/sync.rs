//! libFuzzer target `sync`: see `tunwall_fuzz::sync`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunwall_fuzz::sync(data));
