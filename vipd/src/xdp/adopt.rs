//! Adopting the links an earlier vipd pinned: each moves to this
//! process's program through `bpf_link_update`, an atomic replacement, so
//! an interface never is without a program while its VIPs are held or
//! fenced. A link whose interface is gone is unpinned.

use std::path::Path;

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::SchedClassifierLink,
    xdp::XdpLink,
};
use tracing::{info, warn};

use super::{
    AttachedMode, XdpError, XdpProgram,
    attach::Attachment,
    egress::EgressLink,
    mode::ModeReason,
    pins::{HeldLink, PinnedEntry},
};
use crate::config::XdpMode;

impl XdpProgram {
    /// Moves every link pinned in the bpf dir to this program (call it
    /// after [`XdpProgram::serve_as`], before attaching anything). Returns
    /// the links that could not be adopted; each was logged, and stays
    /// pinned with the old program until `vipctl cleanup`.
    pub fn adopt_pinned(&mut self) -> Vec<XdpError> {
        let Some(dir) = self.pins.clone() else {
            return Vec::new();
        };
        let mut errors = Vec::new();
        for entry in dir.pinned_links() {
            let (ifindex, path) = match &entry {
                PinnedEntry::Xdp { ifindex, path, .. } | PinnedEntry::Egress { ifindex, path } => {
                    (*ifindex, path.clone())
                }
            };
            let Some(ifname) = if_name(ifindex) else {
                // The interface went, and its links with it.
                let _ = std::fs::remove_file(&path);
                info!(pin = %path.display(), ifindex, "pinned link of a deleted interface removed");
                continue;
            };
            let adopted = match entry {
                PinnedEntry::Xdp { mode, .. } => self.adopt_xdp(&ifname, ifindex, mode, &path),
                PinnedEntry::Egress { .. } => self.adopt_egress(&ifname, ifindex, &path),
            };
            match adopted {
                Ok(()) => {
                    info!(ifname = %ifname, pin = %path.display(), "pinned link adopted")
                }
                Err(e) => {
                    warn!(ifname = %ifname, error = %e, "cannot adopt a pinned link");
                    errors.push(e);
                }
            }
        }
        errors
    }

    fn adopt_xdp(
        &mut self,
        ifname: &str,
        ifindex: u32,
        mode: AttachedMode,
        path: &Path,
    ) -> Result<(), XdpError> {
        let err = |reason: String| XdpError::Adopt {
            path: path.to_path_buf(),
            reason,
        };
        self.claim(ifname)?;
        let pinned = PinnedLink::from_pin(path).map_err(|e| err(e.to_string()))?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| err(e.to_string()))?;
        let program = self.program_mut()?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| err(e.to_string()))?;
        // The link is this program's now; its pin keeps it attached once
        // aya's handle is closed.
        drop(program.take_link(id).map_err(|e| err(e.to_string()))?);
        let pinned = PinnedLink::from_pin(path).map_err(|e| err(e.to_string()))?;
        let driver = self.driver(ifname);
        let watch = (mode == AttachedMode::Native)
            .then(|| self.start_watch(ifname, driver.as_deref(), ifindex))
            .flatten();
        self.attachments.insert(
            ifname.to_string(),
            Attachment {
                mode,
                link: HeldLink::Pinned(pinned),
                setting: XdpMode::Auto,
                driver,
                reason: ModeReason::Adopted,
                ifindex,
                watch,
            },
        );
        Ok(())
    }

    fn adopt_egress(&mut self, ifname: &str, ifindex: u32, path: &Path) -> Result<(), XdpError> {
        let err = |reason: String| XdpError::Adopt {
            path: path.to_path_buf(),
            reason,
        };
        let pinned = PinnedLink::from_pin(path).map_err(|e| err(e.to_string()))?;
        let link =
            SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| err(e.to_string()))?;
        let program = self.egress_mut()?;
        let id = program
            .attach_to_link(link)
            .map_err(|e| err(e.to_string()))?;
        drop(program.take_link(id).map_err(|e| err(e.to_string()))?);
        let pinned = PinnedLink::from_pin(path).map_err(|e| err(e.to_string()))?;
        self.egress_links.links.insert(
            ifindex,
            EgressLink {
                ifname: ifname.to_string(),
                link: HeldLink::Pinned(pinned),
            },
        );
        Ok(())
    }
}

/// The name of interface `ifindex`, if it exists.
fn if_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE bytes, as if_indextoname wants.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}
