//! Query-string parsing. Every parameter is checked by hand rather than by a generic extractor,
//! so that each refusal names the parameter, the value and the rule (`limit` must be in
//! 1..=1000, got 0), and unknown or repeated parameters are refused rather than ignored: a
//! misspelt `catgory=5` must not silently return unfiltered results.

use crate::error::ApiError;
use scoregrid_config::ApiConfig;
use scoregrid_shard::{CategoryId, ContainerId, CustomerId};

/// Longest cursor token accepted; real ones are under 100 characters.
pub const CURSOR_CHARS_MAX: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecommendParams {
    pub customer: CustomerId,
    pub container: ContainerId,
    pub category: Option<CategoryId>,
    pub limit: u32,
    pub candidates: Option<u64>,
    pub cursor: Option<String>,
}

/// The pairs of a query string, refusing repeats and names outside `allowed`.
fn pairs(query: &str, allowed: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            return Err(ApiError::bad_parameter(format!(
                "unknown parameter `{name}` (expected one of: {})",
                allowed.join(", ")
            )));
        }
        if out.iter().any(|(n, _)| *n == name) {
            return Err(ApiError::bad_parameter(format!(
                "parameter `{name}` given more than once"
            )));
        }
        out.push((name.into_owned(), value.into_owned()));
    }
    Ok(out)
}

fn get<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// An unsigned decimal integer of at most `max`: digits only (no sign, no spaces, no `+`).
pub fn parse_unsigned(name: &str, value: &str, max: u64, kind: &str) -> Result<u64, ApiError> {
    let digits =
        !value.is_empty() && value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit());
    let parsed = if digits {
        value.parse::<u64>().ok()
    } else {
        None
    };
    match parsed {
        Some(v) if v <= max => Ok(v),
        _ => Err(ApiError::bad_parameter(format!(
            "parameter `{name}` must be {kind}, got {value:?}"
        ))),
    }
}

fn required<'a>(pairs: &'a [(String, String)], name: &str) -> Result<&'a str, ApiError> {
    get(pairs, name)
        .ok_or_else(|| ApiError::bad_parameter(format!("parameter `{name}` is required")))
}

fn in_range(name: &str, value: &str, lo: u64, hi: u64) -> Result<u64, ApiError> {
    let v = parse_unsigned(name, value, u64::MAX, &format!("an integer in {lo}..={hi}"))?;
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(ApiError::bad_parameter(format!(
            "parameter `{name}` must be in {lo}..={hi}, got {v}"
        )))
    }
}

impl RecommendParams {
    /// # Errors
    /// A 400 naming the first bad parameter.
    pub fn parse(query: Option<&str>, api: &ApiConfig) -> Result<Self, ApiError> {
        let pairs = pairs(
            query.unwrap_or(""),
            &[
                "customer",
                "container",
                "category",
                "limit",
                "candidates",
                "cursor",
            ],
        )?;
        let u64_kind = "an unsigned 64-bit integer";
        let customer = parse_unsigned(
            "customer",
            required(&pairs, "customer")?,
            u64::MAX,
            u64_kind,
        )?;
        let container = parse_unsigned(
            "container",
            required(&pairs, "container")?,
            u64::MAX,
            u64_kind,
        )?;
        let category = get(&pairs, "category")
            .map(|v| {
                parse_unsigned(
                    "category",
                    v,
                    u64::from(u32::MAX),
                    "an unsigned 32-bit integer",
                )
            })
            .transpose()?
            .map(|v| v as CategoryId);
        let limit = match get(&pairs, "limit") {
            Some(v) => in_range("limit", v, 1, u64::from(api.limit_max))? as u32,
            None => api.limit_default,
        };
        let candidates = get(&pairs, "candidates")
            .map(|v| in_range("candidates", v, 1, api.candidates_max))
            .transpose()?;
        let cursor = match get(&pairs, "cursor") {
            Some(c) if c.is_empty() || c.len() > CURSOR_CHARS_MAX => {
                return Err(ApiError::bad_cursor(format!(
                    "parameter `cursor` must be 1..={CURSOR_CHARS_MAX} characters"
                )));
            }
            other => other.map(str::to_string),
        };
        Ok(Self {
            customer,
            container,
            category,
            limit,
            candidates,
            cursor,
        })
    }
}

/// `k` of `/v1/customers/{id}/categories`.
///
/// # Errors
/// A 400 for an unknown parameter or a `k` out of range.
pub fn parse_categories_k(query: Option<&str>, api: &ApiConfig) -> Result<usize, ApiError> {
    let pairs = pairs(query.unwrap_or(""), &["k"])?;
    Ok(match get(&pairs, "k") {
        Some(v) => in_range("k", v, 1, u64::from(api.categories_k_max))? as usize,
        None => api.categories_k_default as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<RecommendParams, String> {
        RecommendParams::parse(Some(q), &ApiConfig::default()).map_err(|e| e.message)
    }

    #[test]
    fn accepts_the_full_range_of_ids() {
        let p = parse(
            "customer=18446744073709551615&container=0&category=4294967295&limit=1000&candidates=5",
        )
        .unwrap();
        assert_eq!(p.customer, u64::MAX);
        assert_eq!(p.category, Some(u32::MAX));
        assert_eq!(p.limit, 1000);
        assert_eq!(p.candidates, Some(5));
        assert_eq!(parse("customer=1&container=2").unwrap().limit, 20);
    }

    #[test]
    fn refusals_name_the_parameter_and_value() {
        let cases = [
            ("container=2", "parameter `customer` is required"),
            ("customer=1", "parameter `container` is required"),
            (
                "customer=-1&container=2",
                "`customer` must be an unsigned 64-bit integer, got \"-1\"",
            ),
            ("customer=abc&container=2", "got \"abc\""),
            ("customer=%2B1&container=2", "got \"+1\""),
            ("customer=+1&container=2", "got \" 1\""),
            (
                "customer=18446744073709551616&container=2",
                "unsigned 64-bit",
            ),
            (
                "customer=1&container=2&category=4294967296",
                "`category` must be an unsigned 32-bit integer",
            ),
            (
                "customer=1&container=2&limit=0",
                "`limit` must be in 1..=1000, got 0",
            ),
            (
                "customer=1&container=2&limit=100000",
                "`limit` must be in 1..=1000, got 100000",
            ),
            (
                "customer=1&container=2&candidates=0",
                "`candidates` must be in 1..=",
            ),
            (
                "customer=1&container=2&catgory=5",
                "unknown parameter `catgory`",
            ),
            (
                "customer=1&customer=2&container=2",
                "`customer` given more than once",
            ),
            ("customer=1&container=2&cursor=", "`cursor` must be"),
        ];
        for (query, expect) in cases {
            let message = parse(query).unwrap_err();
            assert!(message.contains(expect), "{query}: {message}");
        }
    }

    #[test]
    fn categories_k_is_bounded() {
        let api = ApiConfig::default();
        assert_eq!(parse_categories_k(None, &api).unwrap(), 10);
        assert_eq!(parse_categories_k(Some("k=3"), &api).unwrap(), 3);
        assert!(parse_categories_k(Some("k=0"), &api).is_err());
        assert!(parse_categories_k(Some("k=1001"), &api).is_err());
        assert!(parse_categories_k(Some("j=1"), &api).is_err());
    }
}
