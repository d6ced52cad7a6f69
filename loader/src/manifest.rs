//! `manifest.json`, the first file of a model folder: the version name and the vector dimension
//! (contract section 1). Unknown fields are refused so that a typo cannot pass unnoticed.

use crate::error::LoadError;
use crate::jsonl::{json_message, not_an_object, parse_unsigned};
use scoregrid_shard::{DIM_MAX, ModelVersion};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::io::Read;
use std::path::Path;

/// The manifest's file name inside a model folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Largest manifest read, in bytes: the two fields take well under 200 bytes; a bigger file is
/// not a manifest and is refused before it is read whole.
const MANIFEST_BYTES_MAX: u64 = 64 * 1024;

/// A model's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub version: ModelVersion,
    /// Length of every customer and product vector, `1..=DIM_MAX`.
    pub dim: usize,
}

impl Manifest {
    /// The manifest as one line of JSON (with its newline), as [`read_manifest`] reads it.
    pub fn to_json(&self) -> String {
        let version = serde_json::Value::String(self.version.as_str().to_string());
        format!("{{\"version\":{version},\"dim\":{}}}\n", self.dim)
    }
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a manifest object {\"version\": ..., \"dim\": ...}"
)]
struct ManifestJson<'a> {
    #[serde(borrow)]
    version: &'a RawValue,
    #[serde(borrow)]
    dim: &'a RawValue,
}

/// Reads and validates `dir/manifest.json`.
///
/// # Errors
/// A missing or unreadable file, malformed JSON, an unknown or missing field, a version name
/// outside the contract's alphabet or length, a dim outside `1..=1024`; the message names the
/// field.
pub fn read_manifest(dir: &Path) -> Result<Manifest, LoadError> {
    let file = std::fs::File::open(dir.join(MANIFEST_FILE))
        .map_err(|e| LoadError::io(MANIFEST_FILE, e))?;
    let mut bytes = Vec::new();
    file.take(MANIFEST_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| LoadError::io(MANIFEST_FILE, e))?;
    if bytes.len() as u64 > MANIFEST_BYTES_MAX {
        return Err(LoadError::file(
            MANIFEST_FILE,
            format!("larger than {MANIFEST_BYTES_MAX} bytes; not a manifest"),
        ));
    }
    parse_manifest(&bytes)
}

/// # Errors
/// As [`read_manifest`].
pub fn parse_manifest(bytes: &[u8]) -> Result<Manifest, LoadError> {
    if let Some(found) = not_an_object(bytes) {
        return Err(LoadError::file(
            MANIFEST_FILE,
            format!("expected a JSON object, found {found}"),
        ));
    }
    let json: ManifestJson<'_> = serde_json::from_slice(bytes).map_err(|e| {
        let message = json_message(&e);
        LoadError::file(
            MANIFEST_FILE,
            if e.is_data() {
                message
            } else {
                format!("malformed JSON: {message}")
            },
        )
    })?;
    let field = |field, message| LoadError::Manifest {
        path: MANIFEST_FILE.to_string(),
        field,
        message,
    };
    let version: String = serde_json::from_str(json.version.get()).map_err(|_| {
        field(
            "version",
            format!("expected a string, found {}", json.version.get()),
        )
    })?;
    let version = ModelVersion::new(&version).map_err(|message| field("version", message))?;
    let dim = parse_unsigned::<u64>(json.dim.get()).map_err(|message| field("dim", message))?;
    let dim = usize::try_from(dim)
        .ok()
        .filter(|dim| (1..=DIM_MAX).contains(dim))
        .ok_or_else(|| field("dim", format!("must be 1..={DIM_MAX}, found {dim}")))?;
    Ok(Manifest { version, dim })
}

/// A manifest from its two values, read elsewhere than `manifest.json` (a database table named
/// `path`), with the same rules and messages.
///
/// # Errors
/// A version name outside the contract's alphabet or length, a dim outside `1..=1024`.
pub fn manifest_of(path: &str, version: &str, dim: i64) -> Result<Manifest, LoadError> {
    let field = |field, message| LoadError::Manifest {
        path: path.to_string(),
        field,
        message,
    };
    let version = ModelVersion::new(version).map_err(|message| field("version", message))?;
    let dim = usize::try_from(dim)
        .ok()
        .filter(|dim| (1..=DIM_MAX).contains(dim))
        .ok_or_else(|| field("dim", format!("must be 1..={DIM_MAX}, found {dim}")))?;
    Ok(Manifest { version, dim })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(text: &str) -> String {
        parse_manifest(text.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn a_valid_manifest_round_trips() {
        let manifest =
            parse_manifest(br#"{"version": "2026-11-22_nightly.v3", "dim": 64}"#).unwrap();
        assert_eq!(manifest.version.as_str(), "2026-11-22_nightly.v3");
        assert_eq!(manifest.dim, 64);
        assert_eq!(
            parse_manifest(manifest.to_json().as_bytes()).unwrap(),
            manifest
        );
    }

    #[test]
    fn bad_manifests_are_refused_naming_the_field() {
        // Proves each manifest rule with the message a user would read.
        assert_eq!(
            refusal(r#"{"version": "v1", "dim": 0}"#),
            "manifest.json: field `dim`: must be 1..=1024, found 0"
        );
        assert_eq!(
            refusal(r#"{"version": "v1", "dim": 1025}"#),
            "manifest.json: field `dim`: must be 1..=1024, found 1025"
        );
        assert_eq!(
            refusal(r#"{"version": "v1", "dim": -3}"#),
            "manifest.json: field `dim`: negative value -3 (expected an unsigned integer)"
        );
        assert_eq!(
            refusal(r#"{"version": "v1", "dim": "64"}"#),
            "manifest.json: field `dim`: expected an unsigned integer, found a string"
        );
        assert!(
            refusal(r#"{"version": "v 1", "dim": 8}"#)
                .starts_with("manifest.json: field `version`: ")
        );
        assert!(
            refusal(r#"{"version": "", "dim": 8}"#)
                .contains("field `version`: model version must be 1-64")
        );
        assert_eq!(
            refusal(r#"{"version": 7, "dim": 8}"#),
            "manifest.json: field `version`: expected a string, found 7"
        );
        assert!(
            refusal(r#"{"version": "v1", "dim": 8, "dims": 8}"#).contains("unknown field `dims`")
        );
        assert!(refusal(r#"{"version": "v1"}"#).contains("missing field `dim`"));
        assert_eq!(
            refusal(r#"["v1", 8]"#),
            "manifest.json: expected a JSON object, found a list"
        );
        assert!(
            refusal(r#"{"version": "v1", "dim": 8"#).starts_with("manifest.json: malformed JSON")
        );
    }
}
