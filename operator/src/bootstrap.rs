//! Turning authentication on in a new cluster, as `etcdctl user add root`, `user grant-role
//! root root` and `auth enable` would: the root user with the operator's password, then auth.
//!
//! The operator never adopts what it did not create. Before auth is on anyone who reaches a
//! member may add users, so a root user found then may carry a password someone else knows:
//! it is deleted and created again with the operator's password (an earlier attempt that
//! stopped half-way leaves exactly such a root, so this is also how a retry goes). Any other
//! user means someone else has been configuring the cluster: auth is not turned on and the
//! cluster is reported untrusted. With auth already on, the operator proves it can log in with
//! its own credentials; if it cannot, the cluster is untrusted too.

use std::time::Duration;

use storage_node::pb::etcdserverpb::{
    AuthEnableRequest, AuthStatusRequest, AuthUserAddRequest, AuthUserDeleteRequest,
    AuthUserGrantRoleRequest, AuthUserListRequest, AuthenticateRequest, auth_client::AuthClient,
};
use tonic::transport::Channel;

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
    /// The cluster's auth is not the operator's: it must not act on it.
    #[error("auth on {endpoint} is not the operator's: {why}")]
    Untrusted {
        /// Where.
        endpoint: String,
        /// What was found.
        why: String,
    },
}

/// Makes sure auth is on in the cluster `endpoint` belongs to, with `user` (the root user)
/// holding `password`. Returns whether it had to turn auth on. With auth already on, the login
/// is proven only when `prove_login` (a login is a raft write: a caller that proved these
/// credentials already need not pay it every time).
pub async fn enable_auth(
    endpoint: &str,
    user: &str,
    password: &str,
    prove_login: bool,
    tls: Option<&crate::client::ClientCert>,
    timeout: Duration,
) -> Result<bool, Error> {
    let channel = crate::client::connect(endpoint, tls, timeout)
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
    let untrusted = |why: String| Error::Untrusted {
        endpoint: endpoint.to_string(),
        why,
    };
    let mut auth = AuthClient::new(channel.clone());
    let enabled = match auth.auth_status(AuthStatusRequest {}).await {
        Ok(status) => status.into_inner().enabled,
        // etcd 3.4 has no AuthStatus: a user list without credentials is refused only when
        // auth is on.
        Err(s) if s.code() == tonic::Code::Unimplemented => {
            auth.user_list(AuthUserListRequest {}).await.is_err()
        }
        Err(s) => return Err(call("AuthStatus", s)),
    };
    if enabled && !prove_login {
        return Ok(false);
    }
    if enabled {
        return match login(channel, user, password).await {
            Ok(_) => Ok(false),
            Err(s) if s.message().contains("authentication failed") => Err(untrusted(format!(
                "auth is on and {user:?} cannot log in with the operator's password"
            ))),
            Err(s) => Err(call("Authenticate", s)),
        };
    }
    let users = auth
        .user_list(AuthUserListRequest {})
        .await
        .map_err(|s| call("UserList", s))?
        .into_inner()
        .users;
    let strangers: Vec<&String> = users.iter().filter(|u| u.as_str() != user).collect();
    if !strangers.is_empty() {
        return Err(untrusted(format!(
            "users the operator did not create exist before auth is on: {strangers:?}"
        )));
    }
    if users.iter().any(|u| u == user) {
        tracing::warn!(
            user,
            endpoint,
            "a root user exists before auth is on; deleting it and creating it with the operator's password"
        );
        auth.user_delete(AuthUserDeleteRequest {
            name: user.to_string(),
        })
        .await
        .map_err(|s| call("UserDelete", s))?;
    }
    auth.user_add(AuthUserAddRequest {
        name: user.to_string(),
        password: password.to_string(),
        ..AuthUserAddRequest::default()
    })
    .await
    .map_err(|s| call("UserAdd", s))?;
    auth.user_grant_role(AuthUserGrantRoleRequest {
        user: user.to_string(),
        role: "root".to_string(),
    })
    .await
    .map_err(|s| call("UserGrantRole", s))?;
    auth.auth_enable(AuthEnableRequest {})
        .await
        .map_err(|s| call("AuthEnable", s))?;
    // A user added between the list above and the enable would now hold whatever role it was
    // granted: look again, as root.
    let token = login(channel.clone(), user, password)
        .await
        .map_err(|s| call("Authenticate", s))?;
    let users = auth
        .user_list(crate::client::request(AuthUserListRequest {}, Some(&token)))
        .await
        .map_err(|s| call("UserList", s))?
        .into_inner()
        .users;
    if users.iter().any(|u| u != user) {
        return Err(untrusted(format!(
            "users the operator did not create appeared while it turned auth on: {users:?}"
        )));
    }
    Ok(true)
}

/// Logs in as `user`: the token.
async fn login(channel: Channel, user: &str, password: &str) -> Result<String, tonic::Status> {
    let reply = AuthClient::new(channel)
        .authenticate(AuthenticateRequest {
            name: user.to_string(),
            password: password.to_string(),
        })
        .await?;
    Ok(reply.into_inner().token)
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
