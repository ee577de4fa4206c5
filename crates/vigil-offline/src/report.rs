//! The pictures of `vigil evaluate --report DIR`: the ROC curve, the
//! precision-recall curve and the score histograms of frauds and genuine
//! events, as SVG files, and an HTML page that shows them beside the figures.

use std::path::{Path, PathBuf};

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::evaluate::Evaluation;
use crate::OfflineError;

const SIZE: (u32, u32) = (720, 540);
const BINS: usize = 40;
const FRAUD: RGBColor = RGBColor(200, 40, 40);
const GENUINE: RGBColor = RGBColor(40, 90, 200);

/// Writes `roc.svg`, `pr.svg`, `scores.svg` and `index.html` into `dir`
/// (created if needed) and returns their paths.
pub fn write(eval: &Evaluation, dir: &Path) -> Result<Vec<PathBuf>, OfflineError> {
    if eval.roc.is_empty() {
        return Err(OfflineError::Report("no curves to draw: the history needs both frauds and genuine events".into()));
    }
    std::fs::create_dir_all(dir).map_err(|e| OfflineError::Io(dir.display().to_string(), e))?;
    let paths: Vec<PathBuf> = ["roc.svg", "pr.svg", "scores.svg", "index.html"].iter().map(|f| dir.join(f)).collect();
    let draw_err = |path: &Path| {
        let place = path.display().to_string();
        move |e: Box<dyn std::error::Error>| OfflineError::Report(format!("{place}: drawing failed: {e}"))
    };
    roc(eval, &paths[0]).map_err(draw_err(&paths[0]))?;
    pr(eval, &paths[1]).map_err(draw_err(&paths[1]))?;
    histograms(eval, &paths[2]).map_err(draw_err(&paths[2]))?;
    std::fs::write(&paths[3], html(eval)).map_err(|e| OfflineError::Io(paths[3].display().to_string(), e))?;
    Ok(paths)
}

fn caption(eval: &Evaluation, what: &str) -> String {
    let chosen = eval.selection.as_ref().map_or(String::new(), |p| format!(" where {p}"));
    format!("{what}: {} ({} events{chosen}, {} frauds)", eval.model_version, eval.events, eval.frauds)
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// One picture's frame: its title, axes and where the legend goes.
struct Frame<'a> {
    what: &'a str,
    x: std::ops::Range<f64>,
    y: std::ops::Range<f64>,
    x_desc: &'a str,
    y_desc: &'a str,
    legend: SeriesLabelPosition,
}

/// Draws a framed chart into `path`: `series` adds what the chart shows.
fn plot(eval: &Evaluation, path: &Path, frame: Frame<'_>, series: impl FnOnce(&mut Chart) -> DrawResult) -> DrawResult {
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption(eval, frame.what), ("sans-serif", 18))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(frame.x, frame.y)?;
    chart.configure_mesh().x_desc(frame.x_desc).y_desc(frame.y_desc).draw()?;
    series(&mut chart)?;
    chart
        .configure_series_labels()
        .position(frame.legend)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// A labelled line.
fn line(
    chart: &mut Chart,
    points: impl IntoIterator<Item = (f64, f64)>,
    style: ShapeStyle,
    label: String,
) -> DrawResult {
    chart
        .draw_series(LineSeries::new(points, style))?
        .label(label)
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    Ok(())
}

fn roc(eval: &Evaluation, path: &Path) -> DrawResult {
    let frame = Frame {
        what: "ROC",
        x: 0.0..1.0,
        y: 0.0..1.0,
        x_desc: "false-positive rate (share of genuine flagged)",
        y_desc: "recall (share of frauds flagged)",
        legend: SeriesLabelPosition::LowerRight,
    };
    plot(eval, path, frame, |chart| {
        line(chart, [(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.3).into(), "chance (AUC 0.5)".into())?;
        line(chart, eval.roc.iter().copied(), FRAUD.stroke_width(2), format!("model (AUC {:.4})", eval.auc_roc))?;
        if eval.threshold_at_1pct_fpr.is_finite() {
            chart
                .draw_series(std::iter::once(Circle::new((0.01, eval.recall_at_1pct_fpr), 4, BLACK.filled())))?
                .label(format!("recall {:.1}% at 1% false positives", eval.recall_at_1pct_fpr * 100.0))
                .legend(|(x, y)| Circle::new((x + 10, y), 4, BLACK.filled()));
        }
        Ok(())
    })
}

fn pr(eval: &Evaluation, path: &Path) -> DrawResult {
    let frame = Frame {
        what: "Precision-recall",
        x: 0.0..1.0,
        y: 0.0..1.02,
        x_desc: "recall (share of frauds flagged)",
        y_desc: "precision (share of flagged that are fraud)",
        // The curve runs from the top left down to the right: the lower left
        // is where it never goes.
        legend: SeriesLabelPosition::LowerLeft,
    };
    let base = eval.frauds as f64 / eval.events.max(1) as f64;
    plot(eval, path, frame, |chart| {
        line(
            chart,
            [(0.0, base), (1.0, base)],
            BLACK.mix(0.3).into(),
            format!("chance (fraud rate {:.2}%)", base * 100.0),
        )?;
        let label = format!("model (average precision {:.4})", eval.average_precision);
        line(chart, eval.pr.iter().copied(), FRAUD.stroke_width(2), label)
    })
}

/// Share of each class per score bin: classes this unbalanced only compare
/// when each is scaled to its own total.
fn bins(eval: &Evaluation) -> (f64, f64, Vec<f64>, Vec<f64>) {
    let finite = || eval.scores.iter().copied().filter(|s| s.is_finite());
    let lo = finite().fold(f64::INFINITY, f64::min);
    let hi = finite().fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo < hi { (lo, hi) } else { (lo - 0.5, lo + 0.5) };
    let width = (hi - lo) / BINS as f64;
    let (mut fraud, mut genuine) = (vec![0.0; BINS], vec![0.0; BINS]);
    for (s, f) in eval.scores.iter().zip(&eval.labels) {
        if !s.is_finite() {
            continue;
        }
        let b = (((s - lo) / width) as usize).min(BINS - 1);
        if *f {
            fraud[b] += 1.0;
        } else {
            genuine[b] += 1.0;
        }
    }
    for v in [&mut fraud, &mut genuine] {
        let total: f64 = v.iter().sum();
        v.iter_mut().for_each(|x| *x /= total.max(1.0));
    }
    (lo, hi, fraud, genuine)
}

fn histograms(eval: &Evaluation, path: &Path) -> DrawResult {
    let (lo, hi, fraud, genuine) = bins(eval);
    let width = (hi - lo) / BINS as f64;
    let top = fraud.iter().chain(&genuine).fold(0.0f64, |a, b| a.max(*b)) * 1.08;
    let frame = Frame {
        what: "Scores",
        // The whole score range, so that 0 and 1 are on the axis.
        x: lo.min(0.0)..hi.max(1.0),
        y: 0.0..top.max(0.01),
        x_desc: "model score",
        y_desc: "share of the class in the bin",
        legend: SeriesLabelPosition::UpperMiddle,
    };
    plot(eval, path, frame, |chart| {
        for (shares, color, name, count) in
            [(&genuine, GENUINE, "genuine", eval.events - eval.frauds), (&fraud, FRAUD, "fraud", eval.frauds)]
        {
            chart
                .draw_series(shares.iter().enumerate().map(|(i, share)| {
                    let x0 = lo + i as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, *share)], color.mix(0.45).filled())
                }))?
                .label(format!("{name} ({count})"))
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 14, y + 5)], color.mix(0.45).filled()));
        }
        Ok(())
    })
}

fn html(eval: &Evaluation) -> String {
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>vigil evaluate: {model}</title>\n\
         <style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f6f6f6;padding:1em}} \
         img{{max-width:48%;margin:0.5%}}</style></head><body>\n\
         <h1>vigil evaluate: {model}</h1>\n<pre>{table}</pre>\n\
         <img src=\"roc.svg\" alt=\"ROC curve\"><img src=\"pr.svg\" alt=\"precision-recall curve\">\n\
         <img src=\"scores.svg\" alt=\"score histograms\">\n</body></html>\n",
        model = escape(&eval.model_version),
        table = escape(&eval.to_table()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_pictures_and_refuses_a_one_class_history() {
        let mut eval = crate::evaluate::Evaluation::from_scores(
            "m@1",
            (0..1000).map(|i| f64::from(i) / 1000.0).collect(),
            (0..1000).map(|i| i % 50 == 0 || i > 980).collect(),
        );
        let dir = std::env::temp_dir().join(format!("vigil-report-{}", std::process::id()));
        let written = write(&eval, &dir).unwrap();
        assert_eq!(written.len(), 4);
        let roc = std::fs::read_to_string(dir.join("roc.svg")).unwrap();
        assert!(roc.starts_with("<svg") && roc.contains("<polyline") && roc.contains("AUC"), "{roc}");
        let scores = std::fs::read_to_string(dir.join("scores.svg")).unwrap();
        assert!(scores.contains("fraud (") && scores.contains("genuine ("), "{scores}");
        let ticks: Vec<&str> = scores.lines().map(str::trim).collect();
        assert!(ticks.contains(&"0.0") && ticks.contains(&"1.0"), "0 and 1 are on the score axis: {scores}");
        eval = crate::evaluate::Evaluation::from_scores("m@1", vec![0.1, 0.2], vec![false, false]);
        assert!(matches!(write(&eval, &dir), Err(OfflineError::Report(_))));
        std::fs::remove_dir_all(&dir).ok();
    }
}
