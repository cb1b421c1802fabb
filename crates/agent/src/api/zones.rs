//! `GET /agent/zones`, `PUT /agent/zone`, `POST /agent/zones/{zone}/key`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use opsbro_api::gossip::{ZoneChange, ZoneChangeAnswer, ZoneKeyAnswer, ZoneKeyRequest, ZoneView};

use super::{ApiContext, ApiError};
use crate::zones;

fn data_dir(ctx: &ApiContext) -> std::path::PathBuf {
    std::path::PathBuf::from(&ctx.data_dir)
}

/// `GET /agent/zones`: the tree from this node's zone, with the keys it holds and the members
/// it knows in each zone.
pub async fn list(
    State(ctx): State<Arc<ApiContext>>,
) -> Result<Json<BTreeMap<String, ZoneView>>, ApiError> {
    let members = ctx.gossip.members().await?;
    let mut by_zone: BTreeMap<String, usize> = BTreeMap::new();
    for m in &members {
        *by_zone.entry(m.zone.clone()).or_insert(0) += 1;
    }
    let own = ctx.current_zone.borrow().clone();
    let ring = ctx
        .gossip
        .keyring
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    Ok(Json(zones::views(&ctx.zones, &own, &ring, &by_zone)))
}

/// `PUT /agent/zone`: move this node to a zone of the tree, now and after restarts.
pub async fn change(
    State(ctx): State<Arc<ApiContext>>,
    body: Result<Json<ZoneChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ZoneChangeAnswer>, ApiError> {
    let Json(ZoneChange { zone }) =
        body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    zones::check(&ctx.zones, &zone).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    let old = ctx.current_zone.borrow().clone();
    if old == zone {
        return Ok(Json(ZoneChangeAnswer {
            success: true,
            text: format!("this node is already in zone `{zone}`"),
        }));
    }
    zones::save_current_zone(&data_dir(&ctx), &zone).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot save the zone: {e}"),
        )
    })?;
    ctx.gossip.set_zone(zone.clone()).await?;
    ctx.current_zone.send_replace(zone.clone());
    tracing::info!(from = %old, to = %zone, "zone changed");
    Ok(Json(ZoneChangeAnswer {
        success: true,
        text: format!("this node moved from zone `{old}` to zone `{zone}`"),
    }))
}

/// `POST /agent/zones/{zone}/key`: import or generate the gossip key of a zone of the tree, or
/// one step of a rotation (install, use, remove); kept in the data dir, used at once.
pub async fn key(
    State(ctx): State<Arc<ApiContext>>,
    Path(zone): Path<String>,
    body: Result<Json<ZoneKeyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ZoneKeyAnswer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    zones::check(&ctx.zones, &zone).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))?;
    let parse = |text: &str| {
        opsbro_transport::Key::from_base64(text.trim()).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("{e} (a zone key is what `opsbro agent keygen` prints)"),
            )
        })
    };
    let op = request.op.as_deref().unwrap_or("import");
    let mut ring = ctx
        .gossip
        .keyring
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let conflict =
        |e: opsbro_transport::KeyringError| ApiError::new(StatusCode::CONFLICT, e.to_string());
    let (key, generated) = match op {
        "import" => {
            if ring.zone_key(&zone).is_some() && !request.erase {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!(
                        "zone `{zone}` already has a key on this node: pass --erase to replace it, or rotate with install, use, remove"
                    ),
                ));
            }
            let (key, generated) = match &request.key {
                Some(text) => (parse(text)?, None),
                None => {
                    let key = opsbro_transport::Key::generate().map_err(|e| {
                        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                    })?;
                    let text = key.to_base64();
                    (key, Some(text))
                }
            };
            ring.set_zone_key(&zone, key.clone());
            (key, generated)
        }
        "install" | "use" | "remove" => {
            let text = request.key.as_deref().ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, format!("`{op}` needs the key"))
            })?;
            let key = parse(text)?;
            match op {
                "install" => ring.install_zone_key(&zone, key.clone()),
                "use" => ring.use_zone_key(&zone, &key).map_err(conflict)?,
                _ => ring.remove_zone_key(&zone, &key).map_err(conflict)?,
            }
            (key, None)
        }
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("unknown op `{other}`: import, install, use or remove"),
            ));
        }
    };
    let file = zones::save_keys(&data_dir(&ctx), &zone, &ring)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
    let key_ids = ring.zone_keys(&zone).iter().map(|k| k.id_hex()).collect();
    drop(ring);
    tracing::info!(%zone, %op, key = %key.id_hex(), "zone key changed");
    Ok(Json(ZoneKeyAnswer {
        zone,
        key_id: key.id_hex(),
        file: file.display().to_string(),
        generated,
        key_ids,
    }))
}
