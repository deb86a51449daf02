//! Fuzzes the Sparkplug B decoder (`[decode.sparkplug]`) with a session's worth of messages.
//!
//! Sparkplug is stateful (births teach aliases and types, `seq` runs on, deaths end sessions),
//! so one input is a sequence of messages decoded by one decoder: each is a header byte (its
//! low three bits pick the message type, bit 3 one of two devices, bit 4 one of two edge nodes),
//! a length byte pair (big-endian) and that many payload bytes (fewer at the end of the input).

#![no_main]

use fieldwatch::config::DecodeConfig;
use fieldwatch::decode::sparkplug::SparkplugConfig;
use fieldwatch::decode::{Decoder, Presence, ALL_REJECT_LABELS};
use fieldwatch::reading::Message;
use libfuzzer_sys::fuzz_target;

const RECEIVED_MS: i64 = 1_700_000_000_000;
const KINDS: [&str; 8] = ["NBIRTH", "NDATA", "NDEATH", "DBIRTH", "DDATA", "DDEATH", "NCMD", "NBOGUS"];

fuzz_target!(|data: &[u8]| {
    let cfg = DecodeConfig {
        sparkplug: Some(SparkplugConfig { request_rebirth: true, ..SparkplugConfig::default() }),
        ..DecodeConfig::default()
    };
    let decoder = Decoder::new(&cfg);
    let mut rest = data;
    let mut n = 0i64;
    while let [header, hi, lo, tail @ ..] = rest {
        let len = (usize::from(*hi) << 8 | usize::from(*lo)).min(tail.len());
        let (payload, after) = tail.split_at(len);
        rest = after;
        let kind = KINDS[usize::from(header & 7)];
        let node = if header & 16 == 0 { "gw1" } else { "gw2" };
        let device = if header & 8 == 0 { "comp-1" } else { "comp-2" };
        let topic = if kind.starts_with('D') {
            format!("spBv1.0/plant/{kind}/{node}/{device}")
        } else {
            format!("spBv1.0/plant/{kind}/{node}")
        };
        n += 1;
        let msg = Message { topic, payload: payload.to_vec().into(), received_ms: RECEIVED_MS + n };
        let decoded = decoder.decode_message(msg);
        match &decoded.readings {
            Ok(readings) => {
                for r in readings {
                    assert!(r.value.is_finite(), "{r:?}");
                    assert!(r.device.starts_with("plant/gw"), "{r:?}");
                }
            }
            Err(reason) => assert!(ALL_REJECT_LABELS.contains(&reason.label()), "{reason:?}"),
        }
        if let Some(p) = &decoded.partial {
            assert!(ALL_REJECT_LABELS.contains(&p.label()), "{p:?}");
        }
        for p in &decoded.presence {
            let (Presence::Offline { device, .. } | Presence::Online { device, .. }) = p;
            assert!(device.starts_with("plant/gw"), "{p:?}");
        }
        if let Some(publish) = &decoded.publish {
            assert!(publish.topic.starts_with("spBv1.0/plant/NCMD/gw"), "{publish:?}");
        }
    }
});
