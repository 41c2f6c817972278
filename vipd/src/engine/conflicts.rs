//! Foreign claims of our VIPs, from the XDP program: counted, logged at most
//! once per burst, and answered with an announcement at most once a second
//! per VIP (two agents claiming one VIP must not start an ARP storm).

use std::time::{Duration, Instant};

use tracing::warn;

use super::{Engine, unix_ms};
use crate::{announce::Announcement, role::Role, vip::Vip, xdp::Conflict};

/// Conflict answers per VIP are at most this frequent, so two agents
/// claiming one VIP cannot start an ARP storm.
const CONFLICT_ANSWER_EVERY: Duration = Duration::from_secs(1);
/// One log line per burst of conflict events per VIP.
const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(5);

impl Engine {
    /// Another node claims `vip` from `mac` on `ifindex` (by ARP, or by
    /// NDP: an advertisement of our VIP, a DAD probe for it, a solicitation
    /// from it): count it, log it (rate-limited), and, if we lead, answer
    /// with an announcement, a gratuitous ARP or an unsolicited NA (at most
    /// one per VIP per [`CONFLICT_ANSWER_EVERY`]).
    pub(super) fn on_conflict(&mut self, claim: Conflict) {
        let Conflict { vip, ifindex, mac } = claim;
        let now = Instant::now();
        let mac = crate::net::format_mac(&mac);
        let ifname = self.link_name(ifindex);
        let st = self.conflicts.entry(vip).or_default();
        st.events += 1;
        st.last_mac = Some(mac.clone());
        st.last_interface = ifname.clone();
        st.last_unix_ms = Some(unix_ms());
        let events = st.events;
        let st = st.clone();
        self.status.send_modify(|s| {
            s.conflicts.insert(vip, st);
        });
        if self
            .last_conflict_log
            .get(&vip)
            .is_none_or(|t| now.duration_since(*t) >= CONFLICT_LOG_EVERY)
        {
            self.last_conflict_log.insert(vip, now);
            warn!(vip = %vip, foreign_mac = %mac, interface = ifname.as_deref().unwrap_or("?"),
                  events, "another node claims a VIP we hold; answering with an announcement");
        }
        if self.applied.role != Role::Leader {
            return;
        }
        if let Some(last) = self.last_conflict_answer.get(&vip)
            && now.duration_since(*last) < CONFLICT_ANSWER_EVERY
        {
            // Held back, not dropped: answered when the limit allows.
            let due = tokio::time::Instant::from_std(*last + CONFLICT_ANSWER_EVERY);
            self.pending_conflict_answers.entry(vip).or_insert(due);
            return;
        }
        self.answer_conflict(vip, now);
    }

    /// Answers the conflicts whose held-back answer is due.
    pub(super) fn answer_due_conflicts(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<Vip> = self
            .pending_conflict_answers
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(vip, _)| *vip)
            .collect();
        for vip in due {
            self.answer_conflict(vip, Instant::now());
        }
    }

    /// Announces `vip` again if we lead and hold it.
    fn answer_conflict(&mut self, vip: Vip, now: Instant) {
        self.pending_conflict_answers.remove(&vip);
        if self.applied.role != Role::Leader || !self.lease_valid() {
            return;
        }
        if let Some(p) = self.held.get(&vip)
            && let Some(mac) = self.link_mac(p.ifindex)
        {
            let ifindex = p.ifindex;
            self.last_conflict_answer.insert(vip, now);
            self.announcer
                .announce(vec![Announcement { vip, ifindex, mac }]);
        }
    }
}
