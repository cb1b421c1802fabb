//! Cluster TCP framing, shared by gossip push-pull and the KV store: a frame is
//! `[u32 length][sealed payload]`, the payload sealed with the cluster keyring (AES-256-GCM when
//! a key is set) and starting with a kind byte (1 push-pull, 2 KV request, 3 KV response).

use std::sync::{Arc, RwLock};

use opsbro_transport::{Keyring, OpenError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The cluster keyring, shared (rotations apply to every user at once).
pub type SharedKeyring = Arc<RwLock<Keyring>>;

/// Largest frame read: a full push-pull state, or a KV message with a 512 KiB value and room
/// for batches.
pub const MAX_FRAME: usize = opsbro_gossip::codec::MAX_PUSH_PULL + 64;

/// Open (authenticate and decrypt) a frame with the keyring.
pub fn open(keyring: &RwLock<Keyring>, frame: &[u8]) -> Result<Vec<u8>, OpenError> {
    match keyring.read() {
        Ok(k) => k.open(frame, crate::host::unix_ms()),
        Err(p) => p.into_inner().open(frame, crate::host::unix_ms()),
    }
}

/// Seal a plaintext (kind byte first) with the keyring's primary key.
pub fn seal(keyring: &RwLock<Keyring>, plain: &[u8]) -> Vec<u8> {
    let rng = opsbro_transport::system_random();
    match keyring.read() {
        Ok(k) => k.seal(&rng, plain, crate::host::unix_ms()),
        Err(p) => p.into_inner().seal(&rng, plain, crate::host::unix_ms()),
    }
}

/// Read one frame (bounded by [`MAX_FRAME`]).
pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, String> {
    let len = stream
        .read_u32()
        .await
        .map_err(|e| format!("reading frame length: {e}"))? as usize;
    if len > MAX_FRAME {
        return Err(format!(
            "frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        ));
    }
    // Grow with what actually arrives: an announced length costs nothing until its bytes come
    // (a peer cannot make us allocate megabytes per connection with four bytes).
    let mut buf = Vec::with_capacity(len.min(64 * 1024));
    let mut limited = stream.take(len as u64);
    limited
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("reading frame: {e}"))?;
    if buf.len() < len {
        return Err(format!(
            "connection closed after {} of {len} frame bytes",
            buf.len()
        ));
    }
    Ok(buf)
}

/// Write the frames (plaintexts, sealed here) that arrive on `rx` until it closes or the stream
/// fails. Frames queued together leave in one write: under load, one syscall carries many
/// requests or answers.
pub async fn frame_writer(
    mut stream: impl AsyncWrite + Unpin,
    mut rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    keyring: SharedKeyring,
) {
    let mut buf = Vec::with_capacity(64 * 1024);
    while let Some(first) = rx.recv().await {
        // Let the tasks that are ready run first: under load they queue more frames, and on
        // loopback every send costs the receiver's work too.
        tokio::task::yield_now().await;
        buf.clear();
        let mut next = Some(first);
        while let Some(plain) = next.take() {
            let sealed = seal(&keyring, &plain);
            let Ok(len) = u32::try_from(sealed.len()) else {
                return;
            };
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(&sealed);
            if buf.len() < 256 * 1024 {
                next = rx.try_recv().ok();
            }
        }
        if stream.write_all(&buf).await.is_err() {
            return;
        }
    }
}

/// Write one frame.
pub async fn write_frame(
    stream: &mut (impl AsyncWrite + Unpin),
    bytes: &[u8],
) -> Result<(), String> {
    let len = u32::try_from(bytes.len()).map_err(|_| "frame too large")?;
    stream.write_u32(len).await.map_err(|e| e.to_string())?;
    stream.write_all(bytes).await.map_err(|e| e.to_string())?;
    stream.flush().await.map_err(|e| e.to_string())
}
