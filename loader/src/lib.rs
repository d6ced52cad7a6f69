//! Reads model folders (contract section 1) into any [`scoregrid_shard::ModelSink`], pushes a
//! built version into a running cluster through its map ([`push`]), and writes models:
//! synthetic ones for demos and benchmarks, arbitrary rows for tests.
//!
//! A model folder holds `manifest.json` and three tables (customers, products, pools), each as
//! JSONL, a single Parquet file or a Spark part folder. Tables are streamed: memory stays bounded
//! by one line or one batch whatever the table's size. The loader owns the syntax (types, nulls,
//! field names) and where each row came from; the sink owns the model's rules (dim, finite
//! values, unique ids, known products). Every refusal names the file, the line or row, and the
//! field.
//!
//! # Layout
//! - [`manifest`]: `manifest.json`, the version name and the dim.
//! - [`source`]: finds each table's one form and numbers its files, so a [`scoregrid_shard::RowRef`]
//!   decodes back to "file, row".
//! - `jsonl`: JSONL tables, one reused line buffer, fields read exactly.
//! - `columnar`: Parquet tables, bounded batches, columns read in place.
//! - [`load`]: [`load_model`] and [`build_model`], the entry points.
//! - [`scylla`](mod@scylla): Scylla/Cassandra as a source (reading behind the `scylla` feature).
//! - [`spool`]: a version built partition by partition into a spool folder (customers spilled
//!   to disk), so that a load needs RAM for one partition, not the whole version.
//! - [`push`](mod@push): a built version into a cluster: registered, streamed in pieces to every
//!   replica, reported staged, flipped by one committed map change; progress and a summary.
//! - [`rows`]: a model's rows in columns, the unit that writers and the generator pass around.
//! - [`write`](mod@write): writes rows as JSONL or Parquet tables.
//! - [`synth`]: a deterministic synthetic model with real structure, written or fed to a sink.
//! - [`keys`]: samples customer and container ids for the load generator.
//! - `rng`: the small deterministic PRNG behind the generator and the sampler.
//! - [`error`]: [`LoadError`] and the [`Location`] it names.

mod columnar;
pub mod error;
mod jsonl;
pub mod keys;
pub mod load;
pub mod manifest;
pub mod push;
mod rng;
pub mod rows;
pub mod scylla;
pub mod source;
pub mod spool;
pub mod synth;
pub mod write;

pub use error::{LoadError, Location, Position};
pub use jsonl::LINE_BYTES_MAX;
pub use keys::{RequestKeys, sample_request_keys};
pub use load::{LoadSummary, build_model, load_model};
pub use manifest::{Manifest, read_manifest};
pub use source::Table;
pub use write::Format;
