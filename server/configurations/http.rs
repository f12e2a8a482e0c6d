//! The A2A card endpoint on the metrics listener: `GET
//! /configurations/{id}/.well-known/agent-card.json`, so that an A2A client
//! given `http://host:9090/configurations/{id}` as the agent's base URL
//! finds the card where A2A looks for it. The `authorization` header is the
//! gRPC API's (`Bearer <key>`, tenant or admin); another tenant's
//! configuration answers 404, as gRPC answers `NOT_FOUND`.

use std::future::Future;
use std::pin::Pin;

use http_body_util::Full;
use hyper::StatusCode;
use hyper::body::Bytes;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::pb::Role;
use crate::telemetry::metrics::{HttpAnswer, HttpRoutes};

const CARD_PATH: &str = "/.well-known/agent-card.json";

/// Serves configurations' cards over HTTP.
#[derive(Debug, Clone)]
pub struct CardEndpoint {
    auth: Authenticator,
    pool: PgPool,
}

impl CardEndpoint {
    /// The endpoint over `pool`, authorizing with `auth`.
    pub fn new(auth: Authenticator, pool: PgPool) -> Self {
        CardEndpoint { auth, pool }
    }

    async fn card(
        self,
        headers: hyper::HeaderMap,
        peer: Option<std::net::SocketAddr>,
        id: Option<Uuid>,
    ) -> HttpAnswer {
        let Some(id) = id else {
            return answer(
                StatusCode::NOT_FOUND,
                "configuration id must be a UUID".into(),
            );
        };
        // As a gRPC call would arrive: its metadata, and its peer for the
        // limit on failed authentications per address.
        let mut extensions = tonic::Extensions::default();
        extensions.insert(tonic::transport::server::TcpConnectInfo {
            local_addr: None,
            remote_addr: peer,
        });
        let request = tonic::Request::from_parts(
            tonic::metadata::MetadataMap::from_headers(headers),
            extensions,
            (),
        );
        let result = async {
            let caller = self
                .auth
                .authorize(&request, &[Role::Admin, Role::Tenant])
                .await?;
            super::cards::agent_card(&self.pool, caller.scope("")?.filter(), id).await
        }
        .await;
        match result {
            Ok(card) => hyper::Response::builder()
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(card.to_string())))
                .expect("static headers are valid"),
            Err(e) => {
                let status = http_status(e.code());
                let message = tonic::Status::from(e).message().to_owned();
                answer(status, message)
            }
        }
    }
}

impl HttpRoutes for CardEndpoint {
    fn answer(
        &self,
        parts: &hyper::http::request::Parts,
    ) -> Option<Pin<Box<dyn Future<Output = HttpAnswer> + Send>>> {
        let id = parts
            .uri
            .path()
            .strip_prefix("/configurations/")?
            .strip_suffix(CARD_PATH)?;
        if parts.method != hyper::Method::GET {
            return Some(Box::pin(async {
                answer(StatusCode::METHOD_NOT_ALLOWED, "only GET".into())
            }));
        }
        let id = Uuid::try_parse(id).ok();
        let peer = parts.extensions.get::<std::net::SocketAddr>().copied();
        Some(Box::pin(self.clone().card(parts.headers.clone(), peer, id)))
    }
}

/// The HTTP status of an error, as gRPC's HTTP mapping has it.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn answer(status: StatusCode, message: String) -> HttpAnswer {
    let body = serde_json::json!({ "error": { "code": status.as_u16(), "message": message } });
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static headers are valid")
}
