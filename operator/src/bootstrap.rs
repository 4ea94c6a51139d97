//! Turning authentication on in a new cluster, as `etcdctl user add root`, `user grant-role
//! root root` and `auth enable` would: the root user with the operator's password, then auth.
//! Idempotent: a cluster with auth on is left alone, and a user or grant that exists already
//! (an earlier attempt stopped half-way) is not an error.

use std::time::Duration;

use storage_node::pb::etcdserverpb::{
    AuthEnableRequest, AuthStatusRequest, AuthUserAddRequest, AuthUserGrantRoleRequest,
    AuthUserListRequest, auth_client::AuthClient,
};

/// Why auth could not be turned on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The member could not be reached.
    #[error("connect to {endpoint}: {message}")]
    Connect {
        /// Where.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// A call was refused.
    #[error("{call} on {endpoint}: {message}")]
    Call {
        /// The call.
        call: &'static str,
        /// Where.
        endpoint: String,
        /// What the member answered.
        message: String,
    },
}

/// Makes sure auth is on in the cluster `endpoint` belongs to, with `user` (the root user)
/// holding `password`. Returns whether it had to turn auth on.
pub async fn enable_auth(
    endpoint: &str,
    user: &str,
    password: &str,
    timeout: Duration,
) -> Result<bool, Error> {
    let channel = crate::client::connect(endpoint, timeout)
        .await
        .map_err(|message| Error::Connect {
            endpoint: endpoint.to_string(),
            message,
        })?;
    let call = |call: &'static str, status: tonic::Status| Error::Call {
        call,
        endpoint: endpoint.to_string(),
        message: status.message().to_string(),
    };
    let mut auth = AuthClient::new(channel);
    let enabled = match auth.auth_status(AuthStatusRequest {}).await {
        Ok(status) => status.into_inner().enabled,
        // etcd 3.4 has no AuthStatus: a user list without credentials is refused only when
        // auth is on.
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            auth.user_list(AuthUserListRequest {}).await.is_err()
        }
        Err(s) => return Err(call("AuthStatus", s)),
    };
    if enabled {
        return Ok(false);
    }
    let added = auth
        .user_add(AuthUserAddRequest {
            name: user.to_string(),
            password: password.to_string(),
            ..AuthUserAddRequest::default()
        })
        .await;
    match added {
        Ok(_) => {}
        Err(s) if s.message().contains("already exists") => {}
        Err(s) => return Err(call("UserAdd", s)),
    }
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: user.to_string(),
        role: "root".to_string(),
    })
    .await
    .map_err(|s| call("UserGrantRole", s))?;
    auth.auth_enable(AuthEnableRequest {})
        .await
        .map_err(|s| call("AuthEnable", s))?;
    Ok(true)
}

/// Length of a generated root password (alphanumeric: about 190 bits).
const PASSWORD_LEN: usize = 32;

/// A random alphanumeric root password, the same on Kubernetes (the generated Secret) and
/// locally (`root-credentials`).
pub fn generate_password() -> Result<String, getrandom::Error> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; PASSWORD_LEN];
    getrandom::fill(&mut bytes)?;
    // 256 is not a multiple of 62: the first 8 letters come slightly more often, which costs
    // well under a bit of the password's ~190.
    Ok(bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect())
}
