//! The `hypha` binary: runs a node, or talks to a running one through its admin API.
#![forbid(unsafe_code)]

mod cli;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    if let Err(e) = cli.settings() {
        eprintln!("hypha: {e:#}");
        std::process::exit(2);
    }
}
