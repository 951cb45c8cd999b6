//! `hy-xfer recv <listen addr:port>` / `hy-xfer send <addr:port> <bytes> [seed]`
//!
//! Byte-identical transfer check: both sides print `len <n> blake3 <hex>`; compare the lines.
#![forbid(unsafe_code)]

use std::net::{TcpListener, TcpStream};
use std::process::ExitCode;

use hypha_testbed::xfer;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["recv", listen] => TcpListener::bind(listen)
            .and_then(|l| l.accept())
            .and_then(|(s, _)| xfer::recv(s)),
        ["send", to, bytes, rest @ ..] if rest.len() <= 1 => {
            let parsed = (
                bytes.parse::<u64>(),
                rest.first().map_or(Ok(1), |s| s.parse::<u64>()),
            );
            match parsed {
                (Ok(n), Ok(seed)) => TcpStream::connect(to).and_then(|s| xfer::send(s, n, seed)),
                _ => {
                    eprintln!("bytes and seed must be integers");
                    return ExitCode::from(2);
                }
            }
        }
        _ => {
            eprintln!("usage: hy-xfer recv <addr:port> | hy-xfer send <addr:port> <bytes> [seed]");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(summary) => {
            println!("{summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hy-xfer: {e}");
            ExitCode::FAILURE
        }
    }
}
