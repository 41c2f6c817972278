//! `cargo xtask setup`: make a fresh machine of this kind able to build and
//! test vipd. Idempotent: each step checks first and does nothing when done.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{is_root, output_of, run_checked};

/// Every external program the project runs (agent, tests, demo, benches,
/// packaging), with the Debian package setup installs for it. A test
/// (`programs` below) checks each against `dpkg -S` and scans the sources
/// for programs missing here: a fresh machine has only what this lists.
pub const PROGRAMS: &[(&str, &str)] = &[
    ("apt-get", "apt"),
    ("arping", "arping"),
    ("bpftool", "bpftool"),
    // The lab's web console (`busybox httpd`) and the client that reads it
    // (`busybox wget`).
    ("busybox", "busybox"),
    // Runs the package's bash completion in its test.
    ("bash", "bash"),
    ("cat", "coreutils"),
    ("date", "coreutils"),
    ("dpkg-deb", "dpkg"),
    ("dpkg-query", "dpkg"),
    ("dpkg-shlibdeps", "dpkg-dev"),
    ("ethtool", "ethtool"),
    // The man pages in the package, as Debian policy wants them.
    ("gzip", "gzip"),
    ("id", "coreutils"),
    ("ip", "iproute2"),
    // libiscsi's user-space initiator tools: the lab's iSCSI client.
    ("iscsi-perf", "libiscsi-bin"),
    ("iscsi-readcapacity16", "libiscsi-bin"),
    ("iscsi-test-cu", "libiscsi-bin"),
    // Through the alternatives system: the JRE package it depends on owns it.
    ("java", "default-jre-headless"),
    ("keepalived", "keepalived"),
    // The chaos run's nemesis drops a node's packets with it.
    ("nft", "nftables"),
    ("nice", "coreutils"),
    ("nproc", "coreutils"),
    ("ping", "iputils-ping"),
    ("setpriv", "util-linux"),
    // The fence test runs a vipd in a time namespace (`unshare --time`).
    ("unshare", "util-linux"),
    ("sh", "dash"),
    ("sleep", "coreutils"),
    ("strip", "binutils"),
    ("systemd-analyze", "systemd"),
    // The user-space iSCSI target every lab node serves its LUN with.
    ("tgtadm", "tgt"),
    ("tgtd", "tgt"),
    ("uname", "coreutils"),
];

/// Programs setup does not install from Debian: the Rust toolchain's, the
/// one setup builds itself, and `sudo`, which `cargo xtask run` uses only
/// for a user who is not root (and who cannot install packages either).
#[cfg(test)]
const OUTSIDE_SETUP: &[&str] = &["cargo", "rustc", "rustup", "bpf-linker", "sudo"];

/// Debian packages setup installs beyond the providers of [`PROGRAMS`].
const EXTRA_PACKAGES: &[&str] = &[
    // The server the tests, demo and benches start (java runs its jars).
    "zookeeper",
    // The capture tool docs/OPERATIONS.md tells operators to watch ARP with.
    "tcpdump",
];

/// Debian packages the project, its tests, demo and benchmarks use.
pub fn packages() -> Vec<&'static str> {
    let mut all: Vec<&str> = PROGRAMS.iter().map(|(_, pkg)| *pkg).collect();
    all.extend(EXTRA_PACKAGES);
    all.sort_unstable();
    all.dedup();
    all
}

/// The bpf-linker release measured to work with the pinned aya (docs/DESIGN.md, facts).
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(clap::Args, Default)]
pub struct Options {
    /// Skip the Debian packages (for machines where apt is not available).
    #[arg(long)]
    no_apt: bool,
}

pub fn run(opts: &Options) -> Result<()> {
    if !opts.no_apt {
        apt_packages()?;
    }
    nightly_rust_src()?;
    bpf_linker()?;
    eprintln!("setup: everything is in place");
    Ok(())
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = packages()
        .into_iter()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: Debian packages present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "setup: these Debian packages are missing and only root can install them: {}",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
    run_checked(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing),
    )
}

fn deb_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_rust_src() -> Result<()> {
    let installed = output_of(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        "nightly",
    ]))
    .context("the nightly toolchain is needed for the XDP program (rustup toolchain list)")?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("setup: nightly rust-src present");
        return Ok(());
    }
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

/// What the nightly toolchain says of its LLVM: the major version and the
/// file name of the shared library it ships.
struct NightlyLlvm {
    major: u32,
    lib: PathBuf,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let vv = output_of(Command::new("rustc").args(["+nightly", "-vV"]))?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` names no LLVM version")?;
    let major: u32 = version
        .split('.')
        .next()
        .and_then(|m| m.trim().parse().ok())
        .with_context(|| format!("cannot read the LLVM major version from {version:?}"))?;
    let sysroot = output_of(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let libdir = Path::new(sysroot.trim()).join("lib");
    let lib = fs::read_dir(&libdir)
        .with_context(|| format!("reading {}", libdir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", libdir.display()))?;
    Ok(NightlyLlvm { major, lib })
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker links against the nightly's own libLLVM through a prefix
/// directory whose `lib/` holds the library under both names it is asked
/// for: `libLLVM.so` at build time, the versioned name at run time.
fn llvm_prefix(llvm: &NightlyLlvm) -> Result<PathBuf> {
    let prefix = cargo_home()
        .join("vipd-llvm")
        .join(format!("llvm-{}", llvm.major));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let versioned = llvm
        .lib
        .file_name()
        .context("libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(versioned)] {
        let link = lib.join(name);
        if fs::read_link(&link).ok().as_deref() == Some(llvm.lib.as_path()) {
            continue;
        }
        let _ = fs::remove_file(&link);
        symlink(&llvm.lib, &link)
            .with_context(|| format!("linking {} -> {}", link.display(), llvm.lib.display()))?;
    }
    Ok(prefix)
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    let prefix = llvm_prefix(&llvm)?;
    if bpf_linker_works() {
        eprintln!("setup: bpf-linker present (LLVM {})", llvm.major);
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker against the nightly's LLVM {} (about a minute)",
        llvm.major
    );
    run_checked(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{}", llvm.major)),
    )?;
    if !bpf_linker_works() {
        bail!(
            "bpf-linker was installed but does not start; is {} on PATH and {} present?",
            cargo_home().join("bin").display(),
            prefix.join("lib").display()
        );
    }
    Ok(())
}

/// Every external program the project runs is installed by setup: the
/// table is checked against dpkg, and the sources against the table.
#[cfg(test)]
mod programs {
    use std::{collections::BTreeMap, fs, path::Path, process::Command};

    use super::{OUTSIDE_SETUP, PROGRAMS, packages};
    use crate::workspace_root;

    /// Where a source file names a program it runs: `Command::new("X")`,
    /// an argv array handed to the lab's `exec`/`spawn` helpers, the program
    /// after `ip netns exec NS`, and the commands of an `sh -c` script.
    fn programs_named_in(text: &str) -> Vec<String> {
        let argv = [
            r#"Command::new\(\s*"([^"]+)""#,
            r#"\b(?:exec|exec_ok|spawn|spawn_logged|cmd)\(\s*&?\[\s*"([^"]+)""#,
            r#"\bcmd\(\s*"([^"]+)""#,
            r#""netns",\s*"exec",\s*(?:"[^"]*"|[\w.&()]+),\s*"([^"]+)""#,
        ];
        let mut found = Vec::new();
        for pattern in argv {
            let re = regex::Regex::new(pattern).unwrap();
            found.extend(re.captures_iter(text).map(|c| c[1].to_string()));
        }
        // `sh -c "<script>"`: the first word of each command of the script.
        let script = regex::Regex::new(r#""sh",\s*"-c",\s*"([^"]+)""#).unwrap();
        let keywords = [
            "do", "then", "else", "if", "while", "until", "!", "{", "(", "exec",
        ];
        let redirection = regex::Regex::new(r"\d*>&\d+").unwrap();
        let builtins = [
            "trap", "done", "fi", "for", ":", "echo", "true", "false", "cd", "read", "kill",
            "wait", "exit", "set", "}", ")",
        ];
        for c in script.captures_iter(text) {
            let script = redirection.replace_all(&c[1], "");
            for command in script.split([';', '|', '&', '\n']) {
                let Some(word) = command.split_whitespace().find(|w| !keywords.contains(w)) else {
                    continue;
                };
                if !builtins.contains(&word) {
                    found.push(word.to_string());
                }
            }
        }
        found
    }

    fn rust_sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn the_scanner_finds_programs_in_every_form() {
        let text = r#"
            Command::new("tgtd").arg("-f");
            host.exec(&[
                "iscsi-ls", "-s",
            ]);
            n2.spawn(["sh", "-c", "trap '' TERM; echo x >&2; while :; do taskset -c 1 x; done; exec tcpdump"]);
            c.args(["netns", "exec", ns, "java"]);
            cmd("uname", &["-r"]);
        "#;
        let mut found = programs_named_in(text);
        found.sort();
        assert_eq!(
            found,
            [
                "iscsi-ls", "java", "sh", "taskset", "tcpdump", "tgtd", "uname"
            ]
        );
    }

    #[test]
    fn every_program_the_sources_run_is_in_the_table() {
        let root = workspace_root();
        let mut files = Vec::new();
        for dir in ["vipd", "vipd-common", "vipd-ebpf", "tests", "xtask"] {
            rust_sources(&root.join(dir), &mut files);
        }
        let known: Vec<&str> = PROGRAMS
            .iter()
            .map(|(p, _)| *p)
            .chain(OUTSIDE_SETUP.iter().copied())
            .collect();
        let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for file in &files {
            // This file's own examples are not programs the project runs.
            if file.ends_with("xtask/src/setup.rs") {
                continue;
            }
            let text = fs::read_to_string(file).unwrap();
            for program in programs_named_in(&text) {
                if !known.contains(&program.as_str()) {
                    let rel = file.strip_prefix(&root).unwrap().display().to_string();
                    missing.entry(program).or_default().push(rel);
                }
            }
        }
        assert!(
            missing.is_empty(),
            "programs run by the project but missing from setup's PROGRAMS table \
             (a fresh machine will not have them): {missing:?}"
        );
        assert!(files.len() > 20, "scanned only {} files", files.len());
    }

    /// The Debian package that owns the program found on PATH.
    fn owner(program: &str) -> Result<String, String> {
        let out = Command::new("sh")
            .args(["-c", &format!("command -v {program}")])
            .output()
            .unwrap();
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if path.is_empty() {
            return Err("not on PATH".to_string());
        }
        let resolved = fs::canonicalize(&path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| path.clone());
        // usrmerge: dpkg may know the file under /bin rather than /usr/bin.
        let bin_alias = resolved.replacen("/usr/", "/", 1);
        for candidate in [resolved.as_str(), path.as_str(), bin_alias.as_str()] {
            let out = Command::new("dpkg")
                .args(["-S", candidate])
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(line) = text.lines().find(|l| !l.starts_with("diversion by"))
                && let Some((pkg, _)) = line.split_once(':')
            {
                return Ok(pkg.trim().to_string());
            }
        }
        Err(format!("{resolved} belongs to no Debian package"))
    }

    fn depends(package: &str) -> Vec<String> {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Depends}", package])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split([',', '|'])
            .filter_map(|d| d.split_whitespace().next().map(str::to_string))
            .collect()
    }

    /// Runs after `cargo xtask setup` (as `cargo xtask test` does): each
    /// program of the table is installed, by the package the table names.
    #[test]
    fn setup_installs_the_package_of_every_program() {
        let packages = packages();
        let mut wrong = Vec::new();
        for (program, package) in PROGRAMS {
            assert!(packages.contains(package), "{package} is not installed");
            match owner(program) {
                Ok(pkg) if pkg == *package || depends(package).contains(&pkg) => {}
                Ok(pkg) => wrong.push(format!(
                    "{program}: provided by {pkg}, the table says {package}"
                )),
                Err(e) => wrong.push(format!("{program}: {e} (package {package})")),
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }
}
