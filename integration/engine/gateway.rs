//! The gateway around the flow rules: packets that never reach a flow
//! (no route, route loops, malformed input, unknown ports) must be counted
//! rather than lost silently, and the flow table must be one table however
//! many workers feed it, since a reply may arrive on another queue.

use crate::common::*;
use std::sync::Arc;
use tunwall::engine::{HostModel, Verdict};
use tunwall::flow::FlowConfig;
use tunwall::policy::DefaultPolicy;
use tunwall::reason::DropReason;

#[test]
fn no_route_route_loops_and_malformed_packets_are_counted() {
    let mut h = Harness::default_flows();
    // wan routes everything outside lan: a packet from wan to the outside would go back out of wan.
    assert_eq!(
        h.inb(udp(ep(S4, 1), ep("198.19.0.1", 2), b"x")),
        Verdict::Drop(DropReason::RouteLoop)
    );
    assert_eq!(
        h.send(LAN, vec![0x45, 0, 0]),
        Verdict::Drop(DropReason::Truncated)
    );
    assert_eq!(
        h.send(LAN, vec![0x75; 40]),
        Verdict::Drop(DropReason::BadIpVersion)
    );
    assert_eq!(
        h.send(7, udp(ep(C4, 1), ep(S4, 2), b"x")),
        Verdict::Drop(DropReason::UnknownPort)
    );
    assert_eq!(h.discards(DropReason::Truncated), 1);
    assert_eq!(h.discards(DropReason::BadIpVersion), 1);
    assert_eq!(h.discards(DropReason::RouteLoop), 1);
    assert_eq!(h.discards(DropReason::UnknownPort), 1);
    // Without a default route, an unrouted destination is no_route.
    let gw = tunwall::engine::Gateway::new(
        tunwall::engine::GatewayConfig {
            ports: vec![
                tunwall::route::PortSpec::new(
                    "lan",
                    tunwall::flow::Zone::Inside,
                    &["198.18.1.0/24"],
                ),
                tunwall::route::PortSpec::new(
                    "wan",
                    tunwall::flow::Zone::Outside,
                    &["198.18.2.0/24"],
                ),
            ],
            flows: FlowConfig::with_max_flows(8),
            host_model: HostModel::Weak,
            shards: None,
        },
        Arc::new(DefaultPolicy::default()),
        1,
    );
    let mut engine = gw.engine(0);
    let mut p = udp(ep(C4, 1), ep("198.19.0.1", 2), b"x");
    assert_eq!(
        engine.process(tunwall::time::Instant::ZERO, LAN, &mut p),
        Verdict::Drop(DropReason::NoRoute)
    );
    assert_eq!(engine.stats().discarded(DropReason::NoRoute), 1);
    assert_eq!(gw.flows_active(), 0);
}

#[test]
fn a_flow_created_by_one_worker_is_ridden_by_the_other() {
    let gw = tunwall::engine::Gateway::new(
        tunwall::engine::GatewayConfig {
            ports: ports(),
            flows: FlowConfig::with_max_flows(64),
            host_model: HostModel::Weak,
            shards: None,
        },
        Arc::new(DefaultPolicy::default()),
        2,
    );
    assert_eq!(gw.table().groups(), 2);
    let mut w0 = gw.engine(0);
    let mut w1 = gw.engine(1);
    let now = tunwall::time::Instant::ZERO;
    let query = udp(ep(C4, 5000), ep(S4, 53), b"q");
    assert_eq!(
        w0.process(now, LAN, &mut query.clone()),
        Verdict::Forward(WAN)
    );
    // The reply reaches the other worker (another queue): it rides the same flow.
    assert_eq!(
        w1.process(now, WAN, &mut udp(ep(S4, 53), ep(C4, 5000), b"a")),
        Verdict::Forward(LAN)
    );
    assert_eq!(gw.flows_active(), 1);
    assert_eq!(gw.flows(now)[0].inbound.0, 1);
    // Related ICMP errors are found in any worker's group.
    assert_eq!(
        w1.process(now, WAN, &mut icmp_error(S4, C4, 3, &query)),
        Verdict::Forward(LAN)
    );
    // Each worker expires and closes only its own group; together they close everything.
    w1.close_all(now, false);
    assert_eq!(gw.flows_active(), 1);
    w0.close_all(now, false);
    assert_eq!(gw.flows_active(), 0);
}
