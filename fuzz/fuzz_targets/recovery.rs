//! The recovery scan on a real log damaged by the fuzzer, with a recovery point: never
//! panics, reports only records that were written, in order, loses no record wholly before
//! the first damaged byte, and never cuts as torn what the recovery point calls durable.
//! The property is `sluice_logging::fuzz_check` (also replayed over `fuzz/regressions/` by
//! `cargo test`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    sluice_logging::fuzz_check::check_damaged_log(data);
});
