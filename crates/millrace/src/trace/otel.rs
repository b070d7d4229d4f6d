//! The `opentelemetry` feature: reading the current span's OpenTelemetry context for a producer,
//! and linking (or parenting) consumer spans to the contexts found in entries.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{TraceFields, TraceParent, TRACEPARENT, TRACESTATE};
use crate::entry::RawEntry;

/// The current span's context as entry fields, when it is a valid OpenTelemetry context.
pub(super) fn current() -> Option<TraceFields> {
    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return None;
    }
    let parent = TraceParent {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    };
    let state = sc.trace_state().header();
    Some(TraceFields {
        traceparent: parent.header(),
        tracestate: (!state.is_empty()).then_some(state),
    })
}

/// The producer's span context carried by `entry`: `None` without the fields (nothing said), and
/// `None` with one DEBUG line when they are malformed.
fn entry_context(entry: &RawEntry) -> Option<SpanContext> {
    let parent = entry.fields.iter().find(|(k, _)| k == TRACEPARENT)?;
    let parsed = match TraceParent::parse(&parent.1) {
        Ok(p) => p,
        Err(why) => {
            tracing::debug!(entry_id = %entry.id, reason = why, "entry has a malformed traceparent; handled without trace context");
            return None;
        }
    };
    let state = match entry.fields.iter().find(|(k, _)| k == TRACESTATE) {
        None => TraceState::default(),
        Some((_, v)) => match std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
            Some(state) => state,
            None => {
                tracing::debug!(entry_id = %entry.id, "entry has a malformed tracestate; linked without it");
                TraceState::default()
            }
        },
    };
    Some(SpanContext::new(
        TraceId::from_bytes(parsed.trace_id.to_be_bytes()),
        SpanId::from_bytes(parsed.span_id.to_be_bytes()),
        TraceFlags::new(parsed.flags),
        true,
        state,
    ))
}

pub(super) fn link_batch<'a>(
    batch_span: &tracing::Span,
    entries: impl Iterator<Item = &'a RawEntry>,
    per_entry: bool,
) -> Vec<tracing::Span> {
    let mut spans = Vec::new();
    for entry in entries {
        let Some(cx) = entry_context(entry) else {
            continue;
        };
        batch_span.add_link(cx.clone());
        if per_entry {
            let span = tracing::info_span!(parent: batch_span, "entry", entry_id = %entry.id);
            let parent = opentelemetry::Context::new().with_remote_span_context(cx);
            if let Err(e) = span.set_parent(parent) {
                tracing::debug!(entry_id = %entry.id, error = %e, "could not parent the entry span to its producer's");
            }
            spans.push(span);
        }
    }
    spans
}
