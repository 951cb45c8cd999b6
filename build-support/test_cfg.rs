// Shared by the build scripts of crates that hold root/namespace or interop tests
// (`include!`d, not a crate). It sets two cfgs:
//   hypha_root      — the build runs as root, so tests that need namespaces, veth and TUN can run;
//   hypha_mycelium  — MYCELIUM_BIN names a mycelium binary for the interop tests.
// Tests mark themselves `#[cfg_attr(not(hypha_root), ignore = "needs root")]`, so an unprivileged
// `cargo test` reports them as ignored instead of passing them.
fn emit_test_cfgs() {
    println!("cargo::rustc-check-cfg=cfg(hypha_root)");
    println!("cargo::rustc-check-cfg=cfg(hypha_mycelium)");
    println!("cargo::rerun-if-env-changed=MYCELIUM_BIN");
    println!("cargo::rerun-if-env-changed=USER");
    println!("cargo::rerun-if-env-changed=SUDO_UID");
    let euid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(str::to_owned))
        })
        .and_then(|u| u.parse::<u32>().ok());
    if euid == Some(0) {
        println!("cargo::rustc-cfg=hypha_root");
    }
    if std::env::var_os("MYCELIUM_BIN").is_some_and(|v| !v.is_empty()) {
        println!("cargo::rustc-cfg=hypha_mycelium");
    }
}
