//! The load of a pool as the policy measures it (the members that count,
//! their utilization and capacity) and the server counts it recommends.

use super::{Health, Member, MemberState, ScalingPolicy, plural};

/// The members that count as load: allocated, monitored, not down, with a
/// utilization and a capacity.
#[expect(
    clippy::struct_field_names,
    reason = "a Load's load is its figure in cores, beside its capacity"
)]
pub(super) struct Load<'a> {
    pub(super) members: Vec<(&'a Member, f64)>,
    pub(super) load: f64,
    pub(super) capacity: f64,
}

impl<'a> Load<'a> {
    pub(super) fn of(members: &[&'a Member]) -> Self {
        let members: Vec<(&Member, f64)> = members
            .iter()
            .filter(|m| {
                m.state == MemberState::Allocated
                    && m.monitored
                    && m.health != Health::Down
                    && m.capacity.is_finite()
                    && m.capacity > 0.0
            })
            .filter_map(|m| {
                let u = m.utilization.filter(|u| u.is_finite())?;
                Some((*m, u.max(0.0)))
            })
            .collect();
        let load = members.iter().map(|(m, u)| u * m.capacity).sum();
        let capacity = members.iter().map(|(m, _)| m.capacity).sum();
        Self {
            members,
            load,
            capacity,
        }
    }

    pub(super) fn n(&self) -> u32 {
        u32::try_from(self.members.len()).unwrap_or(u32::MAX)
    }

    pub(super) fn average(&self) -> f64 {
        self.load / self.capacity
    }

    pub(super) fn ratio(&self, policy: &ScalingPolicy) -> f64 {
        self.average() / policy.target()
    }

    pub(super) fn utilization(&self, name: &str) -> Option<f64> {
        self.members
            .iter()
            .find(|(m, _)| m.name == name)
            .map(|&(_, u)| u)
    }

    /// Members at or above `upper`, hottest first (ties by name).
    pub(super) fn hot(&self, upper: f64) -> Vec<(&'a Member, f64)> {
        let mut hot: Vec<_> = self
            .members
            .iter()
            .copied()
            .filter(|&(_, u)| u >= upper)
            .collect();
        hot.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.name.cmp(&b.0.name)));
        hot
    }

    pub(super) fn figures(&self) -> String {
        format!(
            "load {:.2} cores over {:.2} on {} {}",
            self.load,
            self.capacity,
            self.n(),
            plural(self.members.len())
        )
    }
}

/// The scale-in recommendation: `max(min_servers, ceil(n × avg / target))`
/// below `lower`, the current count otherwise.
pub(super) fn scale_in_desired(policy: &ScalingPolicy, load: &Load) -> u32 {
    let n = load.n();
    if load.average() < policy.lower {
        policy
            .min_servers
            .max(servers_for(f64::from(n) * load.ratio(policy)))
            .min(n)
    } else {
        n
    }
}

/// The pool size the policy wants: `recommended` servers in place of the
/// `counted` ones that report their load, plus the others that serve
/// without counting (an unmonitored member keeps its place), within
/// `min_servers..=max_servers`. With no load reported (`None`) it wants
/// the pool as it is, at least `min_servers`.
pub(super) fn desired_pool(
    policy: &ScalingPolicy,
    recommended: Option<u32>,
    counted: u32,
    serving: u32,
) -> u32 {
    let others = serving.saturating_sub(counted);
    recommended
        .map_or(serving, |r| r.saturating_add(others))
        .min(policy.max_servers)
        .max(policy.min_servers)
}

/// `ceil(x)` as a server count, forgiving float noise (2.0000000001 is 2).
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to 0..=u32::MAX first (NaN becomes 0)"
)]
pub(super) fn servers_for(x: f64) -> u32 {
    (x - 1e-9).ceil().clamp(0.0, f64::from(u32::MAX)) as u32
}
