//! `[sync]` (SPEC §15): this node's and the peer's UDP endpoints and the
//! pair's pre-shared key, read from its file at load time so that a bad
//! key file is reported like any other configuration error.

use super::Result;
use super::schema::RawSync;
use super::validate::Loader;
use crate::sync::SyncConfig;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use toml::Spanned;

impl Loader<'_> {
    pub(super) fn sync(&self, raw: &Option<Spanned<RawSync>>) -> Result<Option<SyncConfig>> {
        let Some(raw) = raw else { return Ok(None) };
        let sync = raw.get_ref();
        let endpoint = |s: &Spanned<String>, key: &str| -> Result<SocketAddr> {
            s.get_ref().parse().map_err(|_| {
                self.error(
                    s.span(),
                    format!(
                        "[sync] {key}: \"{}\" is not an address and port like \"198.18.9.1:7946\"",
                        s.get_ref()
                    ),
                )
            })
        };
        let listen = endpoint(&sync.listen, "listen")?;
        let peer = endpoint(&sync.peer, "peer")?;
        if listen == peer {
            return Err(self.error(
                sync.peer.span(),
                "[sync] peer is this node's own listen address",
            ));
        }
        let path = PathBuf::from(sync.key_file.get_ref());
        let located = |message: String| self.error(sync.key_file.span(), message);
        let bytes = std::fs::read(&path).map_err(|e| {
            located(format!(
                "[sync] key_file {}: cannot read: {e}",
                path.display()
            ))
        })?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            located(format!(
                "[sync] key_file {}: holds {} bytes, a key is exactly 32 raw bytes \
                 (make one with `head -c 32 /dev/urandom > {}`)",
                path.display(),
                bytes.len(),
                path.display()
            ))
        })?;
        let shared = std::fs::metadata(&path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
        Ok(Some(SyncConfig {
            listen,
            peer,
            key_file: path,
            key,
            key_shared: shared,
        }))
    }
}
