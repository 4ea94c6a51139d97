//! JWT auth tokens, as etcd issues them with `--auth-token
//! jwt,pub-key=<file>,priv-key=<file>,sign-method=<alg>,ttl=<duration>`: a token carries the
//! user name, the AuthRevision the password was checked at and an expiry, signed by the member
//! that authenticated the user. Any member holding the public key verifies it, so tokens go
//! neither through the raft log nor into memory, and a member restart does not log anyone out.
//!
//! A token outlives changes to its user (it cannot be revoked), but not their effect: a request
//! made with it carries its AuthRevision, and any auth change since makes the request fail with
//! "revision of auth store is old", as in etcd; the client then logs in again.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// etcd's default lifetime of a JWT token.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// Why `--auth-token` cannot be used; each says what is wrong, after etcd's "invalid auth
/// options".
#[derive(Debug, thiserror::Error)]
#[error("auth: invalid auth options: {0}")]
pub struct OptionsError(pub String);

/// What a JWT token claims (etcd's claim names).
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    /// Expiry, in seconds since the Unix epoch.
    exp: u64,
}

/// A JWT signer and verifier.
pub struct Jwt {
    algorithm: Algorithm,
    /// `None`: this member verifies tokens but issues none (no `priv-key`).
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl: Duration,
}

impl std::fmt::Debug for Jwt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwt")
            .field("algorithm", &self.algorithm)
            .field("signs", &self.signing.is_some())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

fn algorithm(name: &str) -> Result<Algorithm, OptionsError> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "" => return Err(missing("sign-method")),
        other => {
            return Err(OptionsError(format!(
                "invalid auth signature method {other:?} (RS256, RS384, RS512, PS256, PS384, \
                 PS512, ES256, ES384, HS256, HS384 or HS512)"
            )));
        }
    })
}

fn read(option: &str, path: &Path) -> Result<Vec<u8>, OptionsError> {
    std::fs::read(path).map_err(|e| OptionsError(format!("{option} {}: {e}", path.display())))
}

/// What `--auth-token jwt,...` says (parsed by the CLI).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JwtOptions {
    /// `pub-key`: the PEM public key tokens are verified with.
    pub public_key: Option<std::path::PathBuf>,
    /// `priv-key`: the PEM private key (or, for HS*, the shared secret) tokens are signed with.
    pub private_key: Option<std::path::PathBuf>,
    /// `sign-method`.
    pub sign_method: String,
    /// `ttl`.
    pub ttl: Duration,
}

impl Jwt {
    /// The signer and verifier `options` describe, its keys read and checked.
    pub fn new(options: &JwtOptions) -> Result<Jwt, OptionsError> {
        let method = options.sign_method.as_str();
        let algorithm = algorithm(method)?;
        let hmac = matches!(
            algorithm,
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512
        );
        let key_error = |option: &str, e: jsonwebtoken::errors::Error| {
            OptionsError(format!("{option}: not a {method} key: {e}"))
        };
        let private = options.private_key.as_deref();
        let (signing, verifying) = if hmac {
            // One shared secret signs and verifies (etcd reads it from priv-key).
            let secret = read("priv-key", private.ok_or_else(|| missing("priv-key"))?)?;
            (
                Some(EncodingKey::from_secret(&secret)),
                DecodingKey::from_secret(&secret),
            )
        } else {
            let public = options.public_key.as_deref();
            let public = read("pub-key", public.ok_or_else(|| missing("pub-key"))?)?;
            let ec = matches!(algorithm, Algorithm::ES256 | Algorithm::ES384);
            let verifying = if ec {
                DecodingKey::from_ec_pem(&public)
            } else {
                DecodingKey::from_rsa_pem(&public)
            }
            .map_err(|e| key_error("pub-key", e))?;
            let signing = match private {
                None => None,
                Some(path) => {
                    let private = read("priv-key", path)?;
                    let key = if ec {
                        EncodingKey::from_ec_pem(&private)
                    } else {
                        EncodingKey::from_rsa_pem(&private)
                    }
                    .map_err(|e| key_error("priv-key", e))?;
                    Some(key)
                }
            };
            (signing, verifying)
        };
        let jwt = Jwt {
            algorithm,
            signing,
            verifying,
            ttl: options.ttl,
        };
        // A key pair that does not belong together would issue tokens nobody accepts.
        if jwt.signing.is_some() {
            let probe = jwt
                .sign("probe", 1)
                .map_err(|e| OptionsError(e.to_string()))?;
            if jwt.verify(&probe).is_none() {
                return Err(OptionsError(
                    "priv-key and pub-key are not one key pair".into(),
                ));
            }
        }
        Ok(jwt)
    }

    /// A token for `username`, checked at AuthRevision `revision`, valid for the TTL.
    pub fn sign(&self, username: &str, revision: u64) -> Result<String, super::Error> {
        let key = self.signing.as_ref().ok_or(super::Error::CannotSign)?;
        let exp = (SystemTime::now() + self.ttl)
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|_| super::Error::CannotSign)
    }

    /// The user and AuthRevision a valid, unexpired token of ours carries.
    pub fn verify(&self, token: &str) -> Option<(String, u64)> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some((data.claims.username, data.claims.revision))
    }
}

fn missing(option: &str) -> OptionsError {
    OptionsError(format!("{option} is missing"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn keys(dir: &Path) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        let (public, private) = (dir.join("pub.pem"), dir.join("priv.pem"));
        std::fs::write(&public, key.public_key_pem()).expect("write");
        std::fs::write(&private, key.serialize_pem()).expect("write");
        (public, private)
    }

    fn options(public: Option<&Path>, private: Option<&Path>, method: &str) -> JwtOptions {
        JwtOptions {
            public_key: public.map(Path::to_path_buf),
            private_key: private.map(Path::to_path_buf),
            sign_method: method.to_string(),
            ttl: DEFAULT_TTL,
        }
    }

    #[test]
    fn a_signed_token_carries_user_and_revision_and_another_key_refuses_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (public, private) = keys(dir.path());
        let jwt = Jwt::new(&options(Some(&public), Some(&private), "ES256")).expect("jwt");
        let token = jwt.sign("alice", 7).expect("signed");
        assert_eq!(jwt.verify(&token), Some(("alice".to_string(), 7)));
        assert_eq!(
            jwt.verify(&format!("{token}x")),
            None,
            "a changed signature"
        );

        let other = tempfile::tempdir().expect("tempdir");
        let (public, _) = keys(other.path());
        let verifier = Jwt::new(&options(Some(&public), None, "ES256")).expect("verify-only");
        assert_eq!(verifier.verify(&token), None);
        assert!(matches!(
            verifier.sign("alice", 7),
            Err(super::super::Error::CannotSign)
        ));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (public, private) = keys(dir.path());
        let jwt = Jwt::new(&options(Some(&public), Some(&private), "ES256")).expect("jwt");
        let past = Claims {
            username: "alice".into(),
            revision: 1,
            exp: 1,
        };
        let key = jwt.signing.as_ref().expect("signing key");
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &past, key).expect("sign");
        assert_eq!(jwt.verify(&token), None);
    }

    #[test]
    fn unusable_keys_and_methods_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (public, private) = keys(dir.path());
        let stranger_dir = tempfile::tempdir().expect("tempdir");
        let (_, stranger) = keys(stranger_dir.path());
        let nothing = Path::new("/nonexistent");
        let cases = [
            (
                options(Some(&public), Some(&private), ""),
                "sign-method is missing",
            ),
            (
                options(Some(&public), None, "XX"),
                "invalid auth signature method",
            ),
            (options(None, None, "ES256"), "pub-key is missing"),
            (options(Some(nothing), None, "ES256"), "/nonexistent"),
            (options(Some(&public), None, "RS256"), "not a RS256 key"),
            (options(None, None, "HS256"), "priv-key is missing"),
            (
                options(Some(&public), Some(&stranger), "ES256"),
                "not one key pair",
            ),
        ];
        for (options, says) in cases {
            match Jwt::new(&options) {
                Err(e) => assert!(e.to_string().contains(says), "{options:?}: {e}"),
                Ok(_) => panic!("{options:?} was accepted"),
            }
        }
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"shared secret").expect("write");
        let hmac = Jwt::new(&options(None, Some(&secret), "HS256")).expect("HS256");
        let token = hmac.sign("bob", 3).expect("signed");
        assert_eq!(hmac.verify(&token), Some(("bob".to_string(), 3)));
    }
}
