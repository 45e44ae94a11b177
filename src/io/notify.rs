//! systemd's readiness protocol (`Type=notify`, sd_notify(3)): one datagram
//! such as `READY=1` to the socket named by `$NOTIFY_SOCKET`. A few lines,
//! so no crate. A reload is bracketed by `RELOADING=1` (with the monotonic
//! time, which `Type=notify-reload` requires) and `READY=1`.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` to the service manager; `Ok(false)` when not run by one
/// (no `$NOTIFY_SOCKET`).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // A name in the abstract namespace (systemd's usual choice).
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name)?
        }
        None => SocketAddr::from_pathname(&path)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}

/// Tells the service manager a reload begins: `RELOADING=1` with
/// `MONOTONIC_USEC`, the CLOCK_MONOTONIC time in microseconds.
pub fn reloading() -> io::Result<bool> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)?;
    let usec = now.tv_sec() as u64 * 1_000_000 + now.tv_nsec() as u64 / 1_000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"))
}
