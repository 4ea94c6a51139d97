//! Alarms, apply side: the set of active alarms, changed only by applied alarm requests and
//! kept in the backend, so every member holds the same set at the same log position and a
//! restart keeps it (etcd's alarm store).
//!
//! While an alarm is active the applier refuses what it guards (see `apply`): NOSPACE the
//! requests that need space, CORRUPT every KV and lease request.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadTransaction, WriteTransaction};

use crate::api::{AlarmAction, AlarmMember, AlarmRequest, AlarmResponse, AlarmType};
use crate::backend::{self, put_value, read_value};
use crate::schema::meta;

/// The active alarms.
#[derive(Debug, Default)]
pub(crate) struct Alarms {
    active: BTreeSet<AlarmMember>,
    /// The members of the cluster as last applied (`None` before any membership entry): an
    /// alarm is raised only for one of them or for member 0.
    members: Option<BTreeSet<u64>>,
}

impl Alarms {
    /// Loads the alarms persisted in the meta table; `members` is the applied membership's.
    pub(crate) fn load(
        txn: &ReadTransaction,
        members: Option<BTreeSet<u64>>,
    ) -> backend::Result<Alarms> {
        let list: Vec<AlarmMember> = read_value(txn, meta::ALARMS)?.unwrap_or_default();
        Ok(Alarms {
            active: list.into_iter().collect(),
            members,
        })
    }

    /// The active alarms of type `alarm`, every active alarm for [`AlarmType::None`].
    pub(crate) fn get(&self, alarm: AlarmType) -> Vec<AlarmMember> {
        self.active
            .iter()
            .filter(|a| alarm == AlarmType::None || a.alarm == alarm)
            .copied()
            .collect()
    }

    /// Whether any member raised `alarm`.
    pub(crate) fn is_active(&self, alarm: AlarmType) -> bool {
        self.active.iter().any(|a| a.alarm == alarm)
    }

    /// Applies an alarm request, as etcd's applier does: a get lists, an activate answers the
    /// alarm it added (nothing when it was already active or is `NONE`), a deactivate the one it
    /// removed (nothing when it was not active).
    ///
    /// An activate naming a member that is not in the cluster changes nothing: a member's
    /// alarm can be proposed before its removal and applied after it (the periodic corruption
    /// check does exactly that), and would then outlive the member it names, refusing every
    /// write with nobody left to disarm it.
    pub(crate) fn apply(
        &mut self,
        txn: &WriteTransaction,
        req: &AlarmRequest,
    ) -> backend::Result<AlarmResponse> {
        let member = AlarmMember {
            member_id: req.member_id,
            alarm: req.alarm,
        };
        let changed = match req.action {
            AlarmAction::Get => {
                return Ok(AlarmResponse {
                    alarms: self.get(req.alarm),
                });
            }
            AlarmAction::Activate if !self.is_member(req.member_id) => {
                tracing::warn!(
                    member_id = %format_args!("{:x}", req.member_id),
                    alarm = req.alarm.name(),
                    "alarm not raised: its member is not in the cluster"
                );
                false
            }
            AlarmAction::Activate => req.alarm != AlarmType::None && self.active.insert(member),
            AlarmAction::Deactivate => self.active.remove(&member),
        };
        if !changed {
            return Ok(AlarmResponse::default());
        }
        let list: Vec<AlarmMember> = self.active.iter().copied().collect();
        put_value(txn, meta::ALARMS, &list)?;
        tracing::warn!(
            member_id = %format_args!("{:x}", req.member_id),
            alarm = req.alarm.name(),
            action = ?req.action,
            "alarm changed"
        );
        Ok(AlarmResponse {
            alarms: vec![member],
        })
    }

    /// Whether `id` is member 0 (the whole cluster) or in the applied membership.
    fn is_member(&self, id: u64) -> bool {
        id == 0 || self.members.as_ref().is_none_or(|m| m.contains(&id))
    }

    /// Records `members` as the cluster's and deactivates the alarms of members not in it
    /// (applied with a membership entry):
    /// a removed member's ID never comes back (a re-added member gets a new one), so its alarms
    /// could never be disarmed by it, yet a CORRUPT one would refuse every write. Alarms for
    /// member 0 (etcd's "the whole cluster") stay.
    pub(crate) fn retain_members<V>(
        &mut self,
        txn: &WriteTransaction,
        members: &BTreeMap<u64, V>,
    ) -> backend::Result<()> {
        self.members = Some(members.keys().copied().collect());
        let gone: Vec<AlarmMember> = self
            .active
            .iter()
            .filter(|a| a.member_id != 0 && !members.contains_key(&a.member_id))
            .copied()
            .collect();
        if gone.is_empty() {
            return Ok(());
        }
        for alarm in &gone {
            self.active.remove(alarm);
            tracing::warn!(
                member_id = %format_args!("{:x}", alarm.member_id),
                alarm = alarm.alarm.name(),
                "alarm cleared: its member left the cluster"
            );
        }
        let list: Vec<AlarmMember> = self.active.iter().copied().collect();
        put_value(txn, meta::ALARMS, &list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use AlarmAction::{Activate, Deactivate, Get};
    use AlarmType::{Corrupt, NoSpace};

    /// Applies one request in its own transaction.
    fn apply(
        b: &Backend,
        alarms: &mut Alarms,
        action: AlarmAction,
        member_id: u64,
        alarm: AlarmType,
    ) -> Vec<AlarmMember> {
        let txn = b.begin_write().unwrap();
        let req = AlarmRequest {
            action,
            member_id,
            alarm,
        };
        let resp = alarms.apply(&txn, &req).unwrap();
        txn.commit().unwrap();
        resp.alarms
    }

    #[test]
    fn activate_and_deactivate_answer_only_what_changed() {
        let b = Backend::in_memory().unwrap();
        let a = &mut Alarms::default();
        let nospace = AlarmMember {
            member_id: 7,
            alarm: NoSpace,
        };
        assert_eq!(apply(&b, a, Activate, 7, NoSpace), vec![nospace]);
        assert!(apply(&b, a, Activate, 7, NoSpace).is_empty(), "already on");
        assert!(apply(&b, a, Activate, 7, AlarmType::None).is_empty());
        apply(&b, a, Activate, 9, Corrupt);
        assert!(a.is_active(NoSpace) && a.is_active(Corrupt));
        assert_eq!(apply(&b, a, Get, 0, NoSpace), vec![nospace]);
        assert_eq!(apply(&b, a, Get, 0, AlarmType::None).len(), 2);
        assert_eq!(apply(&b, a, Deactivate, 7, NoSpace), vec![nospace]);
        assert!(
            apply(&b, a, Deactivate, 7, NoSpace).is_empty(),
            "already off"
        );
        assert!(!a.is_active(NoSpace));
    }

    #[test]
    fn alarms_of_members_that_left_are_cleared() {
        let b = Backend::in_memory().unwrap();
        let a = &mut Alarms::default();
        apply(&b, a, Activate, 3, Corrupt);
        apply(&b, a, Activate, 1, NoSpace);
        apply(&b, a, Activate, 0, Corrupt);
        let txn = b.begin_write().unwrap();
        a.retain_members(&txn, &BTreeMap::from([(1u64, ()), (2, ())]))
            .unwrap();
        txn.commit().unwrap();
        let left: Vec<u64> = a.get(AlarmType::None).iter().map(|m| m.member_id).collect();
        assert_eq!(
            left,
            vec![0, 1],
            "member 3 left; the cluster-wide alarm stays"
        );
        let loaded = Alarms::load(&b.begin_read().unwrap(), None).unwrap();
        assert_eq!(
            loaded.get(AlarmType::None),
            a.get(AlarmType::None),
            "persisted"
        );
    }

    #[test]
    fn an_alarm_applied_after_its_member_left_is_not_raised() {
        let b = Backend::in_memory().unwrap();
        let a = &mut Alarms::default();
        let txn = b.begin_write().unwrap();
        a.retain_members(&txn, &BTreeMap::from([(1u64, ()), (2, ())]))
            .unwrap();
        txn.commit().unwrap();
        assert!(
            apply(&b, a, Activate, 3, Corrupt).is_empty(),
            "member 3 is not in the cluster"
        );
        assert!(!a.is_active(Corrupt));
        assert_eq!(apply(&b, a, Activate, 2, Corrupt).len(), 1, "a member's is");
        assert_eq!(
            apply(&b, a, Activate, 0, NoSpace).len(),
            1,
            "the cluster's is"
        );
        let loaded = Alarms::load(&b.begin_read().unwrap(), None).unwrap();
        assert_eq!(loaded.get(AlarmType::None).len(), 2, "only those persisted");
    }

    #[test]
    fn alarms_are_loaded_from_the_backend() {
        let b = Backend::in_memory().unwrap();
        let a = &mut Alarms::default();
        apply(&b, a, Activate, 3, NoSpace);
        apply(&b, a, Activate, 1, NoSpace);
        let loaded = Alarms::load(&b.begin_read().unwrap(), None).unwrap();
        assert_eq!(loaded.get(AlarmType::None), a.get(AlarmType::None));
        assert_eq!(loaded.get(AlarmType::None)[0].member_id, 1, "sorted");
    }
}
