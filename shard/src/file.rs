//! The on-disk form of a partition: what a node stages, keeps across restarts and ships to a
//! peer. Little-endian throughout:
//!
//! ```text
//! magic "SGRDPART" | format u32 | partition u32 | partition_count u32 | dim u32
//! | version: len u8 + bytes
//! | customers: n u64, entries m u64, ids [u64; n], vectors [f32; n*dim],
//!              category offsets [u32; n+1], category ids [u32; m], weights [f32; m]
//! | products:  n u64, ids [u64; n], categories [u32; n], in_stock [u8; n], vectors [f32; n*dim]
//! | segments:  count u32, then per segment: container u64, number u32, n u32, ids [u64; n],
//!              dictionary size d u32, category dictionary [u32; d], category codes [u16; n],
//!              pool scores [f32; n], in_stock [u8; n], vectors [f32; n*dim]
//! | crc32 (IEEE) of every byte before it, u32
//! ```
//!
//! Reading verifies the magic, the format version, the checksum, every length against the bytes
//! that remain (a corrupt count cannot make us allocate), and finally [`Partition::check`]. Files
//! are written to a temporary name, fsynced, then renamed, so a crash never leaves half a file
//! under the real name.

use crate::error::FileError;
use crate::ids::{ModelVersion, PartitionCount, PartitionId};
use crate::partition::Partition;
use crate::segment::Segment;
use crate::table::{CustomerTable, ProductTable};
use std::fs;
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"SGRDPART";
/// The format this build writes. [`decode`] is the one place that would migrate older ones.
pub const FORMAT_VERSION: u32 = 1;
const TRAILER_BYTES: usize = 4;

struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn u32s(&mut self, vs: &[u32]) {
        vs.iter().for_each(|&v| self.u32(v));
    }
    fn u64s(&mut self, vs: &[u64]) {
        vs.iter().for_each(|&v| self.u64(v));
    }
    fn f32s(&mut self, vs: &[f32]) {
        vs.iter().for_each(|&v| self.u32(v.to_bits()));
    }
    fn bools(&mut self, vs: &[bool]) {
        vs.iter().for_each(|&v| self.u8(u8::from(v)));
    }
}

/// A serialised partition and its checksum (the value replicas compare).
pub struct EncodedPartition {
    pub bytes: Vec<u8>,
    pub checksum: u32,
}

/// Serialises a partition, trailer included.
///
/// # Panics
/// If the partition breaks one of its invariants: writing it would persist our own bug.
pub fn encode(partition: &Partition) -> EncodedPartition {
    if let Err(violation) = partition.check() {
        panic!(
            "refusing to write malformed partition {}: {violation}",
            partition.id()
        );
    }
    let mut e = Encoder {
        buf: Vec::with_capacity(partition.heap_bytes() + 4096),
    };
    e.buf.extend_from_slice(MAGIC);
    e.u32(FORMAT_VERSION);
    e.u32(partition.id.0);
    e.u32(partition.partitions.get());
    e.u32(partition.dim as u32);
    let version = partition.version.as_str().as_bytes();
    e.u8(version.len() as u8);
    e.buf.extend_from_slice(version);

    let c = &partition.customers;
    e.u64(c.ids.len() as u64);
    e.u64(c.category_ids.len() as u64);
    e.u64s(&c.ids);
    e.f32s(&c.vectors);
    e.u32s(&c.category_offsets);
    e.u32s(&c.category_ids);
    e.f32s(&c.category_weights);

    let p = &partition.products;
    e.u64(p.ids.len() as u64);
    e.u64s(&p.ids);
    e.u32s(&p.categories);
    e.bools(&p.in_stock);
    e.f32s(&p.vectors);

    e.u32(partition.segments.len() as u32);
    for s in &partition.segments {
        e.u64(s.container);
        e.u32(s.number);
        e.u32(s.product_ids.len() as u32);
        e.u64s(&s.product_ids);
        e.u32(s.category_dictionary.len() as u32);
        e.u32s(&s.category_dictionary);
        s.category_codes
            .iter()
            .for_each(|&c| e.buf.extend_from_slice(&c.to_le_bytes()));
        e.f32s(&s.pool_scores);
        e.bools(&s.in_stock);
        e.f32s(&s.vectors);
    }
    let checksum = crc32fast::hash(&e.buf);
    e.u32(checksum);
    EncodedPartition {
        bytes: e.buf,
        checksum,
    }
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Decoder<'a> {
    fn malformed(&self, what: String) -> FileError {
        FileError::Malformed {
            path: self.path.to_string(),
            what,
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], FileError> {
        let remaining = self.bytes.len() - self.pos;
        if n > remaining {
            return Err(self.malformed(format!(
                "{what} needs {n} bytes at offset {}, only {remaining} remain",
                self.pos
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn u8(&mut self, what: &str) -> Result<u8, FileError> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32, FileError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, FileError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of `width`-byte items, refused before any allocation if the bytes are not there.
    fn count(&mut self, n: u64, width: usize, what: &str) -> Result<usize, FileError> {
        let remaining = (self.bytes.len() - self.pos) as u64;
        match n.checked_mul(width as u64) {
            Some(bytes) if bytes <= remaining => Ok(n as usize),
            _ => Err(self.malformed(format!("{what}: count {n} exceeds the file"))),
        }
    }

    fn u32s(&mut self, n: u64, what: &str) -> Result<Vec<u32>, FileError> {
        let n = self.count(n, 4, what)?;
        let b = self.take(n * 4, what)?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn u16s(&mut self, n: u64, what: &str) -> Result<Vec<u16>, FileError> {
        let n = self.count(n, 2, what)?;
        let b = self.take(n * 2, what)?;
        Ok(b.chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect())
    }

    fn u64s(&mut self, n: u64, what: &str) -> Result<Vec<u64>, FileError> {
        let n = self.count(n, 8, what)?;
        let b = self.take(n * 8, what)?;
        Ok(b.chunks_exact(8)
            .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect())
    }

    fn f32s(&mut self, n: u64, what: &str) -> Result<Vec<f32>, FileError> {
        Ok(self
            .u32s(n, what)?
            .into_iter()
            .map(f32::from_bits)
            .collect())
    }

    fn bools(&mut self, n: u64, what: &str) -> Result<Vec<bool>, FileError> {
        let n = self.count(n, 1, what)?;
        let b = self.take(n, what)?;
        b.iter()
            .map(|&v| match v {
                0 => Ok(false),
                1 => Ok(true),
                other => Err(other),
            })
            .collect::<Result<_, _>>()
            .map_err(|other| {
                self.malformed(format!("{what}: flag byte {other} is neither 0 nor 1"))
            })
    }
}

/// Parses a whole partition file. `path` is used in error messages only.
///
/// # Errors
/// A [`FileError`] saying what is wrong: magic, format version, checksum, a length, or an
/// invariant of the decoded partition.
pub fn decode(bytes: &[u8], path: &str) -> Result<Partition, FileError> {
    if bytes.len() < MAGIC.len() + 4 + TRAILER_BYTES || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FileError::BadMagic { path: path.into() });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(FileError::Checksum {
            path: path.into(),
            stored,
            computed,
        });
    }
    let mut d = Decoder {
        bytes: body,
        pos: MAGIC.len(),
        path,
    };
    let format = d.u32("format version")?;
    if format != FORMAT_VERSION {
        return Err(FileError::UnsupportedFormat {
            path: path.into(),
            found: format,
            supported: FORMAT_VERSION,
        });
    }
    let partition = decode_v1(&mut d)?;
    if d.pos != body.len() {
        return Err(d.malformed(format!(
            "{} unexpected bytes after the last segment",
            body.len() - d.pos
        )));
    }
    partition
        .check()
        .map_err(|violation| FileError::Invariant {
            path: path.into(),
            violation,
        })?;
    Ok(partition)
}

fn decode_v1(d: &mut Decoder<'_>) -> Result<Partition, FileError> {
    let id = d.u32("partition id")?;
    let count = d.u32("partition count")?;
    let partitions = PartitionCount::new(count)
        .ok_or_else(|| d.malformed(format!("partition count {count}")))?;
    let dim = d.u32("dim")? as usize;
    if !(1..=crate::DIM_MAX).contains(&dim) {
        return Err(d.malformed(format!("dim {dim} outside 1..={}", crate::DIM_MAX)));
    }
    let version_len = d.u8("version length")? as usize;
    let version_bytes = d.take(version_len, "version")?;
    let version = std::str::from_utf8(version_bytes)
        .map_err(|_| d.malformed("version is not UTF-8".into()))
        .and_then(|v| ModelVersion::new(v).map_err(|e| d.malformed(e)))?;
    let dim64 = dim as u64;

    let n = d.u64("customer count")?;
    let m = d.u64("category entry count")?;
    let customers = CustomerTable {
        dim,
        ids: d.u64s(n, "customer ids")?,
        vectors: d.f32s(n.saturating_mul(dim64), "customer vectors")?,
        category_offsets: d.u32s(n.saturating_add(1), "category offsets")?,
        category_ids: d.u32s(m, "category ids")?,
        category_weights: d.f32s(m, "category weights")?,
    };

    let n = d.u64("product count")?;
    let products = ProductTable {
        dim,
        ids: d.u64s(n, "product ids")?,
        categories: d.u32s(n, "product categories")?,
        in_stock: d.bools(n, "product in_stock")?,
        vectors: d.f32s(n.saturating_mul(dim64), "product vectors")?,
    };

    let segment_count = d.u32("segment count")?;
    // Each segment needs at least 16 header bytes: bounds the allocation below.
    let segment_count = d.count(u64::from(segment_count), 16, "segment count")?;
    let mut segments = Vec::with_capacity(segment_count);
    for _ in 0..segment_count {
        let container = d.u64("segment container")?;
        let number = d.u32("segment number")?;
        let n = u64::from(d.u32("segment length")?);
        let mut segment = Segment {
            container,
            number,
            dim,
            product_ids: d.u64s(n, "segment product ids")?,
            category_dictionary: {
                let d_len = u64::from(d.u32("segment dictionary size")?);
                d.u32s(d_len, "segment category dictionary")?
            },
            category_codes: d.u16s(n, "segment category codes")?,
            pool_scores: d.f32s(n, "segment pool scores")?,
            in_stock: d.bools(n, "segment in_stock")?,
            vectors: d.f32s(n.saturating_mul(dim64), "segment vectors")?,
            all_in_stock: false,
        };
        segment.all_in_stock = segment.in_stock.iter().all(|&s| s);
        segments.push(segment);
    }
    Ok(Partition {
        id: PartitionId(id),
        partitions,
        version,
        dim,
        customers,
        products,
        segments,
    })
}

/// Writes `partition` to `path` atomically (temporary file, fsync, rename, fsync of the
/// directory). Returns the file's checksum, the value replicas compare.
///
/// # Errors
/// `FileError::Io` naming the path.
pub fn write_partition(path: &Path, partition: &Partition) -> Result<u32, FileError> {
    let io = |source| FileError::Io {
        path: path.display().to_string(),
        source,
    };
    let EncodedPartition { bytes, checksum } = encode(partition);
    crate::durable::write_atomically(path, &bytes).map_err(io)?;
    Ok(checksum)
}

/// Reads and verifies a partition file.
///
/// # Errors
/// `FileError::Io` if it cannot be read, any other variant if it is not what was written.
pub fn read_partition(path: &Path) -> Result<Partition, FileError> {
    let name = path.display().to_string();
    let bytes = fs::read(path).map_err(|source| FileError::Io {
        path: name.clone(),
        source,
    })?;
    decode(&bytes, &name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{ModelBuilder, ModelLayout, ModelSink, RowRef};

    fn partition() -> Partition {
        let mut b = ModelBuilder::new(ModelLayout {
            version: ModelVersion::new("v1").unwrap(),
            dim: 3,
            partitions: PartitionCount::new(1).unwrap(),
            segment_products_max: 2,
        });
        b.add_customer(
            u64::MAX,
            &[1.0, 2.0, 3.0],
            &[(u32::MAX, 0.5), (1, 0.25)],
            RowRef(0),
        )
        .unwrap();
        b.add_customer(7, &[0.0, -1.0, 0.5], &[], RowRef(1))
            .unwrap();
        for p in 0..5u64 {
            b.add_product(p, (p % 2) as u32, &[p as f32, 1.0, -1.0], p != 3, RowRef(p))
                .unwrap();
            b.add_pool_entry(9, p, 1.0 / (p as f32 + 1.0), RowRef(p))
                .unwrap();
        }
        let mut built = b.finish().unwrap();
        built.partitions.remove(0)
    }

    #[test]
    fn written_files_read_back_identical() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p0000.part");
        let p = partition();
        let checksum = write_partition(&path, &p).unwrap();
        assert_eq!(read_partition(&path).unwrap(), p);
        assert_eq!(encode(&p).checksum, checksum);
        assert!(!path.with_extension("part.tmp").exists());
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode(&partition()).bytes;
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(decode(&bad, "p").is_err(), "flip at byte {i} accepted");
        }
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = encode(&partition()).bytes;
        for len in 0..bytes.len() {
            assert!(
                decode(&bytes[..len], "p").is_err(),
                "truncation to {len} accepted"
            );
        }
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let bytes = encode(&partition()).bytes;
        let e = decode(b"not a partition file at all", "x.part")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.part") && e.contains("bad magic"), "{e}");
        let mut bad = bytes.clone();
        bad[40] ^= 1;
        let e = decode(&bad, "x.part").unwrap_err().to_string();
        assert!(e.contains("checksum mismatch"), "{e}");
        // A future format with a valid checksum.
        let mut future = bytes[..bytes.len() - 4].to_vec();
        future[8] = 2;
        let crc = crc32fast::hash(&future);
        future.extend_from_slice(&crc.to_le_bytes());
        let e = decode(&future, "x.part").unwrap_err().to_string();
        assert!(e.contains("format version 2 is not supported"), "{e}");
        // A count that points past the end, with a valid checksum: refused without allocating.
        let mut huge = bytes[..bytes.len() - 4].to_vec();
        let customers_at = 8 + 4 + 12 + 1 + 2;
        huge[customers_at..customers_at + 8].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
        let crc = crc32fast::hash(&huge);
        huge.extend_from_slice(&crc.to_le_bytes());
        let e = decode(&huge, "x.part").unwrap_err().to_string();
        assert!(e.contains("exceeds the file"), "{e}");
    }
}
