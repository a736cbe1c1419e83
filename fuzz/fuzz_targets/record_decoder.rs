//! The frame decoder on arbitrary bytes: never panics, and whatever it accepts re-encodes
//! to exactly the bytes it read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_logging::frame::{self, Decoded};

fuzz_target!(|data: &[u8]| {
    if let Decoded::Frame { entry, size } = frame::decode(data) {
        let mut again = Vec::new();
        frame::encode(&entry, &mut again).expect("a decoded record re-encodes");
        // The payload may use a non-canonical protobuf encoding, so compare decoded forms.
        assert_eq!(frame::decode(&again), Decoded::Frame { entry, size: again.len() });
        assert!(size <= data.len());
    }
});
