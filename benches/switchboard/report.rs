//! Collecting per-round values, and printing them as a table and as JSON.

use std::fmt::Write as _;
use std::path::Path;

/// One measured quantity of one server, a value per round (`None` for a
/// round that failed).
#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) scenario: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) unit: &'static str,
    /// A scenario's parameter, such as the number of idle connections.
    pub(crate) param: Option<u64>,
    pub(crate) server: &'static str,
    pub(crate) values: Vec<Option<f64>>,
}

/// A ratio to print: `numerator / denominator` of the same quantity,
/// computed round by round (rounds alternate, so each pair ran side by side).
#[derive(Debug, Clone)]
pub(crate) struct Ratio {
    pub(crate) scenario: &'static str,
    pub(crate) metric: &'static str,
    pub(crate) param: Option<u64>,
    pub(crate) numerator: &'static str,
    pub(crate) denominator: &'static str,
    pub(crate) kind: Compare,
}

/// How two servers' values are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compare {
    /// `numerator / denominator`: for rates, latencies, memory, instructions.
    Ratio,
    /// `numerator - denominator`: for counts whose target is "at most N more".
    Difference,
}

/// Everything the run measured.
#[derive(Debug, Default)]
pub(crate) struct Results {
    pub(crate) rows: Vec<Row>,
    pub(crate) ratios: Vec<Ratio>,
    /// Failed rounds and skipped scenarios, in words.
    pub(crate) notes: Vec<String>,
}

/// median, min, max of the values present.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) median: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) n: usize,
}

impl Results {
    /// Records `value` for round `round` of a row, creating the row.
    #[allow(clippy::too_many_arguments)] // one call site per scenario; a struct would only rename them
    pub(crate) fn put(
        &mut self,
        scenario: &'static str,
        metric: &'static str,
        unit: &'static str,
        param: Option<u64>,
        server: &'static str,
        round: usize,
        value: Option<f64>,
    ) {
        let row = match self.rows.iter_mut().position(|r| {
            r.scenario == scenario && r.metric == metric && r.param == param && r.server == server
        }) {
            Some(i) => &mut self.rows[i],
            None => {
                self.rows.push(Row {
                    scenario,
                    metric,
                    unit,
                    param,
                    server,
                    values: Vec::new(),
                });
                self.rows.last_mut().expect("just pushed")
            }
        };
        if row.values.len() <= round {
            row.values.resize(round + 1, None);
        }
        row.values[round] = value.filter(|v| v.is_finite());
    }

    pub(crate) fn ratio(
        &mut self,
        scenario: &'static str,
        metric: &'static str,
        param: Option<u64>,
        numerator: &'static str,
        denominator: &'static str,
        kind: Compare,
    ) {
        self.ratios.push(Ratio {
            scenario,
            metric,
            param,
            numerator,
            denominator,
            kind,
        });
    }

    pub(crate) fn note(&mut self, note: String) {
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    fn find(&self, scenario: &str, metric: &str, param: Option<u64>, server: &str) -> Option<&Row> {
        self.rows.iter().find(|r| {
            r.scenario == scenario && r.metric == metric && r.param == param && r.server == server
        })
    }

    /// The per-round ratios of `ratio`, over the rounds where both ran.
    fn ratio_values(&self, ratio: &Ratio) -> Vec<f64> {
        let (Some(num), Some(den)) = (
            self.find(ratio.scenario, ratio.metric, ratio.param, ratio.numerator),
            self.find(ratio.scenario, ratio.metric, ratio.param, ratio.denominator),
        ) else {
            return Vec::new();
        };
        num.values
            .iter()
            .zip(&den.values)
            .filter_map(|(n, d)| match (n, d, ratio.kind) {
                (Some(n), Some(d), Compare::Difference) => Some(n - d),
                // A ratio to (nearly) nothing says nothing.
                (Some(n), Some(d), Compare::Ratio) if d.abs() > 1e-3 => Some(n / d),
                _ => None,
            })
            .collect()
    }

    /// The table, as printed.
    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<22} {:<18} {:>12} {:>12} {:>12} {:>7}",
            "scenario", "metric", "server", "median", "min", "max", "rounds"
        );
        let _ = writeln!(out, "{}", "-".repeat(106));
        // Rows of one quantity together, in the order they first appeared.
        let mut groups: Vec<(&str, &str, Option<u64>)> = Vec::new();
        for row in &self.rows {
            let group = (row.scenario, row.metric, row.param);
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        for group in groups {
            for row in self
                .rows
                .iter()
                .filter(|r| (r.scenario, r.metric, r.param) == group)
            {
                self.row_line(&mut out, row);
            }
            self.ratio_lines(&mut out, group);
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\nnotes:");
            for note in &self.notes {
                let _ = writeln!(out, "  - {note}");
            }
        }
        out
    }

    fn row_line(&self, out: &mut String, row: &Row) {
        let metric = match row.param {
            Some(p) => format!("{} @{p}", row.metric),
            None => row.metric.to_owned(),
        };
        let metric = format!("{metric} ({})", row.unit);
        match summarize(&row.values) {
            Some(s) => {
                let _ = writeln!(
                    out,
                    "{:<16} {:<22} {:<18} {:>12} {:>12} {:>12} {:>7}",
                    row.scenario,
                    metric,
                    row.server,
                    num(s.median),
                    num(s.min),
                    num(s.max),
                    format!("{}/{}", s.n, row.values.len())
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "{:<16} {:<22} {:<18} {:>12}",
                    row.scenario, metric, row.server, "FAILED"
                );
            }
        }
    }

    fn ratio_lines(&self, out: &mut String, (scenario, metric, param): (&str, &str, Option<u64>)) {
        for ratio in self
            .ratios
            .iter()
            .filter(|r| r.scenario == scenario && r.metric == metric && r.param == param)
        {
            let label = match ratio.kind {
                Compare::Ratio => format!("  ratio {} / {}", ratio.numerator, ratio.denominator),
                Compare::Difference => {
                    format!("  diff  {} - {}", ratio.numerator, ratio.denominator)
                }
            };
            match summarize(
                &self
                    .ratio_values(ratio)
                    .into_iter()
                    .map(Some)
                    .collect::<Vec<_>>(),
            ) {
                Some(s) => {
                    let _ = writeln!(
                        out,
                        "{:<58} {:>12.3} {:>12.3} {:>12.3} {:>7}",
                        label, s.median, s.min, s.max, s.n
                    );
                }
                None => {
                    let _ = writeln!(out, "{label:<58} {:>12}", "n/a");
                }
            }
        }
    }

    /// The results as JSON, for `benches/chart.py` and other tools.
    pub(crate) fn json(&self, meta: &[(&str, String)]) -> String {
        let mut out = String::from("{\n  \"meta\": {");
        for (i, (k, v)) in meta.iter().enumerate() {
            let _ = write!(
                out,
                "{}\n    {}: {}",
                if i == 0 { "" } else { "," },
                quote(k),
                quote(v)
            );
        }
        out.push_str("\n  },\n  \"results\": [");
        for (i, row) in self.rows.iter().enumerate() {
            let s = summarize(&row.values);
            let _ = write!(
                out,
                "{}\n    {{\"scenario\": {}, \"metric\": {}, \"unit\": {}, \"param\": {}, \
                 \"server\": {}, \"values\": [{}], \"median\": {}, \"min\": {}, \"max\": {}}}",
                if i == 0 { "" } else { "," },
                quote(row.scenario),
                quote(row.metric),
                quote(row.unit),
                row.param.map_or("null".to_owned(), |p| p.to_string()),
                quote(row.server),
                row.values
                    .iter()
                    .map(|v| json_num(*v))
                    .collect::<Vec<_>>()
                    .join(", "),
                json_num(s.map(|s| s.median)),
                json_num(s.map(|s| s.min)),
                json_num(s.map(|s| s.max)),
            );
        }
        out.push_str("\n  ],\n  \"ratios\": [");
        for (i, ratio) in self.ratios.iter().enumerate() {
            let values = self.ratio_values(ratio);
            let s = summarize(&values.iter().copied().map(Some).collect::<Vec<_>>());
            let _ = write!(
                out,
                "{}\n    {{\"scenario\": {}, \"metric\": {}, \"param\": {}, \"numerator\": {}, \
                 \"denominator\": {}, \"kind\": {}, \"values\": [{}], \"median\": {}, \"min\": {}, \"max\": {}}}",
                if i == 0 { "" } else { "," },
                quote(ratio.scenario),
                quote(ratio.metric),
                ratio.param.map_or("null".to_owned(), |p| p.to_string()),
                quote(ratio.numerator),
                quote(ratio.denominator),
                quote(match ratio.kind {
                    Compare::Ratio => "ratio",
                    Compare::Difference => "difference",
                }),
                values
                    .iter()
                    .map(|v| json_num(Some(*v)))
                    .collect::<Vec<_>>()
                    .join(", "),
                json_num(s.map(|s| s.median)),
                json_num(s.map(|s| s.min)),
                json_num(s.map(|s| s.max)),
            );
        }
        out.push_str("\n  ],\n  \"notes\": [");
        let notes: Vec<String> = self.notes.iter().map(|n| quote(n)).collect();
        out.push_str(&notes.join(", "));
        out.push_str("]\n}\n");
        out
    }

    /// Writes the JSON next to the build's other outputs.
    pub(crate) fn write_json(&self, path: &Path, meta: &[(&str, String)]) -> Result<(), String> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        }
        std::fs::write(path, self.json(meta)).map_err(|e| format!("write {}: {e}", path.display()))
    }
}

/// The median (mean of the middle two for an even count), min and max.
pub(crate) fn summarize(values: &[Option<f64>]) -> Option<Summary> {
    let mut v: Vec<f64> = values.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Summary {
        median,
        min: v[0],
        max: v[n - 1],
        n,
    })
}

/// A number for the table: integers for large values, 3 significant
/// decimals for small ones.
fn num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn json_num(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v}"),
        _ => "null".to_owned(),
    }
}

fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
