//! The admin listener: `/metrics` (Prometheus) and `/healthz`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::shared::Shared;

#[derive(Debug)]
pub struct Admin {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_owned();
        let (status, ctype, body) = match path.as_str() {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4",
                self.shared.metrics.render(),
            ),
            "/healthz" => {
                let live = self.shared.live.load();
                let body = format!(
                    "{{\"status\":\"ok\",\"version\":{},\"revision\":{},\"digest\":\"{}\"}}\n",
                    live.version, live.table.revision, live.table.digest
                );
                (200, "application/json", body.into_bytes())
            }
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", body.len())
            .body(body)
            .expect("static response")
    }
}
