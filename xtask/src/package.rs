//! `cargo xtask package`: the Debian package. Lays out the installed tree
//! (binaries, systemd unit, the commented configuration as a conffile, docs,
//! shell completions and man pages the binaries generate from their clap
//! definitions),
//! writes DEBIAN/control with the run-time dependencies dpkg-shlibdeps finds,
//! and builds target/debian/vipd_<version>_<arch>.deb with dpkg-deb.

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{build, output_of, run_checked, workspace_root};

#[derive(clap::Args, Default)]
pub struct Options {
    /// Package debug binaries instead of release ones (quicker to build;
    /// the package is stripped either way).
    #[arg(long)]
    pub debug: bool,
    /// Package the `vipd` and `vipctl` found in this directory instead of
    /// building them (used by the tests).
    #[arg(long, value_name = "DIR")]
    pub bin_dir: Option<PathBuf>,
    /// Where the .deb goes (default: target/debian).
    #[arg(long, value_name = "DIR")]
    pub out_dir: Option<PathBuf>,
    /// Compress with gzip -1 instead of dpkg-deb's xz: a larger package in
    /// a few seconds instead of about a minute (for the tests).
    #[arg(long)]
    pub fast: bool,
}

const PACKAGE: &str = "vipd";
/// Debian's name for this build's architecture (the only one we build).
const ARCH: &str = "amd64";
/// Where the systemd unit goes (Debian 12 still uses /lib; usrmerge makes
/// it the same directory as /usr/lib).
const UNIT_DIR: &str = "lib/systemd/system";
/// The configuration file dpkg keeps an operator's edits of.
const CONFFILE: &str = "/etc/vipd/vipd.toml";
/// Where Debian's shells look for a package's completions, by the
/// directory `--write-shell-files` writes each shell's file in.
const COMPLETION_DIRS: &[(&str, &str)] = &[
    ("bash", "usr/share/bash-completion/completions"),
    ("zsh", "usr/share/zsh/vendor-completions"),
    ("fish", "usr/share/fish/vendor_completions.d"),
];
const MAN_DIR: &str = "usr/share/man/man1";

/// Builds the package and returns the path of the .deb (also printed).
pub fn run(opts: &Options) -> Result<PathBuf> {
    let root = workspace_root();
    let bins = match &opts.bin_dir {
        Some(dir) => dir.clone(),
        None => build::build(&build::Options {
            release: !opts.debug,
        })?,
    };
    let version = env!("CARGO_PKG_VERSION");
    let out_dir = opts
        .out_dir
        .clone()
        .unwrap_or_else(|| build::target_dir().join("debian"));
    // The staging tree is rebuilt from scratch: a file left from an earlier
    // layout must not end up in the package.
    let stage = out_dir.join(format!("{PACKAGE}_{version}_{ARCH}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    let tree = stage.join("root");

    for bin in ["vipd", "vipctl"] {
        let from = bins.join(bin);
        if !from.is_file() {
            bail!(
                "{} is missing: build it first (cargo xtask build)",
                from.display()
            );
        }
        let to = tree.join("usr/bin").join(bin);
        install(&from, &to, 0o755)?;
        // Debian ships stripped binaries; the XDP object lives in .rodata
        // and is not touched.
        run_checked(Command::new("strip").arg("--strip-unneeded").arg(&to))?;
    }
    install(
        &root.join("packaging/vipd.service"),
        &tree.join(UNIT_DIR).join("vipd.service"),
        0o644,
    )?;
    install(
        &root.join("packaging/vipd.toml"),
        &tree.join(CONFFILE.trim_start_matches('/')),
        0o644,
    )?;
    let doc = tree.join("usr/share/doc").join(PACKAGE);
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    install(
        &root.join("docs/OPERATIONS.md"),
        &doc.join("OPERATIONS.md"),
        0o644,
    )?;
    write(&doc.join("copyright"), &copyright(), 0o644)?;
    shell_files(&bins, &stage.join("shell"), &tree)?;

    let depends = shlib_depends(&stage, &tree)?;
    let control = control(version, &depends, installed_size_kib(&tree)?);
    let debian = tree.join("DEBIAN");
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("conffiles"), &format!("{CONFFILE}\n"), 0o644)?;

    let deb = out_dir.join(format!("{PACKAGE}_{version}_{ARCH}.deb"));
    let mut dpkg_deb = Command::new("dpkg-deb");
    dpkg_deb.arg("--root-owner-group");
    if opts.fast {
        dpkg_deb.args(["-Zgzip", "-z1"]);
    }
    run_checked(dpkg_deb.arg("--build").arg(&tree).arg(&deb))?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    println!("{}", deb.display());
    Ok(deb)
}

/// Asks each binary for its completions and man pages (`vipd
/// --write-shell-files DIR`, from the clap definitions) and installs them at
/// the Debian paths, the pages gzipped as policy wants (`gzip -9n`: no name
/// or time stamp, so the package is reproducible).
fn shell_files(bins: &Path, scratch: &Path, tree: &Path) -> Result<()> {
    for bin in ["vipd", "vipctl"] {
        output_of(
            Command::new(bins.join(bin))
                .arg("--write-shell-files")
                .arg(scratch),
        )?;
    }
    for (shell, to) in COMPLETION_DIRS {
        for entry in fs::read_dir(scratch.join(shell))? {
            let from = entry?.path();
            let name = from.file_name().context("completion file name")?;
            install(&from, &tree.join(to).join(name), 0o644)?;
        }
    }
    let mut pages = Vec::new();
    for entry in fs::read_dir(scratch.join("man1"))? {
        let from = entry?.path();
        let name = from.file_name().context("man page name")?;
        let to = tree.join(MAN_DIR).join(name);
        install(&from, &to, 0o644)?;
        pages.push(to);
    }
    if pages.is_empty() {
        bail!("the binaries wrote no man page in {}", scratch.display());
    }
    run_checked(Command::new("gzip").arg("-9n").args(&pages))
}

/// Copies `from` to `to` (creating its directory) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", to.display()))
}

fn write(to: &Path, text: &str, mode: u32) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(to, text).with_context(|| format!("writing {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", to.display()))
}

/// The shared libraries the binaries link, as Debian dependencies with the
/// minimum versions their symbols need (`libc6 (>= 2.34), libgcc-s1 (...)`).
/// dpkg-shlibdeps wants a source package around it: a two-stanza
/// debian/control in the staging directory is enough.
fn shlib_depends(stage: &Path, tree: &Path) -> Result<String> {
    write(
        &stage.join("debian/control"),
        &format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: {ARCH}\n"),
        0o644,
    )?;
    let out = output_of(
        Command::new("dpkg-shlibdeps")
            .current_dir(stage)
            .arg("-O")
            .arg(tree.join("usr/bin/vipd"))
            .arg(tree.join("usr/bin/vipctl")),
    )
    .context("dpkg-shlibdeps (package dpkg-dev; `cargo xtask setup` installs it)")?;
    let depends = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .with_context(|| format!("dpkg-shlibdeps printed no shlibs:Depends: {out:?}"))?
        .trim()
        .to_string();
    if !depends.contains("libc6") {
        bail!("dpkg-shlibdeps found no libc6 dependency ({depends:?}): are the binaries dynamic?");
    }
    Ok(depends)
}

/// Size of the installed files in KiB, as the Installed-Size field wants.
fn installed_size_kib(dir: &Path) -> Result<u64> {
    let mut bytes = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            bytes += installed_size_kib(&entry.path())? * 1024;
        } else {
            bytes += meta.len();
        }
    }
    Ok(bytes.div_ceil(1024))
}

fn control(version: &str, depends: &str, installed_kib: u64) -> String {
    format!(
        "Package: {PACKAGE}\n\
         Version: {version}\n\
         Architecture: {ARCH}\n\
         Maintainer: vipd developers <vipd@example.org>\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Suggests: arping, tcpdump\n\
         Section: net\n\
         Priority: optional\n\
         Description: keeps virtual IPs on exactly one node of a cluster\n \
         vipd elects one leader per cluster through ZooKeeper; the leader puts\n \
         every virtual IP on the interface its routing table picks, announces it\n \
         with gratuitous ARP and puts it back when it goes missing. An XDP\n \
         program counts ARP traffic per VIP and answers ARP requests in the\n \
         kernel. vipctl shows the node's state and edits the VIP configuration.\n"
    )
}

fn copyright() -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: {PACKAGE}\n\
         \n\
         Files: *\n\
         Copyright: the vipd developers\n\
         License: {}\n \
         On Debian systems the full texts of the Apache License 2.0 are in\n \
         /usr/share/common-licenses/Apache-2.0; the MIT license reads:\n \
         .\n \
         Permission is hereby granted, free of charge, to any person obtaining a\n \
         copy of this software and associated documentation files (the\n \
         \"Software\"), to deal in the Software without restriction, including\n \
         without limitation the rights to use, copy, modify, merge, publish,\n \
         distribute, sublicense, and/or sell copies of the Software, and to\n \
         permit persons to whom the Software is furnished to do so, subject to\n \
         the following conditions:\n \
         .\n \
         The above copyright notice and this permission notice shall be included\n \
         in all copies or substantial portions of the Software.\n \
         .\n \
         THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS\n \
         OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF\n \
         MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT.\n \
         IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY\n \
         CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT,\n \
         TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE\n \
         SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.\n",
        env!("CARGO_PKG_LICENSE")
    )
}
