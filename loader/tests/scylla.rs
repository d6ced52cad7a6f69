//! Scylla as a model source, against a real Scylla or Cassandra: the test writes a synthetic
//! model into the keyspace `SCYLLA_URI` names (`scylla://HOST:PORT/KEYSPACE`, created if
//! missing, its four tables replaced), reads it back through the loader's Scylla source, and
//! checks that it builds exactly the model the same rows build from files; then a row with a
//! vector of the wrong length is refused, named by its table and key.
//!
//! No Scylla server installs on the machines this project is built on, so the test is ignored
//! by default and needs the server and the feature:
//!
//! ```text
//! SCYLLA_URI=scylla://127.0.0.1:9042/scoregrid_test \
//!     cargo test -p scoregrid-loader --features scylla --test scylla -- --ignored
//! ```
#![cfg(feature = "scylla")]

use scoregrid_loader::scylla::{ScyllaSource, read_manifest, read_tables};
use scoregrid_loader::synth::{self, SynthSpec};
use scoregrid_shard::{
    BuildError, CategoryId, ContainerId, CustomerId, ModelBuilder, ModelLayout, ModelSink,
    PartitionCount, ProductId, RowRef,
};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;

/// A customer row: id, vector, (category, weight) pairs.
type CustomerRow = (CustomerId, Vec<f32>, Vec<(CategoryId, f32)>);

/// The rows of a model, as the generator gives them.
#[derive(Default)]
struct Rows {
    customers: Vec<CustomerRow>,
    products: Vec<(ProductId, CategoryId, Vec<f32>, bool)>,
    pools: Vec<(ContainerId, ProductId, f32)>,
}

impl ModelSink for Rows {
    fn add_customer(
        &mut self,
        id: CustomerId,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
        _: RowRef,
    ) -> Result<(), BuildError> {
        self.customers
            .push((id, vector.to_vec(), categories.to_vec()));
        Ok(())
    }

    fn add_product(
        &mut self,
        id: ProductId,
        category: CategoryId,
        vector: &[f32],
        in_stock: bool,
        _: RowRef,
    ) -> Result<(), BuildError> {
        self.products
            .push((id, category, vector.to_vec(), in_stock));
        Ok(())
    }

    fn add_pool_entry(
        &mut self,
        container: ContainerId,
        product: ProductId,
        pool_score: f32,
        _: RowRef,
    ) -> Result<(), BuildError> {
        self.pools.push((container, product, pool_score));
        Ok(())
    }
}

async fn run(session: &Session, statement: &str) {
    session
        .query_unpaged(statement.to_owned(), ())
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn write(session: &Session, ks: &str, version: &str, dim: usize, rows: &Rows) {
    run(session, &format!(
        "CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': 1}}"
    ))
    .await;
    for table in ["manifest", "customers", "products", "pools"] {
        run(session, &format!("DROP TABLE IF EXISTS {ks}.{table}")).await;
    }
    run(
        session,
        &format!("CREATE TABLE {ks}.manifest (version text PRIMARY KEY, dim int)"),
    )
    .await;
    run(session, &format!(
        "CREATE TABLE {ks}.customers (customer_id bigint PRIMARY KEY, vector list<float>, categories list<frozen<tuple<int, float>>>)"
    ))
    .await;
    run(session, &format!(
        "CREATE TABLE {ks}.products (product_id bigint PRIMARY KEY, category_id int, vector list<float>, in_stock boolean)"
    ))
    .await;
    run(session, &format!(
        "CREATE TABLE {ks}.pools (container_id bigint, product_id bigint, pool_score float, PRIMARY KEY (container_id, product_id))"
    ))
    .await;
    session
        .query_unpaged(
            format!("INSERT INTO {ks}.manifest (version, dim) VALUES (?, ?)"),
            (version, dim as i32),
        )
        .await
        .expect("manifest row");
    let customer = session
        .prepare(format!(
            "INSERT INTO {ks}.customers (customer_id, vector, categories) VALUES (?, ?, ?)"
        ))
        .await
        .expect("prepare");
    for (id, vector, categories) in &rows.customers {
        let categories: Vec<(i32, f32)> = categories.iter().map(|&(c, w)| (c as i32, w)).collect();
        session
            .execute_unpaged(&customer, (*id as i64, vector, categories))
            .await
            .expect("customer row");
    }
    let product = session
        .prepare(format!(
            "INSERT INTO {ks}.products (product_id, category_id, vector, in_stock) VALUES (?, ?, ?, ?)"
        ))
        .await
        .expect("prepare");
    for (id, category, vector, in_stock) in &rows.products {
        session
            .execute_unpaged(&product, (*id as i64, *category as i32, vector, *in_stock))
            .await
            .expect("product row");
    }
    let pool = session
        .prepare(format!(
            "INSERT INTO {ks}.pools (container_id, product_id, pool_score) VALUES (?, ?, ?)"
        ))
        .await
        .expect("prepare");
    for (container, product, score) in &rows.pools {
        session
            .execute_unpaged(&pool, (*container as i64, *product as i64, *score))
            .await
            .expect("pool row");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Scylla or Cassandra server: set SCYLLA_URI and pass --ignored"]
async fn a_model_in_scylla_builds_the_same_version_as_from_files() {
    let uri = std::env::var("SCYLLA_URI")
        .expect("SCYLLA_URI=scylla://HOST:PORT/KEYSPACE names the server this test writes to");
    let source = ScyllaSource::parse(&uri).expect("a valid SCYLLA_URI");
    let session = SessionBuilder::new()
        .known_nodes(&source.nodes)
        .build()
        .await
        .expect("connect to SCYLLA_URI");
    let spec = SynthSpec {
        customers: 2_000,
        products: 800,
        containers: 20,
        dim: 8,
        categories: 10,
        pool_products: None,
        seed: 11,
        version: "scylla-1".into(),
    };
    let mut rows = Rows::default();
    synth::generate_into(&spec, &mut rows).expect("rows");
    write(&session, &source.keyspace, &spec.version, spec.dim, &rows).await;

    let layout = |version: scoregrid_shard::ModelVersion| ModelLayout {
        version,
        dim: spec.dim,
        partitions: PartitionCount::new(16).expect("partitions"),
        segment_products_max: 64,
    };
    let manifest = read_manifest(&source).await.expect("the manifest row");
    assert_eq!((manifest.version.as_str(), manifest.dim), ("scylla-1", 8));
    let mut from_scylla = ModelBuilder::new(layout(manifest.version.clone()));
    let summary = read_tables(&source, manifest.clone(), 7, &mut from_scylla)
        .await
        .expect("the tables");
    assert_eq!(summary.customers, rows.customers.len() as u64);
    assert_eq!(summary.pool_entries, rows.pools.len() as u64);
    let from_scylla = from_scylla.finish().expect("a model");

    let dir = tempfile::tempdir().expect("tempdir");
    synth::write_model(&spec, dir.path(), scoregrid_loader::Format::Parquet).expect("files");
    let (_, from_files) =
        scoregrid_loader::build_model(dir.path(), PartitionCount::new(16).expect("16"), 64)
            .expect("a model from files");
    assert_eq!(from_scylla.directory, from_files.directory);
    assert_eq!(from_scylla.partitions, from_files.partitions);

    // A customer whose vector has the wrong length: refused, named by table and key.
    session
        .query_unpaged(
            format!(
                "INSERT INTO {}.customers (customer_id, vector) VALUES (?, ?)",
                source.keyspace
            ),
            (424242_i64, vec![1.0_f32, 2.0]),
        )
        .await
        .expect("a bad row");
    let mut builder = ModelBuilder::new(layout(manifest.version.clone()));
    let error = read_tables(&source, manifest, 7, &mut builder)
        .await
        .expect_err("refused")
        .to_string();
    assert_eq!(
        error,
        format!(
            "{}.customers key 424242: field `vector`: expected 8 values (the manifest's dim), found 2",
            source.keyspace
        )
    );
}
