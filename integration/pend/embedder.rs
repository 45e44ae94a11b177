//! Pending flows seen from outside the worker: an embedder's callout that
//! completes from another thread (or before its classification returns),
//! which layers a policy may pend at, and a pending flow carried to another
//! process (SPEC §13). These cross the worker's boundary, which the
//! virtual-clock tests of the parent never do.

use super::{ASK, compile, compile_with, harness, pending_id};
use crate::common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tunwall::engine::{PendError, Verdict};
use tunwall::flow::{FlowConfig, FlowState};
use tunwall::policy::{
    Action, Authorizer, Callout, CalloutRegistry, CalloutResult, ClassifyRequest, Layer, PolicyNote,
};

/// An embedder's callout pends every flow and hands its id to an
/// authorizer thread, which completes it: the worker is woken and releases
/// the packets itself.
struct Remote {
    ids: Mutex<std::sync::mpsc::Sender<u64>>,
}

impl Callout for Remote {
    fn classify(
        &self,
        _filter: &Arc<str>,
        request: &ClassifyRequest,
        _notes: &mut Vec<PolicyNote>,
    ) -> CalloutResult {
        if let Some(id) = request.flow_id {
            let _ = self.ids.lock().unwrap().send(id);
        }
        CalloutResult::Pend
    }
}

#[test]
fn an_embedder_completes_a_flow_from_another_thread() {
    let (tx, rx) = std::sync::mpsc::channel();
    let remote = Arc::new(Remote {
        ids: Mutex::new(tx),
    });
    let mut registry = CalloutRegistry::default();
    let shared = Arc::clone(&remote);
    registry.register("remote", move |_| {
        Ok(Arc::clone(&shared) as Arc<dyn Callout>)
    });
    let text = r#"
[[filter]]
name = "authz"
layer = "auth_connect"
action = "callout"
callout = "remote"
"#;
    let mut h = harness(
        FlowConfig::with_max_flows(64),
        compile_with(text, &registry, None),
    );
    let woken = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&woken);
    h.gw.set_waker(0, move || flag.store(true, Ordering::SeqCst));
    let gw = Arc::clone(&h.gw);
    let authorizer = std::thread::spawn(move || {
        let id = rx.recv().expect("a flow to decide");
        gw.complete(id, Action::Permit)
    });
    let packet = udp(ep(C4, 5000), ep(S4, 53), b"q");
    assert_eq!(h.out(packet.clone()), Verdict::Held);
    let id = h.only_flow().id;
    assert_eq!(authorizer.join().unwrap(), Ok(()));
    assert!(woken.load(Ordering::SeqCst), "the owner is woken");
    h.apply_completions();
    assert_eq!(h.released, vec![(WAN, packet)]);
    assert_eq!(h.only_flow().id, id, "the id the callout saw");
}

/// The extreme of that race: the callout completes the flow before its
/// classification has even returned. The decision is kept and applied.
struct Immediate {
    gw: std::sync::OnceLock<Arc<tunwall::engine::Gateway>>,
    answers: Mutex<Vec<Result<(), PendError>>>,
}

impl Callout for Immediate {
    fn classify(
        &self,
        _filter: &Arc<str>,
        request: &ClassifyRequest,
        _notes: &mut Vec<PolicyNote>,
    ) -> CalloutResult {
        if let (Some(gw), Some(id)) = (self.gw.get(), request.flow_id) {
            let mut answers = self.answers.lock().unwrap();
            answers.push(gw.complete(id, Action::Permit));
            answers.push(gw.complete(id, Action::Block));
        }
        CalloutResult::Pend
    }
}

#[test]
fn a_completion_during_the_classification_is_applied_once_pending() {
    let immediate = Arc::new(Immediate {
        gw: std::sync::OnceLock::new(),
        answers: Mutex::new(Vec::new()),
    });
    let mut registry = CalloutRegistry::default();
    let shared = Arc::clone(&immediate);
    registry.register("immediate", move |_| {
        Ok(Arc::clone(&shared) as Arc<dyn Callout>)
    });
    let text = "[[filter]]\nname = \"now\"\nlayer = \"auth_connect\"\naction = \"callout\"\ncallout = \"immediate\"\n";
    let mut h = harness(
        FlowConfig::with_max_flows(64),
        compile_with(text, &registry, None),
    );
    let _ = immediate.gw.set(Arc::clone(&h.gw));
    let packet = udp(ep(C4, 5000), ep(S4, 53), b"q");
    assert_eq!(h.out(packet.clone()), Verdict::Held);
    assert_eq!(
        *immediate.answers.lock().unwrap(),
        vec![Ok(()), Err(PendError::Decided)]
    );
    assert_eq!(h.gw.pending()[0].decision, Some(Action::Permit));
    h.apply_completions();
    assert_eq!(h.released, vec![(WAN, packet)]);
    // An id nobody classifies or holds stays unknown.
    assert_eq!(
        h.gw.complete(12_345, Action::Permit),
        Err(PendError::Unknown)
    );
}

/// The engine skips the pend store's bookkeeping where nothing can pend:
/// the policy says a layer may pend only where a callout sits.
#[test]
fn a_policy_may_pend_only_at_a_layer_with_a_callout() {
    let asked = compile(ASK, None);
    assert!(asked.may_pend(Layer::AuthConnect));
    assert!(asked.may_pend(Layer::AuthRecvAccept));
    assert!(!asked.may_pend(Layer::IcmpError));
    let one_side = "[[filter]]\nname = \"now\"\nlayer = \"auth_connect\"\naction = \"callout\"\ncallout = \"ask\"\n";
    let one_side = compile(one_side, None);
    assert!(one_side.may_pend(Layer::AuthConnect));
    assert!(!one_side.may_pend(Layer::AuthRecvAccept));
    let plain = compile(
        "[[filter]]\nname = \"web\"\nlayer = \"auth_recv_accept\"\naction = \"permit\"\nlocal_port = 80\nprotocol = \"tcp\"\n",
        None,
    );
    assert!(!plain.may_pend(Layer::AuthConnect));
    assert!(!plain.may_pend(Layer::AuthRecvAccept));
    assert!(!tunwall::policy::DefaultPolicy::default().may_pend(Layer::AuthConnect));
    // Without a callout a flow is created as before, and an id nobody
    // classifies stays unknown.
    let mut h = harness(FlowConfig::with_max_flows(64), plain);
    let packet = udp(ep(C4, 5000), ep(S4, 53), b"q");
    assert_eq!(h.out(packet), Verdict::Forward(WAN));
    assert_eq!(h.gw.flows_active(), 1);
    assert_eq!(h.gw.complete(1, Action::Permit), Err(PendError::Unknown));
}

/// SPEC §13: a pending flow carried to another process waits again for the
/// rest of its pend timeout (its held packets stay behind), holds new
/// packets, and a decision there releases them; a flow completed before
/// the carry keeps its decision.
#[test]
fn a_pending_flow_is_carried_over_and_waits_again() {
    use tunwall::state::Container;
    let policy = compile(ASK, None);
    let mut a = harness(FlowConfig::with_max_flows(64), Arc::clone(&policy));
    a.now = tunwall::time::Instant::from_secs(100);
    let (client, server) = (ep(C4, 5000), ep(S4, 22));
    assert_eq!(a.out(udp(client, server, b"one")), Verdict::Held);
    let decided = ep(C4, 5001);
    assert_eq!(a.out(udp(decided, server, b"x")), Verdict::Held);
    let decided_id = a.gw.pending()[1].flow.id;
    a.gw.complete(decided_id, Action::Permit).expect("pending");
    a.apply_completions();
    a.advance(Duration::from_secs(4));
    let id = pending_id(&a);
    let bytes = a.snapshot();

    let mut b = harness(FlowConfig::with_max_flows(64), policy);
    b.now = a.now + Duration::from_secs(1);
    let container = Container::parse(&bytes).expect("container");
    let done =
        b.gw.restore(b.now, &container, Duration::from_secs(1))
            .expect("restore");
    assert_eq!(done.flows, 2);
    let pending = b.gw.pending();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].flow.id, id);
    assert_eq!(pending[0].filter.as_deref(), Some("ask-ssh"));
    assert_eq!(pending[0].packets, 0, "held packets stay behind");
    assert_eq!(
        pending[0].deadline,
        b.now + Duration::from_secs(5),
        "10 s, less 4 s before and 1 s outside"
    );
    assert_eq!(
        b.flows().iter().find(|f| f.id == id).unwrap().state,
        FlowState::Pending
    );
    // The completed flow rides on with its decision.
    assert_eq!(b.out(udp(decided, server, b"y")), Verdict::Forward(WAN));
    assert_eq!(b.out(udp(client, server, b"two")), Verdict::Held);
    b.gw.complete(id, Action::Permit)
        .expect("pending in the new gateway");
    b.apply_completions();
    assert_eq!(b.released, vec![(WAN, udp(client, server, b"two"))]);
    assert!(b.created().is_empty(), "no creation for carried flows");

    // Not decided, it times out with the rest of its timeout.
    let (mut c, _) = {
        let mut c = harness(FlowConfig::with_max_flows(64), compile(ASK, None));
        c.now = b.now;
        let done = c.gw.restore(c.now, &container, Duration::from_secs(1));
        (c, done)
    };
    c.advance(Duration::from_millis(4_999));
    assert_eq!(c.gw.pending().len(), 1);
    c.advance(Duration::from_millis(1));
    assert!(c.gw.pending().is_empty(), "timed out");
}
