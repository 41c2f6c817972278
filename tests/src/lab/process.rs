//! Processes the lab starts in its namespaces, the binaries it starts, and
//! the threads and waits its tools are built on.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::netns::{Netns, shell_words};

/// Panics unless we run as root: privileged tests never skip.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "this test needs root (network namespaces, veths, AF_PACKET); euid is {euid}. \
         Run it as root, e.g. `sudo -E cargo test -p vipd-tests`"
    );
}

/// The built `vipd` binary (`VIPD_BIN` overrides).
pub fn vipd_bin() -> PathBuf {
    built_binary("vipd", "VIPD_BIN")
}

/// The built `vipctl` binary (`VIPCTL_BIN` overrides).
pub fn vipctl_bin() -> PathBuf {
    built_binary("vipctl", "VIPCTL_BIN")
}

/// The test executable lives in target/<profile>/deps/; the binaries one level up.
fn binary_beside(test_exe: &Path, name: &str) -> PathBuf {
    let mut dir = test_exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join(name)
}

fn built_binary(name: &str, env: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "{env}={} does not name a file",
            path.display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("path of the test executable");
    let path = binary_beside(&exe, name);
    assert!(
        path.is_file(),
        "{name} not found at {}: build it first with `cargo xtask build` \
         (or `cargo build -p vipd`), or set {env} to its path",
        path.display()
    );
    path
}

/// Polls `cond` every `poll` until it holds or `timeout` passes. Returns how
/// long it took, or a message saying how long we waited.
pub fn wait_until(
    timeout: Duration,
    poll: Duration,
    mut cond: impl FnMut() -> bool,
) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        if cond() {
            return Ok(start.elapsed());
        }
        if start.elapsed() >= timeout {
            return Err(format!(
                "condition still false after {:?} (timeout {timeout:?})",
                start.elapsed()
            ));
        }
        std::thread::sleep(poll);
    }
}

impl Netns {
    /// Starts `argv` inside the namespace with stdout and stderr going to
    /// files in the lab dir. The lab kills it on drop if still running.
    pub fn spawn<I, S>(&self, argv: I) -> LabProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.spawn_env(argv, &[])
    }

    /// [`Netns::spawn`] with extra environment variables.
    pub fn spawn_env<I, S>(&self, argv: I, env: &[(&str, &str)]) -> LabProcess
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let argv: Vec<OsString> = argv.into_iter().map(|a| a.as_ref().to_owned()).collect();
        assert!(!argv.is_empty(), "empty command for {}", self.ns);
        let n = self.lab.next_proc.fetch_add(1, Ordering::Relaxed);
        let prog = Path::new(&argv[0])
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "proc".to_string());
        let base = format!("{n:02}-{}-{prog}", self.label);
        let stdout_path = self.lab.dir.join(format!("{base}.stdout"));
        let stderr_path = self.lab.dir.join(format!("{base}.stderr"));
        let create =
            |p: &Path| File::create(p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        let mut cmd = self.command(&argv);
        cmd.stdin(Stdio::null())
            .stdout(create(&stdout_path))
            .stderr(create(&stderr_path))
            .envs(env.iter().copied());
        // `ip netns exec` execs the command after setns, so the PID is the command's.
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {cmd:?} in {}: {e}", self.ns));
        let inner = Arc::new(ProcInner {
            pid: child.id(),
            label: format!("{}: {}", self.label, shell_words(&argv)),
            stdout_path,
            stderr_path,
            child: Mutex::new(child),
        });
        self.lab.processes.lock().unwrap().push(inner.clone());
        LabProcess { inner }
    }
}

/// The settings `vipd check-config` prints, one `key = "value"  # source`
/// line each: key -> (value, where it came from).
pub fn check_config_settings(
    stdout: &[u8],
) -> std::collections::BTreeMap<String, (String, String)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| {
            let (kv, source) = l.split_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((
                k.to_string(),
                (v.trim_matches('"').to_string(), source.to_string()),
            ))
        })
        .collect()
}

/// The standard output of a command that succeeded; panics with both of its
/// outputs, naming it `what`, when it did not.
pub fn succeeded(out: &Output, what: &str) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A lab thread that runs until its `stop` flag is set: [`Self::halt`], or
/// dropping it, sets the flag and waits for the thread to end.
pub(crate) struct StoppableThread {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StoppableThread {
    /// `thread`, which polls `stop`.
    pub(crate) fn new(stop: Arc<AtomicBool>, thread: JoinHandle<()>) -> Self {
        StoppableThread {
            stop,
            thread: Some(thread),
        }
    }

    pub(crate) fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for StoppableThread {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A process started in a lab namespace. Dropping the handle leaves it
/// running; the lab kills it at teardown.
#[derive(Clone)]
pub struct LabProcess {
    inner: Arc<ProcInner>,
}

pub(super) struct ProcInner {
    pub(super) pid: u32,
    pub(super) label: String,
    pub(super) stdout_path: PathBuf,
    pub(super) stderr_path: PathBuf,
    pub(super) child: Mutex<Child>,
}

impl ProcInner {
    /// Sends `sig` unless the process was already reaped (its PID may be
    /// reused then). Returns whether it was sent.
    pub(super) fn signal(&self, sig: i32) -> bool {
        let mut child = self.child.lock().unwrap();
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        // SAFETY: kill has no memory preconditions; the PID is our unreaped child.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) == 0 }
    }

    pub(super) fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.lock().unwrap().try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl LabProcess {
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Sends `signal` (`libc::SIGTERM`, ...). False if it had already exited.
    pub fn kill(&self, signal: i32) -> bool {
        self.inner.signal(signal)
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.inner.wait_timeout(timeout)
    }

    /// Its exit status if it has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.inner.child.lock().unwrap().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; returns the exit status.
    pub fn terminate(&self, grace: Duration) -> ExitStatus {
        self.kill(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(grace) {
            return status;
        }
        self.kill(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{} (pid {}) survived SIGKILL", self.inner.label, self.pid()))
    }

    pub fn stdout_path(&self) -> &Path {
        &self.inner.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.inner.stderr_path
    }

    /// Everything it wrote to stdout so far.
    pub fn stdout(&self) -> String {
        fs::read_to_string(&self.inner.stdout_path).unwrap_or_default()
    }

    /// Everything it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.inner.stderr_path).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binaries_are_found_beside_deps() {
        let exe = Path::new("/w/target/debug/deps/lab-0123abcd");
        assert_eq!(
            binary_beside(exe, "vipd"),
            Path::new("/w/target/debug/vipd")
        );
        let exe = Path::new("/w/target/debug/examples/demo");
        assert_eq!(
            binary_beside(exe, "vipctl"),
            Path::new("/w/target/debug/examples/vipctl")
        );
    }
}
