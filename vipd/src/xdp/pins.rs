//! The fence's pinned state: the held and counters maps and the XDP and
//! TCX links, pinned under `<bpf dir>/layout-<N>` on a bpffs, so the kernel
//! keeps fencing a VIP at its lease end after the agent died. A restarting
//! agent copies the entries into its own maps and moves the pinned links
//! to its programs (`bpf_link_update`: no moment without a program); a
//! graceful stop and `vipctl cleanup` remove it all.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::links::{FdLink, LinkError, PinnedLink};
use tracing::{debug, info, warn};
use vipd_common::MAPS_LAYOUT;

use super::{AttachedMode, XdpError};

/// `statfs` type of a BPF file system.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Where the pins go when `--bpf-dir` is not given: under the host's usual
/// bpffs mount, if there is one.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Prefix of the directory of one maps layout.
const LAYOUT_PREFIX: &str = "layout-";

/// The directory of this build's pinned state, `<root>/layout-<N>`.
#[derive(Clone, Debug)]
pub struct BpfDir {
    root: PathBuf,
    dir: PathBuf,
}

/// A link of this process: attached while it lives ([`HeldLink::Process`]),
/// or pinned, attached until its pin is removed ([`HeldLink::Pinned`]).
pub(super) enum HeldLink<L> {
    Process(L),
    Pinned(PinnedLink),
}

impl<L> HeldLink<L>
where
    L: TryInto<FdLink, Error = LinkError>,
{
    /// Takes a link just attached: pinned at `path` when there is a bpf
    /// dir. A link that cannot be pinned is detached; the caller attaches
    /// again without pinning.
    pub(super) fn pin(link: L, path: Option<PathBuf>) -> Result<Self, XdpError> {
        let Some(path) = path else {
            return Ok(HeldLink::Process(link));
        };
        // A stale pin of a link that went (its interface deleted and the
        // index reused) is in the way.
        let _ = std::fs::remove_file(&path);
        let fd: FdLink = link.try_into().map_err(|e| XdpError::Adopt {
            path: path.clone(),
            reason: format!("not a bpf link: {e}"),
        })?;
        fd.pin(&path)
            .map(HeldLink::Pinned)
            .map_err(|source| XdpError::Pin { path, source })
    }
}

impl<L> HeldLink<L> {
    /// Detaches: a pinned link's pin is removed first.
    pub(super) fn release(self) {
        match self {
            HeldLink::Process(l) => drop(l),
            HeldLink::Pinned(p) => {
                if let Err(e) = p.unpin() {
                    warn!(error = %e, "cannot remove a link's pin: the program stays attached until vipctl cleanup");
                }
            }
        }
    }

    pub(super) fn is_pinned(&self) -> bool {
        matches!(self, HeldLink::Pinned(_))
    }
}

/// A pinned link found in the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PinnedEntry {
    Xdp {
        ifindex: u32,
        mode: AttachedMode,
        path: PathBuf,
    },
    Egress {
        ifindex: u32,
        path: PathBuf,
    },
}

impl BpfDir {
    /// Opens (creating it if needed) the pinned state's directory under
    /// `root`, which must be on a bpffs. A directory of another maps layout
    /// under `root` is refused: its entries cannot be read as this build's.
    pub fn open(root: &Path) -> Result<Self, XdpError> {
        let existing = nearest_existing(root);
        match is_bpffs(&existing) {
            Ok(true) => {}
            Ok(false) => {
                return Err(XdpError::NotBpffs {
                    dir: root.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(XdpError::BpfDir {
                    dir: existing,
                    source,
                });
            }
        }
        let io_err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| XdpError::BpfDir { dir, source }
        };
        std::fs::create_dir_all(root).map_err(io_err(root))?;
        for entry in std::fs::read_dir(root).map_err(io_err(root))? {
            let entry = entry.map_err(io_err(root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(version) = name.strip_prefix(LAYOUT_PREFIX)
                && version != MAPS_LAYOUT.to_string()
            {
                return Err(XdpError::OtherLayout {
                    dir: entry.path(),
                    want: MAPS_LAYOUT,
                });
            }
        }
        let dir = root.join(format!("{LAYOUT_PREFIX}{MAPS_LAYOUT}"));
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        Ok(BpfDir {
            root: root.to_path_buf(),
            dir,
        })
    }

    /// The directory given (`--bpf-dir`).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of this maps layout, where the pins are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub(super) fn xdp_link(&self, ifindex: u32, mode: AttachedMode) -> PathBuf {
        self.dir.join(format!("xdp-{ifindex}-{mode}"))
    }

    pub(super) fn egress_link(&self, ifindex: u32) -> PathBuf {
        self.dir.join(format!("egress-{ifindex}"))
    }

    /// The links pinned by an earlier run, in name order.
    pub(super) fn pinned_links(&self) -> Vec<PinnedEntry> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found: Vec<PinnedEntry> = entries
            .filter_map(Result::ok)
            .filter_map(|e| parse_link(&e.file_name().to_string_lossy(), e.path()))
            .collect();
        found.sort_by(|a, b| a.path().cmp(b.path()));
        found
    }

    /// Removes every pin and the directories (the root only when empty
    /// and not a mount point). Returns what was removed.
    pub(super) fn remove_all(&self) -> Vec<PathBuf> {
        remove_layouts(&self.root)
    }
}

impl PinnedEntry {
    pub(super) fn path(&self) -> &Path {
        match self {
            PinnedEntry::Xdp { path, .. } | PinnedEntry::Egress { path, .. } => path,
        }
    }
}

fn parse_link(name: &str, path: PathBuf) -> Option<PinnedEntry> {
    if let Some(rest) = name.strip_prefix("xdp-") {
        let (ifindex, mode) = rest.split_once('-')?;
        let mode = match mode {
            "native" => AttachedMode::Native,
            "generic" => AttachedMode::Generic,
            _ => return None,
        };
        return Some(PinnedEntry::Xdp {
            ifindex: ifindex.parse().ok()?,
            mode,
            path,
        });
    }
    let ifindex = name.strip_prefix("egress-")?.parse().ok()?;
    Some(PinnedEntry::Egress { ifindex, path })
}

/// The closest ancestor of `path` (itself included) that exists.
fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("."),
        }
    }
}

/// Whether `path` is on a BPF file system.
pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statfs is plain data, valid all zeroes.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a struct of the right type.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type == BPF_FS_MAGIC)
}

/// The pinned state's directory for `instance` when `--bpf-dir` is not
/// given: /sys/fs/bpf/vipd/<instance> if a bpffs is mounted at
/// /sys/fs/bpf, else none.
pub fn default_bpf_dir(instance: &str) -> Option<PathBuf> {
    is_bpffs(Path::new(DEFAULT_BPFFS))
        .ok()
        .filter(|b| *b)
        .map(|_| Path::new(DEFAULT_BPFFS).join("vipd").join(instance))
}

/// The pinned state vipd uses: `--bpf-dir` when given (which must be on a
/// bpffs), else [`default_bpf_dir`]; none, with a warning, when there is
/// no bpffs: the fence then dies with the agent.
pub fn bpf_dir_for(setting: Option<&Path>, instance: &str) -> Result<Option<BpfDir>, XdpError> {
    if let Some(dir) = setting {
        return BpfDir::open(dir).map(Some);
    }
    let Some(dir) = default_bpf_dir(instance) else {
        warn!(
            bpffs = DEFAULT_BPFFS,
            "no bpffs at {DEFAULT_BPFFS} and no --bpf-dir: the fence is not pinned, a killed vipd's VIPs are bounded by their address lifetime alone"
        );
        return Ok(None);
    };
    match BpfDir::open(&dir) {
        Ok(d) => Ok(Some(d)),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot use the default bpf dir: the fence is not pinned");
            Ok(None)
        }
    }
}

/// Removes the pinned state under `root` (every maps layout): unpinned,
/// links nobody else holds detach at once. `vipctl cleanup` after the
/// agent stopped. Returns the pins removed.
pub fn remove_pinned(root: &Path) -> Result<Vec<PathBuf>, XdpError> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    match is_bpffs(root) {
        Ok(true) => Ok(remove_layouts(root)),
        Ok(false) => Err(XdpError::NotBpffs {
            dir: root.to_path_buf(),
        }),
        Err(source) => Err(XdpError::BpfDir {
            dir: root.to_path_buf(),
            source,
        }),
    }
}

fn remove_layouts(root: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(root) else {
        return removed;
    };
    for layout in entries.filter_map(Result::ok) {
        if !layout
            .file_name()
            .to_string_lossy()
            .starts_with(LAYOUT_PREFIX)
        {
            continue;
        }
        if let Ok(pins) = std::fs::read_dir(layout.path()) {
            // Links first: the programs leave the interfaces before their
            // maps' pins go.
            let mut pins: Vec<PathBuf> = pins.filter_map(Result::ok).map(|e| e.path()).collect();
            pins.sort_by_key(|p| !is_link_name(p));
            for pin in pins {
                match std::fs::remove_file(&pin) {
                    Ok(()) => removed.push(pin),
                    Err(e) => warn!(pin = %pin.display(), error = %e, "cannot remove a pin"),
                }
            }
        }
        if let Err(e) = std::fs::remove_dir(layout.path()) {
            warn!(dir = %layout.path().display(), error = %e, "cannot remove the pinned state's directory");
        }
    }
    // The root goes only if it is empty; a mount point stays (EBUSY).
    match std::fs::remove_dir(root) {
        Ok(()) => debug!(dir = %root.display(), "bpf dir removed"),
        Err(e) => debug!(dir = %root.display(), error = %e, "bpf dir kept"),
    }
    if !removed.is_empty() {
        info!(dir = %root.display(), pins = removed.len(), "pinned fence removed");
    }
    removed
}

fn is_link_name(p: &Path) -> bool {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .is_some_and(|n| n.starts_with("xdp-") || n.starts_with("egress-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_are_read_back_by_their_names() {
        let p = PathBuf::from("/x");
        assert_eq!(
            parse_link("xdp-7-generic", p.clone()),
            Some(PinnedEntry::Xdp {
                ifindex: 7,
                mode: AttachedMode::Generic,
                path: p.clone()
            })
        );
        assert_eq!(
            parse_link("xdp-12-native", p.clone()),
            Some(PinnedEntry::Xdp {
                ifindex: 12,
                mode: AttachedMode::Native,
                path: p.clone()
            })
        );
        assert_eq!(
            parse_link("egress-3", p.clone()),
            Some(PinnedEntry::Egress {
                ifindex: 3,
                path: p.clone()
            })
        );
        for other in [
            "HELD_VIPS",
            "xdp-7",
            "xdp-x-native",
            "xdp-7-offload",
            "egress-",
            "egress-a",
        ] {
            assert_eq!(parse_link(other, p.clone()), None, "{other}");
        }
    }

    #[test]
    fn a_directory_off_bpffs_is_refused_and_left_untouched() {
        let base = std::env::temp_dir().join(format!("vipd-pins-{}", std::process::id()));
        let root = base.join("a/b");
        let e = BpfDir::open(&root).expect_err("tmp is no bpffs");
        assert!(matches!(e, XdpError::NotBpffs { .. }), "{e}");
        assert!(e.to_string().contains(&root.display().to_string()), "{e}");
        assert!(!base.exists(), "nothing created");
    }
}
