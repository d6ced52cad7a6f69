//! The crate's one error type. Every message starts with where the fault is: the file (its path
//! relative to the model folder), then the line (JSONL) or row (Parquet), then the field.

use scoregrid_shard::BuildError;
use std::fmt;
use thiserror::Error;

/// A row of a model: the file it is in and its 1-based line (JSONL) or row (Parquet) number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// Relative to the model folder, with `/` separators (`customers/part-00003.parquet`).
    pub file: String,
    pub position: Position,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// A JSONL line, counting from 1.
    Line(u64),
    /// A Parquet (or synthetic) row, counting from 1 within its file.
    Row(u64),
    /// A database row, by its key (a Scylla table's partition key, as the id it stands for).
    Key(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Position::Line(n) => write!(f, "{} line {n}", self.file),
            Position::Row(n) => write!(f, "{} row {n}", self.file),
            Position::Key(n) => write!(f, "{} key {n}", self.file),
        }
    }
}

/// Why a model (or a synthetic model's output) was refused.
#[derive(Debug, Error)]
pub enum LoadError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A problem with a whole file or folder: malformed manifest JSON, a Parquet file that cannot
    /// be opened, an unexpected entry in a part folder.
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{path}: field `{field}`: {message}")]
    Manifest {
        path: String,
        field: &'static str,
        message: String,
    },
    #[error("no {table} table: expected {table}.jsonl, {table}.parquet or {table}/")]
    MissingTable { table: &'static str },
    #[error("{table} table is given in more than one form: {} (keep exactly one)", .forms.join(" and "))]
    AmbiguousTable {
        table: &'static str,
        forms: Vec<String>,
    },
    /// A Parquet column that is missing or of a type the loader does not read.
    #[error("{path}: column `{column}`: {message}")]
    Column {
        path: String,
        column: String,
        message: String,
    },
    /// A row that cannot be read: malformed JSON, a blank or overlong line, a missing or unknown
    /// field.
    #[error("{location}: {message}")]
    Row { location: Location, message: String },
    /// A field whose value cannot be read: wrong type, negative or out-of-range id, null.
    #[error("{location}: field `{field}`: {message}")]
    Field {
        location: Location,
        field: String,
        message: String,
    },
    /// A row the model refuses (contract section 1): wrong dim, not finite, duplicate id, unknown
    /// product. `first` is where the earlier row of a duplicate is.
    #[error("{location}: {error}{}", FirstSeen(.first.as_ref()))]
    Rejected {
        location: Location,
        error: BuildError,
        first: Option<Location>,
    },
    /// A model-level refusal that no single row carries.
    #[error("model refused: {error}")]
    Model { error: BuildError },
    /// A bad argument of a call (build options, synthetic model spec).
    #[error("argument `{name}`: {message}")]
    Argument { name: &'static str, message: String },
}

struct FirstSeen<'a>(Option<&'a Location>);

impl fmt::Display for FirstSeen<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(first) => write!(f, " (first seen at {first})"),
            None => Ok(()),
        }
    }
}

impl LoadError {
    /// The row at fault, when there is one.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Row { location, .. }
            | Self::Field { location, .. }
            | Self::Rejected { location, .. } => Some(location),
            _ => None,
        }
    }

    pub(crate) fn io(path: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn file(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::File {
            path: path.into(),
            message: message.into(),
        }
    }

    pub(crate) fn field(
        location: Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::Field {
            location,
            field: field.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scoregrid_shard::RowRef;

    #[test]
    fn messages_name_file_row_and_field() {
        // Proves the Display formats that users and scripts see, one per row-level variant.
        let at = |file: &str, position| Location {
            file: file.to_string(),
            position,
        };
        let duplicate = LoadError::Rejected {
            location: at("products/part-00001.parquet", Position::Row(12)),
            error: BuildError::DuplicateProduct {
                id: 5,
                first: RowRef(0),
            },
            first: Some(at("products/part-00000.parquet", Position::Row(4))),
        };
        assert_eq!(
            duplicate.to_string(),
            "products/part-00001.parquet row 12: field `product_id`: duplicate id 5 \
             (first seen at products/part-00000.parquet row 4)"
        );
        let field = LoadError::field(
            at("customers.jsonl", Position::Line(3)),
            "customer_id",
            "negative id -1",
        );
        assert_eq!(
            field.to_string(),
            "customers.jsonl line 3: field `customer_id`: negative id -1"
        );
        let ambiguous = LoadError::AmbiguousTable {
            table: "pools",
            forms: vec!["pools.jsonl".into(), "pools/".into()],
        };
        assert_eq!(
            ambiguous.to_string(),
            "pools table is given in more than one form: pools.jsonl and pools/ (keep exactly one)"
        );
    }
}
