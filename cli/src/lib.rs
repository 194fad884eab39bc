//! What the daemons' command lines share: log output (plain off a terminal, a progress bar on
//! one, an optional log file) and `--set KEY=VALUE` overrides of any config key.

#![warn(missing_docs)]

pub mod logging;
pub mod reference;
pub mod settings;
