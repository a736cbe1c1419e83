//! From a command line to a configuration a binary can run with, in two types: the raw
//! flags as clap parses them, and the validated config the library takes (ripgrep's
//! low-level args and high-level settings). Every server crate keeps that split; this
//! module is what they share: the one error for a flag that cannot work ([`BadFlag`]), its
//! range checks, and the exit code. Durations are [`crate::HumanDuration`] on every flag.
//!
//! A flag that cannot work stops the binary before anything starts, with exit code 64
//! (EX_USAGE, as `sluice_core::server::main_with` exits for other bad configuration) and one
//! line naming the flag, its value and the rule it broke.

use std::process::ExitCode;

use clap::Parser;

/// Exit code for a command line that cannot work (sysexits' EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// A flag whose value cannot work, and what it must be instead: `--flag value: rule`, or
/// `--flag: rule` when no single value is to blame (e.g. a token file that cannot be read).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}{}{value}: {rule}", if value.is_empty() { "" } else { " " })]
pub struct BadFlag {
    /// The flag's long name, without dashes.
    pub flag: &'static str,
    /// The value given (empty: see above).
    pub value: String,
    /// What the value must be, e.g. `must be 1 to 10000`.
    pub rule: String,
}

impl BadFlag {
    /// `--flag value: rule`.
    pub fn new(flag: &'static str, value: impl ToString, rule: impl Into<String>) -> Self {
        Self {
            flag,
            value: value.to_string(),
            rule: rule.into(),
        }
    }
}

/// `Err` naming `flag` unless `min <= value <= max`.
pub fn in_range<T>(flag: &'static str, value: T, min: T, max: T) -> Result<T, BadFlag>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min || value > max {
        return Err(BadFlag::new(
            flag,
            &value,
            format!("must be {min} to {max}"),
        ));
    }
    Ok(value)
}

/// `Err` naming `flag` unless `min <= value`.
pub fn at_least<T>(flag: &'static str, value: T, min: T) -> Result<T, BadFlag>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < min {
        return Err(BadFlag::new(
            flag,
            &value,
            format!("must be at least {min}"),
        ));
    }
    Ok(value)
}

/// Parses the command line into flags `F`. `--help` and `--version` print and exit 0;
/// anything clap refuses prints its message and exits [`EXIT_USAGE`].
pub fn parse<F: Parser>() -> Result<F, ExitCode> {
    F::try_parse().map_err(|e| {
        let _ = e.print();
        if e.use_stderr() {
            ExitCode::from(EXIT_USAGE)
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// Validates flags into the config `C`; a bad flag prints `name: --flag value: rule` and
/// exits [`EXIT_USAGE`].
pub fn validate<F, C>(name: &str, flags: F) -> Result<C, ExitCode>
where
    C: TryFrom<F, Error = BadFlag>,
{
    C::try_from(flags).map_err(|e| {
        eprintln!("{name}: {e}");
        ExitCode::from(EXIT_USAGE)
    })
}

/// [`parse`], then [`validate`]: the whole command line of a service binary.
pub fn config<F, C>(name: &str) -> Result<C, ExitCode>
where
    F: Parser,
    C: TryFrom<F, Error = BadFlag>,
{
    validate(name, parse::<F>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_flag_names_itself_its_value_and_the_rule() {
        let e = in_range("workers", 0, 1, 10_000).unwrap_err();
        assert_eq!(e.to_string(), "--workers 0: must be 1 to 10000");
        assert_eq!(in_range("workers", 8, 1, 10_000), Ok(8));
    }

    #[test]
    fn durations_print_back_as_they_parse() {
        use crate::HumanDuration;
        for d in ["2ms", "1m", "10s", "250ms"] {
            assert_eq!(d.parse::<HumanDuration>().unwrap().to_string(), d);
        }
        let e = "soon".parse::<HumanDuration>().unwrap_err();
        assert!(e.contains("expected e.g."), "{e}");
    }

    #[test]
    fn a_flag_with_no_single_bad_value_reads_without_one() {
        let e = BadFlag::new("mesh-token-file", "", "cannot read /x: not found");
        assert_eq!(
            e.to_string(),
            "--mesh-token-file: cannot read /x: not found"
        );
    }
}
