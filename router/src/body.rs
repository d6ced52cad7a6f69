//! A request's body is read whole, against a size bound and a deadline, before the request
//! may ask for a slot (`admission.rs`): a client that declares a large body and sends it a byte
//! at a time is answered 408 and its connection closed, and it never holds a slot while it
//! stalls.

use crate::error::ApiError;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use scoregrid_config::HttpConfig;
use std::time::Duration;

/// How long the body of a request declaring `declared` bytes may take to arrive: the base time,
/// plus one second per `body_min_bytes_per_second` of it.
pub fn body_deadline(http: &HttpConfig, declared: u64) -> Duration {
    let rate = http.body_min_bytes_per_second.max(1);
    Duration::from_millis(http.body_read_timeout_ms)
        + Duration::from_millis(declared.saturating_mul(1000) / rate)
}

/// `request` with its body read into memory; or the error to answer with. 413 when the declared
/// or the received length exceeds `http.request_body_bytes_max`, 408 when the body does not
/// arrive in time, 400 when the connection fails mid-body.
pub async fn read_whole(http: &HttpConfig, request: Request) -> Result<Request, ApiError> {
    let max = http.request_body_bytes_max;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|d| d > max as u64) {
        return Err(too_large(max));
    }
    let (parts, body) = request.into_parts();
    let deadline = body_deadline(http, declared.unwrap_or(max as u64));
    let collected = tokio::time::timeout(deadline, Limited::new(body, max).collect()).await;
    let bytes = match collected {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.downcast_ref::<LengthLimitError>().is_some() => {
            return Err(too_large(max));
        }
        Ok(Err(error)) => return Err(ApiError::bad_body(format!("reading the body: {error}"))),
        Err(_) => {
            metrics::counter!(crate::telemetry::BODY_TIMEOUTS).increment(1);
            return Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    deadline.as_millis()
                ),
            ));
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn too_large(max: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("request body larger than {max} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_grows_with_the_declared_length() {
        let http = HttpConfig {
            body_read_timeout_ms: 2_000,
            body_min_bytes_per_second: 1_000,
            ..HttpConfig::default()
        };
        assert_eq!(body_deadline(&http, 0), Duration::from_secs(2));
        assert_eq!(body_deadline(&http, 3_000), Duration::from_secs(5));
        assert_eq!(
            body_deadline(&http, u64::MAX),
            Duration::from_secs(2) + Duration::from_millis(u64::MAX / 1000)
        );
    }
}
