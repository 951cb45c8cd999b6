//! One direction of an emulated link, and its compact text form
//! (`rate=200mbit,delay=10ms,jitter=1ms,loss=1%,queue=256kb`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// One direction of an emulated WAN link. [`Default`] is a perfect link: no delay, no loss, no
/// rate limit.
///
/// The text form is `key=value` pairs separated by commas, any order, each key at most once:
///
/// | key | value | meaning |
/// |---|---|---|
/// | `delay` | `10ms`, `500us`, `1.5s`, `0` | one-way propagation delay |
/// | `jitter` | a duration ≤ `delay` | each packet's delay is uniform in `delay ± jitter`; FIFO is kept (a packet never leaves before the one in front), so packets closer together than the jitter see more than `delay` on average |
/// | `rate` | `100mbit`, `1.5gbit`, `64kbit`, `9600bit` | bottleneck rate of IP bytes (headers included) |
/// | `queue` | `256kb`, `64k`, `1mb`, `1500b`, `100p` | bottleneck FIFO limit in bytes (`kb` = 1024, as in tc) or packets; needs `rate` |
/// | `loss` | `1%` or `0.01` | independent random loss |
/// | `gloss` | `p:r` or `p:r:h`, e.g. `1%:20%` | Gilbert–Elliott bursty loss: good→bad `p`, bad→good `r`, loss in the bad state `h` (default 100 %) |
/// | `reorder` | `0.5%` | chance that a packet skips the delay line (sent once it leaves the bottleneck, ahead of the delayed ones) |
/// | `seed` | `42` | seed of the random generator, for reproducible runs |
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WanSpec {
    /// One-way delay.
    pub delay: Duration,
    /// Bound of the uniform random deviation around `delay` (at most `delay`).
    pub jitter: Duration,
    /// Bottleneck rate in bits per second of IP packets; `None`: unlimited.
    pub rate_bps: Option<u64>,
    /// Independent loss probability, 0..=1.
    pub loss: f64,
    /// Bursty loss on top of `loss`.
    pub burst_loss: Option<GilbertElliott>,
    /// Bottleneck queue limit; `None` with a rate: [`WanSpec::queue_limit`]'s default.
    pub queue: Option<QueueLimit>,
    /// Probability that a packet skips the delay line.
    pub reorder: f64,
    /// Seed of the random generator; `None`: a fresh one per run.
    pub seed: Option<u64>,
}

/// The two-state Gilbert–Elliott loss model: in the good state nothing is lost (beyond
/// [`WanSpec::loss`]); each packet first moves good→bad with probability `p` or bad→good with `r`,
/// then is lost with probability `bad_loss` if the state is bad. Mean loss `p / (p + r) * bad_loss`,
/// mean burst length `1 / r` packets when `bad_loss` is 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    pub p: f64,
    pub r: f64,
    pub bad_loss: f64,
}

impl GilbertElliott {
    /// The long-run loss probability.
    pub fn mean_loss(&self) -> f64 {
        self.p / (self.p + self.r) * self.bad_loss
    }
}

/// A bottleneck queue limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueLimit {
    Bytes(u64),
    Packets(u64),
}

/// A setting that could not be used: which one, and why, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The key as written (or the whole item when it has no `=`).
    pub setting: String,
    pub reason: String,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for SpecError {}

fn err(setting: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        setting: setting.to_owned(),
        reason: reason.into(),
    }
}

/// The keys, in the order [`WanSpec`]'s `Display` writes them.
const KEYS: [&str; 8] = [
    "rate", "queue", "delay", "jitter", "loss", "gloss", "reorder", "seed",
];

impl WanSpec {
    /// The queue limit in force: the one given, else 100 ms at the rate (at least 16 KiB);
    /// `None` without a rate (nothing queues).
    pub fn queue_limit(&self) -> Option<QueueLimit> {
        let rate = self.rate_bps?;
        Some(
            self.queue
                .unwrap_or(QueueLimit::Bytes((rate / 8 / 10).max(16 * 1024))),
        )
    }

    /// Whether the direction does nothing at all (packets pass straight through).
    pub fn is_transparent(&self) -> bool {
        self.delay.is_zero()
            && self.rate_bps.is_none()
            && self.loss == 0.0
            && self.burst_loss.is_none()
    }

    /// Checks the settings against each other (each is checked alone while parsing).
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.jitter > self.delay {
            return Err(err(
                "jitter",
                format!(
                    "{} exceeds delay {} (the delay would go negative)",
                    fmt_duration(self.jitter),
                    fmt_duration(self.delay)
                ),
            ));
        }
        if self.queue.is_some() && self.rate_bps.is_none() {
            return Err(err(
                "queue",
                "needs a rate (without a bottleneck nothing queues)",
            ));
        }
        if self.rate_bps == Some(0) {
            return Err(err("rate", "must be above 0"));
        }
        for (name, p) in [("loss", self.loss), ("reorder", self.reorder)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(err(name, format!("{p} is not a probability")));
            }
        }
        Ok(())
    }
}

impl FromStr for WanSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<WanSpec, SpecError> {
        let mut spec = WanSpec::default();
        let mut seen = Vec::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                return Err(err(item, "expected key=value"));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(&known) = KEYS.iter().find(|k| k.eq_ignore_ascii_case(key)) else {
                return Err(err(
                    key,
                    format!("unknown setting (known: {})", KEYS.join(", ")),
                ));
            };
            if seen.contains(&known) {
                return Err(err(key, "given twice"));
            }
            seen.push(known);
            match known {
                "rate" => spec.rate_bps = Some(parse_rate(value).map_err(|r| err(key, r))?),
                "queue" => spec.queue = Some(parse_queue(value).map_err(|r| err(key, r))?),
                "delay" => spec.delay = parse_duration(value).map_err(|r| err(key, r))?,
                "jitter" => spec.jitter = parse_duration(value).map_err(|r| err(key, r))?,
                "loss" => spec.loss = parse_probability(value).map_err(|r| err(key, r))?,
                "gloss" => spec.burst_loss = Some(parse_gloss(value).map_err(|r| err(key, r))?),
                "reorder" => spec.reorder = parse_probability(value).map_err(|r| err(key, r))?,
                "seed" => {
                    spec.seed = Some(value.parse().map_err(|_| {
                        err(key, format!("`{value}` is not an unsigned 64-bit integer"))
                    })?)
                }
                _ => unreachable!("every key in KEYS has an arm"),
            }
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// A non-negative finite decimal number followed by a unit from `units` (case-insensitive),
/// returned as number × factor.
fn number_with_unit(value: &str, units: &[(&str, f64)], what: &str) -> Result<f64, String> {
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(value.len());
    let (num, unit) = value.split_at(split);
    let names: Vec<&str> = units
        .iter()
        .map(|u| u.0)
        .filter(|u| !u.is_empty())
        .collect();
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite())
        .ok_or_else(|| format!("`{value}` is not {what} (e.g. 10{})", names[0]))?;
    let unit = unit.trim();
    if unit.is_empty() && n == 0.0 {
        return Ok(0.0);
    }
    let factor = units
        .iter()
        .find(|(u, _)| u.eq_ignore_ascii_case(unit))
        .map(|u| u.1)
        .ok_or_else(|| {
            if unit.is_empty() {
                format!("`{value}` needs a unit ({})", names.join(", "))
            } else {
                format!(
                    "unknown unit `{unit}` in `{value}` (use {})",
                    names.join(", ")
                )
            }
        })?;
    Ok(n * factor)
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    let units = [("ms", 1e-3), ("us", 1e-6), ("s", 1.0), ("ns", 1e-9)];
    let secs = number_with_unit(value, &units, "a duration")?;
    if secs > 3600.0 {
        return Err(format!("`{value}` is over an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_rate(value: &str) -> Result<u64, String> {
    let lower = value.to_ascii_lowercase();
    if lower.ends_with("bps") {
        return Err(format!(
            "`{value}` is ambiguous: write bits per second (kbit, mbit, gbit)"
        ));
    }
    let units = [("mbit", 1e6), ("gbit", 1e9), ("kbit", 1e3), ("bit", 1.0)];
    let bps = number_with_unit(value, &units, "a rate")?.round();
    if bps < 1.0 {
        return Err(format!("`{value}` must be above 0"));
    }
    if bps > 1e12 {
        return Err(format!("`{value}` is above 1000gbit"));
    }
    Ok(bps as u64)
}

fn parse_queue(value: &str) -> Result<QueueLimit, String> {
    let lower = value.to_ascii_lowercase();
    let packets = ["pkts", "pkt", "p"]
        .iter()
        .find_map(|u| lower.strip_suffix(u));
    if let Some(n) = packets {
        return match n.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(QueueLimit::Packets(n)),
            _ => Err(format!(
                "`{value}` is not a whole number of packets above 0"
            )),
        };
    }
    let units = [
        ("kb", 1024.0),
        ("b", 1.0),
        ("k", 1024.0),
        ("kib", 1024.0),
        ("mb", 1048576.0),
        ("m", 1048576.0),
        ("mib", 1048576.0),
    ];
    let bytes = number_with_unit(value, &units, "a size")?.round();
    if bytes < 1.0 {
        return Err(format!("`{value}` must be above 0"));
    }
    if bytes > (1u64 << 32) as f64 {
        return Err(format!("`{value}` is above 4 GiB"));
    }
    Ok(QueueLimit::Bytes(bytes as u64))
}

/// `1%`, `0.5%` or a fraction `0.01`.
fn parse_probability(value: &str) -> Result<f64, String> {
    let (num, scale) = match value.strip_suffix('%') {
        Some(n) => (n.trim(), 100.0),
        None => (value, 1.0),
    };
    let p = num
        .parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| format!("`{value}` is not a probability (e.g. 1% or 0.01)"))?
        / scale;
    if p < 0.0 {
        return Err(format!("`{value}` is negative"));
    }
    if p > 1.0 {
        return Err(format!("`{value}` is above 100%"));
    }
    Ok(p)
}

fn parse_gloss(value: &str) -> Result<GilbertElliott, String> {
    let parts: Vec<&str> = value.split(':').map(str::trim).collect();
    if !(2..=3).contains(&parts.len()) {
        return Err(format!(
            "`{value}` is not p:r or p:r:h (e.g. 1%:20% for 5% mean loss in bursts of 5)"
        ));
    }
    let p = parse_probability(parts[0]).map_err(|e| format!("p: {e}"))?;
    let r = parse_probability(parts[1]).map_err(|e| format!("r: {e}"))?;
    let bad_loss = match parts.get(2) {
        Some(h) => parse_probability(h).map_err(|e| format!("h: {e}"))?,
        None => 1.0,
    };
    if r == 0.0 {
        return Err("r (bad→good) must be above 0, or the link never recovers".into());
    }
    Ok(GilbertElliott { p, r, bad_loss })
}

fn fmt_duration(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns == 0 {
        "0".into()
    } else if ns % 1_000_000 == 0 {
        format!("{}ms", ns / 1_000_000)
    } else if ns % 1_000 == 0 {
        format!("{}us", ns / 1_000)
    } else {
        format!("{ns}ns")
    }
}

fn fmt_rate(bps: u64) -> String {
    match bps {
        b if b % 1_000_000_000 == 0 => format!("{}gbit", b / 1_000_000_000),
        b if b % 1_000_000 == 0 => format!("{}mbit", b / 1_000_000),
        b if b % 1_000 == 0 => format!("{}kbit", b / 1_000),
        b => format!("{b}bit"),
    }
}

fn fmt_pct(p: f64) -> String {
    format!("{}%", p * 100.0)
}

/// The canonical text form, which parses back to the same spec; `-` for a perfect link.
impl fmt::Display for WanSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if let Some(r) = self.rate_bps {
            items.push(format!("rate={}", fmt_rate(r)));
        }
        match self.queue {
            Some(QueueLimit::Bytes(b)) if b % 1024 == 0 => {
                items.push(format!("queue={}kb", b / 1024))
            }
            Some(QueueLimit::Bytes(b)) => items.push(format!("queue={b}b")),
            Some(QueueLimit::Packets(p)) => items.push(format!("queue={p}p")),
            None => {}
        }
        if !self.delay.is_zero() {
            items.push(format!("delay={}", fmt_duration(self.delay)));
        }
        if !self.jitter.is_zero() {
            items.push(format!("jitter={}", fmt_duration(self.jitter)));
        }
        if self.loss > 0.0 {
            items.push(format!("loss={}", fmt_pct(self.loss)));
        }
        if let Some(g) = self.burst_loss {
            items.push(format!(
                "gloss={}:{}:{}",
                fmt_pct(g.p),
                fmt_pct(g.r),
                fmt_pct(g.bad_loss)
            ));
        }
        if self.reorder > 0.0 {
            items.push(format!("reorder={}", fmt_pct(self.reorder)));
        }
        if let Some(s) = self.seed {
            items.push(format!("seed={s}"));
        }
        if items.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&items.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> WanSpec {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn error(s: &str) -> SpecError {
        match s.parse::<WanSpec>() {
            Ok(spec) => panic!("`{s}` parsed as {spec:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_every_setting() {
        let s = parse(
            "rate=200mbit, delay=10ms,jitter=1ms,loss=1%,queue=256kb,gloss=1%:20%,reorder=0.5%,seed=7",
        );
        assert_eq!(s.rate_bps, Some(200_000_000));
        assert_eq!(s.delay, Duration::from_millis(10));
        assert_eq!(s.jitter, Duration::from_millis(1));
        assert_eq!(s.loss, 0.01);
        assert_eq!(s.queue, Some(QueueLimit::Bytes(256 * 1024)));
        let g = s.burst_loss.unwrap();
        assert_eq!((g.p, g.r, g.bad_loss), (0.01, 0.2, 1.0));
        assert!((g.mean_loss() - 0.01 / 0.21).abs() < 1e-12);
        assert_eq!(s.reorder, 0.005);
        assert_eq!(s.seed, Some(7));
    }

    #[test]
    fn units_and_forms() {
        assert_eq!(parse("delay=500us").delay, Duration::from_micros(500));
        assert_eq!(parse("delay=1.5s").delay, Duration::from_millis(1500));
        assert_eq!(parse("delay=0").delay, Duration::ZERO);
        assert_eq!(parse("DELAY=2MS").delay, Duration::from_millis(2));
        assert_eq!(parse("rate=1.5gbit").rate_bps, Some(1_500_000_000));
        assert_eq!(parse("rate=64kbit").rate_bps, Some(64_000));
        assert_eq!(parse("rate=9600bit").rate_bps, Some(9600));
        assert_eq!(
            parse("rate=1mbit,queue=100p").queue,
            Some(QueueLimit::Packets(100))
        );
        assert_eq!(
            parse("rate=1mbit,queue=1500b").queue,
            Some(QueueLimit::Bytes(1500))
        );
        assert_eq!(
            parse("rate=1mbit,queue=1mb").queue,
            Some(QueueLimit::Bytes(1 << 20))
        );
        assert_eq!(parse("loss=0.05").loss, 0.05);
        assert_eq!(parse("gloss=1%:10%:50%").burst_loss.unwrap().bad_loss, 0.5);
        assert_eq!(parse(""), WanSpec::default());
        assert!(parse("").is_transparent());
    }

    #[test]
    fn default_queue_is_100ms_at_the_rate() {
        assert_eq!(
            parse("rate=100mbit").queue_limit(),
            Some(QueueLimit::Bytes(1_250_000))
        );
        assert_eq!(
            parse("rate=64kbit").queue_limit(),
            Some(QueueLimit::Bytes(16 * 1024))
        );
        assert_eq!(parse("delay=1ms").queue_limit(), None);
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "rate=200mbit,queue=256kb,delay=10ms,jitter=1ms,loss=1%,gloss=1%:20%:100%,reorder=0.5%,seed=7",
            "rate=1500bit,queue=100p,delay=250us",
            "rate=64kbit,queue=1500b",
            "-",
        ] {
            let spec = if s == "-" { WanSpec::default() } else { parse(s) };
            assert_eq!(spec.to_string(), s);
            if s != "-" {
                assert_eq!(parse(&spec.to_string()), spec);
            }
        }
    }

    /// Every bad setting is refused with one line that starts with the setting's name.
    #[test]
    fn bad_settings_name_the_setting() {
        let cases = [
            ("delay=-5ms", "delay", "not a duration"),
            ("delay=abc", "delay", "not a duration"),
            ("delay=10", "delay", "needs a unit"),
            ("delay=10parsecs", "delay", "unknown unit"),
            ("delay=2h", "delay", "unknown unit"),
            ("delay=7200s", "delay", "over an hour"),
            ("jitter=5ms,delay=1ms", "jitter", "exceeds delay 1ms"),
            ("jitter=1ms", "jitter", "exceeds delay 0"),
            ("loss=150%", "loss", "above 100%"),
            ("loss=1.5", "loss", "above 100%"),
            ("loss=-1%", "loss", "negative"),
            ("loss=lots", "loss", "not a probability"),
            ("reorder=101%", "reorder", "above 100%"),
            ("rate=0mbit", "rate", "above 0"),
            ("rate=0", "rate", "above 0"),
            ("rate=100", "rate", "needs a unit"),
            ("rate=100mbps", "rate", "ambiguous"),
            ("rate=fast", "rate", "not a rate"),
            ("rate=1mbit,queue=0kb", "queue", "above 0"),
            ("rate=1mbit,queue=0p", "queue", "packets above 0"),
            ("rate=1mbit,queue=lots", "queue", "not a size"),
            ("queue=64kb", "queue", "needs a rate"),
            ("gloss=1%", "gloss", "not p:r"),
            ("gloss=1%:0%", "gloss", "never recovers"),
            ("gloss=1%:200%", "gloss", "r: `200%` is above 100%"),
            ("seed=-1", "seed", "unsigned"),
            ("colour=blue", "colour", "unknown setting"),
            ("delay", "delay", "expected key=value"),
            ("delay=1ms,delay=2ms", "delay", "given twice"),
        ];
        for (input, setting, reason) in cases {
            let e = error(input);
            let line = e.to_string();
            assert_eq!(e.setting, setting, "{input}: {line}");
            assert!(line.starts_with(&format!("{setting}: ")), "{input}: {line}");
            assert!(line.contains(reason), "{input}: `{line}` lacks `{reason}`");
            assert!(!line.contains('\n'), "{input}: {line}");
        }
    }
}
