//! Scylla (or Cassandra) as a model source: `scoregrid load --source scylla://HOST:PORT/KEYSPACE`
//! reads the same four things a model folder holds from four tables of one keyspace:
//!
//! ```text
//! CREATE TABLE manifest  (version text PRIMARY KEY, dim int);              -- exactly one row
//! CREATE TABLE customers (customer_id bigint PRIMARY KEY, vector list<float>,
//!                         categories list<frozen<tuple<int, float>>>);      -- (category_id, weight)
//! CREATE TABLE products  (product_id bigint PRIMARY KEY, category_id int, vector list<float>,
//!                         in_stock boolean);
//! CREATE TABLE pools     (container_id bigint, product_id bigint, pool_score float,
//!                         PRIMARY KEY (container_id, product_id));
//! ```
//!
//! CQL has no unsigned types: a `bigint` id is read as the same 64 bits (a negative value is an
//! id above 2^63), an `int` category as the same 32 bits, as for Parquet. Each table is read by
//! token range, `ranges` ranges at a time, in pages, and its rows go through a bounded channel
//! into the builder with the same checks and messages as files; a row at fault is named by its
//! table and key (`ks.customers key 42: field `vector`: ...`). Tables are read in the order
//! customers, products, pools (pool entries name products).
//!
//! [`ScyllaSource::parse`] is always built, so that a binary without the `scylla` feature can
//! say so; reading needs the feature (the driver is a heavy build).

use crate::error::{LoadError, Location, Position};
use crate::manifest::Manifest;

/// Where a model lives in Scylla.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScyllaSource {
    /// `host:port` of the nodes to contact first.
    pub nodes: Vec<String>,
    pub keyspace: String,
}

impl ScyllaSource {
    /// Parses `scylla://HOST:PORT[,HOST:PORT...]/KEYSPACE`.
    ///
    /// # Errors
    /// `LoadError::Argument` naming what is wrong.
    pub fn parse(uri: &str) -> Result<Self, LoadError> {
        let bad = |message: String| LoadError::Argument {
            name: "source",
            message,
        };
        let rest = uri.strip_prefix("scylla://").ok_or_else(|| {
            bad(format!(
                "{uri:?} is not a scylla://HOST:PORT/KEYSPACE address"
            ))
        })?;
        let (hosts, keyspace) = rest.split_once('/').ok_or_else(|| {
            bad(format!(
                "{uri:?} names no keyspace (scylla://HOST:PORT/KEYSPACE)"
            ))
        })?;
        let nodes: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.is_empty() || nodes.iter().any(|n| !n.contains(':')) {
            return Err(bad(format!("{uri:?}: give each node as HOST:PORT")));
        }
        // A CQL identifier, so that it can be put in a statement as it is.
        let valid = !keyspace.is_empty()
            && keyspace.len() <= 48
            && keyspace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(bad(format!(
                "keyspace {keyspace:?}: 1-48 characters of [A-Za-z0-9_]"
            )));
        }
        Ok(Self {
            nodes,
            keyspace: keyspace.to_owned(),
        })
    }

    /// `keyspace.table`, as messages name a table.
    pub fn table(&self, table: &str) -> String {
        format!("{}.{table}", self.keyspace)
    }

    /// Where a row of `table` with key `key` is, as errors name it.
    pub fn location(&self, table: &str, key: u64) -> Location {
        Location {
            file: self.table(table),
            position: Position::Key(key),
        }
    }
}

/// What a read from Scylla found.
#[derive(Clone, Debug)]
pub struct ScyllaSummary {
    pub manifest: Manifest,
    pub customers: u64,
    pub products: u64,
    pub pool_entries: u64,
}

#[cfg(feature = "scylla")]
pub use reading::{read_manifest, read_tables};

#[cfg(feature = "scylla")]
mod reading {
    use super::{ScyllaSource, ScyllaSummary};
    use crate::error::LoadError;
    use crate::manifest::{Manifest, manifest_of};
    use futures_util::StreamExt;
    use scoregrid_shard::{ModelSink, RowRef};
    use scylla::client::session::Session;
    use scylla::client::session_builder::SessionBuilder;
    use scylla::statement::Statement;
    use std::sync::Arc;

    /// Rows asked for in one page.
    const PAGE_ROWS: i32 = 2_000;
    /// Rows in flight between the range readers and the builder.
    const CHANNEL_ROWS: usize = 4_096;

    type CustomerRow = (Option<i64>, Option<Vec<f32>>, Option<Vec<(i32, f32)>>);
    type ProductRow = (Option<i64>, Option<i32>, Option<Vec<f32>>, Option<bool>);
    type PoolRow = (Option<i64>, Option<i64>, Option<f32>);

    fn unreachable(source: &ScyllaSource, what: impl std::fmt::Display) -> LoadError {
        LoadError::File {
            path: format!("scylla://{}/{}", source.nodes.join(","), source.keyspace),
            message: what.to_string(),
        }
    }

    async fn connect(source: &ScyllaSource) -> Result<Session, LoadError> {
        SessionBuilder::new()
            .known_nodes(&source.nodes)
            .build()
            .await
            .map_err(|e| unreachable(source, format!("cannot connect: {e}")))
    }

    /// Reads and validates the one row of `KEYSPACE.manifest`.
    ///
    /// # Errors
    /// No connection, no table, not exactly one row, or a row the manifest rules refuse.
    pub async fn read_manifest(source: &ScyllaSource) -> Result<Manifest, LoadError> {
        let session = connect(source).await?;
        let table = source.table("manifest");
        let rows = session
            .query_unpaged(format!("SELECT version, dim FROM {table}"), ())
            .await
            .map_err(|e| unreachable(source, format!("{table}: {e}")))?
            .into_rows_result()
            .map_err(|e| unreachable(source, format!("{table}: {e}")))?;
        let mut found = Vec::new();
        for row in rows
            .rows::<(Option<String>, Option<i32>)>()
            .map_err(|e| unreachable(source, format!("{table}: {e}")))?
        {
            found.push(row.map_err(|e| unreachable(source, format!("{table}: {e}")))?);
        }
        match found.as_slice() {
            [(Some(version), Some(dim))] => manifest_of(&table, version, i64::from(*dim)),
            [_] => Err(LoadError::File {
                path: table,
                message: "version and dim must both be set".into(),
            }),
            rows => Err(LoadError::File {
                path: table,
                message: format!("expected exactly one row, found {}", rows.len()),
            }),
        }
    }

    /// The token ranges `[lo, hi]` that split the ring into `n` parts.
    pub(crate) fn token_ranges(n: usize) -> Vec<(i64, i64)> {
        let n = n.clamp(1, 4096) as i128;
        let (min, max) = (i128::from(i64::MIN), i128::from(i64::MAX));
        let span = (max - min + 1) / n;
        (0..n)
            .map(|i| {
                let lo = min + i * span;
                let hi = if i == n - 1 { max } else { lo + span - 1 };
                (lo as i64, hi as i64)
            })
            .collect()
    }

    /// Streams every row of `SELECT columns FROM table` by token range into `each`.
    async fn scan<R, F>(
        source: &ScyllaSource,
        session: &Arc<Session>,
        table: &str,
        columns: &str,
        key: &str,
        ranges: usize,
        mut each: F,
    ) -> Result<u64, LoadError>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm> + Send + 'static,
        F: FnMut(R) -> Result<(), LoadError>,
    {
        let name = source.table(table);
        let mut statement = Statement::new(format!(
            "SELECT {columns} FROM {name} WHERE token({key}) >= ? AND token({key}) <= ?"
        ));
        statement.set_page_size(PAGE_ROWS);
        let prepared = session
            .prepare(statement)
            .await
            .map_err(|e| unreachable(source, format!("{name}: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<R, String>>(CHANNEL_ROWS);
        let mut readers = tokio::task::JoinSet::new();
        for (lo, hi) in token_ranges(ranges) {
            let (session, prepared, tx) = (session.clone(), prepared.clone(), tx.clone());
            readers.spawn(async move {
                let pager = match session.execute_iter(prepared, (lo, hi)).await {
                    Ok(pager) => pager,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                };
                let mut rows = match pager.rows_stream::<R>() {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                };
                while let Some(row) = rows.next().await {
                    // The builder stopped (a refused row): stop reading.
                    if tx.send(row.map_err(|e| e.to_string())).await.is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut count = 0u64;
        while let Some(row) = rx.recv().await {
            let row = row.map_err(|e| unreachable(source, format!("{name}: {e}")))?;
            each(row)?;
            count += 1;
        }
        readers.shutdown().await;
        tracing::info!(table = %name, rows = count, "table loaded");
        Ok(count)
    }

    /// Reads the customers, products and pools tables into `sink`, `ranges` token ranges at
    /// a time.
    ///
    /// # Errors
    /// No connection or table; a null where a value is required; a row the sink refuses, named
    /// by table and key.
    pub async fn read_tables(
        source: &ScyllaSource,
        manifest: Manifest,
        ranges: usize,
        sink: &mut impl ModelSink,
    ) -> Result<ScyllaSummary, LoadError> {
        let session = Arc::new(connect(source).await?);
        let null = |table: &str, key: u64, field: &str| {
            LoadError::field(
                source.location(table, key),
                field,
                "null; a value is required",
            )
        };
        let rejected = |table: &str, key: u64, error| LoadError::Rejected {
            location: source.location(table, key),
            error,
            first: None,
        };
        let customers = scan(
            source,
            &session,
            "customers",
            "customer_id, vector, categories",
            "customer_id",
            ranges,
            |(id, vector, categories): CustomerRow| {
                let id = id.ok_or_else(|| null("customers", 0, "customer_id"))? as u64;
                let vector = vector.ok_or_else(|| null("customers", id, "vector"))?;
                let categories: Vec<(u32, f32)> = categories
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(c, w)| (c as u32, w))
                    .collect();
                sink.add_customer(id, &vector, &categories, RowRef(id))
                    .map_err(|e| rejected("customers", id, e))
            },
        )
        .await?;
        let products = scan(
            source,
            &session,
            "products",
            "product_id, category_id, vector, in_stock",
            "product_id",
            ranges,
            |(id, category, vector, in_stock): ProductRow| {
                let id = id.ok_or_else(|| null("products", 0, "product_id"))? as u64;
                let category = category.ok_or_else(|| null("products", id, "category_id"))?;
                let vector = vector.ok_or_else(|| null("products", id, "vector"))?;
                let in_stock = in_stock.ok_or_else(|| null("products", id, "in_stock"))?;
                sink.add_product(id, category as u32, &vector, in_stock, RowRef(id))
                    .map_err(|e| rejected("products", id, e))
            },
        )
        .await?;
        let pool_entries = scan(
            source,
            &session,
            "pools",
            "container_id, product_id, pool_score",
            "container_id",
            ranges,
            |(container, product, score): PoolRow| {
                let container = container.ok_or_else(|| null("pools", 0, "container_id"))? as u64;
                let product = product.ok_or_else(|| null("pools", container, "product_id"))? as u64;
                let score = score.ok_or_else(|| null("pools", container, "pool_score"))?;
                sink.add_pool_entry(container, product, score, RowRef(container))
                    .map_err(|e| rejected("pools", container, e))
            },
        )
        .await?;
        Ok(ScyllaSummary {
            manifest,
            customers,
            products,
            pool_entries,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::token_ranges;

        #[test]
        fn token_ranges_cover_the_ring_without_overlap() {
            for n in [1, 2, 3, 7, 64] {
                let ranges = token_ranges(n);
                assert_eq!(ranges.len(), n);
                assert_eq!(ranges[0].0, i64::MIN);
                assert_eq!(ranges[n - 1].1, i64::MAX);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].1.checked_add(1), Some(w[1].0));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_address_is_parsed_or_refused_with_the_reason() {
        assert_eq!(
            ScyllaSource::parse("scylla://10.0.0.1:9042,10.0.0.2:9042/nightly_model").unwrap(),
            ScyllaSource {
                nodes: vec!["10.0.0.1:9042".into(), "10.0.0.2:9042".into()],
                keyspace: "nightly_model".into(),
            }
        );
        for (uri, says) in [
            ("http://x:1/ks", "not a scylla://"),
            ("scylla://x:9042", "no keyspace"),
            ("scylla://x/ks", "HOST:PORT"),
            ("scylla://x:9042/ks;drop", "keyspace"),
        ] {
            let error = ScyllaSource::parse(uri).unwrap_err().to_string();
            assert!(error.contains(says), "{uri}: {error}");
        }
    }
}
