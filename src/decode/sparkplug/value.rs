//! A metric's value as a reading, by its datatype.

use super::proto::{DataType, Metric, MetricValue};

/// The datatype a number names, if Sparkplug defines it.
pub(super) fn known_type(d: u32) -> Option<DataType> {
    i32::try_from(d).ok().and_then(|d| DataType::try_from(d).ok()).filter(|t| *t != DataType::Unknown)
}

pub(super) fn is_numeric(t: DataType) -> bool {
    use DataType::*;
    matches!(t, Int8 | Int16 | Int32 | Int64 | UInt8 | UInt16 | UInt32 | UInt64 | Float | Double | Boolean)
}

/// The reading a numeric metric's value makes: signed integers are two's complement in the low
/// bits of their field (Tahu writes an Int8 of -1 as 255, others as 0xFFFF_FFFF: both read -1).
pub(super) fn number(t: DataType, v: &MetricValue) -> Option<f64> {
    use DataType::*;
    use MetricValue::*;
    let bits = match v {
        IntValue(x) => u64::from(*x),
        LongValue(x) => *x,
        FloatValue(x) if matches!(t, Float | Double) => return Some(f64::from(*x)),
        DoubleValue(x) if matches!(t, Float | Double) => return Some(*x),
        BooleanValue(b) if t == Boolean => return Some(if *b { 1.0 } else { 0.0 }),
        _ => return None,
    };
    Some(match t {
        Int8 => f64::from(bits as u8 as i8),
        Int16 => f64::from(bits as u16 as i16),
        Int32 => f64::from(bits as u32 as i32),
        Int64 => bits as i64 as f64,
        UInt8 => f64::from(bits as u8),
        UInt16 => f64::from(bits as u16),
        UInt32 => f64::from(bits as u32),
        UInt64 => bits as f64,
        Boolean => (bits != 0) as u8 as f64,
        _ => return None,
    })
}

/// An integer metric's value (`bdSeq`).
pub(super) fn integer(m: &Metric) -> Option<u64> {
    match m.value {
        Some(MetricValue::IntValue(x)) => Some(u64::from(x)),
        Some(MetricValue::LongValue(x)) => Some(x),
        _ => None,
    }
}
