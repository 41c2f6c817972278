//! The egress half of the fence: a TCX egress program on every interface of
//! the node (replies can leave by any of them) that drops frames sent from
//! a VIP in its fence window. It reads the XDP program's held maps (one
//! object, one set of maps).

use std::collections::{BTreeMap, BTreeSet};

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType, TestRun, TestRunOptions,
    tc::{SchedClassifierLink, TcAttachOptions},
};
use tracing::{error, info, instrument};
use vipd_common::EGRESS_PROGRAM_NAME;

use super::{XdpError, XdpProgram, pins::HeldLink};

/// One interface the egress program is attached to.
pub(super) struct EgressLink {
    pub(super) ifname: String,
    /// Pinned when there is a bpf dir, else detached with the process.
    pub(super) link: HeldLink<SchedClassifierLink>,
}

/// The egress links, by ifindex, and the interfaces where attaching
/// failed (logged once, tried again on every pass).
#[derive(Default)]
pub(super) struct EgressLinks {
    pub(super) links: BTreeMap<u32, EgressLink>,
    pub(super) failed: BTreeSet<u32>,
}

impl EgressLinks {
    /// Every egress link is pinned, and none failed to attach.
    pub(super) fn all_pinned(&self) -> bool {
        self.failed.is_empty() && self.links.values().all(|l| l.link.is_pinned())
    }
}

impl XdpProgram {
    pub(super) fn egress_mut(&mut self) -> Result<&mut SchedClassifier, XdpError> {
        self.ebpf
            .program_mut(EGRESS_PROGRAM_NAME)
            .ok_or(XdpError::MissingEgress(None))?
            .try_into()
            .map_err(|e| XdpError::MissingEgress(Some(e)))
    }

    fn egress(&self) -> Result<&SchedClassifier, XdpError> {
        self.ebpf
            .program(EGRESS_PROGRAM_NAME)
            .ok_or(XdpError::MissingEgress(None))?
            .try_into()
            .map_err(|e| XdpError::MissingEgress(Some(e)))
    }

    /// Makes the egress fence sit on exactly these interfaces (ifindex ->
    /// name): attached where it is not yet, forgotten where the interface
    /// is gone (the kernel ended those links with the device). An
    /// interface renamed or replaced under the same index is attached
    /// again. Every interface is tried; the errors are returned.
    #[instrument(skip_all, fields(count = interfaces.len()))]
    pub(crate) fn fence_egress_on(&mut self, interfaces: &BTreeMap<u32, String>) -> Vec<XdpError> {
        let gone: Vec<u32> = self
            .egress_links
            .links
            .iter()
            .filter(|(i, l)| interfaces.get(i) != Some(&l.ifname))
            .map(|(i, _)| *i)
            .collect();
        for ifindex in gone {
            if let Some(l) = self.egress_links.links.remove(&ifindex) {
                // A link whose device went is defunct: unpinning and
                // closing it is all.
                l.link.release();
            }
        }
        self.egress_links
            .failed
            .retain(|i| interfaces.contains_key(i));
        let mut errors = Vec::new();
        for (ifindex, ifname) in interfaces {
            if self.egress_links.links.contains_key(ifindex) {
                continue;
            }
            match self.attach_egress(ifname, *ifindex) {
                Ok(link) => {
                    info!(ifname = %ifname, "egress fence attached");
                    self.egress_links.failed.remove(ifindex);
                    self.egress_links.links.insert(
                        *ifindex,
                        EgressLink {
                            ifname: ifname.clone(),
                            link,
                        },
                    );
                }
                Err(e) => {
                    if self.egress_links.failed.insert(*ifindex) {
                        error!(ifname = %ifname, error = %e, "cannot attach the egress fence: frames from a VIP past its lease may leave by {ifname}");
                    }
                    errors.push(e);
                }
            }
        }
        errors
    }

    /// Attaches the egress program to `ifname`, pinned when there is a bpf
    /// dir; a link that cannot be pinned is attached again, unpinned.
    fn attach_egress(
        &mut self,
        ifname: &str,
        ifindex: u32,
    ) -> Result<HeldLink<SchedClassifierLink>, XdpError> {
        let link = self.attach_egress_once(ifname)?;
        let path = self.pins.as_ref().map(|d| d.egress_link(ifindex));
        match HeldLink::pin(link, path) {
            Ok(link) => Ok(link),
            Err(e) => {
                error!(ifname, error = %e, "cannot pin the egress fence's link: attached unpinned, it dies with vipd");
                Ok(HeldLink::Process(self.attach_egress_once(ifname)?))
            }
        }
    }

    fn attach_egress_once(&mut self, ifname: &str) -> Result<SchedClassifierLink, XdpError> {
        let err = |source| XdpError::AttachEgress {
            ifname: ifname.to_string(),
            source,
        };
        let program = self.egress_mut()?;
        let id = program
            .attach_with_options(
                ifname,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(err)?;
        program.take_link(id).map_err(err)
    }

    /// The interfaces the egress fence is attached to, by name.
    pub fn egress_fenced(&self) -> Vec<String> {
        self.egress_links
            .links
            .values()
            .map(|l| l.ifname.clone())
            .collect()
    }

    /// Runs the egress program once on `frame` (an Ethernet frame as it
    /// would leave) with BPF_PROG_TEST_RUN; returns its verdict (-1: on
    /// to the next program, 2: dropped).
    pub fn test_run_egress(&self, frame: &[u8]) -> Result<i32, XdpError> {
        let mut out = vec![0u8; frame.len() + 256];
        let result = self
            .egress()?
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|source| XdpError::TestRun {
                len: frame.len(),
                source,
            })?;
        // The verdict is an int in the kernel; the syscall hands it back as
        // its bits.
        Ok(result.return_value as i32)
    }
}
