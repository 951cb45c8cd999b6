//! The bench's results: samples per subject and metric, their medians and ratios to raw veth, the
//! targets, and their three renderings (the table, the JSON, the chart).

use serde::Serialize;

use super::chart;
use super::measure::median;

/// Everything the bench reports, one value per sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Tcp1,
    Tcp4,
    Chain,
    Udp,
    UdpLoss,
    RttIdle,
    RttLoad,
    CpuPerGbit,
    CpuPerGbitSum,
    GbitPerCpu,
    FixedRate,
    FixedCpu,
    RssUdp,
    RssPeak,
}

impl Metric {
    pub const ALL: [Metric; 14] = [
        Metric::Tcp1,
        Metric::Tcp4,
        Metric::Chain,
        Metric::Udp,
        Metric::UdpLoss,
        Metric::RttIdle,
        Metric::RttLoad,
        Metric::CpuPerGbit,
        Metric::CpuPerGbitSum,
        Metric::GbitPerCpu,
        Metric::FixedRate,
        Metric::FixedCpu,
        Metric::RssUdp,
        Metric::RssPeak,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Metric::Tcp1 => "tcp1_gbps",
            Metric::Tcp4 => "tcp4_gbps",
            Metric::Chain => "chain_gbps",
            Metric::Udp => "udp_gbps",
            Metric::UdpLoss => "udp_loss_pct",
            Metric::RttIdle => "rtt_idle_ms",
            Metric::RttLoad => "rtt_load_ms",
            Metric::CpuPerGbit => "cpu_s_per_gbit",
            Metric::CpuPerGbitSum => "cpu_s_per_gbit_all_nodes",
            Metric::GbitPerCpu => "gbit_per_cpu_s",
            Metric::FixedRate => "fixed_gbps",
            Metric::FixedCpu => "fixed_cpu_s_per_gbit_all_nodes",
            Metric::RssUdp => "rss_udp_mb",
            Metric::RssPeak => "rss_peak_mb",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Metric::Tcp1 => "tcp, 1 stream",
            Metric::Tcp4 => "tcp, 4 streams",
            Metric::Chain => "tcp, 3-node chain",
            Metric::Udp => "udp, 1200 B",
            Metric::UdpLoss => "udp loss",
            Metric::RttIdle => "rtt idle",
            Metric::RttLoad => "rtt under bulk tcp",
            Metric::CpuPerGbit => "node CPU, busiest",
            Metric::CpuPerGbitSum => "node CPU, all nodes",
            Metric::GbitPerCpu => "Gbit per node-CPU-s",
            Metric::FixedRate => "tcp, paced 1.2G",
            Metric::FixedCpu => "node CPU all, 1.2G",
            Metric::RssUdp => "peak RSS, udp flood",
            Metric::RssPeak => "peak RSS, whole run",
        }
    }

    pub fn unit(self) -> &'static str {
        match self {
            Metric::Tcp1 | Metric::Tcp4 | Metric::Chain | Metric::Udp | Metric::FixedRate => {
                "Gbit/s"
            }
            Metric::UdpLoss => "%",
            Metric::RttIdle | Metric::RttLoad => "ms",
            Metric::CpuPerGbit | Metric::CpuPerGbitSum | Metric::FixedCpu => "s/Gbit",
            Metric::GbitPerCpu => "Gbit/CPU-s",
            Metric::RssUdp | Metric::RssPeak => "MB",
        }
    }

    /// Throughputs are shown as a fraction of raw veth's (not the paced flow's: every subject
    /// should carry its fixed rate).
    pub fn has_ratio(self) -> bool {
        matches!(
            self,
            Metric::Tcp1 | Metric::Tcp4 | Metric::Chain | Metric::Udp
        )
    }

    /// Measured on the node processes: raw veth has none.
    pub fn nodes_only(self) -> bool {
        matches!(
            self,
            Metric::CpuPerGbit
                | Metric::CpuPerGbitSum
                | Metric::GbitPerCpu
                | Metric::FixedCpu
                | Metric::RssUdp
                | Metric::RssPeak
        )
    }

    fn decimals(self) -> usize {
        match self {
            Metric::RttIdle
            | Metric::RttLoad
            | Metric::CpuPerGbit
            | Metric::CpuPerGbitSum
            | Metric::FixedCpu => 3,
            Metric::UdpLoss | Metric::RssUdp | Metric::RssPeak => 1,
            _ => 2,
        }
    }

    pub fn format(self, v: f64) -> String {
        format!("{v:.*}", self.decimals())
    }
}

/// What a subject is, for ratios and targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// The veth pairs without any overlay: the physical reference.
    Veth,
    /// hypha with its default flags (offloads, sessions and super-frames): the subject the
    /// targets are about.
    Hypha,
    /// hypha with its default flags over QUIC peer links (`quic://`): shown beside, not judged.
    HyphaQuic,
    /// hypha `--no-sessions`: mycelium's wire only (every 1,400 bytes split, sealed, framed).
    HyphaNoSessions,
    HyphaNoOffload,
    /// The bare TUN + TCP forwarder (`crate::floor`): what any such overlay pays at least.
    Floor,
    /// The same with AES-256-GCM over every 1400 bytes: what any node of the protocol pays.
    SealedFloor,
    Compare,
}

impl Role {
    /// A `hypha-bench floor` subject.
    pub fn is_floor(self) -> bool {
        matches!(self, Role::Floor | Role::SealedFloor)
    }
}

/// One subject's samples, filled in as the repetitions run.
#[derive(Clone, Debug)]
pub struct SubjectResult {
    pub label: String,
    pub role: Role,
    /// The node command line (binary and subject flags); `None` for raw veth.
    pub command: Option<String>,
    samples: Vec<Vec<f64>>,
    /// Which metrics this run was asked to measure for this subject.
    wanted: Vec<bool>,
    pub errors: Vec<String>,
    pub reps: Vec<RepDetail>,
}

/// Per-node figures of one repetition (overlay subjects), for the JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RepDetail {
    pub rep: u32,
    /// CPU seconds of nodes A and B during the single-stream run.
    pub tcp1_cpu_s: Option<[f64; 2]>,
    /// Gbit received during the single-stream run.
    pub tcp1_gbit: Option<f64>,
    /// CPU seconds of nodes A and B during the stream paced to 1.2 Gbit/s.
    pub fixed_cpu_s: Option<[f64; 2]>,
    /// Gbit received during the paced stream.
    pub fixed_gbit: Option<f64>,
    /// Peak RSS of nodes A and B during the UDP flood, MB.
    pub udp_rss_mb: Option<[f64; 2]>,
    /// Peak RSS of nodes A, B, C over the whole repetition, MB.
    pub peak_rss_mb: Vec<f64>,
}

impl SubjectResult {
    pub fn new(label: String, role: Role, command: Option<String>, wanted: &[Metric]) -> Self {
        SubjectResult {
            label,
            role,
            command,
            samples: vec![Vec::new(); Metric::ALL.len()],
            wanted: Metric::ALL
                .iter()
                .map(|m| wanted.contains(m) && !(role == Role::Veth && m.nodes_only()))
                .collect(),
            errors: Vec::new(),
            reps: Vec::new(),
        }
    }

    pub fn push(&mut self, m: Metric, v: f64) {
        self.samples[m as usize].push(v);
    }

    pub fn samples(&self, m: Metric) -> &[f64] {
        &self.samples[m as usize]
    }

    pub fn wanted(&self, m: Metric) -> bool {
        self.wanted[m as usize]
    }

    pub fn median(&self, m: Metric) -> Option<f64> {
        median(self.samples(m))
    }
}

/// The bench's targets, all about hypha with its default flags (sessions on), judged on the
/// medians of one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp1VsVeth,
    Tcp1VsFloor,
    CpuEfficiency,
    FixedCpu,
    FixedCpuVsFloor,
    ChainVsTwoNodes,
    UdpVsVeth,
    RttUnderLoad,
    RssUnderUdp,
}

impl Target {
    pub const ALL: [Target; 9] = [
        Target::Tcp1VsVeth,
        Target::Tcp1VsFloor,
        Target::CpuEfficiency,
        Target::FixedCpu,
        Target::FixedCpuVsFloor,
        Target::ChainVsTwoNodes,
        Target::UdpVsVeth,
        Target::RttUnderLoad,
        Target::RssUnderUdp,
    ];

    /// The table row the target is shown on.
    pub fn metric(self) -> Metric {
        match self {
            Target::Tcp1VsVeth | Target::Tcp1VsFloor => Metric::Tcp1,
            Target::CpuEfficiency => Metric::GbitPerCpu,
            Target::FixedCpu | Target::FixedCpuVsFloor => Metric::FixedCpu,
            Target::ChainVsTwoNodes => Metric::Chain,
            Target::UdpVsVeth => Metric::Udp,
            Target::RttUnderLoad => Metric::RttLoad,
            Target::RssUnderUdp => Metric::RssUdp,
        }
    }

    pub fn id(self) -> &'static str {
        match self {
            Target::Tcp1VsVeth => "tcp1_vs_veth",
            Target::Tcp1VsFloor => "tcp1_vs_floor",
            Target::CpuEfficiency => "gbit_per_cpu_s",
            Target::FixedCpu => "fixed_cpu_s_per_gbit",
            Target::FixedCpuVsFloor => "fixed_cpu_vs_floor",
            Target::ChainVsTwoNodes => "chain_vs_tcp1",
            Target::UdpVsVeth => "udp_vs_veth",
            Target::RttUnderLoad => "rtt_load_ms",
            Target::RssUnderUdp => "rss_udp_mb",
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Target::Tcp1VsVeth => ">= 0.40x veth",
            Target::Tcp1VsFloor => ">= 0.80x floor",
            Target::CpuEfficiency => ">= 4 Gbit/CPU-s",
            Target::FixedCpu => "<= 0.2 s/Gbit",
            Target::FixedCpuVsFloor => "<= 1.30x floor",
            Target::ChainVsTwoNodes => ">= 0.90x 2-node",
            Target::UdpVsVeth => ">= 0.90x veth",
            Target::RttUnderLoad => "<= 1 ms",
            Target::RssUnderUdp => "<= 32 MB",
        }
    }

    fn threshold(self) -> (f64, bool) {
        // (bound, true when the value must be at least the bound)
        match self {
            Target::Tcp1VsVeth => (0.40, true),
            Target::Tcp1VsFloor => (0.80, true),
            Target::CpuEfficiency => (4.0, true),
            Target::FixedCpu => (0.2, false),
            Target::FixedCpuVsFloor => (1.30, false),
            Target::ChainVsTwoNodes | Target::UdpVsVeth => (0.90, true),
            Target::RttUnderLoad => (1.0, false),
            Target::RssUnderUdp => (32.0, false),
        }
    }

    /// Whether the judged figure is a ratio of two medians (shown with an `x`).
    fn is_ratio(self) -> bool {
        matches!(
            self,
            Target::Tcp1VsVeth
                | Target::Tcp1VsFloor
                | Target::FixedCpuVsFloor
                | Target::ChainVsTwoNodes
                | Target::UdpVsVeth
        )
    }

    /// The figure the target judges for the subject with `role`, from the medians: a ratio or
    /// the metric itself. A target relative to the forwarding floor has no figure for the floor
    /// itself (it would be 1 by definition).
    fn value(self, role: Role, subjects: &[SubjectResult]) -> Option<f64> {
        let subject = subjects.iter().find(|s| s.role == role)?;
        let reference = |r: Role| subjects.iter().find(|s| s.role == r);
        let vs = |r: Role, m: Metric| ratio(subject.median(m)?, reference(r)?.median(m)?);
        match self {
            Target::Tcp1VsVeth => vs(Role::Veth, Metric::Tcp1),
            Target::UdpVsVeth => vs(Role::Veth, Metric::Udp),
            Target::Tcp1VsFloor | Target::FixedCpuVsFloor if role == Role::Floor => None,
            Target::Tcp1VsFloor => vs(Role::Floor, Metric::Tcp1),
            Target::FixedCpuVsFloor => vs(Role::Floor, Metric::FixedCpu),
            Target::ChainVsTwoNodes => ratio(
                subject.median(Metric::Chain)?,
                subject.median(Metric::Tcp1)?,
            ),
            Target::CpuEfficiency
            | Target::FixedCpu
            | Target::RttUnderLoad
            | Target::RssUnderUdp => subject.median(self.metric()),
        }
    }

    /// A judged figure as the table shows it: a ratio with its `x`, else the metric's format.
    fn show(self, v: f64) -> String {
        if self.is_ratio() {
            format!("{v:.2}x")
        } else {
            self.metric().format(v)
        }
    }

    fn passes(self, v: f64) -> bool {
        let (bound, at_least) = self.threshold();
        if at_least {
            v >= bound
        } else {
            v <= bound
        }
    }

    /// Judges hypha (default flags); the floors' figures for the same target are reported
    /// beside.
    pub fn judge(self, subjects: &[SubjectResult]) -> TargetReport {
        let value = self.value(Role::Hypha, subjects);
        let floor = self.value(Role::Floor, subjects);
        let sealed_floor = self.value(Role::SealedFloor, subjects);
        TargetReport {
            id: self.id(),
            target: self.text(),
            threshold: self.threshold().0,
            value,
            pass: value.map(|v| self.passes(v)),
            floor,
            floor_pass: floor.map(|v| self.passes(v)),
            sealed_floor,
            sealed_floor_pass: sealed_floor.map(|v| self.passes(v)),
        }
    }
}

/// `a / b` when `b` is a positive number.
pub fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The run's circumstances, for the header line and the JSON.
#[derive(Clone, Debug, Serialize)]
pub struct Meta {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub load_average: [f64; 3],
    pub runs: u32,
    pub secs: u32,
    pub binary: String,
    pub scenarios: Vec<&'static str>,
}

impl Meta {
    pub fn header(&self) -> String {
        format!(
            "hypha bench  {}  Linux {}  {} CPUs  load {:.2} {:.2} {:.2}  median of {} run{} x {} s",
            self.date,
            self.kernel,
            self.cpus,
            self.load_average[0],
            self.load_average[1],
            self.load_average[2],
            self.runs,
            if self.runs == 1 { "" } else { "s" },
            self.secs
        )
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub meta: Meta,
    pub subjects: Vec<SubjectReport>,
    pub targets: Vec<TargetReport>,
}

#[derive(Debug, Serialize)]
pub struct SubjectReport {
    pub label: String,
    pub role: Role,
    pub command: Option<String>,
    /// True when nothing at all could be measured.
    pub failed: bool,
    pub errors: Vec<String>,
    pub metrics: Vec<MetricReport>,
    pub reps: Vec<RepDetail>,
}

#[derive(Debug, Serialize)]
pub struct MetricReport {
    pub id: &'static str,
    pub unit: &'static str,
    pub median: Option<f64>,
    pub ratio_to_veth: Option<f64>,
    pub samples: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct TargetReport {
    pub id: &'static str,
    pub target: &'static str,
    pub threshold: f64,
    pub value: Option<f64>,
    pub pass: Option<bool>,
    /// The same figure for the forwarding floor, and for the floor with AES-GCM, when they ran.
    pub floor: Option<f64>,
    pub floor_pass: Option<bool>,
    pub sealed_floor: Option<f64>,
    pub sealed_floor_pass: Option<bool>,
}

impl Report {
    pub fn new(meta: Meta, subjects: &[SubjectResult]) -> Report {
        let veth = subjects.iter().find(|s| s.role == Role::Veth);
        let out = subjects
            .iter()
            .map(|s| SubjectReport {
                label: s.label.clone(),
                role: s.role,
                command: s.command.clone(),
                failed: Metric::ALL.iter().all(|&m| s.samples(m).is_empty()),
                errors: s.errors.clone(),
                metrics: Metric::ALL
                    .iter()
                    .filter(|&&m| s.wanted(m))
                    .map(|&m| MetricReport {
                        id: m.id(),
                        unit: m.unit(),
                        median: s.median(m),
                        ratio_to_veth: m
                            .has_ratio()
                            .then(|| ratio(s.median(m)?, veth?.median(m)?))
                            .flatten(),
                        samples: s.samples(m).to_vec(),
                    })
                    .collect(),
                reps: s.reps.clone(),
            })
            .collect();
        Report {
            meta,
            subjects: out,
            targets: Target::ALL.iter().map(|t| t.judge(subjects)).collect(),
        }
    }
}

/// The table: a row per metric, a column per subject (median, and its ratio to veth for
/// throughputs), and the target column judging hypha (default flags). Failures are listed below.
pub fn table(meta: &Meta, subjects: &[SubjectResult]) -> String {
    let veth = subjects.iter().find(|s| s.role == Role::Veth);
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut head = vec!["".to_owned(), "unit".to_owned()];
    head.extend(subjects.iter().map(|s| s.label.clone()));
    head.push("target (hypha)".to_owned());
    rows.push(head);
    for m in Metric::ALL {
        if !subjects.iter().any(|s| s.wanted(m)) {
            continue;
        }
        let mut row = vec![m.label().to_owned(), m.unit().to_owned()];
        for s in subjects {
            row.push(cell(m, s, veth));
        }
        let judged: Vec<String> = Target::ALL
            .iter()
            .filter(|t| t.metric() == m)
            .map(|t| {
                let r = t.judge(subjects);
                let verdict = match r.pass {
                    Some(true) => "PASS",
                    Some(false) => "FAIL",
                    None => "n/a",
                };
                let mut text = match r.value {
                    Some(v) => format!("{} {} {verdict}", t.text(), t.show(v)),
                    None => format!("{} {verdict}", t.text()),
                };
                let floors: Vec<String> = [("floor", r.floor), ("floor+aes", r.sealed_floor)]
                    .into_iter()
                    .filter_map(|(name, v)| Some(format!("{name} {}", t.show(v?))))
                    .collect();
                if !floors.is_empty() {
                    text.push_str(&format!(" ({})", floors.join(", ")));
                }
                text
            })
            .collect();
        row.push(judged.join("; "));
        rows.push(row);
    }
    let ncol = rows[0].len();
    let widths: Vec<usize> = (0..ncol)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = meta.header();
    out.push('\n');
    for (i, r) in rows.iter().enumerate() {
        let mut line = String::new();
        for (c, text) in r.iter().enumerate() {
            let pad = widths[c] - text.chars().count();
            if c == 0 || c == 1 || c == ncol - 1 {
                line.push_str(text);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(&" ".repeat(pad));
                line.push_str(text);
            }
            line.push_str("  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (ncol - 1)));
            out.push('\n');
        }
    }
    let mut notes = Vec::new();
    for s in subjects {
        if let Some(cmd) = &s.command {
            notes.push(format!("{}: {cmd}", s.label));
        }
    }
    for s in subjects {
        for e in &s.errors {
            notes.push(format!("{} failed: {}", s.label, e.replace('\n', "\n    ")));
        }
    }
    if !notes.is_empty() {
        out.push('\n');
        for n in notes {
            out.push_str(&n);
            out.push('\n');
        }
    }
    out
}

fn cell(m: Metric, s: &SubjectResult, veth: Option<&SubjectResult>) -> String {
    if !s.wanted(m) {
        return "-".to_owned();
    }
    let Some(v) = s.median(m) else {
        return if s.errors.is_empty() { "-" } else { "failed" }.to_owned();
    };
    let mut text = m.format(v);
    if m.has_ratio() && s.role != Role::Veth {
        if let Some(r) = veth.and_then(|veth| ratio(v, veth.median(m)?)) {
            text.push_str(&format!(" ({r:.2}x)"));
        }
    }
    text
}

/// The chart: throughput, RTT, CPU per Gbit and peak RSS panels, a series per subject.
pub fn chart(meta: &Meta, subjects: &[SubjectResult]) -> chart::Chart {
    let panel = |title: &str, unit: &str, metrics: &[(Metric, &str)]| chart::Panel {
        title: title.to_owned(),
        unit: unit.to_owned(),
        categories: metrics.iter().map(|(_, c)| (*c).to_owned()).collect(),
        series: subjects
            .iter()
            .map(|s| chart::Series {
                name: s.label.clone(),
                values: metrics.iter().map(|(m, _)| s.median(*m)).collect(),
            })
            .collect(),
    };
    chart::Chart {
        title: "hypha bench".to_owned(),
        subtitle: meta
            .header()
            .trim_start_matches("hypha bench")
            .trim()
            .to_owned(),
        panels: vec![
            panel(
                "Throughput",
                "Gbit/s",
                &[
                    (Metric::Tcp1, "tcp 1 stream"),
                    (Metric::Tcp4, "tcp 4 streams"),
                    (Metric::Chain, "tcp 3-node chain"),
                    (Metric::Udp, "udp 1200 B"),
                ],
            ),
            panel(
                "Ping RTT",
                "ms",
                &[
                    (Metric::RttIdle, "idle"),
                    (Metric::RttLoad, "under bulk tcp"),
                ],
            ),
            panel(
                "Node CPU per Gbit",
                "s/Gbit",
                &[
                    (Metric::CpuPerGbit, "busiest node, 1 stream"),
                    (Metric::CpuPerGbitSum, "all nodes, 1 stream"),
                    (Metric::FixedCpu, "all nodes, paced 1.2G"),
                ],
            ),
            panel(
                "Peak RSS per node",
                "MB",
                &[
                    (Metric::RssUdp, "udp flood"),
                    (Metric::RssPeak, "whole run"),
                ],
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            date: "2026-11-25 21:00 UTC".into(),
            kernel: "6.18".into(),
            cpus: 2,
            load_average: [0.5, 0.25, 1.0],
            runs: 3,
            secs: 5,
            binary: "/bin/hypha".into(),
            scenarios: vec!["tcp1"],
        }
    }

    fn subjects() -> Vec<SubjectResult> {
        let all = Metric::ALL;
        let mut veth = SubjectResult::new("veth".into(), Role::Veth, None, &all);
        let mut hypha = SubjectResult::new("hypha".into(), Role::Hypha, Some("hypha".into()), &all);
        for v in [10.0, 20.0, 30.0] {
            veth.push(Metric::Tcp1, v);
            veth.push(Metric::Udp, v / 10.0);
            hypha.push(Metric::Tcp1, v / 2.0);
            hypha.push(Metric::Chain, v / 2.0 * 0.8);
            hypha.push(Metric::Udp, v / 10.0);
        }
        hypha.push(Metric::RttLoad, 0.4);
        hypha.push(Metric::RssUdp, 40.0);
        hypha.push(Metric::GbitPerCpu, 4.0);
        let mut broken =
            SubjectResult::new("other".into(), Role::Compare, Some("/x/other".into()), &all);
        broken
            .errors
            .push("rep 1: node a exited\nlast log line".into());
        vec![veth, hypha, broken]
    }

    #[test]
    fn targets_judge_hypha_against_veth() {
        let s = subjects();
        let r: Vec<TargetReport> = Target::ALL.iter().map(|t| t.judge(&s)).collect();
        let get = |id: &str| r.iter().find(|t| t.id == id).unwrap();
        assert_eq!(get("tcp1_vs_veth").value, Some(0.5));
        assert_eq!(get("tcp1_vs_veth").pass, Some(true));
        assert_eq!(get("chain_vs_tcp1").pass, Some(false));
        assert_eq!(get("udp_vs_veth").value, Some(1.0));
        assert_eq!(get("rtt_load_ms").pass, Some(true));
        assert_eq!(get("rss_udp_mb").pass, Some(false));
        assert_eq!(get("gbit_per_cpu_s").pass, Some(true));
        // No paced flow and no floor in these samples.
        for id in [
            "tcp1_vs_floor",
            "fixed_cpu_s_per_gbit",
            "fixed_cpu_vs_floor",
        ] {
            assert_eq!((get(id).value, get(id).pass), (None, None), "{id}");
        }
    }

    /// hypha, the floors and hypha --no-sessions with single-stream and paced-flow figures.
    fn with_floors(hypha_tcp1: f64, hypha_fixed_cpu: f64) -> Vec<SubjectResult> {
        let all = Metric::ALL;
        let mut veth = SubjectResult::new("veth".into(), Role::Veth, None, &all);
        veth.push(Metric::Tcp1, 20.0);
        veth.push(Metric::FixedRate, 1.2);
        let mut hypha = SubjectResult::new("hypha".into(), Role::Hypha, Some("hypha".into()), &all);
        // Medians of three repetitions: the middle sample counts, the outliers do not.
        for k in [0.5, 1.0, 3.0] {
            hypha.push(Metric::Tcp1, hypha_tcp1 * k);
            hypha.push(Metric::FixedCpu, hypha_fixed_cpu * k);
        }
        hypha.push(Metric::Chain, hypha_tcp1 * 0.95);
        let mut legacy = SubjectResult::new(
            "hypha --no-sessions".into(),
            Role::HyphaNoSessions,
            Some("hypha --no-sessions".into()),
            &all,
        );
        legacy.push(Metric::Tcp1, 1.0);
        legacy.push(Metric::FixedCpu, 9.0);
        let mut floor = SubjectResult::new(
            "floor".into(),
            Role::Floor,
            Some("hypha-bench floor".into()),
            &all,
        );
        floor.push(Metric::Tcp1, 10.0);
        floor.push(Metric::FixedCpu, 0.125);
        let mut sealed = SubjectResult::new(
            "floor+aes".into(),
            Role::SealedFloor,
            Some("hypha-bench floor --seal".into()),
            &all,
        );
        sealed.push(Metric::Tcp1, 6.0);
        sealed.push(Metric::FixedCpu, 0.25);
        vec![veth, hypha, legacy, floor, sealed]
    }

    #[test]
    fn targets_against_the_floor_and_at_the_fixed_rate() {
        // hypha: 8 Gbit/s (0.40x veth, 0.80x floor), 0.160 s/Gbit paced (1.28x floor).
        let s = with_floors(8.0, 0.16);
        let judge = |t: Target| t.judge(&s);
        let tcp1 = judge(Target::Tcp1VsVeth);
        assert_eq!((tcp1.value, tcp1.pass), (Some(0.4), Some(true)));
        let vs_floor = judge(Target::Tcp1VsFloor);
        assert_eq!((vs_floor.value, vs_floor.pass), (Some(0.8), Some(true)));
        // The floor is not judged against itself; floor+aes is, against the floor.
        assert_eq!((vs_floor.floor, vs_floor.floor_pass), (None, None));
        assert_eq!(
            (vs_floor.sealed_floor, vs_floor.sealed_floor_pass),
            (Some(0.6), Some(false))
        );
        let cpu = judge(Target::FixedCpu);
        assert_eq!((cpu.value, cpu.pass), (Some(0.16), Some(true)));
        assert_eq!((cpu.floor, cpu.floor_pass), (Some(0.125), Some(true)));
        assert_eq!(
            (cpu.sealed_floor, cpu.sealed_floor_pass),
            (Some(0.25), Some(false))
        );
        let cpu_vs = judge(Target::FixedCpuVsFloor);
        assert_eq!(cpu_vs.pass, Some(true));
        assert!((cpu_vs.value.unwrap() - 1.28).abs() < 1e-9);
        assert_eq!(cpu_vs.floor, None);
        assert_eq!(cpu_vs.sealed_floor, Some(2.0));
        let chain = judge(Target::ChainVsTwoNodes);
        assert!((chain.value.unwrap() - 0.95).abs() < 1e-9);
        assert_eq!(chain.pass, Some(true));
        // hypha --no-sessions is shown, never judged: its figures leave the verdicts alone.
        assert_eq!(tcp1.value, Some(0.4));

        // Just past every bound: 0.39x veth, 0.78x floor, 0.21 s/Gbit, 1.68x the floor.
        let s = with_floors(7.8, 0.21);
        let r: Vec<TargetReport> = [
            Target::Tcp1VsVeth,
            Target::Tcp1VsFloor,
            Target::FixedCpu,
            Target::FixedCpuVsFloor,
        ]
        .iter()
        .map(|t| t.judge(&s))
        .collect();
        assert!(r.iter().all(|t| t.pass == Some(false)), "{r:?}");
        // The chain is judged against hypha's own single stream, whatever it is.
        assert_eq!(Target::ChainVsTwoNodes.judge(&s).pass, Some(true));

        // On the bound passes: 1.30x the floor's CPU.
        let s = with_floors(8.0, 0.1625);
        assert_eq!(Target::FixedCpuVsFloor.judge(&s).pass, Some(true));
        let s = with_floors(8.0, 0.1626);
        assert_eq!(Target::FixedCpuVsFloor.judge(&s).pass, Some(false));
    }

    #[test]
    fn table_shows_the_fixed_rate_rows() {
        let s = with_floors(8.0, 0.16);
        let t = table(&meta(), &s);
        let head = t.lines().nth(1).unwrap();
        assert!(head.contains("hypha --no-sessions"), "{head}");
        let line = t
            .lines()
            .find(|l| l.starts_with("node CPU all, 1.2G"))
            .unwrap();
        assert!(line.contains("s/Gbit"), "{line}");
        // Raw veth has no nodes: a dash; then hypha, no-sessions, floor, floor+aes.
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &cells[5..10],
            ["-", "0.160", "9.000", "0.125", "0.250"],
            "{line}"
        );
        assert!(
            line.contains(
                "<= 0.2 s/Gbit 0.160 PASS (floor 0.125, floor+aes 0.250); \
                 <= 1.30x floor 1.28x PASS (floor+aes 2.00x)"
            ),
            "{line}"
        );
        let line = t.lines().find(|l| l.starts_with("tcp, 1 stream")).unwrap();
        assert!(
            line.contains(
                ">= 0.40x veth 0.40x PASS (floor 0.50x, floor+aes 0.30x); \
                 >= 0.80x floor 0.80x PASS (floor+aes 0.60x)"
            ),
            "{line}"
        );
        // The paced rate of raw veth is shown, without a ratio.
        let line = t
            .lines()
            .find(|l| l.starts_with("tcp, paced 1.2G"))
            .unwrap();
        assert!(line.contains("1.20") && !line.contains("x)"), "{line}");
        let v = serde_json::to_value(Report::new(meta(), &s)).unwrap();
        assert_eq!(v["subjects"][2]["role"], "hypha-no-sessions");
        let t = v["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == "fixed_cpu_vs_floor")
            .unwrap();
        assert_eq!(t["pass"], true);
        assert_eq!(t["floor"], serde_json::Value::Null);
    }

    #[test]
    fn quic_is_shown_beside_hypha_not_judged() {
        let mut s = with_floors(8.0, 0.16);
        let mut quic = SubjectResult::new(
            "hypha quic://".into(),
            Role::HyphaQuic,
            Some("hypha".into()),
            &Metric::ALL,
        );
        // Figures that would fail every target hypha passes: the verdicts must not move.
        quic.push(Metric::Tcp1, 2.0);
        quic.push(Metric::CpuPerGbit, 0.5);
        quic.push(Metric::FixedCpu, 0.9);
        s.insert(2, quic);
        for (t, v) in [
            (Target::Tcp1VsVeth, 0.4),
            (Target::Tcp1VsFloor, 0.8),
            (Target::FixedCpu, 0.16),
        ] {
            let r = t.judge(&s);
            assert!((r.value.unwrap() - v).abs() < 1e-9, "{r:?}");
            assert_eq!(r.pass, Some(true), "{r:?}");
        }
        // Its column comes next to hypha's, with the ratio to veth like every subject's.
        let t = table(&meta(), &s);
        let head = t.lines().nth(1).unwrap();
        assert!(
            head.contains("hypha  hypha quic://  hypha --no-sessions"),
            "{head}"
        );
        let line = t.lines().find(|l| l.starts_with("tcp, 1 stream")).unwrap();
        assert!(line.contains("8.00 (0.40x)   2.00 (0.10x)"), "{line}");
        let line = t
            .lines()
            .find(|l| l.starts_with("node CPU, busiest"))
            .unwrap();
        assert!(line.contains("0.500"), "{line}");
        let v = serde_json::to_value(Report::new(meta(), &s)).unwrap();
        let q = &v["subjects"][2];
        assert_eq!(
            (&q["label"], &q["role"]),
            (&"hypha quic://".into(), &"hypha-quic".into())
        );
        assert_eq!(q["metrics"][0]["ratio_to_veth"], 0.1);
        let c = chart(&meta(), &s);
        assert_eq!(c.panels[0].series[2].name, "hypha quic://");
        assert_eq!(c.panels[0].series[2].values[0], Some(2.0));
    }

    #[test]
    fn targets_report_the_floor_beside_hypha() {
        let mut s = subjects();
        assert_eq!(Target::Tcp1VsVeth.judge(&s).floor, None);
        let mut floor = SubjectResult::new(
            "floor".into(),
            Role::Floor,
            Some("hypha-bench floor".into()),
            &Metric::ALL,
        );
        for v in [3.0, 6.0, 9.0] {
            floor.push(Metric::Tcp1, v);
            floor.push(Metric::Chain, v / 2.0);
        }
        floor.push(Metric::RttLoad, 1.5);
        s.push(floor);
        let mut sealed = SubjectResult::new(
            "floor+aes".into(),
            Role::SealedFloor,
            Some("hypha-bench floor --seal".into()),
            &Metric::ALL,
        );
        sealed.push(Metric::Tcp1, 2.0);
        let tcp1 = Target::Tcp1VsVeth.judge(&s);
        assert_eq!((tcp1.value, tcp1.pass), (Some(0.5), Some(true)));
        assert_eq!((tcp1.floor, tcp1.floor_pass), (Some(0.3), Some(false)));
        assert_eq!(tcp1.sealed_floor, None);
        s.push(sealed);
        let tcp1 = Target::Tcp1VsVeth.judge(&s);
        assert_eq!(
            (tcp1.sealed_floor, tcp1.sealed_floor_pass),
            (Some(0.1), Some(false))
        );
        let chain = Target::ChainVsTwoNodes.judge(&s);
        assert_eq!((chain.floor, chain.floor_pass), (Some(0.5), Some(false)));
        let rtt = Target::RttUnderLoad.judge(&s);
        assert_eq!((rtt.floor, rtt.floor_pass), (Some(1.5), Some(false)));
        assert_eq!(Target::UdpVsVeth.judge(&s).floor, None);
        let t = table(&meta(), &s);
        let line = t.lines().find(|l| l.starts_with("tcp, 1 stream")).unwrap();
        assert!(
            line.contains("0.50x PASS (floor 0.30x, floor+aes 0.10x)"),
            "{line}"
        );
        let line = t.lines().find(|l| l.starts_with("rtt under")).unwrap();
        assert!(line.contains("<= 1 ms 0.400 PASS (floor 1.500)"), "{line}");
    }

    #[test]
    fn ratio_needs_a_positive_reference() {
        assert_eq!(ratio(1.0, 4.0), Some(0.25));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
    }

    #[test]
    fn table_shows_medians_ratios_targets_and_failures() {
        let t = table(&meta(), &subjects());
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("hypha bench  2026-11-25"), "{t}");
        assert!(
            lines[1].contains("veth") && lines[1].contains("target (hypha)"),
            "{t}"
        );
        let tcp1 = lines
            .iter()
            .find(|l| l.starts_with("tcp, 1 stream"))
            .unwrap();
        assert!(tcp1.contains("20.00"), "{tcp1}");
        assert!(tcp1.contains("10.00 (0.50x)"), "{tcp1}");
        assert!(tcp1.contains("failed"), "{tcp1}");
        assert!(tcp1.contains(">= 0.40x veth 0.50x PASS"), "{tcp1}");
        // No floor ran: the floor-relative target cannot be judged.
        assert!(tcp1.contains("; >= 0.80x floor n/a"), "{tcp1}");
        let rss = lines
            .iter()
            .find(|l| l.starts_with("peak RSS, udp"))
            .unwrap();
        assert!(rss.contains("40.0") && rss.contains("FAIL"), "{rss}");
        // veth has no nodes: a dash, not a failure.
        assert!(rss.contains(" - "), "{rss}");
        assert!(
            t.contains("other failed: rep 1: node a exited\n    last log line"),
            "{t}"
        );
        // Columns line up: every row of the table is as wide as the rule under the header.
        let rule = lines[2].len();
        assert!(lines[2].chars().all(|c| c == '-'));
        assert!(lines[3..]
            .iter()
            .take_while(|l| !l.is_empty())
            .all(|l| l.chars().count() <= rule));
    }

    #[test]
    fn json_holds_samples_medians_and_targets() {
        let r = Report::new(meta(), &subjects());
        let v = serde_json::to_value(&r).unwrap();
        let hypha = &v["subjects"][1];
        assert_eq!(hypha["role"], "hypha");
        let tcp1 = &hypha["metrics"][0];
        assert_eq!(tcp1["id"], "tcp1_gbps");
        assert_eq!(tcp1["samples"], serde_json::json!([5.0, 10.0, 15.0]));
        assert_eq!(tcp1["median"], 10.0);
        assert_eq!(tcp1["ratio_to_veth"], 0.5);
        assert_eq!(v["subjects"][2]["failed"], true);
        assert_eq!(v["subjects"][0]["failed"], false);
        // Raw veth lists no node metrics.
        let ids: Vec<&str> = v["subjects"][0]["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap())
            .collect();
        assert!(
            !ids.contains(&"rss_udp_mb") && ids.contains(&"udp_gbps"),
            "{ids:?}"
        );
        assert_eq!(v["targets"].as_array().unwrap().len(), Target::ALL.len());
    }

    #[test]
    fn chart_has_a_series_per_subject() {
        let c = chart(&meta(), &subjects());
        assert_eq!(c.panels.len(), 4);
        for p in &c.panels {
            assert_eq!(p.series.len(), 3);
            for s in &p.series {
                assert_eq!(s.values.len(), p.categories.len());
            }
        }
        assert_eq!(c.panels[0].series[1].values[0], Some(10.0));
        assert_eq!(c.panels[3].series[0].values[0], None);
    }
}
