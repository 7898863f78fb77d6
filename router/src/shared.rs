//! State shared by every listener of one router: the live table, metrics, the log sink, the
//! event channel and the JWKS cache.

use std::sync::Arc;

use arc_swap::ArcSwap;
use wharf_config::{LineSink, RouterEvent};

use crate::filters::jwks::JwksCache;
use crate::live::Live;
use crate::metrics::Metrics;

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("version", &self.live.load().version)
            .finish()
    }
}

pub struct Shared {
    pub live: Arc<ArcSwap<Live>>,
    pub metrics: Metrics,
    pub sink: Arc<dyn LineSink>,
    pub events: tokio::sync::broadcast::Sender<RouterEvent>,
    pub jwks: JwksCache,
    pub limits: Arc<crate::limits::Limiter>,
    /// Request headers past pingora's parser limit, until the proxy puts them back.
    pub(crate) parked: crate::overflow::Parked,
}
