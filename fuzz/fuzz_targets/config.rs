//! libFuzzer target `config`: see `tunwall_fuzz::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunwall_fuzz::config(data));
