//! `hypha bench` is a forwarder: it execs the `hypha-bench` binary found beside the running
//! `hypha` with the arguments unchanged, or fails in one line saying how to build it. The bench
//! itself is tested in `crates/bench/tests`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_hypha");

/// A directory holding this `hypha` (hard-linked when it can be, so no 100 MB copy) and nothing
/// else.
fn lone_hypha(dir: &Path) -> PathBuf {
    let hypha = dir.join("hypha");
    if std::fs::hard_link(BIN, &hypha).is_err() {
        std::fs::copy(BIN, &hypha).unwrap();
    }
    hypha
}

#[test]
fn bench_execs_hypha_bench_beside_it_with_the_arguments_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let hypha = lone_hypha(dir.path());
    // A stand-in that prints its pid and arguments and exits 7.
    let fake = dir.path().join("hypha-bench");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"$$\"\nprintf '<%s>\\n' \"$@\"\nexit 7\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();

    let child = Command::new(&hypha)
        .args([
            "bench",
            "--runs",
            "1",
            "--only",
            "veth,tcp1",
            "--help",
            "a b",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    // Exec'd in place: the same process, so signals sent to `hypha bench` reach the bench.
    assert_eq!(lines.next(), Some(pid.to_string().as_str()), "{stdout}");
    let args: Vec<&str> = lines.collect();
    assert_eq!(
        args,
        [
            "<--runs>",
            "<1>",
            "<--only>",
            "<veth,tcp1>",
            "<--help>",
            "<a b>"
        ]
    );
}

#[test]
fn without_hypha_bench_beside_it_bench_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let hypha = lone_hypha(dir.path());
    let out = Command::new(&hypha)
        .args(["bench", "--runs", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("hypha: ")
            && stderr.contains("hypha-bench")
            && stderr.contains("cargo build --release -p hypha-bench"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
