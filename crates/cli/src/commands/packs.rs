//! `opsbro packs list|show`, `opsbro dashboards list|show`, `opsbro tutorials list|show`.

use opsbro_api::dashboards::{self as d, DashboardInfo, Tutorial, Widget};
use opsbro_api::detectors::{DetectorState, PACKS, Packs, STATE};

use super::to_json;
use crate::client::Client;
use crate::error::CliError;
use crate::render;

/// `packs list`.
pub async fn list(client: &Client, json: bool) -> Result<(), CliError> {
    let packs: Packs = client.get(PACKS).await?;
    if json {
        println!("{}", to_json(&packs)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = packs
        .packs
        .iter()
        .map(|p| {
            vec![
                p.name.clone(),
                p.levels.join(" < "),
                p.detectors.to_string(),
                p.checks.to_string(),
                p.handlers.to_string(),
                p.generators.to_string(),
                p.compliance.to_string(),
                p.dashboards.to_string(),
                p.description.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        render::table(
            &[
                "PACK",
                "LEVELS",
                "DETECTORS",
                "CHECKS",
                "HANDLERS",
                "GENERATORS",
                "COMPLIANCE",
                "DASHBOARDS",
                "DESCRIPTION"
            ],
            &rows
        )
    );
    if !packs.diagnostics.is_empty() {
        println!("problems:");
        for d in &packs.diagnostics {
            println!("  {d}");
        }
    }
    Ok(())
}

/// `packs show NAME`: the pack, each object with the file it comes from, its parameters.
pub async fn show(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let packs: Packs = client.get(PACKS).await?;
    let Some(pack) = packs.packs.iter().find(|p| p.name == name) else {
        return Err(CliError::Negative(format!(
            "no pack named `{name}` (see `opsbro packs list`)"
        )));
    };
    let detectors: Vec<DetectorState> = client.get(STATE).await?;
    let mine: Vec<&DetectorState> = detectors.iter().filter(|d| d.pack == name).collect();
    if json {
        let v = serde_json::json!({ "pack": pack, "detectors": mine });
        println!("{}", to_json(&v)?);
        return Ok(());
    }
    print!(
        "{}",
        render::key_values(&[
            ("Pack", pack.name.clone()),
            ("Levels", pack.levels.join(" < ")),
            ("Description", pack.description.clone()),
        ])
    );
    let rows: Vec<Vec<String>> = pack
        .objects
        .iter()
        .map(|o| vec![o.kind.clone(), o.name.clone(), o.file.clone()])
        .collect();
    print!("{}", render::table(&["KIND", "NAME", "FROM"], &rows));
    if !mine.is_empty() {
        let rows: Vec<Vec<String>> = mine
            .iter()
            .map(|d| {
                let groups = if d.rendered_groups.is_empty() {
                    d.groups.join(",")
                } else {
                    d.rendered_groups.join(",")
                };
                vec![d.name.clone(), groups, d.apply_if.clone()]
            })
            .collect();
        print!("{}", render::table(&["DETECTOR", "GROUPS", "IF"], &rows));
    }
    if let Some(params) = pack.parameters.as_object().filter(|m| !m.is_empty()) {
        println!("parameters:");
        for (k, v) in params {
            println!("  {k} = {v}");
        }
    }
    let problems: Vec<&String> = packs
        .diagnostics
        .iter()
        .filter(|d| d.contains(&format!("{name}/")))
        .collect();
    for p in problems {
        println!("problem: {p}");
    }
    Ok(())
}

/// `dashboards list`.
pub async fn dashboards(client: &Client, json: bool) -> Result<(), CliError> {
    let list: Vec<DashboardInfo> = client.get(d::ALL).await?;
    if json {
        println!("{}", to_json(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|b| vec![b.name.clone(), b.title.clone(), b.file.clone()])
        .collect();
    print!("{}", render::table(&["DASHBOARD", "TITLE", "FROM"], &rows));
    Ok(())
}

/// `dashboards show NAME`: the widgets with their values, drawn in the terminal.
pub async fn dashboard(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let board: d::Dashboard = client
        .get(
            &d::ONE.replace(
                "{*name}",
                &name
                    .split('/')
                    .map(crate::commands::gossip::encode)
                    .collect::<Vec<_>>()
                    .join("/"),
            ),
        )
        .await?;
    if json {
        println!("{}", to_json(&board)?);
        return Ok(());
    }
    let colour = render::use_colour();
    println!("{}", board.title);
    println!("{}", "=".repeat(board.title.chars().count()));
    let mut out = String::new();
    draw(&board.content, 0, colour, &mut out);
    print!("{out}");
    Ok(())
}

/// One widget as terminal text (splits indent their widgets).
fn draw(w: &Widget, depth: usize, colour: bool, out: &mut String) {
    let pad = "  ".repeat(depth);
    if w.kind.ends_with("_split") {
        for c in &w.children {
            draw(
                c,
                depth + usize::from(w.kind == "horizontal_split"),
                colour,
                out,
            );
        }
        return;
    }
    let value = match (&w.value, &w.error) {
        (_, Some(e)) => {
            out.push_str(&format!("{pad}{}: (no value: {e})\n", w.title));
            return;
        }
        (Some(v), None) => v.clone(),
        (None, None) => serde_json::Value::Null,
    };
    let text = match &value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    };
    match (w.kind.as_str(), value.as_f64()) {
        ("horizontal_gauge" | "horizontal_chart" | "donut", Some(n)) => {
            out.push_str(&format!(
                "{pad}{:<20} {} {}{}\n",
                w.title,
                bar(n, 40, colour),
                trim_number(n),
                w.unit
            ));
        }
        _ => out.push_str(&format!("{pad}{}: {text}{}\n", w.title, w.unit)),
    }
}

fn trim_number(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{n:.0}")
    } else {
        format!("{n:.1}")
    }
}

/// `[#####-----]` for a percentage (0..100, clamped).
fn bar(pct: f64, width: usize, colour: bool) -> String {
    let filled = ((pct.clamp(0.0, 100.0) / 100.0) * width as f64).round() as usize;
    let body = format!("{}{}", "#".repeat(filled), "-".repeat(width - filled));
    if !colour {
        return format!("[{body}]");
    }
    let code = if pct >= 90.0 {
        31
    } else if pct >= 75.0 {
        33
    } else {
        32
    };
    format!("[\x1b[{code}m{body}\x1b[0m]")
}

/// `tutorials list`.
pub async fn tutorials(client: &Client, json: bool) -> Result<(), CliError> {
    let list: Vec<Tutorial> = client.get(d::TUTORIALS).await?;
    if json {
        println!("{}", to_json(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|t| vec![t.name.clone(), t.title.clone()])
        .collect();
    print!("{}", render::table(&["TUTORIAL", "TITLE"], &rows));
    Ok(())
}

/// `tutorials show NAME`.
pub async fn tutorial(client: &Client, name: &str, json: bool) -> Result<(), CliError> {
    let list: Vec<Tutorial> = client.get(d::TUTORIALS).await?;
    let found: Vec<&Tutorial> = list
        .iter()
        .filter(|t| t.name == name || t.name.rsplit('/').next() == Some(name))
        .collect();
    let t = match found.as_slice() {
        [one] => *one,
        [] => {
            return Err(CliError::Negative(format!(
                "no tutorial named `{name}` (see `opsbro tutorials list`)"
            )));
        }
        many => {
            return Err(CliError::Usage(format!(
                "`{name}` names several tutorials: {}",
                many.iter()
                    .map(|t| t.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
    };
    if json {
        println!("{}", to_json(t)?);
        return Ok(());
    }
    print!(
        "{}",
        render::key_values(&[
            ("Tutorial", t.name.clone()),
            ("Title", t.title.clone()),
            ("File", t.file.clone()),
        ])
    );
    for f in &t.files {
        println!("  {f}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widgets_draw_as_text_and_bars() {
        let board = Widget {
            kind: "vertical_split".into(),
            title: String::new(),
            unit: String::new(),
            value: None,
            error: None,
            children: vec![
                Widget {
                    kind: "text".into(),
                    title: "General".into(),
                    unit: String::new(),
                    value: Some(serde_json::json!("Linux debian")),
                    error: None,
                    children: Vec::new(),
                },
                Widget {
                    kind: "donut".into(),
                    title: "Memory".into(),
                    unit: "%".into(),
                    value: Some(serde_json::json!(50)),
                    error: None,
                    children: Vec::new(),
                },
                Widget {
                    kind: "horizontal_gauge".into(),
                    title: "Disk".into(),
                    unit: "%".into(),
                    value: None,
                    error: Some("runtime error".into()),
                    children: Vec::new(),
                },
            ],
        };
        let mut out = String::new();
        draw(&board, 0, false, &mut out);
        assert_eq!(
            out,
            format!(
                "General: Linux debian\nMemory               [{}{}] 50%\nDisk: (no value: runtime error)\n",
                "#".repeat(20),
                "-".repeat(20)
            )
        );
    }
}
