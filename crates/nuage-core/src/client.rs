//! A client of the node HTTP API, used by the CLI and by nodes talking to their peers.
//!
//! One HTTP/1.1 connection per call keeps it simple; the API is a control plane, not a
//! data path.

use std::time::Duration;

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::ErrorBody;
use crate::config::DEFAULT_API_LISTEN;

/// Environment variable naming the node API the CLI talks to.
pub const API_ENV: &str = "NUAGE_API";
/// How long a call may take, connection included, unless changed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long establishing the TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest response body read into memory, in bytes.
pub const MAX_RESPONSE_BODY: usize = 64 << 20;

/// An error response from the API: its status and the server's message.
#[derive(Debug, Clone)]
pub struct ApiCallError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiCallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiCallError {}

#[derive(Debug, Clone)]
pub struct ApiClient {
    /// `host:port`.
    authority: String,
    timeout: Duration,
}

impl ApiClient {
    /// `api` is `http://host:port`, `host:port` or `host` (port 7070).
    pub fn new(api: &str) -> anyhow::Result<Self> {
        let rest = api
            .strip_prefix("http://")
            .unwrap_or(api)
            .trim_end_matches('/');
        if rest.is_empty() || rest.contains('/') || api.starts_with("https://") {
            return Err(anyhow!(
                "`{api}` is not a nuage API address; write http://host:port or host:port"
            ));
        }
        let authority = match crate::config::PeerAddr::parse(rest) {
            Ok(addr) => addr.authority(),
            Err(_) => {
                return Err(anyhow!(
                    "`{api}` is not a nuage API address; write http://host:port or host:port"
                ));
            }
        };
        Ok(ApiClient {
            authority,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// The API named by `flag`, else `$NUAGE_API`, else the default local node.
    pub fn from_flag_or_env(flag: Option<&str>) -> anyhow::Result<Self> {
        match flag {
            Some(api) => Self::new(api),
            None => match std::env::var(API_ENV) {
                Ok(api) if !api.is_empty() => {
                    Self::new(&api).with_context(|| format!("${API_ENV}"))
                }
                _ => Self::new(&DEFAULT_API_LISTEN.to_string()),
            },
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.authority)
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let bytes = self.call(Method::GET, path, None).await?;
        self.decode(path, &bytes)
    }

    pub async fn get_text(&self, path: &str) -> anyhow::Result<String> {
        let bytes = self.call(Method::GET, path, None).await?;
        String::from_utf8(bytes.to_vec())
            .with_context(|| format!("GET {path}: response is not UTF-8"))
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_vec(body)?;
        let bytes = self.call(Method::POST, path, Some(body)).await?;
        self.decode(path, &bytes)
    }

    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let bytes = self.call(Method::DELETE, path, None).await?;
        self.decode(path, &bytes)
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, bytes: &[u8]) -> anyhow::Result<T> {
        serde_json::from_slice(bytes).with_context(|| {
            format!(
                "{}{path}: unexpected response (is this a nuage node of the same version?)",
                self.base_url()
            )
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Bytes> {
        let fut = async {
            let resp = self.send(method, path, body).await?;
            let status = resp.status();
            let bytes = read_limited(resp.into_body()).await?;
            if status.is_success() {
                return Ok(bytes);
            }
            Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(b) => anyhow::Error::new(ApiCallError {
                    status,
                    code: b.error.code,
                    message: b.error.message,
                }),
                Err(_) => anyhow!("{}{path}: HTTP {status}", self.base_url()),
            })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| {
            anyhow!(
                "the nuage API at {} gave no answer to {path} within {:?}",
                self.base_url(),
                self.timeout
            )
        })?
    }

    /// Sends one request and returns the response with its body unread (for streams).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<Response<Incoming>> {
        assert!(path.starts_with('/'), "API paths start with /");
        let unreachable = |why: String| {
            anyhow!(
                "cannot reach the nuage API at {}: {why} (is `nuage up` running there? pass --api or set {API_ENV})",
                self.base_url()
            )
        };
        let stream = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| unreachable(format!("no connection within {CONNECT_TIMEOUT:?}")))?
        .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let has_body = body.is_some();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.authority);
        if has_body {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(sender.send_request(req).await?)
    }
}

async fn read_limited(body: Incoming) -> anyhow::Result<Bytes> {
    let limited = http_body_util::Limited::new(body, MAX_RESPONSE_BODY);
    let collected = limited
        .collect()
        .await
        .map_err(|e| anyhow!("reading the response: {e}"))?;
    Ok(collected.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            ApiClient::new("http://127.0.0.1:7070/").unwrap().authority,
            "127.0.0.1:7070"
        );
        assert_eq!(
            ApiClient::new("10.213.0.2").unwrap().authority,
            "10.213.0.2:7070"
        );
        assert_eq!(ApiClient::new("n2:80").unwrap().authority, "n2:80");
        for bad in ["", "https://x", "http://x/y", "a b"] {
            assert!(ApiClient::new(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn unreachable_api_says_what_to_do() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let err = ApiClient::new(&addr.to_string())
            .unwrap()
            .get::<serde_json::Value>("/v1/node")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("is `nuage up` running"), "{err}");
    }
}
