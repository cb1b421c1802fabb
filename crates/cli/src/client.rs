//! A small client for the agent's local HTTP API, speaking the shapes of `opsbro-api`.

use std::time::Duration;

use opsbro_api::ErrorBody;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::CliError;

/// Talks to one agent.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    addr: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client for `api` (`host:port`, `host`, or `http://host:port`).
    pub fn new(api: &str, token: Option<String>) -> Result<Client, CliError> {
        // reqwest is built with rustls and no default provider (ring, never aws-lc).
        opsbro_agent::install_tls_provider();
        let trimmed = api.trim().trim_end_matches('/');
        let without_scheme = trimmed.strip_prefix("http://").unwrap_or(trimmed);
        if without_scheme.starts_with("https://") || without_scheme.is_empty() {
            return Err(CliError::Usage(format!(
                "--api `{api}`: expected host:port or http://host:port"
            )));
        }
        let addr = if has_port(without_scheme) {
            without_scheme.to_owned()
        } else {
            format!("{without_scheme}:{}", opsbro_config::DEFAULT_API_PORT)
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| CliError::Other(e.into()))?;
        Ok(Client {
            base: format!("http://{addr}"),
            addr,
            token,
            http,
        })
    }

    /// The host:port this client talks to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path` decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::GET, path).await
    }

    /// `POST path` (no body) decoded as `T`.
    pub async fn post<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::POST, path).await
    }

    /// `PUT path` (no body) decoded as `T`.
    pub async fn put<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::PUT, path).await
    }

    /// `DELETE path` decoded as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.call(Method::DELETE, path).await
    }

    /// `POST path` with a JSON body, decoded as `T`.
    pub async fn post_json<T: DeserializeOwned, B: serde::Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, CliError> {
        let body = serde_json::to_vec(body).map_err(|e| CliError::Other(e.into()))?;
        self.send(Method::POST, path, Some(body)).await
    }

    /// `PUT path` with raw bytes as the body, decoded as `T`.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, CliError> {
        let bytes = self
            .send_raw(Method::PUT, path, Some(("application/octet-stream", body)))
            .await?;
        self.decode(&bytes)
    }

    /// `GET path`, the answer's bytes as they are.
    pub async fn get_bytes(&self, path: &str) -> Result<Vec<u8>, CliError> {
        self.send_raw(Method::GET, path, None).await
    }

    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str) -> Result<T, CliError> {
        self.send(method, path, None).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, CliError> {
        let bytes = self
            .send_raw(method, path, body.map(|b| ("application/json", b)))
            .await?;
        self.decode(&bytes)
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CliError> {
        serde_json::from_slice(bytes).map_err(|e| {
            CliError::Other(anyhow::anyhow!(
                "the agent at {} sent an answer this CLI does not understand ({e}); are the CLI and agent the same version?",
                self.addr
            ))
        })
    }

    async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Vec<u8>, CliError> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some((content_type, body)) = body {
            request = request.header("content-type", content_type).body(body);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(e))?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).trim().to_owned());
        let message = if status == StatusCode::UNAUTHORIZED && self.token.is_none() {
            format!("{message} (set OPSBRO_API_TOKEN or pass --token)")
        } else {
            message
        };
        Err(CliError::Api {
            addr: self.addr.clone(),
            status: status.as_u16(),
            message,
        })
    }

    fn transport_error(&self, e: reqwest::Error) -> CliError {
        if e.is_timeout() && !e.is_connect() {
            return CliError::Other(anyhow::anyhow!(
                "the agent at {} accepted the request but did not answer in time",
                self.addr
            ));
        }
        if e.is_connect() || e.is_timeout() || e.is_request() {
            CliError::Unreachable {
                addr: self.addr.clone(),
            }
        } else {
            CliError::Other(anyhow::anyhow!(
                "talking to the agent at {}: {e}",
                self.addr
            ))
        }
    }
}

fn has_port(addr: &str) -> bool {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.contains("]:");
    }
    addr.matches(':').count() == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_addresses_are_normalised() {
        let c = |s| Client::new(s, None).expect("valid").addr().to_owned();
        assert_eq!(c("127.0.0.1:7000"), "127.0.0.1:7000");
        assert_eq!(c("http://127.0.0.1:7000/"), "127.0.0.1:7000");
        assert_eq!(c("localhost"), "localhost:6770");
        assert_eq!(c("[::1]:7000"), "[::1]:7000");
        assert!(Client::new("https://x", None).is_err());
    }
}
