//! A network namespace of the lab and how to work inside it: commands
//! (`ip netns exec`), threads moved in with `setns`, sysctls; and the same
//! for the calling thread's own namespace.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{CREDENTIAL_NAME, LabShared, NETNS_DIR, credential_dir, run};

/// A network namespace of a lab (a host, or the bridge namespace).
pub struct Netns {
    pub(super) ns: String,
    pub(super) label: String,
    pub(super) lab: Arc<LabShared>,
}

impl Netns {
    /// The `ip netns` name, e.g. `vl4242-0-failover-n1`.
    pub fn name(&self) -> &str {
        &self.ns
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.ns)
    }

    /// Runs `argv` inside the namespace (`ip netns exec`) and returns its
    /// output whatever the exit status.
    pub fn exec<S: AsRef<OsStr>>(&self, argv: &[S]) -> Output {
        run(&mut self.command(argv))
    }

    /// Like [`Netns::exec`], but panics (with stderr) unless it succeeds; returns stdout.
    pub fn exec_ok<S: AsRef<OsStr>>(&self, argv: &[S]) -> String {
        let out = self.exec(argv);
        check(&self.ns, argv, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell script inside the namespace (`sh -c`).
    pub fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    /// Runs `ip <args>` against this namespace (`ip -n`); panics unless it succeeds.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.ns).args(args));
        check(&self.ns, &[&["ip"], args].concat(), &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub(super) fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ip(&[&["-j"], args].concat());
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("ip -j {} in {}: {e}: {out}", args.join(" "), self.ns))
    }

    pub(super) fn command<S: AsRef<OsStr>>(&self, argv: &[S]) -> Command {
        assert!(!argv.is_empty(), "empty command for {}", self.ns);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        cmd.args(argv);
        // Every vipd and vipctl the lab runs gets the cluster credential as
        // an operator gives it: vipd from systemd's credentials directory
        // (LoadCredential=), vipctl through VIPD_ZK_AUTH_FILE. A caller's
        // own environment (`spawn_env`) comes after and wins: an empty
        // CREDENTIALS_DIRECTORY runs vipd without one.
        let dir = credential_dir(&self.lab.dir);
        match Path::new(argv[0].as_ref())
            .file_name()
            .and_then(OsStr::to_str)
        {
            Some("vipd") => {
                cmd.env("CREDENTIALS_DIRECTORY", &dir);
            }
            Some("vipctl") => {
                cmd.env("VIPD_ZK_AUTH_FILE", dir.join(CREDENTIAL_NAME));
            }
            _ => {}
        }
        // Wherever vipd or vipctl sits in the command line (after setpriv,
        // unshare...): the host's own bpffs for the pinned fence.
        if let Some(bpf) = self.bpf_dir() {
            cmd.env("VIPD_BPF_DIR", bpf);
        }
        cmd
    }

    /// The bpffs the lab mounted for this host (vipd's --bpf-dir), if any.
    pub fn bpf_dir(&self) -> Option<PathBuf> {
        self.lab.bpf_dir(&self.label)
    }

    /// The file holding the lab's cluster credential `vipd:<password>`
    /// (mode 0600, as /etc/vipd/zk-auth on a node): every vipd and vipctl
    /// this namespace runs uses it unless told otherwise.
    pub fn zk_credential_file(&self) -> PathBuf {
        credential_dir(&self.lab.dir).join(CREDENTIAL_NAME)
    }

    /// The lab's cluster credential, `user:password`.
    pub fn zk_credential(&self) -> String {
        let path = self.zk_credential_file();
        fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
            .trim()
            .to_string()
    }

    /// Runs `f` on a fresh thread that has joined this namespace (`setns`) and
    /// returns its result; sockets made there live in the namespace. A panic
    /// in `f` propagates.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&path);
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Writes a sysctl of this namespace (`net.ipv4.conf.eth0.arp_ignore`;
    /// use '/' separators for names containing dots).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = sysctl_path(key);
        self.in_netns(|| {
            fs::write(&path, value)
                .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.ns))
        });
    }

    /// Reads a sysctl of this namespace.
    pub fn sysctl_get(&self, key: &str) -> String {
        let path = sysctl_path(key);
        self.in_netns(|| {
            fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("sysctl {key} in {}: {e}", self.ns))
                .trim()
                .to_string()
        })
    }
}

impl Netns {
    /// Runs `open` on a thread of its own inside this namespace, then `serve`
    /// there with what it opened; returns once `open` succeeded, so nothing
    /// sent after it is missed. Panics, naming `what`, when `open` fails.
    pub(crate) fn spawn_opened<T, E: std::fmt::Display>(
        &self,
        what: &str,
        open: impl FnOnce() -> Result<T, E> + Send + 'static,
        serve: impl FnOnce(T) + Send + 'static,
    ) -> JoinHandle<()> {
        let path = self.path();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            match open() {
                Ok(opened) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(opened);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => thread,
            Ok(Err(e)) => panic!("{what} in {}: {e}", self.ns),
            Err(_) => panic!("{what} in {}: its thread died", self.ns),
        }
    }
}

impl Netns {
    /// Runs `argv` inside the namespace like [`Netns::exec`], but gives up
    /// after `timeout`: the command is then killed (SIGKILL, by its PID,
    /// while it is still our unreaped child) and `None` is returned. For
    /// clients that may hang on an unreachable address (a TCP connect to a
    /// VIP in the middle of a takeover).
    pub fn exec_timeout<S: AsRef<OsStr>>(&self, argv: &[S], timeout: Duration) -> Option<Output> {
        let mut cmd = self.command(argv);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in {}: {e}", self.ns));
        // Both pipes are drained on threads, so a chatty command never blocks
        // on a full pipe and looks hung.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                buf
            })
        };
        let stdout = drain(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let stderr = drain(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        );
        let deadline = Instant::now() + timeout;
        // Polled here, on the thread that owns the child, so the kill below
        // can never hit a reaped (and possibly reused) PID.
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Some(status),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
            }
        };
        let stdout = stdout.join().unwrap_or_default();
        let stderr = stderr.join().unwrap_or_default();
        status.map(|status| Output {
            status,
            stdout,
            stderr,
        })
    }
}

fn check<S: AsRef<OsStr>>(ns: &str, argv: &[S], out: &Output) {
    if !out.status.success() {
        let argv: Vec<OsString> = argv.iter().map(|a| a.as_ref().to_owned()).collect();
        panic!(
            "`{}` in {ns} failed ({}): {}{}",
            shell_words(&argv),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
}

pub(super) fn shell_words(argv: &[OsString]) -> String {
    argv.iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn sysctl_path(key: &str) -> PathBuf {
    let rel = if key.contains('/') {
        key.to_string()
    } else {
        key.replace('.', "/")
    };
    Path::new("/proc/sys").join(rel)
}

/// Moves the calling thread into the namespace at `path`. The thread must be
/// one we spawned: it never comes back to the root namespace.
pub(crate) fn enter_netns(path: &Path) {
    let file = File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
    // SAFETY: a valid fd of a namespace file; setns only affects this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert!(
        rc == 0,
        "setns({}): {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Runs `ip <args>` (split on white space) in the calling thread's network
/// namespace and returns its stdout; panics unless it succeeds.
pub fn ip_here(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running `ip` (iproute2 must be installed)");
    assert!(
        out.status.success(),
        "`ip {args}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 from ip")
}

/// Runs `f` on a thread of its own moved into a fresh network namespace;
/// a panic in `f` fails the caller. The namespace, and every interface and
/// socket made in it, goes away when the thread ends. Needs root.
pub fn in_new_netns<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            // SAFETY: unshare affects only this thread's namespaces.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET) failed (these tests need root): {}",
                std::io::Error::last_os_error()
            );
            f()
        });
        match handle.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// The ifindex of interface `name` in the calling thread's namespace;
/// panics if there is none.
pub fn ifindex_here(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("interface name without NUL");
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "no interface {name} in this namespace");
    index
}
