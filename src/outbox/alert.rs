//! The alert webhook: a JSON POST when a target goes down or comes back, and when dead letters appear. Alerts go
//! through a bounded queue to one sender task, so a slow or dead webhook never holds a delivery up; dead letters
//! arriving close together are sent as one alert.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::mpsc;

use crate::metrics::METRICS;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Alert {
    TargetDown { target: String, error: String },
    TargetUp { target: String },
    DeadLetters { count: usize, entries: Vec<DeadLetter> },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    pub tenant: String,
    pub id: String,
    pub target: String,
    pub identity_id: String,
    pub error: String,
}

impl Alert {
    /// One outbox row that became a dead letter.
    pub fn dead_letter(e: &scimgate_store::OutboxEntry, error: &str) -> Alert {
        Alert::DeadLetters {
            count: 1,
            entries: vec![DeadLetter {
                tenant: e.tenant.clone(),
                id: e.id.clone(),
                target: e.target.clone(),
                identity_id: e.identity_id.clone(),
                error: error.to_string(),
            }],
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Alert::TargetDown { .. } => "target_down",
            Alert::TargetUp { .. } => "target_up",
            Alert::DeadLetters { .. } => "dead_letters",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Alerter {
    tx: Option<mpsc::Sender<Alert>>,
}

const MAX_LISTED: usize = 50;

impl Alerter {
    /// No webhook: alerts are logged only.
    pub fn none() -> Self {
        Alerter { tx: None }
    }

    pub fn webhook(url: String) -> Self {
        let (tx, mut rx) = mpsc::channel::<Alert>(1024);
        tokio::spawn(async move {
            let client = match reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "alert webhook client cannot be built; alerts are logged only");
                    return;
                }
            };
            while let Some(first) = rx.recv().await {
                let alert = match first {
                    Alert::DeadLetters { mut entries, .. } => {
                        // Gather what arrives in the next two seconds into one alert.
                        let mut count = entries.len();
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
                        while let Ok(Some(next)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                            match next {
                                Alert::DeadLetters {
                                    entries: more,
                                    count: n,
                                } => {
                                    count += n;
                                    entries.extend(more);
                                }
                                other => send(&client, &url, &other).await,
                            }
                        }
                        entries.truncate(MAX_LISTED);
                        Alert::DeadLetters { count, entries }
                    }
                    other => other,
                };
                send(&client, &url, &alert).await;
            }
        });
        Alerter { tx: Some(tx) }
    }

    pub fn fire(&self, alert: Alert) {
        match &alert {
            Alert::TargetDown { target, error } => tracing::error!(target_id = %target, error = %error, "target down"),
            Alert::TargetUp { target } => tracing::info!(target_id = %target, "target back up"),
            Alert::DeadLetters { count, .. } => tracing::error!(count, "outbox rows moved to the dead-letter state"),
        }
        if let Some(tx) = &self.tx
            && tx.try_send(alert).is_err()
        {
            METRICS.alerts.with_label_values(&["any", "dropped"]).inc();
        }
    }
}

async fn send(client: &reqwest::Client, url: &str, alert: &Alert) {
    let body = serde_json::json!({
        "source": "scimgate",
        "at": scimgate_scim::resource::format_datetime(chrono::Utc::now()),
        "alert": alert,
    });
    let result = match client.post(url).json(&body).send().await {
        Ok(r) if r.status().is_success() => "sent",
        Ok(r) => {
            tracing::warn!(status = %r.status(), "alert webhook refused an alert");
            "failed"
        }
        Err(e) => {
            tracing::warn!(error = %e, "alert webhook unreachable");
            "failed"
        }
    };
    METRICS.alerts.with_label_values(&[alert.kind(), result]).inc();
}
