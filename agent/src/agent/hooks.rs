//! Webhooks: the delivery loop, and the answers of `webhook add|mod|del|list|test`.

use super::*;
use crate::webhooks::{
    Auth, Format, Payload, WebhookConfig, WebhookError, check_ca, check_config, check_url, delivery,
};
use georep_api::ErrorCode;
use georep_api::types::{
    WebhookListResponse, WebhookRequest, WebhookResponse, WebhookTestRequest, WebhookTestResponse,
};

impl From<WebhookError> for ApiError {
    fn from(error: WebhookError) -> Self {
        let code = match error {
            WebhookError::Exists(_) => ErrorCode::WebhookExists,
            WebhookError::Missing(_) => ErrorCode::WebhookNotFound,
        };
        ApiError::Refused {
            code,
            session: None,
            message: error.to_string(),
        }
    }
}

/// The configuration a request describes (`base` supplies what it leaves out).
fn requested_config(
    format: Option<&str>,
    token: Option<&String>,
    secret: Option<&String>,
    ca_pem: Option<&String>,
    base: Option<&WebhookConfig>,
) -> Result<WebhookConfig, ApiError> {
    let format = match format {
        Some(name) => Format::parse(name).ok_or_else(|| {
            ApiError::bad_request(format!("--format {name:?}: must be gluster or standard"))
        })?,
        None => base.map_or(Format::Gluster, |b| b.format),
    };
    let auth = match (token, secret) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("give --token or --secret, not both"));
        }
        (Some(t), None) if t.is_empty() => Auth::None,
        (Some(t), None) => Auth::Token(t.clone()),
        (None, Some(s)) if s.is_empty() => Auth::None,
        (None, Some(s)) => Auth::Secret(s.clone()),
        (None, None) => base.map_or(Auth::None, |b| b.auth.clone()),
    };
    let ca_pem = match ca_pem {
        Some(pem) if pem.is_empty() => None,
        Some(pem) => {
            check_ca(pem).map_err(|e| ApiError::bad_request(format!("--ca: {e}")))?;
            Some(pem.clone())
        }
        None => base.and_then(|b| b.ca_pem.clone()),
    };
    let config = WebhookConfig {
        format,
        auth,
        ca_pem,
    };
    check_config(&config).map_err(|e| ApiError::bad_request(format!("--secret: {e}")))?;
    Ok(config)
}

impl Agent {
    /// Keeps the webhook list joined with the peers' (every gossip interval) and
    /// delivers: rounds are looked for after every interval, when a round finished,
    /// and shortly after this node recorded events (coalesced); events replicated from
    /// others are delivered by their writer while it lives, so they wait for the
    /// interval (at hundreds of nodes they arrive many times per interval); rounds run
    /// as tasks, their results recorded as they finish.
    pub(super) async fn webhooks_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let period = Duration::from_millis(self.config.gossip_interval_ms);
        let coalesce = (period / 4).min(Duration::from_millis(10));
        let mut appended = self.events.subscribe_own();
        let mut rounds = tokio::task::JoinSet::new();
        let mut next_sync = Instant::now();
        loop {
            if Instant::now() >= next_sync {
                self.webhooks.sync(&self.mesh).await;
                next_sync = Instant::now() + period;
            }
            let membership = self.mesh.topology().await;
            for job in self.webhooks.due(&self.events, &membership) {
                let wall = self.wall.clone();
                rounds.spawn(job.run(move || wall.now_millis()));
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    rounds.abort_all();
                    return;
                }
                Some(done) = rounds.join_next(), if !rounds.is_empty() => {
                    if let Ok(result) = done {
                        self.webhooks.finish(result, self.wall.now_millis(), || self.mesh.stamp());
                    }
                    while let Some(Ok(result)) = rounds.try_join_next() {
                        self.webhooks.finish(result, self.wall.now_millis(), || self.mesh.stamp());
                    }
                }
                _ = appended.changed() => tokio::time::sleep(coalesce).await,
                _ = tokio::time::sleep_until(next_sync) => {}
            }
        }
    }

    /// Replaces how webhook deliveries are sent (the simulator's receivers).
    pub fn set_webhook_transport(&self, transport: Arc<dyn crate::webhooks::Transport>) {
        self.webhooks.set_transport(transport);
    }

    /// `webhook add|mod|del`: applied here at once, published, then (unless `--no-wait`)
    /// waited on until every live node holds it.
    pub async fn webhook_write(
        &self,
        request: WebhookRequest,
    ) -> Result<WebhookResponse, ApiError> {
        let url = request.url.trim().to_string();
        check_url(&url).map_err(|e| ApiError::bad_request(format!("{url:?}: {e}")))?;
        let stamp = self.mesh.stamp();
        let current = self.webhooks.set().get(&url).map(|r| r.config.val.clone());
        let verb = match request.action.as_str() {
            "add" => {
                let config = requested_config(
                    request.format.as_deref(),
                    request.token.as_ref(),
                    request.secret.as_ref(),
                    request.ca_pem.as_ref(),
                    None,
                )?;
                self.webhooks
                    .write(|set| set.add(&url, config, stamp.clone()))?;
                "added"
            }
            "mod" => {
                let Some(base) = current else {
                    return Err(WebhookError::Missing(url).into());
                };
                let config = requested_config(
                    request.format.as_deref(),
                    request.token.as_ref(),
                    request.secret.as_ref(),
                    request.ca_pem.as_ref(),
                    Some(&base),
                )?;
                self.webhooks
                    .write(|set| set.modify(&url, config, stamp.clone()))?;
                "modified"
            }
            "del" => {
                self.webhooks.write(|set| set.delete(&url, stamp.clone()))?;
                "deleted"
            }
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown webhook action {other:?} (add, mod, del)"
                )));
            }
        };
        self.webhooks.sync(&self.mesh).await;
        self.mesh.refresh_now().await;
        let deadline = Instant::now() + Duration::from_millis(request.timeout_ms);
        loop {
            let membership = self.mesh.topology().await;
            let (confirmed, lagging) = self
                .webhooks
                .spread(&self.mesh, &membership, &url, &stamp)
                .await;
            let converged = lagging.is_empty();
            if !request.wait || converged || Instant::now() >= deadline {
                let message = if converged {
                    format!("webhook {url} {verb} (every live node holds it)")
                } else if request.wait {
                    format!(
                        "webhook {url} {verb} here; not yet on {} (they will catch up)",
                        lagging.join(", ")
                    )
                } else {
                    format!("webhook {url} {verb} here; spreading to the others")
                };
                return Ok(WebhookResponse {
                    ok: true,
                    message,
                    url,
                    confirmed_nodes: confirmed,
                    lagging_nodes: lagging,
                    converged,
                    waited: request.wait,
                });
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// `webhook list`.
    pub async fn webhook_list(&self) -> WebhookListResponse {
        let membership = self.mesh.topology().await;
        WebhookListResponse {
            webhooks: self.webhooks.list(&self.events, &membership),
        }
    }

    /// `webhook test`: one delivery from this node now, with the webhook's own
    /// configuration (if it is one) overridden by what the request gives.
    pub async fn webhook_test(
        &self,
        request: WebhookTestRequest,
    ) -> Result<WebhookTestResponse, ApiError> {
        let url = request.url.trim().to_string();
        check_url(&url).map_err(|e| ApiError::bad_request(format!("{url:?}: {e}")))?;
        let base = self.webhooks.set().get(&url).map(|r| r.config.val.clone());
        let config = requested_config(
            request.format.as_deref(),
            request.token.as_ref(),
            request.secret.as_ref(),
            request.ca_pem.as_ref(),
            base.as_ref(),
        )?;
        let now = self.wall.now_millis();
        let payload = Payload {
            nodeid: self.config.node_id.clone(),
            ts: now / 1000,
            event: "WEBHOOK_TEST".into(),
            message: BTreeMap::new(),
            id: format!("test:{}:{now}", self.config.node_id),
        };
        let request = delivery(&config, &payload, now / 1000);
        let started = Instant::now();
        let answer = self
            .webhooks
            .transport()
            .post(&url, config.ca_pem.as_deref(), &request)
            .await;
        let elapsed_ms = started.elapsed().as_millis() as u64;
        let (ok, status, error) = match answer {
            Ok(a) if (200..300).contains(&a.status) => (true, Some(a.status), None),
            Ok(a) => (
                false,
                Some(a.status),
                Some(if a.body.trim().is_empty() {
                    format!("HTTP {}", a.status)
                } else {
                    format!("HTTP {}: {}", a.status, a.body.trim())
                }),
            ),
            Err(e) => (false, None, Some(e)),
        };
        let message = match (&error, status) {
            (None, Some(s)) => format!("{url} answered {s} in {elapsed_ms} ms"),
            (Some(e), _) => format!("{url}: {e}"),
            (None, None) => format!("{url}: no answer"),
        };
        Ok(WebhookTestResponse {
            ok,
            url,
            id: payload.id,
            status,
            error,
            elapsed_ms,
            message,
        })
    }
}
