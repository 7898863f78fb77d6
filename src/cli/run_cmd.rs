//! `wharf run -a APP CMD…`: a one-off dyno attached to the terminal, as `heroku run` does it —
//! `POST /apps/{app}/dynos` with `attach: true`, then TLS to the `rendezvous://HOST:PORT/SECRET`
//! it answers, the secret, and the dyno's output until it ends. The command's exit status comes
//! back on a marker line appended to the command, and becomes this process's exit code.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::platform::{AppArg, Client, Conn};

/// Printed after the command by the dyno's shell; never shown.
const EXIT_MARKER: &str = "__wharf_exit_status__";

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub a: AppArg,
    /// PEM CA bundle the rendezvous certificate is signed by (`wharf up` prints its local CA);
    /// without it, the public web roots.
    #[arg(long, env = "WHARF_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not attach: the output goes to the app's logs only (as `run.N`).
    #[arg(long, short = 'd')]
    pub detached: bool,
    /// Dyno size.
    #[arg(long, short = 's')]
    pub size: Option<String>,
    /// The command and its arguments (put `--` before a command with flags of its own).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
    #[command(flatten)]
    pub c: Conn,
}

/// One word for `sh -c`: as is when plain, else single-quoted.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=,+@%".contains(&b));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = Client::new(&args.c)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run_async(args, client))
}

async fn run_async(args: RunArgs, client: Client) -> anyhow::Result<ExitCode> {
    let words: Vec<String> = args.command.iter().map(|w| quote(w)).collect();
    let mut command = words.join(" ");
    if !args.detached {
        command = format!("{command}; echo \"{EXIT_MARKER} $?\"");
    }
    let mut body = json!({ "command": command, "attach": !args.detached });
    if let Some(size) = &args.size {
        body["size"] = json!(size);
    }
    let dyno = client
        .post(&format!("/apps/{}/dynos", args.a.app), body)
        .await?;
    let name = dyno["name"].as_str().unwrap_or("run");
    if args.detached {
        eprintln!(
            "Running {} on {}... up, {name} (output in `wharf logs -a {} -d {name}`)",
            args.command.join(" "),
            args.a.app,
            args.a.app
        );
        return Ok(ExitCode::SUCCESS);
    }
    let url = dyno["attach_url"]
        .as_str()
        .context("the control plane gave no attach_url")?;
    eprintln!(
        "Running {} on {}... up, {name}",
        args.command.join(" "),
        args.a.app
    );
    attach(url, args.ca.as_deref()).await
}

async fn attach(url: &str, ca: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    let rest = url
        .strip_prefix("rendezvous://")
        .with_context(|| format!("{url}: not a rendezvous:// URL"))?;
    let (addr, secret) = rest
        .split_once('/')
        .with_context(|| format!("{url}: no secret"))?;
    let host = addr
        .rsplit_once(':')
        .map_or(addr, |(h, _)| h)
        .trim_matches(['[', ']']);
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            let pem =
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            for cert in <rustls_pki_types::CertificateDer as PemObject>::pem_slice_iter(&pem) {
                roots.add(cert.with_context(|| format!("{}: bad PEM", path.display()))?)?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("{host}: not a host name"))?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the rendezvous socket {addr}"))?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .with_context(|| {
            format!("TLS to {addr} failed (is the CA that signed it given with --ca / WHARF_CA?)")
        })?;
    let (rd, mut wr) = tokio::io::split(tls);
    wr.write_all(format!("{secret}\r\n").as_bytes()).await?;
    wr.flush().await?;
    let mut lines = BufReader::new(rd).lines();
    match lines.next_line().await? {
        Some(l) if l.trim() == "rendezvous" => {}
        other => bail!("the rendezvous socket refused the session: {other:?}"),
    }
    let mut status = None;
    let mut out = std::io::stdout().lock();
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end_matches('\r');
        if let Some(code) = line.strip_prefix(EXIT_MARKER) {
            status = code.trim().parse::<u8>().ok();
            continue;
        }
        writeln!(out, "{line}")?;
        out.flush()?;
    }
    let _ = wr.shutdown().await;
    match status {
        Some(code) => Ok(ExitCode::from(code)),
        None => {
            eprintln!("the dyno ended without an exit status (killed, or the session was cut)");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn words_are_quoted_only_when_the_shell_would_change_them() {
        assert_eq!(quote("echo"), "echo");
        assert_eq!(quote("a=b/c.d"), "a=b/c.d");
        assert_eq!(quote("echo hi; exit 3"), "'echo hi; exit 3'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }
}
