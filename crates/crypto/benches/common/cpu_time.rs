//! A criterion measurement of the benchmark thread's CPU time.
//!
//! `openssl speed` divides by user CPU time unless given `-elapsed`; measuring the candidates the
//! same way keeps the comparison fair on a machine shared with other work, where wall time also
//! counts the time the thread was not scheduled.

use std::time::Duration;

use cpu_time::ThreadTime;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};

pub struct CpuTime;

impl Measurement for CpuTime {
    type Intermediate = ThreadTime;
    type Value = Duration;

    fn start(&self) -> ThreadTime {
        ThreadTime::now()
    }

    fn end(&self, start: ThreadTime) -> Duration {
        start.elapsed()
    }

    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }

    fn zero(&self) -> Duration {
        Duration::ZERO
    }

    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, exactly what the wall-time formatter scales.
        static WALL: WallTime = WallTime;
        WALL.formatter()
    }
}
