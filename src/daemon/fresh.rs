//! A fresh start of the gateway (no process hands over): the state file is
//! read before any port opens, then the control socket is bound and the
//! ports opened (reattaching to the devices a state file kept).

use super::Opened;
use crate::config::Config;
use crate::control::BoundSocket;
use crate::restart;

/// Reads the state file and opens the control socket and the ports.
/// Everything that can fail without a device is checked before the first
/// device is touched.
pub(super) fn open(config: &Config, workers: usize) -> anyhow::Result<Opened> {
    let carried = config
        .gateway
        .state_file
        .as_deref()
        .and_then(|p| restart::read_state_file(p, config));
    let bound = BoundSocket::bind(
        &config.gateway.control_socket,
        config.gateway.control_socket_group.as_deref(),
    )?;
    let persist = config.gateway.state_file.is_some();
    let ports = match crate::io::open_ports(&config.ports, workers, config.gateway.offload, persist)
    {
        Ok(p) => p,
        Err(e) => {
            bound.remove();
            return Err(e.into());
        }
    };
    Ok(Opened {
        carried,
        bound,
        ports,
        metrics: None,
        sync: None,
    })
}
