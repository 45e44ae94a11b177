//! The new side of `tunwall upgrade` (SPEC §13), before the gateway is
//! built: receives the queues, the control listener and the flow table
//! from the old process, and checks that they fit this configuration.

use super::Opened;
use crate::config::Config;
use crate::control::BoundSocket;
use crate::control::metrics::MetricsListener;
use crate::handover::Incoming;
use crate::io::Port;
use crate::restart;

/// Receives what the old process hands over (see [`crate::handover`]).
pub(super) fn take_over(
    incoming: &Incoming,
    config: &Config,
    workers: usize,
) -> anyhow::Result<Opened> {
    let received = incoming.ready()?;
    let offer = &received.offer;
    let names: Vec<&str> = offer.ports.iter().map(|p| p.name.as_str()).collect();
    anyhow::ensure!(
        names
            == config
                .ports
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
        "the ports handed over ({}) are not this configuration's",
        names.join(", ")
    );
    let listeners = 1 + usize::from(offer.metrics.is_some()) + usize::from(offer.sync.is_some());
    anyhow::ensure!(
        offer.queues == workers && received.fds.len() == offer.ports.len() * workers + listeners,
        "{} descriptors for {} ports of {} queues, this configuration runs {workers} workers",
        received.fds.len(),
        offer.ports.len(),
        offer.queues
    );
    let mut fds = received.fds.into_iter();
    let mut ports = Vec::new();
    for (offered, port) in offer.ports.iter().zip(&config.ports) {
        let queues = fds
            .by_ref()
            .take(workers)
            .map(crate::io::Queue::from)
            .collect();
        ports.push(Port::adopt(
            port,
            queues,
            offered.created,
            offered.persistent,
            offer.vnet_hdr,
            offer.udp_gso,
        ));
    }
    let listener = std::os::unix::net::UnixListener::from(
        fds.next()
            .ok_or_else(|| anyhow::anyhow!("no control socket handed over"))?,
    );
    let socket = &config.gateway.control_socket;
    let bound = if *socket == offer.socket {
        BoundSocket::adopt(socket, listener)?
    } else {
        BoundSocket::bind(socket, config.gateway.control_socket_group.as_deref())?
    };
    // The metrics socket goes on if the address stayed; otherwise the
    // gateway binds the configured one (the old process lets go of its own).
    let metrics = match offer.metrics.and_then(|_| fds.next()) {
        Some(fd) if offer.metrics == config.metrics_listen => {
            Some(MetricsListener::adopt(std::net::TcpListener::from(fd))?)
        }
        _ => None,
    };
    // The sync socket likewise, if `[sync] listen` stayed (SPEC §15).
    let sync = match offer.sync.and_then(|_| fds.next()) {
        Some(fd) if offer.sync == config.sync.as_ref().map(|s| s.listen) => {
            Some(std::net::UdpSocket::from(fd))
        }
        _ => None,
    };
    restart::check(&received.state, config)?;
    Ok(Opened {
        carried: Some(received.state),
        bound,
        ports,
        metrics,
        sync,
    })
}
