//! JWKS documents fetched off the request path: on start, on their TTL, and on an unknown
//! `kid` (rate-limited). A failed fetch keeps the last good set.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use parking_lot::{Mutex, RwLock};
use wharf_config::{Filter, RouterTable};

use crate::metrics::Metrics;

/// Keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Jwk>,
    pub fetched: Option<Instant>,
    /// The last refresh failed: try again on the next tick rather than after a whole TTL.
    pub retry_soon: bool,
}

impl KeySet {
    /// The key for `kid`; without a kid, the only key there is.
    pub fn find(&self, kid: Option<&str>) -> Option<&Jwk> {
        super::token::find_key(&self.keys, kid)
    }
}

struct Inner {
    sets: RwLock<HashMap<String, Arc<KeySet>>>,
    wanted: Mutex<HashMap<String, Duration>>,
    last_kick: Mutex<HashMap<String, Instant>>,
    fetched: tokio::sync::Notify,
    kick: tokio::sync::mpsc::UnboundedSender<String>,
    metrics: Metrics,
}

/// Shared by every filter using the same `jwks_uri`.
impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("documents", &self.inner.sets.read().len())
            .finish()
    }
}

#[derive(Clone)]
pub struct JwksCache {
    inner: Arc<Inner>,
}

/// How often an unknown `kid` may trigger a refresh of one document.
const KICK_INTERVAL: Duration = Duration::from_secs(5);
/// How long a request waits for a first fetch or a kid refresh.
const WAIT: Duration = Duration::from_secs(3);

impl JwksCache {
    pub fn new(metrics: Metrics) -> JwksCache {
        let (kick, rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            sets: RwLock::new(HashMap::new()),
            wanted: Mutex::new(HashMap::new()),
            last_kick: Mutex::new(HashMap::new()),
            fetched: tokio::sync::Notify::new(),
            kick,
            metrics,
        });
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("wharf-jwks".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("jwks runtime");
                rt.block_on(fetch_loop(weak, rx));
            })
            .expect("spawn jwks thread");
        JwksCache { inner }
    }

    /// Follow the JWT filters of a new table: fetch new documents now, forget unused ones.
    pub fn sync(&self, table: &RouterTable) {
        let mut wanted = HashMap::new();
        for f in &table.filters {
            if let Filter::Jwt(j) = f {
                wanted.insert(
                    j.jwks_uri.clone(),
                    Duration::from_secs(j.jwks_ttl_secs.max(1)),
                );
            }
        }
        let new: Vec<String> = {
            let sets = self.inner.sets.read();
            wanted
                .keys()
                .filter(|u| !sets.contains_key(*u))
                .cloned()
                .collect()
        };
        self.inner
            .sets
            .write()
            .retain(|u, _| wanted.contains_key(u));
        *self.inner.wanted.lock() = wanted;
        for u in new {
            let _ = self.inner.kick.send(u);
        }
    }

    pub fn get(&self, uri: &str) -> Option<Arc<KeySet>> {
        self.inner.sets.read().get(uri).cloned()
    }

    /// The key set, waiting (bounded) for the first fetch of a document not fetched yet.
    pub async fn get_or_wait(&self, uri: &str) -> Option<Arc<KeySet>> {
        if let Some(s) = self.get(uri) {
            return Some(s);
        }
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let notified = self.inner.fetched.notified();
            if let Some(s) = self.get(uri) {
                return Some(s);
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
        self.get(uri)
    }

    /// An unknown `kid`: refresh the document (at most once per interval) and wait for it.
    /// Returns the set after the refresh, or `None` when rate-limited.
    pub async fn refresh_for_unknown_kid(&self, uri: &str) -> Option<Arc<KeySet>> {
        {
            let mut last = self.inner.last_kick.lock();
            let now = Instant::now();
            if last
                .get(uri)
                .is_some_and(|t| now.duration_since(*t) < KICK_INTERVAL)
            {
                return None;
            }
            last.insert(uri.to_owned(), now);
        }
        let before = self.get(uri).and_then(|s| s.fetched);
        let _ = self.inner.kick.send(uri.to_owned());
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let notified = self.inner.fetched.notified();
            let now = self.get(uri);
            if now.as_ref().and_then(|s| s.fetched) != before {
                return now;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), notified).await;
        }
        self.get(uri)
    }
}

async fn fetch_loop(inner: Weak<Inner>, mut rx: tokio::sync::mpsc::UnboundedReceiver<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let due: Vec<String> = tokio::select! {
            uri = rx.recv() => match uri {
                Some(u) => vec![u],
                None => return,
            },
            _ = tick.tick() => {
                let Some(inner) = inner.upgrade() else { return };
                let wanted = inner.wanted.lock().clone();
                let sets = inner.sets.read();
                wanted
                    .into_iter()
                    .filter(|(u, ttl)| {
                        sets.get(u).is_none_or(|s| s.retry_soon || s.fetched.is_none_or(|t| t.elapsed() >= *ttl))
                    })
                    .map(|(u, _)| u)
                    .collect()
            }
        };
        for uri in due {
            let result = fetch(&client, &uri).await;
            let Some(inner) = inner.upgrade() else { return };
            match result {
                Ok(set) => {
                    inner.metrics.jwks_fetches.with_label_values(&["ok"]).inc();
                    tracing::debug!(uri, keys = set.keys.len(), "JWKS fetched");
                    if inner.wanted.lock().contains_key(&uri) {
                        inner.sets.write().insert(
                            uri,
                            Arc::new(KeySet {
                                keys: set.keys,
                                fetched: Some(Instant::now()),
                                retry_soon: false,
                            }),
                        );
                    }
                }
                Err(e) => {
                    inner
                        .metrics
                        .jwks_fetches
                        .with_label_values(&["error"])
                        .inc();
                    tracing::warn!(uri, error = %e, "JWKS fetch failed; keeping the last good set");
                    let old = inner.sets.read().get(&uri).cloned();
                    if let Some(old) = old {
                        inner.sets.write().insert(
                            uri,
                            Arc::new(KeySet {
                                keys: old.keys.clone(),
                                fetched: old.fetched,
                                retry_soon: true,
                            }),
                        );
                    }
                }
            }
            inner.fetched.notify_waiters();
        }
    }
}

async fn fetch(client: &reqwest::Client, uri: &str) -> Result<JwkSet, String> {
    let resp = client.get(uri).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    // Read at most one byte past the limit: a hostile endpoint cannot make the router buffer
    // an endless body.
    let mut resp = resp;
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        body.extend_from_slice(&chunk);
        if body.len() > super::token::MAX_JWKS_BYTES {
            return Err("JWKS document over 1 MiB".into());
        }
    }
    super::token::parse_jwks(&body)
}
