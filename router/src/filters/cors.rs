//! CORS at the edge: preflights answered here, never sent to a dyno; actual requests from an
//! allowed origin get their headers on the dyno's response, others get none.

use bytes::Bytes;
use pingora::http::RequestHeader;
use wharf_config::CorsFilter;

use super::FilterResponse;

/// The headers an allowed actual request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsMatch {
    origin: String,
    credentials: bool,
    expose: String,
    wildcard: bool,
}

impl CorsMatch {
    pub fn headers(&self) -> Vec<(String, String)> {
        let mut h = vec![(
            "access-control-allow-origin".to_owned(),
            if self.wildcard {
                "*".to_owned()
            } else {
                self.origin.clone()
            },
        )];
        if !self.wildcard {
            h.push(("vary".into(), "Origin".into()));
        }
        if self.credentials {
            h.push(("access-control-allow-credentials".into(), "true".into()));
        }
        if !self.expose.is_empty() {
            h.push(("access-control-expose-headers".into(), self.expose.clone()));
        }
        h
    }
}

#[derive(Debug)]
pub enum Decision {
    /// Not a cross-origin request, or from an origin not allowed: no CORS headers.
    NotCors,
    /// An allowed actual request.
    Actual(CorsMatch),
    /// A preflight: answered at the edge (204 or 403).
    Preflight(FilterResponse),
}

fn origin_allowed(f: &CorsFilter, origin: &str) -> Option<bool> {
    if f.allow_origin.iter().any(|o| o == origin) {
        Some(false)
    } else if f.allow_origin.iter().any(|o| o == "*") {
        Some(true)
    } else {
        None
    }
}

pub fn check(f: &CorsFilter, req: &RequestHeader) -> Decision {
    let Some(origin) = req.headers.get("origin").and_then(|v| v.to_str().ok()) else {
        return Decision::NotCors;
    };
    let allowed = origin_allowed(f, origin);
    let preflight = req.method == http::Method::OPTIONS
        && req.headers.contains_key("access-control-request-method");
    if !preflight {
        return match allowed {
            Some(wildcard) => Decision::Actual(CorsMatch {
                origin: origin.to_owned(),
                credentials: f.allow_credentials,
                expose: f.expose_headers.join(", "),
                wildcard,
            }),
            None => Decision::NotCors,
        };
    }
    let forbidden = |why: &str| {
        Decision::Preflight(FilterResponse {
            status: 403,
            headers: vec![
                ("content-type".into(), "text/plain; charset=utf-8".into()),
                ("vary".into(), "Origin".into()),
            ],
            body: Bytes::from(format!("CORS preflight refused: {why}\n")),
        })
    };
    let Some(wildcard) = allowed else {
        return forbidden("origin not allowed");
    };
    let method = req
        .headers
        .get("access-control-request-method")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !f
        .allow_methods
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method) || m == "*")
    {
        return forbidden("method not allowed");
    }
    let requested: Vec<String> = req
        .headers
        .get_all("access-control-request-headers")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .collect();
    let any_header = f.allow_headers.iter().any(|h| h == "*");
    for h in &requested {
        if !any_header && !f.allow_headers.iter().any(|a| a.eq_ignore_ascii_case(h)) {
            return forbidden("header not allowed");
        }
    }
    let mut headers = vec![
        (
            "access-control-allow-origin".to_owned(),
            if wildcard {
                "*".to_owned()
            } else {
                origin.to_owned()
            },
        ),
        (
            "access-control-allow-methods".into(),
            f.allow_methods.join(", "),
        ),
        (
            "vary".into(),
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".into(),
        ),
    ];
    if !requested.is_empty() {
        let allow = if any_header {
            requested.join(", ")
        } else {
            f.allow_headers.join(", ")
        };
        headers.push(("access-control-allow-headers".into(), allow));
    }
    if f.allow_credentials {
        headers.push(("access-control-allow-credentials".into(), "true".into()));
    }
    if let Some(age) = f.max_age {
        headers.push(("access-control-max-age".into(), age.to_string()));
    }
    Decision::Preflight(FilterResponse {
        status: 204,
        headers,
        body: Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> CorsFilter {
        CorsFilter {
            name: "c".into(),
            allow_origin: vec!["https://a.example".into()],
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["Content-Type".into()],
            expose_headers: vec!["X-Request-Id".into()],
            max_age: Some(600),
            allow_credentials: true,
        }
    }

    fn req(method: &str, headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build(method, b"/", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn preflight_allowed_and_refused() {
        let f = filter();
        let ok = req(
            "OPTIONS",
            &[
                ("origin", "https://a.example"),
                ("access-control-request-method", "PUT"),
                ("access-control-request-headers", "content-type"),
            ],
        );
        match check(&f, &ok) {
            Decision::Preflight(r) => {
                assert_eq!(r.status, 204);
                assert!(r.headers.contains(&(
                    "access-control-allow-origin".into(),
                    "https://a.example".into()
                )));
                assert!(
                    r.headers
                        .contains(&("access-control-max-age".into(), "600".into()))
                );
                assert!(
                    r.headers
                        .contains(&("access-control-allow-credentials".into(), "true".into()))
                );
            }
            d => panic!("{d:?}"),
        }
        for bad in [
            req(
                "OPTIONS",
                &[
                    ("origin", "https://evil.example"),
                    ("access-control-request-method", "GET"),
                ],
            ),
            req(
                "OPTIONS",
                &[
                    ("origin", "https://a.example"),
                    ("access-control-request-method", "DELETE"),
                ],
            ),
            req(
                "OPTIONS",
                &[
                    ("origin", "https://a.example"),
                    ("access-control-request-method", "GET"),
                    ("access-control-request-headers", "x-secret"),
                ],
            ),
        ] {
            match check(&f, &bad) {
                Decision::Preflight(r) => assert_eq!(r.status, 403),
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn actual_requests() {
        let f = filter();
        match check(&f, &req("GET", &[("origin", "https://a.example")])) {
            Decision::Actual(m) => {
                let h = m.headers();
                assert!(h.contains(&("vary".into(), "Origin".into())));
                assert!(h.contains(&(
                    "access-control-expose-headers".into(),
                    "X-Request-Id".into()
                )));
            }
            d => panic!("{d:?}"),
        }
        assert!(matches!(
            check(&f, &req("GET", &[("origin", "https://evil.example")])),
            Decision::NotCors
        ));
        assert!(matches!(check(&f, &req("GET", &[])), Decision::NotCors));
    }
}
