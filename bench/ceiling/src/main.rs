//! `scimgate-ceiling`: the throughput ceiling for `bench/run.sh`.
//!
//! A bare axum server answering the same routes the benchmark drives on scimgate with fixed, pre-serialised
//! bodies of the same size and shape as scimgate's answers for the benchmark's users: no authentication, no
//! store, no JSON work per request. Whatever scimgate reaches as a fraction of this server's throughput on the
//! same machine, with the same load generator, is the figure `bench/` reports as "ratio to ceiling".
//!
//! Routes (under `/scim/v2`):
//! - `GET /Users/{id}`: one User, `ETag` header.
//! - `PUT /Users/{id}`: reads the body, answers 200 with the User and an `ETag` header.
//! - `GET /Users`: a ListResponse; which one depends on the query string only (no parsing beyond a substring
//!   test): with `cursor=`, a page of `--page` users with a `nextCursor` (always: the walk never ends); with an
//!   `or` in it (`%20or%20`, `+or+`), two users; otherwise one.
//! - `POST /Users`: reads the body, answers 201 with the User, `Location` and `ETag` headers.
//! - `PATCH /Groups/{id}`: reads the body, answers 200 with a Group without members (what scimgate returns for
//!   `excludedAttributes=members`) and an `ETag` header.
//!
//! Usage: `scimgate-ceiling --listen 127.0.0.1:18081 [--users 10000] [--page 100]`

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, patch};

const SCIM_JSON: &str = "application/scim+json";
const BASE_PATH: &str = "/scim/v2";
/// A UUIDv7 like the ids scimgate assigns.
const USER_ID: &str = "01a21475-0462-71f5-b655-efb019328f75";
const GROUP_ID: &str = "01a21475-0463-7a2c-8d1e-3f6b2c9d4e10";
const VERSION: &str = r#"W/"1""#;
const TIMESTAMP: &str = "2026-01-01T00:00:00.000Z";
/// As long as scimgate's cursor for a page that ends at a user id (signed JSON naming the id, a query hash, the
/// tenant and an expiry, base64url).
const NEXT_CURSOR: &str = concat!(
    "eyJwIjp7ImEiOiIwMWEyMTQ3NS0wNDYyLTcxZjUtYjY1NS1lZmIwMTkzMjhmNzUifSwicSI6IjNmNmIyYzlkNGUxMDAxYTIiLCJ0Ijoi",
    "ZGVmYXVsdCIsImUiOjE3OTYwMDAwMDB9.c2lnbmF0dXJlLW9mLTE2Yg",
);

/// The fixed answers, serialised once at startup.
struct Fixed {
    user: Bytes,
    list1: Bytes,
    list2: Bytes,
    page: Bytes,
    group: Bytes,
    location: HeaderValue,
    etag: HeaderValue,
}

impl Fixed {
    fn new(listen: SocketAddr, users: usize, page: usize) -> Result<Self, Box<dyn std::error::Error>> {
        let origin = format!("http://{listen}{BASE_PATH}");
        let location = format!("{origin}/Users/{USER_ID}");
        let group_location = format!("{origin}/Groups/{GROUP_ID}");
        let user = user_json(&origin, USER_ID, 42);
        let list = |n: usize, total: usize, cursor: Option<&str>| {
            let resources: Vec<String> = (0..n).map(|i| user_json(&origin, &numbered_id(i + 1), i + 1)).collect();
            let next = cursor.map(|c| format!(r#""nextCursor":"{c}","#)).unwrap_or_default();
            let start = if cursor.is_some() { "" } else { r#""startIndex":1,"# };
            format!(
                concat!(
                    r#"{{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"#,
                    r#""totalResults":{total},"itemsPerPage":{n},{start}{next}"Resources":[{resources}]}}"#,
                ),
                total = total,
                n = n,
                start = start,
                next = next,
                resources = resources.join(","),
            )
        };
        let group = format!(
            concat!(
                r#"{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:Group"],"id":"{id}","#,
                r#""meta":{{"resourceType":"Group","created":"{ts}","lastModified":"{ts}","#,
                r#""location":"{location}","version":"W/\"1\""}},"displayName":"bench-large-12345"}}"#,
            ),
            id = GROUP_ID,
            ts = TIMESTAMP,
            location = group_location,
        );
        Ok(Fixed {
            user: Bytes::from(user),
            list1: Bytes::from(list(1, 1, None)),
            list2: Bytes::from(list(2, 2, None)),
            page: Bytes::from(list(page, users, Some(NEXT_CURSOR))),
            group: Bytes::from(group),
            location: HeaderValue::from_str(&location)?,
            etag: HeaderValue::from_static(VERSION),
        })
    }
}

/// A UUID-shaped id that differs per user of a page.
fn numbered_id(i: usize) -> String {
    format!("01a21475-0462-71f5-b655-{i:012x}")
}

/// The same members, in the same order, as scimgate's answer for a benchmark user (`bench/lib.sh` `bulk_body`).
fn user_json(origin: &str, id: &str, num: usize) -> String {
    let n = format!("{num:07}");
    format!(
        concat!(
            r#"{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"{id}","#,
            r#""meta":{{"resourceType":"User","created":"{ts}","lastModified":"{ts}","#,
            r#""location":"{origin}/Users/{id}","version":"W/\"1\""}},"#,
            r#""userName":"user{n}","#,
            r#""name":{{"givenName":"Given{n}","familyName":"Family{n}","formatted":"Given{n} Family{n}"}},"#,
            r#""displayName":"Given{n} Family{n}","active":true,"#,
            r#""emails":[{{"value":"user{n}@example.com","type":"work","primary":true}}]}}"#,
        ),
        id = id,
        ts = TIMESTAMP,
        origin = origin,
        n = n,
    )
}

type Shared = Arc<Fixed>;

fn scim_json() -> HeaderValue {
    HeaderValue::from_static(SCIM_JSON)
}

async fn get_user(State(f): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, scim_json()), (header::ETAG, f.etag.clone())],
        f.user.clone(),
    )
}

async fn list_users(State(f): State<Shared>, RawQuery(q): RawQuery) -> impl IntoResponse {
    let q = q.unwrap_or_default();
    let body = if q.contains("cursor=") {
        f.page.clone()
    } else if q.contains("%20or%20") || q.contains("+or+") {
        f.list2.clone()
    } else {
        f.list1.clone()
    };
    ([(header::CONTENT_TYPE, scim_json())], body)
}

async fn create_user(State(f): State<Shared>, _body: Bytes) -> impl IntoResponse {
    (
        StatusCode::CREATED,
        [
            (header::CONTENT_TYPE, scim_json()),
            (header::ETAG, f.etag.clone()),
            (header::LOCATION, f.location.clone()),
        ],
        f.user.clone(),
    )
}

async fn replace_user(State(f): State<Shared>, _body: Bytes) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, scim_json()), (header::ETAG, f.etag.clone())],
        f.user.clone(),
    )
}

async fn patch_group(State(f): State<Shared>, _body: Bytes) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, scim_json()), (header::ETAG, f.etag.clone())],
        f.group.clone(),
    )
}

fn app(fixed: Shared) -> Router {
    let routes = Router::new()
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/{id}", get(get_user).put(replace_user))
        .route("/Groups/{id}", patch(patch_group));
    Router::new().nest(BASE_PATH, routes).with_state(fixed)
}

struct Args {
    listen: SocketAddr,
    users: usize,
    page: usize,
}

fn parse_args() -> Result<Args, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut out = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 18081)),
        users: 10_000,
        page: 100,
    };
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--listen" => out.listen = value()?.parse()?,
            "--users" => out.users = value()?.parse()?,
            "--page" => out.page = value()?.parse()?,
            "-h" | "--help" => {
                println!("usage: scimgate-ceiling --listen ADDR [--users N] [--page N]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let fixed = Arc::new(Fixed::new(args.listen, args.users, args.page)?);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    eprintln!("scimgate-ceiling listening on {}", listener.local_addr()?);
    axum::serve(listener, app(fixed))
        .with_graceful_shutdown(async {
            // A failed signal handler just means we run until killed.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
