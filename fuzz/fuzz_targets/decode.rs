//! Fuzzes `Decoder::decode` with the default `[decode]` config.
//!
//! The input is split at its first NUL byte: what comes before is the topic (lossily made
//! UTF-8), what comes after is the payload. An input without a NUL is all payload, on a topic
//! that matches the default pattern, so the fuzzer reaches the JSON and metric code at once.

#![no_main]

use fieldwatch::config::DecodeConfig;
use fieldwatch::decode::{Decoder, ALL_REJECT_LABELS};
use fieldwatch::reading::Message;
use libfuzzer_sys::fuzz_target;

const RECEIVED_MS: i64 = 1_700_000_000_000;

fuzz_target!(|data: &[u8]| {
    let (topic, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (String::from_utf8_lossy(&data[..i]).into_owned(), &data[i + 1..]),
        None => ("plant/s1/pump-7/telemetry".to_string(), data),
    };
    let cfg = DecodeConfig::default();
    let msg = Message { topic, payload: payload.to_vec().into(), received_ms: RECEIVED_MS };
    match Decoder::new(&cfg).decode(&msg) {
        Ok(readings) => {
            assert!(!readings.is_empty());
            for r in &readings {
                assert!(r.value.is_finite(), "{r:?}");
                assert!(!r.device.is_empty() && r.device.len() <= 128, "{r:?}");
            }
        }
        Err(reason) => assert!(ALL_REJECT_LABELS.contains(&reason.label()), "{reason:?}"),
    }
});
