//! The commands that read and write the cluster's tree in ZooKeeper: `vip`,
//! `node`, `handover` and `acl`.

use std::{process::ExitCode, time::Duration};

use vipd::coord::{
    ZkAccess, ZkAuth,
    admin::{run_acl_repair_within, run_vip_command_within},
    nodes::{NodeCommand, run_handover_within, run_node_command_within},
};

use crate::{
    cli::{HandoverArg, NodeArgs, OutputArg, VipArgs, ZkArg},
    fail, print_each, zk_failure,
};

/// `vipctl node ...`; `node list` may be watched.
pub(crate) async fn node(zk: &ZkArg, output: &OutputArg, command: NodeArgs) -> ExitCode {
    let (hosts, access) = match zk.connection() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let command = command.command(output.json);
    let watch = output.watch && matches!(command, NodeCommand::List { .. });
    let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
    let node =
        move || run_node_command_within(hosts, cluster, access.clone(), command.clone(), timeout);
    print_each(output, watch, node, zk_failure).await
}

/// `vipctl handover`: waits up to 10 s for the new leader.
pub(crate) async fn handover(zk: &ZkArg, output: &OutputArg, handover: HandoverArg) -> ExitCode {
    let (hosts, access) = match zk.connection() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
    let handover = move || {
        let wait = Duration::from_secs(10);
        run_handover_within(
            hosts,
            cluster,
            access.clone(),
            handover.to.clone(),
            timeout,
            wait,
        )
    };
    print_each(output, false, handover, zk_failure).await
}

/// `vipctl vip ...`.
pub(crate) async fn vip(zk: &ZkArg, output: &OutputArg, command: VipArgs) -> ExitCode {
    let (hosts, access) = match zk.connection() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let command = command.command(output.json);
    let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
    let vip =
        move || run_vip_command_within(hosts, cluster, access.clone(), command.clone(), timeout);
    print_each(output, false, vip, zk_failure).await
}

/// `vipctl acl repair`.
pub(crate) async fn acl_repair(zk: &ZkArg, output: &OutputArg) -> ExitCode {
    let (hosts, access) = match zk.connection() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let (hosts, cluster, timeout) = (&hosts, &zk.cluster, zk.connect_timeout);
    let repair = move || run_acl_repair_within(hosts, cluster, access.clone(), timeout);
    print_each(output, false, repair, zk_failure).await
}

impl ZkArg {
    /// The servers and the credential: `--zk-auth-file`, else the systemd
    /// credential vipd-zk if one was passed.
    pub(crate) fn connection(&self) -> Result<(String, ZkAccess), String> {
        let auth = ZkAuth::resolve(self.zk_auth_file.as_deref())
            .map_err(|e| e.to_string())?
            .map(|(a, _)| a);
        let access = ZkAccess {
            auth,
            insecure: self.zk_insecure,
        };
        // `parse` made sure the servers are there.
        Ok((self.hosts.clone().unwrap_or_default(), access))
    }
}
