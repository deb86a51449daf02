//! When the core writes what its detectors learnt: by wall time (the tick), by event time (a
//! backfill replays hours a minute), and a series' own state once its healthy reference was
//! fixed or dropped.
//!
//! A checkpoint writes only the devices that changed since the last one. A backfill of a large
//! fleet changes every device in every 5 minutes of event time, and then writing all of them
//! every 5 minutes of event time leaves sled's file full of the copies they replace, and adds
//! to the memory a fast drain peaks at (about 3 MB a time at 1,000 devices, 16 times in the
//! scale bench's 83 minutes of event time; BENCHMARKS.md, "The 1,000-device regression"): a
//! checkpoint by event time therefore also waits as long as its size asks for in wall time
//! (see [`CHECKPOINT_BYTES_PER_SEC`]).

use super::Core;
use crate::store::StoreError;

/// Every series' detector state is written to the store this often (tick time, and event
/// time), and a series' own at the next tick after its healthy reference was fixed or
/// dropped. What a crash can lose in between is a few minutes of baseline adaptation, never a
/// reference.
pub(super) const STATE_SAVE_EVERY_MS: i64 = 5 * 60_000;

/// Checkpoints by event time write at most this many bytes a second of wall time, on
/// average: after a checkpoint of `n` bytes the next one waits `n / CHECKPOINT_BYTES_PER_SEC`
/// seconds, however much event time passes meanwhile. A device's state is about 3 KB (four
/// metrics), so a backfill of one device or a few is checkpointed every 5 minutes of its event
/// time as before, and one of 1,000 devices at most every 1.5 s. What a crash during a
/// backfill can lose is 5 minutes of event time or what arrived during the last wait, whichever
/// is more: at the daemon's top speed (about 100,000 messages a second) some 150 messages a
/// device, 25 minutes of event time at one message every 10 s, whatever the fleet's size.
pub(super) const CHECKPOINT_BYTES_PER_SEC: u64 = 2 * 1024 * 1024;

impl Core {
    /// Writes the detector state every [`STATE_SAVE_EVERY_MS`] of event time, not sooner than
    /// the last checkpoint's size allows (see [`CHECKPOINT_BYTES_PER_SEC`]); `received_ms` is
    /// the message's wall time.
    pub(super) fn checkpoint_by_event_time(&mut self, ts: i64, received_ms: i64) -> Result<(), StoreError> {
        let saved = *self.state_saved_at_event.get_or_insert(ts);
        if ts - saved >= STATE_SAVE_EVERY_MS && received_ms >= self.checkpoint_not_before {
            let bytes = self.save_detector_state()?;
            self.state_saved_at_event = Some(ts);
            // A save by event time is one by wall time too: the tick does not write it again.
            if self.state_saved_at.is_some() {
                self.state_saved_at = Some(received_ms);
            }
            let wait_ms = (bytes as u64).saturating_mul(1000) / CHECKPOINT_BYTES_PER_SEC;
            self.checkpoint_not_before = received_ms.saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    /// At the tick (`now`, wall time): writes the detector state every
    /// [`STATE_SAVE_EVERY_MS`], and in between the state of each series whose healthy reference
    /// was fixed or dropped since the last tick.
    pub(super) fn checkpoint_by_wall_time(&mut self, now: i64) -> Result<(), StoreError> {
        let changed = self.detectors.take_references_changed();
        let saved_at = *self.state_saved_at.get_or_insert(now);
        if now - saved_at >= STATE_SAVE_EVERY_MS {
            self.save_detector_state()?;
            self.state_saved_at = Some(now);
            // A save by wall time is one by event time too: the next message starts that clock.
            self.state_saved_at_event = None;
        } else {
            for (device, metric) in changed {
                if let Some(state) = self.detectors.state(&device, &metric) {
                    self.store.put_detector_state(&device, &metric, &state)?;
                }
            }
        }
        Ok(())
    }

    /// Writes the detector state (the healthy reference, the baseline, a flatline run) and the
    /// context reference of every device that changed since the last save, durable with the
    /// next flush, so a restart does not re-learn a reference from a fault under way. Returns
    /// the bytes written.
    pub fn save_detector_state(&mut self) -> Result<usize, StoreError> {
        let mut bytes = 0;
        for (device, metric, state) in self.detectors.changed_states() {
            bytes += self.store.put_detector_state(device, metric, &state)?;
        }
        for (device, context) in self.detectors.changed_contexts() {
            bytes += self.store.put_context(device, context)?;
        }
        self.detectors.mark_stored();
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::super::timing::{config, core, now, send, set_now, MINUTE, T0};
    use super::Core;
    use crate::detect::{SeriesState, SeriesStateV1};

    /// Every message of one minute of event time from each of `devices`.
    fn minute(core: &mut Core, devices: usize, m: i64) {
        for d in 0..devices {
            send(core, &format!("comp-{d}"), T0 + m * MINUTE, 70.0 + 0.01 * m as f64);
        }
    }

    #[test]
    fn a_checkpoint_writes_only_the_devices_heard_from_since_the_last_one() {
        set_now(T0);
        let config = config();
        let (mut core, store, metrics) = core(&config);
        send(&mut core, "comp-1", T0, 70.0);
        send(&mut core, "comp-2", T0, 70.0);
        let both = core.save_detector_state().unwrap();
        send(&mut core, "comp-1", T0 + 1000, 70.5);
        let one = core.save_detector_state().unwrap();
        assert!(0 < one && one < both, "one device of two written: {one} of {both} bytes");
        assert_eq!(core.save_detector_state().unwrap(), 0, "nothing changed, nothing written");
        let stored: BTreeSet<String> =
            store.detector_states::<SeriesState, SeriesStateV1>().unwrap().into_iter().map(|(d, _, _)| d).collect();
        assert_eq!(stored, BTreeSet::from(["comp-1".to_string(), "comp-2".to_string()]));

        // After a restart the restored state is the stored one: nothing to write until a device
        // is heard from again.
        let mut restarted = Core::new(config.core(), store.clone(), metrics).unwrap();
        assert_eq!(restarted.series_tracked(), 2);
        assert_eq!(restarted.save_detector_state().unwrap(), 0, "what was restored is not written back");
    }

    #[test]
    fn a_fast_backfill_is_checkpointed_by_event_time_as_often_as_its_size_allows() {
        // The wall clock stands still: the whole backfill arrives at once.
        set_now(T0 + 24 * 60 * MINUTE);
        let config = config();
        let (mut core, _store, _) = core(&config);
        for m in 0..=5 {
            minute(&mut core, 10, m);
        }
        assert_eq!(core.state_saved_at_event, Some(T0 + 5 * MINUTE), "written after 5 minutes of event time");
        let wait = core.checkpoint_not_before - now();
        assert!((1..100).contains(&wait), "ten devices' state waits a few ms, not {wait}");
        for m in 6..=12 {
            minute(&mut core, 10, m);
        }
        assert_eq!(core.state_saved_at_event, Some(T0 + 5 * MINUTE), "not again before its wait is over");
        set_now(core.checkpoint_not_before);
        minute(&mut core, 10, 13);
        assert_eq!(core.state_saved_at_event, Some(T0 + 13 * MINUTE), "written once its wait is over");
    }
}
