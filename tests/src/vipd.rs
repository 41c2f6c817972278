//! One vipd process in a lab host, single-node mode (`--static-vips`), and
//! `vipctl` against its control socket: what the engine, operations, IPv6
//! and wire tests start and look at.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use vipd_api::{ArpStats, Status};

use crate::lab::{Host, Lab, LabProcess, Netns, vipctl_bin, vipd_bin, wait_until};

static NEXT_SOCKET: AtomicU32 = AtomicU32::new(0);

/// A vipd started in a lab host, with its own control socket.
pub struct Vipd {
    pub process: LabProcess,
    pub socket: PathBuf,
    pub host: Host,
    pub spawned_at: Instant,
}

impl Vipd {
    /// Starts vipd in `host` leading `vips` (comma-separated) with a control
    /// socket of its own under the lab dir, and waits for its first
    /// reconcile pass. `extra` are more flags.
    pub fn start(lab: &Lab, host: &Host, vips: &str, extra: &[&str]) -> Vipd {
        Vipd::start_env(lab, host, vips, extra, &[])
    }

    /// [`Vipd::start`] with more environment (`RUST_LOG` here wins).
    pub fn start_env(
        lab: &Lab,
        host: &Host,
        vips: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Vipd {
        let vipd = Vipd::spawn(host, Vipd::new_socket(lab, host), &[], vips, extra, env);
        vipd.wait_ready();
        vipd
    }

    /// A control socket path under the lab dir no other vipd of this test
    /// binary uses.
    pub fn new_socket(lab: &Lab, host: &Host) -> PathBuf {
        let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        lab.dir().join(format!("{}-{n}.sock", host.name()))
    }

    /// Spawns `prefix... vipd --config /dev/null --static-vips <vips>
    /// --xdp-mode generic <extra...> --api-socket <socket>` in `host`
    /// (`prefix`: e.g. setpriv), as [`Vipd::spawn_args`] does, and does not
    /// wait. `--config /dev/null` keeps the machine's /etc/vipd out of the
    /// test; XDP runs in generic mode (veth, docs/DESIGN.md, facts).
    pub fn spawn(
        host: &Host,
        socket: PathBuf,
        prefix: &[OsString],
        vips: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Vipd {
        let mut args = vec![
            "--config",
            "/dev/null",
            "--static-vips",
            vips,
            "--xdp-mode",
            "generic",
        ];
        args.extend_from_slice(extra);
        Vipd::spawn_argv(host, socket, prefix, &args, env)
    }

    /// Spawns `vipd <args...> --api-socket <socket>` in `host`, nothing
    /// else on the command line (so vipd's defaults are what a test sees),
    /// with `NO_COLOR=1 RUST_LOG=info` and `env` (later entries win), and
    /// does not wait.
    pub fn spawn_args(host: &Host, socket: PathBuf, args: &[&str], env: &[(&str, &str)]) -> Vipd {
        Vipd::spawn_argv(host, socket, &[], args, env)
    }

    fn spawn_argv(
        host: &Host,
        socket: PathBuf,
        prefix: &[OsString],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Vipd {
        let mut argv: Vec<OsString> = prefix.to_vec();
        argv.push(vipd_bin().into());
        argv.extend(args.iter().map(OsString::from));
        argv.push("--api-socket".into());
        argv.push(socket.clone().into());
        let mut envs = vec![("NO_COLOR", "1"), ("RUST_LOG", "info")];
        envs.extend_from_slice(env);
        let spawned_at = Instant::now();
        let process = host.spawn_env(argv, &envs);
        Vipd {
            process,
            socket,
            host: host.clone(),
            spawned_at,
        }
    }

    /// Fails unless vipd is running; says how it exited.
    fn assert_running(&self) {
        assert!(
            self.process.is_running(),
            "vipd in {} exited at start ({:?}); stderr:\n{}",
            self.host.name(),
            self.process.try_status(),
            self.process.stderr()
        );
    }

    /// Waits (10 s at most) until `vipctl status` shows a finished reconcile
    /// pass; fails at once if vipd exits.
    pub fn wait_ready(&self) {
        self.wait_until_api_status("finished a reconcile pass", Duration::from_secs(10), |s| {
            s.last_reconcile.passes >= 1
        });
    }

    /// Waits (15 s at most) until `vipctl status` shows every one of `vips`
    /// held; the last status.
    pub fn wait_held<V: ToString>(&self, vips: &[V]) -> Value {
        let wanted: Vec<String> = vips.iter().map(ToString::to_string).collect();
        self.wait_until_status(&format!("held {wanted:?}"), Duration::from_secs(15), |s| {
            wanted.iter().all(|vip| holds(s, vip))
        })
    }

    /// [`Vipd::wait_until_status`] with the status read as the API's type
    /// (an answer that does not read as one fails the test).
    pub fn wait_until_api_status(
        &self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut(&Status) -> bool,
    ) -> Status {
        as_status(&self.wait_until_status(what, limit, |s| ready(&as_status(s))))
    }

    /// Waits (`limit` at most, polling every 10 ms) until `vipctl status
    /// --json` satisfies `ready`; the status that did. Fails at once if vipd
    /// exits, and at the limit with `what`, the last status and vipd's stderr.
    pub fn wait_until_status(
        &self,
        what: &str,
        limit: Duration,
        mut ready: impl FnMut(&Value) -> bool,
    ) -> Value {
        let mut last = Value::Null;
        let done = wait_until(limit, Duration::from_millis(10), || {
            if !self.process.is_running() {
                return true;
            }
            let Some(s) = self.try_vipctl(&["status", "--json"]) else {
                return false;
            };
            let ok = ready(&s);
            last = s;
            ok
        });
        self.assert_running();
        done.unwrap_or_else(|e| {
            panic!(
                "vipd in {} never {what}: {e}; last status {last:#}; stderr:\n{}",
                self.host.name(),
                self.process.stderr()
            )
        });
        last
    }

    /// `vipctl <args> --api-socket <ours>`.
    pub fn vipctl_argv(&self, args: &[&str]) -> Vec<OsString> {
        vipctl_argv(&self.socket, args)
    }

    /// vipctl's JSON answer, or None if it failed or printed none.
    pub fn try_vipctl(&self, args: &[&str]) -> Option<Value> {
        try_vipctl(&self.host, &self.socket, args)
    }

    /// vipctl run in the host; panics (with vipd's stderr) unless it
    /// succeeds with JSON.
    pub fn vipctl(&self, args: &[&str]) -> Value {
        let out = self.host.exec(&self.vipctl_argv(args));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "vipctl {} failed ({}): {}{stdout}\nvipd stderr:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.process.stderr()
        );
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("vipctl {} printed no JSON ({e}): {stdout}", args.join(" ")))
    }

    pub fn status(&self) -> Value {
        self.vipctl(&["status", "--json"])
    }

    pub fn arp_stats(&self) -> Value {
        self.vipctl(&["arp", "stats", "--json"])
    }

    /// `vipctl status --json` read as the API's type.
    pub fn api_status(&self) -> Status {
        as_status(&self.status())
    }

    /// `vipctl arp stats --json` read as the API's type.
    pub fn api_arp_stats(&self) -> ArpStats {
        let v = self.arp_stats();
        serde_json::from_value(v.clone()).unwrap_or_else(|e| {
            panic!("vipctl arp stats --json does not read as ArpStats: {e}; {v:#}")
        })
    }

    /// Reconcile passes so far.
    pub fn passes(&self) -> u64 {
        self.api_status().last_reconcile.passes
    }

    /// Sends `signal` and waits up to `limit` for the exit; returns how long
    /// it took.
    pub fn stop(&self, signal: i32, limit: Duration) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        assert!(self.process.kill(signal), "vipd had already exited");
        let status = self.process.wait_timeout(limit).unwrap_or_else(|| {
            panic!(
                "vipd did not exit within {limit:?} of signal {signal}; stderr:\n{}",
                self.process.stderr()
            )
        });
        (status, sent.elapsed())
    }
}

/// Whether a `vipctl status --json` answer shows `vip` held.
pub fn holds(status: &Value, vip: &str) -> bool {
    let vip = vip
        .parse()
        .unwrap_or_else(|e| panic!("{vip:?} is not an address: {e}"));
    as_status(status).holds(vip)
}

/// A `vipctl status --json` answer read as the API's type; fails the test
/// (with the answer) when it does not read as one.
pub fn as_status(status: &Value) -> Status {
    serde_json::from_value(status.clone())
        .unwrap_or_else(|e| panic!("the status does not read as the API's Status: {e}; {status:#}"))
}

/// `vipctl <args> --api-socket <socket>` run in `netns`: its JSON answer, or
/// None if it failed or printed none. For a vipd no [`Vipd`] handle stands
/// for (one in the bridge namespace, say).
pub fn try_vipctl(netns: &Netns, socket: &Path, args: &[&str]) -> Option<Value> {
    let out = netns.exec(&vipctl_argv(socket, args));
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// `vipctl <args> --api-socket <socket>`.
fn vipctl_argv(socket: &Path, args: &[&str]) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec![vipctl_bin().into()];
    argv.extend(args.iter().map(OsString::from));
    argv.push("--api-socket".into());
    argv.push(socket.into());
    argv
}
