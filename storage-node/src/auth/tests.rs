//! Unit tests of the auth store's rules and checks.

use super::*;
use crate::backend::Backend;

const COST: u32 = 4;

struct Auth {
    backend: Backend,
    store: AuthStore,
}

impl Auth {
    fn new() -> Auth {
        let backend = Backend::in_memory().unwrap();
        let store =
            AuthStore::load(&backend.begin_read().unwrap(), Duration::from_secs(60)).unwrap();
        Auth { backend, store }
    }

    fn apply(&mut self, req: AuthRequest) -> Result<Applied> {
        let txn = self.backend.begin_write().unwrap();
        let out = self.store.apply(&txn, &req, Instant::now());
        txn.commit().unwrap();
        out
    }

    fn ok(&mut self, req: AuthRequest) {
        self.apply(req).unwrap();
    }

    fn reload(&self) -> AuthStore {
        AuthStore::load(&self.backend.begin_read().unwrap(), Duration::from_secs(60)).unwrap()
    }

    /// root with the root role, auth on, role `app` with readwrite on `app/`, user alice in it.
    fn with_users() -> Auth {
        let mut a = Auth::new();
        a.ok(user_add("root"));
        a.ok(AuthRequest::UserGrantRole {
            user: "root".into(),
            role: ROOT_ROLE.into(),
        });
        a.ok(AuthRequest::RoleAdd { name: "app".into() });
        a.ok(grant("app", PermissionType::ReadWrite, "app/", "app0"));
        a.ok(user_add("alice"));
        a.ok(AuthRequest::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        });
        a.ok(AuthRequest::Enable);
        a
    }

    fn info(&self, user: &str) -> AuthInfo {
        AuthInfo {
            username: user.into(),
            revision: self.store.revision(),
        }
    }
}

fn user_add(name: &str) -> AuthRequest {
    AuthRequest::UserAdd {
        name: name.into(),
        hashed_password: Some(hash_password("pw", COST).unwrap()),
    }
}

fn grant(role: &str, perm_type: PermissionType, key: &str, end: &str) -> AuthRequest {
    AuthRequest::RoleGrantPermission {
        name: role.into(),
        perm: Permission {
            perm_type,
            key: key.into(),
            range_end: end.into(),
        },
    }
}

#[test]
fn the_auth_revision_starts_at_one() {
    assert_eq!(Auth::new().store.revision(), 1);
}

#[test]
fn enabling_needs_a_root_user_with_the_root_role() {
    let mut a = Auth::new();
    assert!(matches!(
        a.apply(AuthRequest::Enable),
        Err(Error::RootUserNotExist)
    ));
    a.ok(user_add("root"));
    assert!(matches!(
        a.apply(AuthRequest::Enable),
        Err(Error::RootRoleNotExist)
    ));
    a.ok(AuthRequest::UserGrantRole {
        user: "root".into(),
        role: ROOT_ROLE.into(),
    });
    a.ok(AuthRequest::Enable);
    assert!(a.store.enabled());
    assert!(a.reload().enabled(), "the switch is persisted");
}

#[test]
fn every_auth_mutation_increments_the_revision_and_it_persists() {
    let mut a = Auth::new();
    let steps = [
        user_add("u"),
        AuthRequest::RoleAdd { name: "r".into() },
        grant("r", PermissionType::Read, "k", ""),
        grant("r", PermissionType::Write, "k", ""),
        AuthRequest::UserGrantRole {
            user: "u".into(),
            role: "r".into(),
        },
        AuthRequest::UserChangePassword {
            name: "u".into(),
            hashed_password: "x".into(),
        },
        AuthRequest::RoleRevokePermission {
            role: "r".into(),
            key: "k".into(),
            range_end: vec![],
        },
        AuthRequest::UserRevokeRole {
            name: "u".into(),
            role: "r".into(),
        },
        AuthRequest::RoleDelete { role: "r".into() },
        AuthRequest::UserDelete { name: "u".into() },
    ];
    for (i, step) in steps.into_iter().enumerate() {
        a.ok(step);
        assert_eq!(a.store.revision(), i as u64 + 2);
    }
    assert_eq!(a.reload().revision(), 11);
}

#[test]
fn enable_disable_and_repeated_grants_do_not_change_the_revision() {
    let mut a = Auth::with_users();
    let rev = a.store.revision();
    a.ok(AuthRequest::Enable);
    a.ok(AuthRequest::UserGrantRole {
        user: "alice".into(),
        role: "app".into(),
    });
    a.ok(AuthRequest::Disable);
    a.ok(AuthRequest::Enable);
    assert_eq!(a.store.revision(), rev);
}

#[test]
fn mutations_on_missing_or_duplicate_names_fail_and_change_nothing() {
    let mut a = Auth::with_users();
    let rev = a.store.revision();
    assert!(matches!(
        a.apply(user_add("alice")),
        Err(Error::UserAlreadyExist)
    ));
    assert!(matches!(a.apply(user_add("")), Err(Error::UserEmpty)));
    assert!(matches!(
        a.apply(AuthRequest::RoleAdd { name: "app".into() }),
        Err(Error::RoleAlreadyExist)
    ));
    assert!(matches!(
        a.apply(AuthRequest::RoleAdd { name: "".into() }),
        Err(Error::RoleEmpty)
    ));
    assert!(matches!(
        a.apply(AuthRequest::UserDelete { name: "bob".into() }),
        Err(Error::UserNotFound)
    ));
    assert!(matches!(
        a.apply(AuthRequest::UserGrantRole {
            user: "alice".into(),
            role: "nope".into()
        }),
        Err(Error::RoleNotFound)
    ));
    assert!(matches!(
        a.apply(AuthRequest::UserRevokeRole {
            name: "alice".into(),
            role: "other".into()
        }),
        Err(Error::RoleNotGranted)
    ));
    assert!(matches!(
        a.apply(grant("nope", PermissionType::Read, "k", "")),
        Err(Error::RoleNotFound)
    ));
    let revoke = AuthRequest::RoleRevokePermission {
        role: "app".into(),
        key: "other".into(),
        range_end: vec![],
    };
    assert!(matches!(a.apply(revoke), Err(Error::PermissionNotGranted)));
    assert_eq!(a.store.revision(), rev);
}

#[test]
fn root_cannot_be_locked_out_while_auth_is_on() {
    let mut a = Auth::with_users();
    assert!(matches!(
        a.apply(AuthRequest::UserDelete {
            name: ROOT_USER.into()
        }),
        Err(Error::InvalidAuthMgmt)
    ));
    let revoke = AuthRequest::UserRevokeRole {
        name: ROOT_USER.into(),
        role: ROOT_ROLE.into(),
    };
    assert!(matches!(a.apply(revoke), Err(Error::InvalidAuthMgmt)));
    assert!(matches!(
        a.apply(AuthRequest::RoleDelete {
            role: ROOT_ROLE.into()
        }),
        Err(Error::InvalidAuthMgmt)
    ));
    a.ok(AuthRequest::Disable);
    a.ok(AuthRequest::UserDelete {
        name: ROOT_USER.into(),
    });
}

#[test]
fn deleting_a_role_revokes_it_from_its_users() {
    let mut a = Auth::with_users();
    a.ok(AuthRequest::RoleDelete { role: "app".into() });
    assert!(a.store.user("alice").unwrap().roles.is_empty());
    assert!(a.reload().user("alice").unwrap().roles.is_empty());
}

#[test]
fn kv_access_is_checked_against_roles_and_the_header_revision() {
    let a = Auth::with_users();
    let alice = a.info("alice");
    assert!(
        a.store
            .check_op(&alice, b"app/x", b"", PermissionType::Write)
            .is_ok()
    );
    assert!(
        a.store
            .check_op(&alice, b"app/", b"app0", PermissionType::Read)
            .is_ok()
    );
    assert!(matches!(
        a.store
            .check_op(&alice, b"other", b"", PermissionType::Read),
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(
        a.store.check_op(&alice, b"\0", b"\0", PermissionType::Read),
        Err(Error::PermissionDenied)
    ));
    let root = a.info("root");
    assert!(
        a.store
            .check_op(&root, b"\0", b"\0", PermissionType::Write)
            .is_ok(),
        "root may do anything"
    );
    let stale = AuthInfo {
        username: "root".into(),
        revision: a.store.revision() - 1,
    };
    assert!(matches!(
        a.store.check_op(&stale, b"k", b"", PermissionType::Write),
        Err(Error::OldRevision)
    ));
    let newer = AuthInfo {
        username: "root".into(),
        revision: a.store.revision() + 1,
    };
    assert!(
        a.store
            .check_op(&newer, b"k", b"", PermissionType::Write)
            .is_ok(),
        "only older revisions are rejected"
    );
    let anonymous = AuthInfo::default();
    assert!(matches!(
        a.store
            .check_op(&anonymous, b"k", b"", PermissionType::Read),
        Err(Error::UserEmpty)
    ));
    let ghost = a.info("ghost");
    assert!(matches!(
        a.store
            .check_op(&ghost, b"app/x", b"", PermissionType::Read),
        Err(Error::PermissionDenied)
    ));
}

#[test]
fn without_auth_everything_is_allowed() {
    let a = Auth::new();
    assert!(
        a.store
            .check_op(&AuthInfo::default(), b"k", b"", PermissionType::Write)
            .is_ok()
    );
    assert!(a.store.check_admin(&AuthInfo::default()).is_ok());
}

#[test]
fn auth_administration_needs_the_root_role() {
    let a = Auth::with_users();
    assert!(a.store.check_admin(&a.info("root")).is_ok());
    assert!(matches!(
        a.store.check_admin(&a.info("alice")),
        Err(Error::PermissionDenied)
    ));
    assert!(matches!(
        a.store.check_admin(&a.info("")),
        Err(Error::UserEmpty)
    ));
    assert!(matches!(
        a.store.check_admin(&a.info("ghost")),
        Err(Error::UserNotFound)
    ));
}

#[test]
fn tokens_are_assigned_at_apply_and_resolve_to_the_current_revision() {
    let mut a = Auth::with_users();
    let out = a
        .apply(AuthRequest::Authenticate {
            name: "alice".into(),
            simple_token: "tok.1".into(),
        })
        .unwrap();
    assert_eq!(out, Applied::Token("tok.1".into()));
    let info = a.store.info_from_token("tok.1", Instant::now()).unwrap();
    assert_eq!(info, a.info("alice"));
    a.ok(AuthRequest::RoleAdd {
        name: "later".into(),
    });
    assert_eq!(
        a.store
            .info_from_token("tok.1", Instant::now())
            .unwrap()
            .revision,
        a.store.revision()
    );
    assert!(matches!(
        a.store.info_from_token("nope", Instant::now()),
        Err(Error::InvalidAuthToken)
    ));
    a.ok(AuthRequest::UserChangePassword {
        name: "alice".into(),
        hashed_password: "h".into(),
    });
    assert!(
        matches!(
            a.store.info_from_token("tok.1", Instant::now()),
            Err(Error::InvalidAuthToken)
        ),
        "a password change logs the user out"
    );
}

#[test]
fn authenticate_fails_for_unknown_or_passwordless_users_and_with_auth_off() {
    let mut a = Auth::with_users();
    a.ok(AuthRequest::UserAdd {
        name: "svc".into(),
        hashed_password: None,
    });
    let login = |name: &str| AuthRequest::Authenticate {
        name: name.into(),
        simple_token: "t".into(),
    };
    assert!(matches!(a.apply(login("ghost")), Err(Error::AuthFailed)));
    assert!(matches!(a.apply(login("svc")), Err(Error::AuthFailed)));
    assert!(matches!(
        a.store.password_hash("svc"),
        Err(Error::AuthFailed)
    ));
    a.ok(AuthRequest::Disable);
    assert!(matches!(
        a.apply(login("alice")),
        Err(Error::AuthNotEnabled)
    ));
    assert!(matches!(
        a.store.password_hash("alice"),
        Err(Error::AuthNotEnabled)
    ));
}

#[test]
fn granting_the_same_range_again_changes_its_type() {
    let mut a = Auth::with_users();
    a.ok(grant("app", PermissionType::Read, "app/", "app0"));
    let perms = &a.store.role("app").unwrap().permissions;
    assert_eq!(perms.len(), 1);
    assert_eq!(perms[0].perm_type, PermissionType::Read);
    assert!(matches!(
        a.store
            .check_op(&a.info("alice"), b"app/x", b"", PermissionType::Write),
        Err(Error::PermissionDenied)
    ));
}

#[test]
fn bcrypt_cost_outside_its_range_is_an_error() {
    assert!(matches!(
        hash_password("pw", 2),
        Err(Error::PasswordHash(_))
    ));
    let h = hash_password("pw", COST).unwrap();
    assert!(bcrypt::verify("pw", &h).unwrap());
}
