//! `hypha bench …`: the benchmark is its own binary, `hypha-bench`, built from `crates/bench`, so
//! that this one carries none of it. This subcommand only finds it beside the running executable
//! and execs it with the arguments unchanged (same pid, so signals and exit status are its own).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;

use anyhow::{bail, Context};

/// Replaces this process by `hypha-bench ARGS`; returns only when that cannot be done.
pub fn forward(args: &[OsString]) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the hypha binary")?;
    let bench = exe.with_file_name("hypha-bench");
    if !bench.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p hypha-bench`",
            bench.display()
        );
    }
    let err = std::process::Command::new(&bench).args(args).exec();
    Err(err).with_context(|| format!("cannot run {}", bench.display()))
}
