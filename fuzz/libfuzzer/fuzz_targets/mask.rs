#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| attnc_fuzz::mask(data));
