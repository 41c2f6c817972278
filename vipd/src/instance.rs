//! Named instances: several vipd on one host (one network namespace), each
//! with its own ownership mark on the addresses it adds, its own control
//! socket, and its own interfaces. The default instance keeps the mark,
//! socket and paths of a host with one vipd. Host-wide claims (the
//! instance's name, its mark, each interface it serves) are sockets bound
//! to abstract Unix addresses: those are per network namespace, as marks and
//! interfaces are, need no file or permission (a vipd run by the unit's
//! unprivileged user takes them too), and go with their process, so a
//! second claimant is refused with the name of the holder and a crashed
//! holder leaves nothing behind.

use std::{
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixDatagram},
    },
    path::{Path, PathBuf},
};

use tracing::debug;

/// The instance a host with one vipd runs.
pub const DEFAULT_INSTANCE: &str = "default";
/// The default instance's ownership mark (IFA_PROTO), as before instances.
pub(crate) const DEFAULT_MARK: u8 = crate::net::VIPD_ADDR_PROTO;
/// Marks of named instances: 128..=183. Clear of the kernel's own address
/// protocols (0-3), of the route protocol numbers routing daemons use
/// (zebra 11, bird 12, dhcp 16, keepalived 18, babel 42, openr 99, and
/// FRR's 186-195), and of the default instance's 118.
pub(crate) const NAMED_MARKS: std::ops::RangeInclusive<u8> = 128..=183;
/// Where the control sockets live.
pub(crate) const RUN_DIR: &str = "/run/vipd";
/// The default instance's control socket.
pub(crate) const DEFAULT_SOCKET: &str = "/run/vipd/vipd.sock";
/// The longest instance name (it is part of file names and the socket
/// path, which the kernel limits to 107 bytes).
const MAX_NAME: usize = 32;

/// Why an instance cannot start, or a claim cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "invalid instance name {name:?}: use 1 to {MAX_NAME} letters, digits, '-' and '_', starting with a letter or digit"
    )]
    InvalidName { name: String },
    #[error(
        "invalid instance mark {mark}: use 4 to 255 (0 to 3 are the kernel's own address protocols)"
    )]
    InvalidMark { mark: u8 },
    #[error("{what} is taken by vipd instance {holder} on this host: {hint}")]
    Taken {
        what: String,
        holder: String,
        hint: &'static str,
    },
    #[error("cannot take {what} ({path}): {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which vipd this is on its host: a name and the mark its addresses carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    name: String,
    mark: u8,
}

impl Instance {
    /// The instance `name`, its mark `mark` or the one derived from the
    /// name ([`mark_of`]).
    pub fn new(name: &str, mark: Option<u8>) -> Result<Self, InstanceError> {
        if !valid_instance_name(name) {
            return Err(InstanceError::InvalidName {
                name: name.to_string(),
            });
        }
        let mark = match mark {
            Some(m) if m < 4 => return Err(InstanceError::InvalidMark { mark: m }),
            Some(m) => m,
            None => mark_of(name),
        };
        Ok(Instance {
            name: name.to_string(),
            mark,
        })
    }

    /// The default instance, as a host with one vipd runs.
    pub fn default_instance() -> Self {
        Instance {
            name: DEFAULT_INSTANCE.to_string(),
            mark: DEFAULT_MARK,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The IFA_PROTO value on every address this instance adds.
    pub fn mark(&self) -> u8 {
        self.mark
    }

    pub(crate) fn is_default(&self) -> bool {
        self.name == DEFAULT_INSTANCE
    }

    /// The control socket when none is set: /run/vipd/vipd.sock for the
    /// default instance, /run/vipd/<name>.sock for another.
    pub fn default_socket(&self) -> PathBuf {
        if self.is_default() {
            PathBuf::from(DEFAULT_SOCKET)
        } else {
            Path::new(RUN_DIR).join(format!("{}.sock", self.name))
        }
    }

    /// Claims the instance's name and mark on this host (this network
    /// namespace) for as long as the returned claims live.
    pub(crate) fn claim(&self) -> Result<Vec<Claim>, InstanceError> {
        let name = Claim::take(
            self,
            &format!("instance-{}", self.name),
            &format!("instance name {:?}", self.name),
            "each vipd on a host needs an instance name of its own (--instance)",
        )?;
        let mark = Claim::take(
            self,
            &format!("mark-{}", self.mark),
            &format!("ownership mark {}", self.mark),
            "two instances' names map to the same mark: give this one another with --instance-mark",
        )?;
        Ok(vec![name, mark])
    }

    /// Claims interface `ifname` for this instance: one instance serves
    /// VIPs (and attaches its XDP program) on an interface.
    pub(crate) fn claim_interface(&self, ifname: &str) -> Result<Claim, InstanceError> {
        Claim::take(
            self,
            &format!("interface-{ifname}"),
            &format!("interface {ifname}"),
            "one instance serves the VIPs of an interface (one XDP program per interface)",
        )
    }
}

/// Whether `name` may name an instance.
pub(crate) fn valid_instance_name(name: &str) -> bool {
    (1..=MAX_NAME).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// The mark of instance `name`: the default instance keeps 118 (0x76);
/// another gets `128 + FNV-1a(name) mod 56`, so every host (and `vipctl
/// cleanup --instance NAME`) derives the same one without being told.
pub fn mark_of(name: &str) -> u8 {
    if name == DEFAULT_INSTANCE {
        return DEFAULT_MARK;
    }
    let hash = name.bytes().fold(0x811c_9dc5_u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    let span = u32::from(NAMED_MARKS.end() - NAMED_MARKS.start()) + 1;
    NAMED_MARKS.start() + u8::try_from(hash % span).expect("below 56")
}

/// A claim held on this host (network namespace): a socket bound to the
/// abstract address `vipd/<what>`, which no other socket can take while it
/// lives, and a second one whose address names the holder
/// (`vipd/<what>/held-by/<instance>/<pid>`) for the error a second
/// claimant reports. Released when dropped or when its process ends.
#[derive(Debug)]
pub(crate) struct Claim {
    _claim: UnixDatagram,
    _label: Option<UnixDatagram>,
}

/// Where claims' abstract addresses start.
const CLAIM_PREFIX: &str = "vipd/";

impl Claim {
    fn take(
        instance: &Instance,
        key: &str,
        what: &str,
        hint: &'static str,
    ) -> Result<Claim, InstanceError> {
        let name = format!("{CLAIM_PREFIX}{key}");
        let io = |source| InstanceError::Io {
            what: what.to_string(),
            path: PathBuf::from(format!("@{name}")),
            source,
        };
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).map_err(io)?;
        let claim = match UnixDatagram::bind_addr(&addr) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let listing = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
                return Err(InstanceError::Taken {
                    what: what.to_string(),
                    holder: describe_holder(&listing, &name),
                    hint,
                });
            }
            Err(e) => return Err(io(e)),
        };
        // The label only names the holder; a claim without one still holds.
        let label = format!("{name}/held-by/{}/{}", instance.name, std::process::id());
        let label = SocketAddr::from_abstract_name(label.as_bytes())
            .and_then(|a| UnixDatagram::bind_addr(&a))
            .ok();
        debug!(claim = %name, "claimed");
        Ok(Claim {
            _claim: claim,
            _label: label,
        })
    }
}

/// "\"b\" (pid 123)" from the holder's label for claim `name` in a
/// /proc/net/unix listing (abstract addresses show as `@...`).
fn describe_holder(listing: &str, name: &str) -> String {
    let prefix = format!("@{name}/held-by/");
    listing
        .lines()
        .filter_map(|l| l.split_whitespace().last()?.strip_prefix(&prefix))
        .find_map(|rest| {
            let (instance, pid) = rest.split_once('/')?;
            Some(format!("{instance:?} (pid {pid})"))
        })
        .unwrap_or_else(|| "(unknown)".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_instance_keeps_the_mark_and_socket() {
        let d = Instance::new(DEFAULT_INSTANCE, None).unwrap();
        assert_eq!(d, Instance::default_instance());
        assert_eq!(d.mark(), 0x76);
        assert_eq!(d.default_socket(), PathBuf::from("/run/vipd/vipd.sock"));
    }

    #[test]
    fn named_marks_are_deterministic_and_in_their_range() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1000 {
            let name = format!("inst{i}");
            let m = mark_of(&name);
            assert!(NAMED_MARKS.contains(&m), "{name}: {m}");
            assert_eq!(m, mark_of(&name));
            assert_ne!(m, DEFAULT_MARK);
            seen.insert(m);
        }
        // The hash spreads over the whole range.
        assert_eq!(seen.len(), NAMED_MARKS.len());
        let b = Instance::new("b", None).unwrap();
        assert_eq!(b.default_socket(), PathBuf::from("/run/vipd/b.sock"));
        assert_eq!(Instance::new("b", Some(200)).unwrap().mark(), 200);
    }

    #[test]
    fn bad_names_and_marks_are_refused_naming_themselves() {
        for bad in ["", "a/b", "../x", "-x", "a b", "a.b", &"x".repeat(33), "é"] {
            let e = Instance::new(bad, None).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
        for ok in ["b", "test-1", "prod_2", &"x".repeat(32)] {
            Instance::new(ok, None).unwrap();
        }
        let e = Instance::new("b", Some(2)).unwrap_err().to_string();
        assert!(e.contains("mark 2"), "{e}");
    }

    #[test]
    fn holders_are_described() {
        let listing = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 12345 @vipd/mark-130\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 12346 @vipd/mark-130/held-by/a/77\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 12347 /run/vipd/a.sock\n";
        assert_eq!(describe_holder(listing, "vipd/mark-130"), "\"a\" (pid 77)");
        assert_eq!(describe_holder(listing, "vipd/mark-131"), "(unknown)");
        assert_eq!(describe_holder("", "vipd/mark-130"), "(unknown)");
    }

    #[test]
    fn a_claim_is_refused_to_a_second_claimant_naming_the_first() {
        // Abstract addresses need no privilege; a key unique to this run.
        let key = format!(
            "test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        );
        let a = Instance::new("a", None).unwrap();
        let b = Instance::new("b", None).unwrap();
        let held = Claim::take(&a, &key, "the thing", "hint").unwrap();
        let e = Claim::take(&b, &key, "the thing", "hint")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the thing is taken by vipd instance \"a\""),
            "{e}"
        );
        drop(held);
        Claim::take(&b, &key, "the thing", "hint").unwrap();
    }
}
