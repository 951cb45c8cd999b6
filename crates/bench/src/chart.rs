//! The PNG chart of the bench: grouped bar charts, one panel per figure, one bar colour per
//! subject, drawn with plotters into an RGB buffer and encoded with `png`.
//!
//! plotters draws the axes, grid, ticks, bars and text; this module only lays the panels out (a
//! legend, then panels side by side when two fit in a row) and places bars and labels in pixels.
//! Text is DejaVu Sans, embedded through the `dejavu` crate and registered with plotters'
//! `ab_glyph` font backend, so the chart needs no font files, fontconfig or system library, and
//! the same [`Chart`] always gives the same pixels. (DejaVu's license: the Bitstream Vera fonts
//! license, DejaVu's changes in the public domain; the `dejavu` crate ships it beside the fonts.)
//!
//! Any input renders: non-finite values count as not measured ("n/a"), negative values as zero,
//! labels too long for their place are cut with "…". Charts beyond the sizes a benchmark produces
//! are bounded rather than refused: at most [`MAX_PANELS`] panels, [`MAX_SERIES`] series and
//! [`MAX_CATEGORIES`] categories per panel are drawn, and the image is at most [`MAX_WIDTH`]
//! pixels wide; series beyond the eight colours of the palette reuse them in darker and lighter
//! shades.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use plotters::style::FontStyle;

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
pub const MAX_WIDTH: i32 = 4096;

/// Draws the chart: returns width, height and the RGB8 pixels, row by row.
pub fn render(chart: &Chart) -> anyhow::Result<(u32, u32, Vec<u8>)> {
    register_fonts()?;
    let layout = Layout::new(chart)?;
    let (w, h) = (layout.w as u32, layout.h as u32);
    let mut px = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut px, (w, h)).into_drawing_area();
        layout
            .draw(&root)
            .map_err(|e| anyhow!("cannot draw the chart: {e}"))?;
        root.present()
            .map_err(|e| anyhow!("cannot draw the chart: {e}"))?;
    }
    Ok((w, h, px))
}

/// Renders the chart and writes it as a PNG file at `path`.
pub fn write_png(chart: &Chart, path: &Path) -> anyhow::Result<()> {
    let (w, h, px) = render(chart)?;
    // Encoded in memory first, so that a failure to write the file is reported rather than lost
    // in a buffered writer's drop.
    let mut encoded = Vec::new();
    let mut enc = png::Encoder::new(&mut encoded, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header()?;
    writer.write_image_data(&px)?;
    writer.finish()?;
    std::fs::write(path, encoded).with_context(|| format!("cannot write {}", path.display()))
}

/// The family name the embedded fonts are registered under with plotters.
const FONT: &str = "sans-serif";

/// Registers DejaVu Sans (regular and bold) with plotters, once per process.
fn register_fonts() -> anyhow::Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular()).is_ok()
            && plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold()).is_ok()
    });
    if *ok {
        Ok(())
    } else {
        Err(anyhow!("the embedded DejaVu Sans font does not load"))
    }
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

fn rgb(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Text sizes, pixels.
const TITLE_PX: u32 = 30;
const TEXT_PX: u32 = 18;
const SMALL_PX: u32 = 13;
const MARGIN: i32 = 24;
/// Horizontal space between two panels on one row.
const GUTTER: i32 = 40;
/// Vertical space between rows of panels.
const ROW_GAP: i32 = 28;
const PANEL_TITLE_H: i32 = 30;
/// Room above the plot for the label of a bar that reaches the top of the axis.
const VALUE_BAND: i32 = 26;
/// Height of the plot itself: a bar at the top of the axis is this tall.
const PLOT_H: i32 = 240;
const CATEGORY_BAND: i32 = 34;
const PANEL_H: i32 = PANEL_TITLE_H + VALUE_BAND + PLOT_H + CATEGORY_BAND;
const BAR_GAP: i32 = 3;
const GROUP_GAP: i32 = 28;
const MIN_BAR_W: i32 = 24;
const MAX_BAR_W: i32 = 96;
const MIN_PANEL_W: i32 = 300;
const MIN_CONTENT_W: i32 = 720;
const LEGEND_SWATCH: i32 = 14;
const LEGEND_LINE_H: i32 = 26;
/// Legend names are cut to this many pixels.
const LEGEND_NAME_W: i32 = 360;
/// Category labels may widen a group up to this many pixels before they are cut.
const CATEGORY_W: i32 = 220;
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

fn style(px: u32, colour: Rgb) -> TextStyle<'static> {
    (FONT, px).into_font().color(&rgb(colour))
}

fn bold(px: u32, colour: Rgb) -> TextStyle<'static> {
    (FONT, px, FontStyle::Bold).into_font().color(&rgb(colour))
}

/// Measures text with the fonts plotters draws with.
struct Measure;

impl Measure {
    /// Width in pixels of `s` in `style` (0 for text the font cannot lay out).
    fn width(s: &str, style: &TextStyle) -> i32 {
        if s.is_empty() {
            return 0;
        }
        style
            .font
            .box_size(s)
            .map_or(0, |(w, _)| w.min(i32::MAX as u32) as i32)
    }

    /// `s`, or a prefix of it ending in "…", no wider than `max_px`.
    fn fit(s: &str, max_px: i32, style: &TextStyle) -> String {
        if Self::width(s, style) <= max_px {
            return s.to_string();
        }
        let chars: Vec<char> = s.chars().collect();
        // The longest prefix that fits with its ellipsis, by bisection (width grows with length).
        let (mut lo, mut hi) = (0usize, chars.len());
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            let candidate: String = chars[..mid].iter().collect::<String>() + "…";
            if Self::width(&candidate, style) <= max_px {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        if lo == 0 {
            return if Self::width("…", style) <= max_px {
                "…".to_string()
            } else {
                String::new()
            };
        }
        let head: String = chars[..lo].iter().collect();
        head.trim_end().to_string() + "…"
    }

    /// `s` broken into at most `max_lines` lines no wider than `max_px`; the last line is cut.
    fn wrap(s: &str, max_px: i32, style: &TextStyle, max_lines: usize) -> Vec<String> {
        let mut lines: Vec<String> = Vec::new();
        let mut line = String::new();
        for word in s.split_whitespace() {
            let candidate = if line.is_empty() {
                word.to_string()
            } else {
                format!("{line} {word}")
            };
            if !line.is_empty() && Self::width(&candidate, style) > max_px {
                lines.push(std::mem::replace(&mut line, word.to_string()));
            } else {
                line = candidate;
            }
            if lines.len() >= max_lines {
                break;
            }
        }
        if !line.is_empty() && lines.len() < max_lines {
            lines.push(line);
        }
        let max_lines = max_lines.max(1);
        if lines.len() == max_lines {
            // Whatever did not fit goes on the last line, to be cut there.
            let used: usize = lines[..max_lines - 1]
                .iter()
                .map(|l| l.split_whitespace().count())
                .sum();
            let rest: Vec<&str> = s.split_whitespace().skip(used).collect();
            lines[max_lines - 1] = rest.join(" ");
        }
        lines.iter().map(|l| Self::fit(l, max_px, style)).collect()
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
// Layout

/// A panel reduced to what is drawn: cleaned values, colours, axis and natural width.
struct PanelPlan {
    title: String,
    categories: Vec<String>,
    /// (colour, one cleaned value per category)
    bars: Vec<(Rgb, Vec<Option<f64>>)>,
    step: f64,
    intervals: usize,
    axis_w: i32,
    bar_w: i32,
    natural_w: i32,
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
        let text = style(TEXT_PX, INK);
        let axis_w = (0..=intervals)
            .map(|i| Measure::width(&format_tick(step * i as f64), &text))
            .max()
            .unwrap_or(0)
            + 16;
        let widest_label = bars
            .iter()
            .flat_map(|(_, v)| v.iter())
            .map(|v| Measure::width(&v.map_or_else(|| "n/a".to_string(), format_value), &text))
            .max()
            .unwrap_or(0);
        let bar_w = (widest_label + 8).clamp(MIN_BAR_W, MAX_BAR_W);
        let n = bars.len() as i32;
        let group_w = n * bar_w + (n - 1).max(0) * BAR_GAP;
        let widest_category = categories
            .iter()
            .map(|c| Measure::width(c, &text).min(CATEGORY_W))
            .max()
            .unwrap_or(0);
        let slot_w = group_w.max(widest_category) + GROUP_GAP;
        let plot_w = if bars.is_empty() {
            0
        } else {
            slot_w.saturating_mul(categories.len() as i32)
        };
        let natural_w = (axis_w.saturating_add(plot_w) + 8)
            .max(Measure::width(&title, &bold(TEXT_PX, INK)).min(480))
            .clamp(MIN_PANEL_W, MAX_WIDTH);
        PanelPlan {
            title,
            categories,
            bars,
            step,
            intervals,
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
    w: i32,
    h: i32,
    title: String,
    subtitle: Vec<String>,
    /// (colour, name, x, y)
    legend: Vec<(Rgb, String, i32, i32)>,
    /// (plan, x, y, width)
    panels: Vec<(PanelPlan, i32, i32, i32)>,
    /// Where "no data" goes when the chart has no panel.
    empty_note_y: Option<i32>,
}

impl Layout {
    fn new(chart: &Chart) -> anyhow::Result<Layout> {
        let shown = &chart.panels[..chart.panels.len().min(MAX_PANELS)];
        // Colours follow series names, so one system keeps its colour in every panel.
        let mut names: Vec<&str> = Vec::new();
        for s in shown.iter().flat_map(|p| p.series.iter().take(MAX_SERIES)) {
            if !names.contains(&s.name.as_str()) {
                names.push(&s.name);
            }
        }
        let plans: Vec<PanelPlan> = shown.iter().map(|p| PanelPlan::new(p, &names)).collect();
        let text = style(TEXT_PX, INK);
        let legend_names: Vec<String> = names
            .iter()
            .map(|n| Measure::fit(n, LEGEND_NAME_W, &text))
            .collect();
        let legend_entry_w = |n: &str| LEGEND_SWATCH + 8 + Measure::width(n, &text) + 28;
        let legend_w: i32 = legend_names.iter().map(|n| legend_entry_w(n)).sum();

        let widest_panel = plans.iter().map(|p| p.natural_w).max().unwrap_or(0);
        let content_w = widest_panel
            .max(legend_w.min(1600))
            .clamp(MIN_CONTENT_W, MAX_WIDTH - 2 * MARGIN);
        let w = content_w + 2 * MARGIN;

        let mut y = MARGIN;
        let title = Measure::fit(&chart.title, content_w, &bold(TITLE_PX, INK));
        if !title.is_empty() {
            y += TITLE_PX as i32 + 10;
        }
        let subtitle = Measure::wrap(&chart.subtitle, content_w, &style(TEXT_PX, SOFT_INK), 3);
        y += subtitle.len() as i32 * (TEXT_PX as i32 + 6);
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
            y += TEXT_PX as i32 + MARGIN;
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
        let h = (y + MARGIN).max(2 * MARGIN);
        Ok(Layout {
            w,
            h,
            title,
            subtitle,
            legend,
            panels,
            empty_note_y,
        })
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), DrawError> {
        root.fill(&rgb(BACKGROUND)).map_err(err)?;
        let mut y = MARGIN;
        if !self.title.is_empty() {
            text(root, &self.title, (MARGIN, y), bold(TITLE_PX, INK))?;
            y += TITLE_PX as i32 + 10;
        }
        for line in &self.subtitle {
            text(root, line, (MARGIN, y), style(TEXT_PX, SOFT_INK))?;
            y += TEXT_PX as i32 + 6;
        }
        for (colour, name, x, y) in &self.legend {
            fill(root, *x, *y + 2, LEGEND_SWATCH, LEGEND_SWATCH, *colour)?;
            text(root, name, (x + LEGEND_SWATCH + 8, *y), style(TEXT_PX, INK))?;
        }
        if let Some(y) = self.empty_note_y {
            text(root, "no data", (MARGIN, y), style(TEXT_PX, FAINT_INK))?;
        }
        for (plan, x, y, w) in &self.panels {
            draw_panel(root, plan, *x, *y, *w)?;
        }
        Ok(())
    }
}

/// A drawing failure, as text (plotters' error types carry the backend's type).
struct DrawError(String);

impl std::fmt::Display for DrawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(e: impl std::fmt::Display) -> DrawError {
    DrawError(e.to_string())
}

/// `s` with its top-left corner at `at`.
fn text<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    s: &str,
    at: (i32, i32),
    style: TextStyle,
) -> Result<(), DrawError> {
    if s.is_empty() {
        return Ok(());
    }
    root.draw(&Text::new(s.to_string(), at, style)).map_err(err)
}

/// A `w` × `h` rectangle of `colour` with its top-left corner at (`x`, `y`).
fn fill<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    x: i32,
    y: i32,
    w: i32,
    h: i32,
    colour: Rgb,
) -> Result<(), DrawError> {
    if w <= 0 || h <= 0 {
        return Ok(());
    }
    // The bitmap backend fills opaque rectangles up to, not including, the second corner.
    let r = Rectangle::new(
        [(x, y), (x.saturating_add(w), y.saturating_add(h))],
        rgb(colour).filled(),
    );
    root.draw(&r).map_err(err)
}

fn draw_panel<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    plan: &PanelPlan,
    x: i32,
    y: i32,
    w: i32,
) -> Result<(), DrawError> {
    let title_style = bold(TEXT_PX, INK);
    text(
        root,
        &Measure::fit(&plan.title, w, &title_style),
        (x, y),
        title_style,
    )?;
    let top = y + PANEL_TITLE_H + VALUE_BAND;
    let bottom = top + PLOT_H;
    if plan.is_empty() {
        fill(root, x, bottom, w, 1, AXIS)?;
        text(
            root,
            "no data",
            (x + 8, top + PLOT_H / 2),
            style(TEXT_PX, FAINT_INK),
        )?;
        return Ok(());
    }
    let ncat = plan.categories.len() as i32;
    let axis_top = plan.step * plan.intervals.max(1) as f64;
    // The plot: y from 0 to the axis top over exactly PLOT_H + 1 rows (0 on the bottom row).
    let area = root.clone().shrink(
        (x, top),
        ((w - 8).max(plan.axis_w + 1) as u32, (PLOT_H + 1) as u32),
    );
    let mut chart = ChartBuilder::on(&area)
        .y_label_area_size(plan.axis_w)
        .build_cartesian_2d(0f64..f64::from(ncat), 0f64..axis_top)
        .map_err(err)?;
    let tick = |v: &f64| format_tick(*v);
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_labels(plan.intervals + 1)
        .y_label_formatter(&tick)
        .y_label_style(style(TEXT_PX, SOFT_INK))
        .bold_line_style(rgb(GRID))
        .light_line_style(TRANSPARENT)
        .axis_style(rgb(AXIS))
        .draw()
        .map_err(err)?;
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (left, plot_w) = (xs.start, (xs.end - xs.start).max(1));
    let bottom = ys.end - 1;
    let plot_h = (ys.end - ys.start - 1).max(1);

    let nser = plan.bars.len() as i32;
    let value_style = style(TEXT_PX, INK);
    for (ci, category) in plan.categories.iter().enumerate() {
        let ci = ci as i32;
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
            let bx = group_x + si as i32 * (bar_w + gap);
            let value = values.get(ci as usize).copied().flatten();
            let (label, label_colour, bar_h) = match value {
                Some(v) => {
                    let mut h = (v / axis_top * f64::from(plot_h)).round() as i32;
                    if v > 0.0 {
                        // A measured non-zero value stays visible however small.
                        h = h.max(1);
                    }
                    (format_value(v), INK, h.clamp(0, plot_h))
                }
                None => ("n/a".to_string(), FAINT_INK, 0),
            };
            fill(root, bx, bottom - bar_h, bar_w, bar_h, *colour)?;
            // The label may spill into the gap beside the bar, never further.
            for size in [TEXT_PX, SMALL_PX] {
                let s = style(size, label_colour);
                if Measure::width(&label, &s) <= bar_w + gap {
                    let s = s.pos(Pos::new(HPos::Center, VPos::Bottom));
                    text(root, &label, (bx + bar_w / 2, bottom - bar_h - 3), s)?;
                    break;
                }
            }
        }
        let label = Measure::fit(category, slot_w - 8, &value_style);
        let s = value_style.pos(Pos::new(HPos::Center, VPos::Top));
        text(root, &label, (slot_x + slot_w / 2, bottom + 8), s)?;
    }
    Ok(())
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

    const NAMES: [&str; 5] = [
        "veth",
        "hypha",
        "hypha --no-sessions",
        "hypha --no-offload",
        "other",
    ];

    /// The chart the bench draws, with plausible numbers and one system not measured on UDP.
    fn representative() -> Chart {
        let four = |vals: [[Option<f64>; 4]; 5]| -> Vec<Series> {
            NAMES.iter().zip(vals).map(|(n, v)| series(n, &v)).collect()
        };
        let two = |vals: [[Option<f64>; 2]; 5]| -> Vec<Series> {
            NAMES.iter().zip(vals).map(|(n, v)| series(n, &v)).collect()
        };
        let one = |vals: [f64; 5]| -> Vec<Series> {
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
                        [Some(4.83), Some(7.2), Some(3.9), Some(1.21)],
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
                        [Some(0.091), Some(2.1)],
                        [Some(0.088), Some(3.2)],
                        [Some(0.12), Some(4.8)],
                    ]),
                ),
                panel(
                    "CPU",
                    "s/Gbit",
                    &["tcp 1 stream"],
                    one([0.021, 0.166, 0.31, 0.52, 0.71]),
                ),
                panel("RSS", "MB", &["peak"], one([0.0, 18.4, 18.1, 17.9, 42.0])),
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
        let (w, h, px) = render(&representative()).unwrap();
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
        // Background dominates and text is drawn (anti-aliased: darker than the grid, not only
        // the exact ink colour).
        assert!(count_colour(&px, BACKGROUND) > (w * h / 2) as usize);
        let dark = px
            .chunks_exact(3)
            .filter(|p| p.iter().all(|&c| c < 0x60))
            .count();
        assert!(dark > 1000, "{dark} dark pixels");
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
        let (w, h, px) = render(&chart).unwrap();
        let small = tallest_run(&px, w, h, series_colour(0));
        let big = tallest_run(&px, w, h, series_colour(1));
        assert!(big > small, "big {big} vs small {small}");
        // The axis tops out at 3, so the big bar fills the plot and the small one a third of it.
        assert_eq!(big, PLOT_H as u32);
        assert!((small as i32 - PLOT_H / 3).abs() <= 1, "small {small}");
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
        let (w, h, px) = render(&chart).unwrap();
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
        let (w, h, px) = render(&chart).unwrap();
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
    fn rendering_is_deterministic() {
        assert_eq!(
            render(&representative()).unwrap(),
            render(&representative()).unwrap()
        );
    }

    #[test]
    fn write_png_reports_unwritable_path() {
        let path = std::env::temp_dir()
            .join(format!("hypha-chart-missing-{}", std::process::id()))
            .join("x.png");
        assert!(write_png(&representative(), &path).is_err());
    }

    fn assert_renders(chart: &Chart) {
        let (w, h, px) = render(chart).unwrap();
        assert!(w > 0 && h > 0);
        assert!(w as i32 <= MAX_WIDTH);
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
        let (w, h, px) = render(&all_none).unwrap();
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
    fn text_uses_the_embedded_font() {
        register_fonts().unwrap();
        let s = style(TEXT_PX, INK);
        // DejaVu Sans is proportional: "i" is narrower than "W", and widths grow with text.
        assert!(Measure::width("iiii", &s) < Measure::width("WWWW", &s));
        assert!(Measure::width("tcp 1 stream", &s) > Measure::width("tcp", &s));
        assert!(Measure::width("W", &bold(TEXT_PX, INK)) >= Measure::width("W", &s));
        // A title is drawn: dark pixels in the header only when there is one.
        let titled = |title: &str| Chart {
            title: title.to_string(),
            subtitle: String::new(),
            panels: vec![],
        };
        let dark = |c: &Chart| {
            let (_, _, px) = render(c).unwrap();
            px.chunks_exact(3)
                .filter(|p| p.iter().all(|&c| c < 0x60))
                .count()
        };
        assert!(dark(&titled("hypha bench")) > dark(&titled("")) + 100);
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
        register_fonts().unwrap();
        let s = style(TEXT_PX, INK);
        assert_eq!(Measure::fit("short", 1000, &s), "short");
        let cut = Measure::fit("tcp 4 streams", Measure::width("tcp 4", &s) + 12, &s);
        assert!(cut.ends_with('…') && cut.starts_with("tcp"), "{cut}");
        assert!(Measure::width(&cut, &s) <= Measure::width("tcp 4", &s) + 12);
        assert_eq!(Measure::fit("abc", 0, &s), "");
        assert!(Measure::width(&Measure::fit(&"w".repeat(500), 300, &s), &s) <= 300);
        let lines = Measure::wrap(&"word ".repeat(200), 300, &s, 3);
        assert_eq!(lines.len(), 3);
        assert!(lines[2].ends_with('…'));
        assert!(lines.iter().all(|l| Measure::width(l, &s) <= 300));
        assert_eq!(Measure::wrap("two words", 1000, &s, 3), ["two words"]);
    }
}
