//! Gatehouse bastion: a russh server that stock OpenSSH clients connect to,
//! an upstream russh client towards targets, and the session recorder.
#![forbid(unsafe_code)]

mod commands;
pub mod error;
pub mod exec;
mod jit;
pub mod probe;
mod proxy;
pub mod recording;
pub mod server;
pub mod target;
pub mod upstream;

pub use error::BastionError;
pub use proxy::sig_name;
pub use server::{BastionConfig, run};
