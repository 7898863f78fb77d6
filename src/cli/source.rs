//! Where a standalone router or log shuttle gets its snapshot: a file (reloaded when it changes
//! and on SIGHUP), or a control plane's `GET /v1/snapshot` long-poll feed. Following the control
//! plane, the last good snapshot keeps serving while the control plane is away, and with
//! `--snapshot-cache` it survives a restart of the plane itself.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use wharf_config::{Format, Problems, Validated};

use super::config_cmd::load_file;
use super::control_cmd::shutdown_signal;

/// The snapshot source flags shared by `wharf router` and `wharf logshuttle`.
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Snapshot file (TOML or JSON); reloaded when it changes and on SIGHUP.
    #[arg(
        long,
        short = 'c',
        required_unless_present = "control",
        conflicts_with = "control"
    )]
    pub config: Option<PathBuf>,
    /// Follow a control plane instead of a file: its API base URL (`GET /v1/snapshot`).
    #[arg(long, env = "WHARF_CONTROL_URL", value_name = "URL")]
    pub control: Option<String>,
    /// Admin token for the control plane's snapshot feed.
    #[arg(long, env = "WHARF_CONTROL_TOKEN", hide_env_values = true)]
    pub control_token: Option<String>,
    /// PEM CA bundle to trust for an https:// control plane (else the web PKI roots).
    #[arg(long, value_name = "FILE")]
    pub control_ca: Option<PathBuf>,
    /// Keep the last good snapshot from the control plane in this file (mode 0600: it holds
    /// config vars and keys), and start from it when the control plane is away at start.
    #[arg(long, value_name = "FILE")]
    pub snapshot_cache: Option<PathBuf>,
    /// How long to wait at start for the control plane before serving the cache (or nothing).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub control_wait: u64,
}

/// A snapshot source, opened.
#[derive(Debug)]
pub enum Source {
    File(PathBuf),
    Control(Feed),
}

/// What a source hands over: a valid snapshot, or every reason one was refused.
pub type Loaded = Result<Validated, Problems>;

impl Source {
    pub fn open(a: &SourceArgs) -> anyhow::Result<Source> {
        match (&a.config, &a.control) {
            (Some(f), None) => Ok(Source::File(f.clone())),
            (None, Some(url)) => Ok(Source::Control(Feed::new(a, url)?)),
            _ => anyhow::bail!("give exactly one of --config FILE and --control URL"),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Source::File(f) => format!("{} (reloads on change and SIGHUP)", f.display()),
            Source::Control(feed) => format!("control plane {}", feed.base),
        }
    }

    /// The first snapshot this plane can serve (`ready` says why not). A file must load (its
    /// problems come back otherwise); the control plane is waited for up to `--control-wait`,
    /// then the cache is used, then an empty snapshot (every host unknown) if `ready` takes it,
    /// else the feed is waited for as long as it takes.
    pub async fn first(
        &mut self,
        domain_if_empty: &str,
        ready: &dyn Fn(&Validated) -> Result<(), String>,
    ) -> anyhow::Result<Loaded> {
        match self {
            Source::File(f) => load_file(f),
            Source::Control(feed) => Ok(Ok(feed.first(domain_if_empty, ready).await)),
        }
    }

    /// Hand every new snapshot to `apply` until SIGTERM or Ctrl-C.
    pub async fn follow(self, mut apply: impl FnMut(Loaded, &'static str)) -> anyhow::Result<()> {
        match self {
            Source::File(f) => {
                super::follow::follow_file(&f, Duration::from_secs(1), |why| match load_file(&f) {
                    Ok(loaded) => apply(loaded, why),
                    Err(e) => tracing::error!(
                        why,
                        error = %format!("{e:#}"),
                        "reload failed; the running snapshot keeps serving"
                    ),
                })
                .await
            }
            Source::Control(feed) => {
                let stop = shutdown_signal();
                tokio::select! {
                    () = feed.follow(&mut apply) => Ok(()),
                    () = stop => Ok(()),
                }
            }
        }
    }
}

/// The control plane's snapshot feed: long-polls `GET /v1/snapshot?after=REVISION`, backs off
/// (1 s doubling to 30 s, jittered) while the plane is away.
#[derive(Debug)]
pub struct Feed {
    base: String,
    token: String,
    http: reqwest::Client,
    cache: Option<PathBuf>,
    wait: Duration,
    revision: Option<u64>,
}

/// Seconds the control plane may hold a poll open; the client allows this plus a margin.
const POLL_SECS: u64 = 25;

#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error("cannot reach the control plane: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("the control plane refused the token (HTTP {0}); the feed needs an admin token")]
    Refused(u16),
    #[error("the control plane answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("the snapshot could not be read: {0}")]
    Body(String),
}

impl Feed {
    fn new(a: &SourceArgs, url: &str) -> anyhow::Result<Feed> {
        let token = a
            .control_token
            .clone()
            .context("--control needs --control-token (or WHARF_CONTROL_TOKEN): an admin token")?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(POLL_SECS + 15))
            .user_agent(concat!("wharf/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &a.control_ca {
            let pem = std::fs::read(ca).with_context(|| format!("cannot read {}", ca.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("{}: not a PEM bundle", ca.display()))?
            {
                http = http.add_root_certificate(cert);
            }
        }
        Ok(Feed {
            base: url.trim_end_matches('/').to_owned(),
            token,
            http: http.build()?,
            cache: a.snapshot_cache.clone(),
            wait: Duration::from_secs(a.control_wait),
            revision: None,
        })
    }

    async fn first(
        &mut self,
        domain_if_empty: &str,
        ready: &dyn Fn(&Validated) -> Result<(), String>,
    ) -> Validated {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut backoff = Backoff::default();
        let mut fell_back = false;
        loop {
            match self.poll(self.revision).await {
                Ok(Some(Ok(v))) => match ready(&v) {
                    Ok(()) => {
                        self.keep(&v);
                        return v;
                    }
                    Err(why) => tracing::warn!(
                        revision = v.revision,
                        why,
                        "waiting for a snapshot this plane can serve"
                    ),
                },
                Ok(Some(Err(problems))) => {
                    tracing::error!(%problems, "the control plane's snapshot is not valid");
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the control plane");
                    tokio::time::sleep(backoff.next()).await;
                }
            }
            if fell_back || tokio::time::Instant::now() < deadline {
                continue;
            }
            fell_back = true;
            if let Some(v) = self.cached() {
                match ready(&v) {
                    Ok(()) => {
                        tracing::warn!(
                            revision = v.revision,
                            "control plane away; serving the cached snapshot until it answers"
                        );
                        return v;
                    }
                    Err(why) => tracing::warn!(why, "the cached snapshot cannot be served"),
                }
            }
            let empty = wharf_config::validate(wharf_config::Snapshot::empty(domain_if_empty))
                .expect("the empty snapshot is valid");
            match ready(&empty) {
                Ok(()) => {
                    tracing::warn!(
                        "control plane away and no cached snapshot; serving nothing until it answers"
                    );
                    return empty;
                }
                Err(why) => tracing::warn!(
                    why,
                    "no cached snapshot either; not serving until the control plane answers"
                ),
            }
        }
    }

    async fn follow(mut self, apply: &mut impl FnMut(Loaded, &'static str)) {
        let mut backoff = Backoff::default();
        let mut away = false;
        loop {
            match self.poll(self.revision).await {
                Ok(got) => {
                    if away {
                        tracing::info!(control = %self.base, "control plane reachable again");
                        away = false;
                    }
                    backoff = Backoff::default();
                    match got {
                        Some(Ok(v)) => {
                            self.keep(&v);
                            apply(Ok(v), "control plane");
                        }
                        Some(Err(problems)) => apply(Err(problems), "control plane"),
                        None => {}
                    }
                }
                Err(e) => {
                    let pause = backoff.next();
                    if !away || backoff.attempt % 10 == 0 {
                        tracing::warn!(
                            error = %e,
                            retry_in_ms = pause.as_millis() as u64,
                            "control plane away; the last good snapshot keeps serving"
                        );
                    }
                    away = true;
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// One poll: `Some` with a new snapshot (or its problems), `None` when nothing changed.
    async fn poll(&mut self, after: Option<u64>) -> Result<Option<Loaded>, FeedError> {
        let mut url = format!("{}/v1/snapshot", self.base);
        if let Some(r) = after {
            url.push_str(&format!("?after={r}&wait={POLL_SECS}"));
        }
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(FeedError::Unreachable)?;
        let status = resp.status().as_u16();
        match status {
            204 => return Ok(None),
            200 => {}
            401 | 403 => return Err(FeedError::Refused(status)),
            _ => {
                let body = resp.text().await.unwrap_or_default();
                return Err(FeedError::Status(status, body.chars().take(200).collect()));
            }
        }
        let text = resp.text().await.map_err(FeedError::Unreachable)?;
        let snapshot =
            wharf_config::parse(&text, Format::Json).map_err(|e| FeedError::Body(e.to_string()))?;
        // Move past this revision even when it is refused, so the feed waits for the next one.
        self.revision = Some(snapshot.revision);
        Ok(Some(wharf_config::validate(snapshot)))
    }

    fn keep(&mut self, v: &Validated) {
        self.revision = Some(v.revision);
        let Some(path) = &self.cache else { return };
        if let Err(e) = write_cache(path, &wharf_config::to_json(v)) {
            tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot write the snapshot cache");
        }
    }

    fn cached(&self) -> Option<Validated> {
        let path = self.cache.as_ref()?;
        let text = std::fs::read_to_string(path).ok()?;
        match wharf_config::load(&text, Format::Json) {
            Ok(v) => Some(v),
            Err(problems) => {
                tracing::error!(path = %path.display(), %problems, "the snapshot cache is not valid; ignored");
                None
            }
        }
    }
}

/// Written beside, then renamed over, so a crash never leaves half a cache.
fn write_cache(path: &Path, json: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = super::control_cmd::create_private(&tmp)?;
    f.write_all(json.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))?;
    Ok(())
}

/// Exponential back-off: 1 s doubling to 30 s, each pause jittered by ±20 %.
#[derive(Debug, Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = 1000u64 << self.attempt.min(5);
        self.attempt += 1;
        let ms = base.min(30_000) as f64 * rand::random_range(0.8..1.2);
        Duration::from_millis(ms as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        let mut b = Backoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| b.next().as_millis() as u64).collect();
        assert!((800..=1200).contains(&pauses[0]), "{pauses:?}");
        assert!((1600..=2400).contains(&pauses[1]), "{pauses:?}");
        for p in &pauses[6..] {
            assert!((24_000..=36_000).contains(p), "{pauses:?}");
        }
    }
}
