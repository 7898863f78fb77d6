//! The desired state of the platform as plain, serialisable data (format version 1).
//!
//! Every struct denies unknown fields: a typo in a hand-written file is an error, never ignored.
//! Apps are referred to everywhere by their key `{app}-{space}` (see [`App::key`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The only stored format version this build reads and writes.
pub const FORMAT_VERSION: u64 = 1;

/// The whole desired state: what the control plane stores and the planes load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Format version; only `1` is accepted.
    pub version: FormatVersion,
    /// Monotonic revision set by the control plane (0 for hand-written files).
    #[serde(default)]
    pub revision: u64,
    /// Apps are served at `{app}-{space}.{domain}`.
    #[serde(default = "default_domain")]
    pub domain: String,
    #[serde(default)]
    pub router: RouterSettings,
    #[serde(default)]
    pub logs: LogSettings,
    #[serde(default)]
    pub spaces: Vec<Space>,
    #[serde(default)]
    pub apps: Vec<App>,
    #[serde(default)]
    pub releases: Vec<Release>,
    #[serde(default)]
    pub formation: Vec<Formation>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub sites: Vec<Site>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub attachments: Vec<Attachment>,
    #[serde(default)]
    pub canaries: Vec<Canary>,
    #[serde(default)]
    pub certificates: Vec<Certificate>,
    #[serde(default)]
    pub drains: Vec<Drain>,
    /// Per-app limits (at most one entry per app); apps without one have none.
    #[serde(default)]
    pub limits: Vec<AppLimits>,
}

fn default_domain() -> String {
    "wharf.localhost".to_owned()
}

impl Snapshot {
    /// An empty snapshot of the current format version for `domain`.
    pub fn empty(domain: &str) -> Self {
        Snapshot {
            version: FormatVersion,
            revision: 0,
            domain: domain.to_owned(),
            router: RouterSettings::default(),
            logs: LogSettings::default(),
            spaces: Vec::new(),
            apps: Vec::new(),
            releases: Vec::new(),
            formation: Vec::new(),
            endpoints: Vec::new(),
            sites: Vec::new(),
            routes: Vec::new(),
            filters: Vec::new(),
            attachments: Vec::new(),
            canaries: Vec::new(),
            certificates: Vec::new(),
            drains: Vec::new(),
            limits: Vec::new(),
        }
    }

    /// Fill `cert_pem`/`key_pem` of certificates given as files, with I/O injected by the caller
    /// (this crate does none). Errors carry the certificate's path in the snapshot.
    pub fn load_files<F>(&mut self, mut read: F) -> Result<(), crate::Problems>
    where
        F: FnMut(&str) -> Result<String, String>,
    {
        let mut problems = crate::Problems::default();
        for (i, cert) in self.certificates.iter_mut().enumerate() {
            if let Some(path) = cert.cert_file.take() {
                match read(&path) {
                    Ok(text) => cert.cert_pem = Some(text),
                    Err(e) => problems.push(
                        format!("certificates[{i}].cert_file"),
                        format!("cannot read {path:?}: {e}"),
                    ),
                }
            }
            if let Some(path) = cert.key_file.take() {
                match read(&path) {
                    Ok(text) => cert.key_pem = Some(text),
                    Err(e) => problems.push(
                        format!("certificates[{i}].key_file"),
                        format!("cannot read {path:?}: {e}"),
                    ),
                }
            }
        }
        problems.into_result(())
    }
}

/// The literal `1`: deserialising any other version fails with a clear message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FormatVersion;

impl Serialize for FormatVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(FORMAT_VERSION)
    }
}

impl<'de> Deserialize<'de> for FormatVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = u64::deserialize(d)?;
        if v == FORMAT_VERSION {
            Ok(FormatVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported config version {v} (this build reads version {FORMAT_VERSION})"
            )))
        }
    }
}

/// Compliance labels of a space. A real set: membership, never substring matching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compliance {
    /// Apps and sites reachable only from the internal listener.
    Internal,
    /// Production: destructive changes need an admin token.
    Prod,
    /// Secrets redacted everywhere; builds and promotions need passing checks.
    Socs,
}

impl fmt::Display for Compliance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compliance::Internal => "internal",
            Compliance::Prod => "prod",
            Compliance::Socs => "socs",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Space {
    pub name: String,
    /// Set once at creation; `validate_update` rejects a change.
    #[serde(default)]
    pub compliance: BTreeSet<Compliance>,
}

impl Space {
    pub fn is_internal(&self) -> bool {
        self.compliance.contains(&Compliance::Internal)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    pub name: String,
    pub space: String,
    /// Custom domains served by this app besides `{app}-{space}.{domain}`.
    #[serde(default)]
    pub domains: Vec<String>,
    /// The release serving traffic (the stable side when a canary runs).
    #[serde(default)]
    pub release: Option<u32>,
    /// Credential for this app's log ingest (logplex `POST /logs`, syslog structured data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_token: Option<String>,
}

impl App {
    /// The platform-wide key of an app: `{app}-{space}`.
    pub fn key(&self) -> String {
        format!("{}-{}", self.name, self.space)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// App key `{app}-{space}`.
    pub app: String,
    pub version: u32,
    pub artifact: Artifact,
    #[serde(default)]
    pub config_vars: BTreeMap<String, String>,
}

/// What a release runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Artifact {
    /// A container image reference (Kubernetes runtime).
    Image(String),
    /// A directory holding the built app and its Procfile (local runtime).
    Slug(String),
    /// A command line run as the web process (local runtime).
    Command(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Formation {
    /// App key `{app}-{space}`.
    pub app: String,
    /// Process type: `web`, `worker`, …
    #[serde(rename = "type")]
    pub process_type: String,
    #[serde(default = "one")]
    pub quantity: u32,
    #[serde(default = "default_size")]
    pub size: String,
    #[serde(default)]
    pub command: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Cron expression for scheduled process types.
    #[serde(default)]
    pub schedule: Option<String>,
}

fn one() -> u32 {
    1
}

fn default_size() -> String {
    "standard-1x".to_owned()
}

/// Dyno sizes the platform knows, with their memory in MiB.
pub const DYNO_SIZES: &[(&str, u32)] = &[
    ("eco", 512),
    ("basic", 512),
    ("standard-1x", 512),
    ("standard-2x", 1024),
    ("performance-m", 2560),
    ("performance-l", 14336),
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum HealthCheck {
    /// An HTTP GET of `path` must answer 2xx or 3xx.
    Http { path: String },
    /// A TCP connect to the dyno's port must succeed.
    Tcp,
}

/// State of one running dyno as the runtime reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DynoState {
    Starting,
    #[default]
    Up,
    Crashed,
    Idle,
    Down,
}

/// Where one dyno listens, for the router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// App key `{app}-{space}`.
    pub app: String,
    pub release: u32,
    /// Dyno name, e.g. `web.1`.
    pub process: String,
    pub address: SocketAddr,
    #[serde(default)]
    pub state: DynoState,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Site {
    pub domain: String,
    /// Internal sites are served only on the internal listener.
    #[serde(default)]
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Site domain.
    pub site: String,
    pub source_path: String,
    /// App key `{app}-{space}`.
    pub app: String,
    pub target_path: String,
}

/// A named HTTP filter, created once and attached to many apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Filter {
    Jwt(JwtFilter),
    Cors(CorsFilter),
}

impl Filter {
    pub fn name(&self) -> &str {
        match self {
            Filter::Jwt(f) => &f.name,
            Filter::Cors(f) => &f.name,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtFilter {
    pub name: String,
    pub jwks_uri: String,
    pub issuer: String,
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// How long a fetched JWKS is trusted before it is refreshed.
    #[serde(default = "default_jwks_ttl")]
    pub jwks_ttl_secs: u64,
    /// Accepted algorithms; the default is every asymmetric one Wharf supports.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn default_leeway() -> u64 {
    30
}

fn default_jwks_ttl() -> u64 {
    300
}

/// Asymmetric JWS algorithms Wharf verifies. `none` and HMAC are never accepted.
pub const JWT_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

fn default_algorithms() -> Vec<String> {
    JWT_ALGORITHMS.iter().map(|s| (*s).to_owned()).collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsFilter {
    pub name: String,
    /// Allowed origins (`https://a.example`), or `*` (only without credentials).
    pub allow_origin: Vec<String>,
    #[serde(default = "default_cors_methods")]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<u32>,
    #[serde(default)]
    pub allow_credentials: bool,
}

fn default_cors_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// App key `{app}-{space}`.
    pub app: String,
    /// Filter name.
    pub filter: String,
    /// When non-empty, only these path prefixes are filtered.
    #[serde(default)]
    pub includes: Vec<String>,
    /// These path prefixes are never filtered.
    #[serde(default)]
    pub excludes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// App key `{app}-{space}`.
    pub app: String,
    pub stable_release: u32,
    pub canary_release: u32,
    /// Percent of traffic to the canary, 0–100.
    pub weight: u32,
    /// Keep one client on one side with a cookie.
    #[serde(default)]
    pub sticky: bool,
    #[serde(default)]
    pub abort: AbortPolicy,
}

/// When the router aborts a canary on its own: a one-sided two-proportion z-test of the
/// canary's 5xx rate against stable's over a sliding window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbortPolicy {
    pub enabled: bool,
    pub window_secs: u64,
    /// Requests each side needs in the window before any verdict.
    pub min_requests: u64,
    /// z-score above which the canary is significantly worse (2.326 ≈ p < 0.01).
    pub z_threshold: f64,
    /// And its error rate must exceed stable's by at least this much (absolute).
    pub min_rate_delta: f64,
}

impl Default for AbortPolicy {
    fn default() -> Self {
        AbortPolicy {
            enabled: true,
            window_secs: 60,
            min_requests: 50,
            z_threshold: 2.326,
            min_rate_delta: 0.02,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    pub name: String,
    /// Host names served, exact (`api.example.com`) or wildcard of one label (`*.example.com`).
    pub names: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_pem: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_pem: Option<String>,
    /// Read by the loader (see [`Snapshot::load_files`]) into `cert_pem`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Served when no name matches the SNI (at most one certificate).
    #[serde(default)]
    pub default: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// App key `{app}-{space}`.
    pub app: String,
    pub url: String,
    /// Sent as `Logplex-Drain-Token` / structured data; generated by the control plane.
    #[serde(default)]
    pub token: Option<String>,
}

/// Platform-wide router behaviour. Listener addresses are process flags, not state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterSettings {
    pub hsts: Hsts,
    pub connect_timeout_ms: u64,
    pub first_byte_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    /// How long a dyno that refused or timed out a connect is skipped.
    pub dyno_down_ms: u64,
    /// Largest request body, in bytes (0: unlimited).
    pub max_body_bytes: u64,
    /// A new connection's TLS handshake and first request head must be in within this, and a
    /// later head within this of its first byte; beyond, the connection is closed (408 first
    /// when part of a head came).
    pub client_header_timeout_ms: u64,
    /// A request body (HTTP/1 or h2) gets this long, plus one second per
    /// `client_body_min_rate` bytes received; beyond, 408 (H28) and, for HTTP/1, the
    /// connection is closed (for h2, the stream ends).
    pub client_body_timeout_ms: u64,
    /// Bytes per second that extend the body deadline by a second (0: no extension).
    pub client_body_min_rate: u64,
    /// An HTTP/2 connection with no stream open for this long gets GOAWAY (NO_ERROR) and is
    /// closed.
    pub client_h2_idle_timeout_ms: u64,
    /// Caps on what one client, or all of them, may hold open or send.
    pub limits: ClientLimits,
}

/// Router limits per client IP address and in total. Only `max_connections` is on by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientLimits {
    /// Open client connections across every listener; a connection beyond it is closed at
    /// once (0: no limit).
    pub max_connections: u32,
    /// Open connections from one IP address; beyond it, closed at once (0: no limit).
    pub max_connections_per_ip: u32,
    /// Requests per second from one IP address, averaged; 429 beyond (0: no limit).
    pub requests_per_sec_per_ip: u32,
    /// Requests one IP address may send at once before the rate applies (0: one second's worth).
    pub burst_per_ip: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        ClientLimits {
            max_connections: 20_000,
            max_connections_per_ip: 0,
            requests_per_sec_per_ip: 0,
            burst_per_ip: 0,
        }
    }
}

/// Limits of one app, at the router and at log ingest. Every field but `app` is optional; 0
/// means no limit (for `max_body_bytes`: the router's own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AppLimits {
    /// App key `{app}-{space}`.
    pub app: String,
    /// Requests in flight at once through the router; 503 (H11) beyond.
    #[serde(default)]
    pub max_concurrent_requests: u32,
    /// Requests per second, averaged; 429 beyond.
    #[serde(default)]
    pub requests_per_sec: u32,
    /// Requests allowed at once before the rate applies (0: one second's worth).
    #[serde(default)]
    pub burst: u32,
    /// Largest request body in bytes; 413 beyond.
    #[serde(default)]
    pub max_body_bytes: u64,
    /// Log lines per second accepted at ingest, averaged; beyond, lines are dropped and a
    /// notice line says how many.
    #[serde(default)]
    pub log_lines_per_sec: u32,
    /// Log lines accepted at once before the rate applies (0: one second's worth).
    #[serde(default)]
    pub log_burst: u32,
}

/// A token-bucket rate: `per_sec` on average, `burst` at once (never below `per_sec`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u32,
    pub burst: u32,
}

impl Rate {
    /// `None` when `per_sec` is 0 (no limit).
    pub fn new(per_sec: u32, burst: u32) -> Option<Rate> {
        (per_sec > 0).then(|| Rate {
            per_sec,
            burst: burst.max(per_sec),
        })
    }
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            hsts: Hsts::default(),
            connect_timeout_ms: 5_000,
            first_byte_timeout_ms: 30_000,
            idle_timeout_ms: 55_000,
            dyno_down_ms: 10_000,
            max_body_bytes: 0,
            client_header_timeout_ms: 20_000,
            client_body_timeout_ms: 20_000,
            client_body_min_rate: 500,
            client_h2_idle_timeout_ms: 60_000,
            limits: ClientLimits::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Hsts {
    pub enabled: bool,
    pub max_age: u64,
    pub include_subdomains: bool,
}

impl Default for Hsts {
    fn default() -> Self {
        Hsts {
            enabled: true,
            max_age: 31_536_000,
            include_subdomains: false,
        }
    }
}

/// Platform-wide log shuttle behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Lines kept per app for log sessions.
    pub history_lines: usize,
    /// Drains an app may have.
    pub max_drains_per_app: usize,
    /// Buffered lines per drain before the oldest are dropped (L10).
    pub drain_buffer_lines: usize,
    /// Allow plain `http://` drains (tests, private networks).
    pub allow_http_drains: bool,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            history_lines: 1500,
            max_drains_per_app: 10,
            drain_buffer_lines: 10_000,
            allow_http_drains: false,
        }
    }
}
