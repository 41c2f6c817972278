//! Operations, checked the way an operator meets them: the Debian
//! package's contents, the systemd unit as `systemd-analyze` reads it, vipd
//! running as an unprivileged user with only the unit's capabilities, the
//! Prometheus endpoint against `vipctl` and its connection cap, the configuration file's errors and
//! precedence, JSON logs, and the sd_notify readiness message.
//!
//! The lab tests run one at a time (`serial`): the machine has few cores and
//! several of them wait for announcements.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;
use vipd_tests::lab::{Host, HostIf, Lab, fmt_mac, succeeded, vipctl_bin, vipd_bin, wait_until};
use vipd_tests::lab::{addr_events, route_socket};
use vipd_tests::vipd::Vipd;

const VIP_A: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);
const VIP_B: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 101);
/// A VIP in a subnet where the node has no address of its own: it becomes
/// that subnet's primary address on eth0.
const VIP_PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const POLL: Duration = Duration::from_millis(20);
/// The unprivileged user vipd runs as in the capability test (`nobody`).
const NOBODY: u32 = 65534;

static SERIAL: Mutex<()> = Mutex::new(());
static NEXT: AtomicU32 = AtomicU32::new(0);

/// vipd on `host` as root, serving metrics on `listen`.
fn vipd_with_metrics(lab: &Lab, host: &Host, vips: &str, listen: SocketAddr) -> Vipd {
    vipd_as_root(
        lab,
        host,
        vips,
        &["--metrics-listen", &listen.to_string()],
        &[],
    )
}

/// vipd on `host` as root (no setpriv), its control socket in the lab's
/// directory.
fn vipd_as_root(lab: &Lab, host: &Host, vips: &str, args: &[&str], env: &[(&str, &str)]) -> Vipd {
    Vipd::spawn(host, lab.dir().join("vipd.sock"), &[], vips, args, env)
}

/// One lab test at a time; a failed test must not block the others.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The built `xtask` binary (beside vipd; `XTASK_BIN` overrides).
fn xtask_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("XTASK_BIN") {
        return PathBuf::from(p);
    }
    let path = vipd_bin().with_file_name("xtask");
    assert!(
        path.is_file(),
        "xtask not found at {}: build it with `cargo build -p xtask` (cargo xtask does), \
         or set XTASK_BIN",
        path.display()
    );
    path
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "vipd-ops-{what}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Panics with the command's output unless it succeeded; returns stdout.
fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    succeeded(&out, &format!("{cmd:?}"))
}

// ---------------------------------------------------------------- package

#[test]
fn package_holds_every_file_and_runs() {
    let scratch = Scratch::new("package");
    let bin_dir = vipd_bin().parent().expect("bin dir").to_path_buf();
    let started = Instant::now();
    let stdout = run_ok(
        Command::new(xtask_bin())
            .args(["package", "--fast"])
            .arg("--bin-dir")
            .arg(&bin_dir)
            .arg("--out-dir")
            .arg(&scratch.0),
    );
    eprintln!("xtask package took {:?}", started.elapsed());
    let version = env!("CARGO_PKG_VERSION");
    let deb = scratch.0.join(format!("vipd_{version}_amd64.deb"));
    assert_eq!(
        stdout.lines().last().map(str::trim),
        Some(deb.to_str().unwrap()),
        "xtask package must print the .deb's path last"
    );
    assert!(deb.is_file(), "{} was not written", deb.display());

    // Control fields and the conffile, as dpkg shows them.
    let info = run_ok(Command::new("dpkg-deb").arg("-I").arg(&deb));
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| l.trim_start().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} field in dpkg-deb -I:\n{info}"))
            .to_string()
    };
    assert_eq!(field("Package"), "vipd");
    assert_eq!(field("Version"), version);
    assert_eq!(field("Architecture"), "amd64");
    let depends = field("Depends");
    assert!(
        depends.split(", ").any(|d| d.starts_with("libc6 (>= 2.")),
        "Depends must name libc6 with a minimum version: {depends}"
    );
    assert_eq!(field("Suggests"), "arping, tcpdump");
    assert!(
        !info.contains("Recommends:"),
        "vipd is a ZooKeeper client; it recommends nothing:\n{info}"
    );
    let conffiles = run_ok(
        Command::new("dpkg-deb")
            .arg("-I")
            .arg(&deb)
            .arg("conffiles"),
    );
    assert_eq!(conffiles.trim(), "/etc/vipd/vipd.toml");

    // Every file, owned by root.
    let listing = run_ok(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for line in listing.lines() {
        assert!(
            line.split_whitespace().nth(1) == Some("root/root"),
            "not owned by root/root: {line}"
        );
    }
    let tree = scratch.0.join("x");
    run_ok(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    let root = workspace_root();
    let same_as = [
        ("lib/systemd/system/vipd.service", "packaging/vipd.service"),
        ("etc/vipd/vipd.toml", "packaging/vipd.toml"),
        ("usr/share/doc/vipd/README.md", "README.md"),
        ("usr/share/doc/vipd/OPERATIONS.md", "docs/OPERATIONS.md"),
    ];
    for (installed, source) in same_as {
        let got = std::fs::read(tree.join(installed))
            .unwrap_or_else(|e| panic!("{installed} is not in the package: {e}"));
        let want = std::fs::read(root.join(source)).expect("source file");
        assert!(got == want, "{installed} differs from {source}");
        let mode = std::fs::metadata(tree.join(installed))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644, "{installed} mode {mode:o}");
    }
    let copyright = std::fs::read_to_string(tree.join("usr/share/doc/vipd/copyright"))
        .expect("usr/share/doc/vipd/copyright is in the package");
    assert!(copyright.contains("License: MIT"), "{copyright}");
    let mut files: Vec<&str> = listing
        .lines()
        .filter(|l| !l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .collect();
    files.sort_unstable();
    let (shell_files, files): (Vec<&str>, Vec<&str>) = files.into_iter().partition(|f| {
        SHELL_FILE_DIRS
            .iter()
            .any(|d| f.strip_prefix("./").is_some_and(|f| f.starts_with(d)))
    });
    shell_files_are_complete(&tree, &shell_files);
    assert_eq!(
        files,
        [
            "./etc/vipd/vipd.toml",
            "./lib/systemd/system/vipd.service",
            "./usr/bin/vipctl",
            "./usr/bin/vipd",
            "./usr/share/doc/vipd/OPERATIONS.md",
            "./usr/share/doc/vipd/README.md",
            "./usr/share/doc/vipd/copyright",
        ],
        "the package's files"
    );

    // The binaries are executable, run, and the shipped configuration is valid.
    for bin in ["usr/bin/vipd", "usr/bin/vipctl"] {
        let mode = std::fs::metadata(tree.join(bin))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{bin} mode {mode:o}");
    }
    let v = run_ok(Command::new(tree.join("usr/bin/vipd")).arg("--version"));
    assert_eq!(v.trim(), format!("vipd {version}"));
    let help = run_ok(Command::new(tree.join("usr/bin/vipctl")).arg("--help"));
    for sub in ["status", "arp", "vip", "cleanup"] {
        assert!(help.contains(sub), "vipctl --help lacks {sub}:\n{help}");
    }
    let check = run_ok(
        Command::new(tree.join("usr/bin/vipd"))
            .arg("--config")
            .arg(tree.join("etc/vipd/vipd.toml"))
            .arg("check-config")
            .env_remove("VIPD_CONFIG"),
    );
    assert!(check.contains("# configuration is valid"), "{check}");
}

/// Where the package's completions and man pages go (Debian's paths).
const SHELL_FILE_DIRS: &[&str] = &[
    "usr/share/bash-completion/completions/",
    "usr/share/zsh/vendor-completions/",
    "usr/share/fish/vendor_completions.d/",
    "usr/share/man/man1/",
];

/// The subcommands `vipctl --help` lists (its "Commands:" section).
fn subcommands_in_help(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| *w != "help")
        .map(str::to_string)
        .collect()
}

/// What bash's completion of `words` (the last one being completed) offers,
/// with the package's completion file for `words[0]` loaded.
fn bash_completes(tree: &Path, words: &[&str]) -> Vec<String> {
    let file = tree
        .join("usr/share/bash-completion/completions")
        .join(words[0]);
    let script = format!(
        "source {}; COMP_WORDS=({}); COMP_CWORD={}; _{} {} '{}' '{}'; printf '%s\\n' \"${{COMPREPLY[@]}}\"",
        file.display(),
        words
            .iter()
            .map(|w| format!("'{w}'"))
            .collect::<Vec<_>>()
            .join(" "),
        words.len() - 1,
        words[0],
        words[0],
        words[words.len() - 1],
        words[words.len().saturating_sub(2)],
    );
    run_ok(Command::new("bash").arg("-c").arg(script))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Both binaries' completions for bash, zsh and fish, and a gzipped man
/// page for each binary and each subcommand; bash really completes
/// vipctl's subcommands (those `vipctl --help` lists) and their options.
fn shell_files_are_complete(tree: &Path, files: &[&str]) {
    for bin in ["vipd", "vipctl"] {
        for want in [
            format!("./usr/share/bash-completion/completions/{bin}"),
            format!("./usr/share/zsh/vendor-completions/_{bin}"),
            format!("./usr/share/fish/vendor_completions.d/{bin}.fish"),
            format!("./usr/share/man/man1/{bin}.1.gz"),
        ] {
            assert!(
                files.contains(&want.as_str()),
                "{want} is not in the package: {files:?}"
            );
        }
    }
    let help = run_ok(Command::new(tree.join("usr/bin/vipctl")).arg("--help"));
    let subs = subcommands_in_help(&help);
    for sub in ["status", "arp", "vip", "node", "handover", "cleanup"] {
        assert!(
            subs.iter().any(|s| s == sub),
            "vipctl --help lacks {sub}:\n{help}"
        );
    }
    let offered = bash_completes(tree, &["vipctl", ""]);
    for sub in &subs {
        assert!(
            offered.contains(sub),
            "bash does not complete `vipctl {sub}`: {offered:?}"
        );
        let page = format!("./usr/share/man/man1/vipctl-{sub}.1.gz");
        assert!(
            files.contains(&page.as_str()),
            "{page} is not in the package"
        );
    }
    let offered = bash_completes(tree, &["vipctl", "node", ""]);
    for sub in ["list", "drain", "undrain"] {
        assert!(
            offered.iter().any(|o| o == sub),
            "vipctl node {sub}: {offered:?}"
        );
    }
    let offered = bash_completes(tree, &["vipd", "--"]);
    for opt in [
        "--zk",
        "--check",
        "--link-grace",
        "--garp-refresh",
        "--on-change",
    ] {
        assert!(offered.iter().any(|o| o == opt), "vipd {opt}: {offered:?}");
    }
    for fish in ["vipd", "vipctl"] {
        let text = std::fs::read_to_string(
            tree.join(format!("usr/share/fish/vendor_completions.d/{fish}.fish")),
        )
        .unwrap();
        assert!(text.contains(&format!("complete -c {fish}")), "{text}");
    }
    for f in files.iter().filter(|f| f.contains("/man/")) {
        let page = run_ok(Command::new("gzip").arg("-dc").arg(tree.join(f)));
        let name = f.rsplit('/').next().unwrap().trim_end_matches(".1.gz");
        assert!(page.contains(&format!(".TH {name} 1")), "{f}: {page}");
        assert!(
            !page.contains("write-shell-files"),
            "{f} shows the build-only flag"
        );
    }
}

// ----------------------------------------------------------- systemd unit

fn unit_text() -> String {
    std::fs::read_to_string(workspace_root().join("packaging/vipd.service"))
        .expect("packaging/vipd.service")
}

/// The values of `key=` in the unit (every line that sets it).
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

/// The unit with its /usr/bin binaries replaced by `vipd` and `vipctl`.
fn unit_with_binaries(vipd: &Path, vipctl: &Path) -> String {
    unit_text()
        .replace("=/usr/bin/vipd ", &format!("={} ", vipd.display()))
        .replace("=/usr/bin/vipctl ", &format!("={} ", vipctl.display()))
}

fn analyze_verify(unit: &Path) -> Output {
    // --man=no: the Documentation= pages are not installed here;
    // --generators=no: no systemd runs as PID 1 in this container, and
    // verify needs nothing else from it.
    run(Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--generators=no"])
        .arg(unit))
}

#[test]
fn systemd_unit_verifies() {
    let scratch = Scratch::new("unit");
    let unit = unit_with_binaries(&vipd_bin(), &vipctl_bin());
    assert!(
        !unit.contains("/usr/bin/"),
        "every /usr/bin path was rewritten:\n{unit}"
    );
    let path = scratch.0.join("vipd.service");
    std::fs::write(&path, &unit).unwrap();
    let out = analyze_verify(&path);
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify {} ({}):\n{}{}",
        path.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );

    // The check can fail: a missing binary is reported.
    let broken = scratch.0.join("broken").join("vipd.service");
    std::fs::create_dir_all(broken.parent().unwrap()).unwrap();
    std::fs::write(
        &broken,
        unit_with_binaries(&scratch.0.join("no-such-vipd"), &vipctl_bin()),
    )
    .unwrap();
    let out = analyze_verify(&broken);
    assert!(
        !out.status.success() && text(&out.stderr).contains("no-such-vipd"),
        "systemd-analyze must reject a unit whose ExecStart is missing ({}):\n{}",
        out.status,
        text(&out.stderr)
    );

    // The control socket the unit gives vipd lies in the directory systemd
    // creates for the dynamic user; the pinned fence's directory is the
    // host's, shown to vipd (and vipctl cleanup) at a path it can reach.
    let runtime = unit_values(&unit, "RuntimeDirectory");
    assert_eq!(runtime, ["vipd"], "RuntimeDirectory");
    assert_eq!(
        unit_values(&unit, "Environment"),
        [
            "VIPD_BPF_DIR=/run/vipd-bpf",
            "VIPD_API_SOCKET=/run/vipd/vipd.sock"
        ]
    );
    assert_eq!(
        unit_values(&unit, "BindPaths"),
        ["/sys/fs/bpf/vipd:/run/vipd-bpf"]
    );
    assert_eq!(
        unit_values(&unit, "ExecStart"),
        [format!(
            "{} --config /etc/vipd/vipd.toml",
            vipd_bin().display()
        )]
    );
}

/// The unit's capabilities, as `setpriv` names them (`net_admin,net_raw,bpf`),
/// after checking that the ambient set equals the bounding set.
fn unit_capabilities() -> Vec<String> {
    let unit = unit_text();
    let ambient = unit_values(&unit, "AmbientCapabilities");
    let bounding = unit_values(&unit, "CapabilityBoundingSet");
    assert_eq!(
        ambient, bounding,
        "AmbientCapabilities and CapabilityBoundingSet differ"
    );
    assert_eq!(ambient.len(), 1, "one AmbientCapabilities= line");
    ambient[0]
        .split_whitespace()
        .map(|c| {
            c.strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("capability {c} without CAP_"))
                .to_ascii_lowercase()
        })
        .collect()
}

/// The kernel's capability number of `name` (`net_admin`).
fn cap_number(name: &str) -> u32 {
    match name {
        "net_admin" => 12,
        "net_raw" => 13,
        "sys_resource" => 24,
        "perfmon" => 38,
        "bpf" => 39,
        other => panic!("capability {other} is not known to this test"),
    }
}

/// `setpriv` arguments running the rest as `nobody` with exactly `caps`
/// (inheritable, ambient and bounding), like the unit's DynamicUser with
/// AmbientCapabilities, CapabilityBoundingSet and NoNewPrivileges.
fn setpriv_argv(caps: &[String]) -> Vec<OsString> {
    let plus: Vec<String> = caps.iter().map(|c| format!("+{c}")).collect();
    let set = format!("-all,{}", plus.join(","));
    [
        "setpriv",
        "--reuid",
        &NOBODY.to_string(),
        "--regid",
        &NOBODY.to_string(),
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps",
        &set,
        "--ambient-caps",
        &set,
        "--bounding-set",
        &set,
        "--",
    ]
    .iter()
    .map(OsString::from)
    .collect()
}

// ---------------------------------------------------------- lab helpers

fn br0(addr: &str) -> HostIf<'_> {
    HostIf { bridge: 0, addr }
}

/// The VIPs among `host`'s addresses on `ifname`.
fn addrs_on(host: &Host, ifname: &str) -> Vec<Ipv4Addr> {
    host.ipv4_addrs(ifname)
        .into_iter()
        .map(|(a, _)| a)
        .collect()
}

fn read_status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
        .trim()
        .to_string()
}

/// A directory in the lab dir owned by `nobody`, for its control socket.
fn nobody_dir(lab: &Lab, name: &str) -> PathBuf {
    let dir = lab.dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    // The lab dir itself must be searchable by nobody.
    let lab_mode = std::fs::metadata(lab.dir()).unwrap().permissions().mode();
    assert!(
        lab_mode & 0o001 != 0,
        "lab dir {} mode {lab_mode:o}",
        lab.dir().display()
    );
    dir
}

// ----------------------------------------------------------- capabilities

#[test]
fn unit_capabilities_are_enough_as_nobody() {
    let _serial = serial();
    let caps = unit_capabilities();
    eprintln!("the unit's capabilities: {caps:?}");
    let lab = Lab::new("opscaps");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let c1 = lab.add_host("c1", &[br0("192.0.2.21/24")]);
    // Only XDP may answer ARP for the VIP: the kernel is told never to.
    n1.sysctl("net.ipv4.conf.all.arp_ignore", "8");
    n1.sysctl("net.ipv4.conf.eth0.arp_ignore", "8");
    // VIP_PRIMARY becomes its subnet's primary address; removing it then
    // needs promote_secondaries, written through /proc/sys by vipd.
    n1.sysctl("net.ipv4.conf.all.promote_secondaries", "0");
    n1.sysctl("net.ipv4.conf.eth0.promote_secondaries", "0");
    n1.ip(&["route", "add", "198.51.100.0/24", "dev", "eth0"]);
    let capture = c1.capture_arp("eth0");
    let dir = nobody_dir(&lab, "run-nobody");
    let vipd = Vipd::spawn(
        &n1,
        dir.join("vipd.sock"),
        &setpriv_argv(&caps),
        &format!("{VIP_A},{VIP_PRIMARY}"),
        &[],
        &[],
    );
    let status = vipd.wait_held(&[VIP_A, VIP_PRIMARY]);

    // It runs as nobody with exactly those capabilities.
    let pid = vipd.process.pid();
    let mask: u64 = caps.iter().map(|c| 1u64 << cap_number(c)).sum();
    let want = format!("{mask:016x}");
    assert_eq!(
        read_status_field(pid, "Uid")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["65534"; 4]
    );
    for set in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(read_status_field(pid, set), want, "{set} of vipd");
    }
    assert_eq!(read_status_field(pid, "NoNewPrivs"), "1");

    // Leads, configured the VIPs, attached XDP.
    assert_eq!(status["role"], "leader", "{status:#}");
    let on_eth0 = addrs_on(&n1, "eth0");
    assert!(
        on_eth0.contains(&VIP_A) && on_eth0.contains(&VIP_PRIMARY),
        "{on_eth0:?}"
    );
    let attached = status["xdp"]["attached"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        attached.iter().any(|a| a["interface"] == "eth0"),
        "XDP is not attached to eth0: {status:#}"
    );

    // Announced: the client saw gratuitous ARP for the VIP from n1.
    let mac = n1.mac("eth0");
    let garp = wait_until(Duration::from_secs(5), POLL, || {
        capture
            .arp_frames()
            .iter()
            .any(|(_, a)| a.is_gratuitous() && a.spa == VIP_A && fmt_mac(a.sha) == mac)
    });
    assert!(
        garp.is_ok(),
        "no gratuitous ARP for {VIP_A} from {mac} at the client: {:?}\nvipd stderr:\n{}",
        capture.arp_frames(),
        vipd.process.stderr()
    );

    // XDP answers (the kernel would not: arp_ignore 8).
    let arping = c1.arping(VIP_A, 3, "eth0");
    assert_eq!(
        (arping.sent, arping.received),
        (3, 3),
        "arping {VIP_A}: {}",
        arping.stdout
    );
    assert!(arping.reply_macs.iter().all(|m| *m == mac), "{arping:?}");

    // Removing the primary VIP needs promote_secondaries=1 first: an
    // operator's address in that subnet must survive vipd's shutdown.
    n1.add_addr("eth0", "198.51.100.11/24");
    std::thread::sleep(Duration::from_millis(300));
    let exit = vipd.process.terminate(Duration::from_secs(10));
    assert!(
        exit.success(),
        "vipd as nobody exited {exit}; stderr:\n{}",
        vipd.process.stderr()
    );
    let left = addrs_on(&n1, "eth0");
    assert!(
        !left.contains(&VIP_A) && !left.contains(&VIP_PRIMARY),
        "VIPs left behind: {left:?}"
    );
    assert!(
        left.contains(&Ipv4Addr::new(198, 51, 100, 11)),
        "the operator's 198.51.100.11 went with the primary VIP: {left:?}\nvipd stderr:\n{}",
        vipd.process.stderr()
    );
    assert_eq!(n1.sysctl_get("net.ipv4.conf.eth0.promote_secondaries"), "1");
    let stderr = vipd.process.stderr();
    assert!(
        !stderr.contains("ERROR") && !stderr.contains("Operation not permitted"),
        "vipd as nobody met errors:\n{stderr}"
    );
    drop(capture);
    lab.teardown().expect("lab teardown");
}

#[test]
fn without_cap_bpf_vipd_stops_at_start_saying_why() {
    let _serial = serial();
    let caps: Vec<String> = unit_capabilities()
        .into_iter()
        .filter(|c| c != "bpf")
        .collect();
    let lab = Lab::new("opsnobpf");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let dir = nobody_dir(&lab, "run-nobody");
    let vipd = Vipd::spawn(
        &n1,
        dir.join("vipd.sock"),
        &setpriv_argv(&caps),
        &VIP_A.to_string(),
        &[],
        &[],
    );
    let (last, stderr) = exits_failing(&vipd, "without CAP_BPF");
    let last = last.as_str();
    assert!(
        last.starts_with("vipd: loading the XDP program")
            && last.contains("Operation not permitted"),
        "the last line must say the XDP program could not be loaded and why:\n{stderr}"
    );
    assert!(
        !addrs_on(&n1, "eth0").contains(&VIP_A),
        "a VIP was configured before the failure"
    );
    lab.teardown().expect("lab teardown");
}

// ---------------------------------------------------------------- metrics

/// `GET path` on `addr` from inside `host`; returns (status line, headers, body).
fn http_get(host: &Host, addr: SocketAddr, path: &str) -> Option<(String, String, String)> {
    host.in_netns(|| {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let (head, body) = buf.split_once("\r\n\r\n")?;
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        Some((status.to_string(), headers.to_string(), body.to_string()))
    })
}

/// Prometheus text: `name{labels}` -> value.
fn parse_metrics(body: &str) -> BTreeMap<String, f64> {
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (k, v) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("metric line without value: {l}"));
            let v: f64 = v
                .parse()
                .unwrap_or_else(|e| panic!("metric line {l:?}: {e}"));
            (k.to_string(), v)
        })
        .collect()
}

fn metric(m: &BTreeMap<String, f64>, key: &str) -> f64 {
    *m.get(key)
        .unwrap_or_else(|| panic!("no metric {key}; have {:#?}", m.keys()))
}

#[test]
fn metrics_agree_with_vipctl() {
    let _serial = serial();
    let lab = Lab::new("opsmetrics");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let c1 = lab.add_host("c1", &[br0("192.0.2.21/24")]);
    let listen: SocketAddr = "127.0.0.1:9472".parse().unwrap();
    let vipd = vipd_with_metrics(&lab, &n1, &format!("{VIP_A},{VIP_B}"), listen);
    vipd.wait_held(&[VIP_A, VIP_B]);
    // Requests from a client: 3 for A, 5 for B (XDP counts them on n1).
    let a = c1.arping(VIP_A, 3, "eth0");
    let b = c1.arping(VIP_B, 5, "eth0");
    assert_eq!(
        (a.sent, a.received, b.sent, b.received),
        (3, 3, 5, 5),
        "{a:?} {b:?}"
    );

    let (status, headers, body) = http_get(&n1, listen, "/metrics").unwrap_or_else(|| {
        panic!(
            "no answer from {listen} in n1; vipd stderr:\n{}",
            vipd.process.stderr()
        )
    });
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{headers}"
    );
    let (status, _, _) = http_get(&n1, listen, "/nothing").expect("an answer for /nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let m = parse_metrics(&body);
    assert_eq!(metric(&m, "vipd_leader"), 1.0);
    assert_eq!(metric(&m, "vipd_vips_held"), 2.0);
    assert_eq!(metric(&m, "vipd_vips_wanted"), 2.0);
    assert!(metric(&m, "vipd_reconcile_passes_total") > 0.0);
    // Pass durations as a histogram: every pass counted (a pass may end
    // between reading the two), each in the +Inf bucket.
    let observed = metric(&m, "vipd_reconcile_duration_seconds_count");
    assert!(observed >= metric(&m, "vipd_reconcile_passes_total"));
    assert_eq!(
        metric(&m, "vipd_reconcile_duration_seconds_bucket{le=\"+Inf\"}"),
        observed
    );
    assert!(
        body.ends_with("# EOF\n"),
        "no OpenMetrics EOF marker:\n{body}"
    );
    assert!(metric(&m, "vipd_announcements_sent_total") > 0.0);
    let label = |vip: Ipv4Addr| format!("{{vip=\"{vip}\",interface=\"eth0\"}}");
    assert_eq!(
        metric(&m, &format!("vipd_arp_requests_total{}", label(VIP_A))),
        f64::from(a.sent)
    );
    assert_eq!(
        metric(&m, &format!("vipd_arp_requests_total{}", label(VIP_B))),
        f64::from(b.sent)
    );

    // The same counters as `vipctl arp stats`, read at one moment: between
    // two scrapes that agree (an announcement round may tick in between).
    let mut compared = false;
    for _ in 0..10 {
        let before = parse_metrics(&http_get(&n1, listen, "/metrics").expect("scrape").2);
        let stats = vipd.vipctl(&["arp", "stats", "--json"]);
        let after = parse_metrics(&http_get(&n1, listen, "/metrics").expect("scrape").2);
        if before != after {
            continue;
        }
        let rows = stats["vips"].as_array().expect("vips array");
        assert_eq!(rows.len(), 2, "{stats:#}");
        let mut sent_total = 0.0;
        for row in rows {
            let vip: Ipv4Addr = row["vip"].as_str().unwrap().parse().unwrap();
            let l = label(vip);
            for (name, field) in [
                ("vipd_arp_requests_total", "requests"),
                ("vipd_arp_xdp_replies_total", "xdp_replies"),
                ("vipd_arp_announcements_seen_total", "announcements_seen"),
                ("vipd_arp_announcements_sent_total", "announcements_sent"),
                ("vipd_arp_foreign_claims_total", "foreign_claims"),
            ] {
                let want = row[field]
                    .as_f64()
                    .unwrap_or_else(|| panic!("{field} in {row}"));
                assert_eq!(
                    metric(&before, &format!("{name}{l}")),
                    want,
                    "{name} of {vip} vs vipctl's {field}"
                );
            }
            assert_eq!(metric(&before, &format!("vipd_vip_held{l}")), 1.0);
            sent_total += row["announcements_sent"].as_f64().unwrap();
        }
        assert_eq!(metric(&before, "vipd_announcements_sent_total"), sent_total);
        compared = true;
        break;
    }
    assert!(compared, "metrics never stood still for two scrapes");
    lab.teardown().expect("lab teardown");
}

/// Whether the server closed `s` (EOF or reset) within its read timeout.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn metrics_connections_are_capped_timed_out_and_ended_at_shutdown() {
    let _serial = serial();
    let lab = Lab::new("opsconns");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let listen: SocketAddr = "127.0.0.1:9473".parse().unwrap();
    let vipd = vipd_with_metrics(&lab, &n1, &VIP_A.to_string(), listen);
    vipd.wait_held(&[VIP_A]);
    let max = vipd::metrics::LIMITS.max;
    let idle_for = vipd::metrics::LIMITS.timeout;
    let connect = || {
        n1.in_netns(|| {
            let s = TcpStream::connect_timeout(&listen, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("connecting to {listen}: {e}"));
            s.set_read_timeout(Some(idle_for * 4)).unwrap();
            s
        })
    };
    // `max` idle clients take every slot; one more is closed unanswered,
    // and so is a scrape while they stay.
    let mut idle: Vec<TcpStream> = (0..max).map(|_| connect()).collect();
    let mut excess = connect();
    assert!(
        closed_by_server(&mut excess),
        "connection {} of {max} allowed was not closed",
        max + 1
    );
    assert!(
        http_get(&n1, listen, "/metrics").is_none(),
        "a scrape was answered while {max} idle connections held every slot"
    );
    // The idle ones are closed after the connection timeout; then the
    // port answers again.
    for (i, s) in idle.iter_mut().enumerate() {
        assert!(
            closed_by_server(s),
            "idle connection {i} still open after {:?}",
            idle_for * 4
        );
    }
    let (status, _, _) = http_get(&n1, listen, "/metrics").unwrap_or_else(|| {
        panic!(
            "no scrape answered after the idle connections timed out; stderr:\n{}",
            vipd.process.stderr()
        )
    });
    assert_eq!(status, "HTTP/1.1 200 OK");

    // Shutdown ends open connections (metrics and the control socket)
    // instead of waiting on them.
    let mut open_metrics = connect();
    let mut open_api = std::os::unix::net::UnixStream::connect(&vipd.socket)
        .expect("connecting to the control socket");
    open_api.set_read_timeout(Some(idle_for * 4)).unwrap();
    open_api.write_all(b"{").unwrap();
    let exit = vipd.process.terminate(Duration::from_secs(20));
    assert!(
        exit.success(),
        "vipd exited {exit} with connections open; stderr:\n{}",
        vipd.process.stderr()
    );
    assert!(closed_by_server(&mut open_metrics));
    // Closed unanswered: EOF, or ECONNRESET when the server closed before
    // it had read our byte (a Unix socket closed with unread data resets).
    let mut rest = Vec::new();
    let r = open_api.read_to_end(&mut rest);
    assert!(
        rest.is_empty()
            && (matches!(r, Ok(0))
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset)),
        "the control socket connection was answered or not closed: {r:?}, {rest:?}"
    );
    lab.teardown().expect("lab teardown");
}

#[test]
fn a_metrics_port_in_use_stops_vipd_before_it_configures_a_vip() {
    let _serial = serial();
    let lab = Lab::new("opsport");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let listen: SocketAddr = "127.0.0.1:9474".parse().unwrap();
    let taken = n1.in_netns(|| std::net::TcpListener::bind(listen).expect("taking the port"));
    let vipd = vipd_with_metrics(&lab, &n1, &VIP_A.to_string(), listen);
    let (last, stderr) = exits_failing(&vipd, "with its port taken");
    let last = last.as_str();
    assert!(
        last.starts_with(&format!("vipd: cannot listen for metrics on {listen}")),
        "the last line must name the port:\n{stderr}"
    );
    assert!(
        !addrs_on(&n1, "eth0").contains(&VIP_A),
        "a VIP was configured before the failure"
    );
    drop(taken);
    lab.teardown().expect("lab teardown");
}

// ----------------------------------------------------------------- config

fn vipd_config(file: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(vipd_bin());
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("VIPD_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--config")
        .arg(file)
        .args(args)
        .envs(env.iter().copied());
    run(&mut cmd)
}

/// `key = "value"  # source` lines of `vipd check-config`.
fn effective(out: &Output) -> BTreeMap<String, (String, String)> {
    vipd_tests::lab::check_config_settings(&out.stdout)
}

#[test]
fn config_file_errors_and_precedence() {
    let scratch = Scratch::new("config");
    let write = |name: &str, body: &str| -> PathBuf {
        let p = scratch.0.join(name);
        std::fs::write(&p, body).unwrap();
        p
    };

    // An unknown key stops vipd (and check-config) with status 2, naming it.
    let bad_key = write("bad-key.toml", "garp_rounds = 3\ngarp_intervall = \"5s\"\n");
    for args in [&[][..], &["check-config"][..]] {
        let out = vipd_config(&bad_key, args, &[]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("garp_intervall") && err.contains(bad_key.to_str().unwrap()),
            "the error must name the key and the file: {err}"
        );
    }

    // A bad duration names the key and the value.
    let bad_value = write("bad-duration.toml", "garp_interval = \"10q\"\n");
    let out = vipd_config(&bad_value, &[], &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("garp_interval") && err.contains("10q"),
        "the error must name the key and the value: {err}"
    );

    // A good file: check-config exits 0 and says where each value comes from.
    let good = write(
        "good.toml",
        "garp_rounds = 3\ngarp_interval = \"2s\"\nstatic_vips = \"192.0.2.100\"\n",
    );
    let out = vipd_config(&good, &["check-config"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("# configuration is valid"));
    let e = effective(&out);
    assert_eq!(e["garp_rounds"], ("3".into(), "file".into()), "{e:#?}");
    assert_eq!(e["garp_interval"], ("2s".into(), "file".into()));
    assert_eq!(e["static_vips"], ("192.0.2.100".into(), "file".into()));
    assert_eq!(e["garp_mode"], ("both".into(), "default".into()));

    // The environment beats the file; a flag beats the environment.
    let out = vipd_config(&good, &["check-config"], &[("VIPD_GARP_ROUNDS", "4")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e = effective(&out);
    assert_eq!(
        e["garp_rounds"],
        ("4".into(), "environment".into()),
        "{e:#?}"
    );
    assert_eq!(e["garp_interval"], ("2s".into(), "file".into()));
    let out = vipd_config(
        &good,
        &["--garp-rounds", "5", "check-config"],
        &[("VIPD_GARP_ROUNDS", "4")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e = effective(&out);
    assert_eq!(e["garp_rounds"], ("5".into(), "flag".into()), "{e:#?}");

    // The shipped example is all comments: valid, everything at its default.
    let out = vipd_config(
        &workspace_root().join("packaging/vipd.toml"),
        &["check-config"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e = effective(&out);
    assert!(
        e.iter()
            .all(|(k, (_, source))| source != "file" && (k == "config" || source != "flag")),
        "{e:#?}"
    );
}

// ------------------------------------------------------------------- logs

#[test]
fn json_logs_parse_and_name_the_vip() {
    let _serial = serial();
    let lab = Lab::new("opslogs");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let vipd = vipd_as_root(
        &lab,
        &n1,
        &VIP_A.to_string(),
        &["--log-format", "json"],
        &[],
    );
    vipd.wait_held(&[VIP_A]);
    let exit = vipd.process.terminate(Duration::from_secs(10));
    assert!(exit.success(), "vipd exited {exit}");
    let stderr = vipd.process.stderr();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}"))
        })
        .collect();
    assert!(lines.len() >= 3, "{stderr}");
    for l in &lines {
        assert!(
            l["timestamp"].is_string()
                && l["level"].is_string()
                && l["fields"]["message"].is_string(),
            "a log line without timestamp, level or message: {l}"
        );
    }
    let added = lines
        .iter()
        .find(|l| l["fields"]["message"] == "VIP added")
        .unwrap_or_else(|| panic!("no \"VIP added\" line:\n{stderr}"));
    assert_eq!(added["fields"]["vip"], VIP_A.to_string(), "{added}");
    assert_eq!(added["fields"]["ifname"], "eth0", "{added}");
    assert_eq!(added["level"], "INFO", "{added}");
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "VIP removed"
                && l["fields"]["vip"] == VIP_A.to_string()),
        "no \"VIP removed\" line for {VIP_A}:\n{stderr}"
    );
    lab.teardown().expect("lab teardown");
}

// -------------------------------------------------------------- sd_notify

/// What arrived, in order, on a netlink socket subscribed to IPv4 address
/// events and on the notification socket, both polled by one thread.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    VipAdded,
    Notify(String),
}

#[test]
fn sd_notify_ready_after_the_vip_is_configured() {
    let _serial = serial();
    let lab = Lab::new("opsnotify");
    let n1 = lab.add_host("n1", &[br0("192.0.2.11/24")]);
    let notify_path = lab.dir().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("binding the notification socket");
    notify
        .set_nonblocking(true)
        .expect("non-blocking notification socket");

    // The observer listens in n1 before vipd starts.
    let nl = route_socket(&n1, libc::RTMGRP_IPV4_IFADDR as u32);
    let observer = std::thread::spawn(move || {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut buf = vec![0u8; 65536];
        while Instant::now() < deadline && !seen.iter().any(|s| matches!(s, Seen::Notify(_))) {
            let mut fds = [
                libc::pollfd {
                    fd: nl.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: notify.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: fds is a valid array of two pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            // Netlink first: when both are readable, the address
            // event does not lose to a notification queued later.
            if fds[0].revents & libc::POLLIN != 0 {
                // SAFETY: buf is valid for its length.
                let n = unsafe {
                    libc::recv(
                        nl.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n > 0
                    && addr_events(&buf[..n as usize], Instant::now())
                        .iter()
                        .any(|e| e.new && e.addr.addr == VIP_A)
                    && !seen.contains(&Seen::VipAdded)
                {
                    seen.push(Seen::VipAdded);
                }
            }
            if fds[1].revents & libc::POLLIN != 0
                && let Ok(n) = notify.recv(&mut buf)
            {
                seen.push(Seen::Notify(text(&buf[..n])));
            }
        }
        seen
    });
    let vipd = vipd_as_root(
        &lab,
        &n1,
        &VIP_A.to_string(),
        &[],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let seen = observer.join().expect("observer thread");
    let stderr = vipd.process.stderr();
    let ready = seen
        .iter()
        .find_map(|s| match s {
            Seen::Notify(m) => Some(m.clone()),
            Seen::VipAdded => None,
        })
        .unwrap_or_else(|| {
            panic!("no notification within 20 s (seen {seen:?}); vipd stderr:\n{stderr}")
        });
    assert_eq!(ready, "READY=1\nSTATUS=role leader\n");
    assert_eq!(
        seen,
        [Seen::VipAdded, Seen::Notify(ready)],
        "READY=1 must follow the VIP's configuration"
    );
    assert!(addrs_on(&n1, "eth0").contains(&VIP_A));
    lab.teardown().expect("lab teardown");
}

/// Waits (15 s at most) for a vipd that must fail at start; returns its
/// last stderr line and the whole stderr.
fn exits_failing(vipd: &Vipd, why: &str) -> (String, String) {
    let exit = vipd.process.wait_timeout(Duration::from_secs(15));
    let stderr = vipd.process.stderr();
    let exit = exit.unwrap_or_else(|| panic!("vipd {why} kept running:\n{stderr}"));
    assert!(!exit.success(), "vipd {why} exited {exit}");
    let last = stderr.lines().last().unwrap_or_default().to_string();
    (last, stderr)
}
