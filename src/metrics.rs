//! Prometheus metrics: `scimgate_<noun>_<unit>`, with bounded labels only (route templates, methods, status
//! codes, configured tenants, policy-defined rules, targets and stages, scimType values).
//!
//! One registry per process ([`METRICS`]); `/metrics` renders it. Gauges that mirror stored state (approvals
//! pending per stage) are refreshed at scrape time from the store.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub scim_errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub policy_decisions: IntCounterVec,
    pub plan_items: IntCounterVec,
    pub sod_violations: IntCounterVec,
    pub approvals_pending: IntGaugeVec,
    pub approval_decisions: IntCounterVec,
    pub leaver_time_to_lock: Histogram,
    pub lifecycle_timers: IntCounter,
    pub outbox_entries: IntGaugeVec,
    pub outbox_oldest: prometheus::GaugeVec,
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub target_up: IntGaugeVec,
    pub alerts: IntCounterVec,
    pub group_commit: Histogram,
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = match IntGaugeVec::new(Opts::new(name, help), labels) {
        Ok(g) => g,
        Err(e) => unreachable!("metric {name} is well-formed: {e}"),
    };
    let _ = r.register(Box::new(g.clone()));
    g
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = match IntCounterVec::new(Opts::new(name, help), labels) {
        Ok(c) => c,
        Err(e) => unreachable!("metric {name} is well-formed: {e}"),
    };
    let _ = r.register(Box::new(c.clone()));
    c
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let http_duration = match HistogramVec::new(
            HistogramOpts::new("scimgate_http_request_duration_seconds", "HTTP request latency").buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["route", "method", "status", "tenant"],
        ) {
            Ok(h) => h,
            Err(e) => unreachable!("histogram is well-formed: {e}"),
        };
        let _ = r.register(Box::new(http_duration.clone()));
        let approvals_pending = match IntGaugeVec::new(
            Opts::new(
                "scimgate_approvals_pending",
                "Approval requests waiting, by tier and stage",
            ),
            &["tenant", "tier", "stage"],
        ) {
            Ok(g) => g,
            Err(e) => unreachable!("gauge is well-formed: {e}"),
        };
        let _ = r.register(Box::new(approvals_pending.clone()));
        let leaver_time_to_lock = match Histogram::with_opts(
            HistogramOpts::new(
                "scimgate_leaver_time_to_lock_seconds",
                "From the leaver event to every account locked (handed to provisioning); the 24-hour notification clock",
            )
            .buckets(vec![1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 24.0 * 3600.0, 48.0 * 3600.0]),
        ) {
            Ok(h) => h,
            Err(e) => unreachable!("histogram is well-formed: {e}"),
        };
        let _ = r.register(Box::new(leaver_time_to_lock.clone()));
        let lifecycle_timers = match IntCounter::new(
            "scimgate_lifecycle_timers_total",
            "Due lifecycle timers and approval deadlines run",
        ) {
            Ok(c) => c,
            Err(e) => unreachable!("counter is well-formed: {e}"),
        };
        let _ = r.register(Box::new(lifecycle_timers.clone()));
        let delivery_duration = match HistogramVec::new(
            HistogramOpts::new(
                "scimgate_outbox_delivery_duration_seconds",
                "Time of one adapter call, by target and outcome",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["target", "outcome"],
        ) {
            Ok(h) => h,
            Err(e) => unreachable!("histogram is well-formed: {e}"),
        };
        let _ = r.register(Box::new(delivery_duration.clone()));
        let outbox_oldest = match prometheus::GaugeVec::new(
            Opts::new(
                "scimgate_outbox_oldest_pending_seconds",
                "Age of the oldest row waiting for each target (0: none waiting)",
            ),
            &["target"],
        ) {
            Ok(g) => g,
            Err(e) => unreachable!("gauge is well-formed: {e}"),
        };
        let _ = r.register(Box::new(outbox_oldest.clone()));
        let group_commit = match Histogram::with_opts(
            HistogramOpts::new(
                "scimgate_group_commit_writes",
                "Writes committed per transaction by the group committer (concurrent user creates, replacements and \
                 patches)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        ) {
            Ok(h) => h,
            Err(e) => unreachable!("histogram is well-formed: {e}"),
        };
        let _ = r.register(Box::new(group_commit.clone()));
        Metrics {
            group_commit,
            outbox_entries: gauge(
                &r,
                "scimgate_outbox_entries",
                "Outbox rows by target and status (pending, running, dead)",
                &["target", "status"],
            ),
            outbox_oldest,
            deliveries: counter(
                &r,
                "scimgate_outbox_deliveries_total",
                "Finished delivery attempts by target and outcome (done, retry, dead, superseded)",
                &["target", "outcome"],
            ),
            delivery_duration,
            target_up: gauge(
                &r,
                "scimgate_target_up",
                "1 while a target's circuit is closed, 0 while it is open",
                &["target"],
            ),
            alerts: counter(
                &r,
                "scimgate_alerts_total",
                "Alert webhook calls by kind and result",
                &["kind", "result"],
            ),
            http_requests: counter(
                &r,
                "scimgate_http_requests_total",
                "HTTP requests",
                &["route", "method", "status", "tenant"],
            ),
            http_duration,
            scim_errors: counter(
                &r,
                "scimgate_scim_errors_total",
                "SCIM error responses by scimType",
                &["scim_type", "status"],
            ),
            auth_failures: counter(
                &r,
                "scimgate_auth_failures_total",
                "Refused credentials",
                &["tenant", "reason"],
            ),
            rate_limited: counter(
                &r,
                "scimgate_rate_limited_total",
                "Requests refused with 429",
                &["tenant", "scope"],
            ),
            policy_decisions: counter(
                &r,
                "scimgate_policy_decisions_total",
                "Policy evaluations, by cause and lifecycle state",
                &["cause", "state", "mode"],
            ),
            plan_items: counter(
                &r,
                "scimgate_plan_items_total",
                "Plan items by target, action and outcome",
                &["target", "action", "status"],
            ),
            sod_violations: counter(
                &r,
                "scimgate_sod_violations_total",
                "Separation-of-Duties conflicts found, by rule",
                &["rule", "mode"],
            ),
            approvals_pending,
            approval_decisions: counter(
                &r,
                "scimgate_approval_decisions_total",
                "Approval outcomes",
                &["status"],
            ),
            leaver_time_to_lock,
            lifecycle_timers,
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
