//! Reading the settings: the command line and the environment through clap,
//! then the TOML file's keys as arguments for what those two left at its
//! default; and the effective value and origin of each for `check-config`.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{ArgAction, CommandFactory, FromArgMatches, parser::ValueSource};

use super::{Config, DEFAULT_CONFIG_PATH};

/// Why the configuration cannot be used.
#[derive(Debug)]
pub enum ConfigError {
    /// Help or version was asked for, or clap refused the command line:
    /// clap prints it and picks the exit code.
    Clap(clap::Error),
    /// Anything else: a message naming the file, key and value.
    Invalid(String),
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigError::Clap(e) => write!(f, "{e}"),
            ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

/// The settings and, for `check-config`, each one's value and origin.
pub struct Loaded {
    pub config: Config,
    pub effective: Vec<(String, String, &'static str)>,
}

/// Reads flags, environment and the configuration file, in that order of
/// precedence, and validates the result.
pub fn load<I, T>(args: I) -> Result<Loaded, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = Config::command()
        .try_get_matches_from(&args)
        .map_err(ConfigError::Clap)?;
    let path: PathBuf = first
        .get_one::<PathBuf>("config")
        .cloned()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
    let explicit = first.value_source("config") != Some(ValueSource::DefaultValue);
    let file_args = match std::fs::read_to_string(&path) {
        Ok(text) => file_arguments(&path, &text, &first)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => Vec::new(),
        Err(e) => {
            return Err(ConfigError::Invalid(format!(
                "cannot read the configuration file {}: {e}",
                path.display()
            )));
        }
    };
    let file_keys: Vec<(String, String)> = file_args
        .iter()
        .map(|(k, l, _)| (k.clone(), l.clone()))
        .collect();
    let mut argv: Vec<OsString> = args.first().cloned().into_iter().collect();
    for (_, _, a) in file_args {
        argv.extend(a);
    }
    argv.extend(args.iter().skip(1).cloned());
    let matches = Config::command().try_get_matches_from(&argv).map_err(|e| {
        let arg = e
            .get(clap::error::ContextKind::InvalidArg)
            .map(|v| v.to_string())
            .unwrap_or_default();
        match file_keys
            .iter()
            .find(|(_, long)| arg.starts_with(&format!("--{long} ")) || arg == format!("--{long}"))
        {
            Some((key, _)) => ConfigError::Invalid(format!(
                "configuration file {}: key {key}: {}",
                path.display(),
                e.kind_message(),
            )),
            None => ConfigError::Clap(e),
        }
    })?;
    let config = Config::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
    config.validate().map_err(ConfigError::Invalid)?;
    let effective = effective(&matches, &file_keys);
    Ok(Loaded { config, effective })
}

trait KindMessage {
    fn kind_message(&self) -> String;
}

impl KindMessage for clap::Error {
    /// clap's message without its usage footer.
    fn kind_message(&self) -> String {
        let text = self.to_string();
        let line = text.lines().next().unwrap_or_default();
        line.trim_start_matches("error: ").to_string()
    }
}

/// Turns the file's keys into command-line arguments for every setting the
/// command line and the environment left at its default. Unknown keys and
/// values of the wrong type are errors naming the key.
fn file_arguments(
    path: &Path,
    text: &str,
    cli: &clap::ArgMatches,
) -> Result<Vec<(String, String, Vec<OsString>)>, ConfigError> {
    let bad =
        |m: String| ConfigError::Invalid(format!("configuration file {}: {m}", path.display()));
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| bad(e.message().to_string()))?;
    let cmd = Config::command();
    let mut out = Vec::new();
    for (key, value) in &table {
        let long = key.replace('_', "-");
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()) && long != "config")
        else {
            return Err(bad(format!("unknown key {key:?}")));
        };
        let id = arg.get_id().as_str();
        if matches!(
            cli.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let scalar = |v: &toml::Value| -> Result<String, ConfigError> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => Err(bad(format!(
                    "key {key}: {other:?} is not a string, number or boolean"
                ))),
            }
        };
        let mut a: Vec<OsString> = Vec::new();
        match (arg.get_action(), value) {
            (ArgAction::SetTrue, toml::Value::Boolean(b)) => {
                if *b {
                    a.push(format!("--{long}").into());
                }
            }
            (ArgAction::SetTrue, other) => {
                return Err(bad(format!("key {key}: {other:?} is not true or false")));
            }
            (_, toml::Value::Array(items)) => {
                for item in items {
                    a.push(format!("--{long}={}", scalar(item)?).into());
                }
            }
            (_, v) => a.push(format!("--{long}={}", scalar(v)?).into()),
        }
        out.push((key.clone(), long, a));
    }
    Ok(out)
}

fn effective(
    m: &clap::ArgMatches,
    file_keys: &[(String, String)],
) -> Vec<(String, String, &'static str)> {
    let cmd = Config::command();
    let mut out = Vec::new();
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if matches!(long, "help" | "version") {
            continue;
        }
        let id = arg.get_id().as_str();
        let value = m
            .get_raw(id)
            .map(|vals| {
                vals.map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let source = match m.value_source(id) {
            Some(ValueSource::CommandLine) if file_keys.iter().any(|(_, l)| l == long) => "file",
            Some(ValueSource::CommandLine) => "flag",
            Some(ValueSource::EnvVariable) => "environment",
            Some(ValueSource::DefaultValue) => "default",
            _ => "unset",
        };
        out.push((long.replace('-', "_"), value, source));
    }
    out
}
