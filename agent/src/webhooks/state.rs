//! The replicated webhook list: a join-semilattice, so every node ends with the same
//! list whatever order it learns the writes in.
//!
//! Per URL: the stamp of the latest `add` (its incarnation), of the latest `del`, and
//! last-writer-wins registers for the configuration and the delivery state. A webhook
//! exists while its add is newer than its delete, so a delete wins over a concurrent
//! modify (which writes only the registers), concurrent adds of two URLs both survive,
//! and concurrent adds of one URL leave one webhook with the later configuration.

use std::collections::BTreeMap;

use crdts::CvRDT;
use georep_mesh::{Hlc, Reg};
use serde::{Deserialize, Serialize};

/// How a delivery is shaped and signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// glustereventsd's body `{"nodeid", "ts", "event", "message"}` (plus `id`), Bearer
    /// token or HS256 JWT.
    Gluster,
    /// The Standard Webhooks specification: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` headers.
    Standard,
}

impl Format {
    /// The name the CLI takes and shows.
    pub fn name(self) -> &'static str {
        match self {
            Format::Gluster => "gluster",
            Format::Standard => "standard",
        }
    }

    /// Parses a CLI name.
    pub fn parse(text: &str) -> Option<Format> {
        match text {
            "gluster" => Some(Format::Gluster),
            "standard" => Some(Format::Standard),
            _ => None,
        }
    }
}

/// What authenticates a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Auth {
    /// Nothing.
    None,
    /// `Authorization: Bearer <token>`.
    Token(String),
    /// An HS256 JWT (gluster format) or the Standard Webhooks signature key.
    Secret(String),
}

/// A webhook's configuration (one register: written whole by add and mod).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookConfig {
    /// Body and signature format.
    pub format: Format,
    /// Authentication.
    pub auth: Auth,
    /// PEM of a private CA that HTTPS deliveries trust (the file's content: any node
    /// may deliver, not only the one where the CLI read it).
    pub ca_pem: Option<String>,
}

/// Whether deliveries go out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Delivering.
    Active,
    /// Failing longer than the park bound: no more attempts until `webhook mod`.
    Parked(String),
    /// The receiver answered 410 Gone: no more attempts until `webhook mod`.
    Disabled(String),
}

impl DeliveryState {
    /// `active`, `parked` or `disabled`.
    pub fn name(&self) -> &'static str {
        match self {
            DeliveryState::Active => "active",
            DeliveryState::Parked(_) => "parked",
            DeliveryState::Disabled(_) => "disabled",
        }
    }
}

/// One URL's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookRecord {
    /// The latest add: the webhook's incarnation. Events stamped before it are not
    /// delivered to it.
    pub added: Hlc,
    /// The latest delete, if any.
    pub deleted: Option<Hlc>,
    /// The configuration.
    pub config: Reg<WebhookConfig>,
    /// The delivery state.
    pub state: Reg<DeliveryState>,
}

impl WebhookRecord {
    /// Whether the webhook exists (added after its last delete).
    pub fn exists(&self) -> bool {
        self.deleted.as_ref().is_none_or(|d| self.added > *d)
    }

    fn join(&mut self, other: &WebhookRecord) {
        if other.added > self.added {
            self.added = other.added.clone();
        }
        if other.deleted > self.deleted {
            self.deleted.clone_from(&other.deleted);
        }
        self.config.merge(other.config.clone());
        self.state.merge(other.state.clone());
    }

    /// The newest stamp anywhere in the record.
    pub fn max_stamp(&self) -> Hlc {
        let mut max = self.added.clone();
        for stamp in [
            self.deleted.as_ref(),
            Some(&self.config.marker),
            Some(&self.state.marker),
        ]
        .into_iter()
        .flatten()
        {
            if *stamp > max {
                max = stamp.clone();
            }
        }
        max
    }
}

/// Why a webhook write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// `add` of a URL that is already a webhook.
    #[error("webhook {0} already exists (change it with `georep webhook mod`)")]
    Exists(String),
    /// `mod`, `del` or a state change of a URL that is not a webhook.
    #[error("no webhook {0} (see `georep webhook list`)")]
    Missing(String),
}

/// Every webhook ever written, by URL (deleted ones as tombstones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WebhookSet {
    /// Records by URL.
    pub hooks: BTreeMap<String, WebhookRecord>,
}

impl WebhookSet {
    /// Joins `other` into this set; returns whether anything changed.
    pub fn join(&mut self, other: &WebhookSet) -> bool {
        let before = self.clone();
        for (url, theirs) in &other.hooks {
            match self.hooks.get_mut(url) {
                Some(mine) => mine.join(theirs),
                None => {
                    self.hooks.insert(url.clone(), theirs.clone());
                }
            }
        }
        *self != before
    }

    /// Existing webhooks.
    pub fn existing(&self) -> impl Iterator<Item = (&String, &WebhookRecord)> {
        self.hooks.iter().filter(|(_, r)| r.exists())
    }

    /// The existing webhook at `url`.
    pub fn get(&self, url: &str) -> Option<&WebhookRecord> {
        self.hooks.get(url).filter(|r| r.exists())
    }

    /// Adds `url` with `config` at `stamp`.
    pub fn add(
        &mut self,
        url: &str,
        config: WebhookConfig,
        stamp: Hlc,
    ) -> Result<(), WebhookError> {
        if self.get(url).is_some() {
            return Err(WebhookError::Exists(url.to_string()));
        }
        let fresh = WebhookRecord {
            added: stamp.clone(),
            deleted: None,
            config: Reg {
                val: config,
                marker: stamp.clone(),
            },
            state: Reg {
                val: DeliveryState::Active,
                marker: stamp,
            },
        };
        match self.hooks.get_mut(url) {
            Some(old) => old.join(&fresh),
            None => {
                self.hooks.insert(url.to_string(), fresh);
            }
        }
        Ok(())
    }

    /// Replaces `url`'s configuration and makes it active again.
    pub fn modify(
        &mut self,
        url: &str,
        config: WebhookConfig,
        stamp: Hlc,
    ) -> Result<(), WebhookError> {
        let record = self
            .hooks
            .get_mut(url)
            .filter(|r| r.exists())
            .ok_or_else(|| WebhookError::Missing(url.to_string()))?;
        record.config.update(config, stamp.clone());
        record.state.update(DeliveryState::Active, stamp);
        Ok(())
    }

    /// Sets `url`'s delivery state (parked or disabled by a delivering node).
    pub fn set_state(
        &mut self,
        url: &str,
        state: DeliveryState,
        stamp: Hlc,
    ) -> Result<(), WebhookError> {
        let record = self
            .hooks
            .get_mut(url)
            .filter(|r| r.exists())
            .ok_or_else(|| WebhookError::Missing(url.to_string()))?;
        record.state.update(state, stamp);
        Ok(())
    }

    /// Deletes `url`.
    pub fn delete(&mut self, url: &str, stamp: Hlc) -> Result<(), WebhookError> {
        let record = self
            .hooks
            .get_mut(url)
            .filter(|r| r.exists())
            .ok_or_else(|| WebhookError::Missing(url.to_string()))?;
        record.deleted = Some(stamp);
        Ok(())
    }

    /// Whether this set holds `url`'s write stamped `stamp` (or something newer).
    pub fn reflects(&self, url: &str, stamp: &Hlc) -> bool {
        self.hooks.get(url).is_some_and(|r| r.max_stamp() >= *stamp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hlc(millis: u64, node: &str) -> Hlc {
        Hlc {
            millis,
            counter: 0,
            node: node.to_string(),
        }
    }

    fn config(token: &str) -> WebhookConfig {
        WebhookConfig {
            format: Format::Gluster,
            auth: Auth::Token(token.to_string()),
            ca_pem: None,
        }
    }

    #[test]
    fn concurrent_adds_of_two_urls_both_survive_in_any_order() {
        let mut a = WebhookSet::default();
        let mut b = WebhookSet::default();
        a.add("http://a/", config("a"), hlc(1, "n1")).unwrap();
        b.add("http://b/", config("b"), hlc(1, "n2")).unwrap();
        let mut ab = a.clone();
        ab.join(&b);
        let mut ba = b.clone();
        ba.join(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.existing().count(), 2);
    }

    #[test]
    fn a_delete_wins_over_a_concurrent_modify() {
        let mut base = WebhookSet::default();
        base.add("http://a/", config("a"), hlc(1, "n1")).unwrap();
        let mut modified = base.clone();
        modified
            .modify("http://a/", config("new"), hlc(5, "n1"))
            .unwrap();
        let mut deleted = base.clone();
        deleted.delete("http://a/", hlc(3, "n2")).unwrap();
        for (mut x, y) in [(modified.clone(), &deleted), (deleted.clone(), &modified)] {
            x.join(y);
            assert!(x.get("http://a/").is_none(), "{x:?}");
        }
        // A later add brings it back, with the new configuration.
        deleted
            .add("http://a/", config("again"), hlc(9, "n2"))
            .unwrap();
        deleted.join(&modified);
        let record = deleted.get("http://a/").unwrap();
        assert_eq!(record.config.val, config("again"));
    }

    #[test]
    fn writes_on_missing_or_existing_urls_are_refused() {
        let mut set = WebhookSet::default();
        assert_eq!(
            set.modify("http://x/", config("t"), hlc(1, "n1")),
            Err(WebhookError::Missing("http://x/".into()))
        );
        set.add("http://x/", config("t"), hlc(2, "n1")).unwrap();
        assert!(matches!(
            set.add("http://x/", config("t"), hlc(3, "n1")),
            Err(WebhookError::Exists(_))
        ));
        set.set_state(
            "http://x/",
            DeliveryState::Disabled("410".into()),
            hlc(4, "n2"),
        )
        .unwrap();
        assert_eq!(set.get("http://x/").unwrap().state.val.name(), "disabled");
        set.modify("http://x/", config("t"), hlc(5, "n1")).unwrap();
        assert_eq!(
            set.get("http://x/").unwrap().state.val,
            DeliveryState::Active
        );
        assert!(set.reflects("http://x/", &hlc(5, "n1")));
        assert!(!set.reflects("http://x/", &hlc(6, "n1")));
    }
}
