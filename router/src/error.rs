//! The contract's error shape: `{"error":{"code":STR,"message":STR}}` with 400 for a bad
//! parameter, 404 for an unknown container or customer, 503 when no model is active or nothing
//! can be reached. Codes are stable strings that scripts may match on.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn bad_parameter(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
    }

    pub fn bad_cursor(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_cursor", message)
    }

    pub fn bad_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_body", message)
    }

    pub fn unknown_container(container: u64) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_container",
            format!("container {container} is not in the active model"),
        )
    }

    pub fn unknown_customer(customer: u64) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_customer",
            format!("customer {customer} is not in the active model"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn no_model() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_model",
            "no model version is active",
        )
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// A request shed at the door; `reason` names the bound (`queue_full`, `queue_wait`).
    pub fn overloaded(reason: &str) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            format!("too many requests in flight ({reason}); retry shortly"),
        )
    }

    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = crate::http::json(self.status, &body);
        response.extensions_mut().insert(self);
        response
    }
}
