//! The names vipd writes into ZooKeeper paths and records (the cluster,
//! node ids, services) and this machine's host name, the default node id.
//! Settings and coordination both check names here, so neither imports the
//! other for it.

/// A znode-safe name: non-empty, at most 128 of `[A-Za-z0-9._-]`, not `.`/`..`.
pub(crate) fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// This machine's host name (`unknown` if it has none).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| valid_name(s))
        .unwrap_or_else(|| "unknown".to_string())
}
