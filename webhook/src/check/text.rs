//! The human form of the report: one short section per question (webhook, labelled
//! namespaces, pods without the sidecar, workload-only annotations, stale sidecars), a
//! table where there are rows, the fixes, and a last line with the verdict.
//!
//! What it does not do: decide anything, or promise a stable layout (`-o json` is for
//! scripts).

use std::io::{self, Write};

use super::report::Report;

/// Writes the human report: one short section per question, a table where there are
/// rows, and a last line with the verdict.
pub fn write_text(report: &Report, out: &mut impl Write) -> io::Result<()> {
    let w = &report.webhook;
    writeln!(out, "Webhook (namespace {})", w.namespace)?;
    let mut rows = Vec::new();
    if let Some(d) = &w.deployment {
        rows.push(vec![
            mark(d.ready_replicas >= d.desired_replicas && d.desired_replicas > 0),
            format!("deployment/{}", d.name),
            format!("{}/{} replicas ready", d.ready_replicas, d.desired_replicas),
        ]);
    }
    if let Some(c) = &w.configuration {
        rows.push(vec![
            mark(c.ca_bundle == "matches"),
            format!("mutatingwebhookconfiguration/{}", c.name),
            format!("caBundle {} the Secret's ca.crt", ca_words(c.ca_bundle)),
        ]);
    }
    if let Some(s) = &w.tls_secret {
        let days = |d: Option<i64>| d.map_or("unreadable".to_owned(), |d| format!("{d} days left"));
        rows.push(vec![
            mark(
                s.serving_days_left
                    .is_some_and(|d| d >= super::CERT_WARN_DAYS),
            ),
            format!("secret/{}", s.name),
            format!(
                "serving certificate {}, CA {}",
                days(s.serving_days_left),
                days(s.ca_days_left)
            ),
        ]);
    }
    table(out, &[], &rows)?;
    for p in &w.problems {
        writeln!(out, "  ! {}: {}", p.code, p.message)?;
    }
    if let Some(e) = &w.expected {
        writeln!(
            out,
            "  injects {} (sidecar-version {}, injected-config {}), settings from {}",
            e.sidecar_image, e.sidecar_version, e.injected_config, e.settings_from
        )?;
    }

    writeln!(out, "\nNamespaces labelled holysheep-injection=enabled")?;
    let rows: Vec<Vec<String>> = report
        .namespaces
        .iter()
        .map(|n| {
            vec![
                n.name.clone(),
                if n.selected { "yes" } else { "no (excluded)" }.to_owned(),
                n.annotated_pods.to_string(),
                n.injected_pods.to_string(),
                n.stale_pods.to_string(),
            ]
        })
        .collect();
    section(
        out,
        &["NAMESPACE", "SELECTED", "ANNOTATED", "INJECTED", "STALE"],
        &rows,
    )?;

    writeln!(out, "\nAnnotated pods running without the sidecar")?;
    let rows: Vec<Vec<String>> = report
        .not_injected
        .iter()
        .map(|f| {
            let mut why = f.detail.clone();
            if let Some(evidence) = &f.evidence {
                why.push_str(&format!(" [{evidence}]"));
            }
            vec![
                f.namespace.clone(),
                f.pod.clone(),
                f.workload.reference(),
                f.reason.to_owned(),
                why,
            ]
        })
        .collect();
    section(
        out,
        &["NAMESPACE", "POD", "WORKLOAD", "REASON", "DETAIL"],
        &rows,
    )?;
    for f in &report.not_injected {
        writeln!(out, "  fix {}/{}: {}", f.namespace, f.pod, f.fix)?;
    }

    writeln!(
        out,
        "\nWorkloads annotated holysheep/inject on their own metadata, not on the pod template"
    )?;
    let rows: Vec<Vec<String>> = report
        .workload_only
        .iter()
        .map(|f| vec![f.namespace.clone(), f.workload.reference(), f.fix.clone()])
        .collect();
    section(out, &["NAMESPACE", "WORKLOAD", "FIX"], &rows)?;

    writeln!(
        out,
        "\nPods on another sidecar version or injection config than the webhook's"
    )?;
    let rows: Vec<Vec<String>> = report
        .stale
        .iter()
        .map(|s| {
            let first = s.pods.first();
            let have = first.map_or(String::new(), |p| {
                format!(
                    "{} {}",
                    p.sidecar_version.as_deref().unwrap_or("-"),
                    p.injected_config.as_deref().unwrap_or("-")
                )
            });
            let want = first.map_or(String::new(), |p| {
                format!(
                    "{} {}",
                    p.expected_sidecar_version, p.expected_injected_config
                )
            });
            vec![
                s.namespace.clone(),
                s.workload.reference(),
                s.pods.len().to_string(),
                have,
                want,
                s.fix.clone(),
            ]
        })
        .collect();
    section(
        out,
        &["NAMESPACE", "WORKLOAD", "PODS", "HAVE", "WANT", "RUN"],
        &rows,
    )?;

    for note in &report.notes {
        writeln!(out, "\nnote: {note}")?;
    }
    let count = report.action_count();
    if count == 0 {
        writeln!(out, "\nAll good: nothing needs action.")
    } else {
        writeln!(out, "\n{count} finding(s) need action.")
    }
}

fn mark(ok: bool) -> String {
    if ok { "OK" } else { "FAIL" }.to_owned()
}

fn ca_words(state: &str) -> &'static str {
    match state {
        "matches" => "matches",
        "differs" => "differs from",
        "missing" => "is missing; cannot be compared with",
        _ => "cannot be compared with",
    }
}

fn section(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    if rows.is_empty() {
        writeln!(out, "  none")
    } else {
        table(out, header, rows)
    }
}

/// Left-aligned columns two spaces apart, indented by two; the last column is not padded.
fn table(out: &mut impl Write, header: &[&str], rows: &[Vec<String>]) -> io::Result<()> {
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let all: Vec<&Vec<String>> = std::iter::once(&header)
        .filter(|h| !h.is_empty())
        .chain(rows)
        .collect();
    let columns = all.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            all.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in all {
        let mut line = String::from(" ");
        for (i, cell) in row.iter().enumerate() {
            line.push(' ');
            line.push_str(cell);
            if i + 1 < row.len() {
                let width = widths.get(i).copied().unwrap_or(0);
                let pad = width.saturating_sub(cell.chars().count()) + 1;
                line.push_str(&" ".repeat(pad));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}
