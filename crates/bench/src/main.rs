//! `hypha-bench`: the benchmark of hypha's data path, run as root on one machine (`hypha bench`
//! runs it too). It builds a lab of network namespaces with `testbed`, runs raw veth, hypha and
//! other nodes in it, and measures them with iperf3 and ping; [`run`] describes the method.
//!
//! It lives beside the product, not inside it: the `hypha` binary neither links this code nor its
//! dependencies (plotting, fonts, the floor's AES). It only ever touches the namespaces, devices
//! and processes it creates, and sends traffic only inside them (underlay 198.18.0.0/15, overlay
//! addresses of the nodes or fd00::/8 for the floor).
#![forbid(unsafe_code)]

mod chart;
mod cli;
mod floor;
mod measure;
mod report;
mod routes;
mod run;
mod wan;

use clap::Parser;

fn main() {
    let cli = cli::Cli::parse();
    let result = match &cli.command {
        Some(cli::Command::Floor(args)) => floor::run(args),
        Some(cli::Command::Routes(args)) => routes::run(args),
        Some(cli::Command::Wan(args)) => wan::run(args),
        None => run::run(&cli.bench),
    };
    if let Err(e) = result {
        eprintln!("hypha-bench: {e:#}");
        std::process::exit(1);
    }
}
