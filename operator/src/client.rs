//! Reaching a member's etcd API: a channel whose connect and every call are bounded in time,
//! over TLS with the operator's client certificate for `https://` members, and requests
//! carrying an auth token in the `token` metadata, as etcd clients send it.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use storage_node::tls::ClientTls;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// The operator's client certificate for a cluster's members, with the CA their serving
/// certificates must chain to.
#[derive(Clone, Debug)]
pub struct ClientCert {
    tls: ClientTls,
    /// Tells a renewed certificate from the one before (not a security check).
    fingerprint: u64,
}

impl PartialEq for ClientCert {
    fn eq(&self, other: &ClientCert) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl ClientCert {
    /// From PEM; `source` (a file or Secret) names it in errors.
    pub fn from_pem(
        source: &str,
        ca: &[u8],
        cert: &[u8],
        key: &[u8],
    ) -> Result<ClientCert, String> {
        let tls = ClientTls::from_pem(source, ca, cert, key).map_err(|e| e.to_string())?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (ca, cert, key).hash(&mut hasher);
        Ok(ClientCert {
            tls,
            fingerprint: hasher.finish(),
        })
    }

    /// From the files a [`crate::pki::Issued`] names.
    pub fn from_issued(issued: &crate::pki::Issued) -> Result<ClientCert, String> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
        };
        ClientCert::from_pem(
            &issued.cert.display().to_string(),
            &read(&issued.ca)?,
            &read(&issued.cert)?,
            &read(&issued.key)?,
        )
    }
}

/// A channel to `endpoint` (a client URL), connected within `timeout`, whose calls each take
/// at most `timeout`; over TLS with `tls` for an `https://` endpoint (an error without it).
/// The error says why, without the endpoint (callers name it).
pub async fn connect(
    endpoint: &str,
    tls: Option<&ClientCert>,
    timeout: Duration,
) -> Result<Channel, String> {
    let settings = Endpoint::from_shared(endpoint.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .timeout(timeout);
    storage_node::tls::connect_channel(endpoint, settings, tls.map(|c| &c.tls), timeout).await
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
