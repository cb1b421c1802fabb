//! Protocol timings and their scaling with cluster size (memberlist/Lifeguard defaults, SPEC §5).

use std::time::Duration;

/// Gossip protocol settings. `Default` is the LAN profile.
#[derive(Debug, Clone, PartialEq)]
pub struct GossipConfig {
    /// Time between two probes of this node (scaled up by the local health multiplier).
    pub probe_interval: Duration,
    /// Time to wait for a direct ack before asking others (scaled by local health too).
    pub probe_timeout: Duration,
    /// Number of members asked to probe indirectly.
    pub indirect_checks: usize,
    /// Suspicion multiplier: minimum suspicion timeout = mult × log10(N+1) × probe interval.
    /// 2.2 rather than memberlist's 4: with Lifeguard's confirmations and the stale-news
    /// correction it keeps 0 false deaths at 10% loss while meeting the detection targets of
    /// SPEC §14 (see BENCHMARKS.md).
    pub suspicion_mult: f64,
    /// Independent confirmations that bring a suspicion down to its minimum timeout (Lifeguard K).
    pub suspicion_confirmations: usize,
    /// The maximum suspicion timeout is this many times the minimum (Lifeguard).
    pub suspicion_max_timeout_mult: f64,
    /// Maximum local health multiplier (0..=max).
    pub max_local_health: u32,
    /// Time between gossip rounds.
    pub gossip_interval: Duration,
    /// Members sent to in each gossip round.
    pub gossip_nodes: usize,
    /// Each broadcast is sent mult × ceil(log10(N+1)) times.
    pub retransmit_mult: u32,
    /// Full state exchange interval (scaled up for clusters over 32 nodes).
    pub push_pull_interval: Duration,
    /// Time dead/left members are kept as tombstones.
    pub tombstone_ttl: Duration,
    /// How long user events are remembered (dedup and late joiners).
    pub event_ttl: Duration,
    /// Most membership-history entries kept.
    pub history_len: usize,
    /// Largest datagram payload (before encryption overhead).
    pub max_datagram: usize,
    /// Most members known at once, tombstones included (this node excluded). When the table
    /// is full a newcomer takes the place of the oldest tombstone, or is refused and counted:
    /// a flood of invented members cannot take memory or CPU without bound.
    pub max_members: usize,
    /// Most new members one peer (by IP address) may introduce per `new_members_window`; the
    /// rest are refused and counted (the state of the seed a node joins through is exempt).
    pub max_new_members_per_peer: usize,
    /// The window of `max_new_members_per_peer`.
    pub new_members_window: Duration,
    /// Never answer a datagram with a larger one (set when the cluster has no key: senders
    /// are not authenticated, and a forged source address must not turn this agent into an
    /// amplifier). Acks then carry less piggybacked news.
    pub cap_replies: bool,
    /// The zone tree: which members this node keeps, probes and gossips with (see
    /// [`crate::zones`]). The node's own zone and proxy flag are in its record.
    pub zones: crate::ZoneTree,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 2.2,
            suspicion_confirmations: 2,
            suspicion_max_timeout_mult: 6.0,
            max_local_health: 7,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            retransmit_mult: 4,
            push_pull_interval: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(24 * 3600),
            event_ttl: Duration::from_secs(300),
            history_len: 1000,
            max_datagram: crate::codec::MAX_DATAGRAM - crate::OVERHEAD_RESERVE,
            max_members: 20_000,
            max_new_members_per_peer: 1000,
            new_members_window: Duration::from_secs(10),
            cap_replies: false,
            zones: crate::ZoneTree::default(),
        }
    }
}

impl GossipConfig {
    /// Minimum suspicion timeout for a cluster of `n` members.
    pub fn suspicion_min(&self, n: usize) -> Duration {
        let scale = ((n.max(1) + 1) as f64).log10();
        self.probe_interval.mul_f64(self.suspicion_mult * scale)
    }

    /// Maximum suspicion timeout (no confirmations).
    pub fn suspicion_max(&self, n: usize) -> Duration {
        self.suspicion_min(n)
            .mul_f64(self.suspicion_max_timeout_mult)
    }

    /// Lifeguard: the timeout shrinks from max towards min as independent confirmations arrive;
    /// `expected` confirmations bring it down to min.
    pub fn suspicion_timeout(&self, n: usize, confirmations: usize) -> Duration {
        let min = self.suspicion_min(n).as_secs_f64();
        let max = self.suspicion_max(n).as_secs_f64();
        let expected = self.expected_confirmations(n) as f64;
        let frac = if expected <= 0.0 {
            1.0
        } else {
            ((confirmations as f64 + 1.0).ln() / (expected + 1.0).ln()).min(1.0)
        };
        Duration::from_secs_f64((max - frac * (max - min)).max(min))
    }

    /// Confirmations that bring a suspicion to its minimum timeout: K, or fewer in a cluster
    /// too small to have K other accusers.
    pub fn expected_confirmations(&self, n: usize) -> usize {
        self.suspicion_confirmations.min(n.saturating_sub(2))
    }

    /// How many times each broadcast is transmitted.
    pub fn retransmit_limit(&self, n: usize) -> u32 {
        let scale = ((n + 1) as f64).log10().ceil().max(1.0) as u32;
        self.retransmit_mult * scale
    }

    /// Push-pull interval scaled with cluster size (memberlist: ×(log2 N − 4) above 32 nodes).
    pub fn push_pull_interval_for(&self, n: usize) -> Duration {
        if n <= 32 {
            return self.push_pull_interval;
        }
        let mult = ((n as f64).log2() - 32f64.log2()).ceil() + 1.0;
        self.push_pull_interval.mul_f64(mult)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspicion_scales_with_size_and_shrinks_with_confirmations() {
        let c = GossipConfig::default();
        let min100 = c.suspicion_min(100).as_secs_f64();
        assert!((min100 - 2.2 * 101f64.log10()).abs() < 1e-9);
        assert!(c.suspicion_min(1000) > c.suspicion_min(100));
        let none = c.suspicion_timeout(100, 0);
        let one = c.suspicion_timeout(100, 1);
        let all = c.suspicion_timeout(100, 2);
        assert_eq!(none, c.suspicion_max(100));
        assert!(one < none && all < one);
        assert_eq!(all, c.suspicion_min(100));
        assert_eq!(c.suspicion_timeout(100, 50), c.suspicion_min(100));
    }

    #[test]
    fn retransmits_and_push_pull_scale() {
        let c = GossipConfig::default();
        assert_eq!(c.retransmit_limit(1), 4);
        assert_eq!(c.retransmit_limit(9), 4);
        assert_eq!(c.retransmit_limit(10), 8);
        assert_eq!(c.retransmit_limit(1000), 16);
        assert_eq!(c.push_pull_interval_for(20), Duration::from_secs(30));
        assert_eq!(c.push_pull_interval_for(64), Duration::from_secs(60));
        assert!(c.push_pull_interval_for(1000) > Duration::from_secs(150));
    }
}
