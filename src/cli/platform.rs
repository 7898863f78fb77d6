//! Operator commands against the control plane's API, in Heroku's and Akkeris' words:
//! `apps:create`, `config:set`, `ps:scale`, `releases:rollback`, `routes:create`, … Every
//! command takes `--json`. The API URL and token come from `--api-url`/`--token`, the env
//! (`WHARF_API_URL`, `WHARF_API_TOKEN`) or a JSON config file (`--config`, `WHARF_CONFIG`,
//! default `~/.config/wharf/cli.json` with `{"api_url": …, "token": …}`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

#[path = "pipeline_cmds.rs"]
mod pipeline_cmds;

#[derive(Debug, Args, Clone)]
pub struct Conn {
    /// Control plane API URL.
    #[arg(long, env = "WHARF_API_URL")]
    pub api_url: Option<String>,
    /// API token.
    #[arg(long, env = "WHARF_API_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CLI config file (JSON with `api_url` and `token`).
    #[arg(long, env = "WHARF_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct AppArg {
    /// App: `{app}-{space}`, or its name when unique.
    #[arg(short, long, env = "WHARF_APP")]
    pub app: String,
}

#[derive(Debug, Subcommand)]
pub enum PlatformCommand {
    #[command(flatten)]
    Pipelines(pipeline_cmds::PipelineCommand),
    /// Create an app in a space.
    #[command(name = "apps:create")]
    AppsCreate {
        name: Option<String>,
        #[arg(short, long)]
        space: Option<String>,
        #[arg(short, long)]
        description: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// List apps.
    #[command(name = "apps")]
    Apps {
        /// Only this space.
        #[arg(short, long)]
        space: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// Show an app.
    #[command(name = "apps:info")]
    AppsInfo {
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Destroy an app (give its key again with --confirm).
    #[command(name = "apps:destroy")]
    AppsDestroy {
        #[command(flatten)]
        a: AppArg,
        #[arg(long)]
        confirm: String,
        #[command(flatten)]
        c: Conn,
    },
    /// Create a space.
    #[command(name = "spaces:create")]
    SpacesCreate {
        name: String,
        /// internal, prod, socs (repeat or comma-separate).
        #[arg(short = 'c', long, value_delimiter = ',')]
        compliance: Vec<String>,
        #[arg(short, long)]
        description: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// List spaces.
    #[command(name = "spaces")]
    Spaces {
        #[command(flatten)]
        c: Conn,
    },
    /// Show an app's config vars (same as `wharf config -a APP`).
    #[command(name = "config:show")]
    Config {
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Set config vars (KEY=VALUE …); makes a release.
    #[command(name = "config:set")]
    ConfigSet {
        #[arg(required = true)]
        vars: Vec<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Remove config vars (KEY …); makes a release.
    #[command(name = "config:unset")]
    ConfigUnset {
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// List an app's dynos and formation.
    #[command(name = "ps")]
    Ps {
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Scale process types: `web=2`, `worker=1:standard-2x`.
    #[command(name = "ps:scale")]
    PsScale {
        #[arg(required = true)]
        changes: Vec<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Restart every dyno, a process type (`web`) or one dyno (`web.1`).
    #[command(name = "ps:restart")]
    PsRestart {
        dyno: Option<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// List releases, newest first.
    #[command(name = "releases")]
    Releases {
        #[arg(short, long, default_value_t = 15)]
        num: u32,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Roll back to a release (`v3`); the previous one by default.
    #[command(name = "releases:rollback")]
    ReleasesRollback {
        release: Option<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Create a site (a shared host whose paths route to apps).
    #[command(name = "sites:create")]
    SitesCreate {
        domain: String,
        #[arg(short, long)]
        internal: bool,
        #[arg(short, long)]
        description: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// List sites.
    #[command(name = "sites")]
    Sites {
        #[command(flatten)]
        c: Conn,
    },
    /// Route SOURCE_PATH on a site to TARGET_PATH of an app.
    #[command(name = "routes:create")]
    RoutesCreate {
        source_path: String,
        target_path: String,
        #[command(flatten)]
        a: AppArg,
        #[arg(short, long)]
        site: String,
        #[command(flatten)]
        c: Conn,
    },
    /// List routes (of a site with -s).
    #[command(name = "routes")]
    Routes {
        #[arg(short, long)]
        site: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// Create a jwt or cors filter.
    #[command(name = "filters:create")]
    FiltersCreate {
        name: String,
        #[arg(short = 't', long = "type", value_parser = ["jwt", "cors"])]
        filter_type: String,
        #[arg(short, long)]
        description: Option<String>,
        #[arg(long)]
        jwt_issuer: Option<String>,
        #[arg(long)]
        jwt_jwks_uri: Option<String>,
        #[arg(long, value_delimiter = ',')]
        jwt_audiences: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        cors_allow_origin: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        cors_allow_methods: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        cors_allow_headers: Vec<String>,
        #[arg(long, value_delimiter = ',')]
        cors_expose_headers: Vec<String>,
        #[arg(long)]
        cors_max_age: Option<u32>,
        #[arg(long)]
        cors_allow_credentials: bool,
        #[command(flatten)]
        c: Conn,
    },
    /// List filters.
    #[command(name = "filters")]
    Filters {
        #[command(flatten)]
        c: Conn,
    },
    /// Attach a filter to an app, optionally only on (-i) or never on (-e) path prefixes.
    #[command(name = "filters:attach")]
    FiltersAttach {
        filter: String,
        #[command(flatten)]
        a: AppArg,
        #[arg(short, long)]
        includes: Vec<String>,
        #[arg(short, long)]
        excludes: Vec<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// Add a log drain.
    #[command(name = "drains:add")]
    DrainsAdd {
        url: String,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// List log drains.
    #[command(name = "drains")]
    Drains {
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Show recent log lines; -t keeps streaming.
    #[command(name = "logs")]
    Logs {
        #[arg(short, long, default_value_t = 100)]
        num: u32,
        #[arg(short, long)]
        tail: bool,
        /// Only this dyno (web.1) or process type (web).
        #[arg(short, long)]
        dyno: Option<String>,
        /// Only app or heroku lines.
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Create an API token (printed once): --admin, or limited with --space / --app.
    #[command(name = "tokens:create")]
    TokensCreate {
        #[arg(long)]
        admin: bool,
        #[arg(long)]
        space: Vec<String>,
        #[arg(long = "for-app")]
        app: Vec<String>,
        #[arg(short, long)]
        description: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
}

pub(crate) struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    json: bool,
}

fn config_file(c: &Conn) -> Option<Value> {
    let path = c.config.clone().or_else(|| {
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/wharf/cli.json"))
    })?;
    let text = std::fs::read_to_string(path).ok()?;
    serde_json::from_str(&text).ok()
}

impl Client {
    pub(crate) fn new(c: &Conn) -> anyhow::Result<Client> {
        let file = config_file(c);
        let from_file = |k: &str| {
            file.as_ref()
                .and_then(|f| f.get(k))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let base = c
            .api_url
            .clone()
            .or_else(|| from_file("api_url"))
            .unwrap_or_else(|| "http://127.0.0.1:5000".into());
        let token = c
            .token
            .clone()
            .or_else(|| from_file("token"))
            .context("no API token: --token, WHARF_API_TOKEN or the config file")?;
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: reqwest::Client::new(),
            json: c.json,
        })
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        range: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("Accept", "application/vnd.heroku+json; version=3");
        if let Some(r) = range {
            req = req.header("Range", r);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach the API at {}", self.base))?;
        let status = resp.status();
        let text = resp.text().await?;
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let msg = v
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| v.to_string());
            bail!("{msg} ({status})");
        }
        Ok(v)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::GET, path, None, None).await
    }
    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::POST, path, Some(body), None)
            .await
    }
    async fn patch(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(reqwest::Method::PATCH, path, Some(body), None)
            .await
    }
    async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.send(reqwest::Method::DELETE, path, None, None).await
    }

    /// Print JSON with --json, else what `human` prints.
    fn show(&self, v: &Value, human: impl FnOnce(&Value) -> String) {
        let text = if self.json {
            serde_json::to_string_pretty(v).unwrap_or_default()
        } else {
            human(v)
        };
        out(&text);
    }
}

fn out(s: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{}", s.trim_end_matches('\n'));
}

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A table like Heroku's: header, dashes, rows, columns padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut outl = vec![
        line(headers.iter().map(|h| (*h).to_owned()).collect()),
        line(w.iter().map(|n| "─".repeat(*n)).collect()),
    ];
    outl.extend(rows.into_iter().map(line));
    outl.join("\n")
}

fn rows(v: &Value, f: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    v.as_array()
        .map(|a| a.iter().map(f).collect())
        .unwrap_or_default()
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

pub fn run(cmd: PlatformCommand) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(exec(cmd))?;
    Ok(ExitCode::SUCCESS)
}

async fn exec(cmd: PlatformCommand) -> anyhow::Result<()> {
    use PlatformCommand as P;
    match cmd {
        P::Pipelines(cmd) => pipeline_cmds::exec(cmd).await?,
        P::AppsCreate {
            name,
            space,
            description,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    "/apps",
                    json!({"name": name, "space": space, "description": description}),
                )
                .await?;
            cl.show(&v, |v| {
                format!("Created {} — {}", s(&v["name"]), s(&v["web_url"]))
            });
        }
        P::Apps { space, c } => {
            let cl = Client::new(&c)?;
            let mut v = cl.get("/apps").await?;
            if let (Some(sp), Some(arr)) = (&space, v.as_array_mut()) {
                arr.retain(|a| a["space"]["name"] == sp.as_str());
            }
            cl.show(&v, |v| {
                table(
                    &["Name", "Space", "Web URL"],
                    rows(v, |a| {
                        vec![s(&a["name"]), s(&a["space"]["name"]), s(&a["web_url"])]
                    }),
                )
            });
        }
        P::AppsInfo { a, c } => {
            let cl = Client::new(&c)?;
            let v = cl.get(&format!("/apps/{}", enc(&a.app))).await?;
            cl.show(&v, |v| {
                format!(
                    "=== {}\nSpace:       {}\nCompliance:  {}\nOwner:       {}\nWeb URL:     {}\nCreated:     {}\nReleased:    {}",
                    s(&v["name"]),
                    s(&v["space"]["name"]),
                    v["space"]["compliance"].as_array().map(|c| c.iter().map(s).collect::<Vec<_>>().join(", ")).unwrap_or_default(),
                    s(&v["owner"]["email"]),
                    s(&v["web_url"]),
                    s(&v["created_at"]),
                    s(&v["released_at"]),
                )
            });
        }
        P::AppsDestroy { a, confirm, c } => {
            let cl = Client::new(&c)?;
            let app = cl.get(&format!("/apps/{}", enc(&a.app))).await?;
            if confirm != s(&app["name"]) && confirm != a.app {
                bail!("--confirm must repeat the app's name ({})", s(&app["name"]));
            }
            let v = cl.delete(&format!("/apps/{}", enc(&a.app))).await?;
            cl.show(&v, |v| format!("Destroyed {}", s(&v["name"])));
        }
        P::SpacesCreate {
            name,
            compliance,
            description,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    "/spaces",
                    json!({"name": name, "compliance": compliance, "description": description}),
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Created space {} (compliance: {})",
                    s(&v["name"]),
                    v["compliance"]
                        .as_array()
                        .map(|c| c.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                )
            });
        }
        P::Spaces { c } => {
            let cl = Client::new(&c)?;
            let v = cl.get("/spaces").await?;
            cl.show(&v, |v| {
                table(
                    &["Name", "Compliance", "Apps"],
                    rows(v, |x| {
                        vec![
                            s(&x["name"]),
                            x["compliance"]
                                .as_array()
                                .map(|c| c.iter().map(s).collect::<Vec<_>>().join(","))
                                .unwrap_or_default(),
                            s(&x["apps"]),
                        ]
                    }),
                )
            });
        }
        P::Config { a, c } => {
            let cl = Client::new(&c)?;
            let v = cl
                .get(&format!("/apps/{}/config-vars", enc(&a.app)))
                .await?;
            cl.show(&v, |v| config_text(&a.app, v));
        }
        P::ConfigSet { vars, a, c } => {
            let cl = Client::new(&c)?;
            let mut body = serde_json::Map::new();
            for kv in &vars {
                let (k, val) = kv
                    .split_once('=')
                    .with_context(|| format!("{kv:?} is not KEY=VALUE"))?;
                body.insert(k.to_owned(), Value::String(val.to_owned()));
            }
            let v = cl
                .patch(
                    &format!("/apps/{}/config-vars", enc(&a.app)),
                    Value::Object(body),
                )
                .await?;
            let rel = latest_release(&cl, &a.app).await?;
            cl.show(&v, |v| {
                format!(
                    "Setting config vars and restarting {}... done, v{rel}\n{}",
                    a.app,
                    config_text(&a.app, v)
                )
            });
        }
        P::ConfigUnset { keys, a, c } => {
            let cl = Client::new(&c)?;
            let body: serde_json::Map<String, Value> =
                keys.iter().map(|k| (k.clone(), Value::Null)).collect();
            let v = cl
                .patch(
                    &format!("/apps/{}/config-vars", enc(&a.app)),
                    Value::Object(body),
                )
                .await?;
            let rel = latest_release(&cl, &a.app).await?;
            cl.show(&v, |_| {
                format!(
                    "Unsetting {} and restarting {}... done, v{rel}",
                    keys.join(", "),
                    a.app
                )
            });
        }
        P::Ps { a, c } => {
            let cl = Client::new(&c)?;
            let dynos = cl.get(&format!("/apps/{}/dynos", enc(&a.app))).await?;
            let formation = cl.get(&format!("/apps/{}/formation", enc(&a.app))).await?;
            let v = json!({"dynos": dynos, "formation": formation});
            cl.show(&v, |v| {
                format!(
                    "=== Formation\n{}\n\n=== Dynos\n{}",
                    table(
                        &["Type", "Quantity", "Size", "Command"],
                        rows(&v["formation"], |f| vec![
                            s(&f["type"]),
                            s(&f["quantity"]),
                            s(&f["size"]),
                            s(&f["command"])
                        ])
                    ),
                    table(
                        &["Name", "State", "Release", "Since"],
                        rows(&v["dynos"], |d| vec![
                            s(&d["name"]),
                            s(&d["state"]),
                            format!("v{}", s(&d["release"]["version"])),
                            s(&d["updated_at"])
                        ])
                    ),
                )
            });
        }
        P::PsScale { changes, a, c } => {
            let cl = Client::new(&c)?;
            let mut updates = Vec::new();
            for ch in &changes {
                let (t, rest) = ch
                    .split_once('=')
                    .with_context(|| format!("{ch:?} is not TYPE=N[:SIZE]"))?;
                let (q, size) = match rest.split_once(':') {
                    Some((q, sz)) => (q, Some(sz)),
                    None => (rest, None),
                };
                let mut u = json!({"type": t, "quantity": q});
                if let Some(sz) = size {
                    u["size"] = json!(sz);
                }
                updates.push(u);
            }
            let v = cl
                .patch(
                    &format!("/apps/{}/formation", enc(&a.app)),
                    json!({"updates": updates}),
                )
                .await?;
            cl.show(&v, |v| {
                let now: Vec<String> = rows(v, |f| {
                    vec![format!(
                        "{}={}:{}",
                        s(&f["type"]),
                        s(&f["quantity"]),
                        s(&f["size"])
                    )]
                })
                .into_iter()
                .flatten()
                .collect();
                format!("Scaling dynos... done, now running {}", now.join(", "))
            });
        }
        P::PsRestart { dyno, a, c } => {
            let cl = Client::new(&c)?;
            let path = match &dyno {
                Some(d) => format!("/apps/{}/dynos/{}", enc(&a.app), enc(d)),
                None => format!("/apps/{}/dynos", enc(&a.app)),
            };
            let v = cl.delete(&path).await?;
            cl.show(&v, |_| {
                format!(
                    "Restarting {} on {}... done",
                    dyno.as_deref().unwrap_or("dynos"),
                    a.app
                )
            });
        }
        P::Releases { num, a, c } => {
            let cl = Client::new(&c)?;
            let v = cl
                .send(
                    reqwest::Method::GET,
                    &format!("/apps/{}/releases", enc(&a.app)),
                    None,
                    Some(&format!("version ..; max={num}, order=desc")),
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "=== {} Releases\n{}",
                    a.app,
                    table(
                        &["Version", "Description", "User", "Created", "Current"],
                        rows(v, |r| vec![
                            format!("v{}", s(&r["version"])),
                            s(&r["description"]),
                            s(&r["user"]["email"]),
                            s(&r["created_at"]),
                            if r["current"] == true {
                                "*".into()
                            } else {
                                String::new()
                            }
                        ])
                    )
                )
            });
        }
        P::ReleasesRollback { release, a, c } => {
            let cl = Client::new(&c)?;
            let target = match release {
                Some(r) => r,
                None => {
                    let list = cl
                        .send(
                            reqwest::Method::GET,
                            &format!("/apps/{}/releases", enc(&a.app)),
                            None,
                            Some("version ..; max=2, order=desc"),
                        )
                        .await?;
                    let prev = list
                        .as_array()
                        .and_then(|l| l.get(1))
                        .context("no previous release to roll back to")?;
                    s(&prev["version"])
                }
            };
            let old = cl
                .get(&format!("/apps/{}/releases/{}", enc(&a.app), enc(&target)))
                .await?;
            let v = cl
                .post(
                    &format!("/apps/{}/releases", enc(&a.app)),
                    json!({"release": old["id"]}),
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Rolling back {} to v{}... done, v{}",
                    a.app,
                    s(&old["version"]),
                    s(&v["version"])
                )
            });
        }
        P::SitesCreate {
            domain,
            internal,
            description,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    "/sites",
                    json!({"domain": domain, "internal": internal, "description": description}),
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Created site {}{}",
                    s(&v["domain"]),
                    if v["internal"] == true {
                        " (internal)"
                    } else {
                        ""
                    }
                )
            });
        }
        P::Sites { c } => {
            let cl = Client::new(&c)?;
            let v = cl.get("/sites").await?;
            cl.show(&v, |v| {
                table(
                    &["Domain", "Internal", "Created"],
                    rows(v, |x| {
                        vec![s(&x["domain"]), s(&x["internal"]), s(&x["created_at"])]
                    }),
                )
            });
        }
        P::RoutesCreate {
            source_path,
            target_path,
            a,
            site,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl.post("/routes", json!({"site": site, "app": a.app, "source_path": source_path, "target_path": target_path})).await?;
            cl.show(&v, |v| {
                format!(
                    "Created route https://{}{} → {}{} ({})",
                    s(&v["site"]["domain"]),
                    s(&v["source_path"]),
                    s(&v["app"]["name"]),
                    s(&v["target_path"]),
                    s(&v["id"])
                )
            });
        }
        P::Routes { site, c } => {
            let cl = Client::new(&c)?;
            let path = match &site {
                Some(x) => format!("/sites/{}/routes", enc(x)),
                None => "/routes".into(),
            };
            let v = cl.get(&path).await?;
            cl.show(&v, |v| {
                table(
                    &["Id", "Site", "Source", "App", "Target"],
                    rows(v, |r| {
                        vec![
                            s(&r["id"]),
                            s(&r["site"]["domain"]),
                            s(&r["source_path"]),
                            s(&r["app"]["name"]),
                            s(&r["target_path"]),
                        ]
                    }),
                )
            });
        }
        P::FiltersCreate {
            name,
            filter_type,
            description,
            jwt_issuer,
            jwt_jwks_uri,
            jwt_audiences,
            cors_allow_origin,
            cors_allow_methods,
            cors_allow_headers,
            cors_expose_headers,
            cors_max_age,
            cors_allow_credentials,
            c,
        } => {
            let cl = Client::new(&c)?;
            let mut o = serde_json::Map::new();
            if filter_type == "jwt" {
                o.insert(
                    "issuer".into(),
                    json!(jwt_issuer.context("--jwt-issuer is required for a jwt filter")?),
                );
                o.insert(
                    "jwks_uri".into(),
                    json!(jwt_jwks_uri.context("--jwt-jwks-uri is required for a jwt filter")?),
                );
                if !jwt_audiences.is_empty() {
                    o.insert("audiences".into(), json!(jwt_audiences));
                }
            } else {
                o.insert("allow_origin".into(), json!(cors_allow_origin));
                if !cors_allow_methods.is_empty() {
                    o.insert("allow_methods".into(), json!(cors_allow_methods));
                }
                if !cors_allow_headers.is_empty() {
                    o.insert("allow_headers".into(), json!(cors_allow_headers));
                }
                if !cors_expose_headers.is_empty() {
                    o.insert("expose_headers".into(), json!(cors_expose_headers));
                }
                if let Some(m) = cors_max_age {
                    o.insert("max_age".into(), json!(m));
                }
                if cors_allow_credentials {
                    o.insert("allow_credentials".into(), json!(true));
                }
            }
            let v = cl.post("/filters", json!({"name": name, "type": filter_type, "description": description, "options": o})).await?;
            cl.show(&v, |v| {
                format!("Created {} filter {}", s(&v["type"]), s(&v["name"]))
            });
        }
        P::Filters { c } => {
            let cl = Client::new(&c)?;
            let v = cl.get("/filters").await?;
            cl.show(&v, |v| {
                table(
                    &["Name", "Type", "Description"],
                    rows(v, |f| {
                        vec![s(&f["name"]), s(&f["type"]), s(&f["description"])]
                    }),
                )
            });
        }
        P::FiltersAttach {
            filter,
            a,
            includes,
            excludes,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(&format!("/apps/{}/filters", enc(&a.app)), json!({"filter": {"id": filter}, "options": {"includes": includes, "excludes": excludes}}))
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Attached filter {} to {} ({})",
                    s(&v["filter"]["name"]),
                    s(&v["app"]["name"]),
                    s(&v["id"])
                )
            });
        }
        P::DrainsAdd { url, a, c } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    &format!("/apps/{}/log-drains", enc(&a.app)),
                    json!({"url": url}),
                )
                .await?;
            cl.show(&v, |v| format!("Successfully added drain {}", s(&v["url"])));
        }
        P::Drains { a, c } => {
            let cl = Client::new(&c)?;
            let v = cl.get(&format!("/apps/{}/log-drains", enc(&a.app))).await?;
            cl.show(&v, |v| {
                table(
                    &["Url", "Token"],
                    rows(v, |d| vec![s(&d["url"]), s(&d["token"])]),
                )
            });
        }
        P::Logs {
            num,
            tail,
            dyno,
            source,
            a,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    &format!("/apps/{}/log-sessions", enc(&a.app)),
                    json!({"lines": num, "tail": tail, "dyno": dyno, "source": source}),
                )
                .await?;
            let url = s(&v["logplex_url"]);
            stream_logs(&cl, &url).await?;
        }
        P::TokensCreate {
            admin,
            space,
            app,
            description,
            email,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post("/tokens", json!({"description": description, "email": email, "scope": {"admin": admin, "spaces": space, "apps": app}}))
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Created token {} (shown once):\n{}",
                    s(&v["id"]),
                    s(&v["token"])
                )
            });
        }
    }
    Ok(())
}

fn config_text(app: &str, v: &Value) -> String {
    let mut lines = vec![format!("=== {app} Config Vars")];
    if let Some(m) = v.as_object() {
        let w = m.keys().map(|k| k.len() + 1).max().unwrap_or(0);
        for (k, val) in m {
            lines.push(format!("{:<w$} {}", format!("{k}:"), s(val)));
        }
    }
    lines.join("\n")
}

async fn latest_release(cl: &Client, app: &str) -> anyhow::Result<String> {
    let v = cl
        .send(
            reqwest::Method::GET,
            &format!("/apps/{}/releases", enc(app)),
            None,
            Some("version ..; max=1, order=desc"),
        )
        .await?;
    Ok(s(&v[0]["version"]))
}

/// Print the `data:` lines of a log session's event stream until it ends.
async fn stream_logs(cl: &Client, url: &str) -> anyhow::Result<()> {
    let mut resp = cl
        .http
        .get(url)
        .header("Accept", "text/event-stream")
        .send()
        .await
        .context("cannot open the log session")?;
    if !resp.status().is_success() {
        bail!("the log session answered {}", resp.status());
    }
    let mut buf = String::new();
    while let Some(chunk) = resp.chunk().await? {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(i) = buf.find('\n') {
            let line: String = buf.drain(..=i).collect();
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(d) = line.strip_prefix("data:") {
                out(d.strip_prefix(' ').unwrap_or(d));
            }
        }
    }
    Ok(())
}
