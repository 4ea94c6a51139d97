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

/// Whether a refusal means the token is no longer good and a new login is the cure: unknown
/// or expired (a simple token after its TTL or a member restart, a JWT token after its expiry),
/// or issued before an auth change (a JWT token carries the AuthRevision it was issued at).
pub fn needs_new_token(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unauthenticated
        || status.message().contains("revision of auth store is old")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_unknown_and_outdated_tokens_call_for_a_new_login_and_nothing_else_does() {
        let expired = tonic::Status::unauthenticated("etcdserver: invalid auth token");
        let outdated = tonic::Status::invalid_argument("etcdserver: revision of auth store is old");
        let denied = tonic::Status::permission_denied("etcdserver: permission denied");
        let other = tonic::Status::invalid_argument("etcdserver: key is not provided");
        assert!(needs_new_token(&expired) && needs_new_token(&outdated));
        assert!(!needs_new_token(&denied) && !needs_new_token(&other));
    }
}
