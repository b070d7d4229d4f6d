//! W3C trace context carried in stream entries: the fields a producer writes (`traceparent`,
//! `tracestate`), their parsing on the consumer side, and (with the `opentelemetry` feature) the
//! link from a batch's span to each entry's producer span.
//!
//! Without the feature nothing is written or linked; decoding strips the two fields either way.

#[cfg(feature = "opentelemetry")]
mod otel;
#[cfg(all(test, feature = "opentelemetry"))]
mod tests;

/// The field holding the W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub(crate) const TRACEPARENT: &[u8] = b"traceparent";
/// The field holding the W3C `tracestate` (vendor entries), written only when not empty.
pub(crate) const TRACESTATE: &[u8] = b"tracestate";

/// Whether a field name is one of the trace-context fields.
pub(crate) fn is_trace_field(name: &[u8]) -> bool {
    name == TRACEPARENT || name == TRACESTATE
}

/// The trace-context fields of one add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TraceFields {
    pub(crate) traceparent: String,
    pub(crate) tracestate: Option<String>,
}

impl TraceFields {
    /// Appends the fields to an `XADD` being built.
    pub(crate) fn write(&self, cmd: &mut redis::Cmd) {
        cmd.arg(TRACEPARENT).arg(&self.traceparent);
        if let Some(state) = &self.tracestate {
            cmd.arg(TRACESTATE).arg(state);
        }
    }
}

/// The current span's trace context, when it has one (the `opentelemetry` feature, a span with an
/// OpenTelemetry context); `None` otherwise.
pub(crate) fn current() -> Option<TraceFields> {
    #[cfg(feature = "opentelemetry")]
    {
        otel::current()
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        None
    }
}

/// The span a batch's handler runs in: `batch_span`, linked to the producer span of each entry
/// that carries a trace context; with `per_entry`, each such entry also gets an `entry` span, a
/// child of its producer's span, and a batch of one entry runs in its `entry` span instead.
/// Entries without the fields are skipped; malformed ones get one DEBUG line each. Without the
/// `opentelemetry` feature: `batch_span` as it is.
pub(crate) fn batch_span(
    batch_span: tracing::Span,
    batch: &[crate::entry::DeliveredEntry],
    per_entry: bool,
) -> tracing::Span {
    #[cfg(feature = "opentelemetry")]
    {
        let entries = otel::link_batch(&batch_span, batch.iter().map(|(e, _)| e), per_entry);
        match <[_; 1]>::try_from(entries) {
            Ok([only]) if batch.len() == 1 => only,
            _ => batch_span,
        }
    }
    #[cfg(not(feature = "opentelemetry"))]
    {
        let _ = (batch, per_entry);
        batch_span
    }
}

/// A parsed `traceparent`.
#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) flags: u8,
}

#[cfg_attr(not(feature = "opentelemetry"), allow(dead_code))]
impl TraceParent {
    /// The header text: `00-<32 hex>-<16 hex>-<2 hex>`.
    pub(crate) fn header(&self) -> String {
        format!(
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }

    /// Parses a `traceparent` value as the W3C Trace Context spec reads it: version `00` exactly
    /// (a higher version's first four parts, ignoring what follows), lower-case hex, trace and
    /// span ids not all zero, version `ff` refused.
    pub(crate) fn parse(value: &[u8]) -> Result<TraceParent, &'static str> {
        let text = std::str::from_utf8(value).map_err(|_| "not UTF-8")?;
        let mut parts = text.split('-');
        let (Some(version), Some(trace), Some(span), Some(flags)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not four dash-separated parts");
        };
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !hex(version, 2) || version == "ff" {
            return Err("bad version");
        }
        if version == "00" && parts.next().is_some() {
            return Err("version 00 has four parts");
        }
        if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
            return Err("a part is not lower-case hex of its length");
        }
        let parent = TraceParent {
            trace_id: u128::from_str_radix(trace, 16).map_err(|_| "bad trace id")?,
            span_id: u64::from_str_radix(span, 16).map_err(|_| "bad span id")?,
            flags: u8::from_str_radix(flags, 16).map_err(|_| "bad flags")?,
        };
        if parent.trace_id == 0 || parent.span_id == 0 {
            return Err("an all-zero id");
        }
        Ok(parent)
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(text.as_bytes()).unwrap();
        assert_eq!(parent.trace_id, 0x4bf92f3577b34da6a3ce929d0e0e4736);
        assert_eq!(parent.span_id, 0x00f067aa0ba902b7);
        assert_eq!(parent.flags, 1);
        assert_eq!(parent.header(), text);
        // A later version may add parts.
        assert!(TraceParent::parse(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_ok());
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(TraceParent::parse(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(TraceParent::parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn trace_fields_are_told_apart() {
        assert!(is_trace_field(b"traceparent"));
        assert!(is_trace_field(b"tracestate"));
        assert!(!is_trace_field(b"trace"));
    }
}
