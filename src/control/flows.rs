//! `tunwall flows` over the control socket, streamed (SPEC §12): the daemon
//! walks the flow table shard by shard and writes each shard's matching
//! flows through a bounded buffer before it looks at the next, so a
//! listing of a million flows never sits in memory at once, on either side.
//!
//! The answer is one JSON array with one flow per line (`[`, the flows
//! separated by `,` at the end of their line, `]`): the CLI passes it
//! through unchanged for `--json` (a valid JSON document, streamed) and
//! renders it line by line otherwise. `--count` is answered `{"count": N}`;
//! a bad filter `{"ok": false, "error": …}`.

use crate::engine::Gateway;
use crate::flow::FlowSelector;
use crate::policy::Identities;
use crate::render;
use crate::time::Instant;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

/// The output buffer of one listing: a slow reader blocks the listing at
/// this much, not the gateway (the shard lock is released before writing).
pub const OUTPUT_BUFFER: usize = 64 * 1024;

/// A `flows` request: which flows, how many, or only their number.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// The filters.
    pub selector: FlowSelector,
    /// At most this many flows.
    pub limit: Option<u64>,
    /// Only the number of flows.
    pub count: bool,
    /// The identities, for each flow's `local_identity` / `remote_identity`.
    pub identities: Identities,
}

impl Listing {
    /// The listing a request asks for, its names resolved by `selector`.
    pub fn of_request(request: &Value, selector: FlowSelector) -> Listing {
        Listing {
            selector,
            limit: request.get("limit").and_then(Value::as_u64),
            count: request.get("count").and_then(Value::as_bool) == Some(true),
            identities: Identities::default(),
        }
    }
}

/// Writes the answer to `listing` to `out`; returns how many flows it had.
pub fn write_flows(
    gw: &Gateway,
    now: Instant,
    listing: &Listing,
    out: &mut dyn Write,
) -> std::io::Result<u64> {
    let ports = gw.port_names();
    let limit = listing.limit.unwrap_or(u64::MAX);
    let mut n = 0u64;
    let mut chunk = Vec::new();
    if !listing.count {
        out.write_all(b"[")?;
    }
    for idx in 0..gw.table().shard_count() {
        if n >= limit {
            break;
        }
        chunk.clear();
        gw.shard_flows(idx, now, &listing.selector, &mut chunk);
        for f in chunk
            .iter()
            .take((limit - n).min(usize::MAX as u64) as usize)
        {
            if !listing.count {
                out.write_all(if n == 0 { b"\n" } else { b",\n" })?;
                let mut flow = render::json::flow(f, &ports, now);
                let (local, remote) = listing.identities.of_flow(f);
                render::json::flow_identities(&mut flow, local, remote);
                serde_json::to_writer(&mut *out, &flow)?;
            }
            n += 1;
        }
    }
    if listing.count {
        writeln!(out, "{}", json!({ "count": n }))?;
    } else {
        out.write_all(b"\n]\n")?;
    }
    out.flush()?;
    Ok(n)
}

/// Sends a `flows` request and writes the answer to `out`: the JSON as it
/// comes (`json`), the number alone (`--count`), or a table.
pub fn print_flows(
    socket: &Path,
    request: &Value,
    json: bool,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let mut stream = super::connect(socket)?;
    writeln!(stream, "{request}")?;
    let mut lines = BufReader::new(stream).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    if first != "[" {
        let answer: Value = serde_json::from_str(&first).map_err(|e| {
            std::io::Error::other(format!("bad answer from {}: {e}", socket.display()))
        })?;
        if let Some(n) = answer.get("count") {
            return writeln!(out, "{n}");
        }
        let error = answer.get("error").and_then(Value::as_str).unwrap_or("");
        return Err(std::io::Error::other(error.to_string()));
    }
    if json {
        writeln!(out, "[")?;
    } else {
        out.write_all(render::text::flows_header().as_bytes())?;
    }
    let mut n = 0u64;
    for line in lines {
        let line = line?;
        if json {
            writeln!(out, "{line}")?;
        } else if line != "]" {
            let flow: Value = serde_json::from_str(line.trim_end_matches(','))
                .map_err(|e| std::io::Error::other(format!("bad flow from the daemon: {e}")))?;
            out.write_all(render::text::flow_line(&flow).as_bytes())?;
            n += 1;
        }
    }
    if !json {
        writeln!(out, "{n} flows")?;
    }
    out.flush()
}
