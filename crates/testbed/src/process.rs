use std::ffi::OsStr;
use std::io::{self, Read};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::interrupt::{check_interrupted, interrupted, watching};

/// A child process that is killed and reaped when the guard is dropped (also on test failure), or
/// with [`ChildGuard::stop_on_drop`] first asked to stop with SIGTERM.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    /// SIGTERM and this long to exit before SIGKILL on drop; `None`: SIGKILL at once.
    grace: Option<Duration>,
    /// How it ended, once the guard has reaped it.
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard {
            child: Some(child),
            grace: None,
            status: None,
        }
    }

    /// Spawns `cmd`; the error names the command.
    pub fn spawn(cmd: &mut Command) -> io::Result<Self> {
        let child = cmd.spawn().map_err(|e| {
            io::Error::new(e.kind(), format!("cannot start {}: {e}", describe(cmd)))
        })?;
        Ok(Self::new(child))
    }

    /// On drop, SIGTERM first and up to `grace` to exit (a node removes its TUN), then SIGKILL.
    pub fn stop_on_drop(mut self, grace: Duration) -> Self {
        self.grace = Some(grace);
        self
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` once the child has exited (also after [`ChildGuard::stop`]).
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(self.status),
        }
    }

    /// Waits up to `timeout` for the child to exit. At the timeout, or when the program is
    /// interrupted ([`crate::interrupted`]), the child is killed and the wait fails.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let mut status = None;
        let _ = wait_until(timeout, || {
            status = self.try_wait().ok().flatten();
            status.is_some() || interrupted()
        });
        match status {
            Some(s) => Ok(s),
            None => {
                self.kill_now();
                check_interrupted()?;
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("did not finish within {timeout:?}"),
                ))
            }
        }
    }

    /// Waits for the child and collects its piped output, disarming the guard.
    pub fn wait_with_output(mut self) -> io::Result<Output> {
        match self.child.take() {
            Some(c) => c.wait_with_output(),
            None => Err(io::Error::other("child already taken")),
        }
    }

    /// Sends SIGTERM (so the child can print its statistics) and waits up to `grace` for it to
    /// exit before the guard falls back to SIGKILL.
    pub fn terminate(mut self, grace: Duration) -> io::Result<Output> {
        self.sigterm();
        let _ = wait_until(grace, || matches!(self.try_wait(), Ok(Some(_))));
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait_with_output()
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL; reaps the child. Does not give up when the
    /// program is interrupted: this is how the lab is cleaned up then.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.try_wait(), Ok(None)) {
            self.sigterm();
            let _ = wait_until(grace, || !matches!(self.try_wait(), Ok(None)));
        }
        self.kill_now();
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }

    fn sigterm(&self) {
        if let Some(c) = self.child.as_ref() {
            let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
        }
    }

    fn kill_now(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            self.status = c.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(grace) = self.grace {
            self.stop(grace);
        }
        self.kill_now();
    }
}

/// `prog` to run in this namespace: stdin from /dev/null, and a process group of its own when
/// the program watches its signals ([`crate::watch_signals`]).
pub fn command(prog: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(prog);
    prepare(&mut cmd);
    cmd
}

pub(crate) fn prepare(cmd: &mut Command) {
    cmd.stdin(Stdio::null());
    if watching() {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
    }
}

/// `cmd` for messages: `prog args`, or `[ns] prog args` for `ip netns exec ns prog args`
/// (`ns` shortened to the tag of a [`crate::Netns`]).
pub fn describe(cmd: &Command) -> String {
    let mut words: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    let mut s = String::new();
    if words.len() > 4 && words[0] == "ip" && words[1] == "netns" && words[2] == "exec" {
        s = format!("[{}] ", crate::netns::tag_of(&words[3]));
        words.drain(..4);
    }
    if let Some(first) = words.first_mut() {
        if let Some(base) = first.rsplit('/').next() {
            *first = base.to_owned();
        }
    }
    s.push_str(&words.join(" "));
    s
}

/// What a command run by [`run`] did.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// The command, as [`describe`] gives it.
    pub what: String,
}

impl Finished {
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

    /// Its stdout when it exited 0, else an error naming the command and [`Finished::why`].
    pub fn ok(self) -> io::Result<String> {
        if self.status.success() {
            Ok(self.stdout)
        } else {
            Err(io::Error::other(format!("{}: {}", self.what, self.why())))
        }
    }
}

/// Runs `cmd` to completion with its output captured, killing it after `timeout` or when the
/// program is interrupted (then the error is of kind `Interrupted`).
pub fn run(cmd: &mut Command, timeout: Duration) -> io::Result<Finished> {
    let what = describe(cmd);
    let mut guard = ChildGuard::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()))?;
    // Readers drain the pipes while we wait, so a chatty child cannot block on a full pipe.
    let (out, err) = match guard.child_mut() {
        Some(c) => (reader(c.stdout.take()), reader(c.stderr.take())),
        None => return Err(io::Error::other("child already taken")),
    };
    let status = guard.wait_timeout(timeout);
    drop(guard);
    let (stdout, stderr) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    let status = status.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    Ok(Finished {
        status,
        stdout,
        stderr,
        what,
    })
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

/// The last `n` lines of `text`.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `cond` did not become true in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut(pub Duration);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for TimedOut {}

impl From<TimedOut> for io::Error {
    fn from(t: TimedOut) -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, t)
    }
}

/// Polls `cond` (every 10 ms at first, backing off to 100 ms) until it returns true or `timeout`
/// passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> Result<(), TimedOut> {
    let start = Instant::now();
    let mut step = Duration::from_millis(10);
    loop {
        if cond() {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(TimedOut(timeout));
        }
        std::thread::sleep(step.min(timeout.saturating_sub(start.elapsed())));
        step = (step * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_when_condition_holds() {
        let mut n = 0;
        assert_eq!(
            wait_until(Duration::from_secs(5), || {
                n += 1;
                n >= 3
            }),
            Ok(())
        );
        assert_eq!(n, 3);
    }

    #[test]
    fn wait_until_times_out() {
        let r = wait_until(Duration::from_millis(30), || false);
        assert_eq!(r, Err(TimedOut(Duration::from_millis(30))));
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
            command("sh").args(["-c", "echo hi; echo err >&2; exit 3"]),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(out.stdout, "hi\n");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.why(), "err");
        let e = out.ok().unwrap_err().to_string();
        assert!(e.starts_with("sh -c echo hi"), "{e}");
        let e = run(command("sleep").arg("10"), Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(e.to_string().contains("did not finish"), "{e}");
        assert!(run(&mut command("false"), Duration::from_secs(10))
            .unwrap()
            .ok()
            .is_err());
        assert!(run(&mut command("/no/such/program"), Duration::from_secs(10)).is_err());
    }

    #[test]
    fn commands_in_namespaces_are_described_by_their_tag() {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", "hy-bench-a-77-3", "/usr/bin/iperf3", "-s"]);
        assert_eq!(describe(&c), "[bench-a] iperf3 -s");
        assert_eq!(describe(Command::new("/bin/true").arg("x")), "true x");
    }

    #[test]
    fn stop_asks_with_sigterm_first() {
        // The shell prints on SIGTERM and exits 0; SIGKILL would leave no word and no status 0.
        let mut g = ChildGuard::spawn(
            command("sh")
                .args([
                    "-c",
                    "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.05; done",
                ])
                .stdout(Stdio::piped()),
        )
        .unwrap();
        let mut out = g.child_mut().unwrap().stdout.take().unwrap();
        let mut first = [0u8; 3];
        io::Read::read_exact(&mut out, &mut first).unwrap();
        assert_eq!(&first, b"up\n");
        g.stop(Duration::from_secs(10));
        let mut rest = String::new();
        io::Read::read_to_string(&mut out, &mut rest).unwrap();
        assert_eq!(rest, "bye\n");
    }

    #[test]
    fn child_guard_kills_on_drop() {
        let child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        let pid = child.id();
        drop(ChildGuard::new(child));
        // Killed and reaped: the pid is gone (not even a zombie is left).
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
}
