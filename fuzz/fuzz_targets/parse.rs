//! libFuzzer target `parse`: see `tunwall_fuzz::parse`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tunwall_fuzz::parse(data));
