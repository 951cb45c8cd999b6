//! The bench end to end: a short run of `hypha bench` over every subject and scenario (hypha over
//! QUIC links included, the compare path exercised by the hypha binary), its JSON and chart, and
//! the cleanup — after a normal run, after Ctrl-C, and when `hypha-bench` refuses its arguments.
//! Root only, except the refusals.
//!
//! The root tests run the `hypha` binary beside `hypha-bench` (as users do): build both, e.g. with
//! `cargo test --workspace` or `cargo test -p hypha -p hypha-bench`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use testbed::{wait_until, ChildGuard};

const BENCH: &str = env!("CARGO_BIN_EXE_hypha-bench");

/// The `hypha` binary beside `hypha-bench`.
fn hypha() -> PathBuf {
    let bin = std::path::Path::new(BENCH).with_file_name("hypha");
    assert!(
        bin.is_file(),
        "{} is missing: build it too (cargo test -p hypha -p hypha-bench)",
        bin.display()
    );
    bin
}

/// The bench's namespaces and processes for the bench process `pid`: namespaces
/// `hy-*-<pid>-*`, processes whose command line names its scratch directory, and floor nodes
/// (`hypha-bench floor`; only one test here runs the floor, so any floor node is its leftover).
fn leftovers(pid: u32) -> Vec<String> {
    let mut left = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if testbed::owner_pid(&name) == Some(pid) {
                left.push(format!("namespace {name}"));
            }
        }
    }
    let scratch = format!("hypha-bench-{pid}");
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        let mut argv = cmd.split('\0');
        let (prog, sub) = (argv.next().unwrap_or(""), argv.next());
        if prog.ends_with("hypha-bench") && sub == Some("floor") {
            left.push(format!("floor node {:?}", e.file_name()));
        } else if cmd.contains(&scratch) {
            let what = if cmd.contains("--tun-name") {
                "node"
            } else {
                "process"
            };
            left.push(format!("{what} {:?}", e.file_name()));
        }
    }
    if std::env::temp_dir().join(&scratch).exists() {
        left.push(format!("directory {scratch}"));
    }
    left
}

fn metric<'a>(subject: &'a Value, id: &str) -> &'a Value {
    subject["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("{} has no {id}: {subject}", subject["label"]))
}

fn positive_median(subject: &Value, id: &str) -> f64 {
    let m = metric(subject, id);
    let v = m["median"].as_f64().unwrap_or(0.0);
    assert!(
        v > 0.0,
        "{} {id}: {m} (errors: {})",
        subject["label"],
        subject["errors"]
    );
    assert_eq!(m["samples"].as_array().unwrap().len(), 1, "{m}");
    v
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn short_run_measures_every_subject_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("c.png");
    let png_arg = png.to_str().unwrap();
    let hypha = hypha();
    let child = hypha_bench(&[
        "--runs",
        "1",
        "--secs",
        "1",
        "--json",
        "--chart",
        png_arg,
        "--compare",
        hypha.to_str().unwrap(),
    ]);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}\n{stderr}", out.status);
    assert_eq!(leftovers(pid), Vec::<String>::new());
    // With --json the table goes to stderr, the JSON alone to stdout.
    assert!(stderr.contains("target (hypha)"), "{stderr}");

    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["meta"]["runs"], 1);
    let subjects = v["subjects"].as_array().unwrap();
    let labels: Vec<&str> = subjects
        .iter()
        .map(|s| s["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "veth",
            "hypha",
            "hypha quic://",
            "hypha --no-sessions",
            "hypha --no-offload",
            "floor",
            "floor+aes",
            "hypha-2"
        ]
    );
    // hypha over QUIC links: the same figures as every subject, shown, not judged.
    assert_eq!(subjects[2]["role"], "hypha-quic");
    for s in subjects {
        assert_eq!(s["failed"], false, "{s}");
        assert!(s["errors"].as_array().unwrap().is_empty(), "{s}");
        for id in [
            "tcp1_gbps",
            "tcp4_gbps",
            "chain_gbps",
            "udp_gbps",
            "rtt_idle_ms",
            "rtt_load_ms",
            "fixed_gbps",
        ] {
            positive_median(s, id);
        }
        if s["role"] == "veth" {
            assert_eq!(metric(s, "tcp1_gbps")["ratio_to_veth"], 1.0);
            continue;
        }
        for id in [
            "cpu_s_per_gbit",
            "fixed_cpu_s_per_gbit_all_nodes",
            "gbit_per_cpu_s",
            "rss_udp_mb",
            "rss_peak_mb",
        ] {
            positive_median(s, id);
        }
        assert!(metric(s, "tcp1_gbps")["ratio_to_veth"].as_f64().unwrap() > 0.0);
        let reps = s["reps"].as_array().unwrap();
        assert_eq!(reps.len(), 1);
        // Three nodes ran (the chain's C included) and each had a resident set.
        let peaks = reps[0]["peak_rss_mb"].as_array().unwrap();
        assert_eq!(peaks.len(), 3, "{s}");
        assert!(peaks.iter().all(|p| p.as_f64().unwrap() > 0.0), "{s}");
        // Both nodes' CPU during the paced flow.
        let cpu = reps[0]["fixed_cpu_s"].as_array().unwrap();
        assert_eq!(cpu.len(), 2, "{s}");
    }
    let targets = v["targets"].as_array().unwrap();
    assert_eq!(targets.len(), 9);
    for t in targets {
        // A target relative to the floor has no figure for the floor itself.
        let keys: &[&str] = if t["id"].as_str().unwrap().ends_with("_vs_floor") {
            assert!(t["floor"].is_null(), "{t}");
            &["value", "sealed_floor"]
        } else {
            &["value", "floor", "sealed_floor"]
        };
        assert!(keys.iter().all(|k| t[*k].as_f64().is_some()), "{t}");
    }

    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
#[cfg_attr(not(hypha_root), ignore = "needs root: network namespaces")]
fn ctrl_c_stops_the_nodes_and_removes_the_namespaces() {
    let child = hypha_bench(&["--runs", "3", "--secs", "30", "--only", "hypha,tcp1"]);
    let pid = child.id();
    let mut guard = ChildGuard::new(child);
    // Interrupt once the nodes run.
    let scratch = format!("hypha-bench-{pid}");
    let nodes_up = wait_until(Duration::from_secs(60), || {
        leftovers(pid).iter().any(|l| l.starts_with("node"))
            || matches!(guard.try_wait(), Ok(Some(_)))
    });
    assert!(nodes_up.is_ok(), "no node of {scratch} ever ran");
    assert!(
        matches!(guard.try_wait(), Ok(None)),
        "the bench ended early"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let exited = wait_until(Duration::from_secs(60), || {
        matches!(guard.try_wait(), Ok(Some(_)))
    });
    assert!(exited.is_ok(), "the bench did not stop on SIGINT");
    let out = guard.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hypha-bench: interrupted"), "{stderr}");
    assert!(out.stdout.is_empty(), "no table after an interrupt");
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

/// `hypha bench ARGS` (which execs `hypha-bench ARGS` in place), output captured.
fn hypha_bench(args: &[&str]) -> Child {
    Command::new(hypha())
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `hypha-bench ARGS`, output captured.
fn bench(args: &[&str]) -> Child {
    Command::new(BENCH)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn refused(args: &[&str], expect: &str) {
    let child = bench(args);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("hypha-bench: ") && stderr.contains(expect),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    assert_eq!(leftovers(pid), Vec::<String>::new());
}

#[test]
fn bad_arguments_are_refused_before_anything_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    refused(
        &["--compare", plain.to_str().unwrap()],
        "not an executable file",
    );
    refused(
        &["--binary", "/nonexistent/hypha"],
        "--binary /nonexistent/hypha",
    );
    refused(&["--only", "tcp9"], "unknown name 'tcp9'");
}
