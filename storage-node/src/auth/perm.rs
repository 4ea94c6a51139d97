//! Whether a role's key-range permissions cover a requested key range.

use crate::api::{KeyInterval, Permission, PermissionType};

/// True when the union of the `access`-granting permissions covers all of `want` (etcd's
/// `checkKeyInterval` over its merged permission intervals).
pub(crate) fn covers<'a>(
    perms: impl Iterator<Item = &'a Permission>,
    access: PermissionType,
    want: &KeyInterval,
) -> bool {
    let mut granted: Vec<KeyInterval> = perms
        .filter(|p| p.perm_type.allows(access))
        .map(|p| KeyInterval::of(&p.key, &p.range_end))
        .collect();
    granted.sort_by(|a, b| a.start.cmp(&b.start));
    // Everything in [want.start, reached) is covered so far.
    let mut reached = want.start.clone();
    for g in granted {
        if g.start > reached {
            break;
        }
        match g.end {
            None => return true,
            Some(end) if end > reached => reached = end,
            Some(_) => {}
        }
        if want
            .end
            .as_ref()
            .is_some_and(|want_end| &reached >= want_end)
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: PermissionType, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t,
            key: key.into(),
            range_end: end.into(),
        }
    }

    fn check(perms: &[Permission], access: PermissionType, key: &str, end: &str) -> bool {
        covers(
            perms.iter(),
            access,
            &KeyInterval::of(key.as_bytes(), end.as_bytes()),
        )
    }

    use PermissionType::*;

    #[test]
    fn a_single_key_grant_covers_that_key_only() {
        let perms = [perm(ReadWrite, "foo", "")];
        assert!(check(&perms, Read, "foo", ""));
        assert!(check(&perms, Write, "foo", ""));
        assert!(!check(&perms, Read, "foo1", ""));
        assert!(
            !check(&perms, Read, "foo", "fop"),
            "a range over more than the key"
        );
    }

    #[test]
    fn a_prefix_grant_covers_ranges_inside_it() {
        let perms = [perm(Read, "app/", "app0")];
        assert!(check(&perms, Read, "app/x", ""));
        assert!(check(&perms, Read, "app/", "app0"));
        assert!(check(&perms, Read, "app/a", "app/b"));
        assert!(
            !check(&perms, Write, "app/x", ""),
            "read does not grant write"
        );
        assert!(
            !check(&perms, Read, "app/", "\0"),
            "an open-ended range goes past the prefix"
        );
    }

    #[test]
    fn adjacent_grants_cover_their_union_and_gaps_do_not() {
        let perms = [perm(Write, "a", "c"), perm(Write, "c", "e")];
        assert!(check(&perms, Write, "b", "d"));
        let gap = [perm(Write, "a", "c"), perm(Write, "d", "e")];
        assert!(!check(&gap, Write, "b", "d"));
    }

    #[test]
    fn a_from_key_grant_covers_everything_after() {
        let perms = [perm(ReadWrite, "m", "\0")];
        assert!(check(&perms, Read, "m", "\0"));
        assert!(check(&perms, Write, "zzz", ""));
        assert!(!check(&perms, Write, "a", ""));
    }
}
