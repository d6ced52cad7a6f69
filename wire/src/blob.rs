//! `#[serde(with = "crate::blob")]` for `Vec<u8>` fields that carry opaque bytes (pieces of
//! partition files, Raft messages): serde would otherwise treat them as a sequence of `u8` and
//! (de)serialize them one element at a time, which cost a fifth of the CPU of a load. Through
//! `serialize_bytes` they are one length and one copy. bincode writes both forms the same way
//! (a length, then the bytes), so this changes the speed, not the wire format.

use serde::de::{Deserializer, Error, SeqAccess, Visitor};
use serde::ser::Serializer;
use std::fmt;

pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_bytes(bytes)
}

pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    deserializer.deserialize_byte_buf(BytesVisitor)
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = Vec<u8>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("bytes")
    }

    fn visit_bytes<E: Error>(self, bytes: &[u8]) -> Result<Vec<u8>, E> {
        Ok(bytes.to_vec())
    }

    fn visit_byte_buf<E: Error>(self, bytes: Vec<u8>) -> Result<Vec<u8>, E> {
        Ok(bytes)
    }

    // Self-describing formats (JSON in tests and tools) hand bytes over as a sequence.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
        // The hint comes from the input: bound it rather than trust it.
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
        while let Some(byte) = seq.next_element()? {
            bytes.push(byte);
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsBlob(#[serde(with = "super")] Vec<u8>);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AsSeq(Vec<u8>);

    #[test]
    fn blob_and_sequence_encode_to_the_same_bytes() {
        for len in [0usize, 1, 250, 251, 70_000] {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let blob = crate::codec::encode(&AsBlob(bytes.clone())).expect("encodes");
            let seq = crate::codec::encode(&AsSeq(bytes.clone())).expect("encodes");
            assert_eq!(blob, seq, "{len} bytes");
            let back: AsBlob = crate::codec::decode(&seq).expect("decodes");
            assert_eq!(back.0, bytes);
        }
    }
}
