//! JSONL tables: one JSON object per line, streamed through one reused line buffer.
//!
//! Each line is parsed into borrowed raw field texts (no allocation), then each field is read by
//! hand: ids exactly as unsigned integers, floats straight from their decimal text to `f32`
//! (correctly rounded; going through `f64` first could round twice), vectors into a reused
//! buffer. Reading fields by hand is also what lets every message name its field.

use crate::error::{LoadError, Location};
use crate::source::{FileIndex, SourceFiles};
use scoregrid_shard::{CategoryId, ModelSink};
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};

/// Longest line read, in bytes without its newline. A customer row at dim 1024 with a dozen
/// categories takes about 20 KiB; a longer line is refused as soon as this many bytes are read,
/// so a file without newlines cannot make the loader buffer it whole.
pub const LINE_BYTES_MAX: usize = 4 << 20;

/// Read buffer of each JSONL file.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// One line of a JSONL file, without its newline.
pub(crate) struct Line<'a> {
    pub number: u64,
    pub bytes: &'a [u8],
    /// False for a last line without a newline: a truncated file looks like that.
    pub terminated: bool,
}

/// Streams the lines of a JSONL file through one buffer.
pub(crate) struct Lines<R> {
    reader: R,
    buffer: Vec<u8>,
    number: u64,
    bytes_max: usize,
}

pub(crate) enum LineError {
    Io(std::io::Error),
    /// The line at this number is longer than the bound; it has not been read whole.
    TooLong(u64),
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, bytes_max: usize) -> Self {
        Self {
            reader,
            buffer: Vec::new(),
            number: 0,
            bytes_max,
        }
    }

    /// The next line, or `None` at the end of the file (nothing after the final newline).
    pub fn next_line(&mut self) -> Result<Option<Line<'_>>, LineError> {
        self.buffer.clear();
        // One byte more than the bound, for the newline.
        let limit = self.bytes_max as u64 + 1;
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)
            .map_err(LineError::Io)?;
        if read == 0 {
            return Ok(None);
        }
        self.number += 1;
        let terminated = self.buffer.last() == Some(&b'\n');
        if terminated {
            self.buffer.pop();
        } else if read as u64 == limit {
            return Err(LineError::TooLong(self.number));
        }
        Ok(Some(Line {
            number: self.number,
            bytes: &self.buffer,
            terminated,
        }))
    }
}

/// A line's place, for messages.
#[derive(Clone, Copy)]
pub(crate) struct At<'f> {
    pub files: &'f SourceFiles,
    pub file: FileIndex,
    pub number: u64,
}

impl At<'_> {
    pub fn location(self) -> Location {
        self.files.location(self.file, self.number)
    }

    pub fn row(self, message: impl Into<String>) -> LoadError {
        LoadError::Row {
            location: self.location(),
            message: message.into(),
        }
    }

    pub fn field(self, field: impl Into<String>, message: impl Into<String>) -> LoadError {
        LoadError::field(self.location(), field, message)
    }
}

/// Calls `on_line` with every non-blank line of `file`, returning the number of lines.
///
/// # Errors
/// I/O errors, an overlong or blank line, and whatever `on_line` returns.
pub(crate) fn read_lines(
    files: &SourceFiles,
    file: FileIndex,
    mut on_line: impl FnMut(At<'_>, &Line<'_>) -> Result<(), LoadError>,
) -> Result<u64, LoadError> {
    let name = files.name(file);
    let handle = File::open(files.path(file)).map_err(|e| LoadError::io(name, e))?;
    let mut lines = Lines::new(
        BufReader::with_capacity(READ_BUFFER_BYTES, handle),
        LINE_BYTES_MAX,
    );
    let mut count = 0;
    loop {
        let line = match lines.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => return Ok(count),
            Err(LineError::Io(e)) => return Err(LoadError::io(name, e)),
            Err(LineError::TooLong(number)) => {
                return Err(At { files, file, number }.row(format!(
                    "line longer than {LINE_BYTES_MAX} bytes (missing newlines, or not a JSONL file?)"
                )));
            }
        };
        let at = At {
            files,
            file,
            number: line.number,
        };
        // Checked here so that the row number fits a RowRef before any row is handed on.
        files.row_ref(file, line.number)?;
        if line.bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(at.row("blank line (expected one JSON object per line)"));
        }
        on_line(at, &line)?;
        count = line.number;
    }
}

/// Parses a whole line into `T` (a struct of borrowed raw fields).
fn parse_line<'a, T: Deserialize<'a>>(at: At<'_>, line: &Line<'a>) -> Result<T, LoadError> {
    if let Some(found) = not_an_object(line.bytes) {
        return Err(at.row(format!("expected a JSON object, found {found}")));
    }
    serde_json::from_slice(line.bytes).map_err(|e| {
        let message = json_message(&e);
        let truncated = if line.terminated {
            ""
        } else {
            "; the last line has no newline: the file looks truncated"
        };
        if e.is_data() {
            at.row(format!("{message}{truncated}"))
        } else {
            at.row(format!("malformed JSON: {message}{truncated}"))
        }
    })
}

/// serde_json's message without its " at line L column C" (a JSONL line is always line 1 to
/// serde_json), with the column kept when it helps.
pub(crate) fn json_message(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) if error.is_syntax() || error.is_eof() => {
            format!("{message} (column {})", error.column())
        }
        Some(message) => message.to_string(),
        None => text,
    }
}

/// The kind of value `text` holds when it is not a JSON object. Serde's derived structs also
/// accept a list of the fields in order; the contract wants field names, so lists are refused
/// before parsing.
pub(crate) fn not_an_object(text: &[u8]) -> Option<&'static str> {
    let start = text.iter().position(|b| !b.is_ascii_whitespace())?;
    match text[start] {
        b'{' => None,
        b'[' => Some("a list"),
        b'"' => Some("a string"),
        b't' | b'f' => Some("a boolean"),
        b'n' => Some("null"),
        b'-' | b'0'..=b'9' => Some("a number"),
        _ => None, // malformed: let the parser say where
    }
}

/// Describes the JSON value starting `text` by its type, for "expected X, found Y".
fn kind(text: &str) -> &'static str {
    match text.as_bytes().first() {
        Some(b'"') => "a string",
        Some(b'[') => "a list",
        Some(b'{') => "an object",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// An unsigned integer type that ids are read as.
pub(crate) trait Unsigned: Copy {
    const MAX: u64;
    const NAME: &'static str;
    fn from_u64(value: u64) -> Self;
}

impl Unsigned for u64 {
    const MAX: u64 = u64::MAX;
    const NAME: &'static str = "u64";
    fn from_u64(value: u64) -> Self {
        value
    }
}

impl Unsigned for u32 {
    const MAX: u64 = u32::MAX as u64;
    const NAME: &'static str = "u32";
    fn from_u64(value: u64) -> Self {
        value as u32
    }
}

/// Reads the raw JSON value `text` as an unsigned integer of type `T`, exactly.
///
/// # Errors
/// A message (without the field) for a negative, fractional, out-of-range or non-numeric value.
pub(crate) fn parse_unsigned<T: Unsigned>(text: &str) -> Result<T, String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if digits(text) {
        return match text.parse::<u64>() {
            Ok(value) if value <= T::MAX => Ok(T::from_u64(value)),
            _ => Err(format!(
                "value {text} is above {}::MAX ({})",
                T::NAME,
                T::MAX
            )),
        };
    }
    if text.strip_prefix('-').is_some_and(digits) {
        return Err(format!(
            "negative value {text} (expected an unsigned integer)"
        ));
    }
    match kind(text) {
        "a number" => Err(format!("expected an unsigned integer, found {text}")),
        other => Err(format!("expected an unsigned integer, found {other}")),
    }
}

/// Reads the raw JSON value `text` as an `f32`, correctly rounded from its decimal text. A value
/// beyond the f32 range becomes infinite, which the model refuses as not finite.
pub(crate) fn parse_f32(text: &str) -> Result<f32, String> {
    match kind(text) {
        // A JSON number is also a Rust float literal.
        "a number" => text
            .parse::<f32>()
            .map_err(|_| format!("expected a number, found {text}")),
        other => Err(format!("expected a number, found {other}")),
    }
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("expected true or false, found {}", kind(other))),
    }
}

fn is_json_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Reads the raw JSON list `text` of numbers into `out` (cleared first).
///
/// The text is already valid JSON, so splitting at commas is safe up to the first element that
/// is not a number, and that element is refused.
fn parse_f32_list(text: &str, out: &mut Vec<f32>) -> Result<(), String> {
    out.clear();
    let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) else {
        return Err(format!("expected a list of numbers, found {}", kind(text)));
    };
    let inner = inner.trim_matches(is_json_whitespace);
    if inner.is_empty() {
        return Ok(());
    }
    for (index, element) in inner.split(',').enumerate() {
        let value = parse_f32(element.trim_matches(is_json_whitespace))
            .map_err(|message| format!("element {index}: {message}"))?;
        out.push(value);
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a {category_id, weight} object")]
struct CategoryJson<'a> {
    #[serde(borrow)]
    category_id: &'a RawValue,
    #[serde(borrow)]
    weight: &'a RawValue,
}

/// Appends the entries of a `categories` list to `out`, recording which field failed.
struct CategoriesSeed<'o> {
    out: &'o mut Vec<(CategoryId, f32)>,
    failure: &'o mut Option<(String, String)>,
}

impl<'de> DeserializeSeed<'de> for CategoriesSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CategoriesSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of {category_id, weight} objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            let index = self.out.len();
            let mut fail = |field: &str, message: String| {
                let field = if field.is_empty() {
                    format!("categories[{index}]")
                } else {
                    format!("categories[{index}].{field}")
                };
                *self.failure = Some((field, message));
                de::Error::custom("")
            };
            if let Some(found) = not_an_object(raw.get().as_bytes()) {
                return Err(fail(
                    "",
                    format!("expected a {{category_id, weight}} object, found {found}"),
                ));
            }
            let entry: CategoryJson<'de> =
                serde_json::from_str(raw.get()).map_err(|e| fail("", json_message(&e)))?;
            let id = parse_unsigned::<u32>(entry.category_id.get())
                .map_err(|m| fail("category_id", m))?;
            let weight = parse_f32(entry.weight.get()).map_err(|m| fail("weight", m))?;
            self.out.push((id, weight));
        }
        Ok(())
    }
}

/// Reads a raw `categories` value into `out` (cleared first).
///
/// # Errors
/// `(field, message)`, the field naming the entry (`categories[2].weight`).
fn parse_categories(
    raw: &RawValue,
    out: &mut Vec<(CategoryId, f32)>,
) -> Result<(), (String, String)> {
    out.clear();
    let mut failure = None;
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let result = CategoriesSeed {
        out: &mut *out,
        failure: &mut failure,
    }
    .deserialize(&mut deserializer);
    match (result, failure) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(failure)) => Err(failure),
        (Err(e), None) if raw.get().starts_with('[') => {
            Err((format!("categories[{}]", out.len()), json_message(&e)))
        }
        (Err(_), None) => Err((
            "categories".to_string(),
            format!(
                "expected a list of {{category_id, weight}} objects, found {}",
                kind(raw.get())
            ),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a customers row object")]
struct CustomerJson<'a> {
    #[serde(borrow)]
    customer_id: &'a RawValue,
    #[serde(borrow)]
    vector: &'a RawValue,
    #[serde(borrow)]
    categories: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a products row object")]
struct ProductJson<'a> {
    #[serde(borrow)]
    product_id: &'a RawValue,
    #[serde(borrow)]
    category_id: &'a RawValue,
    #[serde(borrow)]
    vector: &'a RawValue,
    #[serde(borrow)]
    in_stock: &'a RawValue,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a pools row object")]
struct PoolJson<'a> {
    #[serde(borrow)]
    container_id: &'a RawValue,
    #[serde(borrow)]
    product_id: &'a RawValue,
    #[serde(borrow)]
    pool_score: &'a RawValue,
}

/// Streams a `customers` JSONL file into `sink`, returning its row count.
///
/// # Errors
/// The first unreadable or refused row, located.
pub(crate) fn read_customers(
    files: &SourceFiles,
    file: FileIndex,
    sink: &mut impl ModelSink,
) -> Result<u64, LoadError> {
    let mut vector = Vec::new();
    let mut categories = Vec::new();
    read_lines(files, file, |at, line| {
        let row: CustomerJson<'_> = parse_line(at, line)?;
        let id =
            parse_unsigned::<u64>(row.customer_id.get()).map_err(|m| at.field("customer_id", m))?;
        parse_f32_list(row.vector.get(), &mut vector).map_err(|m| at.field("vector", m))?;
        parse_categories(row.categories, &mut categories)
            .map_err(|(field, m)| at.field(field, m))?;
        let origin = files.row_ref(file, at.number)?;
        sink.add_customer(id, &vector, &categories, origin)
            .map_err(|e| files.rejected(origin, e))
    })
}

/// Streams a `products` JSONL file into `sink`, returning its row count.
///
/// # Errors
/// The first unreadable or refused row, located.
pub(crate) fn read_products(
    files: &SourceFiles,
    file: FileIndex,
    sink: &mut impl ModelSink,
) -> Result<u64, LoadError> {
    let mut vector = Vec::new();
    read_lines(files, file, |at, line| {
        let row: ProductJson<'_> = parse_line(at, line)?;
        let id =
            parse_unsigned::<u64>(row.product_id.get()).map_err(|m| at.field("product_id", m))?;
        let category =
            parse_unsigned::<u32>(row.category_id.get()).map_err(|m| at.field("category_id", m))?;
        parse_f32_list(row.vector.get(), &mut vector).map_err(|m| at.field("vector", m))?;
        let in_stock = parse_bool(row.in_stock.get()).map_err(|m| at.field("in_stock", m))?;
        let origin = files.row_ref(file, at.number)?;
        sink.add_product(id, category, &vector, in_stock, origin)
            .map_err(|e| files.rejected(origin, e))
    })
}

/// Streams a `pools` JSONL file into `sink`, returning its row count.
///
/// # Errors
/// The first unreadable or refused row, located.
pub(crate) fn read_pools(
    files: &SourceFiles,
    file: FileIndex,
    sink: &mut impl ModelSink,
) -> Result<u64, LoadError> {
    read_lines(files, file, |at, line| {
        let row: PoolJson<'_> = parse_line(at, line)?;
        let container = parse_unsigned::<u64>(row.container_id.get())
            .map_err(|m| at.field("container_id", m))?;
        let product =
            parse_unsigned::<u64>(row.product_id.get()).map_err(|m| at.field("product_id", m))?;
        let pool_score = parse_f32(row.pool_score.get()).map_err(|m| at.field("pool_score", m))?;
        let origin = files.row_ref(file, at.number)?;
        sink.add_pool_entry(container, product, pool_score, origin)
            .map_err(|e| files.rejected(origin, e))
    })
}

#[derive(Deserialize)]
struct CustomerKeyJson<'a> {
    #[serde(borrow)]
    customer_id: &'a RawValue,
}

#[derive(Deserialize)]
struct ContainerKeyJson<'a> {
    #[serde(borrow)]
    container_id: &'a RawValue,
}

/// Calls `on_id` with the `customer_id` of every line; other fields are skipped unread.
///
/// # Errors
/// An unreadable line or id, located.
pub(crate) fn read_customer_ids(
    files: &SourceFiles,
    file: FileIndex,
    mut on_id: impl FnMut(u64),
) -> Result<u64, LoadError> {
    read_lines(files, file, |at, line| {
        let row: CustomerKeyJson<'_> = parse_line(at, line)?;
        on_id(
            parse_unsigned::<u64>(row.customer_id.get()).map_err(|m| at.field("customer_id", m))?,
        );
        Ok(())
    })
}

/// Calls `on_id` with the `container_id` of every line; other fields are skipped unread.
///
/// # Errors
/// An unreadable line or id, located.
pub(crate) fn read_container_ids(
    files: &SourceFiles,
    file: FileIndex,
    mut on_id: impl FnMut(u64),
) -> Result<u64, LoadError> {
    read_lines(files, file, |at, line| {
        let row: ContainerKeyJson<'_> = parse_line(at, line)?;
        on_id(
            parse_unsigned::<u64>(row.container_id.get())
                .map_err(|m| at.field("container_id", m))?,
        );
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn lines(text: &str, bytes_max: usize) -> Vec<Result<(u64, String, bool), String>> {
        let mut lines = Lines::new(Cursor::new(text.as_bytes().to_vec()), bytes_max);
        let mut out = Vec::new();
        loop {
            match lines.next_line() {
                Ok(Some(line)) => out.push(Ok((
                    line.number,
                    String::from_utf8(line.bytes.to_vec()).unwrap(),
                    line.terminated,
                ))),
                Ok(None) => return out,
                Err(LineError::TooLong(number)) => {
                    out.push(Err(format!("too long at {number}")));
                    return out;
                }
                Err(LineError::Io(e)) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn lines_are_bounded_and_the_last_newline_is_optional() {
        // Proves the line reader's framing: numbering, unterminated last line, the bound
        // (a line of exactly the bound passes, one byte more is refused without reading on).
        assert_eq!(
            lines("ab\ncd", 8),
            vec![Ok((1, "ab".into(), true)), Ok((2, "cd".into(), false))]
        );
        assert_eq!(lines("ab\n", 8), vec![Ok((1, "ab".into(), true))]);
        assert_eq!(
            lines("12345678\n", 8),
            vec![Ok((1, "12345678".into(), true))]
        );
        assert_eq!(
            lines("x\n123456789\nz\n", 8),
            vec![Ok((1, "x".into(), true)), Err("too long at 2".into())]
        );
        assert_eq!(lines("123456789", 8), vec![Err("too long at 1".into())]);
        assert_eq!(lines("", 8), vec![]);
    }

    #[test]
    fn unsigned_ids_are_exact_and_refusals_say_why() {
        assert_eq!(parse_unsigned::<u64>("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_unsigned::<u64>("0"), Ok(0));
        assert_eq!(
            parse_unsigned::<u64>("18446744073709551616"),
            Err("value 18446744073709551616 is above u64::MAX (18446744073709551615)".into())
        );
        assert_eq!(parse_unsigned::<u32>("4294967295"), Ok(u32::MAX));
        assert_eq!(
            parse_unsigned::<u32>("4294967296"),
            Err("value 4294967296 is above u32::MAX (4294967295)".into())
        );
        assert_eq!(
            parse_unsigned::<u64>("-1"),
            Err("negative value -1 (expected an unsigned integer)".into())
        );
        assert_eq!(
            parse_unsigned::<u64>("1.5"),
            Err("expected an unsigned integer, found 1.5".into())
        );
        assert_eq!(
            parse_unsigned::<u64>("1e3"),
            Err("expected an unsigned integer, found 1e3".into())
        );
        assert_eq!(
            parse_unsigned::<u64>("\"7\""),
            Err("expected an unsigned integer, found a string".into())
        );
        assert_eq!(
            parse_unsigned::<u64>("null"),
            Err("expected an unsigned integer, found null".into())
        );
    }

    #[test]
    fn floats_are_read_straight_to_f32() {
        // Proves decimal -> f32 without a detour through f64. The text lies just below the
        // midpoint 1 + 1.5 * 2^-23 between two f32 neighbours, so close that rounding to f64 lands
        // exactly on the midpoint, after which ties-to-even picks the upper (wrong) neighbour.
        let text = "1.0000001788139343261718749999";
        let lower = 1.0f32 + f32::EPSILON;
        assert_eq!(parse_f32(text), Ok(lower));
        assert_eq!(
            text.parse::<f64>().unwrap() as f32,
            lower + f32::EPSILON,
            "the f64 detour rounds twice"
        );
        assert_eq!(parse_f32("1e39"), Ok(f32::INFINITY));
        assert_eq!(parse_f32("-0.0").map(f32::to_bits), Ok((-0.0f32).to_bits()));
        assert_eq!(
            parse_f32("true"),
            Err("expected a number, found a boolean".into())
        );
    }

    #[test]
    fn lists_of_floats_refuse_non_numbers_by_element() {
        let mut out = Vec::new();
        parse_f32_list("[ 1, -2.5e-3 ,3 ]", &mut out).unwrap();
        assert_eq!(out, vec![1.0, -0.0025, 3.0]);
        parse_f32_list("[]", &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(
            parse_f32_list("[1,\"a,b\",3]", &mut out),
            Err("element 1: expected a number, found a string".into())
        );
        assert_eq!(
            parse_f32_list("[1,[2,3]]", &mut out),
            Err("element 1: expected a number, found a list".into())
        );
        assert_eq!(
            parse_f32_list("{}", &mut out),
            Err("expected a list of numbers, found an object".into())
        );
    }

    #[test]
    fn categories_errors_name_the_entry_and_sub_field() {
        let parse = |text: &str| {
            let raw: &RawValue = serde_json::from_str(text).unwrap();
            let mut out = Vec::new();
            parse_categories(raw, &mut out).map(|()| out)
        };
        assert_eq!(
            parse(r#"[{"category_id": 4294967295, "weight": 0.5}]"#),
            Ok(vec![(u32::MAX, 0.5)])
        );
        assert_eq!(parse("[]"), Ok(vec![]));
        let (field, message) =
            parse(r#"[{"category_id": 1, "weight": 1}, {"category_id": 4294967296, "weight": 1}]"#)
                .unwrap_err();
        assert_eq!(field, "categories[1].category_id");
        assert_eq!(message, "value 4294967296 is above u32::MAX (4294967295)");
        let (field, message) = parse(r#"[{"category_id": 1, "weight": "x"}]"#).unwrap_err();
        assert_eq!(
            (field.as_str(), message.as_str()),
            ("categories[0].weight", "expected a number, found a string")
        );
        let (field, message) = parse(r#"[{"category_id": 1}]"#).unwrap_err();
        assert_eq!(field, "categories[0]");
        assert!(message.contains("missing field `weight`"), "{message}");
        let (field, message) = parse(r#"[{"category_id": 1, "weight": 1, "w": 2}]"#).unwrap_err();
        assert_eq!(field, "categories[0]");
        assert!(message.contains("unknown field `w`"), "{message}");
        let (field, message) = parse(r#"{"a": 1}"#).unwrap_err();
        assert_eq!(field, "categories");
        assert_eq!(
            message,
            "expected a list of {category_id, weight} objects, found an object"
        );
        let (field, message) = parse(r#"[{"category_id": 1, "weight": 1}, [3, 0.5]]"#).unwrap_err();
        assert_eq!(field, "categories[1]");
        assert_eq!(
            message,
            "expected a {category_id, weight} object, found a list"
        );
    }
}
