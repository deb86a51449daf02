//! A series' head (its readings not yet in a chunk), held in memory in a compact form.
//!
//! A head is the largest thing the daemon holds per series: up to a chunk's worth of readings
//! for every series of the fleet (4,000 series at 1,000 devices). As `(i64, f64)` pairs that is
//! 16 bytes a reading, and a `Vec` that doubles as it grows holds up to twice that. Here each
//! reading is appended to a byte string the way Gorilla (Facebook's in-memory time series
//! store) does it, at byte rather than bit granularity so that appending and reading back stay
//! cheap: the timestamp as the zigzag varint of its delta-of-delta (one byte at a steady
//! cadence), the value as its XOR with the previous value, written as one byte saying how many
//! of the XOR's bytes are zero at each end and then the bytes between (one byte for a repeated
//! value). The buffer grows by a quarter at a time. A reading takes 8–10 bytes for noisy
//! sensor values, 2–4 for steady ones.
//!
//! Readings are kept in arrival order, late ones included; [`HeadPoints::contains`] answers
//! the redelivery check, decoding only when the timestamp is not newer than every reading held.

/// One series' readings not yet in a chunk, in arrival order.
#[derive(Debug, Default)]
pub(super) struct HeadPoints {
    bytes: Vec<u8>,
    len: u32,
    last_ts: i64,
    last_delta: i64,
    last_bits: u64,
    max_ts: i64,
}

/// The control byte of a value equal to the one before.
const REPEAT: u8 = 0xff;

impl HeadPoints {
    pub(super) fn len(&self) -> usize {
        self.len as usize
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The newest timestamp held (`None` when empty).
    pub(super) fn max_ts(&self) -> Option<i64> {
        (self.len > 0).then_some(self.max_ts)
    }

    /// Whether a reading at exactly `ts` is held.
    pub(super) fn contains(&self, ts: i64) -> bool {
        self.len > 0 && ts <= self.max_ts && self.iter().any(|p| p.0 == ts)
    }

    pub(super) fn push(&mut self, ts: i64, value: f64) {
        // At most 10 bytes of varint, a control byte and 8 value bytes.
        if self.bytes.capacity() - self.bytes.len() < 19 {
            self.bytes.reserve_exact(self.bytes.len() / 4 + 32);
        }
        let bits = value.to_bits();
        if self.len == 0 {
            self.bytes.extend_from_slice(&ts.to_le_bytes());
            self.bytes.extend_from_slice(&bits.to_le_bytes());
            self.last_delta = 0;
            self.max_ts = ts;
        } else {
            let delta = ts.wrapping_sub(self.last_ts);
            put_varint(&mut self.bytes, zigzag(delta.wrapping_sub(self.last_delta)));
            put_xor(&mut self.bytes, bits ^ self.last_bits);
            self.last_delta = delta;
            self.max_ts = self.max_ts.max(ts);
        }
        self.last_ts = ts;
        self.last_bits = bits;
        self.len += 1;
    }

    /// Empties the head, keeping at most `keep` bytes of its buffer for the readings to come.
    pub(super) fn clear(&mut self, keep: usize) {
        self.bytes.clear();
        self.bytes.shrink_to(keep);
        self.len = 0;
    }

    /// The readings in arrival order.
    pub(super) fn iter(&self) -> Iter<'_> {
        Iter { bytes: &self.bytes, left: self.len, ts: 0, delta: 0, bits: 0, first: true }
    }

    /// Heap bytes held (for tests and the memory figures).
    #[cfg(test)]
    fn heap_bytes(&self) -> usize {
        self.bytes.capacity()
    }
}

pub(super) struct Iter<'a> {
    bytes: &'a [u8],
    left: u32,
    ts: i64,
    delta: i64,
    bits: u64,
    first: bool,
}

impl Iterator for Iter<'_> {
    type Item = (i64, f64);

    fn next(&mut self) -> Option<(i64, f64)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        if self.first {
            self.first = false;
            let (ts, rest) = self.bytes.split_first_chunk::<8>()?;
            let (bits, rest) = rest.split_first_chunk::<8>()?;
            (self.ts, self.bits) = (i64::from_le_bytes(*ts), u64::from_le_bytes(*bits));
            self.bytes = rest;
        } else {
            let dod = unzigzag(take_varint(&mut self.bytes)?);
            self.delta = self.delta.wrapping_add(dod);
            self.ts = self.ts.wrapping_add(self.delta);
            self.bits ^= take_xor(&mut self.bytes)?;
        }
        Some((self.ts, f64::from_bits(self.bits)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// The XOR of a value with the one before: a control byte (zero bytes at the low end in its
/// high nibble, the bytes kept in its low nibble), then the bytes kept, low first.
fn put_xor(out: &mut Vec<u8>, xor: u64) {
    if xor == 0 {
        out.push(REPEAT);
        return;
    }
    let low = xor.trailing_zeros() / 8;
    let high = xor.leading_zeros() / 8;
    let kept = 8 - low - high;
    out.push(((low as u8) << 4) | kept as u8);
    out.extend_from_slice(&(xor >> (low * 8)).to_le_bytes()[..kept as usize]);
}

fn take_xor(bytes: &mut &[u8]) -> Option<u64> {
    let (&control, rest) = bytes.split_first()?;
    if control == REPEAT {
        *bytes = rest;
        return Some(0);
    }
    let (low, kept) = ((control >> 4) as usize, (control & 0x0f) as usize);
    if kept == 0 || low + kept > 8 || rest.len() < kept {
        return None;
    }
    let mut le = [0u8; 8];
    le[..kept].copy_from_slice(&rest[..kept]);
    *bytes = &rest[kept..];
    Some(u64::from_le_bytes(le) << (low * 8))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_steady_series_takes_a_few_bytes_a_reading() {
        let mut h = HeadPoints::default();
        for i in 0..128i64 {
            h.push(1_700_000_000_000 + i * 10_000, 21.5);
        }
        assert_eq!(h.len(), 128);
        assert!(h.iter().all(|p| p.1 == 21.5));
        // 16 bytes for the first reading, then a delta-of-delta byte and a repeat byte each
        // (the second reading's delta, 10 s, takes three varint bytes).
        assert_eq!(h.bytes.len(), 16 + 3 + 1 + 126 * 2);
        assert!(h.heap_bytes() < 128 * 16 / 4, "{} bytes held", h.heap_bytes());
    }

    #[test]
    fn noisy_values_take_about_half_of_a_pair() {
        let mut h = HeadPoints::default();
        let mut x = 0.5f64;
        for i in 0..128i64 {
            x = (x * 3.9 * (1.0 - x)).clamp(0.01, 0.99); // chaotic, every bit changes
            h.push(1_700_000_000_000 + i * 10_000, 60.0 + x * 5.0);
        }
        let per = h.heap_bytes() as f64 / 128.0;
        assert!(per <= 12.0, "{per} bytes a reading held");
    }

    #[test]
    fn late_readings_and_redeliveries_are_found() {
        let mut h = HeadPoints::default();
        h.push(1_000, 1.0);
        h.push(3_000, 3.0);
        h.push(2_000, 2.0); // late
        assert_eq!(h.max_ts(), Some(3_000));
        assert!(h.contains(3_000), "the newest, with a late reading after it");
        assert!(h.contains(2_000) && h.contains(1_000));
        assert!(!h.contains(2_500) && !h.contains(4_000));
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(1_000, 1.0), (3_000, 3.0), (2_000, 2.0)]);
        h.clear(0);
        assert!(h.is_empty() && !h.contains(1_000) && h.max_ts().is_none());
        h.push(5_000, -0.0);
        assert_eq!(h.iter().collect::<Vec<_>>(), vec![(5_000, -0.0)]);
    }

    proptest! {
        #[test]
        fn every_reading_reads_back_exactly(points in prop::collection::vec((any::<i64>(), any::<u64>()), 0..300)) {
            let mut h = HeadPoints::default();
            for &(ts, bits) in &points {
                h.push(ts, f64::from_bits(bits));
            }
            let back: Vec<(i64, u64)> = h.iter().map(|(t, v)| (t, v.to_bits())).collect();
            prop_assert_eq!(back, points.clone());
            prop_assert_eq!(h.max_ts(), points.iter().map(|p| p.0).max());
            for &(ts, _) in &points {
                prop_assert!(h.contains(ts));
            }
        }
    }
}
