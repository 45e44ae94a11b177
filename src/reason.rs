//! Why a packet was dropped and why a flow ended.
//!
//! Every drop in tunwall has exactly one [`DropReason`] (pf's `PFRES_*`
//! analogue) and every closed flow exactly one [`CloseReason`]. Both are
//! dense enums so counters can be plain arrays indexed by the discriminant.

macro_rules! named_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vmeta])* $variant,)* }

        impl $name {
            /// Every value, in discriminant order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];
            /// The number of values (the length of a counter array).
            pub const COUNT: usize = Self::ALL.len();

            /// The stable snake_case name used in JSON, metrics and events.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)* }
            }

            /// Index into a counter array.
            pub const fn index(self) -> usize { self as usize }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named_enum;

named_enum! {
    /// Why a packet was not forwarded.
    pub enum DropReason {
        /// Fewer bytes than the headers claim.
        Truncated => "truncated",
        /// The first nibble is neither 4 nor 6.
        BadIpVersion => "bad_ip_version",
        /// An IP header or extension header that cannot be walked.
        MalformedIp => "malformed_ip",
        /// A TCP, UDP or ICMP header that is too short or inconsistent.
        MalformedTransport => "malformed_transport",
        /// A first fragment too short to hold the transport header fields we classify on.
        FragmentTooSmall => "fragment_too_small",
        /// A later fragment whose first fragment was never seen.
        FragmentWithoutFirst => "fragment_without_first",
        /// A later fragment whose first fragment was dropped.
        FragmentOfDropped => "fragment_of_dropped",
        /// The fragment table was full when a first fragment had to be remembered.
        FragmentTableFull => "fragment_table_full",
        /// No port routes the destination address.
        NoRoute => "no_route",
        /// The route points back out of the port the packet arrived on.
        RouteLoop => "route_loop",
        /// A new flow found the table full and nothing could be evicted.
        FlowTableFull => "flow_table_full",
        /// A TCP segment that is not a SYN matched no flow.
        TcpNoFlow => "tcp_no_flow",
        /// A TCP segment outside the tracked sequence window.
        TcpOutOfWindow => "tcp_out_of_window",
        /// A RST whose sequence number is outside the receive window (blind RST).
        TcpRstOutOfWindow => "tcp_rst_out_of_window",
        /// A TCP segment that makes no sense in the flow's state (e.g. SYN-ACK before SYN).
        TcpInvalidState => "tcp_invalid_state",
        /// A TCP segment with an impossible flag combination (SYN+RST, SYN+FIN, none).
        TcpBadFlags => "tcp_bad_flags",
        /// Blocked by a filter or the default action at `auth_connect`.
        AuthConnectBlocked => "auth_connect_blocked",
        /// Blocked by a filter or the default action at `auth_recv_accept`.
        AuthRecvAcceptBlocked => "auth_recv_accept_blocked",
        /// An ICMP error that matches no flow, blocked at the `icmp_error` layer.
        IcmpErrorBlocked => "icmp_error_blocked",
        /// Reauthorization of a live flow was blocked; the flow is torn down.
        ReauthBlocked => "reauth_blocked",
        /// A callout vetoed a hard permit.
        Vetoed => "vetoed",
        /// Strong host model: a packet of a flow arrived on another port of the same zone.
        WrongInterface => "wrong_interface",
        /// The arrival port index is not a configured port.
        UnknownPort => "unknown_port",
        /// A packet of a pending flow beyond its queue's bounds (SPEC §10).
        PendQueueFull => "pend_queue_full",
        /// A new flow a callout pended while `pend_max_flows` flows were pending.
        PendLimit => "pend_limit",
        /// A translated flow needed a port (or ICMP id) and none was free.
        NatPortsExhausted => "nat_ports_exhausted",
        /// A redirect filter has no `to_address` of the packet's IP family.
        NatNoAddress => "nat_no_address",
        /// The translated tuple is already another flow's.
        NatConflict => "nat_conflict",
        /// A callout pended a translated flow, which cannot be pended.
        NatPended => "nat_pended",
    }
}

named_enum! {
    /// Why a flow was removed (its `endpoint_closure` indication).
    pub enum CloseReason {
        /// Both FINs were seen and the time_wait timeout passed (or a new SYN reused the tuple).
        TcpFin => "tcp_fin",
        /// An in-window RST was seen and the closed-state timeout passed (or a new SYN reused the tuple).
        TcpRst => "tcp_rst",
        /// No packet for the (possibly adaptive) idle timeout.
        IdleTimeout => "idle_timeout",
        /// Reauthorization after a policy or interface change blocked the flow.
        ReauthBlocked => "reauth_blocked",
        /// Removed to make room for a new flow while the table was full.
        Evicted => "evicted",
        /// The gateway shut down.
        Shutdown => "shutdown",
        /// An operator closed it (`tunwall kill`).
        Admin => "admin",
    }
}
