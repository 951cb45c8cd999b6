//! The `hy-xfer` binary over loopback: both sides print the same `len … blake3 …` line, and it
//! is the expected digest of the seeded stream.

use std::process::{Command, Stdio};
use std::time::Duration;

use hypha_testbed::{wait_until, xfer, ChildGuard};

#[test]
fn send_and_recv_print_the_same_summary() {
    let bin = env!("CARGO_BIN_EXE_hy-xfer");
    // Find a free port, then let the receiver bind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let recv = ChildGuard::new(
        Command::new(bin)
            .args(["recv", &addr])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut sent = None;
    // Connection refused until the receiver listens: retry the sender until it gets through.
    wait_until(Duration::from_secs(10), || {
        let out = Command::new(bin)
            .args(["send", &addr, "3000000", "77"])
            .output()
            .unwrap();
        if out.status.success() {
            sent = Some(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        }
        out.status.success()
    })
    .unwrap();
    let got = recv.wait_with_output().unwrap();
    let got = String::from_utf8_lossy(&got.stdout).trim().to_owned();
    assert_eq!(Some(got.clone()), sent);
    assert_eq!(got, xfer::expected(3_000_000, 77).to_string());
}
