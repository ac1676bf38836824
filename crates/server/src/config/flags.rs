//! The command line, derived from the settings the sections declare: each [`Setting`] becomes one
//! `--flag` (its TOML key with `-` for `_`), documented in `--help` with its environment variable
//! and default, and parsed by clap into the figment layer that overrides the environment.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Arg, ArgMatches, Command, value_parser};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};

/// Name of the flags' figment layer; [`super::ConfigError::Parse`] names a flag when a value
/// came from it.
pub(super) const FLAGS_LAYER: &str = "command-line flags";

/// How clap parses a setting's value, and so which kind of value it hands to serde.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    /// Kept as text; the section's type parses it (addresses, durations, paths, URLs).
    Text,
    /// A non-negative integer.
    Count,
    /// `true` or `false`.
    Boolean,
    /// One of a fixed list of words.
    Choice(&'static [&'static str]),
}

/// The default `--help` shows for a setting.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ShownDefault {
    /// A value the flag accepts (a test checks it equals the section's real default).
    Value(&'static str),
    /// The setting is unset by default; says what that means.
    Unset(&'static str),
}

/// One setting of the flat configuration, declared once by the section that owns it: its key is
/// the TOML key, the flag (`--grpc-addr`) and the environment variable (`SANDBOXD_GRPC_ADDR`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Setting {
    pub(crate) key: &'static str,
    pub(crate) value_name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) help: &'static str,
    pub(crate) default: ShownDefault,
    /// A foreign environment variable read before `SANDBOXD_<KEY>` (which wins over it); its
    /// lower-case name must be the key.
    pub(crate) env_fallback: Option<&'static str>,
}

impl Setting {
    /// A text setting whose default is the value `default`.
    pub(crate) const fn new(
        key: &'static str,
        value_name: &'static str,
        default: &'static str,
        help: &'static str,
    ) -> Self {
        Self {
            key,
            value_name,
            kind: Kind::Text,
            help,
            default: ShownDefault::Value(default),
            env_fallback: None,
        }
    }

    /// A text setting that is unset by default; `meaning` says what unset does.
    pub(crate) const fn unset(
        key: &'static str,
        value_name: &'static str,
        meaning: &'static str,
        help: &'static str,
    ) -> Self {
        Self {
            default: ShownDefault::Unset(meaning),
            ..Self::new(key, value_name, "", help)
        }
    }

    pub(crate) const fn kind(self, kind: Kind) -> Self {
        Self { kind, ..self }
    }

    pub(crate) const fn env_fallback(self, variable: &'static str) -> Self {
        Self {
            env_fallback: Some(variable),
            ..self
        }
    }

    /// `SANDBOXD_<KEY>`.
    pub(crate) fn env_name(&self) -> String {
        format!("SANDBOXD_{}", self.key.to_uppercase())
    }

    fn flag_name(&self) -> String {
        self.key.replace('_', "-")
    }

    fn arg(&self) -> Arg {
        let env = match self.env_fallback {
            Some(fallback) => format!("{fallback} or {}", self.env_name()),
            None => self.env_name(),
        };
        let default = match self.default {
            ShownDefault::Value(value) | ShownDefault::Unset(value) => value,
        };
        let arg = Arg::new(self.key)
            .long(self.flag_name())
            .value_name(self.value_name)
            .help(format!("{} [env: {env}] [default: {default}]", self.help));
        match self.kind {
            Kind::Text => arg.value_parser(value_parser!(String)),
            Kind::Count => arg.value_parser(value_parser!(usize)),
            Kind::Boolean => arg.value_parser(value_parser!(bool)),
            Kind::Choice(words) => arg.value_parser(PossibleValuesParser::new(words)),
        }
    }

    fn value_in(&self, matches: &ArgMatches) -> Option<Value> {
        match self.kind {
            Kind::Text | Kind::Choice(_) => matches
                .get_one::<String>(self.key)
                .map(|text| Value::from(text.clone())),
            Kind::Count => matches.get_one::<usize>(self.key).copied().map(Value::from),
            Kind::Boolean => matches.get_one::<bool>(self.key).copied().map(Value::from),
        }
    }
}

/// `sandboxd` command line: the config file, and every setting as a flag that overrides the
/// environment and the file.
#[derive(Debug, Clone, Default)]
pub struct Cli {
    /// TOML configuration file (`--config`, `SANDBOXD_CONFIG`).
    pub config: Option<PathBuf>,
    /// The settings given as flags, by key, already of the kind their [`Setting`] declares.
    pub(super) flags: Dict,
}

impl Cli {
    /// The clap command: `--config` and one flag per setting of every section.
    #[must_use]
    pub fn command() -> Command {
        let command = Command::new("sandboxd")
            .version(env!("CARGO_PKG_VERSION"))
            .about("sandboxd: one Docker sandbox per AI-agent chat, behind a gRPC API")
            .after_help(
                "Precedence: defaults < --config FILE < SANDBOXD_* environment < flags. \
Every flag is also a TOML key (e.g. --session-ttl = session_ttl) and an environment variable \
(SANDBOXD_SESSION_TTL); agent profiles are [agents.<agent_id>] tables in the file \
(or SANDBOXD_AGENTS__<ID>__<KEY>). Durations are humantime: 90s, 30m, 2h. \
See deploy/sandboxd.example.toml for every setting with its default.",
            )
            .arg(
                Arg::new("config")
                    .long("config")
                    .value_name("FILE")
                    .env("SANDBOXD_CONFIG")
                    .value_parser(value_parser!(PathBuf))
                    .help("TOML configuration file"),
            );
        super::settings().fold(command, |command, setting| command.arg(setting.arg()))
    }

    /// Parses the process arguments; prints help, version or the error and exits like clap.
    #[must_use]
    pub fn parse() -> Self {
        Self::from_matches(&Self::command().get_matches())
    }

    /// Parses `args` (the first one is the program name).
    ///
    /// # Errors
    /// clap's error for an unknown flag or a value of the wrong kind.
    pub fn try_parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Ok(Self::from_matches(
            &Self::command().try_get_matches_from(args)?,
        ))
    }

    fn from_matches(matches: &ArgMatches) -> Self {
        let flags = super::settings()
            .filter_map(|setting| Some((setting.key.to_owned(), setting.value_in(matches)?)))
            .collect();
        Self {
            config: matches.get_one::<PathBuf>("config").cloned(),
            flags,
        }
    }
}

/// The flags are the last figment layer.
impl Provider for Cli {
    fn metadata(&self) -> Metadata {
        Metadata::named(FLAGS_LAYER)
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Map::from([(Profile::Default, self.flags.clone())]))
    }
}
