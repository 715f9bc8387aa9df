//! The simulated webhook receiver: every agent's deliveries land here (through the
//! agent's `WebhookTransport` seam) instead of going out over HTTP. It records the
//! delivery ids it acknowledged, and is down (refuses) for 1.4 s of every 7 s of
//! virtual time, so deliveries go through retries; the outages follow virtual time
//! only, so runs stay deterministic.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use georep_agent::{WebhookAnswer, WebhookDelivery, WebhookTransport};
use tokio::time::Instant;

/// The URL every simulated cluster registers as its webhook.
pub const SIM_WEBHOOK_URL: &str = "http://sim-receiver.invalid/hook";
/// Outage cycle: down for the last fifth of every period.
const CYCLE_MS: u128 = 7_000;

/// Acknowledged delivery ids, and counters.
#[derive(Debug)]
pub struct SimReceiver {
    origin: Instant,
    ids: Mutex<BTreeSet<String>>,
    /// Deliveries acknowledged (duplicates included).
    pub acknowledged: AtomicU64,
    /// Deliveries refused during an outage.
    pub refused: AtomicU64,
}

impl SimReceiver {
    /// A receiver whose outages are timed from `origin`.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            ids: Mutex::new(BTreeSet::new()),
            acknowledged: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether it has acknowledged `id`.
    pub fn has(&self, id: &str) -> bool {
        self.ids.lock().is_ok_and(|ids| ids.contains(id))
    }

    fn down(&self) -> bool {
        self.origin.elapsed().as_millis() % CYCLE_MS >= CYCLE_MS * 4 / 5
    }
}

#[async_trait::async_trait]
impl WebhookTransport for SimReceiver {
    async fn post(
        &self,
        url: &str,
        _ca_pem: Option<&str>,
        delivery: &WebhookDelivery,
    ) -> Result<WebhookAnswer, String> {
        if url != SIM_WEBHOOK_URL {
            return Err(format!("no simulated receiver at {url}"));
        }
        if self.down() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err("connection refused (simulated outage)".into());
        }
        if let Ok(mut ids) = self.ids.lock() {
            ids.insert(delivery.id.clone());
        }
        self.acknowledged.fetch_add(1, Ordering::Relaxed);
        Ok(WebhookAnswer {
            status: 204,
            retry_after: None,
            body: String::new(),
        })
    }
}
