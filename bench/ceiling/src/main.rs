//! `scimgate-ceiling`: the throughput ceiling for `bench/run.sh`.
//!
//! A bare axum server answering the same routes the benchmark drives on scimgate with fixed, pre-serialised
//! bodies of the same size and shape as scimgate's answers for the benchmark's users: no authentication, no
//! store, no JSON work per request. Whatever scimgate reaches as a fraction of this server's throughput on the
//! same machine, with the same load generator, is the figure `bench/` reports as "ratio to ceiling".
//!
//! Routes (under `/scim/v2`):
//! - `GET /Users/{id}`: one User, `ETag` header.
//! - `GET /Users` (any query): a ListResponse holding that User.
//! - `POST /Users`: reads the body, answers 201 with the User, `Location` and `ETag` headers.
//!
//! Usage: `scimgate-ceiling --listen 127.0.0.1:18081`

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

const SCIM_JSON: &str = "application/scim+json";
const BASE_PATH: &str = "/scim/v2";
/// A UUIDv7 like the ids scimgate assigns.
const USER_ID: &str = "01a21475-0462-71f5-b655-efb019328f75";
const VERSION: &str = r#"W/"1""#;
const TIMESTAMP: &str = "2026-01-01T00:00:00.000Z";

/// The fixed answers, serialised once at startup.
struct Fixed {
    user: Bytes,
    list: Bytes,
    location: HeaderValue,
    etag: HeaderValue,
}

impl Fixed {
    fn new(listen: SocketAddr) -> Result<Self, Box<dyn std::error::Error>> {
        let location = format!("http://{listen}{BASE_PATH}/Users/{USER_ID}");
        let user = user_json(&location);
        let list = format!(
            concat!(
                r#"{{"schemas":["urn:ietf:params:scim:api:messages:2.0:ListResponse"],"#,
                r#""totalResults":1,"itemsPerPage":1,"startIndex":1,"Resources":[{}]}}"#,
            ),
            user
        );
        Ok(Fixed {
            user: Bytes::from(user),
            list: Bytes::from(list),
            location: HeaderValue::from_str(&location)?,
            etag: HeaderValue::from_static(VERSION),
        })
    }
}

/// The same members, in the same order, as scimgate's answer for a benchmark user (`bench/run.sh` `user_json`).
fn user_json(location: &str) -> String {
    let n = "0000042";
    format!(
        concat!(
            r#"{{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"id":"{id}","#,
            r#""meta":{{"resourceType":"User","created":"{ts}","lastModified":"{ts}","#,
            r#""location":"{location}","version":"W/\"1\""}},"#,
            r#""userName":"user{n}","#,
            r#""name":{{"givenName":"Given{n}","familyName":"Family{n}","formatted":"Given{n} Family{n}"}},"#,
            r#""displayName":"Given{n} Family{n}","active":true,"#,
            r#""emails":[{{"value":"user{n}@example.com","type":"work","primary":true}}]}}"#,
        ),
        id = USER_ID,
        ts = TIMESTAMP,
        location = location,
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

async fn list_users(State(f): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, scim_json())], f.list.clone())
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

fn app(fixed: Shared) -> Router {
    let users = Router::new()
        .route("/Users", get(list_users).post(create_user))
        .route("/Users/{id}", get(get_user));
    Router::new().nest(BASE_PATH, users).with_state(fixed)
}

fn parse_listen() -> Result<SocketAddr, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut listen: Option<SocketAddr> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args.next().ok_or("--listen needs an address")?;
                listen = Some(v.parse()?);
            }
            "-h" | "--help" => {
                println!("usage: scimgate-ceiling --listen ADDR");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    Ok(listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 18081))))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = parse_listen()?;
    let fixed = Arc::new(Fixed::new(listen)?);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("scimgate-ceiling listening on {}", listener.local_addr()?);
    axum::serve(listener, app(fixed))
        .with_graceful_shutdown(async {
            // A failed signal handler just means we run until killed.
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
