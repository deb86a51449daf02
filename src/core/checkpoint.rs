//! When the core writes what its detectors learnt: by wall time (the tick), by event time (a
//! backfill replays hours a minute), and a series' own state once its healthy reference was
//! fixed or dropped.
//!
//! A checkpoint writes only the devices that changed since the last one: a device that sent
//! nothing in between is not written again.

use super::Core;
use crate::store::StoreError;

/// Every series' detector state is written to the store this often (tick time, and event
/// time), and a series' own at the next tick after its healthy reference was fixed or
/// dropped. What a crash can lose in between is a few minutes of baseline adaptation, never a
/// reference.
pub(super) const STATE_SAVE_EVERY_MS: i64 = 5 * 60_000;

impl Core {
    /// Writes the detector state every [`STATE_SAVE_EVERY_MS`] of event time (the tick writes
    /// it by wall time): a backfill replays hours a minute.
    pub(super) fn checkpoint_by_event_time(&mut self, ts: i64) -> Result<(), StoreError> {
        let saved = *self.state_saved_at_event.get_or_insert(ts);
        if ts - saved >= STATE_SAVE_EVERY_MS {
            self.save_detector_state()?;
            self.state_saved_at_event = Some(ts);
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

    use super::super::timing::{config, core, send, set_now, T0};
    use super::Core;
    use crate::detect::{SeriesState, SeriesStateV1};

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
}
