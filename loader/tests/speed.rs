//! Throughput of writing and reading 100k customers at dim 64, in both formats. Ignored by
//! default (it measures, it does not check); run it in release:
//! `cargo test --release -p scoregrid-loader --test speed -- --ignored --nocapture`.

use scoregrid_loader::synth::{self, SynthSpec};
use scoregrid_loader::{Format, load_model};
use scoregrid_shard::{BuildError, CategoryId, ModelSink, PartitionCount, RowRef};
use std::time::Instant;

/// Counts rows and touches every value, so that reading cannot be optimised away.
#[derive(Default)]
struct Counting {
    rows: u64,
    checksum: f64,
}

impl ModelSink for Counting {
    fn add_customer(
        &mut self,
        _: u64,
        vector: &[f32],
        categories: &[(CategoryId, f32)],
        _: RowRef,
    ) -> Result<(), BuildError> {
        self.rows += 1;
        self.checksum += f64::from(vector.iter().sum::<f32>()) + categories.len() as f64;
        Ok(())
    }
    fn add_product(
        &mut self,
        _: u64,
        _: u32,
        vector: &[f32],
        _: bool,
        _: RowRef,
    ) -> Result<(), BuildError> {
        self.rows += 1;
        self.checksum += f64::from(vector[0]);
        Ok(())
    }
    fn add_pool_entry(&mut self, _: u64, _: u64, score: f32, _: RowRef) -> Result<(), BuildError> {
        self.rows += 1;
        self.checksum += f64::from(score);
        Ok(())
    }
}

fn rate(rows: u64, started: Instant) -> String {
    let seconds = started.elapsed().as_secs_f64();
    format!("{:>9.0} rows/s ({seconds:.2} s)", rows as f64 / seconds)
}

#[test]
#[ignore]
fn customers_100k_dim_64() {
    let spec = SynthSpec {
        customers: 100_000,
        products: 100,
        containers: 0,
        dim: 64,
        ..SynthSpec::default()
    };
    let rows = spec.customers + spec.products;
    let started = Instant::now();
    let mut sink = Counting::default();
    synth::generate_into(&spec, &mut sink).unwrap();
    println!("generate_into (no-op sink)  {}", rate(rows, started));
    for format in [Format::Jsonl, Format::Parquet] {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        synth::write_model(&spec, dir.path(), format).unwrap();
        println!(
            "write {format:?}{:width$}  {}",
            "",
            rate(rows, started),
            width = 14 - format!("{format:?}").len()
        );
        let bytes: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        println!("    {} MiB on disk", bytes >> 20);
        let started = Instant::now();
        let mut sink = Counting::default();
        load_model(dir.path(), &mut sink).unwrap();
        assert_eq!(sink.rows, rows);
        println!(
            "read {format:?} (no-op sink){:width$}{}",
            "",
            rate(rows, started),
            width = 3 - format!("{format:?}").len().min(3)
        );
        let started = Instant::now();
        scoregrid_loader::build_model(dir.path(), PartitionCount::new(64).unwrap(), 4096).unwrap();
        println!(
            "build_model {format:?}{:width$}  {}",
            "",
            rate(rows, started),
            width = 8 - format!("{format:?}").len()
        );
    }
}
