//! The command-line interface: [`args`] parses, [`commands`] runs (printing
//! through [`crate::output`]).

pub mod args;
pub mod commands;
mod fleet;
mod shadow;
mod shift;
mod watch;

/// Exit code of `switch --wait-drain` when the old color still has flows.
pub const EXIT_DRAIN_TIMEOUT: u8 = 3;
/// Exit code of a `shift` stopped by Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;
