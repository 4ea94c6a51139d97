//! The auth store: users, roles, key-range permissions, enable/disable, the AuthRevision, and
//! the permission checks made when an entry is applied.
//!
//! Rules follow etcd 3.4: the initial AuthRevision is 1 and every user or role mutation that
//! changes something increments it (enable and disable do not); auth can only be enabled once
//! user `root` exists with role `root`; a user with role `root` may do anything; while auth is
//! enabled `root` cannot be deleted nor lose its role. The apply-time check of a KV request
//! rejects a header AuthRevision lower than the store's as old: that comparison is what turns
//! members with drifted AuthRevisions into members that silently drop each other's writes.

pub mod jwt;
mod perm;
mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::{AuthRequest, KeyInterval, Permission, PermissionType};
use crate::backend::{self, decode, encode, get_u64, put_u64};
use crate::schema::{AUTH_ROLES, AUTH_USERS, META, meta};
use token::Tokens;
pub use token::generate_simple_token;

/// Name of the superuser.
pub const ROOT_USER: &str = "root";
/// Name of the role that grants everything.
pub const ROOT_ROLE: &str = "root";

/// An auth operation or check the store refuses (messages are etcd's).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum Error {
    /// No user name where one is needed (or an unauthenticated request with auth on).
    #[error("auth: user name is empty")]
    UserEmpty,
    /// The user exists already.
    #[error("auth: user already exists")]
    UserAlreadyExist,
    /// No such user.
    #[error("auth: user not found")]
    UserNotFound,
    /// No role name.
    #[error("auth: role name is empty")]
    RoleEmpty,
    /// The role exists already.
    #[error("auth: role already exists")]
    RoleAlreadyExist,
    /// No such role.
    #[error("auth: role not found")]
    RoleNotFound,
    /// Wrong user or password.
    #[error("auth: authentication failed, invalid user ID or password")]
    AuthFailed,
    /// The user lacks the permission.
    #[error("auth: permission denied")]
    PermissionDenied,
    /// Revoking a role the user does not have.
    #[error("auth: role is not granted to the user")]
    RoleNotGranted,
    /// Revoking a permission the role does not have.
    #[error("auth: permission is not granted to the role")]
    PermissionNotGranted,
    /// A token-based operation while auth is off.
    #[error("auth: authentication is not enabled")]
    AuthNotEnabled,
    /// Unknown or expired token.
    #[error("auth: invalid auth token")]
    InvalidAuthToken,
    /// A JWT token was asked of a member that only verifies them (no `priv-key`).
    #[error("auth: token signing attempted with verify-only key")]
    CannotSign,
    /// Would lock everybody out (delete root, revoke root's role) while auth is on.
    #[error("auth: invalid auth management")]
    InvalidAuthMgmt,
    /// The request's permissions were checked at an older AuthRevision than this member's.
    #[error("auth: revision in header is old")]
    OldRevision,
    /// Enabling auth without a root user.
    #[error("auth: root user does not exist")]
    RootUserNotExist,
    /// Enabling auth while root lacks the root role.
    #[error("auth: root user does not have root role")]
    RootRoleNotExist,
    /// bcrypt refused to hash (e.g. a cost outside 4..=31).
    #[error("auth: cannot hash password: {0}")]
    PasswordHash(String),
    /// Storage failed.
    #[error(transparent)]
    Backend(#[from] backend::Error),
}

impl From<redb::StorageError> for Error {
    fn from(e: redb::StorageError) -> Self {
        Error::Backend(e.into())
    }
}

impl From<redb::TableError> for Error {
    fn from(e: redb::TableError) -> Self {
        Error::Backend(e.into())
    }
}

/// Result of auth operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A user (etcd's `authpb.User`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Name.
    pub name: String,
    /// bcrypt hash; `None` for a user that cannot log in with a password.
    pub password_hash: Option<String>,
    /// Granted roles, sorted.
    pub roles: BTreeSet<String>,
}

/// A role (etcd's `authpb.Role`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Name.
    pub name: String,
    /// Key-range permissions, sorted by key.
    pub permissions: Vec<Permission>,
}

/// Who a request runs as: the header's user and AuthRevision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthInfo {
    /// User name.
    pub username: String,
    /// AuthRevision the request was checked at.
    pub revision: u64,
}

/// Hashes a password with bcrypt at `cost` (the proposer does this, never the applier).
pub fn hash_password(password: &str, cost: u32) -> Result<String> {
    bcrypt::hash(password, cost).map_err(|e| Error::PasswordHash(e.to_string()))
}

/// What an applied auth request yields.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Done (possibly a no-op, as etcd treats re-enabling or re-granting).
    Done,
    /// A token was assigned.
    Token(String),
}

/// Users, roles and the auth switch, mirrored in memory from their tables.
pub(crate) struct AuthStore {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    tokens: Mutex<Tokens>,
}

impl AuthStore {
    /// Loads the auth tables.
    pub(crate) fn load(
        txn: &ReadTransaction,
        token_ttl: Duration,
    ) -> Result<AuthStore, backend::Error> {
        let meta_table = txn.open_table(META)?;
        let enabled = get_u64(&meta_table, meta::AUTH_ENABLED)?.unwrap_or(0) == 1;
        // etcd starts the AuthRevision at 1 so that 0 can mean "no auth info".
        let revision = get_u64(&meta_table, meta::AUTH_REVISION)?
            .unwrap_or(1)
            .max(1);
        let mut users = BTreeMap::new();
        for item in txn.open_table(AUTH_USERS)?.iter()? {
            let (name, bytes) = item?;
            users.insert(
                name.value().to_string(),
                decode::<User>("auth_users", bytes.value())?,
            );
        }
        let mut roles = BTreeMap::new();
        for item in txn.open_table(AUTH_ROLES)?.iter()? {
            let (name, bytes) = item?;
            roles.insert(
                name.value().to_string(),
                decode::<Role>("auth_roles", bytes.value())?,
            );
        }
        Ok(AuthStore {
            enabled,
            revision,
            users,
            roles,
            tokens: Mutex::new(Tokens::new(token_ttl)),
        })
    }

    /// Whether authentication is on.
    pub(crate) fn enabled(&self) -> bool {
        self.enabled
    }

    /// The AuthRevision.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }

    /// A user by name.
    pub(crate) fn user(&self, name: &str) -> Result<&User> {
        self.users.get(name).ok_or(Error::UserNotFound)
    }

    /// Every user, by name.
    pub(crate) fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    /// A role by name.
    pub(crate) fn role(&self, name: &str) -> Result<&Role> {
        self.roles.get(name).ok_or(Error::RoleNotFound)
    }

    /// Every role, by name.
    pub(crate) fn roles(&self) -> impl Iterator<Item = &Role> {
        self.roles.values()
    }

    fn tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        // The token map holds no invariant a panicking holder could break.
        self.tokens
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user and current AuthRevision a token stands for (etcd's `AuthInfoFromCtx`): the
    /// header a member puts on the requests it proposes.
    pub(crate) fn info_from_token(&self, token: &str, now: Instant) -> Result<AuthInfo> {
        let username = self
            .tokens()
            .user(token, now)
            .ok_or(Error::InvalidAuthToken)?;
        Ok(AuthInfo {
            username,
            revision: self.revision,
        })
    }

    /// The password hash to verify a login against (auth must be on, the user must have one).
    pub(crate) fn password_hash(&self, name: &str) -> Result<String> {
        if !self.enabled {
            return Err(Error::AuthNotEnabled);
        }
        let user = self.users.get(name).ok_or(Error::AuthFailed)?;
        user.password_hash.clone().ok_or(Error::AuthFailed)
    }

    /// Checks a KV access as etcd's `isOpPermitted` does, including the AuthRevision test.
    pub(crate) fn check_op(
        &self,
        info: &AuthInfo,
        key: &[u8],
        range_end: &[u8],
        access: PermissionType,
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if info.revision == 0 {
            return Err(Error::UserEmpty);
        }
        if info.revision < self.revision {
            return Err(Error::OldRevision);
        }
        let user = self
            .users
            .get(&info.username)
            .ok_or(Error::PermissionDenied)?;
        if user.roles.contains(ROOT_ROLE) {
            return Ok(());
        }
        let perms = user
            .roles
            .iter()
            .filter_map(|r| self.roles.get(r))
            .flat_map(|r| r.permissions.iter());
        if perm::covers(perms, access, &KeyInterval::of(key, range_end)) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Checks that the caller may change the auth store (root role), as etcd's
    /// `IsAdminPermitted` does.
    pub(crate) fn check_admin(&self, info: &AuthInfo) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        if info.username.is_empty() {
            return Err(Error::UserEmpty);
        }
        let user = self.users.get(&info.username).ok_or(Error::UserNotFound)?;
        if user.roles.contains(ROOT_ROLE) {
            Ok(())
        } else {
            Err(Error::PermissionDenied)
        }
    }

    /// Applies one auth request inside `txn`; `now` starts a new token's life.
    pub(crate) fn apply(
        &mut self,
        txn: &WriteTransaction,
        req: &AuthRequest,
        now: Instant,
    ) -> Result<Applied> {
        match req {
            AuthRequest::Enable => self.enable(txn),
            AuthRequest::Disable => {
                if self.enabled {
                    put_u64(txn, meta::AUTH_ENABLED, 0)?;
                    self.enabled = false;
                    self.tokens().clear();
                    tracing::info!("disabled authentication");
                }
                Ok(Applied::Done)
            }
            AuthRequest::Authenticate { name, simple_token } => {
                if !self.enabled {
                    return Err(Error::AuthNotEnabled);
                }
                let user = self.users.get(name).ok_or(Error::AuthFailed)?;
                if user.password_hash.is_none() {
                    return Err(Error::AuthFailed);
                }
                self.tokens().assign(simple_token, name, now);
                Ok(Applied::Token(simple_token.clone()))
            }
            AuthRequest::UserAdd {
                name,
                hashed_password,
            } => {
                if name.is_empty() {
                    return Err(Error::UserEmpty);
                }
                if self.users.contains_key(name) {
                    return Err(Error::UserAlreadyExist);
                }
                let user = User {
                    name: name.clone(),
                    password_hash: hashed_password.clone(),
                    roles: BTreeSet::new(),
                };
                self.save_user(txn, user)?;
                self.bump(txn)
            }
            AuthRequest::UserDelete { name } => {
                if self.enabled && name == ROOT_USER {
                    return Err(Error::InvalidAuthMgmt);
                }
                if !self.users.contains_key(name) {
                    return Err(Error::UserNotFound);
                }
                txn.open_table(AUTH_USERS)?.remove(name.as_str())?;
                self.users.remove(name);
                self.tokens().invalidate_user(name);
                self.bump(txn)
            }
            AuthRequest::UserChangePassword {
                name,
                hashed_password,
            } => {
                let mut user = self.user(name)?.clone();
                user.password_hash = Some(hashed_password.clone());
                self.save_user(txn, user)?;
                self.tokens().invalidate_user(name);
                self.bump(txn)
            }
            AuthRequest::UserGrantRole { user, role } => {
                let mut u = self.user(user)?.clone();
                if role != ROOT_ROLE && !self.roles.contains_key(role) {
                    return Err(Error::RoleNotFound);
                }
                if !u.roles.insert(role.clone()) {
                    return Ok(Applied::Done);
                }
                self.save_user(txn, u)?;
                self.bump(txn)
            }
            AuthRequest::UserRevokeRole { name, role } => {
                if self.enabled && name == ROOT_USER && role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                let mut u = self.user(name)?.clone();
                if !u.roles.remove(role) {
                    return Err(Error::RoleNotGranted);
                }
                self.save_user(txn, u)?;
                self.bump(txn)
            }
            AuthRequest::RoleAdd { name } => {
                if name.is_empty() {
                    return Err(Error::RoleEmpty);
                }
                if self.roles.contains_key(name) {
                    return Err(Error::RoleAlreadyExist);
                }
                self.save_role(
                    txn,
                    Role {
                        name: name.clone(),
                        permissions: Vec::new(),
                    },
                )?;
                self.bump(txn)
            }
            AuthRequest::RoleDelete { role } => {
                if self.enabled && role == ROOT_ROLE {
                    return Err(Error::InvalidAuthMgmt);
                }
                if !self.roles.contains_key(role) {
                    return Err(Error::RoleNotFound);
                }
                txn.open_table(AUTH_ROLES)?.remove(role.as_str())?;
                self.roles.remove(role);
                let holders: Vec<User> = self
                    .users
                    .values()
                    .filter(|u| u.roles.contains(role))
                    .cloned()
                    .collect();
                for mut user in holders {
                    user.roles.remove(role);
                    self.save_user(txn, user)?;
                }
                self.bump(txn)
            }
            AuthRequest::RoleGrantPermission { name, perm } => {
                let mut role = self.role(name)?.clone();
                match role
                    .permissions
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.range_end == perm.range_end)
                {
                    Some(existing) => existing.perm_type = perm.perm_type,
                    None => {
                        role.permissions.push(perm.clone());
                        role.permissions
                            .sort_by(|a, b| (&a.key, &a.range_end).cmp(&(&b.key, &b.range_end)));
                    }
                }
                self.save_role(txn, role)?;
                self.bump(txn)
            }
            AuthRequest::RoleRevokePermission {
                role,
                key,
                range_end,
            } => {
                let mut r = self.role(role)?.clone();
                let before = r.permissions.len();
                r.permissions
                    .retain(|p| !(&p.key == key && &p.range_end == range_end));
                if r.permissions.len() == before {
                    return Err(Error::PermissionNotGranted);
                }
                self.save_role(txn, r)?;
                self.bump(txn)
            }
        }
    }

    fn enable(&mut self, txn: &WriteTransaction) -> Result<Applied> {
        if self.enabled {
            tracing::info!("authentication is already enabled; ignored auth enable request");
            return Ok(Applied::Done);
        }
        let root = self.users.get(ROOT_USER).ok_or(Error::RootUserNotExist)?;
        if !root.roles.contains(ROOT_ROLE) {
            return Err(Error::RootRoleNotExist);
        }
        put_u64(txn, meta::AUTH_ENABLED, 1)?;
        self.enabled = true;
        tracing::info!("enabled authentication");
        Ok(Applied::Done)
    }

    fn save_user(&mut self, txn: &WriteTransaction, user: User) -> Result<()> {
        txn.open_table(AUTH_USERS)?
            .insert(user.name.as_str(), encode(&user).as_slice())?;
        self.users.insert(user.name.clone(), user);
        Ok(())
    }

    fn save_role(&mut self, txn: &WriteTransaction, role: Role) -> Result<()> {
        txn.open_table(AUTH_ROLES)?
            .insert(role.name.as_str(), encode(&role).as_slice())?;
        self.roles.insert(role.name.clone(), role);
        Ok(())
    }

    fn bump(&mut self, txn: &WriteTransaction) -> Result<Applied> {
        self.revision += 1;
        put_u64(txn, meta::AUTH_REVISION, self.revision)?;
        Ok(Applied::Done)
    }
}

#[cfg(test)]
mod tests;
