//! `pipelines:create`, `pipelines:add`, `pipelines`, `pipelines:promote`, `releases:status`,
//! `canary`, `canary:settings`, `canary:promote`, `canary:abort`, `audit`: pipelines with status
//! checks, canary releases and the audit trail, against the control plane's API.

use clap::Subcommand;
use serde_json::{Value, json};

use super::{AppArg, Client, Conn, enc, rows, s, table};

#[derive(Debug, Subcommand)]
pub enum PipelineCommand {
    /// Create a pipeline; its promotions require these status checks (repeat or comma-separate).
    #[command(name = "pipelines:create")]
    PipelinesCreate {
        name: String,
        #[arg(long = "check", value_delimiter = ',')]
        checks: Vec<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// Add an app to a pipeline stage (review, development, staging, canary, production).
    #[command(name = "pipelines:add")]
    PipelinesAdd {
        /// App: `{app}-{space}`.
        app: String,
        #[arg(short, long)]
        pipeline: String,
        #[arg(short, long)]
        stage: String,
        #[command(flatten)]
        c: Conn,
    },
    /// Show a pipeline's apps by stage.
    #[command(name = "pipelines:info")]
    PipelinesInfo {
        pipeline: String,
        #[command(flatten)]
        c: Conn,
    },
    /// Promote an app's release to every app of the next stage (or --to STAGE); refused while a
    /// required check is not `success`.
    #[command(name = "pipelines:promote")]
    PipelinesPromote {
        #[command(flatten)]
        a: AppArg,
        #[arg(short, long)]
        pipeline: String,
        /// The release (`v3`); the current one by default.
        #[arg(short, long)]
        release: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        c: Conn,
    },
    /// Show a release's status checks, or post one with --context and --state.
    #[command(name = "releases:status")]
    ReleasesStatus {
        /// The release (`v3`).
        release: String,
        #[arg(long)]
        context: Option<String>,
        /// pending, success, failure or error.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        description: Option<String>,
        #[arg(long)]
        target_url: Option<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Show the app's running (else last) canary with its figures.
    #[command(name = "canary")]
    Canary {
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Enable or change canaries: new artifacts start as a canary taking --weight percent.
    #[command(name = "canary:settings")]
    CanarySettings {
        #[arg(long)]
        enable: bool,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        weight: Option<i64>,
        #[arg(long)]
        quantity: Option<i64>,
        /// Healthy period before the canary is promoted.
        #[arg(long)]
        period_secs: Option<i64>,
        /// Requests the canary must serve before it is promoted.
        #[arg(long)]
        min_requests: Option<i64>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Promote the running canary now.
    #[command(name = "canary:promote")]
    CanaryPromote {
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// Abort the running canary now.
    #[command(name = "canary:abort")]
    CanaryAbort {
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        a: AppArg,
        #[command(flatten)]
        c: Conn,
    },
    /// The audit trail: who changed what, when (secrets redacted).
    #[command(name = "audit")]
    Audit {
        #[arg(short, long)]
        app: Option<String>,
        #[arg(short, long)]
        space: Option<String>,
        /// A prefix of the action (`PATCH`, `POST /pipeline-promotions`).
        #[arg(long)]
        action: Option<String>,
        #[arg(short, long, default_value_t = 50)]
        num: u32,
        #[command(flatten)]
        c: Conn,
    },
}

fn query(pairs: &[(&str, &Option<String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

fn canary_text(app: &str, v: &Value) -> String {
    let f = |side: &str| {
        let x = &v["figures"][side];
        if x.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{} requests, {} 5xx",
                s(&x["requests"]),
                s(&x["errors_5xx"])
            )
        }
    };
    format!(
        "=== {app} canary v{} (stable v{}): {}\nweight    {}%\nreason    {}\nstable    {}\ncanary    {}",
        s(&v["release"]["version"]),
        s(&v["stable_release"]["version"]),
        s(&v["state"]),
        s(&v["weight"]),
        s(&v["reason"]),
        f("stable"),
        f("canary"),
    )
}

pub async fn exec(cmd: PipelineCommand) -> anyhow::Result<()> {
    use PipelineCommand as P;
    match cmd {
        P::PipelinesCreate { name, checks, c } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    "/pipelines",
                    json!({"name": name, "required_checks": checks}),
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Created pipeline {} (required checks: {})",
                    s(&v["name"]),
                    v["required_checks"]
                        .as_array()
                        .map(|a| a.iter().map(s).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default()
                )
            });
        }
        P::PipelinesAdd {
            app,
            pipeline,
            stage,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    "/pipeline-couplings",
                    json!({"pipeline": pipeline, "app": app, "stage": stage}),
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Added {} to {} as {}",
                    s(&v["app"]["name"]),
                    s(&v["pipeline"]["name"]),
                    s(&v["stage"])
                )
            });
        }
        P::PipelinesInfo { pipeline, c } => {
            let cl = Client::new(&c)?;
            let v = cl
                .get(&format!("/pipelines/{}/pipeline-couplings", enc(&pipeline)))
                .await?;
            cl.show(&v, |v| {
                format!(
                    "=== {pipeline}\n{}",
                    table(
                        &["Stage", "App", "Space"],
                        rows(v, |k| vec![
                            s(&k["stage"]),
                            s(&k["app"]["name"]),
                            s(&k["space"]["name"])
                        ])
                    )
                )
            });
        }
        P::PipelinesPromote {
            a,
            pipeline,
            release,
            to,
            c,
        } => {
            let cl = Client::new(&c)?;
            let v = cl
                .post(
                    "/pipeline-promotions",
                    json!({"pipeline": pipeline, "source": a.app, "release": release, "to": to}),
                )
                .await?;
            cl.show(&v, |v| {
                let targets = rows(&v["results"], |r| {
                    vec![
                        s(&r["app"]),
                        format!("v{}", s(&r["version"])),
                        s(&r["status"]),
                    ]
                });
                format!(
                    "Promoted v{} of {} to {}: {}\n{}",
                    s(&v["source"]["release"]["version"]),
                    a.app,
                    s(&v["to_stage"]),
                    s(&v["state"]),
                    table(&["App", "Release", "Status"], targets)
                )
            });
        }
        P::ReleasesStatus {
            release,
            context,
            state,
            description,
            target_url,
            a,
            c,
        } => {
            let cl = Client::new(&c)?;
            let path = format!("/apps/{}/releases/{}/statuses", enc(&a.app), enc(&release));
            match (context, state) {
                (Some(context), Some(state)) => {
                    let v = cl
                        .post(
                            &path,
                            json!({"context": context, "state": state,
                                "description": description, "target_url": target_url}),
                        )
                        .await?;
                    cl.show(&v, |v| {
                        format!(
                            "{} on {} {release}: {}",
                            s(&v["context"]),
                            a.app,
                            s(&v["state"])
                        )
                    });
                }
                (None, None) => {
                    let v = cl.get(&path).await?;
                    cl.show(&v, |v| {
                        table(
                            &["Context", "State", "Description", "Updated"],
                            rows(v, |x| {
                                vec![
                                    s(&x["context"]),
                                    s(&x["state"]),
                                    s(&x["description"]),
                                    s(&x["updated_at"]),
                                ]
                            }),
                        )
                    });
                }
                _ => anyhow::bail!("give both --context and --state to post a status"),
            }
        }
        P::Canary { a, c } => {
            let cl = Client::new(&c)?;
            let v = cl.get(&format!("/apps/{}/canary", enc(&a.app))).await?;
            cl.show(&v, |v| canary_text(&a.app, v));
        }
        P::CanarySettings {
            enable,
            disable,
            weight,
            quantity,
            period_secs,
            min_requests,
            a,
            c,
        } => {
            let cl = Client::new(&c)?;
            let enabled = if enable {
                Some(true)
            } else if disable {
                Some(false)
            } else {
                None
            };
            let v = cl
                .send(
                    reqwest::Method::PUT,
                    &format!("/apps/{}/canary-settings", enc(&a.app)),
                    Some(
                        json!({"enabled": enabled, "weight": weight, "quantity": quantity,
                        "period_secs": period_secs, "min_requests": min_requests}),
                    ),
                    None,
                )
                .await?;
            cl.show(&v, |v| {
                format!(
                    "Canaries on {}: {} (weight {}%, {} dyno(s), promote after {}s and {} requests)",
                    a.app,
                    if v["enabled"] == true { "enabled" } else { "disabled" },
                    s(&v["weight"]),
                    s(&v["quantity"]),
                    s(&v["period_secs"]),
                    s(&v["min_requests"])
                )
            });
        }
        P::CanaryPromote { reason, a, c } => end_canary("promote", reason, a, c).await?,
        P::CanaryAbort { reason, a, c } => end_canary("abort", reason, a, c).await?,
        P::Audit {
            app,
            space,
            action,
            num,
            c,
        } => {
            let cl = Client::new(&c)?;
            let path = format!(
                "/audit{}",
                query(&[("app", &app), ("space", &space), ("action", &action)])
            );
            let v = cl
                .send(
                    reqwest::Method::GET,
                    &path,
                    None,
                    Some(&format!("at ..; max={num}, order=desc")),
                )
                .await?;
            cl.show(&v, |v| {
                table(
                    &["When", "Who", "Action", "Resource"],
                    rows(v, |e| {
                        vec![
                            s(&e["created_at"]),
                            s(&e["actor"]["email"]),
                            s(&e["action"]),
                            s(&e["resource"]),
                        ]
                    }),
                )
            });
        }
    }
    Ok(())
}

async fn end_canary(verb: &str, reason: Option<String>, a: AppArg, c: Conn) -> anyhow::Result<()> {
    let cl = Client::new(&c)?;
    let v = cl
        .post(
            &format!("/apps/{}/canary/{verb}", enc(&a.app)),
            json!({"reason": reason}),
        )
        .await?;
    cl.show(&v, |v| canary_text(&a.app, v));
    Ok(())
}
