//! Pack routes: `GET /packs` (every pack, its objects and where each comes from),
//! `GET /dashboards[/{name}]` (dashboards with their values computed now) and `GET /tutorials`.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use opsbro_api::dashboards as d;
use opsbro_api::detectors::{PackInfo, PackObject, Packs};

use crate::api::context::{ApiContext, ApiError};

/// `GET /packs`.
pub async fn packs(State(ctx): State<Arc<ApiContext>>) -> Json<Packs> {
    let packs = ctx.packs();
    Json(Packs {
        packs: packs
            .packs
            .values()
            .map(|p| PackInfo {
                name: p.name.clone(),
                description: p.description.clone(),
                source: p.source.to_string(),
                detectors: p.detectors.len(),
                checks: p.checks.len(),
                handlers: p.handlers.len(),
                generators: p.generators.len(),
                compliance: p.compliance.len(),
                dashboards: p.dashboards.len(),
                tutorials: p.tutorials.len(),
                levels: p.levels.iter().map(ToString::to_string).collect(),
                objects: p
                    .objects
                    .iter()
                    .map(|o| PackObject {
                        kind: o.kind.to_owned(),
                        name: o.name.clone(),
                        file: o.file.clone(),
                    })
                    .collect(),
                parameters: p.parameters.clone(),
            })
            .collect(),
        diagnostics: packs.diagnostics.iter().map(ToString::to_string).collect(),
    })
}

/// `GET /dashboards`.
pub async fn dashboards(State(ctx): State<Arc<ApiContext>>) -> Json<Vec<d::DashboardInfo>> {
    let packs = ctx.packs();
    Json(
        packs
            .packs
            .values()
            .flat_map(|p| p.dashboards.iter())
            .map(|b| d::DashboardInfo {
                name: b.name.clone(),
                title: b.title.clone(),
                file: b.file.clone(),
            })
            .collect(),
    )
}

/// `GET /dashboards/{name}`: the widgets with their values computed now.
pub async fn dashboard(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<Json<d::Dashboard>, ApiError> {
    let packs = ctx.packs();
    let all: Vec<&opsbro_packs::Dashboard> = packs
        .packs
        .values()
        .flat_map(|p| p.dashboards.iter())
        .collect();
    let found: Vec<&&opsbro_packs::Dashboard> = all
        .iter()
        .filter(|b| b.name == name || b.name.rsplit('/').next() == Some(name.as_str()))
        .collect();
    let board = match found.as_slice() {
        [one] => (**one).clone(),
        [] => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "no dashboard named `{name}` (have: {})",
                    all.iter()
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        many => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!(
                    "`{name}` names several dashboards: {}",
                    many.iter()
                        .map(|b| b.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
    };
    // `{{parameters.x}}` are those of the dashboard's pack, as in its checks.
    let params = packs
        .packs
        .values()
        .find(|p| p.dashboards.iter().any(|b| b.file == board.file))
        .map(|p| p.parameters.clone())
        .unwrap_or_default();
    let (evaluator, data) = (ctx.evaluator.clone(), ctx.collected.clone());
    let content = tokio::task::spawn_blocking(move || {
        let resolve = |path: &str| match path.split_once('.') {
            Some(("parameters", rest)) => crate::monitoring::parameter(&params, rest),
            Some(("collector", rest)) => data.lookup(rest),
            _ => None,
        };
        widget(&board.content, &evaluator, &resolve)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let board = found[0];
    Ok(Json(d::Dashboard {
        name: board.name.clone(),
        title: board.title.clone(),
        content,
    }))
}

/// Compute one widget (and those of a split).
fn widget(
    node: &serde_json::Value,
    evaluator: &opsbro_eval::Evaluator,
    resolve: &dyn opsbro_eval::front::Resolver,
) -> d::Widget {
    let (kind, body) = node
        .as_object()
        .and_then(|m| m.iter().next())
        .map(|(k, v)| (k.clone(), v.clone()))
        .unwrap_or_default();
    let mut w = d::Widget {
        kind: kind.clone(),
        title: String::new(),
        unit: String::new(),
        value: None,
        error: None,
        children: Vec::new(),
    };
    if kind.ends_with("_split") {
        w.children = body
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| widget(i, evaluator, resolve))
                    .collect()
            })
            .unwrap_or_default();
        return w;
    }
    let text = |key: &str| match body.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    };
    w.title = text("title");
    w.unit = text("unit");
    let expr = text("value");
    if expr.is_empty() {
        w.error = Some("no `value` expression".into());
        return w;
    }
    match evaluator.eval(&expr, resolve) {
        Ok(v) => w.value = Some(v),
        Err(e) => w.error = Some(e.to_string()),
    }
    w
}

/// `GET /tutorials`.
pub async fn tutorials(State(ctx): State<Arc<ApiContext>>) -> Json<Vec<d::Tutorial>> {
    let packs = ctx.packs();
    Json(
        packs
            .packs
            .values()
            .flat_map(|p| p.tutorials.iter())
            .map(|t| d::Tutorial {
                name: t.name.clone(),
                title: t.title.clone(),
                file: t.file.clone(),
                files: sibling_files(&t.file),
            })
            .collect(),
    )
}

/// The other files next to a tutorial's file (none for an embedded one).
fn sibling_files(file: &str) -> Vec<String> {
    let path = std::path::Path::new(file);
    let Some(dir) = path.parent().filter(|_| path.is_file()) else {
        return Vec::new();
    };
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file() && p != path)
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}
