//! Finds each table's files in a model folder (contract section 1: `T.jsonl`, `T.parquet` or a
//! Spark part folder `T/`) and numbers them, so that a row's origin fits in one [`RowRef`]:
//! `(file_index << 40) | row_number`, decoded back to "customers/part-00003.parquet row 17".

use crate::error::{LoadError, Location, Position};
use scoregrid_shard::RowRef;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Bits of a [`RowRef`] that hold the 1-based line or row number within a file.
const ROW_BITS: u32 = 40;

/// Largest line or row number in one file: 2^40 - 1, far beyond any file a Spark task writes.
/// A longer file is refused rather than given ambiguous origins.
pub const ROWS_PER_FILE_MAX: u64 = (1 << ROW_BITS) - 1;

/// Largest number of files in one load; the file index takes the remaining 24 bits.
pub const FILES_MAX: usize = 1 << (64 - ROW_BITS);

/// The three tables of a model, in the order they are loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Table {
    Customers,
    Products,
    Pools,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Customers, Table::Products, Table::Pools];

    /// The table's name as it appears in file names.
    pub fn name(self) -> &'static str {
        match self {
            Table::Customers => "customers",
            Table::Products => "products",
            Table::Pools => "pools",
        }
    }
}

/// How a file's rows are numbered and read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FileFormat {
    Jsonl,
    Parquet,
    /// Rows fed by the synthetic generator; numbered like Parquet rows.
    Synthetic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FileIndex(u32);

#[derive(Clone, Debug)]
struct SourceFile {
    path: PathBuf,
    name: String,
    format: FileFormat,
}

/// Every file of one load, indexed so that a [`RowRef`] can name its file and row.
#[derive(Clone, Debug, Default)]
pub struct SourceFiles {
    files: Vec<SourceFile>,
}

impl SourceFiles {
    /// The origins used by [`crate::synth::generate_into`]: one pseudo-file per table.
    pub(crate) fn synthetic() -> Self {
        let mut files = Self::default();
        for table in Table::ALL {
            files.files.push(SourceFile {
                path: PathBuf::new(),
                name: format!("synthetic {}", table.name()),
                format: FileFormat::Synthetic,
            });
        }
        files
    }

    /// The pseudo-file of `table` in [`SourceFiles::synthetic`].
    pub(crate) fn synthetic_index(table: Table) -> FileIndex {
        FileIndex(Table::ALL.iter().position(|&t| t == table).unwrap_or(0) as u32)
    }

    fn push(
        &mut self,
        path: PathBuf,
        name: String,
        format: FileFormat,
    ) -> Result<FileIndex, LoadError> {
        if self.files.len() >= FILES_MAX {
            return Err(LoadError::file(
                name,
                format!("more than {FILES_MAX} files in one model"),
            ));
        }
        let index = FileIndex(self.files.len() as u32);
        self.files.push(SourceFile { path, name, format });
        Ok(index)
    }

    pub(crate) fn path(&self, file: FileIndex) -> &Path {
        &self.files[file.0 as usize].path
    }

    /// The file's path relative to the model folder, for messages.
    pub(crate) fn name(&self, file: FileIndex) -> &str {
        &self.files[file.0 as usize].name
    }

    pub(crate) fn format(&self, file: FileIndex) -> FileFormat {
        self.files[file.0 as usize].format
    }

    pub(crate) fn location(&self, file: FileIndex, number: u64) -> Location {
        let position = match self.format(file) {
            FileFormat::Jsonl => Position::Line(number),
            FileFormat::Parquet | FileFormat::Synthetic => Position::Row(number),
        };
        Location {
            file: self.name(file).to_string(),
            position,
        }
    }

    /// The origin of line or row `number` (1-based) of `file`.
    ///
    /// # Errors
    /// When `number` does not fit in the row bits.
    pub(crate) fn row_ref(&self, file: FileIndex, number: u64) -> Result<RowRef, LoadError> {
        if number > ROWS_PER_FILE_MAX {
            return Err(LoadError::file(
                self.name(file),
                format!("more than {ROWS_PER_FILE_MAX} rows in one file"),
            ));
        }
        Ok(RowRef((u64::from(file.0) << ROW_BITS) | number))
    }

    /// Where `origin` is, if it is one of ours (row numbers start at 1, so `RowRef(0)`, which
    /// sinks without origins report, is not).
    pub fn locate(&self, origin: RowRef) -> Option<Location> {
        let number = origin.0 & ROWS_PER_FILE_MAX;
        let index = usize::try_from(origin.0 >> ROW_BITS).ok()?;
        if number == 0 || index >= self.files.len() {
            return None;
        }
        Some(self.location(FileIndex(index as u32), number))
    }

    /// Attaches the row's location, and the first occurrence's for duplicates, to a refusal of
    /// the sink.
    pub(crate) fn rejected(&self, origin: RowRef, error: scoregrid_shard::BuildError) -> LoadError {
        match self.locate(origin) {
            Some(location) => {
                let first = first_origin(&error).and_then(|first| self.locate(first));
                LoadError::Rejected {
                    location,
                    error,
                    first,
                }
            }
            None => LoadError::Model { error },
        }
    }

    /// Maps an error of [`scoregrid_shard::ModelBuilder::finish`]: a duplicate pool entry (or
    /// a customer repeated in a spill) is reported at its second occurrence, with the first one.
    pub fn locate_error(&self, error: scoregrid_shard::BuildError) -> LoadError {
        match error {
            scoregrid_shard::BuildError::DuplicatePoolEntry { second, .. }
            | scoregrid_shard::BuildError::RepeatedCustomer { second, .. } => {
                self.rejected(second, error)
            }
            error => LoadError::Model { error },
        }
    }

    /// Finds the one form of `table` in `dir` and registers its files (a part folder's sorted by
    /// name).
    ///
    /// # Errors
    /// No form or more than one, an empty part folder, an unexpected entry in it, I/O errors.
    pub(crate) fn add_table(
        &mut self,
        dir: &Path,
        table: Table,
    ) -> Result<Vec<FileIndex>, LoadError> {
        let name = table.name();
        let jsonl = format!("{name}.jsonl");
        let parquet = format!("{name}.parquet");
        let folder = format!("{name}/");
        let mut forms: Vec<&String> = Vec::new();
        for (form, want) in [
            (&jsonl, Kind::File),
            (&parquet, Kind::File),
            (&folder, Kind::Folder),
        ] {
            let path = dir.join(form.trim_end_matches('/'));
            match kind_of(&path, form)? {
                None => {}
                Some(found) if found == want => forms.push(form),
                // `customers.parquet/`, as `df.write.parquet("customers.parquet")` makes it, or a
                // file named `customers`: say what is expected rather than guess.
                Some(Kind::Folder) => {
                    return Err(LoadError::file(
                        form.as_str(),
                        format!("is a folder; a part folder must be named {folder}"),
                    ));
                }
                Some(Kind::File) => {
                    return Err(LoadError::file(
                        name,
                        format!("is a file; expected {jsonl}, {parquet} or a folder {folder}"),
                    ));
                }
            }
        }
        match forms.as_slice() {
            [] => Err(LoadError::MissingTable { table: name }),
            [form] if **form == jsonl => Ok(vec![self.push(
                dir.join(&jsonl),
                jsonl,
                FileFormat::Jsonl,
            )?]),
            [form] if **form == parquet => Ok(vec![self.push(
                dir.join(&parquet),
                parquet,
                FileFormat::Parquet,
            )?]),
            [_] => self.add_part_folder(dir, name),
            _ => Err(LoadError::AmbiguousTable {
                table: name,
                forms: forms.into_iter().cloned().collect(),
            }),
        }
    }

    fn add_part_folder(&mut self, dir: &Path, name: &str) -> Result<Vec<FileIndex>, LoadError> {
        let folder = dir.join(name);
        let entries = fs::read_dir(&folder).map_err(|e| LoadError::io(format!("{name}/"), e))?;
        let mut parts: Vec<String> = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| LoadError::io(format!("{name}/"), e))?;
            let file_name = entry.file_name();
            let Some(file_name) = file_name.to_str() else {
                return Err(LoadError::file(
                    format!("{name}/{}", file_name.to_string_lossy()),
                    "file name is not UTF-8",
                ));
            };
            if is_spark_bookkeeping(file_name) {
                continue;
            }
            let relative = format!("{name}/{file_name}");
            let is_file = entry
                .file_type()
                .map_err(|e| LoadError::io(relative.clone(), e))?
                .is_file()
                || fs::metadata(entry.path()).is_ok_and(|m| m.is_file());
            if !(is_file && file_name.starts_with("part-") && file_name.ends_with(".parquet")) {
                return Err(LoadError::file(
                    relative,
                    "unexpected entry in a part folder (expected part-*.parquet files; \
                     `_*`, `.*` and `*.crc` are ignored)",
                ));
            }
            parts.push(file_name.to_string());
        }
        if parts.is_empty() {
            return Err(LoadError::file(
                format!("{name}/"),
                "no part-*.parquet files in the folder",
            ));
        }
        parts.sort_unstable();
        parts
            .into_iter()
            .map(|part| {
                self.push(
                    folder.join(&part),
                    format!("{name}/{part}"),
                    FileFormat::Parquet,
                )
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Folder,
}

/// `None` when nothing is at `path`.
fn kind_of(path: &Path, form: &str) -> Result<Option<Kind>, LoadError> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Ok(Some(Kind::Folder)),
        Ok(_) => Ok(Some(Kind::File)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LoadError::io(form, e)),
    }
}

/// What Spark and Hadoop leave beside the part files: `_SUCCESS`, `_committed_*`, hidden files,
/// checksums (`.part-00000.parquet.crc`).
fn is_spark_bookkeeping(file_name: &str) -> bool {
    file_name.starts_with('_') || file_name.starts_with('.') || file_name.ends_with(".crc")
}

fn first_origin(error: &scoregrid_shard::BuildError) -> Option<RowRef> {
    use scoregrid_shard::BuildError;
    match error {
        BuildError::DuplicateCustomer { first, .. }
        | BuildError::RepeatedCustomer { first, .. }
        | BuildError::DuplicateProduct { first, .. }
        | BuildError::DuplicatePoolEntry { first, .. } => Some(*first),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_refs_round_trip_to_file_and_row() {
        // Proves the RowRef packing: file index in the high 24 bits, 1-based row in the low 40.
        let mut files = SourceFiles::default();
        let a = files
            .push(PathBuf::from("a"), "a.jsonl".into(), FileFormat::Jsonl)
            .unwrap();
        let b = files
            .push(
                PathBuf::from("b"),
                "b/part-1.parquet".into(),
                FileFormat::Parquet,
            )
            .unwrap();
        let origin = files.row_ref(b, ROWS_PER_FILE_MAX).unwrap();
        assert_eq!(
            files.locate(origin).unwrap().to_string(),
            format!("b/part-1.parquet row {ROWS_PER_FILE_MAX}")
        );
        assert_eq!(
            files
                .locate(files.row_ref(a, 3).unwrap())
                .unwrap()
                .to_string(),
            "a.jsonl line 3"
        );
        assert!(files.row_ref(a, ROWS_PER_FILE_MAX + 1).is_err());
        assert_eq!(
            files.locate(RowRef(0)),
            None,
            "row 0 is no origin: ReferenceModel reports it"
        );
        assert_eq!(files.locate(RowRef(7 << ROW_BITS | 1)), None);
    }

    #[test]
    fn spark_bookkeeping_files_are_recognised() {
        for name in [
            "_SUCCESS",
            "_committed_123",
            ".part-00000.parquet.crc",
            "part-0.parquet.crc",
            ".hidden",
        ] {
            assert!(is_spark_bookkeeping(name), "{name}");
        }
        assert!(!is_spark_bookkeeping("part-00000-abc.snappy.parquet"));
    }
}
