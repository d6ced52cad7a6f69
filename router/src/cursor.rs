//! The pagination cursor: an opaque token that carries everything needed to produce the next
//! page: the model version it is pinned to, the request it belongs to, and the rank key of the
//! last item returned. The next page is "the best `limit` items ranking strictly after that
//! key", so a page costs the same at any depth, and following cursors yields every item exactly
//! once (scores are deterministic per version, and the order is total).
//!
//! Token: base64url (no padding) of
//! `1u8 | version len u8 | version | customer u64 | container u64 | flags u8 | category u32 |
//! candidates u64 | score bits u32 | product u64 | crc32 u32` (little-endian). The CRC catches
//! garbage and truncation; a cursor is not secret and a forged one only selects a position.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use scoregrid_shard::{CategoryId, ContainerId, CustomerId, ModelVersion, RankKey};
use thiserror::Error;

const FORMAT: u8 = 1;
const HAS_CATEGORY: u8 = 1;
const HAS_CANDIDATES: u8 = 2;

#[derive(Clone, Debug, PartialEq)]
pub struct Cursor {
    pub version: ModelVersion,
    pub customer: CustomerId,
    pub container: ContainerId,
    pub category: Option<CategoryId>,
    pub candidates: Option<u64>,
    pub after: RankKey,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CursorError {
    #[error("cursor is not a valid token")]
    Garbage,
    #[error(
        "cursor was issued for another request (customer, container, category and candidates must be the same)"
    )]
    Mismatch,
}

impl Cursor {
    pub fn encode(&self) -> String {
        let version = self.version.as_str().as_bytes();
        let mut b = Vec::with_capacity(48 + version.len());
        b.push(FORMAT);
        b.push(version.len() as u8);
        b.extend_from_slice(version);
        b.extend_from_slice(&self.customer.to_le_bytes());
        b.extend_from_slice(&self.container.to_le_bytes());
        let flags = if self.category.is_some() {
            HAS_CATEGORY
        } else {
            0
        } | if self.candidates.is_some() {
            HAS_CANDIDATES
        } else {
            0
        };
        b.push(flags);
        b.extend_from_slice(&self.category.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.candidates.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&self.after.score.to_bits().to_le_bytes());
        b.extend_from_slice(&self.after.product.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        URL_SAFE_NO_PAD.encode(b)
    }

    /// # Errors
    /// `CursorError::Garbage` for anything that is not a token this router issued.
    pub fn decode(token: &str) -> Result<Self, CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| CursorError::Garbage)?;
        let (body, crc) = bytes
            .split_at_checked(bytes.len().saturating_sub(4))
            .ok_or(CursorError::Garbage)?;
        if crc.len() != 4 || crc32fast::hash(body).to_le_bytes() != crc {
            return Err(CursorError::Garbage);
        }
        let mut r = Reader { bytes: body };
        if r.take(1)?[0] != FORMAT {
            return Err(CursorError::Garbage);
        }
        let len = r.take(1)?[0] as usize;
        let version = std::str::from_utf8(r.take(len)?)
            .ok()
            .and_then(|v| ModelVersion::new(v).ok())
            .ok_or(CursorError::Garbage)?;
        let customer = r.u64()?;
        let container = r.u64()?;
        let flags = r.take(1)?[0];
        let category = r.u32()?;
        let candidates = r.u64()?;
        let score = f32::from_bits(r.u32()?);
        let product = r.u64()?;
        if !r.bytes.is_empty() || flags & !(HAS_CATEGORY | HAS_CANDIDATES) != 0 {
            return Err(CursorError::Garbage);
        }
        Ok(Self {
            version,
            customer,
            container,
            category: (flags & HAS_CATEGORY != 0).then_some(category),
            candidates: (flags & HAS_CANDIDATES != 0).then_some(candidates),
            after: RankKey { score, product },
        })
    }

    /// # Errors
    /// `CursorError::Mismatch` if the cursor belongs to a different request.
    pub fn check_matches(
        &self,
        customer: CustomerId,
        container: ContainerId,
        category: Option<CategoryId>,
        candidates: Option<u64>,
    ) -> Result<(), CursorError> {
        if (
            self.customer,
            self.container,
            self.category,
            self.candidates,
        ) == (customer, container, category, candidates)
        {
            Ok(())
        } else {
            Err(CursorError::Mismatch)
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CursorError> {
        let (head, rest) = self.bytes.split_at_checked(n).ok_or(CursorError::Garbage)?;
        self.bytes = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, CursorError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, CursorError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn cursors_round_trip(
            customer in any::<u64>(), container in any::<u64>(),
            category in proptest::option::of(any::<u32>()), candidates in proptest::option::of(any::<u64>()),
            score in any::<f32>(), product in any::<u64>(), version in "[A-Za-z0-9._-]{1,64}",
        ) {
            let c = Cursor { version: ModelVersion::new(&version).unwrap(), customer, container, category, candidates, after: RankKey { score, product } };
            let back = Cursor::decode(&c.encode()).unwrap();
            prop_assert_eq!(back.after.score.to_bits(), score.to_bits());
            prop_assert_eq!(back.version, c.version);
            prop_assert_eq!((back.customer, back.container, back.category, back.candidates, back.after.product), (customer, container, category, candidates, product));
        }

        #[test]
        fn garbage_never_decodes_or_panics(token in "[A-Za-z0-9_-]{0,120}") {
            // A random token passes the CRC with probability 2^-32.
            prop_assert!(Cursor::decode(&token).is_err());
        }
    }

    #[test]
    fn a_flipped_bit_is_refused() {
        let c = Cursor {
            version: ModelVersion::new("v1").unwrap(),
            customer: 1,
            container: 2,
            category: None,
            candidates: Some(10),
            after: RankKey {
                score: 0.5,
                product: 9,
            },
        };
        let token = c.encode();
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[5] ^= 1;
        assert_eq!(
            Cursor::decode(&URL_SAFE_NO_PAD.encode(bytes)),
            Err(CursorError::Garbage)
        );
        assert_eq!(c.check_matches(1, 2, None, Some(10)), Ok(()));
        assert_eq!(
            c.check_matches(1, 2, Some(3), Some(10)),
            Err(CursorError::Mismatch)
        );
    }
}
