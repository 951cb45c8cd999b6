use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::process::{prepare, ChildGuard};

static NEXT: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

fn check(out: Output, what: &str) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `ip <args>` in the caller's namespace and returns its stdout.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    check(out, &format!("ip {}", args.join(" ")))
}

/// Runs `prog args` inside the named namespace (`ip netns exec`) and returns its stdout; a
/// non-zero exit is an error carrying stderr.
pub fn exec_in(ns: &str, prog: &str, args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, prog])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    check(out, &format!("[{ns}] {prog} {}", args.join(" ")))
}

/// Runs `f` on a new thread that has entered the named namespace (`/run/netns/<ns>`), and returns
/// its result. Sockets and TUN devices created by `f` belong to that namespace and may then be
/// used from any thread.
pub fn run_in<R: Send>(ns: &str, f: impl FnOnce() -> R + Send) -> io::Result<R> {
    let file = File::open(format!("/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("thread in namespace panicked"))?
    })
}

/// The pid of the process that created the namespace named `hy-<tag>-<pid>-<n>`.
pub fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("hy-")?;
    let mut parts = rest.rsplit('-');
    let (_n, pid) = (parts.next()?.parse::<u32>().ok()?, parts.next()?);
    parts.next()?;
    pid.parse().ok()
}

/// The `<tag>` of `hy-<tag>-<pid>-<n>`, else the name itself.
pub(crate) fn tag_of(name: &str) -> &str {
    let Some(rest) = name.strip_prefix("hy-") else {
        return name;
    };
    match owner_pid(name) {
        Some(_) => rest.rsplitn(3, '-').nth(2).unwrap_or(name),
        None => name,
    }
}

/// Deletes namespaces named `hy-*-<pid>-*` whose process is gone (left by a killed test run or a
/// SIGKILLed bench), killing what still runs in them first (nodes outlive their parent).
fn sweep_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = owner_pid(&name) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
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

/// A network namespace owned by the test (or the bench, or the demo): unique name, loopback up,
/// deleted on drop together with any veth it created.
#[derive(Debug)]
pub struct Netns {
    name: String,
    veths: Mutex<Vec<String>>,
}

impl Netns {
    /// Creates `hy-<tag>-<pid>-<n>` and brings its loopback up.
    pub fn new(tag: &str) -> io::Result<Netns> {
        SWEEP.call_once(sweep_stale);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hy-{tag}-{}-{n}", std::process::id());
        ip(&["netns", "add", &name])?;
        let ns = Netns {
            name,
            veths: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The `<tag>` it was created with.
    pub fn tag(&self) -> &str {
        tag_of(&self.name)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs a command inside the namespace to completion; see [`exec_in`].
    pub fn exec(&self, prog: &str, args: &[&str]) -> io::Result<String> {
        exec_in(&self.name, prog, args)
    }

    /// Starts a command inside the namespace with piped stdout/stderr, guarded.
    pub fn spawn(&self, prog: &str, args: &[&str]) -> io::Result<ChildGuard> {
        let child = self
            .command(prog)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        Ok(ChildGuard::new(child))
    }

    /// `prog` to run inside the namespace (`ip netns exec`, which execs it in place, so the
    /// child's pid is the program's), prepared as [`crate::command`] prepares one: add arguments
    /// and where its output goes, then run it with [`crate::run`], [`ChildGuard::spawn`] or
    /// [`crate::Daemon::start`].
    pub fn command(&self, prog: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(prog);
        prepare(&mut cmd);
        cmd
    }

    /// Runs `f` on a new thread that has entered the namespace; see [`run_in`].
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> io::Result<R> {
        run_in(&self.name, f)
    }

    /// Like [`Netns::run`], but returns at once with a handle to the thread.
    pub fn spawn_thread<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> io::Result<std::thread::JoinHandle<io::Result<R>>> {
        let file = File::open(format!("/run/netns/{}", self.name))?;
        Ok(std::thread::spawn(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)?;
            Ok(f())
        }))
    }

    fn remember_veth(&self, name: &str) {
        if let Ok(mut v) = self.veths.lock() {
            v.push(name.to_owned());
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // A veth end moved back to (or left in) the host namespace would outlive the namespace.
        let veths = self.veths.get_mut().map(std::mem::take).unwrap_or_default();
        for v in veths {
            if ip(&["link", "show", "dev", &v]).is_ok() {
                let _ = ip(&["link", "del", "dev", &v]);
            }
        }
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Creates a veth pair with one end in `a` and one in `b`, both up, and returns the names
/// (`a`'s end first). Both namespaces remember the names and delete leftovers on drop.
pub fn veth_pair(a: &Netns, b: &Netns) -> io::Result<(String, String)> {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let base = format!("hv{:x}{:x}", std::process::id(), n);
    let (ea, eb) = (format!("{base}a"), format!("{base}b"));
    if ea.len() > 15 {
        return Err(io::Error::other(format!("veth name {ea} too long")));
    }
    a.remember_veth(&ea);
    b.remember_veth(&eb);
    ip(&[
        "link",
        "add",
        &ea,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        &eb,
        "netns",
        b.name(),
    ])?;
    a.ip(&["link", "set", &ea, "up"])?;
    b.ip(&["link", "set", &eb, "up"])?;
    Ok((ea, eb))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_give_their_owner_and_tag() {
        assert_eq!(owner_pid("hy-tb-1234-0"), Some(1234));
        assert_eq!(owner_pid("hy-bench-a-1234-17"), Some(1234));
        assert_eq!(owner_pid("hy-1234-0"), None);
        assert_eq!(owner_pid("hy-x-y-0"), None);
        assert_eq!(owner_pid("hyb-1234-a"), None);
        assert_eq!(owner_pid("other"), None);
        assert_eq!(tag_of("hy-bench-a-1234-17"), "bench-a");
        assert_eq!(tag_of("hy-tb-1-0"), "tb");
        assert_eq!(tag_of("elsewhere"), "elsewhere");
    }
}
