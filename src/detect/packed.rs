//! A list of readings in a detector's state, kept small where it is stored: in a binary
//! encoding (the store's) the values are one pco block, in JSON (states stored by earlier
//! versions, and tests) the plain list they always were.
//!
//! For `#[serde(with = "super::packed")]` on a `Vec<f64>`. pco is lossless: the values read back
//! bit for bit.

use std::fmt;

use serde::de::{self, Visitor};
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub fn serialize<S: Serializer>(values: &[f64], s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable() {
        return values.serialize(s);
    }
    let block = if values.is_empty() {
        Vec::new()
    } else {
        pco::standalone::simple_compress(values, &pco::ChunkConfig::default()).map_err(S::Error::custom)?
    };
    s.serialize_bytes(&block)
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
    if d.is_human_readable() {
        return Vec::<f64>::deserialize(d);
    }
    d.deserialize_bytes(Block)
}

/// Reads the pco block (empty: no values).
struct Block;

impl Visitor<'_> for Block {
    type Value = Vec<f64>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a pco block of f64 values")
    }

    fn visit_bytes<E: de::Error>(self, block: &[u8]) -> Result<Vec<f64>, E> {
        if block.is_empty() {
            return Ok(Vec::new());
        }
        pco::standalone::simple_decompress(block).map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Kept {
        #[serde(with = "super")]
        values: Vec<f64>,
    }

    #[test]
    fn values_are_one_compressed_block_in_binary_and_a_list_in_json() {
        let kept = Kept { values: (0..80).map(|i| 71.4 + (f64::from(i) * 0.3).sin() / 3.0).collect() };
        let binary = postcard::to_stdvec(&kept).unwrap();
        assert!(binary.len() < 80 * 8, "{} bytes for 80 values", binary.len());
        assert_eq!(postcard::from_bytes::<Kept>(&binary).unwrap(), kept, "bit for bit");
        let json = serde_json::to_string(&kept).unwrap();
        assert!(json.starts_with("{\"values\":[71.4,"), "{json}");
        assert_eq!(serde_json::from_str::<Kept>(&json).unwrap(), kept);
        let none = Kept { values: Vec::new() };
        assert_eq!(postcard::to_stdvec(&none).unwrap(), vec![0], "an empty list is an empty block");
        assert_eq!(postcard::from_bytes::<Kept>(&[0]).unwrap(), none);
    }

    #[test]
    fn a_damaged_block_is_an_error() {
        let binary = postcard::to_stdvec(&Kept { values: vec![1.5; 40] }).unwrap();
        let mut damaged = binary[..binary.len() - 3].to_vec();
        damaged[0] -= 3;
        assert!(postcard::from_bytes::<Kept>(&damaged).is_err());
    }
}
