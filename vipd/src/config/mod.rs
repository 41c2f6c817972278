//! vipd's settings: flags, `VIPD_*` environment variables and a TOML file,
//! with precedence flag > environment > file > default, validated once at
//! start into one [`Config`] that is passed down.

mod args;
mod load;
mod values;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use clap::{Parser, Subcommand};

use self::values::parse_vips;
pub use self::{
    args::{EngineArgs, LogFormat, ServingArgs, XdpArgs, XdpMode, ZkArgs},
    load::{ConfigError, Loaded, load},
    values::{VipList, format_duration, parse_duration, parse_positive_duration},
};
use crate::names::{hostname, valid_name};

/// The vipd agent.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "vipd",
    version,
    about = "Keeps virtual IPs on exactly one node of a cluster"
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<VipdCommand>,

    /// Configuration file (TOML; keys are the long flag names with `_` or
    /// `-`). A missing file at the default path is not an error.
    #[arg(global = true, long, env = "VIPD_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Single-node mode: this node always leads and serves these VIPs
    /// (comma-separated, IPv4 and IPv6). Without --zk this is the whole
    /// configuration.
    #[arg(global = true, long, env = "VIPD_STATIC_VIPS", value_parser = parse_vips, default_value = "")]
    pub static_vips: VipList,

    #[command(flatten)]
    pub zk: ZkArgs,

    #[command(flatten)]
    pub engine: EngineArgs,

    #[command(flatten)]
    pub xdp: XdpArgs,

    #[command(flatten)]
    pub serving: ServingArgs,

    /// Local control socket for vipctl. Default: /run/vipd/vipd.sock, or
    /// /run/vipd/<instance>.sock for a named instance.
    #[arg(global = true, long, env = "VIPD_API_SOCKET")]
    pub api_socket: Option<PathBuf>,

    /// This vipd's instance name, for several vipd on one host (two
    /// clusters, a test and a production instance): each instance has its
    /// own ownership mark on the addresses it adds, its own control socket
    /// and its own interfaces. The default instance keeps a host with one
    /// vipd as it was.
    #[arg(global = true, long, env = "VIPD_INSTANCE", default_value = crate::instance::DEFAULT_INSTANCE)]
    pub instance: String,

    /// The ownership mark (IFA_PROTO, 4-255) of this instance's addresses,
    /// when the one derived from its name is taken by another instance on
    /// the host. Default: 118 for the default instance, 128-183 from the
    /// name for another.
    #[arg(global = true, long, env = "VIPD_INSTANCE_MARK")]
    pub instance_mark: Option<u8>,

    /// Serve Prometheus metrics on this address (off when unset).
    #[arg(global = true, long, env = "VIPD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(
        global = true,
        long,
        env = "VIPD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// Where vipd looks for its configuration file by default.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/vipd/vipd.toml";

#[derive(Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum VipdCommand {
    /// Validate the configuration and print the effective settings with
    /// where each comes from; exit 0 if valid, 2 if not.
    CheckConfig,
}

impl Config {
    /// Checks what clap cannot: combinations of settings.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.zk.hosts.is_some() && !self.static_vips.0.is_empty() {
            return Err("--static-vips and --zk exclude each other: in cluster mode the VIPs come from ZooKeeper".into());
        }
        if self
            .zk
            .hosts
            .as_deref()
            .is_some_and(|h| h.trim().is_empty())
        {
            return Err("--zk is empty: give host:port[,host:port...]".into());
        }
        if !valid_name(&self.zk.cluster) {
            return Err(format!(
                "invalid cluster name {:?}: use letters, digits, '-', '_' and '.'",
                self.zk.cluster
            ));
        }
        if let Some(id) = &self.zk.node_id
            && !valid_name(id)
        {
            return Err(format!(
                "invalid node id {id:?}: use letters, digits, '-', '_' and '.'"
            ));
        }
        self.zk.lease_times()?;
        self.instance()?;
        if let Some(p) = &self.serving.on_change
            && !p.is_absolute()
        {
            return Err(format!(
                "--on-change {}: give an absolute path (the hook runs without a shell and without PATH lookup)",
                p.display()
            ));
        }
        Ok(())
    }

    /// The instance: its name and ownership mark.
    pub(crate) fn instance(&self) -> Result<crate::instance::Instance, String> {
        crate::instance::Instance::new(&self.instance, self.instance_mark)
            .map_err(|e| e.to_string())
    }

    /// The control socket: `--api-socket`, or the instance's default.
    pub(crate) fn api_socket(&self) -> PathBuf {
        match &self.api_socket {
            Some(p) => p.clone(),
            None => self
                .instance()
                .map(|i| i.default_socket())
                .unwrap_or_else(|_| PathBuf::from(crate::instance::DEFAULT_SOCKET)),
        }
    }

    /// What `check-config` says about the instance: its mark and control
    /// socket, and warnings about settings that would make instances on
    /// one host collide.
    pub fn instance_lines(&self) -> Vec<String> {
        let Ok(instance) = self.instance() else {
            return Vec::new();
        };
        let socket = self.api_socket();
        let mut lines = vec![format!(
            "# instance {:?}: ownership mark {} on the addresses it adds, control socket {}",
            instance.name(),
            instance.mark(),
            socket.display()
        )];
        if !instance.is_default() {
            if instance.mark() == crate::instance::DEFAULT_MARK {
                lines.push(format!(
                    "# warning: instance {:?} uses the default instance's mark {}: the two cannot run on one host",
                    instance.name(),
                    instance.mark()
                ));
            }
            if socket == Path::new(crate::instance::DEFAULT_SOCKET) {
                lines.push(format!(
                    "# warning: instance {:?} uses the default instance's control socket {}: the two cannot run on one host",
                    instance.name(),
                    socket.display()
                ));
            }
        }
        lines
    }

    /// The check and hook programs that vipd would refuse to run, each with
    /// why (`sandbox::check_program`): someone other than root could change them.
    pub fn unsafe_programs(&self) -> Vec<crate::sandbox::UnsafeProgram> {
        let checks = self.serving.checks.iter().filter_map(|c| match c {
            crate::health::CheckSpec::Exec { path, .. } => Some(("--check", path)),
            _ => None,
        });
        let hook = self.serving.on_change.iter().map(|p| ("--on-change", p));
        checks
            .chain(hook)
            .filter_map(|(what, p)| crate::sandbox::check_program(what, p).err())
            .collect()
    }

    /// Static VIPs beyond what the XDP maps hold (per family), which only
    /// the kernel will answer for; 0 with XDP off.
    pub fn static_vips_over_xdp_capacity(&self) -> usize {
        if self.xdp.disabled {
            return 0;
        }
        let cap = vipd_common::MAX_VIPS as usize;
        let v4 = self
            .static_vips
            .0
            .iter()
            .filter(|v| v.v4().is_some())
            .count();
        let v6 = self.static_vips.0.len() - v4;
        v4.saturating_sub(cap) + v6.saturating_sub(cap)
    }

    /// The node id: `--node-id`, or the host name.
    pub(crate) fn node_id(&self) -> String {
        self.zk.node_id.clone().unwrap_or_else(hostname)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        net::{Ipv4Addr, Ipv6Addr},
        time::Duration,
    };

    use super::*;
    use clap::CommandFactory;

    use crate::vip::Vip;

    #[test]
    fn check_config_sees_static_vips_beyond_the_xdp_maps() {
        let cap = vipd_common::MAX_VIPS as usize;
        for (n4, n6, xdp_off, want) in [
            (2, 0, false, 0),
            (cap, cap, false, 0),
            (cap + 1, 0, false, 1),
            (3, cap + 4, false, 4),
            (cap + 2, cap + 3, false, 5),
            (cap + 2, cap + 3, true, 0),
        ] {
            let mut c = Config::try_parse_from(["vipd"]).unwrap();
            let v4 = (0..n4).map(|i| Vip::new(Ipv4Addr::from(0xc633_0000 + i as u32)).unwrap());
            let base = u128::from("2001:db8::1:0".parse::<Ipv6Addr>().unwrap());
            let v6 = (0..n6).map(|i| Vip::new_v6(Ipv6Addr::from(base + i as u128)).unwrap());
            c.static_vips = VipList(v4.chain(v6).collect());
            c.xdp.disabled = xdp_off;
            assert_eq!(
                c.static_vips_over_xdp_capacity(),
                want,
                "{n4} IPv4, {n6} IPv6, XDP off {xdp_off}"
            );
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("200ms").unwrap(), Duration::from_millis(200));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        for bad in ["", "10", "s", "10x", "-1s", "1..2s", "ms"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(10)), "10s");
    }

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::try_parse_from([
            "vipd",
            "--static-vips",
            "192.0.2.100,192.0.2.101",
            "--garp-interval",
            "200ms",
            "--garp-rounds",
            "6",
            "--xdp-interface",
            "eth0",
            "--xdp-interface",
            "eth1",
        ])
        .unwrap();
        assert_eq!(c.static_vips.0.len(), 2);
        assert_eq!(c.engine.garp_interval, Duration::from_millis(200));
        assert_eq!(c.xdp.interfaces, vec!["eth0", "eth1"]);
        assert_eq!(c.engine.reconcile_interval, Duration::from_secs(3));
        c.validate().unwrap();
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    /// A file in the target's tmp dir, removed on drop (no extra crate).
    mod tempfile_path {
        pub(crate) struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub(crate) fn new(text: &str) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vipd-config-test-{}-{}.toml",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, text).unwrap();
                TempPath(p)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    #[test]
    fn file_then_env_then_flag() {
        let f = write(
            "garp_interval = \"5s\"\ngarp_rounds = 3\nxdp_interface = [\"eth0\", \"eth1\"]\nno_xdp = true\nreconcile-interval = \"1s\"\n",
        );
        let p = f.0.to_str().unwrap();
        let l = load(["vipd", "--config", p]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.engine.garp_interval, Duration::from_secs(5));
        assert_eq!(l.config.engine.garp_rounds, 3);
        assert_eq!(l.config.engine.reconcile_interval, Duration::from_secs(1));
        assert_eq!(l.config.xdp.interfaces, vec!["eth0", "eth1"]);
        assert!(l.config.xdp.disabled);
        assert!(
            l.effective
                .contains(&("garp_interval".into(), "5s".into(), "file"))
        );
        assert!(
            l.effective
                .contains(&("garp_mode".into(), "both".into(), "default"))
        );
        // A flag beats the file.
        let l =
            load(["vipd", "--config", p, "--garp-rounds", "9"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.engine.garp_rounds, 9);
        assert_eq!(l.config.engine.garp_interval, Duration::from_secs(5));
    }

    #[test]
    fn file_errors_name_key_and_value() {
        let f = write("garp_intervall = \"5s\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("unknown key") && e.contains("garp_intervall"),
            "{e}"
        );
        let f = write("garp_interval = \"5q\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("garp_interval") && e.contains("5q"), "{e}");
        let f = write("static_vips = \"192.0.2.1,127.0.0.1\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("static_vips") && e.contains("127.0.0.1"), "{e}");
        let f = write("garp_rounds = [\n");
        assert!(load(["vipd", "--config", f.0.to_str().unwrap()]).is_err());
        let e = load(["vipd", "--config", "/nonexistent/vipd.toml"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/vipd.toml"), "{e}");
    }

    #[test]
    fn every_option_is_global() {
        Config::command().debug_assert();
        for arg in Config::command().get_arguments() {
            let id = arg.get_id().as_str();
            assert!(
                matches!(id, "help" | "version") || arg.is_global_set(),
                "--{id} must be global (accepted before and after the subcommand)"
            );
        }
    }

    #[test]
    fn options_before_or_after_the_subcommand() {
        let f = write("garp_rounds = 3\nsession_timeout = \"4s\"\n");
        let p = f.0.to_str().unwrap();
        // `vipd check-config --config FILE` (as `nginx -t -c FILE`) and
        // `vipd --config FILE check-config` read the same file.
        for args in [
            &["vipd", "check-config", "--config", p][..],
            &["vipd", "--config", p, "check-config"],
        ] {
            let l = load(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(l.config.command, Some(VipdCommand::CheckConfig), "{args:?}");
            assert_eq!(l.config.config, PathBuf::from(p), "{args:?}");
            assert_eq!(l.config.engine.garp_rounds, 3, "{args:?}");
            assert_eq!(
                l.config.zk.session_timeout,
                Duration::from_secs(4),
                "{args:?}"
            );
            assert!(
                l.effective
                    .contains(&("garp_rounds".into(), "3".into(), "file")),
                "{args:?}"
            );
            assert!(
                l.effective.contains(&("config".into(), p.into(), "flag")),
                "{args:?}: {:?}",
                l.effective
            );
        }
        // A flag beats the file in either position.
        for args in [
            &["vipd", "check-config", "--config", p, "--garp-rounds", "9"][..],
            &["vipd", "--garp-rounds", "9", "check-config", "--config", p],
            &["vipd", "--config", p, "check-config", "--garp-rounds", "9"],
        ] {
            let l = load(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
            assert_eq!(l.config.engine.garp_rounds, 9, "{args:?}");
            assert!(
                l.effective
                    .contains(&("garp_rounds".into(), "9".into(), "flag")),
                "{args:?}"
            );
        }
        let c = Config::try_parse_from([
            "vipd",
            "check-config",
            "--zk",
            "zk1:2181",
            "--cluster",
            "prod",
            "--xdp-interface",
            "eth0",
            "--no-xdp",
        ])
        .unwrap();
        assert_eq!(c.command, Some(VipdCommand::CheckConfig));
        assert_eq!(c.zk.hosts.as_deref(), Some("zk1:2181"));
        assert_eq!(c.zk.cluster, "prod");
        assert_eq!(c.xdp.interfaces, vec!["eth0"]);
        assert!(c.xdp.disabled);
        // A bad value after the subcommand is refused as before it.
        let e = load(["vipd", "check-config", "--garp-interval", "10q"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("10q"), "{e}");
        // An explicit file that is missing is an error in either position.
        let e = load(["vipd", "check-config", "--config", "/nonexistent/vipd.toml"])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("/nonexistent/vipd.toml"), "{e}");
    }

    #[test]
    fn bad_values_name_themselves() {
        let e =
            Config::try_parse_from(["vipd", "--static-vips", "192.0.2.1,224.0.0.1"]).unwrap_err();
        assert!(e.to_string().contains("224.0.0.1"), "{e}");
        let e = Config::try_parse_from(["vipd", "--garp-interval", "10q"]).unwrap_err();
        assert!(e.to_string().contains("10q"), "{e}");
        let e = Config::try_parse_from(["vipd", "--reconcile-interval", "0s"]).unwrap_err();
        assert!(e.to_string().contains("greater than zero"), "{e}");
        let c = Config::try_parse_from([
            "vipd",
            "--zk",
            "127.0.0.1:2181",
            "--static-vips",
            "192.0.2.1",
        ])
        .unwrap();
        assert!(c.validate().is_err());
        let c = Config::try_parse_from(["vipd", "--cluster", "a/b"]).unwrap();
        assert!(c.validate().unwrap_err().contains("a/b"));
    }

    #[test]
    fn lease_defaults_and_is_checked_against_the_session() {
        let c = Config::try_parse_from(["vipd"]).unwrap();
        let t = c.zk.lease_times().unwrap();
        assert_eq!(t.length, Duration::from_secs(2));
        assert_eq!(t.margin, vipd_lease::DEFAULT_MARGIN);
        assert_eq!(t.takeover_after(), Duration::from_millis(2600));
        let c = Config::try_parse_from(["vipd", "--lease", "200ms", "--session-timeout", "1s"])
            .unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.zk.lease_times().unwrap().length,
            Duration::from_millis(200)
        );
        let c = Config::try_parse_from(["vipd", "--lease", "5s"]).unwrap();
        let e = c.validate().unwrap_err();
        assert!(e.contains("--lease 5s") && e.contains("session"), "{e}");
        let c = Config::try_parse_from(["vipd", "--takeover-margin", "9ms"]).unwrap();
        assert!(c.validate().unwrap_err().contains("takeover-margin"));
        let c = Config::try_parse_from(["vipd", "--takeover-margin", "10ms"]).unwrap();
        c.validate().unwrap();
        let f = write("lease = \"7s\"\nsession_timeout = \"8s\"\n");
        let e = load(["vipd", "--config", f.0.to_str().unwrap()])
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--lease 7s"), "{e}");
        let f = write("lease = \"1s\"\n");
        let l = load(["vipd", "--config", f.0.to_str().unwrap()]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.config.zk.lease, Some(Duration::from_secs(1)));
    }
}
