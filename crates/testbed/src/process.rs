use std::io;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

/// A child process that is killed and reaped when the guard is dropped (also on test failure).
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
}

impl ChildGuard {
    pub fn new(child: Child) -> Self {
        ChildGuard { child: Some(child) }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `Some(status)` once the child has exited.
    pub fn try_wait(&mut self) -> io::Result<Option<std::process::ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c.try_wait(),
            None => Ok(None),
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
        if let Some(c) = self.child.as_ref() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let _ = wait_until(grace, || matches!(self.try_wait(), Ok(Some(_))));
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
        }
        self.wait_with_output()
    }

    pub fn child_mut(&mut self) -> Option<&mut Child> {
        self.child.as_mut()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
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
