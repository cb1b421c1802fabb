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

/// `POST /agent/zones/{zone}/key`: import or generate the gossip key of a zone of the tree,
/// keep it in the data dir and use it at once.
pub async fn key(
    State(ctx): State<Arc<ApiContext>>,
    Path(zone): Path<String>,
    body: Result<Json<ZoneKeyRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<ZoneKeyAnswer>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    zones::check(&ctx.zones, &zone).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, e))?;
    let (key, generated) = match request.key {
        Some(text) => (
            opsbro_transport::Key::from_base64(text.trim()).map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("{e} (a zone key is what `opsbro agent keygen` prints)"),
                )
            })?,
            None,
        ),
        None => {
            let key = opsbro_transport::Key::generate()
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
            let text = key.to_base64();
            (key, Some(text))
        }
    };
    let file = zones::write_key(&data_dir(&ctx), &zone, &key, request.erase)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, e))?;
    ctx.gossip
        .keyring
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .set_zone_key(&zone, key.clone());
    tracing::info!(%zone, key = %key.id_hex(), "zone key installed");
    Ok(Json(ZoneKeyAnswer {
        zone,
        key_id: key.id_hex(),
        file: file.display().to_string(),
        generated,
    }))
}
