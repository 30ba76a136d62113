//! What a core hands the exporter: a finished span as plain data (ids, times, attributes),
//! and the trace context an upgrade carries from its decision to its session's end.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wssedge_proto::trace_context::{TraceParent, SAMPLED};

/// The trace context of one upgrade: its trace, the upgrade span's id, the caller's span (its
/// parent), and whether it is exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceSpan {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
}

fn random<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // aws-lc's DRBG does not fail once seeded; an all-zero id is invalid, so retry on one.
    loop {
        let _ = aws_lc_rs::rand::fill(&mut b);
        if b.iter().any(|&x| x != 0) {
            return b;
        }
    }
}

impl TraceSpan {
    /// In the caller's trace (its sampled flag decides), else a new trace sampled at `ratio`.
    pub fn begin(parent: Option<TraceParent>, ratio: f64) -> TraceSpan {
        match parent {
            Some(p) => TraceSpan {
                trace_id: p.trace_id,
                span_id: random(),
                parent_id: Some(p.parent_id),
                sampled: p.sampled(),
            },
            None => {
                let trace_id = random::<16>();
                // The trace id's low 8 bytes are random: compare them to the ratio (what
                // OpenTelemetry's TraceIdRatioBased does), so every hop decides alike.
                let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
                let sampled = ratio >= 1.0 || (low >> 1) < ((ratio * (1u64 << 63) as f64) as u64);
                TraceSpan {
                    trace_id,
                    span_id: random(),
                    parent_id: None,
                    sampled,
                }
            }
        }
    }

    /// A child span in the same trace (the session, under its upgrade).
    pub fn child(&self) -> TraceSpan {
        TraceSpan {
            trace_id: self.trace_id,
            span_id: random(),
            parent_id: Some(self.span_id),
            sampled: self.sampled,
        }
    }

    /// The `traceparent` that continues this trace with this span as the parent (sent to an
    /// upstream member).
    pub fn traceparent(&self) -> String {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: if self.sampled { SAMPLED } else { 0 },
        }
        .format()
    }
}

/// An attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        AttrValue::Str(v.to_owned())
    }
}
impl From<String> for AttrValue {
    fn from(v: String) -> Self {
        AttrValue::Str(v)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<u64> for AttrValue {
    fn from(v: u64) -> Self {
        AttrValue::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// A finished span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanRecord {
    pub context: TraceSpan,
    pub name: &'static str,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    pub attributes: Vec<(&'static str, AttrValue)>,
    /// An error status with this message (OpenTelemetry: 5xx of a server span).
    pub error: Option<String>,
}

impl SpanRecord {
    /// A span that began `elapsed` ago and ends now.
    pub fn ending_now(context: TraceSpan, name: &'static str, elapsed: Duration) -> SpanRecord {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        SpanRecord {
            context,
            name,
            start_unix_nanos: now.saturating_sub(elapsed.as_nanos() as u64),
            end_unix_nanos: now,
            attributes: Vec::new(),
            error: None,
        }
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<AttrValue>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    pub fn attr_opt(self, key: &'static str, value: Option<impl Into<AttrValue>>) -> Self {
        match value {
            Some(v) => self.attr(key, v),
            None => self,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_s_trace_is_continued_and_its_flag_decides() {
        let parent =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        let span = TraceSpan::begin(Some(parent), 1.0);
        assert_eq!(span.trace_id, parent.trace_id);
        assert_eq!(span.parent_id, Some(parent.parent_id));
        assert_ne!(span.span_id, parent.parent_id);
        assert!(!span.sampled, "the caller did not sample: neither do we");
        let up = TraceParent::parse(&span.traceparent()).unwrap();
        assert_eq!(up.trace_id, parent.trace_id);
        assert_eq!(
            up.parent_id, span.span_id,
            "the member's parent is our span"
        );
        let child = span.child();
        assert_eq!(child.parent_id, Some(span.span_id));
        assert_eq!(child.trace_id, span.trace_id);
    }

    #[test]
    fn the_ratio_samples_about_its_share_of_new_traces() {
        assert!((0..100).all(|_| TraceSpan::begin(None, 1.0).sampled));
        assert!((0..100).all(|_| !TraceSpan::begin(None, 0.0).sampled));
        let n = (0..4000)
            .filter(|_| TraceSpan::begin(None, 0.25).sampled)
            .count();
        assert!((800..1200).contains(&n), "{n} of 4000 at 0.25");
        let a = TraceSpan::begin(None, 1.0);
        let b = TraceSpan::begin(None, 1.0);
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.parent_id, None);
    }
}
