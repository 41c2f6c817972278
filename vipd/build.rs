//! Builds the XDP program (`vipd-ebpf`, nightly, bpfel-unknown-none) so that
//! every `cargo build` of vipd embeds a current eBPF object, or fails loudly.
use anyhow::{Context as _, anyhow};

fn main() -> anyhow::Result<()> {
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "vipd-ebpf")
        .ok_or_else(|| anyhow!("vipd-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    // The object also embeds the shared map types: rebuild when they change.
    if let Some(common) = root_dir.parent().map(|d| d.join("vipd-common")) {
        println!("cargo:rerun-if-changed={common}");
    }
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not on PATH: the XDP half of vipd cannot be built. \
             Run `cargo xtask setup` once (it installs bpf-linker and the nightly's rust-src), \
             then `cargo xtask build`."
        ));
    }
    let package = aya_build::Package {
        name: ebpf.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
        .context("building the XDP program failed; `cargo xtask setup` installs what it needs")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
