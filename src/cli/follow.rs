//! Following a config file from a standalone plane: reload on SIGHUP and when the file's mtime
//! changes, until SIGTERM or Ctrl-C.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{SignalKind, signal};

use super::control_cmd::shutdown_signal;

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Call `reload(why)` on SIGHUP and whenever `file` changes (checked every `period`); return
/// on SIGTERM or Ctrl-C.
pub async fn follow_file(
    file: &Path,
    period: Duration,
    mut reload: impl FnMut(&'static str),
) -> anyhow::Result<()> {
    let mut hup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(period);
    let mut seen = mtime(file);
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        let why = tokio::select! {
            _ = hup.recv() => "SIGHUP",
            _ = tick.tick() => {
                let now = mtime(file);
                if now == seen {
                    continue;
                }
                seen = now;
                "file changed"
            }
            _ = &mut stop => return Ok(()),
        };
        reload(why);
    }
}
