//! The claim handed to a pooled sandbox's waiter, in one place for both sides: the host's pool
//! adapter encodes it, the waiter inside the sandbox decodes it.
//!
//! The wire format is what `execve` takes apart: NUL-terminated records, so any environment value
//! or argument that a process can receive passes through unchanged (neither can contain NUL).
//!
//! ```text
//! sandboxd-claim/1\0        header and version
//! env KEY=VALUE\0           zero or more: set on top of the waiter's own (the profile's) env
//! arg WORD\0                zero or more: the command; none means the waiter's default command
//! dir /PATH\0               at most one: the working directory, else the waiter's, re-entered
//! end\0                     a claim without it was cut short and is refused
//! ```

use std::fmt;

/// The first record: the format and its version.
pub const CLAIM_HEADER: &str = "sandboxd-claim/1";
/// The last record: its absence means the writer stopped mid-claim.
const END: &str = "end";
/// Bound on a claim's size: the waiter never reads more.
pub const MAX_CLAIM_BYTES: u64 = 1 << 20;

/// What a pooled sandbox becomes when claimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// Set on top of the waiter's environment (the profile's): the chat's identity and any more.
    pub env: Vec<(String, String)>,
    /// The program and its arguments; empty: the default command the waiter was started with.
    pub command: Vec<String>,
    /// Absolute working directory of the command; `None`: the waiter's own, entered again by
    /// path, so that a volume attached over it since the waiter started is the one seen.
    pub working_dir: Option<String>,
}

/// Why bytes are not a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimError {
    /// Nothing at all was written (a writer opened the FIFO and closed it).
    Empty,
    /// The first record is not [`CLAIM_HEADER`] (another format, or another version).
    UnknownHeader(String),
    /// The claim stops before its `end` record.
    Truncated,
    /// A record after `end`, or bytes after the last NUL.
    TrailingData,
    /// A record that is not UTF-8 (`index` counts records from 0, the header included).
    NotUtf8 { index: usize },
    /// A record this version does not know.
    UnknownRecord(String),
    /// An `env` record without `=` or with an empty name.
    BadEnv(String),
    /// A second `dir` record, or one that is not an absolute path.
    BadDir(String),
    /// A value that cannot be encoded: it contains NUL (or `=` in an env name).
    Unencodable(String),
}

impl fmt::Display for ClaimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty claim"),
            Self::UnknownHeader(header) => {
                write!(
                    f,
                    "not a claim of this version: header {header:?}, want {CLAIM_HEADER:?}"
                )
            }
            Self::Truncated => write!(f, "claim cut short: no `end` record"),
            Self::TrailingData => write!(f, "data after the claim's `end` record"),
            Self::NotUtf8 { index } => write!(f, "claim record {index} is not UTF-8"),
            Self::UnknownRecord(record) => write!(f, "unknown claim record {record:?}"),
            Self::BadEnv(record) => write!(f, "env record is not NAME=VALUE: {record:?}"),
            Self::BadDir(record) => {
                write!(
                    f,
                    "dir record is repeated or not an absolute path: {record:?}"
                )
            }
            Self::Unencodable(value) => write!(f, "cannot encode {value:?}: contains NUL or '='"),
        }
    }
}

impl std::error::Error for ClaimError {}

impl Claim {
    /// The claim on the wire.
    ///
    /// # Errors
    /// [`ClaimError::Unencodable`] for a value containing NUL, or an env name that is empty or
    /// contains `=`; [`ClaimError::BadDir`] for a relative working directory.
    pub fn encode(&self) -> Result<Vec<u8>, ClaimError> {
        let mut out = Vec::new();
        let mut record = |text: &str| -> Result<(), ClaimError> {
            if text.contains('\0') {
                return Err(ClaimError::Unencodable(text.to_owned()));
            }
            out.extend_from_slice(text.as_bytes());
            out.push(0);
            Ok(())
        };
        record(CLAIM_HEADER)?;
        for (name, value) in &self.env {
            if name.is_empty() || name.contains('=') {
                return Err(ClaimError::Unencodable(name.clone()));
            }
            record(&format!("env {name}={value}"))?;
        }
        for arg in &self.command {
            record(&format!("arg {arg}"))?;
        }
        if let Some(dir) = &self.working_dir {
            if !dir.starts_with('/') {
                return Err(ClaimError::BadDir(dir.clone()));
            }
            record(&format!("dir {dir}"))?;
        }
        record(END)?;
        Ok(out)
    }

    /// The claim in `bytes`, which must hold exactly one whole claim.
    ///
    /// # Errors
    /// A [`ClaimError`] saying what is wrong; a claim is taken whole or not at all.
    pub fn decode(bytes: &[u8]) -> Result<Self, ClaimError> {
        if bytes.is_empty() {
            return Err(ClaimError::Empty);
        }
        // Every record ends with NUL: the piece after the last NUL must be empty.
        let mut pieces: Vec<&[u8]> = bytes.split(|byte| *byte == 0).collect();
        let unterminated = pieces.pop().unwrap_or_default();
        let mut records = pieces.into_iter().enumerate().map(|(index, piece)| {
            std::str::from_utf8(piece).map_err(|_| ClaimError::NotUtf8 { index })
        });
        match records.next().transpose()? {
            Some(CLAIM_HEADER) => {}
            Some(other) => return Err(ClaimError::UnknownHeader(other.to_owned())),
            None => return Err(ClaimError::UnknownHeader(lossy(unterminated))),
        }
        let mut claim = Self::default();
        let mut ended = false;
        for record in records {
            let record = record?;
            if ended {
                return Err(ClaimError::TrailingData);
            }
            if record == END {
                ended = true;
            } else if let Some(pair) = record.strip_prefix("env ") {
                match pair.split_once('=') {
                    Some((name, value)) if !name.is_empty() => {
                        claim.env.push((name.to_owned(), value.to_owned()));
                    }
                    _ => return Err(ClaimError::BadEnv(pair.to_owned())),
                }
            } else if let Some(arg) = record.strip_prefix("arg ") {
                claim.command.push(arg.to_owned());
            } else if let Some(dir) = record.strip_prefix("dir ") {
                if claim.working_dir.is_some() || !dir.starts_with('/') {
                    return Err(ClaimError::BadDir(dir.to_owned()));
                }
                claim.working_dir = Some(dir.to_owned());
            } else {
                return Err(ClaimError::UnknownRecord(record.to_owned()));
            }
        }
        if !ended {
            return Err(ClaimError::Truncated);
        }
        if !unterminated.is_empty() {
            return Err(ClaimError::TrailingData);
        }
        Ok(claim)
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn chat_claim() -> Claim {
        Claim {
            env: vec![
                ("SANDBOX_CHAT_ID".to_owned(), "0190-abc".to_owned()),
                ("MULTI".to_owned(), "a=b\nsecond line".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ],
            command: vec![
                "sh".to_owned(),
                "-c".to_owned(),
                "echo 'a b' && env".to_owned(),
            ],
            working_dir: Some("/workspace".to_owned()),
        }
    }

    fn records(records: &[&str]) -> Vec<u8> {
        records.iter().flat_map(|r| r.bytes().chain([0])).collect()
    }

    #[test]
    fn a_claim_survives_encoding_with_newlines_equals_and_empty_values() {
        let claim = chat_claim();
        assert_eq!(Claim::decode(&claim.encode().unwrap()), Ok(claim));
    }

    #[test]
    fn a_claim_without_command_or_dir_leaves_both_to_the_waiter() {
        let bytes = records(&[CLAIM_HEADER, "env A=1", "end"]);
        let claim = Claim::decode(&bytes).unwrap();
        assert_eq!(claim.env, vec![("A".to_owned(), "1".to_owned())]);
        assert!(claim.command.is_empty());
        assert_eq!(claim.working_dir, None);
    }

    #[test]
    fn the_wire_format_is_nul_terminated_records() {
        let claim = Claim {
            env: vec![("K".to_owned(), "v".to_owned())],
            command: vec!["true".to_owned()],
            working_dir: None,
        };
        assert_eq!(
            claim.encode().unwrap(),
            b"sandboxd-claim/1\0env K=v\0arg true\0end\0".to_vec()
        );
    }

    #[test]
    fn nothing_written_is_an_empty_claim() {
        assert_eq!(Claim::decode(b""), Err(ClaimError::Empty));
    }

    #[test]
    fn a_claim_cut_short_is_refused_wherever_it_stops() {
        let whole = chat_claim().encode().unwrap();
        for cut in 1..whole.len() {
            let decoded = Claim::decode(&whole[..cut]);
            assert!(
                decoded.is_err(),
                "accepted a claim cut at {cut}: {decoded:?}"
            );
        }
    }

    #[test]
    fn another_format_or_version_is_refused() {
        assert_eq!(
            Claim::decode(&records(&["sandboxd-claim/2", "end"])),
            Err(ClaimError::UnknownHeader("sandboxd-claim/2".to_owned()))
        );
        assert_eq!(
            Claim::decode(b"hello\n"),
            Err(ClaimError::UnknownHeader("hello\n".to_owned()))
        );
    }

    #[test]
    fn unknown_or_malformed_records_are_refused() {
        let cases = [
            (
                vec!["cmd ls"],
                ClaimError::UnknownRecord("cmd ls".to_owned()),
            ),
            (
                vec!["env NOEQUALS"],
                ClaimError::BadEnv("NOEQUALS".to_owned()),
            ),
            (vec!["env =value"], ClaimError::BadEnv("=value".to_owned())),
            (
                vec!["dir relative"],
                ClaimError::BadDir("relative".to_owned()),
            ),
            (
                vec!["dir /a", "dir /b"],
                ClaimError::BadDir("/b".to_owned()),
            ),
        ];
        for (middle, wanted) in cases {
            let mut all = vec![CLAIM_HEADER];
            all.extend(middle);
            all.push("end");
            assert_eq!(Claim::decode(&records(&all)), Err(wanted));
        }
    }

    #[test]
    fn data_after_the_end_is_refused() {
        assert_eq!(
            Claim::decode(&records(&[CLAIM_HEADER, "end", "arg x"])),
            Err(ClaimError::TrailingData)
        );
        let mut unterminated = records(&[CLAIM_HEADER, "end"]);
        unterminated.extend_from_slice(b"junk");
        assert_eq!(Claim::decode(&unterminated), Err(ClaimError::TrailingData));
    }

    #[test]
    fn a_record_that_is_not_utf8_is_refused() {
        let mut bytes = records(&[CLAIM_HEADER]);
        bytes.extend_from_slice(b"arg \xff\0end\0");
        assert_eq!(Claim::decode(&bytes), Err(ClaimError::NotUtf8 { index: 1 }));
    }

    #[test]
    fn values_that_cannot_pass_through_exec_are_not_encoded() {
        let nul = Claim {
            command: vec!["a\0b".to_owned()],
            ..Claim::default()
        };
        assert!(matches!(nul.encode(), Err(ClaimError::Unencodable(_))));
        let bad_name = Claim {
            env: vec![("A=B".to_owned(), "c".to_owned())],
            ..Claim::default()
        };
        assert!(matches!(bad_name.encode(), Err(ClaimError::Unencodable(_))));
        let relative = Claim {
            working_dir: Some("workspace".to_owned()),
            ..Claim::default()
        };
        assert!(matches!(relative.encode(), Err(ClaimError::BadDir(_))));
    }
}
