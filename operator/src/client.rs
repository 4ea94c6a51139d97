//! Reaching a member's etcd API: a channel whose connect and every call are bounded in time,
//! and requests carrying an auth token in the `token` metadata, as etcd clients send it.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// A channel to `endpoint` (a client URL), connected within `timeout`, whose calls each take
/// at most `timeout`. The error says why, without the endpoint (callers name it).
pub async fn connect(endpoint: &str, timeout: Duration) -> Result<Channel, String> {
    Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|e| e.to_string())
}

/// `message` as a request, with `token` (from Authenticate) when there is one.
pub fn request<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = token.and_then(|t| MetadataValue::try_from(t).ok()) {
        request.metadata_mut().insert("token", value);
    }
    request
}
