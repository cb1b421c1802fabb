//! `GET /agent/snapshot` (`opsbro agent snapshot save`): this node's data as a stream, written
//! by [`crate::snapshot::write_snapshot`] on a blocking thread.

use std::io::{self, Write};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::ApiContext;
use crate::snapshot::{SnapshotError, write_snapshot};

/// Bytes per chunk of the answer.
const CHUNK: usize = 64 * 1024;

/// Sends what is written as chunks of an HTTP body, from a blocking thread.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<io::Result<Bytes>>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::take(&mut self.buf));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

/// `GET /agent/snapshot`: the snapshot as a stream. An error after the first bytes cannot
/// change the status any more: the stream is cut instead (the CLI then refuses the file, which
/// also lacks its end record).
pub async fn serve(State(ctx): State<Arc<ApiContext>>) -> Response {
    let source = ctx.snapshot.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<io::Result<Bytes>>(8);
    tokio::task::spawn_blocking(move || {
        let out = ChannelWriter {
            buf: Vec::with_capacity(CHUNK),
            tx: tx.clone(),
        };
        match write_snapshot(&source, out) {
            Ok(_) => {}
            Err(SnapshotError::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {
                tracing::debug!("the snapshot's client went away");
            }
            Err(e) => {
                tracing::warn!(error = %e, "snapshot cut short");
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"opsbro.snapshot\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
