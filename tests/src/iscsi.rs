//! iSCSI sessions as the handoff sees them: the connections a node's tgtd
//! still keeps.

use crate::services::Target;

/// The initiators' addresses of the connections `target` keeps (`tgtadm
/// --op show --mode target`: "IP Address: ..." under each I_T nexus).
pub fn target_connections(target: &Target) -> Vec<String> {
    target
        .tgtadm_ok(&["--lld", "iscsi", "--op", "show", "--mode", "target"])
        .lines()
        .filter_map(|l| l.trim().strip_prefix("IP Address: "))
        .map(str::to_string)
        .collect()
}
