//! Who may call the admin API and the metrics endpoint: the checks that keep web pages in a local
//! browser out (cross-site requests and DNS rebinding).
//!
//! The API has no authentication: whoever can open a TCP connection to it may use it, and that is
//! meant to be local programs (it binds 127.0.0.1 by default). A browser is a local program that
//! runs anyone's code, so every request passes three checks before any handler sees it:
//!
//! 1. **Host.** `Host` (and an absolute request target's authority) must be an IP literal,
//!    `localhost`, or a name the operator allowed ([`ApiAccess::with_host_names`],
//!    `--api-allowed-host`); the port is not checked. A DNS-rebinding page reaches 127.0.0.1
//!    under its own DNS name, and its browser sends that name; an IP literal cannot be rebound.
//!    `*.localhost` is refused too: not every resolver keeps those names on loopback. A request
//!    without `Host` (HTTP/1.0) did not come from a browser and passes.
//! 2. **Origin.** An `Origin` other than the API's own (`http://` + the request's `Host`; `null`
//!    is foreign too) is refused, and so is `Sec-Fetch-Site: cross-site` or `same-site`, which
//!    browsers send even where they leave `Origin` out (a no-cors GET, an `<img>`). The CLI, curl
//!    and Prometheus send neither header.
//! 3. **Content type.** A request with a body (every POST, PUT and PATCH, and any request that
//!    announces a body) must say `Content-Type: application/json`, parameters allowed. A page can
//!    send `text/plain`, form and multipart bodies cross-site without a CORS preflight, JSON not.
//!
//! Refusals are 403 (host, origin) or 415 (content type) with the usual `{"error": ...}` body,
//! counted by reason in [`ApiCounters`] (`hypha_api_refused_total{reason}`) and logged at most
//! once per [`LOG_EVERY`] per endpoint.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN, TRANSFER_ENCODING};
use axum::http::uri::Authority;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::ApiError;
use crate::ratelimit::LogLimiter;

/// At most one log line per endpoint this often, with the count of refusals not logged.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Header values are quoted in messages up to this many characters.
const SHOWN_MAX: usize = 80;

/// Requests refused before reaching a handler, by reason. Shared by the admin API and the metrics
/// endpoint of one node.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// `Host` not an IP literal, `localhost` or an allowed name.
    pub refused_host: AtomicU64,
    /// A foreign `Origin`, or `Sec-Fetch-Site` saying another site.
    pub refused_origin: AtomicU64,
    /// A body without `Content-Type: application/json`.
    pub refused_content_type: AtomicU64,
}

/// Host names the API and the metrics endpoint answer to besides IP literals and `localhost`
/// (none by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApiAccess {
    /// Lowercase, validated by [`host_name`].
    host_names: Vec<String>,
}

impl ApiAccess {
    /// Also answers to these names, say for a Prometheus that scrapes the node by its DNS name.
    /// A name so allowed is trusted not to be rebound to this host by a hostile DNS server: list
    /// names from a DNS zone (or hosts file) under your control only.
    pub fn with_host_names<S: AsRef<str>>(
        names: impl IntoIterator<Item = S>,
    ) -> Result<ApiAccess, String> {
        let host_names = names
            .into_iter()
            .map(|n| host_name(n.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(ApiAccess { host_names })
    }
}

/// Checks a host name for [`ApiAccess::with_host_names`]: DNS labels (letters, digits, `-`,
/// `_`) joined by dots, no port. Returns it in lowercase.
fn host_name(name: &str) -> Result<String, String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(format!(
            "'{name}' is not a host name (letters, digits, '-' and '_' in dot-separated labels, no port)"
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The `Host` (or request-target authority) value, as shown.
    Host(String),
    /// More than one `Host` header.
    HostRepeated,
    /// The `Origin` value, as shown.
    Origin(String),
    /// The `Sec-Fetch-Site` value.
    FetchSite(String),
    /// The `Content-Type` value, if any (as shown).
    ContentType(Option<String>),
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::ContentType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::FORBIDDEN,
        }
    }

    fn message(&self) -> String {
        match self {
            Refusal::Host(h) => format!(
                "Host {h:?} is not an IP address or localhost; other names are refused \
                 (DNS rebinding) unless allowed with --api-allowed-host"
            ),
            Refusal::HostRepeated => "more than one Host header".to_owned(),
            Refusal::Origin(o) => {
                format!("cross-origin request refused (Origin {o:?} is not this API's origin)")
            }
            Refusal::FetchSite(s) => {
                format!("cross-origin request refused (Sec-Fetch-Site: {s})")
            }
            Refusal::ContentType(Some(ct)) => format!(
                "the request body must be JSON sent with Content-Type: application/json, not {ct:?}"
            ),
            Refusal::ContentType(None) => {
                "the request body must be JSON sent with Content-Type: application/json".to_owned()
            }
        }
    }

    fn counter<'c>(&self, c: &'c ApiCounters) -> &'c AtomicU64 {
        match self {
            Refusal::Host(_) | Refusal::HostRepeated => &c.refused_host,
            Refusal::Origin(_) | Refusal::FetchSite(_) => &c.refused_origin,
            Refusal::ContentType(_) => &c.refused_content_type,
        }
    }
}

/// The state of [`check`]: one per served router.
#[derive(Clone, Debug)]
pub(super) struct Guard(Arc<GuardInner>);

#[derive(Debug)]
struct GuardInner {
    /// Names the endpoint in log lines.
    what: &'static str,
    access: ApiAccess,
    counters: Arc<ApiCounters>,
    /// Refusals are rare and cheap to serialise; the lock only guards the limiter.
    log: Mutex<LogLimiter>,
}

impl Guard {
    pub(super) fn new(what: &'static str, access: &ApiAccess, counters: Arc<ApiCounters>) -> Guard {
        Guard(Arc::new(GuardInner {
            what,
            access: access.clone(),
            counters,
            log: Mutex::new(LogLimiter::new(LOG_EVERY)),
        }))
    }

    fn refused(&self, r: &Refusal) {
        let g = &self.0;
        r.counter(&g.counters).fetch_add(1, Relaxed);
        // A poisoned lock only costs the log line.
        if let Some(n) = g.log.lock().ok().and_then(|mut l| l.allow(Instant::now())) {
            tracing::warn!(
                "{}: refused a request: {} ({n} more refused since the last report)",
                g.what,
                r.message()
            );
        }
    }
}

/// The middleware: runs the request's handler only if it passes the checks.
pub(super) async fn check(State(g): State<Guard>, req: Request, next: Next) -> Response {
    match refusal(req.method(), req.uri(), req.headers(), &g.0.access) {
        None => next.run(req).await,
        Some(r) => {
            g.refused(&r);
            ApiError(r.status(), r.message()).into_response()
        }
    }
}

fn refusal(method: &Method, uri: &Uri, headers: &HeaderMap, access: &ApiAccess) -> Option<Refusal> {
    // 1. Host, and an absolute-form target's authority (which a server may prefer to Host).
    let mut hosts = headers.get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some(Refusal::HostRepeated);
    }
    if let Some(h) = host {
        if !value_str(h).is_some_and(|h| host_allowed(h, access)) {
            return Some(Refusal::Host(shown(h)));
        }
    }
    if let Some(a) = uri.authority() {
        if !host_allowed(a.as_str(), access) {
            return Some(Refusal::Host(a.as_str().chars().take(SHOWN_MAX).collect()));
        }
    }

    // 2. Origin and fetch metadata.
    for o in headers.get_all(ORIGIN) {
        let same = host
            .and_then(value_str)
            .zip(value_str(o))
            .is_some_and(|(h, o)| same_origin(o, h));
        if !same {
            return Some(Refusal::Origin(shown(o)));
        }
    }
    for s in headers.get_all("sec-fetch-site") {
        let site = value_str(s).unwrap_or_default().trim();
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Some(Refusal::FetchSite(site.to_ascii_lowercase()));
        }
    }

    // 3. A body must be declared JSON.
    let has_body = matches!(*method, Method::POST | Method::PUT | Method::PATCH)
        || headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| value_str(v).is_none_or(|v| v.trim() != "0"));
    if has_body {
        let mut types = headers.get_all(CONTENT_TYPE).iter();
        let ct = types.next();
        let json = ct.is_some_and(is_json) && types.next().is_none();
        if !json {
            return Some(Refusal::ContentType(ct.map(shown)));
        }
    }
    None
}

/// A header value as text, if it is visible ASCII.
fn value_str(v: &HeaderValue) -> Option<&str> {
    v.to_str().ok()
}

/// A header value for a message: lossy, shortened.
fn shown(v: &HeaderValue) -> String {
    String::from_utf8_lossy(v.as_bytes())
        .chars()
        .take(SHOWN_MAX)
        .collect()
}

/// `host[:port]` names this node in a way no DNS answer can change: an IP literal, `localhost`,
/// or an allowed name. The port is not checked (rebinding keeps it anyway).
fn host_allowed(host: &str, access: &ApiAccess) -> bool {
    // `Authority` would take `user@host`; a Host header has no userinfo.
    if host.contains('@') {
        return false;
    }
    let Ok(a) = host.parse::<Authority>() else {
        return false;
    };
    let name = a.host();
    // `Authority` does not insist on a numeric port.
    let port_ok = a
        .as_str()
        .get(name.len()..)
        .is_some_and(|rest| match rest.strip_prefix(':') {
            Some(p) => p.bytes().all(|b| b.is_ascii_digit()),
            None => rest.is_empty(),
        });
    if !port_ok {
        return false;
    }
    if let Some(v6) = name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().is_ok();
    }
    name.parse::<Ipv4Addr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || access
            .host_names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether `origin` is the API's own origin, `http://` + `host` (browsers write both without
/// the default port, in the same case-insensitive form).
fn same_origin(origin: &str, host: &str) -> bool {
    const SCHEME: &str = "http://";
    origin
        .get(..SCHEME.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(SCHEME))
        && origin[SCHEME.len()..].eq_ignore_ascii_case(host)
}

/// `application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(v: &HeaderValue) -> bool {
    value_str(v)
        .and_then(|s| s.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str, headers: &[(&str, &str)]) -> Option<Refusal> {
        req_with(method, target, headers, &ApiAccess::default())
    }

    fn req_with(
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        access: &ApiAccess,
    ) -> Option<Refusal> {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        refusal(&m, &target.parse().unwrap(), &h, access)
    }

    #[test]
    fn loopback_names_and_ip_literals_are_hosts() {
        for host in [
            "127.0.0.1:8989",
            "127.0.0.1",
            "127.9.8.7:1",
            "[::1]:8989",
            "[::1]",
            "localhost:8989",
            "LocalHost",
            "198.18.0.1:9100",
            "[fd00::1]:9100",
            "[::ffff:127.0.0.1]:80",
        ] {
            assert_eq!(req("GET", "/", &[("Host", host)]), None, "{host}");
        }
        // No Host at all: not a browser.
        assert_eq!(req("GET", "/", &[]), None);
    }

    #[test]
    fn dns_names_are_not_hosts() {
        for host in [
            "rebind.evil.example:8989",
            "evil.example",
            "127.0.0.1.nip.io",
            "a.localhost",
            "localhost.",
            "localhost.evil.example",
            "0x7f.0.0.1",
            "127.1",
            "[::1",
            "::1",
            "[fe80::1%25eth0]:80",
            "user@127.0.0.1",
            "127.0.0.1:notaport",
            "",
        ] {
            assert!(
                matches!(req("GET", "/", &[("Host", host)]), Some(Refusal::Host(_))),
                "{host}"
            );
        }
        assert_eq!(
            req(
                "GET",
                "/",
                &[("Host", "127.0.0.1"), ("Host", "evil.example")]
            ),
            Some(Refusal::HostRepeated)
        );
        // An absolute-form target names the host too.
        assert!(matches!(
            req(
                "GET",
                "http://evil.example/metrics",
                &[("Host", "127.0.0.1")]
            ),
            Some(Refusal::Host(_))
        ));
        assert_eq!(
            req(
                "GET",
                "http://127.0.0.1:9100/metrics",
                &[("Host", "127.0.0.1:9100")]
            ),
            None
        );
    }

    #[test]
    fn allowed_names_are_hosts() {
        let a = ApiAccess::with_host_names(["Prom-Target.lan", "node1"]).unwrap();
        for host in ["prom-target.lan:9100", "PROM-TARGET.LAN", "node1"] {
            assert_eq!(req_with("GET", "/", &[("Host", host)], &a), None, "{host}");
        }
        assert!(req_with("GET", "/", &[("Host", "other.lan")], &a).is_some());
        for bad in [
            "",
            "a..b",
            "name:9100",
            "a b",
            "http://x",
            "ä.example",
            "[::1]",
        ] {
            assert!(ApiAccess::with_host_names([bad]).is_err(), "{bad:?}");
        }
        assert!(ApiAccess::with_host_names(["a".repeat(64)]).is_err());
    }

    #[test]
    fn only_the_apis_own_origin() {
        let host = ("Host", "127.0.0.1:8989");
        assert_eq!(
            req("GET", "/", &[host, ("Origin", "http://127.0.0.1:8989")]),
            None
        );
        assert_eq!(
            req("GET", "/", &[host, ("Origin", "HTTP://127.0.0.1:8989")]),
            None
        );
        for o in [
            "http://evil.example",
            "null",
            "https://127.0.0.1:8989",
            "http://127.0.0.1:8990",
            "http://localhost:8989",
            "http://127.0.0.1:8989.evil.example",
            "http://",
            "é",
        ] {
            assert!(
                matches!(
                    req("GET", "/", &[host, ("Origin", o)]),
                    Some(Refusal::Origin(_))
                ),
                "{o}"
            );
        }
        // Without a Host there is no own origin to match.
        assert!(req("GET", "/", &[("Origin", "http://127.0.0.1:8989")]).is_some());
        for (site, refused) in [
            ("cross-site", true),
            ("Same-Site", true),
            ("same-origin", false),
            ("none", false),
        ] {
            assert_eq!(
                req("GET", "/", &[host, ("Sec-Fetch-Site", site)]).is_some(),
                refused,
                "{site}"
            );
        }
    }

    #[test]
    fn bodies_must_be_declared_json() {
        let host = ("Host", "127.0.0.1:8989");
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON ;charset=UTF-8",
        ] {
            assert_eq!(
                req("POST", "/", &[host, ("Content-Type", ct)]),
                None,
                "{ct}"
            );
        }
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
            "application/json-seq",
            "",
        ] {
            assert_eq!(
                req("POST", "/", &[host, ("Content-Type", ct)]),
                Some(Refusal::ContentType(Some(ct.to_owned()))),
                "{ct}"
            );
        }
        assert_eq!(req("PUT", "/", &[host]), Some(Refusal::ContentType(None)));
        assert_eq!(
            req(
                "POST",
                "/",
                &[
                    host,
                    ("Content-Type", "application/json"),
                    ("Content-Type", "text/plain")
                ]
            ),
            Some(Refusal::ContentType(Some("application/json".to_owned())))
        );
        // Requests without a body need no type; one that announces a body does.
        assert_eq!(req("GET", "/", &[host]), None);
        assert_eq!(req("DELETE", "/", &[host, ("Content-Length", "0")]), None);
        assert!(req("DELETE", "/", &[host, ("Content-Length", "5")]).is_some());
        assert!(req("GET", "/", &[host, ("Transfer-Encoding", "chunked")]).is_some());
    }

    #[test]
    fn host_is_checked_first_then_origin_then_type() {
        let r = req(
            "POST",
            "/",
            &[
                ("Host", "evil.example"),
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
        );
        assert!(matches!(r, Some(Refusal::Host(_))));
        let r = req(
            "POST",
            "/",
            &[
                ("Host", "127.0.0.1"),
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
        );
        assert!(matches!(r, Some(Refusal::Origin(_))));
    }

    #[test]
    fn refusals_count_by_reason() {
        let c = Arc::new(ApiCounters::default());
        let g = Guard::new("test", &ApiAccess::default(), c.clone());
        g.refused(&Refusal::Host("x".to_owned()));
        g.refused(&Refusal::HostRepeated);
        g.refused(&Refusal::FetchSite("cross-site".to_owned()));
        g.refused(&Refusal::ContentType(None));
        assert_eq!(c.refused_host.load(Relaxed), 2);
        assert_eq!(c.refused_origin.load(Relaxed), 1);
        assert_eq!(c.refused_content_type.load(Relaxed), 1);
    }
}
