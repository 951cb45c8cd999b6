//! The bench's lab: three network namespaces joined by veth pairs, the processes started in them,
//! and the commands run there. Every namespace and process sits behind a guard that removes or
//! kills it on drop, so an error, a panic or Ctrl-C (which only sets [`STOP`]) leaves nothing behind.

use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Set by the SIGINT/SIGTERM watcher; every wait in the bench checks it and gives up.
pub static STOP: AtomicBool = AtomicBool::new(false);

/// Prefix of the bench's namespaces: `hyb-<pid>-a`, `-b`, `-c`.
pub const NS_PREFIX: &str = "hyb-";

/// Underlay of the A–B link (A's end, B's end).
pub const AB: (&str, &str) = ("198.18.220.1", "198.18.220.2");
/// Underlay of the B–C link (B's end, C's end).
pub const BC: (&str, &str) = ("198.18.221.1", "198.18.221.2");

pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

pub fn check_stop() -> anyhow::Result<()> {
    if stopped() {
        bail!("interrupted");
    }
    Ok(())
}

/// Polls `cond` (10 ms at first, backing off to 200 ms) until it holds, `timeout` passes (false)
/// or the bench is interrupted (error).
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> anyhow::Result<bool> {
    let start = Instant::now();
    let mut step = Duration::from_millis(10);
    loop {
        check_stop()?;
        if cond() {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        std::thread::sleep(step.min(timeout.saturating_sub(start.elapsed())));
        step = (step * 2).min(Duration::from_millis(200));
    }
}

/// Whether the process runs with effective uid 0 (namespaces and veth need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The first executable file called `name` on `$PATH`.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit set.
pub fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The command's own words for a failure: stderr, else stdout, else the status.
    pub fn why(&self) -> String {
        let text = if self.stderr.trim().is_empty() {
            self.stdout.trim()
        } else {
            self.stderr.trim()
        };
        if text.is_empty() {
            self.status.to_string()
        } else {
            last_lines(text, 3)
        }
    }
}

fn command_in(ns: Option<&str>, prog: &OsStr, args: &[&OsStr]) -> Command {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(prog);
            c
        }
        None => Command::new(prog),
    };
    cmd.args(args).stdin(Stdio::null());
    // A terminal's Ctrl-C goes to the foreground process group. The children get their own, so
    // that only the bench sees it and stops them in order (nodes remove their TUN on SIGTERM).
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd
}

/// Runs `prog args` (inside `ns` when given, through `ip netns exec`, which execs the program in
/// place) to completion, killing it after `timeout`.
pub fn run(
    ns: Option<&str>,
    prog: impl AsRef<OsStr>,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<Output> {
    let prog = prog.as_ref();
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let what = describe(ns, prog, &args);
    let mut child = command_in(ns, prog, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {what}"))?;
    // Readers drain the pipes while we poll, so a chatty child cannot block on a full pipe.
    let out = reader(child.stdout.take());
    let err = reader(child.stderr.take());
    let mut proc = Proc {
        child: Some(child),
        what: what.clone(),
        log: None,
    };
    let status = proc.wait_timeout(timeout);
    let status = match status {
        Ok(s) => s,
        Err(e) => {
            drop(proc);
            let _ = (out.join(), err.join());
            return Err(e);
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Like [`run`], but a non-zero exit is an error carrying the command's output.
pub fn run_ok(
    ns: Option<&str>,
    prog: impl AsRef<OsStr>,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<String> {
    let prog = prog.as_ref();
    let out = run(ns, prog, args, timeout)?;
    if !out.status.success() {
        let a: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        bail!("{}: {}", describe(ns, prog, &a), out.why());
    }
    Ok(out.stdout)
}

fn reader(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

fn describe(ns: Option<&str>, prog: &OsStr, args: &[&OsStr]) -> String {
    let mut s = String::new();
    if let Some(ns) = ns {
        s.push_str(&format!("[{}] ", ns.rsplit('-').next().unwrap_or(ns)));
    }
    s.push_str(
        &Path::new(prog)
            .file_name()
            .unwrap_or(prog)
            .to_string_lossy(),
    );
    for a in args {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process started by the bench: SIGTERM on drop, SIGKILL if it lingers, always reaped.
#[derive(Debug)]
pub struct Proc {
    child: Option<Child>,
    pub what: String,
    log: Option<PathBuf>,
}

impl Proc {
    /// Starts `prog args` (inside `ns` when given) in the background; stdout and stderr go to
    /// `log` when given, else nowhere.
    pub fn spawn(
        ns: Option<&str>,
        prog: impl AsRef<OsStr>,
        args: &[&OsStr],
        log: Option<&Path>,
    ) -> anyhow::Result<Proc> {
        let prog = prog.as_ref();
        let what = describe(ns, prog, args);
        let mut cmd = command_in(ns, prog, args);
        match log {
            Some(p) => {
                let f =
                    File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        Ok(Proc {
            child: Some(child),
            what,
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` once the process has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to exit; kills it and fails after `timeout` or on interrupt.
    pub fn wait_timeout(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut status = None;
        let done = wait_for(timeout, || {
            status = self.exited();
            status.is_some()
        });
        match (done, status) {
            (Ok(true), Some(s)) => Ok(s),
            (Ok(_), _) => {
                self.kill_now();
                Err(anyhow!("{} did not finish within {timeout:?}", self.what))
            }
            (Err(e), _) => {
                self.kill_now();
                Err(e)
            }
        }
    }

    /// The last lines of the process's log, for error reports.
    pub fn log_tail(&self, n: usize) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|t| last_lines(&t, n))
            .unwrap_or_default()
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaps the process.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(c) = self.child.as_mut() {
            if matches!(c.try_wait(), Ok(None)) {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
                let deadline = Instant::now() + grace;
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// Three namespaces `hyb-<pid>-a`, `-b`, `-c`: A–B on 198.18.220.0/24, B–C on 198.18.221.0/24,
/// loopback up, and the underlay routed A ↔ C through B (forwarding on in B only) so that raw
/// veth has a chain figure too. Dropping it deletes the namespaces (and with them the veths).
#[derive(Debug)]
pub struct Topology {
    created: Vec<String>,
}

impl Topology {
    pub fn build() -> anyhow::Result<Topology> {
        sweep_stale();
        let pid = std::process::id();
        let mut topo = Topology {
            created: Vec::new(),
        };
        for x in ["a", "b", "c"] {
            let ns = format!("{NS_PREFIX}{pid}-{x}");
            ip(&["netns", "add", &ns])?;
            topo.created.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (a, b, c) = (
            topo.a().to_owned(),
            topo.b().to_owned(),
            topo.c().to_owned(),
        );
        topo.link(&a, &b, "ab", AB)?;
        topo.link(&b, &c, "bc", BC)?;
        ip(&["-n", &a, "route", "add", "198.18.221.0/24", "via", AB.1])?;
        ip(&["-n", &c, "route", "add", "198.18.220.0/24", "via", BC.0])?;
        // /proc/sys/net belongs to the namespace of the process that opens it.
        run_ok(
            Some(&b),
            "sh",
            &["-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            Duration::from_secs(10),
        )?;
        Ok(topo)
    }

    pub fn a(&self) -> &str {
        &self.created[0]
    }
    pub fn b(&self) -> &str {
        &self.created[1]
    }
    pub fn c(&self) -> &str {
        &self.created[2]
    }

    fn link(&self, x: &str, y: &str, tag: &str, addrs: (&str, &str)) -> anyhow::Result<()> {
        let pid = std::process::id();
        // Both ends are created inside the namespaces: nothing can be left in the host's.
        let (ex, ey) = (format!("hyb{pid}{tag}x"), format!("hyb{pid}{tag}y"));
        ip(&[
            "link", "add", &ex, "netns", x, "type", "veth", "peer", "name", &ey, "netns", y,
        ])?;
        ip(&[
            "-n",
            x,
            "addr",
            "add",
            &format!("{}/24", addrs.0),
            "dev",
            &ex,
        ])?;
        ip(&[
            "-n",
            y,
            "addr",
            "add",
            &format!("{}/24", addrs.1),
            "dev",
            &ey,
        ])?;
        ip(&["-n", x, "link", "set", &ex, "up"])?;
        ip(&["-n", y, "link", "set", &ey, "up"])?;
        Ok(())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Not through `run`: its waits give up once the bench is interrupted, and this is what
        // must happen then.
        for ns in self.created.drain(..) {
            let _ = Command::new("ip")
                .args(["netns", "del", &ns])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn ip(args: &[&str]) -> anyhow::Result<String> {
    run_ok(None, "ip", args, Duration::from_secs(10))
}

/// Deletes `hyb-<pid>-*` namespaces whose bench process is gone (left by a SIGKILLed run), and
/// kills what still runs in them (its nodes and iperf3s outlive it).
fn sweep_stale() {
    // Its scratch directory too.
    if let Ok(dir) = std::fs::read_dir(std::env::temp_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("hypha-bench-")
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = stale_owner(&name) {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let pids = ip(&["netns", "pids", &name]).unwrap_or_default();
                for p in pids
                    .split_whitespace()
                    .filter_map(|p| p.parse::<i32>().ok())
                {
                    let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
                }
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

/// The pid in a bench namespace name `hyb-<pid>-<x>`.
fn stale_owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let (pid, x) = rest.split_once('-')?;
    (x.len() == 1).then_some(())?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_names_are_recognised() {
        assert_eq!(stale_owner("hyb-1234-a"), Some(1234));
        assert_eq!(stale_owner("hyb-1234-abc"), None);
        assert_eq!(stale_owner("hy-bench-1234-0"), None);
        assert_eq!(stale_owner("hyb-x-a"), None);
    }

    #[test]
    fn last_lines_keeps_the_tail() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn run_reports_output_and_timeouts() {
        let out = run(
            None,
            "sh",
            &["-c", "echo hi; echo err >&2; exit 3"],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.why(), "err");
        let e = run(None, "sleep", &["10"], Duration::from_millis(100)).unwrap_err();
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert!(run_ok(None, "false", &[], Duration::from_secs(10)).is_err());
    }

    #[test]
    fn executables_are_found() {
        assert!(find_in_path("sh").is_some());
        assert!(find_in_path("no-such-program-hypha").is_none());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("data");
        std::fs::write(&f, "x").unwrap();
        assert!(!is_executable(&f));
        assert!(!is_executable(dir.path()));
        assert!(is_executable(&find_in_path("sh").unwrap()));
    }
}
