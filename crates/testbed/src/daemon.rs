//! Long-running programs of a lab (nodes, servers) with their output in a log file.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use crate::process::{last_lines, ChildGuard};

/// How long a daemon has to exit after SIGTERM when its guard is dropped.
const GRACE: Duration = Duration::from_secs(5);

/// A program that runs until it is stopped (a node), its stdout and stderr in a log file. Dropping
/// it sends SIGTERM, so that it can clean up (a node removes its TUN), and SIGKILL if it has not
/// exited within 5 s; it is always reaped.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    guard: ChildGuard,
    log: PathBuf,
}

impl Daemon {
    /// Starts `cmd` (e.g. from [`crate::Netns::command`]) with its output going to `log`
    /// (created anew); `name` is what messages call it.
    pub fn start(name: &str, mut cmd: Command, log: &Path) -> io::Result<Daemon> {
        let f = File::create(log).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", log.display()))
        })?;
        cmd.stdout(f.try_clone()?).stderr(f);
        let guard = ChildGuard::spawn(&mut cmd)?.stop_on_drop(GRACE);
        Ok(Daemon {
            name: name.to_owned(),
            guard,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.guard.id()
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// `Some(status)` once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.guard.try_wait().ok().flatten()
    }

    /// An error with the end of its log when it has exited.
    pub fn check_running(&mut self) -> io::Result<()> {
        match self.exited() {
            None => Ok(()),
            Some(st) => Err(io::Error::other(format!(
                "{} exited ({st}); its log ends:\n{}",
                self.name,
                self.log_tail(8)
            ))),
        }
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        std::fs::read_to_string(&self.log)
            .map(|t| last_lines(&t, n))
            .unwrap_or_default()
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        self.guard.stop(grace);
    }
}
