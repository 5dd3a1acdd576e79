//! The commands: each runs the stages for one `venvimg` subcommand and reports. Nothing
//! below this folder imports it; `cli` only parses arguments and calls in here.

pub mod build;
pub mod init;
pub mod inspect;
pub mod report;
pub mod run;

pub use init::{init, render_config, InitArgs, InitFacts};
pub use inspect::{inspect, InspectArgs};
