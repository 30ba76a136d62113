//! The admin endpoint: `/metrics` in the Prometheus text format, and waits on its counters.

use std::time::{Duration, Instant};

use super::{http_get, Server, WAIT};

impl Server {
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics: {body}");
        body
    }

    /// Sum of the samples of `name` whose labels include all of `labels` (extra labels allowed).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_sum(&self.metrics().await, name, labels)
    }

    /// Waits until `name{labels}` is `want` (a gauge may have to come down to it).
    pub async fn wait_metric_eq(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let what = format!("{name}{labels:?} is {want}");
        super::eventually(&what, |_| async move {
            match self.metric(name, labels).await {
                v if v == want => Ok(()),
                v => Err(format!("{v}")),
            }
        })
        .await;
    }

    /// Polls /metrics until the metric reaches `at_least` (counters may lag per core).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], at_least: f64) -> f64 {
        let deadline = Instant::now() + WAIT;
        loop {
            let body = self.metrics().await;
            let v = metric_sum(&body, name, labels);
            if v >= at_least {
                return v;
            }
            if Instant::now() >= deadline {
                let related: Vec<&str> = body.lines().filter(|l| l.starts_with(name)).collect();
                panic!(
                    "metric {name}{labels:?} = {v}, expected >= {at_least}; samples: {related:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sum of the samples of metric `name` carrying all `labels` (other labels are ignored).
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for line in body.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, rest) = match line.rfind('}') {
            Some(close) => (&line[..=close], &line[close + 1..]),
            None => match line.split_once(char::is_whitespace) {
                Some(x) => x,
                None => continue,
            },
        };
        let Some(value) = rest.split_whitespace().next() else {
            continue;
        };
        let (n, lbls) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i + 1..series.len() - 1])),
            None => (series, Vec::new()),
        };
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, v)| lbls.iter().any(|(lk, lv)| lk == k && lv == v))
        {
            sum += value.parse::<f64>().unwrap_or(0.0);
        }
    }
    sum
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(body) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = body.char_indices();
        let mut end = body.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        val.push(if e == 'n' { '\n' } else { e });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.push((key, val));
        rest = &body[end..];
    }
    out
}

/// Waits until `name{labels}` reaches `n`, then checks it did not go past: exactly `n`. `what`
/// says what the count stands for.
pub async fn wait_metric_exactly(
    srv: &Server,
    name: &str,
    labels: &[(&str, &str)],
    n: f64,
    what: &str,
) {
    let v = srv.wait_metric(name, labels, n).await;
    assert_eq!(v, n, "{what}: {name}{labels:?}");
}

/// Waits until `reason` was counted `n` times both as a refusal and as a failed handshake, and
/// checks that neither counter went past `n`.
pub async fn expect_refusals_counted(srv: &Server, reason: &str, n: u64) {
    let n = n as f64;
    srv.wait_metric("wssedge_refusals_total", &[("reason", reason)], n)
        .await;
    srv.wait_metric(
        "wssedge_handshakes_total",
        &[("result", "failed"), ("reason", reason)],
        n,
    )
    .await;
    let body = srv.metrics().await;
    let refusals = metric_sum(&body, "wssedge_refusals_total", &[("reason", reason)]);
    let failed = metric_sum(
        &body,
        "wssedge_handshakes_total",
        &[("result", "failed"), ("reason", reason)],
    );
    assert_eq!(
        (refusals, failed),
        (n, n),
        "{reason}: refusals_total and handshakes_total{{result=failed}}, expected {n} each"
    );
}

/// Waits until the server has counted `n` sessions it closed with 1008 for `reason`: the
/// refusal counter and the close-code counter both.
pub async fn expect_closed_1008(srv: &Server, reason: &str, n: f64) {
    srv.wait_metric("wssedge_refusals_total", &[("reason", reason)], n)
        .await;
    srv.wait_metric(
        "wssedge_close_codes_total",
        &[("code", "1008"), ("side", "server")],
        n,
    )
    .await;
}

/// Waits until the server has counted `n` slow consumers and reset them: the `slow_consumer`
/// backpressure event and refusal, and the reset after close_timeout_ms (`close_reset`).
pub async fn expect_slow_consumers_reset(srv: &Server, n: f64) {
    srv.wait_metric(
        "wssedge_backpressure_total",
        &[("event", "slow_consumer")],
        n,
    )
    .await;
    srv.wait_metric("wssedge_backpressure_total", &[("event", "close_reset")], n)
        .await;
    srv.wait_metric("wssedge_refusals_total", &[("reason", "slow_consumer")], n)
        .await;
}
