//! The command line, parsed by hand: three flags do not need clap, whose command tree is built
//! (and its code and data paged in) before anything else runs, on every sandbox start.

use std::ffi::OsString;
use std::path::PathBuf;

/// Command line.
#[derive(Debug, PartialEq, Eq)]
pub struct Args {
    /// Serve on this inherited, already listening unix socket fd.
    pub listen_fd: Option<i32>,
    /// Bind and serve on this unix socket path.
    pub listen: Option<PathBuf>,
    /// Seconds between SIGTERM and SIGKILL for running processes at shutdown.
    pub shutdown_grace_secs: u64,
}

/// What the command line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Run(Args),
    Help,
    Version,
}

/// A bad command line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("unknown argument {0:?}")]
    Unknown(String),
    #[error("{0} needs a value")]
    MissingValue(&'static str),
    #[error("invalid value {value:?} for {flag}: expected {expected}")]
    Invalid {
        flag: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("--listen and --listen-fd cannot be used together")]
    Conflict,
    #[error("--listen PATH or --listen-fd N is required")]
    NoListener,
}

pub const USAGE: &str = "\
The in-sandbox agent of Prism

Usage: prism-agent (--listen-fd N | --listen PATH) [--shutdown-grace-secs SECS]

Options:
      --listen-fd N              Serve on this inherited, already listening unix socket fd
                                 (0 is best: see README)
      --listen PATH              Bind and serve on this unix socket path
      --shutdown-grace-secs SECS Seconds between SIGTERM and SIGKILL for running processes
                                 at shutdown [default: 5]
  -h, --help                     Print help
  -V, --version                  Print version
";

/// Parses the arguments after the program name; `--flag value` and `--flag=value` both work.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, ArgsError> {
    let mut out = Args {
        listen_fd: None,
        listen: None,
        shutdown_grace_secs: 5,
    };
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy().into_owned();
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(OsString::from(v))),
            _ => (text.clone(), None),
        };
        let mut value = |name: &'static str| -> Result<OsString, ArgsError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().ok_or(ArgsError::MissingValue(name)),
            }
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            "--listen-fd" => {
                let v = value("--listen-fd")?;
                out.listen_fd = Some(number(&v, "--listen-fd", "a file descriptor number")?);
            }
            "--listen" => out.listen = Some(PathBuf::from(value("--listen")?)),
            "--shutdown-grace-secs" => {
                let v = value("--shutdown-grace-secs")?;
                out.shutdown_grace_secs = number(&v, "--shutdown-grace-secs", "seconds")?;
            }
            _ => return Err(ArgsError::Unknown(text)),
        }
    }
    match (&out.listen, out.listen_fd) {
        (Some(_), Some(_)) => Err(ArgsError::Conflict),
        (None, None) => Err(ArgsError::NoListener),
        _ => Ok(Parsed::Run(out)),
    }
}

fn number<T: std::str::FromStr>(
    v: &OsString,
    flag: &'static str,
    expected: &'static str,
) -> Result<T, ArgsError> {
    let s = v.to_string_lossy();
    s.parse().map_err(|_| ArgsError::Invalid {
        flag,
        value: s.into_owned(),
        expected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, ArgsError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(listen_fd: Option<i32>, listen: Option<&str>, grace: u64) -> Result<Parsed, ArgsError> {
        Ok(Parsed::Run(Args {
            listen_fd,
            listen: listen.map(PathBuf::from),
            shutdown_grace_secs: grace,
        }))
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!(p(&["--listen-fd", "3"]), run(Some(3), None, 5));
        assert_eq!(p(&["--listen-fd=0"]), run(Some(0), None, 5));
        assert_eq!(
            p(&["--listen", "/tmp/a=b.sock", "--shutdown-grace-secs=1"]),
            run(None, Some("/tmp/a=b.sock"), 1)
        );
        assert_eq!(
            p(&["--shutdown-grace-secs", "9", "--listen=/s"]),
            run(None, Some("/s"), 9)
        );
        assert_eq!(p(&["--listen-fd", "3", "--help"]), Ok(Parsed::Help));
        assert_eq!(p(&["-V"]), Ok(Parsed::Version));
    }

    #[test]
    fn rejects_bad_lines() {
        assert_eq!(p(&[]), Err(ArgsError::NoListener));
        assert_eq!(
            p(&["--listen-fd", "3", "--listen", "/s"]),
            Err(ArgsError::Conflict)
        );
        assert_eq!(
            p(&["--listen-fd"]),
            Err(ArgsError::MissingValue("--listen-fd"))
        );
        assert!(matches!(
            p(&["--listen-fd", "x"]),
            Err(ArgsError::Invalid {
                flag: "--listen-fd",
                ..
            })
        ));
        assert!(matches!(
            p(&["--listen=/s", "--shutdown-grace-secs", "-1"]),
            Err(ArgsError::Invalid { .. })
        ));
        assert_eq!(
            p(&["--lisen", "/s"]),
            Err(ArgsError::Unknown("--lisen".into()))
        );
        assert_eq!(p(&["serve"]), Err(ArgsError::Unknown("serve".into())));
    }
}
