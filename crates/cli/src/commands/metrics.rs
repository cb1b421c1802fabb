//! `opsbro metrics find|show`: the time-series store through graphite-web's routes.

use opsbro_api::metrics::{FindNode, INDEX, RenderSeries};

use crate::client::Client;
use crate::commands::gossip::{encode, format_time};
use crate::commands::to_json;
use crate::error::CliError;
use crate::render;

/// `metrics find`.
pub async fn find(
    client: &Client,
    pattern: &str,
    recursive: bool,
    json: bool,
) -> Result<(), CliError> {
    if recursive {
        // Every series whose leading components match the pattern.
        let pattern = opsbro_metrics::glob::Pattern::parse(pattern)
            .map_err(|e| CliError::Usage(e.to_string()))?;
        let names: Vec<String> = client.get(INDEX).await?;
        let found: Vec<&String> = names.iter().filter(|n| pattern.matches_prefix(n)).collect();
        if json {
            println!("{}", to_json(&found)?);
        } else {
            for n in &found {
                println!("{n}");
            }
        }
        return if found.is_empty() {
            Err(CliError::Negative("no series under this pattern".into()))
        } else {
            Ok(())
        };
    }
    let nodes: Vec<FindNode> = client
        .get(&format!("/metrics/find?query={}", encode(pattern)))
        .await?;
    if json {
        println!("{}", to_json(&nodes)?);
    } else if !nodes.is_empty() {
        let rows: Vec<Vec<String>> = nodes
            .iter()
            .map(|n| {
                vec![
                    n.id.clone(),
                    if n.leaf == 1 { "series" } else { "branch" }.to_owned(),
                ]
            })
            .collect();
        print!("{}", render::table(&["PATH", "KIND"], &rows));
    }
    if nodes.is_empty() {
        return Err(CliError::Negative(format!("nothing matches `{pattern}`")));
    }
    Ok(())
}

/// `metrics show`.
pub async fn show(
    client: &Client,
    target: &str,
    from: &str,
    until: &str,
    all: bool,
    json: bool,
) -> Result<(), CliError> {
    let series: Vec<RenderSeries> = client
        .get(&format!(
            "/render?target={}&from={}&until={}&format=json",
            encode(target),
            encode(from),
            encode(until)
        ))
        .await?;
    if json {
        println!("{}", to_json(&series)?);
    } else {
        for (i, s) in series.iter().enumerate() {
            if i > 0 {
                println!();
            }
            println!("{}", s.target);
            let rows: Vec<Vec<String>> = s
                .datapoints
                .iter()
                .filter(|(v, _)| all || v.is_some())
                .map(|(v, ts)| {
                    vec![
                        format!("  {}", format_time(ts * 1000)),
                        v.map_or_else(|| "-".to_owned(), |v| format!("{v}")),
                    ]
                })
                .collect();
            if rows.is_empty() {
                println!("  (no values in this range)");
            } else {
                for r in rows {
                    println!("{}  {}", r[0], r[1]);
                }
            }
        }
    }
    if series.is_empty() {
        return Err(CliError::Negative(format!("no series match `{target}`")));
    }
    Ok(())
}
