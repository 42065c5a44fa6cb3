//! The files of a `--timeline` run, written by the parent next to the report: the samples and
//! the compaction passes as CSV (the first sample row is the state at the start of the
//! measured phase, with no operations), and an SVG of throughput, disk footprint and RSS over time
//! (three panels on one time axis; compaction passes shaded). File names say what ran, e.g.
//! `timeline-rskv-A-uniform-2t-8Mkeys-100B-mem512MiB-budget3GiB-run0.svg`.
//!
//! A file that cannot be written or drawn leaves the run as it was and says why
//! (`TimelineResult::file_error`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context};
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::results::{Pass, RunResult, Sample, TimelineResult};
use crate::sysinfo::human_bytes;

const MIB: f64 = (1u64 << 20) as f64;

/// Writes `r`'s timeline files into `dir` and notes them (or the failure) in `r.timeline`.
/// Once both CSV files are written, the samples and passes leave the result, so its JSON line
/// stays short.
pub fn write_files(r: &mut RunResult, dir: &Path) {
    let stem = stem(r);
    let title = title(r);
    let Some(t) = r.timeline.as_mut() else {
        return;
    };
    let mut errors = Vec::new();
    if let Err(e) = std::fs::create_dir_all(dir) {
        errors.push(format!("creating {}: {e}", dir.display()));
    }
    let csv = dir.join(format!("{stem}.csv"));
    let passes_csv = dir.join(format!("{stem}-passes.csv"));
    let svg = dir.join(format!("{stem}.svg"));
    let mut written = 0;
    for (path, text, slot) in [
        (&csv, samples_csv(&t.samples), &mut t.csv),
        (&passes_csv, passes_csv_text(&t.passes), &mut t.passes_csv),
    ] {
        match std::fs::write(path, text) {
            Ok(()) => {
                *slot = Some(path.display().to_string());
                written += 1;
            }
            Err(e) => errors.push(format!("writing {}: {e}", path.display())),
        }
    }
    // plotters panics on some degenerate inputs; a plot is never worth a failed run.
    let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| draw(&svg, &title, t)))
        .unwrap_or_else(|_| Err(anyhow!("plotters panicked")));
    match drawn {
        Ok(()) => t.svg = Some(svg.display().to_string()),
        Err(e) => errors.push(format!("drawing {}: {e:#}", svg.display())),
    }
    if written == 2 {
        t.samples = Vec::new();
        t.passes = Vec::new();
    }
    if !errors.is_empty() {
        t.file_error = Some(errors.join("; "));
    }
}

/// `8000000` -> `8M`, `200000` -> `200k`.
fn count(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n.is_multiple_of(1_000) => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

/// `536870912` -> `512MiB`, `3221225472` -> `3GiB`.
fn size(b: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if b >= 1 << shift && b.is_multiple_of(1 << shift) {
            return format!("{}{unit}", b >> shift);
        }
    }
    if b >= 1 << 20 {
        format!("{:.0}MiB", b as f64 / MIB)
    } else {
        format!("{b}B")
    }
}

/// The files' common name: what ran.
fn stem(r: &RunResult) -> String {
    let raw = format!(
        "timeline-{}-{}-{}-{}t-{}keys-{}B-{}-{}-run{}",
        r.store,
        r.workload,
        r.distribution,
        r.threads,
        count(r.keys),
        r.value_size,
        if r.memory_budget_explicit {
            format!("mem{}", size(r.memory_budget))
        } else {
            "inmem".into()
        },
        match r.log_budget {
            Some(b) => format!("budget{}", size(b)),
            None if r.store == "rskv" => "nocompaction".into(),
            None => "own-compaction".into(),
        },
        r.index
    );
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn title(r: &RunResult) -> String {
    format!(
        "{} | workload {} {} | {} thread{} | {} keys, {} B values | {} | {}",
        r.store,
        r.workload,
        r.distribution,
        r.threads,
        if r.threads == 1 { "" } else { "s" },
        count(r.keys),
        r.value_size,
        if r.memory_budget_explicit {
            format!("memory {}", human_bytes(r.memory_budget))
        } else {
            "in memory".into()
        },
        match r.log_budget {
            Some(b) => format!("log budget {}", human_bytes(b)),
            None => "no log budget".into(),
        }
    )
}

fn samples_csv(samples: &[Sample]) -> String {
    let mut s = String::from(
        "t_secs,interval_secs,ops,mops,compacting_secs,footprint_bytes,log_bytes,disk_bytes,dir_bytes,rss_bytes,passes,scanned_bytes,copied,bytes_freed,wasted_passes,store_written_bytes,store_read_bytes\n",
    );
    for x in samples {
        let _ = write!(
            s,
            "{:.3},{:.3},{},{:.6},{:.3},{},",
            x.t_secs,
            x.secs,
            x.ops,
            x.mops(),
            x.compacting_secs,
            x.footprint()
        );
        let log = x.log.map_or_else(
            || ",,".to_string(),
            |l| format!("{},{},", l.log_bytes, l.disk_bytes),
        );
        s.push_str(&log);
        let _ = write!(s, "{},{}", x.dir_bytes, x.rss);
        match x.log {
            Some(l) => {
                let _ = writeln!(
                    s,
                    ",{},{},{},{},{},{},{}",
                    l.passes,
                    l.scanned_bytes,
                    l.copied,
                    l.bytes_freed,
                    l.wasted_passes,
                    l.bytes_written,
                    l.bytes_read
                );
            }
            None => s.push_str(",,,,,,,\n"),
        }
    }
    s
}

fn passes_csv_text(passes: &[Pass]) -> String {
    let mut s = String::from(
        "start_secs,secs,done,scanned_bytes,copied,superseded,tombstones,freed_bytes,scan_mb_s\n",
    );
    for p in passes {
        let _ = writeln!(
            s,
            "{:.3},{:.3},{},{},{},{},{},{},{:.1}",
            p.start_secs,
            p.secs,
            p.done,
            p.scanned_bytes,
            p.copied,
            p.superseded,
            p.tombstones,
            p.freed_bytes,
            p.scanned_bytes as f64 / p.secs.max(1e-9) / 1e6
        );
    }
    s
}

/// One line of a panel.
struct Line {
    label: String,
    color: RGBColor,
    points: Vec<(f64, f64)>,
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

fn draw(path: &PathBuf, title: &str, t: &TimelineResult) -> anyhow::Result<()> {
    let s = &t.samples;
    if s.is_empty() {
        return Err(anyhow!("no samples"));
    }
    let x_max = s.last().map_or(1.0, |x| x.t_secs).max(t.interval_secs);
    let passes: Vec<(f64, f64)> = t
        .passes
        .iter()
        .map(|p| (p.start_secs.max(0.0), (p.start_secs + p.secs).min(x_max)))
        .filter(|(a, b)| b > a)
        .collect();
    let root = SVGBackend::new(path, (1200, 960)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let root = root
        .titled(title, ("sans-serif", 18))
        .map_err(|e| anyhow!("{e}"))?;
    let panels = root.split_evenly((3, 1));
    let mops = Line {
        label: "throughput (Mops/s over each interval)".into(),
        color: BLUE,
        points: s
            .iter()
            .filter(|x| x.secs > 0.0)
            .map(|x| (x.t_secs, x.mops()))
            .collect(),
    };
    panel(&panels[0], "throughput", "Mops/s", x_max, &[mops], &passes)?;
    let mib = |b: u64| b as f64 / MIB;
    let mut disk = vec![Line {
        label: if s[0].log.is_some() {
            "disk footprint: log segment files (MiB)".into()
        } else {
            "disk footprint: data directory (MiB)".into()
        },
        color: RED,
        points: s.iter().map(|x| (x.t_secs, mib(x.footprint()))).collect(),
    }];
    if s[0].log.is_some() {
        disk.push(Line {
            label: "log from begin to tail (MiB)".into(),
            color: RGBColor(0, 140, 0),
            points: s
                .iter()
                .map(|x| (x.t_secs, mib(x.log.map_or(0, |l| l.log_bytes))))
                .collect(),
        });
    }
    if let Some(b) = t.log_budget {
        disk.push(Line {
            label: "log budget".into(),
            color: RGBColor(120, 120, 120),
            points: vec![(0.0, mib(b)), (x_max, mib(b))],
        });
    }
    panel(&panels[1], "disk footprint", "MiB", x_max, &disk, &passes)?;
    let rss = Line {
        label: "resident set of the process, operation streams included (MiB)".into(),
        color: RGBColor(128, 0, 160),
        points: s.iter().map(|x| (x.t_secs, mib(x.rss))).collect(),
    };
    panel(&panels[2], "memory", "MiB", x_max, &[rss], &passes)?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// One panel: lines over time, compaction passes shaded.
fn panel(
    area: &Area<'_>,
    caption: &str,
    y_desc: &str,
    x_max: f64,
    lines: &[Line],
    passes: &[(f64, f64)],
) -> anyhow::Result<()> {
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-6)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(8)
        .x_label_area_size(32)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("seconds into the measured phase")
        .y_desc(y_desc)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    let shade = RGBColor(255, 170, 60).mix(0.25).filled();
    if !passes.is_empty() {
        chart
            .draw_series(
                passes
                    .iter()
                    .map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y_max)], shade)),
            )
            .map_err(|e| anyhow!("{e}"))?
            .label("compaction pass running")
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], shade));
    }
    for l in lines {
        let color = l.color;
        chart
            .draw_series(LineSeries::new(
                l.points.iter().copied(),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(l.label.as_str())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .context("drawing the legend")
        .map_err(|e| anyhow!("{e:#}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::LogState;

    #[test]
    fn names_say_what_ran() {
        let r = RunResult {
            store: "rskv".into(),
            workload: "A".into(),
            distribution: "zipf 0.99".into(),
            threads: 2,
            keys: 8_000_000,
            value_size: 100,
            memory_budget: 512 << 20,
            memory_budget_explicit: true,
            log_budget: Some(3 << 30),
            ..RunResult::default()
        };
        assert_eq!(
            stem(&r),
            "timeline-rskv-A-zipf_0.99-2t-8Mkeys-100B-mem512MiB-budget3GiB-run0"
        );
    }

    #[test]
    fn files_are_written_and_samples_leave_the_result() {
        let dir = std::env::temp_dir().join(format!("rskv-bench-plot-{}", std::process::id()));
        let log = |t: u64| LogState {
            log_bytes: t << 20,
            disk_bytes: (t + 1) << 20,
            passes: t / 2,
            ..LogState::default()
        };
        let samples: Vec<Sample> = (1..=5)
            .map(|t| Sample {
                t_secs: t as f64,
                ops: 1000 * t,
                secs: 1.0,
                compacting_secs: 0.5,
                dir_bytes: t << 20,
                rss: 64 << 20,
                log: Some(log(t)),
            })
            .collect();
        let mut r = RunResult {
            store: "rskv".into(),
            workload: "A".into(),
            distribution: "uniform".into(),
            threads: 1,
            keys: 1000,
            value_size: 100,
            log_budget: Some(4 << 20),
            timeline: Some(TimelineResult {
                interval_secs: 1.0,
                samples,
                passes: vec![Pass {
                    start_secs: 1.5,
                    secs: 1.0,
                    done: true,
                    scanned_bytes: 1 << 20,
                    ..Pass::default()
                }],
                log_budget: Some(4 << 20),
                ..TimelineResult::default()
            }),
            ..RunResult::default()
        };
        write_files(&mut r, &dir);
        let t = r.timeline.unwrap();
        assert_eq!(t.file_error, None);
        let csv = std::fs::read_to_string(t.csv.unwrap()).unwrap();
        assert_eq!(csv.lines().count(), 6);
        assert!(csv
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("1.000,1.000,1000,0.001000,0.500,2097152,1048576,2097152,"));
        let passes = std::fs::read_to_string(t.passes_csv.unwrap()).unwrap();
        assert_eq!(passes.lines().count(), 2);
        let svg = std::fs::read_to_string(t.svg.unwrap()).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("compaction pass running"));
        assert!(t.samples.is_empty() && t.passes.is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
