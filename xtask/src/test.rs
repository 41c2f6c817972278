//! `cargo xtask test`: what CI runs. Setup, build, formatting, lints, then
//! every test, privileged ones included: a test that needs root fails
//! without it, it never skips.

use std::{fs, os::unix::fs::PermissionsExt as _, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{build, is_root, output_of, run_checked, setup, workspace_root};

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup` (it is quick when nothing is missing).
    #[arg(long)]
    no_setup: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    no_lint: bool,
    /// Arguments for `cargo test` after `--` (a test name filter, say).
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(opts: &Options) -> Result<()> {
    let root = workspace_root();
    if !opts.no_setup {
        setup::run(&setup::Options::default())?;
    }
    build::build(&build::Options { release: false })?;
    if !opts.no_lint {
        run_checked(
            Command::new("cargo")
                .current_dir(&root)
                .args(["fmt", "--all", "--check"]),
        )?;
        run_checked(Command::new("cargo").current_dir(&root).args([
            "clippy",
            "--workspace",
            "--exclude",
            "vipd-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        // The eBPF crate only lints on nightly, checked for the host with
        // panic=abort (its own panic handler clashes with std's otherwise).
        run_checked(Command::new("cargo").current_dir(&root).args([
            "+nightly",
            "clippy",
            "--package",
            "vipd-ebpf",
            "--",
            "-D",
            "warnings",
            "-C",
            "panic=abort",
        ]))?;
    }
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args(["test", "--workspace", "--exclude", "vipd-ebpf"]);
    if !opts.args.is_empty() {
        cmd.arg("--").args(&opts.args);
        return run_checked(&mut cmd);
    }
    run_checked(&mut cmd)?;
    if is_root() {
        unprivileged_unit_tests(&root)?;
    }
    Ok(())
}

/// The agent crate's own tests must pass for a contributor without root
/// (privileged tests live in the `tests` crate): run its test binaries
/// again as `nobody`.
fn unprivileged_unit_tests(root: &Path) -> Result<()> {
    let json = output_of(Command::new("cargo").current_dir(root).args([
        "test",
        "--package",
        "vipd",
        "--no-run",
        "--message-format=json",
    ]))?;
    let binaries: Vec<String> = json
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["profile"]["test"] == true)
        .filter_map(|m| m["executable"].as_str().map(str::to_string))
        .collect();
    if binaries.is_empty() {
        bail!("`cargo test -p vipd --no-run` named no test binary");
    }
    // Copied out of the tree: the checkout may sit where `nobody` cannot
    // reach (under /root, say).
    let dir = std::env::temp_dir().join(format!("vipd-unprivileged-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))?;
    let result = binaries.iter().try_for_each(|bin| {
        let copy = dir.join(
            Path::new(bin)
                .file_name()
                .context("test binary has no name")?,
        );
        fs::copy(bin, &copy).with_context(|| format!("copying {bin}"))?;
        run_checked(
            Command::new("setpriv")
                .current_dir(&dir)
                .env("HOME", &dir)
                .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
                .arg(&copy),
        )
        .context("vipd's unit tests fail without root (privileged tests belong in tests/)")
    });
    let _ = fs::remove_dir_all(&dir);
    result
}
