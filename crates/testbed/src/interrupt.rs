//! Ctrl-C for programs that keep a lab up (the bench, `hypha demo`): SIGINT and SIGTERM only set a
//! flag; the waits of this crate that a person may sit through ([`crate::run`],
//! [`crate::ChildGuard::wait_timeout`]) give up once it is set, and the guards then tear the lab
//! down as the program unwinds. Tests never set it, so for them nothing changes.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static WATCHING: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM has come since [`watch_signals`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// An `Interrupted` error once a signal has come, else `Ok`.
pub fn check_interrupted() -> io::Result<()> {
    if interrupted() {
        Err(io::Error::new(io::ErrorKind::Interrupted, "interrupted"))
    } else {
        Ok(())
    }
}

/// Whether [`watch_signals`] runs: children then get a process group of their own.
pub(crate) fn watching() -> bool {
    WATCHING.load(Ordering::Relaxed)
}

/// Takes over SIGINT and SIGTERM: from now on they no longer end the process. A thread waits for
/// them; the first one sets the flag [`interrupted`] reads, then `on_signal` runs; later ones are
/// ignored, so cleanup is never cut short. (Handlers, not a blocked mask: children start with the
/// default disposition and no signal blocked, so a node still stops on SIGTERM.)
///
/// Children started through this crate afterwards get a process group of their own: a terminal's
/// Ctrl-C then reaches this process alone, which stops them in order (a node given SIGTERM removes
/// its TUN).
pub fn watch_signals(on_signal: impl FnOnce() + Send + 'static) -> io::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    WATCHING.store(true, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut on_signal = Some(on_signal);
            // The loop keeps the handlers registered for the life of the process.
            for _ in signals.forever() {
                INTERRUPTED.store(true, Ordering::Relaxed);
                if let Some(f) = on_signal.take() {
                    f();
                }
            }
        })?;
    Ok(())
}
