//! Parsing what a request carries — JSON bodies, query strings, ids,
//! addresses, page sizes — into typed values, or a `400` that names the
//! offending part. Bounds are checked here, before any work is done.

use axum::Json;
use axum::extract::Query;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use switchboard_proto::ids::{Address, ConvId};

use super::problem::ApiError;

/// Default and largest page of a list or history request.
pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 200;

/// Largest JSON body of a REST request: a group of 1,000 members' addresses
/// fits four times over. Larger bodies are refused with `413` before they
/// are read to the end (the router sets it as axum's body limit).
pub const MAX_BODY_BYTES: usize = 128 * 1024;

/// A JSON body, or a `400` with serde's reason (`413` past
/// [`MAX_BODY_BYTES`]).
pub fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(v)| v).map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(format!("the body is larger than {MAX_BODY_BYTES} bytes"))
        } else {
            ApiError::bad_request(format!("invalid JSON body: {}", e.body_text()))
        }
    })
}

/// A query string, or a `400` with serde's reason.
pub fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// A conversation id from a path.
pub fn conv(id: &str) -> Result<ConvId, ApiError> {
    id.parse()
        .map_err(|e| ApiError::bad_request(format!("conversation id: {e}")))
}

/// Addresses from a list field named `what`, at most `max` of them (checked
/// before any entry is parsed); an unparsable entry is named
/// (`members[2]: …`).
pub fn addresses<S: AsRef<str>>(
    what: &str,
    list: &[S],
    max: usize,
) -> Result<Vec<Address>, ApiError> {
    if list.len() > max {
        return Err(ApiError::bad_request(format!(
            "{what} lists at most {max} addresses (got {})",
            list.len()
        )));
    }
    list.iter()
        .enumerate()
        .map(|(i, a)| {
            a.as_ref()
                .trim()
                .parse()
                .map_err(|e| ApiError::bad_request(format!("{what}[{i}]: {e}")))
        })
        .collect()
}

/// A page size: [`DEFAULT_LIMIT`] when absent, 1 to [`MAX_LIMIT`].
pub fn limit(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > MAX_LIMIT => Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_LIMIT}"
        ))),
        Some(n) => Ok(n),
    }
}
