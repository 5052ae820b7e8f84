//! A dependency-free SVG of the training curves: loss per step and validation Recall@10 /
//! NDCG@10, written into the run directory at the end of training.

/// One named series of (x, y) points.
pub struct Series<'a> {
    pub name: &'a str,
    pub color: &'a str,
    pub points: Vec<(f64, f64)>,
}

const W: f64 = 640.0;
const H: f64 = 260.0;
const PAD: f64 = 48.0;

fn panel(out: &mut String, top: f64, title: &str, series: &[Series]) {
    let pts: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .collect();
    let finite = |v: &f64| v.is_finite();
    let xs: Vec<f64> = pts.iter().map(|p| p.0).filter(finite).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).filter(finite).collect();
    let (x0, x1) = (
        xs.iter().copied().fold(f64::INFINITY, f64::min),
        xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    let (y0, y1) = (
        ys.iter().copied().fold(f64::INFINITY, f64::min).min(0.0),
        ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
    );
    out.push_str(&format!(
        "<text x=\"{PAD}\" y=\"{:.0}\" font-size=\"13\" font-family=\"sans-serif\">{title}</text>\n",
        top + 16.0
    ));
    let (left, right, y_top, y_bot) = (PAD, W - 16.0, top + 28.0, top + H - 28.0);
    out.push_str(&format!(
        "<rect x=\"{left}\" y=\"{y_top}\" width=\"{:.0}\" height=\"{:.0}\" fill=\"none\" stroke=\"#999\"/>\n",
        right - left,
        y_bot - y_top
    ));
    if xs.is_empty() || ys.is_empty() {
        return;
    }
    let sx = |x: f64| left + (x - x0) / (x1 - x0).max(1e-12) * (right - left);
    let sy = |y: f64| y_bot - (y - y0) / (y1 - y0).max(1e-12) * (y_bot - y_top);
    for (v, y) in [(y0, y_bot), (y1, y_top)] {
        out.push_str(&format!(
            "<text x=\"4\" y=\"{:.0}\" font-size=\"10\" font-family=\"sans-serif\">{v:.4}</text>\n",
            y + 4.0
        ));
    }
    for (v, x) in [(x0, left), (x1, right - 30.0)] {
        out.push_str(&format!(
            "<text x=\"{x:.0}\" y=\"{:.0}\" font-size=\"10\" font-family=\"sans-serif\">step {v:.0}</text>\n",
            y_bot + 14.0
        ));
    }
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        out.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{}\" stroke-width=\"1.5\" points=\"{}\"/>\n",
            s.color,
            path.join(" ")
        ));
        out.push_str(&format!(
            "<text x=\"{:.0}\" y=\"{:.0}\" font-size=\"11\" fill=\"{}\" font-family=\"sans-serif\">{}</text>\n",
            right - 150.0,
            y_top + 14.0 + 13.0 * i as f64,
            s.color,
            s.name
        ));
    }
}

/// An SVG with one panel per `(title, series)` group, stacked.
pub fn svg(panels: &[(&str, Vec<Series>)]) -> String {
    let height = H * panels.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" viewBox=\"0 0 {W} {height}\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (i, (title, series)) in panels.iter().enumerate() {
        panel(&mut out, H * i as f64, title, series);
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_polyline_per_series() {
        let s = svg(&[(
            "loss",
            vec![Series {
                name: "ce",
                color: "#c33",
                points: vec![(1.0, 3.0), (2.0, 2.0), (3.0, f64::NAN)],
            }],
        )]);
        assert!(s.starts_with("<svg"));
        assert_eq!(s.matches("<polyline").count(), 1);
        assert!(s.contains("points=\"48.0,"));
        assert!(!s.contains("NaN"));
    }
}
