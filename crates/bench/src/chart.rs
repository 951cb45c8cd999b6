//! The PNG chart of `hypha bench`: grouped bar charts drawn into an RGB buffer and encoded with the
//! `png` crate.
//!
//! Everything is plotted here, text included: a 5×8 bitmap font defined below covers printable
//! ASCII (anything else is drawn as a box), so the chart needs no font files, no fontconfig and no
//! system library. Rendering is deterministic: the same [`Chart`] always gives the same pixels.
//!
//! Any input renders without panicking. Non-finite values count as not measured, negative values
//! as zero, labels too long for their place are cut with "...". Charts beyond the sizes a benchmark
//! produces are bounded rather than refused: at most [`MAX_PANELS`] panels, [`MAX_SERIES`] series and
//! [`MAX_CATEGORIES`] categories per panel are drawn, and the image is at most [`MAX_WIDTH`] pixels
//! wide; series beyond the eight colours of the palette reuse them in darker and lighter shades.

use std::path::Path;

/// One compared system (e.g. "hypha --no-offload"): one value per category of its panel.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// `None` = not measured; missing trailing values count as `None`.
    pub values: Vec<Option<f64>>,
}

/// One grouped bar chart: one group per category, one bar per series.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    pub title: String,
    pub unit: String,
    pub categories: Vec<String>,
    pub series: Vec<Series>,
}

/// The whole figure: a title, a subtitle (e.g. the machine and kernel) and panels.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    pub title: String,
    pub subtitle: String,
    pub panels: Vec<Panel>,
}

/// Panels after this many are not drawn.
pub const MAX_PANELS: usize = 16;
/// Series after this many in a panel are not drawn.
pub const MAX_SERIES: usize = 64;
/// Categories after this many in a panel are not drawn.
pub const MAX_CATEGORIES: usize = 64;
/// Widest image rendered, in pixels; wider content is squeezed.
pub const MAX_WIDTH: i64 = 4096;

/// Draws the chart: returns width, height and the RGB8 pixels, row by row.
pub fn render(chart: &Chart) -> (u32, u32, Vec<u8>) {
    let canvas = Layout::new(chart).draw();
    (canvas.w as u32, canvas.h as u32, canvas.px)
}

/// Renders the chart and writes it as a PNG file at `path`.
pub fn write_png(chart: &Chart, path: &Path) -> std::io::Result<()> {
    let (w, h, px) = render(chart);
    // Encoded in memory first, so that a failure to write the file is reported rather than lost
    // in a buffered writer's drop.
    let mut encoded = Vec::new();
    let mut enc = png::Encoder::new(&mut encoded, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&px)?;
    writer.finish()?;
    std::fs::write(path, encoded)
}

// ---------------------------------------------------------------------------------------------
// Colours and geometry

type Rgb = [u8; 3];

const BACKGROUND: Rgb = [0xFF, 0xFF, 0xFF];
const INK: Rgb = [0x22, 0x22, 0x22];
const SOFT_INK: Rgb = [0x55, 0x55, 0x55];
const FAINT_INK: Rgb = [0x99, 0x99, 0x99];
const AXIS: Rgb = [0x77, 0x77, 0x77];
const GRID: Rgb = [0xE4, 0xE4, 0xE4];

/// Series colours, told apart by hue and lightness; none is a grey, so they never coincide with
/// text, axes or grid lines.
const PALETTE: [Rgb; 8] = [
    [0x3B, 0x6E, 0xC4], // blue
    [0xE0, 0x7B, 0x28], // orange
    [0x2E, 0x9E, 0x5B], // green
    [0xC8, 0x3E, 0x4D], // red
    [0x7E, 0x5B, 0xC2], // purple
    [0x1F, 0xA8, 0xB8], // teal
    [0xD6, 0x5D, 0xB1], // pink
    [0x8C, 0x6D, 0x3F], // brown
];

/// Colour of the `index`-th distinct series name of the chart.
fn series_colour(index: usize) -> Rgb {
    let base = PALETTE[index % PALETTE.len()];
    // Past the palette, cycle through darker and lighter shades so neighbours still differ.
    let shade = |c: u8| -> u8 {
        match (index / PALETTE.len()) % 3 {
            0 => c,
            1 => (u16::from(c) * 6 / 10) as u8,
            _ => (u16::from(c) + (255 - u16::from(c)) / 2) as u8,
        }
    };
    [shade(base[0]), shade(base[1]), shade(base[2])]
}

/// Scale of body text (the 5×8 font drawn at 10×16 pixels).
const TEXT: i64 = 2;
/// Scale of the chart title.
const TITLE: i64 = 3;
const MARGIN: i64 = 24;
/// Horizontal space between two panels on one row.
const GUTTER: i64 = 40;
/// Vertical space between rows of panels.
const ROW_GAP: i64 = 28;
const PANEL_TITLE_H: i64 = 8 * TEXT + 12;
/// Room above the plot for the label of a bar that reaches the top of the axis.
const VALUE_BAND: i64 = 8 * TEXT + 10;
const PLOT_H: i64 = 240;
const CATEGORY_BAND: i64 = 8 * TEXT + 14;
const PANEL_H: i64 = PANEL_TITLE_H + VALUE_BAND + PLOT_H + CATEGORY_BAND;
const BAR_GAP: i64 = 3;
const GROUP_GAP: i64 = 28;
const MIN_BAR_W: i64 = 24;
const MAX_BAR_W: i64 = 96;
const MIN_PANEL_W: i64 = 300;
const MIN_CONTENT_W: i64 = 720;
const LEGEND_SWATCH: i64 = 14;
const LEGEND_LINE_H: i64 = 24;
/// Legend names longer than this many characters are cut.
const LEGEND_NAME_CHARS: usize = 32;
/// Category labels may widen a group up to this many characters before they are cut.
const CATEGORY_CHARS: i64 = 20;
/// Values at or beyond these bounds are drawn at the bound (the label shows the bound too), which
/// keeps every axis computation finite.
const HUGE: f64 = 1e300;
const TINY: f64 = 1e-200;

/// The value to draw, or `None` for "n/a".
fn clean(v: Option<f64>) -> Option<f64> {
    let v = v.filter(|v| v.is_finite())?;
    if v < TINY {
        Some(0.0)
    } else {
        Some(v.min(HUGE))
    }
}

// ---------------------------------------------------------------------------------------------
// Numbers

/// `v` with three significant digits, e.g. "9.41", "0.0520", "12.3k", "4.20e-5".
fn format_value(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    if v == 0.0 {
        return "0".to_string();
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let a = v.abs();
    let mut exp = a.log10().floor() as i32;
    // Rounding to three digits can carry into the next power of ten (999.7 → "1.00k").
    if (a / 10f64.powi(exp - 2)).round() >= 1000.0 {
        exp += 1;
    }
    if (3..15).contains(&exp) {
        let group = exp / 3;
        let suffix = ["k", "M", "G", "T"][(group - 1) as usize];
        let decimals = (2 - (exp - 3 * group)) as usize;
        format!("{sign}{:.*}{suffix}", decimals, a / 10f64.powi(3 * group))
    } else if (-3..3).contains(&exp) {
        format!("{sign}{:.*}", (2 - exp) as usize, a)
    } else {
        format!("{sign}{:.2}e{exp}", a / 10f64.powi(exp))
    }
}

/// An axis tick: like [`format_value`] without trailing zeros ("0.5", "2k", "1.5").
fn format_tick(v: f64) -> String {
    let s = format_value(v);
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    if !number.contains('.') {
        return s;
    }
    let number = number.trim_end_matches('0').trim_end_matches('.');
    format!("{number}{suffix}")
}

/// A y axis from 0: the tick step (1, 2 or 5 × 10^k) and the number of intervals (3 to 5), so
/// that `step * intervals >= max`.
fn nice_axis(max: f64) -> (f64, usize) {
    if !(max.is_finite() && max > 0.0) {
        return (0.2, 5);
    }
    let exp = (max / 5.0).log10().floor() as i32;
    for e in exp - 1..=exp + 1 {
        for m in [1.0, 2.0, 5.0] {
            let step = m * 10f64.powi(e);
            // The tolerance keeps a maximum of exactly 5 steps at 5 intervals despite rounding.
            let n = (max / step - 1e-9).ceil();
            if step > 0.0 && n <= 5.0 {
                return (step, n.max(1.0) as usize);
            }
        }
    }
    (max / 5.0, 5)
}

// ---------------------------------------------------------------------------------------------
// Text

/// Replaces a label by a prefix ending in "..." when it is wider than `max_px` at `scale`.
fn fit(s: &str, max_px: i64, scale: i64) -> String {
    let max_chars = if max_px <= 0 {
        0
    } else {
        ((max_px + scale) / (6 * scale)) as usize
    };
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    if max_chars <= 3 {
        return ".".repeat(max_chars);
    }
    let mut out: String = s.chars().take(max_chars - 3).collect();
    out.truncate(out.trim_end().len());
    out.push_str("...");
    out
}

/// Width in pixels of `s` drawn at `scale`: 6 columns a character, the last one's gap left off.
fn text_width(s: &str, scale: i64) -> i64 {
    let n = s.chars().count() as i64;
    if n == 0 {
        0
    } else {
        n * 6 * scale - scale
    }
}

/// Breaks `s` into at most `max_lines` lines of at most `max_px`; the last line is cut if needed.
fn wrap(s: &str, max_px: i64, scale: i64, max_lines: usize) -> Vec<String> {
    let max_chars = ((max_px + scale) / (6 * scale)).max(1) as usize;
    let mut lines: Vec<String> = Vec::new();
    let mut line = String::new();
    for word in s.split_whitespace() {
        let needed = line.chars().count() + usize::from(!line.is_empty()) + word.chars().count();
        if !line.is_empty() && needed > max_chars {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    let max_lines = max_lines.max(1);
    if lines.len() > max_lines {
        let rest = lines.split_off(max_lines - 1).join(" ");
        lines.push(rest);
    }
    lines.iter().map(|l| fit(l, max_px, scale)).collect()
}

// ---------------------------------------------------------------------------------------------
// Layout

/// A panel reduced to what is drawn: cleaned values, colours, axis and natural width.
struct PanelPlan {
    title: String,
    categories: Vec<String>,
    /// (colour, one cleaned value per category)
    bars: Vec<(Rgb, Vec<Option<f64>>)>,
    step: f64,
    intervals: usize,
    ticks: Vec<String>,
    axis_w: i64,
    bar_w: i64,
    natural_w: i64,
}

impl PanelPlan {
    fn new(panel: &Panel, names: &[&str]) -> PanelPlan {
        let title = match (panel.title.trim().is_empty(), panel.unit.trim().is_empty()) {
            (_, true) => panel.title.clone(),
            (true, false) => panel.unit.clone(),
            (false, false) => format!("{} ({})", panel.title, panel.unit),
        };
        let categories: Vec<String> = panel
            .categories
            .iter()
            .take(MAX_CATEGORIES)
            .cloned()
            .collect();
        let bars: Vec<(Rgb, Vec<Option<f64>>)> = panel
            .series
            .iter()
            .take(MAX_SERIES)
            .map(|s| {
                let index = names
                    .iter()
                    .position(|n| *n == s.name)
                    .unwrap_or(names.len());
                let values = (0..categories.len())
                    .map(|i| clean(s.values.get(i).copied().flatten()))
                    .collect();
                (series_colour(index), values)
            })
            .collect();
        let max = bars
            .iter()
            .flat_map(|(_, v)| v.iter().flatten())
            .fold(0.0f64, |a, &b| a.max(b));
        let (step, intervals) = nice_axis(max);
        let ticks: Vec<String> = (0..=intervals)
            .map(|i| format_tick(step * i as f64))
            .collect();
        let axis_w = ticks.iter().map(|t| text_width(t, TEXT)).max().unwrap_or(0) + 14;
        let widest_label = bars
            .iter()
            .flat_map(|(_, v)| v.iter())
            .map(|v| text_width(&v.map_or_else(|| "n/a".to_string(), format_value), TEXT))
            .max()
            .unwrap_or(0);
        let bar_w = (widest_label + 10).clamp(MIN_BAR_W, MAX_BAR_W);
        let n = bars.len() as i64;
        let group_w = n * bar_w + (n - 1).max(0) * BAR_GAP;
        let widest_category = categories
            .iter()
            .map(|c| text_width(c, TEXT).min(CATEGORY_CHARS * 6 * TEXT))
            .max()
            .unwrap_or(0);
        let slot_w = group_w.max(widest_category) + GROUP_GAP;
        let plot_w = if bars.is_empty() {
            0
        } else {
            slot_w * categories.len() as i64
        };
        let natural_w = (axis_w + plot_w + 8)
            .max(text_width(&title, TEXT).min(480))
            .clamp(MIN_PANEL_W, MAX_WIDTH);
        PanelPlan {
            title,
            categories,
            bars,
            step,
            intervals,
            ticks,
            axis_w,
            bar_w,
            natural_w,
        }
    }

    fn is_empty(&self) -> bool {
        self.categories.is_empty() || self.bars.is_empty()
    }
}

/// Where everything goes: image size, header lines, legend entries, panel rectangles.
struct Layout {
    w: i64,
    h: i64,
    title: String,
    subtitle: Vec<String>,
    /// (colour, name, x, y)
    legend: Vec<(Rgb, String, i64, i64)>,
    /// (plan, x, y, width)
    panels: Vec<(PanelPlan, i64, i64, i64)>,
    /// Where "no data" goes when the chart has no panel.
    empty_note_y: Option<i64>,
}

impl Layout {
    fn new(chart: &Chart) -> Layout {
        let shown = &chart.panels[..chart.panels.len().min(MAX_PANELS)];
        // Colours follow series names, so one system keeps its colour in every panel.
        let mut names: Vec<&str> = Vec::new();
        for s in shown.iter().flat_map(|p| p.series.iter().take(MAX_SERIES)) {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        let plans: Vec<PanelPlan> = shown.iter().map(|p| PanelPlan::new(p, &names)).collect();
        let legend_names: Vec<String> = names
            .iter()
            .map(|n| fit(n, LEGEND_NAME_CHARS as i64 * 6 * TEXT, TEXT))
            .collect();
        let legend_entry_w = |n: &str| LEGEND_SWATCH + 8 + text_width(n, TEXT) + 28;
        let legend_w: i64 = legend_names.iter().map(|n| legend_entry_w(n)).sum();

        let widest_panel = plans.iter().map(|p| p.natural_w).max().unwrap_or(0);
        let content_w = widest_panel
            .max(legend_w.min(1600))
            .clamp(MIN_CONTENT_W, MAX_WIDTH - 2 * MARGIN);
        let w = content_w + 2 * MARGIN;

        let mut y = MARGIN;
        let title = fit(&chart.title, content_w, TITLE);
        if !title.is_empty() {
            y += 8 * TITLE + 10;
        }
        let subtitle = wrap(&chart.subtitle, content_w, TEXT, 3);
        y += subtitle.len() as i64 * (8 * TEXT + 6);
        y += 10;

        let mut legend = Vec::new();
        let mut x = MARGIN;
        if !legend_names.is_empty() {
            for (i, name) in legend_names.into_iter().enumerate() {
                let entry_w = legend_entry_w(&name);
                if x > MARGIN && x + entry_w - 28 > MARGIN + content_w {
                    x = MARGIN;
                    y += LEGEND_LINE_H;
                }
                legend.push((series_colour(i), name, x, y));
                x += entry_w;
            }
            y += LEGEND_LINE_H + 18;
        }

        // Panels that fit in half the width pair up on a row; the others take a row each.
        let half = (content_w - GUTTER) / 2;
        let mut panels = Vec::new();
        let mut plans = plans.into_iter().peekable();
        let empty_note_y = if plans.peek().is_none() {
            let note_y = y;
            y += 8 * TEXT + MARGIN;
            Some(note_y)
        } else {
            None
        };
        while let Some(plan) = plans.next() {
            let narrow = plan.natural_w <= half;
            if narrow && plans.peek().is_some_and(|next| next.natural_w <= half) {
                panels.push((plan, MARGIN, y, half));
                if let Some(next) = plans.next() {
                    panels.push((next, MARGIN + half + GUTTER, y, half));
                }
            } else {
                let width = if narrow { half } else { content_w };
                panels.push((plan, MARGIN, y, width));
            }
            y += PANEL_H + ROW_GAP;
        }
        if !panels.is_empty() {
            y -= ROW_GAP;
        }
        let h = y + MARGIN;
        Layout {
            w,
            h: h.max(2 * MARGIN),
            title,
            subtitle,
            legend,
            panels,
            empty_note_y,
        }
    }

    fn draw(&self) -> Canvas {
        let mut c = Canvas::new(self.w, self.h);
        let mut y = MARGIN;
        if !self.title.is_empty() {
            c.bold_text(MARGIN, y, &self.title, TITLE, INK);
            y += 8 * TITLE + 10;
        }
        for line in &self.subtitle {
            c.text(MARGIN, y, line, TEXT, SOFT_INK);
            y += 8 * TEXT + 6;
        }
        for (colour, name, x, y) in &self.legend {
            c.fill(*x, *y, LEGEND_SWATCH, LEGEND_SWATCH, *colour);
            c.text(x + LEGEND_SWATCH + 8, *y, name, TEXT, INK);
        }
        if let Some(y) = self.empty_note_y {
            c.text(MARGIN, y, "no data", TEXT, FAINT_INK);
        }
        for (plan, x, y, w) in &self.panels {
            draw_panel(&mut c, plan, *x, *y, *w);
        }
        c
    }
}

fn draw_panel(c: &mut Canvas, plan: &PanelPlan, x: i64, y: i64, w: i64) {
    c.bold_text(x, y, &fit(&plan.title, w, TEXT), TEXT, INK);
    let top = y + PANEL_TITLE_H + VALUE_BAND;
    let bottom = top + PLOT_H;
    if plan.is_empty() {
        c.fill(x, bottom, w, 1, AXIS);
        c.text(x + 8, top + PLOT_H / 2, "no data", TEXT, FAINT_INK);
        return;
    }
    let left = x + plan.axis_w;
    let right = x + w - 8;
    let plot_w = (right - left).max(1);
    let intervals = plan.intervals.max(1) as i64;

    for (i, tick) in plan.ticks.iter().enumerate() {
        let ty = bottom - i as i64 * PLOT_H / intervals;
        let colour = if i == 0 { AXIS } else { GRID };
        c.fill(left, ty, plot_w, 1, colour);
        c.fill(left - 5, ty, 5, 1, AXIS);
        let tw = text_width(tick, TEXT);
        c.text(left - 9 - tw, ty - 7 * TEXT / 2, tick, TEXT, SOFT_INK);
    }
    c.fill(left, top, 1, PLOT_H + 1, AXIS);

    let axis_top = plan.step * intervals as f64;
    let ncat = plan.categories.len() as i64;
    let nser = plan.bars.len() as i64;
    for (ci, category) in plan.categories.iter().enumerate() {
        let ci = ci as i64;
        let slot_x = left + ci * plot_w / ncat;
        let slot_w = (left + (ci + 1) * plot_w / ncat) - slot_x;
        // Squeeze bars (and then the gaps between them) when the slot is narrower than planned.
        let room = slot_w - 8;
        let mut gap = BAR_GAP;
        let mut bar_w = plan.bar_w;
        if nser * bar_w + (nser - 1) * gap > room {
            gap = if room >= nser * 3 { 1 } else { 0 };
            bar_w = ((room - (nser - 1) * gap) / nser).max(1);
        }
        let group_w = nser * bar_w + (nser - 1) * gap;
        let group_x = slot_x + (slot_w - group_w) / 2;
        for (si, (colour, values)) in plan.bars.iter().enumerate() {
            let bx = group_x + si as i64 * (bar_w + gap);
            let value = values.get(ci as usize).copied().flatten();
            let (label, colour_of_label, bar_h) = match value {
                Some(v) => {
                    let mut h = (v / axis_top * PLOT_H as f64).round() as i64;
                    if v > 0.0 {
                        // A measured non-zero value stays visible however small.
                        h = h.max(1);
                    }
                    (format_value(v), INK, h.clamp(0, PLOT_H))
                }
                None => ("n/a".to_string(), FAINT_INK, 0),
            };
            c.fill(bx, bottom - bar_h, bar_w, bar_h, *colour);
            // The label may spill into the gap beside the bar, never further.
            for scale in [TEXT, 1] {
                let lw = text_width(&label, scale);
                if lw <= bar_w + gap {
                    let lx = bx + (bar_w - lw) / 2;
                    c.text(
                        lx,
                        bottom - bar_h - 4 - 7 * scale,
                        &label,
                        scale,
                        colour_of_label,
                    );
                    break;
                }
            }
        }
        let label = fit(category, slot_w - 8, TEXT);
        let lw = text_width(&label, TEXT);
        c.text(slot_x + (slot_w - lw) / 2, bottom + 10, &label, TEXT, INK);
    }
}

// ---------------------------------------------------------------------------------------------
// Pixels

struct Canvas {
    w: i64,
    h: i64,
    px: Vec<u8>,
}

impl Canvas {
    fn new(w: i64, h: i64) -> Canvas {
        let w = w.clamp(1, MAX_WIDTH);
        let h = h.max(1);
        let mut px = Vec::with_capacity((w * h * 3) as usize);
        for _ in 0..w * h {
            px.extend_from_slice(&BACKGROUND);
        }
        Canvas { w, h, px }
    }

    /// Fills a rectangle, clipped to the image.
    fn fill(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        let (x0, x1) = (x.max(0), x.saturating_add(w).min(self.w));
        let (y0, y1) = (y.max(0), y.saturating_add(h).min(self.h));
        if x0 >= x1 || y0 >= y1 {
            return;
        }
        for row in y0..y1 {
            let start = ((row * self.w + x0) * 3) as usize;
            let end = ((row * self.w + x1) * 3) as usize;
            if let Some(span) = self.px.get_mut(start..end) {
                for p in span.chunks_exact_mut(3) {
                    p.copy_from_slice(&colour);
                }
            }
        }
    }

    /// Draws `s` with its top-left corner at (x, y); characters are 6×scale apart.
    fn text(&mut self, x: i64, y: i64, s: &str, scale: i64, colour: Rgb) {
        let mut cx = x;
        for ch in s.chars() {
            if cx >= self.w {
                break;
            }
            let rows = glyph(ch);
            for (r, bits) in rows.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill(cx + col * scale, y + r as i64 * scale, scale, scale, colour);
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    /// Text thickened by one pixel to the right, for titles.
    fn bold_text(&mut self, x: i64, y: i64, s: &str, scale: i64, colour: Rgb) {
        self.text(x, y, s, scale, colour);
        self.text(x + 1, y, s, scale, colour);
    }
}

// ---------------------------------------------------------------------------------------------
// Font

/// Rows of one 5×8 glyph, top first; bit 4 is the leftmost column. Rows 0–6 hold capitals and
/// digits (baseline under row 6), row 7 the descenders.
type Glyph = [u8; 8];

/// Parses glyph art: 35 or 40 cells of '#' (ink) and '.' (paper), spaces ignored; 35 cells leave
/// the descender row empty. Runs at compile time, so a malformed glyph fails the build.
const fn parse_glyph(art: &str) -> Glyph {
    let bytes = art.as_bytes();
    let mut rows = [0u8; 8];
    let mut cells = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'#' || b == b'.' {
            assert!(cells < 40, "glyph art has more than 40 cells");
            if b == b'#' {
                rows[cells / 5] |= 0x10 >> (cells % 5);
            }
            cells += 1;
        } else {
            assert!(b == b' ', "glyph art may only hold '#', '.' and ' '");
        }
        i += 1;
    }
    assert!(cells == 35 || cells == 40, "glyph art needs 35 or 40 cells");
    rows
}

const FONT_ART: [(char, &str); 95] = [
    (' ', "..... ..... ..... ..... ..... ..... ....."),
    ('!', "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#.."),
    ('"', ".#.#. .#.#. ..... ..... ..... ..... ....."),
    ('#', ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#."),
    ('$', "..#.. .#### #.#.. .###. ..#.# ####. ..#.."),
    ('%', "##... ##..# ...#. ..#.. .#... #..## ...##"),
    ('&', ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#"),
    ('\'', "..#.. ..#.. ..... ..... ..... ..... ....."),
    ('(', "...#. ..#.. .#... .#... .#... ..#.. ...#."),
    (')', ".#... ..#.. ...#. ...#. ...#. ..#.. .#..."),
    ('*', "..... ..#.. #.#.# .###. #.#.# ..#.. ....."),
    ('+', "..... ..#.. ..#.. ##### ..#.. ..#.. ....."),
    (',', "..... ..... ..... ..... ..... .##.. .##.. .#..."),
    ('-', "..... ..... ..... ##### ..... ..... ....."),
    ('.', "..... ..... ..... ..... ..... .##.. .##.."),
    ('/', "....# ....# ...#. ..#.. .#... #.... #...."),
    ('0', ".###. #...# #..## #.#.# ##..# #...# .###."),
    ('1', "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('2', ".###. #...# ....# ...#. ..#.. .#... #####"),
    ('3', "##### ...#. ..#.. ...#. ....# #...# .###."),
    ('4', "...#. ..##. .#.#. #..#. ##### ...#. ...#."),
    ('5', "##### #.... ####. ....# ....# #...# .###."),
    ('6', "..##. .#... #.... ####. #...# #...# .###."),
    ('7', "##### ....# ...#. ..#.. .#... .#... .#..."),
    ('8', ".###. #...# #...# .###. #...# #...# .###."),
    ('9', ".###. #...# #...# .#### ....# ...#. .##.."),
    (':', "..... .##.. .##.. ..... .##.. .##.. ....."),
    (';', "..... .##.. .##.. ..... .##.. .##.. .#..."),
    ('<', "...#. ..#.. .#... #.... .#... ..#.. ...#."),
    ('=', "..... ..... ##### ..... ##### ..... ....."),
    ('>', ".#... ..#.. ...#. ....# ...#. ..#.. .#..."),
    ('?', ".###. #...# ....# ...#. ..#.. ..... ..#.."),
    ('@', ".###. #...# #.### #.#.# #.### #.... .####"),
    ('A', ".###. #...# #...# ##### #...# #...# #...#"),
    ('B', "####. #...# #...# ####. #...# #...# ####."),
    ('C', ".###. #...# #.... #.... #.... #...# .###."),
    ('D', "###.. #..#. #...# #...# #...# #..#. ###.."),
    ('E', "##### #.... #.... ####. #.... #.... #####"),
    ('F', "##### #.... #.... ####. #.... #.... #...."),
    ('G', ".###. #...# #.... #.### #...# #...# .####"),
    ('H', "#...# #...# #...# ##### #...# #...# #...#"),
    ('I', ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('J', "..### ...#. ...#. ...#. ...#. #..#. .##.."),
    ('K', "#...# #..#. #.#.. ##... #.#.. #..#. #...#"),
    ('L', "#.... #.... #.... #.... #.... #.... #####"),
    ('M', "#...# ##.## #.#.# #.#.# #...# #...# #...#"),
    ('N', "#...# #...# ##..# #.#.# #..## #...# #...#"),
    ('O', ".###. #...# #...# #...# #...# #...# .###."),
    ('P', "####. #...# #...# ####. #.... #.... #...."),
    ('Q', ".###. #...# #...# #...# #.#.# #..#. .##.#"),
    ('R', "####. #...# #...# ####. #.#.. #..#. #...#"),
    ('S', ".#### #.... #.... .###. ....# ....# ####."),
    ('T', "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."),
    ('U', "#...# #...# #...# #...# #...# #...# .###."),
    ('V', "#...# #...# #...# #...# #...# .#.#. ..#.."),
    ('W', "#...# #...# #...# #.#.# #.#.# #.#.# .#.#."),
    ('X', "#...# #...# .#.#. ..#.. .#.#. #...# #...#"),
    ('Y', "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.."),
    ('Z', "##### ....# ...#. ..#.. .#... #.... #####"),
    ('[', ".###. .#... .#... .#... .#... .#... .###."),
    ('\\', "#.... #.... .#... ..#.. ...#. ....# ....#"),
    (']', ".###. ...#. ...#. ...#. ...#. ...#. .###."),
    ('^', "..#.. .#.#. #...# ..... ..... ..... ....."),
    ('_', "..... ..... ..... ..... ..... ..... ..... #####"),
    ('`', ".#... ..#.. ..... ..... ..... ..... ....."),
    ('a', "..... ..... .###. ....# .#### #...# .####"),
    ('b', "#.... #.... #.##. ##..# #...# #...# ####."),
    ('c', "..... ..... .###. #.... #.... #...# .###."),
    ('d', "....# ....# .##.# #..## #...# #...# .####"),
    ('e', "..... ..... .###. #...# ##### #.... .###."),
    ('f', "..##. .#..# .#... ###.. .#... .#... .#..."),
    ('g', "..... ..... .#### #...# #...# .#### ....# .###."),
    ('h', "#.... #.... #.##. ##..# #...# #...# #...#"),
    ('i', "..#.. ..... .##.. ..#.. ..#.. ..#.. .###."),
    ('j', "...#. ..... ..##. ...#. ...#. ...#. #..#. .##.."),
    ('k', "#.... #.... #..#. #.#.. ##... #.#.. #..#."),
    ('l', ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###."),
    ('m', "..... ..... ##.#. #.#.# #.#.# #...# #...#"),
    ('n', "..... ..... #.##. ##..# #...# #...# #...#"),
    ('o', "..... ..... .###. #...# #...# #...# .###."),
    ('p', "..... ..... ####. #...# #...# ####. #.... #...."),
    ('q', "..... ..... .#### #...# #...# .#### ....# ....#"),
    ('r', "..... ..... #.##. ##..# #.... #.... #...."),
    ('s', "..... ..... .#### #.... .###. ....# ####."),
    ('t', ".#... .#... ###.. .#... .#... .#..# ..##."),
    ('u', "..... ..... #...# #...# #...# #..## .##.#"),
    ('v', "..... ..... #...# #...# #...# .#.#. ..#.."),
    ('w', "..... ..... #...# #...# #.#.# #.#.# .#.#."),
    ('x', "..... ..... #...# .#.#. ..#.. .#.#. #...#"),
    ('y', "..... ..... #...# #...# #...# .#### ....# .###."),
    ('z', "..... ..... ##### ...#. ..#.. .#... #####"),
    ('{', "...## ..#.. ..#.. .#... ..#.. ..#.. ...##"),
    ('|', "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."),
    ('}', "##... ..#.. ..#.. ...#. ..#.. ..#.. ##..."),
    ('~', "..... ..... .#... #.#.# ...#. ..... ....."),
];

/// Drawn for every character outside printable ASCII.
const BOX: Glyph = parse_glyph("##### #...# #...# #...# #...# #...# #####");

/// The glyphs of 0x20..=0x7E, in order; the build fails if the art table is out of order.
static FONT: [Glyph; 95] = {
    let mut font = [[0u8; 8]; 95];
    let mut i = 0;
    while i < 95 {
        assert!(
            FONT_ART[i].0 as u32 == 0x20 + i as u32,
            "FONT_ART must list printable ASCII in order"
        );
        font[i] = parse_glyph(FONT_ART[i].1);
        i += 1;
    }
    font
};

fn glyph(c: char) -> &'static Glyph {
    if c.is_whitespace() {
        return &FONT[0];
    }
    (c as usize)
        .checked_sub(0x20)
        .and_then(|i| FONT.get(i))
        .unwrap_or(&BOX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(name: &str, values: &[Option<f64>]) -> Series {
        Series {
            name: name.to_string(),
            values: values.to_vec(),
        }
    }

    fn panel(title: &str, unit: &str, categories: &[&str], series: Vec<Series>) -> Panel {
        Panel {
            title: title.to_string(),
            unit: unit.to_string(),
            categories: categories.iter().map(|c| c.to_string()).collect(),
            series,
        }
    }

    const NAMES: [&str; 4] = ["veth", "hypha", "hypha --no-offload", "other"];

    /// The chart `hypha bench` draws, with plausible numbers and one system not measured on UDP.
    fn representative() -> Chart {
        let four = |vals: [[Option<f64>; 4]; 4]| -> Vec<Series> {
            NAMES.iter().zip(vals).map(|(n, v)| series(n, &v)).collect()
        };
        let two = |vals: [[Option<f64>; 2]; 4]| -> Vec<Series> {
            NAMES.iter().zip(vals).map(|(n, v)| series(n, &v)).collect()
        };
        let one = |vals: [f64; 4]| -> Vec<Series> {
            NAMES
                .iter()
                .zip(vals)
                .map(|(n, v)| series(n, &[Some(v)]))
                .collect()
        };
        Chart {
            title: "hypha bench".to_string(),
            subtitle: "2 cores, Linux 6.12, 10 s per test, 3 runs each: medians".to_string(),
            panels: vec![
                panel(
                    "Throughput",
                    "Gbit/s",
                    &["tcp 1 stream", "tcp 4 streams", "chain", "udp 1200B"],
                    four([
                        [Some(38.2), Some(61.0), Some(35.9), Some(4.12)],
                        [Some(9.41), Some(14.7), Some(6.02), Some(1.38)],
                        [Some(2.35), Some(3.9), Some(1.71), Some(1.02)],
                        [Some(1.87), Some(2.66), Some(1.12), None],
                    ]),
                ),
                panel(
                    "RTT",
                    "ms",
                    &["idle", "under load"],
                    two([
                        [Some(0.031), Some(0.25)],
                        [Some(0.094), Some(1.43)],
                        [Some(0.088), Some(3.2)],
                        [Some(0.12), Some(4.8)],
                    ]),
                ),
                panel(
                    "CPU",
                    "s/Gbit",
                    &["tcp 1 stream"],
                    one([0.021, 0.166, 0.52, 0.71]),
                ),
                panel("RSS", "MB", &["peak"], one([0.0, 18.4, 17.9, 42.0])),
            ],
        }
    }

    fn pixel(px: &[u8], w: u32, x: u32, y: u32) -> Rgb {
        let i = ((y * w + x) * 3) as usize;
        [px[i], px[i + 1], px[i + 2]]
    }

    fn count_colour(px: &[u8], colour: Rgb) -> usize {
        px.chunks_exact(3).filter(|p| *p == colour).count()
    }

    /// Longest vertical run of `colour` in any column: the height of the tallest bar of it.
    fn tallest_run(px: &[u8], w: u32, h: u32, colour: Rgb) -> u32 {
        let mut best = 0;
        for x in 0..w {
            let mut run = 0;
            for y in 0..h {
                if pixel(px, w, x, y) == colour {
                    run += 1;
                    best = best.max(run);
                } else {
                    run = 0;
                }
            }
        }
        best
    }

    #[test]
    fn representative_chart_has_every_series_colour_in_bars() {
        let (w, h, px) = render(&representative());
        assert!((700..=MAX_WIDTH as u32).contains(&w), "width {w}");
        assert!(h >= 600, "height {h}");
        assert_eq!(px.len(), (w * h * 3) as usize);
        for i in 0..NAMES.len() {
            let colour = series_colour(i);
            let swatch = (LEGEND_SWATCH * LEGEND_SWATCH) as usize;
            let n = count_colour(&px, colour);
            assert!(
                n > swatch * 4,
                "series {i} has only {n} pixels of its colour"
            );
            assert!(tallest_run(&px, w, h, colour) > LEGEND_SWATCH as u32);
        }
        // Background dominates and text is drawn.
        assert!(count_colour(&px, BACKGROUND) > (w * h / 2) as usize);
        assert!(count_colour(&px, INK) > 1000);
    }

    #[test]
    fn colours_are_distinct_and_not_grey() {
        for i in 0..24 {
            let c = series_colour(i);
            assert!(!(c[0] == c[1] && c[1] == c[2]), "colour {i} is grey");
            for j in 0..i {
                assert_ne!(c, series_colour(j), "colours {i} and {j}");
            }
        }
    }

    #[test]
    fn taller_value_gives_taller_bar() {
        let chart = Chart {
            title: "t".to_string(),
            subtitle: String::new(),
            panels: vec![panel(
                "p",
                "u",
                &["c"],
                vec![series("small", &[Some(1.0)]), series("big", &[Some(3.0)])],
            )],
        };
        let (w, h, px) = render(&chart);
        let small = tallest_run(&px, w, h, series_colour(0));
        let big = tallest_run(&px, w, h, series_colour(1));
        assert!(big > small, "big {big} vs small {small}");
        // The axis tops out at 3, so the big bar fills the plot and the small one a third of it.
        assert_eq!(big, PLOT_H as u32);
        assert!((small as i64 - PLOT_H / 3).abs() <= 1, "small {small}");
    }

    #[test]
    fn bar_heights_follow_values_across_categories() {
        let chart = Chart {
            title: String::new(),
            subtitle: String::new(),
            panels: vec![panel(
                "p",
                "",
                &["a", "b"],
                vec![series("only", &[Some(2.0), Some(10.0)])],
            )],
        };
        let (w, h, px) = render(&chart);
        let colour = series_colour(0);
        let heights: Vec<u32> = (0..w)
            .map(|x| (0..h).filter(|&y| pixel(&px, w, x, y) == colour).count() as u32)
            .filter(|&n| n > LEGEND_SWATCH as u32)
            .collect();
        assert!(heights.contains(&(PLOT_H as u32)));
        assert!(heights.contains(&((PLOT_H / 5) as u32)));
    }

    #[test]
    fn png_round_trip() {
        let chart = representative();
        let (w, h, px) = render(&chart);
        let path =
            std::env::temp_dir().join(format!("hypha-chart-test-{}.png", std::process::id()));
        write_png(&chart, &path).expect("write png");
        let file = std::fs::File::open(&path).expect("open png");
        let decoded = png::Decoder::new(std::io::BufReader::new(file)).read_info();
        let _ = std::fs::remove_file(&path);
        let mut reader = decoded.expect("decode header");
        let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
        let info = reader.next_frame(&mut buf).expect("decode frame");
        assert_eq!((info.width, info.height), (w, h));
        assert_eq!(info.color_type, png::ColorType::Rgb);
        assert_eq!(info.bit_depth, png::BitDepth::Eight);
        assert_eq!(&buf[..info.buffer_size()], &px[..]);
    }

    #[test]
    fn write_png_reports_unwritable_path() {
        let path = std::env::temp_dir()
            .join(format!("hypha-chart-missing-{}", std::process::id()))
            .join("x.png");
        assert!(write_png(&representative(), &path).is_err());
    }

    fn assert_renders(chart: &Chart) {
        let (w, h, px) = render(chart);
        assert!(w > 0 && h > 0);
        assert!(i64::from(w) <= MAX_WIDTH);
        assert_eq!(px.len(), w as usize * h as usize * 3);
    }

    #[test]
    fn degenerate_inputs_render() {
        let empty = Chart {
            title: String::new(),
            subtitle: String::new(),
            panels: vec![],
        };
        assert_renders(&empty);

        let all_none = Chart {
            title: "all none".to_string(),
            subtitle: String::new(),
            panels: vec![panel(
                "p",
                "u",
                &["a", "b"],
                vec![series("x", &[None, None]), series("y", &[])],
            )],
        };
        assert_renders(&all_none);
        let (w, h, px) = render(&all_none);
        // Nothing measured: only the legend swatches carry the series colours.
        let swatch = (LEGEND_SWATCH * LEGEND_SWATCH) as usize;
        assert_eq!(count_colour(&px, series_colour(0)), swatch);
        assert!(tallest_run(&px, w, h, series_colour(1)) <= LEGEND_SWATCH as u32);

        let odd_values = Chart {
            title: "odd".to_string(),
            subtitle: "x".repeat(10_000),
            panels: vec![panel(
                "values",
                "",
                &["nan", "inf", "-inf", "neg", "huge", "tiny", "max", "zero"],
                vec![series(
                    "s",
                    &[
                        Some(f64::NAN),
                        Some(f64::INFINITY),
                        Some(f64::NEG_INFINITY),
                        Some(-5.0),
                        Some(1e250),
                        Some(f64::MIN_POSITIVE / 4.0),
                        Some(f64::MAX),
                        Some(-0.0),
                    ],
                )],
            )],
        };
        assert_renders(&odd_values);

        let many: Vec<Series> = (0..20)
            .map(|i| series(&format!("series number {i}"), &[Some(f64::from(i)); 8]))
            .collect();
        let cats: Vec<String> = (0..8).map(|i| format!("category {i}")).collect();
        let cats: Vec<&str> = cats.iter().map(String::as_str).collect();
        let wide = Chart {
            title: "20 series".to_string(),
            subtitle: String::new(),
            panels: vec![panel("many", "u", &cats, many)],
        };
        assert_renders(&wide);

        let empty_strings = Chart {
            title: String::new(),
            subtitle: String::new(),
            panels: vec![
                panel("", "", &[""], vec![series("", &[Some(1.0)])]),
                panel("", "", &[], vec![]),
                panel("no series", "", &["a"], vec![]),
                panel("no categories", "", &[], vec![series("s", &[Some(1.0)])]),
            ],
        };
        assert_renders(&empty_strings);

        let long = "long label \u{2026} \u{1F980} \t\n".repeat(200);
        let oversized = Chart {
            title: long.clone(),
            subtitle: long.clone(),
            panels: (0..40)
                .map(|_| {
                    panel(
                        &long,
                        &long,
                        &[&long, &long],
                        (0..100)
                            .map(|i| series(&format!("{i}{long}"), &[Some(1e9), Some(1e-9)]))
                            .collect(),
                    )
                })
                .collect(),
        };
        assert_renders(&oversized);
    }

    #[test]
    fn glyphs_defined_and_distinct() {
        for (i, g) in FONT.iter().enumerate() {
            let c = char::from(0x20 + i as u8);
            assert_ne!(*g, BOX, "{c:?} looks like the unknown-character box");
            assert!(std::ptr::eq(glyph(c), g), "{c:?} maps to its own glyph");
            if c != ' ' {
                assert!(g.iter().any(|r| *r != 0), "{c:?} is blank");
            }
            for (j, other) in FONT.iter().enumerate().take(i) {
                assert_ne!(
                    g,
                    other,
                    "{c:?} and {:?} are drawn alike",
                    char::from(0x20 + j as u8)
                );
            }
        }
        for c in ['\u{7F}', '\u{80}', 'é', '\u{2026}', '\u{1F980}', '\0'] {
            assert_eq!(*glyph(c), BOX, "{c:?}");
        }
    }

    #[test]
    fn unknown_characters_draw_a_box() {
        let mut c = Canvas::new(20, 20);
        c.text(0, 0, "\u{2026}", 1, INK);
        for y in 0..7 {
            for x in 0..5 {
                let edge = x == 0 || x == 4 || y == 0 || y == 6;
                let ink = c.px[((y * 20 + x) * 3) as usize] == INK[0];
                assert_eq!(ink, edge, "({x}, {y})");
            }
        }
    }

    #[test]
    fn values_have_three_significant_digits() {
        let cases = [
            (9.406, "9.41"),
            (94.06, "94.1"),
            (940.6, "941"),
            (0.052, "0.0520"),
            (0.001234, "0.00123"),
            (0.0001234, "1.23e-4"),
            (999.7, "1.00k"),
            (1234.0, "1.23k"),
            (12_345_678.0, "12.3M"),
            (4.2e15, "4.20e15"),
            (0.0, "0"),
            (-0.0, "0"),
            (-2.5, "-2.50"),
            (1.0, "1.00"),
        ];
        for (v, s) in cases {
            assert_eq!(format_value(v), s, "{v}");
        }
        assert_eq!(format_value(f64::NAN), "n/a");
        let ticks = [
            (0.5, "0.5"),
            (2000.0, "2k"),
            (1500.0, "1.5k"),
            (0.0, "0"),
            (20.0, "20"),
        ];
        for (v, s) in ticks {
            assert_eq!(format_tick(v), s, "{v}");
        }
        assert_eq!(format_tick(0.1 * 3.0), "0.3");
    }

    #[test]
    fn axis_has_four_to_six_nice_ticks() {
        let mut v = 1e-12;
        while v < 1e15 {
            for m in [1.0, 1.3, 2.0, 2.7, 4.99, 5.0, 7.5] {
                let max = v * m;
                let (step, n) = nice_axis(max);
                assert!((3..=5).contains(&n), "{max}: {n} intervals");
                assert!(step * n as f64 >= max * (1.0 - 1e-9), "{max}: {step} x {n}");
                let mantissa = step / 10f64.powf(step.log10().floor());
                assert!(
                    [1.0, 2.0, 5.0].iter().any(|m| (mantissa - m).abs() < 1e-6),
                    "{max}: step {step}"
                );
            }
            v *= 10.0;
        }
        assert_eq!(nice_axis(0.0), (0.2, 5));
        assert_eq!(nice_axis(3.0), (1.0, 3));
        assert_eq!(nice_axis(38.2), (10.0, 4));
    }

    #[test]
    fn fit_cuts_long_labels() {
        assert_eq!(fit("short", 1000, 2), "short");
        assert_eq!(fit("tcp 4 streams", 12 * 8 - 2, 2), "tcp 4...");
        assert_eq!(fit("abcdef", 12 * 2 - 2, 2), "..");
        assert_eq!(fit("abc", 0, 2), "");
        assert!(text_width(&fit(&"w".repeat(500), 300, 2), 2) <= 300);
        let lines = wrap(&"word ".repeat(200), 300, 2, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with("..."));
        assert!(lines.iter().all(|l| text_width(l, 2) <= 300));
    }
}
