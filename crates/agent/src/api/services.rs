//! Service routes of the local API: the catalog (`/catalog/...`, blocking reads like the KV
//! store's), this node's services (`/services`, register and deregister), maintenance mode and
//! TTL check statuses.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use opsbro_api::catalog as api;
use opsbro_api::monitoring::{TtlStatus, TtlUpdate};
use opsbro_checks::CheckState;

use crate::api::context::{ApiContext, ApiError};
use crate::api::kv_store::{MAX_WAIT, duration};
use crate::monitoring::TtlError;
use crate::services::{MaintenanceError, REGISTERED_DIR};

/// Wait of a blocking read that names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(300);

/// Query of the catalog routes.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CatalogQuery {
    passing: Option<String>,
    tag: Option<String>,
    zone: Option<String>,
    index: Option<u64>,
    wait: Option<String>,
}

/// `?passing` alone, `?passing=true` or `?passing=1` (not `false` / `0`).
fn flag(v: Option<&str>) -> bool {
    v.is_some_and(|v| !matches!(v, "false" | "0" | "no"))
}

fn with_index(index: u64, body: impl IntoResponse) -> Response {
    (
        [(
            HeaderName::from_static(api::INDEX_HEADER),
            index.to_string(),
        )],
        body,
    )
        .into_response()
}

/// The catalog now, or once `service`'s index passes `?index` (at most `?wait`).
async fn read(
    ctx: &ApiContext,
    service: Option<&str>,
    q: &CatalogQuery,
) -> Result<Arc<crate::catalog::Catalog>, ApiError> {
    match (q.index, q.wait.as_deref()) {
        (Some(index), wait) => {
            let wait = match wait {
                Some(w) => duration("wait", w)?.min(MAX_WAIT),
                None => DEFAULT_WAIT,
            };
            Ok(crate::catalog::wait_past(&ctx.catalog, service, index, wait).await)
        }
        (None, Some(_)) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "wait needs index (the X-Opsbro-Index of the previous answer)",
        )),
        (None, None) => Ok(ctx.catalog.borrow().clone()),
    }
}

/// `GET /catalog/services`.
pub async fn services(
    State(ctx): State<Arc<ApiContext>>,
    Query(q): Query<CatalogQuery>,
) -> Result<Response, ApiError> {
    let catalog = read(&ctx, None, &q).await?;
    Ok(with_index(catalog.index, Json(catalog.summaries())))
}

/// `GET /catalog/service/{name}`: 200 with the (maybe empty) list of instances, as Consul.
pub async fn service(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
    Query(q): Query<CatalogQuery>,
) -> Result<Response, ApiError> {
    opsbro_types::names::service_name(&name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.0))?;
    let catalog = read(&ctx, Some(&name), &q).await?;
    let passing = flag(q.passing.as_deref());
    let instances: Vec<api::ServiceInstance> = catalog
        .services
        .get(&name)
        .map(|e| e.instances.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !passing || i.passing)
        .filter(|i| {
            q.tag
                .as_deref()
                .is_none_or(|t| i.tags.iter().any(|x| x.eq_ignore_ascii_case(t)))
        })
        .filter(|i| {
            q.zone
                .as_deref()
                .is_none_or(|z| i.zone.eq_ignore_ascii_case(z))
        })
        .collect();
    Ok(with_index(catalog.index_of(&name), Json(instances)))
}

/// `GET /services`: this node's services.
pub async fn local(State(ctx): State<Arc<ApiContext>>) -> Json<Vec<api::LocalService>> {
    Json(ctx.services.local(&ctx.monitoring))
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, message)
}

/// The service file of a registration: `service: {...}` as in a pack, or the bare mapping
/// (Consul's `{"name": ...}` / `{"Name": ...}` bodies), in YAML or JSON.
fn service_file(body: &[u8]) -> Result<(String, String), ApiError> {
    let text = std::str::from_utf8(body).map_err(|_| bad("the service file must be UTF-8 text"))?;
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| {
        bad(format!(
            "the service file is not valid YAML or JSON: {}",
            e.to_string().split(" at line ").next().unwrap_or_default()
        ))
    })?;
    let map = doc
        .as_mapping()
        .ok_or_else(|| bad("expected `service: {name: ..., port: ...}`"))?;
    let (service, text) = match map.get("service") {
        Some(s) => {
            if map.len() != 1 {
                return Err(bad(
                    "a registered file holds one `service:` object and nothing else",
                ));
            }
            (s.clone(), text.to_owned())
        }
        None => {
            // Consul's capitalised keys (`Name`, `Port`, `Tags`...) are the same keys.
            let mut lowered = serde_yaml::Mapping::new();
            for (k, v) in map {
                let k = k.as_str().map_or_else(
                    || k.clone(),
                    |k| serde_yaml::Value::from(k.to_ascii_lowercase()),
                );
                lowered.insert(k, v.clone());
            }
            let service = serde_yaml::Value::Mapping(lowered);
            let mut wrapped = serde_yaml::Mapping::new();
            wrapped.insert("service".into(), service.clone());
            let text = serde_yaml::to_string(&wrapped).map_err(|e| bad(e.to_string()))?;
            (service, text)
        }
    };
    let name = service
        .get("name")
        .and_then(|n| n.as_str())
        .ok_or_else(|| bad("service.name is required to register a service"))?
        .to_owned();
    opsbro_types::names::service_name(&name).map_err(|e| bad(format!("service.name: {}", e.0)))?;
    Ok((name, text))
}

/// `POST /services/register`: check the file as the loader will, keep it in the data dir,
/// reload; a reload that does not apply puts the previous file back.
pub async fn register(
    State(ctx): State<Arc<ApiContext>>,
    body: Bytes,
) -> Result<Json<api::Registered>, ApiError> {
    let (name, text) = service_file(&body)?;
    let dir = std::path::Path::new(&ctx.data_dir).join(REGISTERED_DIR);
    let file = dir.join(format!("{name}.yml"));
    let display = file.display().to_string();
    let check = |expr: &str| ctx.evaluator.check_syntax(expr).map_err(|e| e.to_string());
    let (pack, diagnostics) = opsbro_packs::load_local_file(&display, &name, &text, &check);
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| !d.warning)
        .map(ToString::to_string)
        .collect();
    if !errors.is_empty() {
        return Err(bad(errors.join("; ")));
    }
    if pack.services.len() != 1 {
        return Err(bad("the file declares no service"));
    }
    if let Some(other) = ctx
        .objects
        .borrow()
        .services()
        .find(|s| s.name == name && std::path::Path::new(&s.file).parent() != Some(&dir))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "service {name} is declared in {}: change it there (registered services cannot replace pack services)",
                other.file
            ),
        ));
    }
    let previous = std::fs::read(&file).ok();
    std::fs::create_dir_all(&dir)
        .and_then(|()| crate::datadir::write_atomic(&file, text.as_bytes()))
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot keep {display}: {e}"),
            )
        })?;
    let report = ctx.reloader.reload().await;
    if !report.applied {
        let _ = match previous {
            Some(old) => crate::datadir::write_atomic(&file, &old),
            None => std::fs::remove_file(&file),
        };
        return Err(bad(format!("not registered: {}", report.errors.join("; "))));
    }
    Ok(Json(api::Registered {
        name,
        file: display,
        changes: report.changes,
        warnings: report.warnings,
    }))
}

/// `DELETE /services/{name}`: only services registered through the API.
pub async fn deregister(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
) -> Result<Json<api::Registered>, ApiError> {
    opsbro_types::names::service_name(&name).map_err(|e| bad(e.0))?;
    let file = std::path::Path::new(&ctx.data_dir)
        .join(REGISTERED_DIR)
        .join(format!("{name}.yml"));
    let display = file.display().to_string();
    let Ok(old) = std::fs::read(&file) else {
        let declared = ctx
            .objects
            .borrow()
            .services()
            .find(|s| s.name == name)
            .map(|s| s.file.clone());
        return Err(match declared {
            Some(f) => ApiError::new(
                StatusCode::CONFLICT,
                format!(
                    "service {name} is declared in {f}, not registered: remove it there and reload"
                ),
            ),
            None => ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no service named {name} is registered on this node"),
            ),
        });
    };
    std::fs::remove_file(&file).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot remove {display}: {e}"),
        )
    })?;
    let report = ctx.reloader.reload().await;
    if !report.applied {
        let _ = crate::datadir::write_atomic(&file, &old);
        return Err(bad(format!(
            "not deregistered: {}",
            report.errors.join("; ")
        )));
    }
    ctx.services.forget(&name);
    Ok(Json(api::Registered {
        name,
        file: display,
        changes: report.changes,
        warnings: report.warnings,
    }))
}

impl From<MaintenanceError> for ApiError {
    fn from(e: MaintenanceError) -> Self {
        let status = match e {
            MaintenanceError::UnknownService(_) => StatusCode::NOT_FOUND,
            MaintenanceError::BadReason(_) => StatusCode::BAD_REQUEST,
            MaintenanceError::Io(..) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// `GET /agent/maintenance`.
pub async fn node_maintenance(State(ctx): State<Arc<ApiContext>>) -> Json<api::Maintenance> {
    let reason = ctx.services.node_maintenance();
    Json(api::Maintenance {
        enable: reason.is_some(),
        reason,
    })
}

/// `PUT /agent/maintenance`.
pub async fn set_node_maintenance(
    State(ctx): State<Arc<ApiContext>>,
    Json(m): Json<api::Maintenance>,
) -> Result<Json<api::Maintenance>, ApiError> {
    ctx.services.set_node(m.enable, m.reason)?;
    Ok(node_maintenance(State(ctx)).await)
}

/// `PUT /services/{name}/maintenance`.
pub async fn set_service_maintenance(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
    Json(m): Json<api::Maintenance>,
) -> Result<Json<api::Maintenance>, ApiError> {
    let objects = ctx.objects.borrow().clone();
    ctx.services
        .set_service(&objects, &name, m.enable, m.reason.clone())?;
    Ok(Json(api::Maintenance {
        enable: m.enable,
        reason: m
            .enable
            .then(|| m.reason.unwrap_or_else(|| "maintenance mode".into())),
    }))
}

/// `PUT /monitoring/ttl/{name}`.
pub async fn ttl(
    State(ctx): State<Arc<ApiContext>>,
    Path(name): Path<String>,
    Json(u): Json<TtlUpdate>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let state = match u.status {
        TtlStatus::Pass => CheckState::Ok,
        TtlStatus::Warn => CheckState::Warning,
        TtlStatus::Fail => CheckState::Critical,
    };
    let check = ctx
        .monitoring
        .ttl(&name, state, u.note, &ctx.services.check_names())
        .map_err(|e| {
            let status = match e {
                TtlError::Unknown(_) => StatusCode::NOT_FOUND,
                TtlError::NotTtl(..) => StatusCode::CONFLICT,
                TtlError::BadNote(_) => StatusCode::BAD_REQUEST,
            };
            ApiError::new(status, e.to_string())
        })?;
    Ok(Json(
        serde_json::json!({ "check": check, "state": state.as_str() }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_bodies() {
        let (name, text) = service_file(b"service:\n  name: web\n  port: 80\n").expect("pack form");
        assert_eq!(name, "web");
        assert!(text.starts_with("service:"));
        let (name, text) =
            service_file(br#"{"Name": "api", "Port": 8080, "Tags": ["v1"]}"#).expect("consul form");
        assert_eq!(name, "api");
        assert!(text.contains("port: 8080"), "{text}");
        for (body, why) in [
            (&b"[1, 2]"[..], "expected `service:"),
            (b"service: {port: 80}", "service.name is required"),
            (b"service: {name: 'a b'}", "service name"),
            (b"service: {name: web}\ncheck: {}", "one `service:` object"),
            (b"{{{", "not valid YAML"),
        ] {
            let e = service_file(body).expect_err(std::str::from_utf8(body).unwrap_or("?"));
            assert!(e.message.contains(why), "{e:?}");
        }
        assert!(flag(Some("")));
        assert!(flag(Some("true")));
        assert!(!flag(Some("false")));
        assert!(!flag(None));
    }
}
