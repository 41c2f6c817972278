//! What the driver says about an interface: its name and its statistics,
//! through the ethtool ioctl (SIOCETHTOOL) on a socket of vipd's network
//! namespace (veth has no device directory in sysfs, and sysfs may belong to
//! another namespace); and the interface's transmit count from
//! /proc/net/dev (per namespace too).

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
const ETHTOOL_GSTRINGS: u32 = 0x0000_001b;
const ETHTOOL_GSTATS: u32 = 0x0000_001d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
const IFNAMSIZ: usize = 16;

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes).
#[repr(C)]
struct IfReq {
    name: [u8; IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// `struct ethtool_drvinfo`.
#[repr(C)]
struct DrvInfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

/// A socket to ask the kernel about interfaces of this namespace.
#[derive(Debug)]
pub(crate) struct Ethtool {
    fd: OwnedFd,
}

impl Ethtool {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(Ethtool {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// SIOCETHTOOL on `ifname` with `data` as the command buffer.
    ///
    /// # Safety
    /// `data` must point to a buffer the command may write in full: the
    /// kernel sizes GSTRINGS and GSTATS answers by its own count.
    unsafe fn ioctl(&self, ifname: &str, data: *mut libc::c_void) -> io::Result<()> {
        let bytes = ifname.as_bytes();
        if bytes.is_empty() || bytes.len() >= IFNAMSIZ || bytes.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid interface name {ifname:?}"),
            ));
        }
        let mut req = IfReq {
            name: [0; IFNAMSIZ],
            data,
            _pad: [0; 16],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: req is a valid ifreq; the caller vouches for `data`.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), SIOCETHTOOL, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn drvinfo(&self, ifname: &str) -> io::Result<DrvInfo> {
        // SAFETY: all-zero is a valid DrvInfo.
        let mut info: DrvInfo = unsafe { std::mem::zeroed() };
        info.cmd = ETHTOOL_GDRVINFO;
        // SAFETY: GDRVINFO writes one struct ethtool_drvinfo.
        unsafe { self.ioctl(ifname, (&raw mut info).cast())? };
        Ok(info)
    }

    /// The driver's name (`veth`, `mlx5_core`, `virtio_net`, ...).
    pub(crate) fn driver(&self, ifname: &str) -> io::Result<String> {
        let info = self.drvinfo(ifname)?;
        let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
        Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
    }

    /// Room for `n` entries plus growth between asking the count and
    /// asking the data (the queue count can change in between).
    fn room(n: u32) -> usize {
        let n = n as usize;
        n + n.max(64)
    }

    /// The names of the driver's statistics, in the order `stats` returns
    /// their values.
    pub(crate) fn stat_names(&self, ifname: &str) -> io::Result<Vec<String>> {
        let n = self.drvinfo(ifname)?.n_stats;
        let room = Self::room(n);
        let mut buf = vec![0u8; 12 + room * ETH_GSTRING_LEN];
        buf[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
        buf[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
        buf[8..12].copy_from_slice(&n.to_ne_bytes());
        // SAFETY: the buffer holds the header and `room` strings.
        unsafe { self.ioctl(ifname, buf.as_mut_ptr().cast())? };
        let len = u32::from_ne_bytes(buf[8..12].try_into().expect("4 bytes")) as usize;
        if len > room {
            return Err(io::Error::other(format!(
                "{ifname}: the driver's statistics grew from {n} to {len} names"
            )));
        }
        Ok(buf[12..12 + len * ETH_GSTRING_LEN]
            .chunks_exact(ETH_GSTRING_LEN)
            .map(|raw| {
                let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
                String::from_utf8_lossy(&raw[..end]).into_owned()
            })
            .collect())
    }

    /// The values of the driver's statistics.
    pub(crate) fn stats(&self, ifname: &str) -> io::Result<Vec<u64>> {
        let n = self.drvinfo(ifname)?.n_stats;
        let room = Self::room(n);
        // u64 words: the header (cmd, n_stats) fills the first.
        let mut buf = vec![0u64; 1 + room];
        let mut header = [0u8; 8];
        header[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
        header[4..].copy_from_slice(&n.to_ne_bytes());
        buf[0] = u64::from_ne_bytes(header);
        // SAFETY: the buffer holds the header and `room` values.
        unsafe { self.ioctl(ifname, buf.as_mut_ptr().cast())? };
        let header = buf[0].to_ne_bytes();
        let len = u32::from_ne_bytes(header[4..8].try_into().expect("4 bytes")) as usize;
        if len > room {
            return Err(io::Error::other(format!(
                "{ifname}: the driver's statistics grew from {n} to {len} values"
            )));
        }
        buf.truncate(1 + len);
        buf.remove(0);
        Ok(buf)
    }
}

/// Which of a driver's statistics tell whether XDP_TX frames leave.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct XdpTxCounters {
    /// Names holding `xdp_tx` and `err`, `drop` or `full`: frames the
    /// driver could not send (veth `rx_queue_0_xdp_tx_errors`, mlx5
    /// `rx_xdp_tx_err` / `rx_xdp_tx_full`, virtio_net `..._xdp_tx_drops`).
    /// Where a driver shows totals and per-queue copies, totals only.
    errors: Vec<usize>,
    /// veth only: `rx_queue_N_xdp_tx`, frames it put in the peer's queue.
    accepted: Vec<usize>,
    /// How many values the names came with.
    len: usize,
}

impl XdpTxCounters {
    pub(crate) fn pick(driver: Option<&str>, names: &[String]) -> Self {
        let lower: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
        let errors: Vec<usize> = lower
            .iter()
            .enumerate()
            .filter(|(_, n)| {
                n.contains("xdp_tx")
                    && (n.contains("err") || n.contains("drop") || n.contains("full"))
            })
            .map(|(i, _)| i)
            .collect();
        let totals: Vec<usize> = errors
            .iter()
            .copied()
            .filter(|i| !lower[*i].chars().any(|c| c.is_ascii_digit()))
            .collect();
        let errors = if totals.is_empty() { errors } else { totals };
        let accepted = if driver == Some("veth") {
            lower
                .iter()
                .enumerate()
                .filter(|(_, n)| n.starts_with("rx_queue_") && n.ends_with("_xdp_tx"))
                .map(|(i, _)| i)
                .collect()
        } else {
            Vec::new()
        };
        XdpTxCounters {
            errors,
            accepted,
            len: names.len(),
        }
    }

    /// Whether the driver counts frames it took (veth), so frames that
    /// never left can be told from the transmit count.
    pub(crate) fn counts_taken(&self) -> bool {
        !self.accepted.is_empty()
    }

    /// Whether `values` still match the names (same count).
    pub(crate) fn fits(&self, values: &[u64]) -> bool {
        values.len() == self.len
    }

    /// (errors, accepted) summed from `values`; `None` where the driver
    /// has no such counter.
    pub(crate) fn read(&self, values: &[u64]) -> (Option<u64>, Option<u64>) {
        let sum = |idx: &[usize]| {
            (!idx.is_empty()).then(|| {
                idx.iter()
                    .filter_map(|i| values.get(*i))
                    .fold(0u64, |a, v| a.wrapping_add(*v))
            })
        };
        (sum(&self.errors), sum(&self.accepted))
    }
}

/// Transmitted packets of `ifname` from /proc/net/dev (this namespace's).
pub(crate) fn tx_packets(ifname: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string("/proc/net/dev")?;
    parse_tx_packets(&text, ifname).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{ifname} is not in /proc/net/dev"),
        )
    })
}

fn parse_tx_packets(text: &str, ifname: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, fields) = line.split_once(':')?;
        if name.trim() != ifname {
            return None;
        }
        // Receive: bytes packets errs drop fifo frame compressed multicast;
        // transmit: bytes packets ...
        fields.split_whitespace().nth(9)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn veth_counters_are_picked_by_name() {
        // `ethtool -S` of a veth on kernel 6.18.
        let n = names(&[
            "peer_ifindex",
            "rx_queue_0_xdp_packets",
            "rx_queue_0_xdp_bytes",
            "rx_queue_0_drops",
            "rx_queue_0_xdp_redirect",
            "rx_queue_0_xdp_drops",
            "rx_queue_0_xdp_tx",
            "rx_queue_0_xdp_tx_errors",
            "tx_queue_0_xdp_xmit",
            "tx_queue_0_xdp_xmit_errors",
        ]);
        let c = XdpTxCounters::pick(Some("veth"), &n);
        let values = [2, 17, 724, 0, 0, 0, 9, 3, 0, 0];
        assert!(c.fits(&values));
        assert_eq!(c.read(&values), (Some(3), Some(9)));
        // Redirect errors (tx_queue_N_xdp_xmit_errors) are not ours.
        assert!(!c.fits(&values[..9]));
    }

    #[test]
    fn totals_win_over_per_queue_copies() {
        let n = names(&[
            "rx_xdp_tx_xmit",
            "rx_xdp_tx_full",
            "rx_xdp_tx_err",
            "rx0_xdp_tx_full",
            "rx0_xdp_tx_err",
            "rx1_xdp_tx_err",
        ]);
        let c = XdpTxCounters::pick(Some("mlx5_core"), &n);
        assert_eq!(c.read(&[10, 2, 3, 1, 1, 2]), (Some(5), None));
    }

    #[test]
    fn a_driver_without_xdp_counters_has_none() {
        let c = XdpTxCounters::pick(Some("e1000"), &names(&["rx_packets", "tx_packets"]));
        assert_eq!(c.read(&[1, 2]), (None, None));
    }

    #[test]
    fn tx_packets_come_from_the_interface_line() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n  \
eth0:    1450      26    0    0    0     0          0         0     1704      30    0    3    0     0       0          0\n";
        assert_eq!(parse_tx_packets(text, "eth0"), Some(30));
        assert_eq!(parse_tx_packets(text, "lo"), Some(0));
        assert_eq!(parse_tx_packets(text, "eth1"), None);
    }
}
