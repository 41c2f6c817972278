//! The per-interface sysctls vipd reads and writes under /proc/sys/net, in
//! the caller's network namespace: `promote_secondaries` (written before
//! a subnet's primary VIP is removed) and IPv6 `forwarding` (read for the
//! Router flag of Neighbor Advertisements).

use std::path::PathBuf;

use tracing::{debug, instrument};

use super::netlink::NetError;

/// Writes `/proc/sys/net/ipv4/conf/<ifname>/promote_secondaries = 1`, so that
/// removing a subnet's primary address promotes a secondary instead of
/// deleting all of them (docs/DESIGN.md, facts). Affects the caller's network namespace.
#[instrument(err)]
pub fn enable_promote_secondaries(ifname: &str) -> Result<(), NetError> {
    let path = conf_path("ipv4", ifname, "promote_secondaries")?;
    std::fs::write(&path, b"1").map_err(|source| NetError::Sysctl { path, source })?;
    debug!(ifname, "promote_secondaries enabled");
    Ok(())
}

/// Whether the interface forwards IPv6 (`net.ipv6.conf.<ifname>.forwarding`
/// of the caller's namespace): then its advertisements carry the Router
/// flag, so hosts that use it as a router keep doing so.
pub(crate) fn forwarding(ifname: &str) -> Result<bool, NetError> {
    let path = conf_path("ipv6", ifname, "forwarding")?;
    let text =
        std::fs::read_to_string(&path).map_err(|source| NetError::SysctlRead { path, source })?;
    Ok(text.trim() != "0")
}

/// `/proc/sys/net/<family>/conf/<ifname>/<key>`, for a name that can only
/// be one interface's: a name with a slash, or `.`/`..`, would reach
/// another file.
fn conf_path(family: &str, ifname: &str, key: &str) -> Result<PathBuf, NetError> {
    if ifname.is_empty()
        || ifname.len() > 15
        || ifname == "."
        || ifname == ".."
        || ifname.contains(['/', '\0'])
    {
        return Err(NetError::InvalidInterfaceName {
            ifname: ifname.to_string(),
        });
    }
    Ok(PathBuf::from(format!(
        "/proc/sys/net/{family}/conf/{ifname}/{key}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_interface_names_never_reach_the_filesystem() {
        for name in ["", ".", "..", "../all", "a/b", "a\0b", "sixteen-chars-xx"] {
            assert!(
                matches!(
                    enable_promote_secondaries(name),
                    Err(NetError::InvalidInterfaceName { .. })
                ),
                "{name:?}"
            );
            assert!(
                matches!(forwarding(name), Err(NetError::InvalidInterfaceName { .. })),
                "{name:?}"
            );
        }
    }

    #[test]
    fn a_missing_interface_names_the_path() {
        let e = forwarding("no-such-if0").unwrap_err();
        assert!(
            e.to_string()
                .contains("/proc/sys/net/ipv6/conf/no-such-if0/forwarding"),
            "{e}"
        );
    }
}
