use super::*;
use crate::flow::FlowConfig;

#[test]
fn a_queue_never_grows_past_its_preallocated_buffer() {
    let config = FlowConfig {
        pend_queue_packets: 4,
        pend_queue_bytes: 100,
        ..FlowConfig::with_max_flows(16)
    };
    let mut queue = Queue::new(&config);
    let capacity = (queue.data.capacity(), queue.packets.capacity());
    let packet = crate::packet::parse(&crate::testkit::packets::udp(
        crate::testkit::packets::ep("198.18.1.10", 1000),
        crate::testkit::packets::ep("198.18.2.20", 53),
        b"x",
    ))
    .expect("a valid packet");
    let bytes = [0u8; 40];
    let header = [0u8; 12];
    let arrival = |len: usize| Arrival {
        now: Instant::ZERO,
        port: 0,
        zone: crate::flow::Zone::Inside,
        packet: &packet,
        egress: 1,
        egress_zone: crate::flow::Zone::Outside,
        header: &header,
        bytes: &bytes[..len],
        route_error: None,
    };
    assert!(queue.push(&config, &arrival(40), false));
    assert!(queue.push(&config, &arrival(40), false));
    assert!(!queue.push(&config, &arrival(40), false), "bytes bound");
    assert!(queue.push(&config, &arrival(20), false));
    assert!(queue.push(&config, &arrival(0), false));
    assert!(!queue.push(&config, &arrival(0), false), "packets bound");
    assert_eq!((queue.data.capacity(), queue.packets.capacity()), capacity);
    assert_eq!(queue.ip_bytes, 100);
}
