//! `tunwall explain -c FILE PACKET` (SPEC §12): what the policy in a file
//! decides for one first packet, offline.
//!
//! Nothing is re-implemented: the packet is built as bytes and run through
//! a real engine of a gateway made from the file, whose authorizer is the
//! compiled policy asked through [`Policy::classify_traced`], the very
//! evaluation the gateway runs, with a recorder as its trace; so are the
//! redirect layers, through [`Policy::redirect_traced`]. The verdict and the
//! translation are the engine's.

use crate::config::Config;
use crate::engine::{Gateway, Verdict};
use crate::event::EventKind;
use crate::flow::FlowInfo;
use crate::flow::info::TranslationInfo;
use crate::policy::trace::{Standing, Trace, TraceStep};
use crate::policy::{
    Action, Authorizer, ClassifyFlags, ClassifyRequest, Decision, Layer, Policy, PolicyNote,
    Redirect,
};
use crate::reason::DropReason;
use crate::time::Instant;
use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The packet of an `explain` command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExplainPacket {
    /// IP protocol number.
    pub protocol: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (TCP, UDP).
    pub src_port: u16,
    /// Destination port (TCP, UDP).
    pub dst_port: u16,
    /// ICMP type, code and identifier.
    pub icmp: (u8, u8, u16),
    /// The name of the arrival port.
    pub arrival: String,
    /// Classify as a reauthorization (`flags reauthorize`).
    pub reauthorize: bool,
}

const SYNTAX: &str = "PROTO SRC -> DST [type T code C id I] arrival PORT [flags reauthorize], \
     e.g. 'tcp 198.18.1.10:5555 -> 198.18.2.20:22 arrival lan', \
     'icmp 198.18.1.10 -> 198.18.2.20 type 8 code 0 id 7 arrival lan', \
     'udp [fd00:1::10]:5353 -> [fd00:2::20]:53 arrival lan'";

fn is_icmp(protocol: u8) -> bool {
    protocol == 1 || protocol == 58
}

/// `ADDR:PORT`, `[V6]:PORT`, or (without ports) `ADDR` / `[V6]`.
fn endpoint(text: &str, ports: bool) -> Result<(IpAddr, u16), String> {
    let bad = || {
        if ports {
            format!("\"{text}\": expected ADDRESS:PORT ([IPv6]:PORT)")
        } else {
            format!("\"{text}\": expected an address")
        }
    };
    if !ports {
        let bare = text.trim_start_matches('[').trim_end_matches(']');
        return Ok((bare.parse().map_err(|_| bad())?, 0));
    }
    let (addr, port) = match text.strip_prefix('[') {
        Some(rest) => rest.split_once("]:").ok_or_else(bad)?,
        // An IPv6 address with a port needs its brackets.
        None => text
            .rsplit_once(':')
            .filter(|(addr, _)| !addr.contains(':'))
            .ok_or_else(bad)?,
    };
    Ok((
        addr.parse().map_err(|_| bad())?,
        port.parse().map_err(|_| bad())?,
    ))
}

impl ExplainPacket {
    /// Parses the packet syntax of SPEC §12; the error says what is wrong.
    pub fn parse(text: &str) -> Result<ExplainPacket, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let err = |what: String| format!("packet: {what}; the syntax is {SYNTAX}");
        if words.len() < 4 || words[2] != "->" {
            return Err(err("expected PROTO SRC -> DST".into()));
        }
        let protocol = match words[0] {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            "icmpv6" => 58,
            n => n
                .parse()
                .map_err(|_| err(format!("unknown protocol \"{n}\"")))?,
        };
        let ports = protocol == 6 || protocol == 17;
        let (src, src_port) = endpoint(words[1], ports).map_err(err)?;
        let (dst, dst_port) = endpoint(words[3], ports).map_err(err)?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(err("the addresses are of different families".into()));
        }
        let protocol = match (protocol, src.is_ipv4()) {
            (1, false) => 58,
            (58, true) => 1,
            (p, _) => p,
        };
        let echo = if src.is_ipv4() { 8 } else { 128 };
        let mut packet = ExplainPacket {
            protocol,
            src,
            dst,
            src_port,
            dst_port,
            icmp: (echo, 0, 0),
            arrival: String::new(),
            reauthorize: false,
        };
        let mut rest = words[4..].iter();
        while let Some(&word) = rest.next() {
            let value = rest
                .next()
                .ok_or_else(|| err(format!("\"{word}\" needs a value")))?;
            let number = |max: u16| {
                value
                    .parse::<u16>()
                    .ok()
                    .filter(|v| *v <= max)
                    .ok_or_else(|| err(format!("{word} {value}: not a number up to {max}")))
            };
            match word {
                "type" | "code" | "id" if !is_icmp(protocol) => {
                    return Err(err(format!("{word} is for ICMP packets")));
                }
                "type" => packet.icmp.0 = number(255)? as u8,
                "code" => packet.icmp.1 = number(255)? as u8,
                "id" => packet.icmp.2 = number(u16::MAX)?,
                "arrival" => packet.arrival = value.to_string(),
                "flags" => {
                    for flag in value.split(',') {
                        match flag {
                            "reauthorize" => packet.reauthorize = true,
                            f => return Err(err(format!("unknown flag \"{f}\" (reauthorize)"))),
                        }
                    }
                }
                w => return Err(err(format!("unexpected \"{w}\""))),
            }
        }
        if packet.arrival.is_empty() {
            return Err(err("the arrival port is missing (arrival NAME)".into()));
        }
        Ok(packet)
    }

    /// The packet as bytes: a TCP SYN, a UDP datagram, an ICMP message (an
    /// ICMP error quotes a datagram from the destination back to the
    /// source), or an empty datagram of another protocol.
    pub fn bytes(&self) -> Vec<u8> {
        let builder = match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            // Refused by `parse`.
            _ => return Vec::new(),
        };
        let mut out = Vec::new();
        let (icmp_type, code, id) = self.icmp;
        let error = match self.protocol {
            1 => matches!(icmp_type, 3 | 4 | 5 | 11 | 12),
            58 => icmp_type < 128,
            _ => false,
        };
        let quoted = if error {
            let mut reverse = ExplainPacket {
                protocol: 17,
                src: self.dst,
                dst: self.src,
                src_port: 53,
                dst_port: 53,
                ..self.clone()
            };
            reverse.reauthorize = false;
            let mut q = reverse.bytes();
            q.truncate(if self.src.is_ipv4() { 28 } else { 48 });
            q
        } else {
            b"explain!".to_vec()
        };
        let rest = if error {
            [0; 4]
        } else {
            let [hi, lo] = id.to_be_bytes();
            [hi, lo, 0, 1]
        };
        let written = match self.protocol {
            6 => builder
                .tcp(self.src_port, self.dst_port, 1, 64240)
                .syn()
                .write(&mut out, &[]),
            17 => builder
                .udp(self.src_port, self.dst_port)
                .write(&mut out, b"explain!"),
            1 => builder
                .icmpv4(Icmpv4Type::Unknown {
                    type_u8: icmp_type,
                    code_u8: code,
                    bytes5to8: rest,
                })
                .write(&mut out, &quoted),
            58 => builder
                .icmpv6(Icmpv6Type::Unknown {
                    type_u8: icmp_type,
                    code_u8: code,
                    bytes5to8: rest,
                })
                .write(&mut out, &quoted),
            p => builder.write(&mut out, etherparse::IpNumber(p), &[]),
        };
        if written.is_err() {
            out.clear();
        }
        out
    }
}

/// One step of a classification, owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not evaluated: its sublayer had decided.
    SublayerDecided(String),
    /// Evaluated, a condition failed.
    Mismatch(String, &'static str),
    /// Evaluated and matched; what it returned (`None`: callout continue).
    Matched(String, Option<(Action, bool, bool)>),
    /// An arbitration merge.
    Arbitrated {
        /// The sublayer's deciding filter.
        filter: String,
        /// Before.
        before: Standing,
        /// After.
        after: Standing,
        /// A veto.
        veto: bool,
    },
    /// The layer default applied.
    Default(Action),
    /// Its callout pended the flow.
    Pended(String),
    /// At a redirect layer, the first match: it translates (`true`) or exempts.
    FirstMatch(String, bool),
}

/// A layer's answer.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// An auth (or `icmp_error`) layer's decision.
    Decision(Decision),
    /// A redirect layer's: the translation it asks for, if any.
    Redirect(Option<Redirect>),
}

/// One classification the engine asked for while deciding the packet.
#[derive(Clone, Debug)]
pub struct Classification {
    /// What was classified (the engine's request).
    pub request: ClassifyRequest,
    /// The layer's filters in evaluation order: (name, sublayer).
    pub filters: Vec<(String, String)>,
    /// Which of them the index offered.
    pub candidates: Vec<u32>,
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// The layer's answer.
    pub outcome: Outcome,
}

impl Classification {
    /// The decision of an auth layer (`None` at a redirect layer).
    pub fn decision(&self) -> Option<&Decision> {
        match &self.outcome {
            Outcome::Decision(d) => Some(d),
            Outcome::Redirect(_) => None,
        }
    }
}

#[derive(Default)]
struct Recorder {
    candidates: Vec<u32>,
    steps: Vec<Step>,
}

impl Trace for Recorder {
    fn step(&mut self, step: TraceStep<'_>) {
        let step = match step {
            TraceStep::Candidates { ranks, .. } => {
                self.candidates = ranks.to_vec();
                return;
            }
            TraceStep::SublayerDecided { filter, .. } => Step::SublayerDecided(filter.into()),
            TraceStep::Mismatch {
                filter, condition, ..
            } => Step::Mismatch(filter.into(), condition),
            TraceStep::Matched { filter, result, .. } => Step::Matched(filter.into(), result),
            TraceStep::Arbitrated {
                filter,
                before,
                after,
                veto,
            } => Step::Arbitrated {
                filter: filter.into(),
                before,
                after,
                veto,
            },
            TraceStep::Default { action } => Step::Default(action),
            TraceStep::Pended { filter, .. } => Step::Pended(filter.into()),
            TraceStep::FirstMatch {
                filter, translates, ..
            } => Step::FirstMatch(filter.into(), translates),
        };
        self.steps.push(step);
    }
}

/// The compiled policy behind a recorder: the engine's authorizer while
/// it decides the explained packet.
struct Tracing {
    policy: Arc<Policy>,
    reauthorize: bool,
    seen: Mutex<Vec<Classification>>,
}

impl Tracing {
    fn record(&self, request: ClassifyRequest, recorder: Recorder, outcome: Outcome) {
        let filters = self
            .policy
            .layer_filters(request.layer)
            .into_iter()
            .map(|(f, s)| (f.to_string(), s.to_string()))
            .collect();
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Classification {
                request,
                filters,
                candidates: recorder.candidates,
                steps: recorder.steps,
                outcome,
            });
    }
}

impl Authorizer for Tracing {
    fn generation(&self, layer: Layer) -> u32 {
        self.policy.generation(layer)
    }

    fn classify(&self, request: &ClassifyRequest, notes: &mut Vec<PolicyNote>) -> Decision {
        let mut request = *request;
        if self.reauthorize {
            request.flags.insert(ClassifyFlags::REAUTHORIZE);
        }
        let mut recorder = Recorder::default();
        let decision = self.policy.classify_traced(&request, notes, &mut recorder);
        self.record(request, recorder, Outcome::Decision(decision.clone()));
        decision
    }

    fn has_redirects(&self) -> bool {
        self.policy.has_redirects()
    }

    fn redirect(&self, request: &ClassifyRequest) -> Option<Redirect> {
        let mut recorder = Recorder::default();
        let redirect = self.policy.redirect_traced(request, &mut recorder);
        self.record(*request, recorder, Outcome::Redirect(redirect.clone()));
        redirect
    }

    fn identity_change_only(&self, layer: Layer, since: u32) -> bool {
        self.policy.identity_change_only(layer, since)
    }

    fn flow_created(&self, filter: &Arc<str>) {
        self.policy.flow_created(filter);
    }

    fn indicates(&self, layer: Layer) -> bool {
        self.policy.indicates(layer)
    }

    fn may_pend(&self, layer: Layer) -> bool {
        self.policy.may_pend(layer)
    }

    fn indicate(&self, layer: Layer, flow: &FlowInfo, now: Instant, notes: &mut Vec<PolicyNote>) {
        self.policy.indicate(layer, flow, now, notes);
    }
}

/// What `explain` found.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The packet.
    pub packet: ExplainPacket,
    /// The port names, by index.
    pub ports: Vec<String>,
    /// Every classification, in order.
    pub classifications: Vec<Classification>,
    /// The engine's verdict.
    pub verdict: Verdict,
    /// The translation of the flow the packet created (SPEC §9): its
    /// endpoints as seen on the outside port, and the redirect filter.
    pub translation: Option<TranslationInfo>,
    /// For a drop: the layer and filter the discard names.
    pub discard: Option<(Option<Layer>, Option<Arc<str>>)>,
    /// Vetoes and callout logs the policy noted, as event names and filters.
    pub notes: Vec<(String, String)>,
}

/// Runs `packet` through an engine of the gateway `config` describes,
/// deciding with `policy`.
pub fn explain(
    config: &Config,
    policy: Arc<Policy>,
    packet: &ExplainPacket,
) -> Result<Explanation, String> {
    let ports = config.port_names();
    let arrival = ports
        .iter()
        .position(|p| *p == packet.arrival)
        .ok_or_else(|| {
            format!(
                "packet: unknown arrival port \"{}\" (ports: {})",
                packet.arrival,
                ports.join(", ")
            )
        })?;
    let tracing = Arc::new(Tracing {
        policy,
        reauthorize: packet.reauthorize,
        seen: Mutex::new(Vec::new()),
    });
    let mut gw_config = config.gateway_config();
    gw_config.shards = Some(1);
    let gw = Gateway::new(gw_config, Arc::clone(&tracing) as Arc<dyn Authorizer>, 1);
    let mut engine = gw.engine(0);
    let mut bytes = packet.bytes();
    let verdict = engine.process(Instant::ZERO, arrival as u8, &mut bytes);
    let mut discard = None;
    let mut notes = Vec::new();
    for event in engine.drain_events() {
        match event.kind {
            EventKind::Discard { layer, filter, .. } => discard = Some((layer, filter)),
            EventKind::Veto { filter, .. } => notes.push(("veto".into(), filter.to_string())),
            EventKind::CalloutLog { filter, .. } => {
                notes.push(("callout_log".into(), filter.to_string()))
            }
            _ => {}
        }
    }
    let classifications =
        std::mem::take(&mut *tracing.seen.lock().unwrap_or_else(|p| p.into_inner()));
    // The engine made at most this one flow.
    let translation = gw
        .flows(Instant::ZERO)
        .into_iter()
        .find_map(|f| f.translation);
    Ok(Explanation {
        packet: packet.clone(),
        ports,
        classifications,
        verdict,
        translation,
        discard,
        notes,
    })
}

impl Explanation {
    /// The drop reason, if the packet was dropped.
    pub fn dropped(&self) -> Option<DropReason> {
        match self.verdict {
            Verdict::Drop(r) => Some(r),
            Verdict::Forward(_) | Verdict::Held => None,
        }
    }
}
