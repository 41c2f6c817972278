//! One vipd process in a lab host, single-node mode (`--static-vips`), and
//! `vipctl` against its control socket: what the engine, operations, IPv6
//! and wire tests start and look at.

use std::{
    ffi::OsString,
    path::PathBuf,
    process::ExitStatus,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::lab::{Host, Lab, LabProcess, vipctl_bin, vipd_bin, wait_until};

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
        let n = NEXT_SOCKET.fetch_add(1, Ordering::Relaxed);
        let socket = lab.dir().join(format!("{}-{n}.sock", host.name()));
        let vipd = Vipd::spawn(host, socket, &[], vips, extra, env);
        vipd.wait_ready();
        vipd
    }

    /// Spawns `prefix... vipd --config /dev/null --static-vips <vips>
    /// --api-socket <socket> --xdp-mode generic <extra...>` in `host`
    /// (`prefix`: e.g. setpriv) with `NO_COLOR=1 RUST_LOG=info` and `env`
    /// (later entries win), and does not wait. `--config /dev/null` keeps the
    /// machine's /etc/vipd out of the test; XDP runs in generic mode (veth,
    /// docs/DESIGN.md, facts).
    pub fn spawn(
        host: &Host,
        socket: PathBuf,
        prefix: &[OsString],
        vips: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Vipd {
        let mut argv: Vec<OsString> = prefix.to_vec();
        argv.extend([
            vipd_bin().into(),
            "--config".into(),
            "/dev/null".into(),
            "--static-vips".into(),
            vips.into(),
            "--api-socket".into(),
            socket.clone().into(),
            "--xdp-mode".into(),
            "generic".into(),
        ]);
        argv.extend(extra.iter().map(OsString::from));
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
        let ready = wait_until(Duration::from_secs(10), Duration::from_millis(20), || {
            !self.process.is_running()
                || self
                    .try_vipctl(&["status", "--json"])
                    .is_some_and(|s| s["last_reconcile"]["passes"].as_u64() >= Some(1))
        });
        self.assert_running();
        ready.unwrap_or_else(|e| {
            panic!(
                "vipd in {} never finished a reconcile pass: {e}; stderr:\n{}",
                self.host.name(),
                self.process.stderr()
            )
        });
    }

    /// Waits (15 s at most) until `vipctl status` shows every one of `vips`
    /// held; the last status.
    pub fn wait_held<V: ToString>(&self, vips: &[V]) -> Value {
        let wanted: Vec<String> = vips.iter().map(ToString::to_string).collect();
        let mut last = Value::Null;
        let held = wait_until(Duration::from_secs(15), Duration::from_millis(10), || {
            if !self.process.is_running() {
                return true;
            }
            let Some(s) = self.try_vipctl(&["status", "--json"]) else {
                return false;
            };
            let ok = wanted.iter().all(|vip| {
                s["vips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v["vip"].as_str() == Some(vip) && v["state"] == "held")
            });
            last = s;
            ok
        });
        self.assert_running();
        held.unwrap_or_else(|e| {
            panic!(
                "vipd in {} never held {wanted:?}: {e}; last status {last:#}; stderr:\n{}",
                self.host.name(),
                self.process.stderr()
            )
        });
        last
    }

    /// `vipctl <args> --api-socket <ours>`.
    pub fn vipctl_argv(&self, args: &[&str]) -> Vec<OsString> {
        let mut argv: Vec<OsString> = vec![vipctl_bin().into()];
        argv.extend(args.iter().map(OsString::from));
        argv.push("--api-socket".into());
        argv.push(self.socket.clone().into());
        argv
    }

    /// vipctl's JSON answer, or None if it failed or printed none.
    pub fn try_vipctl(&self, args: &[&str]) -> Option<Value> {
        let out = self.host.exec(&self.vipctl_argv(args));
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
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

    /// Reconcile passes so far.
    pub fn passes(&self) -> u64 {
        self.status()["last_reconcile"]["passes"]
            .as_u64()
            .expect("last_reconcile.passes is a number")
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
