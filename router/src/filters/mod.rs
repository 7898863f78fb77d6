//! HTTP filters attached to apps: JWT verification and CORS. Both are decided in the request
//! filter phase, before any dyno sees the request.

pub mod cors;
pub mod jwks;
pub mod jwt;
pub mod token;

use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use wharf_config::Filter;

pub use cors::CorsMatch;

use crate::live::Live;
use crate::shared::Shared;

/// A response the edge gives itself.
#[derive(Debug)]
pub struct FilterResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

#[derive(Debug)]
pub enum FilterOutcome {
    /// Go on to the dyno; add these CORS headers to its response.
    Continue { cors: Option<CorsMatch> },
    /// Answer now (CORS preflight, 403, 401).
    Respond(FilterResponse),
}

/// Run the app's filters that cover `path`, in attachment order: CORS first (a preflight is
/// answered without a token, as browsers send none), then JWT.
pub async fn check(
    shared: &Shared,
    live: &Live,
    app: usize,
    path: &str,
    req: &RequestHeader,
) -> FilterOutcome {
    let uses = &live.table.apps[app].filters;
    // A filter covers the request when it covers the normal path or the path a dyno that
    // decodes `%2F` would see: `/public/..%2Fadmin` needs what `/admin` needs.
    let Ok(slashed) = wharf_config::paths::slash_view(path) else {
        return FilterOutcome::Respond(FilterResponse {
            status: 400,
            headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
            body: Bytes::from_static(b"Bad Request: invalid path\n"),
        });
    };
    let covers = |u: &&wharf_config::router_table::FilterUse| {
        u.covers(path) || slashed.as_deref().is_some_and(|s| u.covers(s))
    };
    let mut cors_match = None;
    for u in uses.iter().filter(covers) {
        if let Filter::Cors(c) = &live.table.filters[u.filter] {
            match cors::check(c, req) {
                cors::Decision::Preflight(resp) => return FilterOutcome::Respond(resp),
                cors::Decision::Actual(m) => cors_match = Some(m),
                cors::Decision::NotCors => {}
            }
        }
    }
    for u in uses.iter().filter(covers) {
        if let Filter::Jwt(j) = &live.table.filters[u.filter]
            && let Err(failure) = jwt::verify(shared, j, req).await
        {
            shared.metrics.errors.with_label_values(&["jwt"]).inc();
            let mut resp = jwt::unauthorized(&failure);
            if let Some(m) = &cors_match {
                // Let the browser read the 401.
                resp.headers.extend(m.headers());
            }
            return FilterOutcome::Respond(resp);
        }
    }
    FilterOutcome::Continue { cors: cors_match }
}

/// Add the CORS headers of an allowed actual request to the dyno's response.
pub fn apply_cors(resp: &mut ResponseHeader, m: &CorsMatch) -> pingora::Result<()> {
    for (k, v) in m.headers() {
        if k == "vary" {
            resp.append_header(k, v)?;
        } else {
            resp.insert_header(k, v)?;
        }
    }
    Ok(())
}
