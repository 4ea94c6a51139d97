//! Simple tokens: opaque strings handed out by Authenticate and mapped to a user.
//!
//! The proposer picks the token and the entry assigns it on every member, so a token works on
//! any member. Like etcd's simple tokens they live in memory only (a restart invalidates them and
//! clients log in again) and expire after a TTL without use.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Live tokens and the user each stands for.
pub(crate) struct Tokens {
    ttl: Duration,
    live: HashMap<String, (String, Instant)>,
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Tokens {
        Tokens {
            ttl,
            live: HashMap::new(),
        }
    }

    /// Registers `token` for `user` from `now`; drops expired tokens on the way.
    pub(crate) fn assign(&mut self, token: &str, user: &str, now: Instant) {
        self.live.retain(|_, (_, expires)| *expires > now);
        self.live
            .insert(token.to_string(), (user.to_string(), now + self.ttl));
    }

    /// The user `token` stands for, extending its life; `None` when unknown or expired.
    pub(crate) fn user(&mut self, token: &str, now: Instant) -> Option<String> {
        let (user, expires) = self.live.get_mut(token)?;
        if *expires <= now {
            self.live.remove(token);
            return None;
        }
        *expires = now + self.ttl;
        Some(user.clone())
    }

    /// Forgets every token of `user` (deleted, or its password changed).
    pub(crate) fn invalidate_user(&mut self, user: &str) {
        self.live.retain(|_, (u, _)| u != user);
    }

    /// Forgets every token (auth disabled).
    pub(crate) fn clear(&mut self) {
        self.live.clear();
    }
}

/// A fresh random token, in etcd's simple-token shape: 16 letters, a dot, a sequence number.
pub fn generate_simple_token(seq: u64) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // Without OS randomness fall back to the clock: tokens stay unique, merely guessable.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes = nanos.to_le_bytes();
    }
    let letters: String = bytes
        .iter()
        .map(|b| LETTERS[*b as usize % LETTERS.len()] as char)
        .collect();
    format!("{letters}.{seq}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_expires_after_its_ttl_without_use() {
        let t0 = Instant::now();
        let mut tokens = Tokens::new(Duration::from_secs(10));
        tokens.assign("t", "alice", t0);
        assert_eq!(
            tokens.user("t", t0 + Duration::from_secs(9)).as_deref(),
            Some("alice")
        );
        // Use extended it.
        assert_eq!(
            tokens.user("t", t0 + Duration::from_secs(18)).as_deref(),
            Some("alice")
        );
        assert_eq!(tokens.user("t", t0 + Duration::from_secs(40)), None);
        assert_eq!(
            tokens.user("t", t0),
            None,
            "an expired token is gone for good"
        );
    }

    #[test]
    fn invalidating_a_user_drops_only_their_tokens() {
        let now = Instant::now();
        let mut tokens = Tokens::new(Duration::from_secs(10));
        tokens.assign("a", "alice", now);
        tokens.assign("b", "bob", now);
        tokens.invalidate_user("alice");
        assert_eq!(tokens.user("a", now), None);
        assert_eq!(tokens.user("b", now).as_deref(), Some("bob"));
    }

    #[test]
    fn generated_tokens_differ() {
        let a = generate_simple_token(1);
        let b = generate_simple_token(1);
        assert_ne!(a, b);
        assert!(a.ends_with(".1") && a.len() == 18);
    }
}
