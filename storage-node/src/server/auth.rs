//! etcd's Auth service. Changes go through raft (AuthRevision moves on every member alike);
//! passwords are hashed and verified on the member the client talks to, never at apply, so
//! bcrypt's cost is paid once. Authenticate registers its token through raft, so the token
//! works on every member.

use tonic::{Request, Response, Status};

use super::{Api, convert, error};
use crate::api::{self, AuthRequest};
use crate::auth::generate_simple_token;
use crate::pb::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_server::Auth,
};

impl Api {
    /// Checks a login's password off the async threads (bcrypt is slow on purpose): the
    /// AuthRevision it was checked at.
    async fn check_password(&self, req: &AuthenticateRequest) -> Result<u64, Status> {
        let (name, password, store) = (
            req.name.clone(),
            req.password.clone(),
            self.node.store.clone(),
        );
        tokio::task::spawn_blocking(move || store.check_password(&name, &password))
            .await
            .map_err(|e| Status::internal(format!("checking password: {e}")))?
            .map_err(Status::from)
    }

    /// Proposes an auth change and returns the response header it earned.
    async fn auth_change(
        &self,
        caller: Option<crate::auth::AuthInfo>,
        request: AuthRequest,
    ) -> Result<Option<crate::pb::etcdserverpb::ResponseHeader>, Status> {
        match self.propose(caller, api::Request::Auth(request)).await? {
            api::Response::Auth { revision } => Ok(self.header(revision)),
            other => Err(error::unexpected(other)),
        }
    }

    /// bcrypt off the async threads.
    async fn hash_password(&self, password: String) -> Result<String, Status> {
        let cost = self.bcrypt_cost;
        tokio::task::spawn_blocking(move || crate::auth::hash_password(&password, cost))
            .await
            .map_err(|e| Status::internal(format!("hashing password: {e}")))?
            .map_err(Status::from)
    }

    /// Auth reads are linearizable and need the root role, except a user reading itself or a
    /// role it holds.
    async fn auth_read<T>(
        &self,
        request: &Request<T>,
        allowed_without_admin: impl FnOnce(&crate::auth::AuthInfo) -> bool,
    ) -> Result<(), Status> {
        let info = Self::local_identity(self.caller(request)?);
        self.read_index().await?;
        match self.node.store.check_admin(&info) {
            Ok(()) => Ok(()),
            Err(_) if !info.username.is_empty() && allowed_without_admin(&info) => Ok(()),
            Err(e) => Err(Status::from(e)),
        }
    }
}

#[tonic::async_trait]
impl Auth for Api {
    #[tracing::instrument(level = "debug", skip_all)]
    async fn auth_enable(
        &self,
        request: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let caller = self.caller(&request)?;
        let header = self.auth_change(caller, AuthRequest::Enable).await?;
        Ok(Response::new(AuthEnableResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn auth_disable(
        &self,
        request: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let caller = self.caller(&request)?;
        let header = self.auth_change(caller, AuthRequest::Disable).await?;
        Ok(Response::new(AuthDisableResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn auth_status(
        &self,
        _: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        if self.auth_status_fails() {
            return Err(Status::unavailable(
                "injected fault: --unsafe-test-fail-auth-status-if",
            ));
        }
        let (enabled, auth_revision) = self.node.store.auth_status();
        Ok(Response::new(AuthStatusResponse {
            header: self.current_header(),
            enabled,
            auth_revision,
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().name))]
    async fn authenticate(
        &self,
        request: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let req = request.into_inner();
        let store = self.node.store.clone();
        if store.jwt().is_some() {
            // A JWT token is signed here and needs no entry: only the password check must see
            // every auth change committed before the request, as a read does.
            self.read_index().await?;
            let checked_at = self.check_password(&req).await?;
            let jwt = store
                .jwt()
                .ok_or_else(|| Status::internal("no JWT signer"))?;
            let token = jwt.sign(&req.name, checked_at).map_err(Status::from)?;
            return Ok(Response::new(AuthenticateResponse {
                header: self.current_header(),
                token,
            }));
        }
        loop {
            let checked_at = self.check_password(&req).await?;
            let token = generate_simple_token(self.node.store.applied().index);
            let register = AuthRequest::Authenticate {
                name: req.name.clone(),
                simple_token: token.clone(),
            };
            let response = self.propose(None, api::Request::Auth(register)).await?;
            // As etcd: if the auth store changed between the password check and the token's
            // registration, the check may be stale; do it again.
            if self.node.store.auth_status().1 == checked_at {
                let revision = match response {
                    api::Response::Auth { revision } => revision,
                    _ => self.node.store.status().revision,
                };
                return Ok(Response::new(AuthenticateResponse {
                    header: self.header(revision),
                    token,
                }));
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().name))]
    async fn user_add(
        &self,
        request: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Status::from(crate::auth::Error::UserEmpty));
        }
        let no_password = req.options.as_ref().is_some_and(|o| o.no_password);
        let hashed_password = if no_password {
            None
        } else if !req.hashed_password.is_empty() {
            Some(req.hashed_password)
        } else {
            Some(self.hash_password(req.password).await?)
        };
        let header = self
            .auth_change(
                caller,
                AuthRequest::UserAdd {
                    name: req.name,
                    hashed_password,
                },
            )
            .await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().name))]
    async fn user_get(
        &self,
        request: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.auth_read(&request, |info| info.username == name)
            .await?;
        let user = self.node.store.user(&name).map_err(Status::from)?;
        Ok(Response::new(AuthUserGetResponse {
            header: self.current_header(),
            roles: user.roles.into_iter().collect(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn user_list(
        &self,
        request: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        self.auth_read(&request, |_| false).await?;
        Ok(Response::new(AuthUserListResponse {
            header: self.current_header(),
            users: self.node.store.users(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().name))]
    async fn user_delete(
        &self,
        request: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let caller = self.caller(&request)?;
        let name = request.into_inner().name;
        let header = self
            .auth_change(caller, AuthRequest::UserDelete { name })
            .await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().name))]
    async fn user_change_password(
        &self,
        request: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let hashed_password = if req.hashed_password.is_empty() {
            self.hash_password(req.password).await?
        } else {
            req.hashed_password
        };
        let header = self
            .auth_change(
                caller,
                AuthRequest::UserChangePassword {
                    name: req.name,
                    hashed_password,
                },
            )
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().user))]
    async fn user_grant_role(
        &self,
        request: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let header = self
            .auth_change(
                caller,
                AuthRequest::UserGrantRole {
                    user: req.user,
                    role: req.role,
                },
            )
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(user = %request.get_ref().name))]
    async fn user_revoke_role(
        &self,
        request: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let header = self
            .auth_change(
                caller,
                AuthRequest::UserRevokeRole {
                    name: req.name,
                    role: req.role,
                },
            )
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(role = %request.get_ref().name))]
    async fn role_add(
        &self,
        request: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let caller = self.caller(&request)?;
        let name = request.into_inner().name;
        let header = self
            .auth_change(caller, AuthRequest::RoleAdd { name })
            .await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(role = %request.get_ref().role))]
    async fn role_get(
        &self,
        request: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let name = request.get_ref().role.clone();
        let store = self.node.store.clone();
        self.auth_read(&request, |info| {
            store
                .user(&info.username)
                .is_ok_and(|u| u.roles.contains(&name))
        })
        .await?;
        let role = self.node.store.role(&name).map_err(Status::from)?;
        Ok(Response::new(AuthRoleGetResponse {
            header: self.current_header(),
            perm: role
                .permissions
                .into_iter()
                .map(convert::permission)
                .collect(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn role_list(
        &self,
        request: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        self.auth_read(&request, |_| false).await?;
        Ok(Response::new(AuthRoleListResponse {
            header: self.current_header(),
            roles: self.node.store.roles(),
        }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(role = %request.get_ref().role))]
    async fn role_delete(
        &self,
        request: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let caller = self.caller(&request)?;
        let role = request.into_inner().role;
        let header = self
            .auth_change(caller, AuthRequest::RoleDelete { role })
            .await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(role = %request.get_ref().name))]
    async fn role_grant_permission(
        &self,
        request: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let perm = req
            .perm
            .ok_or_else(|| Status::invalid_argument("etcdserver: permission not given"))?;
        let perm = convert::permission_request(perm)?;
        let header = self
            .auth_change(
                caller,
                AuthRequest::RoleGrantPermission {
                    name: req.name,
                    perm,
                },
            )
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(role = %request.get_ref().role))]
    async fn role_revoke_permission(
        &self,
        request: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = self.caller(&request)?;
        let req = request.into_inner();
        let header = self
            .auth_change(
                caller,
                AuthRequest::RoleRevokePermission {
                    role: req.role,
                    key: req.key,
                    range_end: req.range_end,
                },
            )
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
