//! Asking the metadata services over HTTP, each as its provider documents it:
//!
//! - EC2 (IMDSv2): `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds`, then
//!   GETs with `X-aws-ec2-metadata-token`: `/latest/dynamic/instance-identity/document` and
//!   `meta-data/{local-ipv4,public-ipv4,local-hostname,public-hostname,security-groups}`, and
//!   `meta-data/tags/instance` when tags are allowed in metadata (404 otherwise).
//! - Google Compute Engine: `GET /computeMetadata/v1/instance/?recursive=true` and
//!   `/computeMetadata/v1/project/{project-id,numeric-project-id}` with `Metadata-Flavor: Google`;
//!   the answer must carry `Metadata-Flavor: Google` too.
//! - Azure: `GET /metadata/instance?api-version=2021-02-01` with `Metadata: true`.
//! - DigitalOcean: `GET /metadata/v1.json`.
//! - OpenStack: `GET /openstack/latest/meta_data.json` (and the EC2-compatible `meta-data/`
//!   items for the addresses and flavor).
//! - Scaleway: `GET http://169.254.42.42/conf?format=json`.
//! - Alibaba Cloud: `PUT http://100.100.100.200/latest/api/token` with
//!   `X-aliyun-ecs-metadata-token-ttl-seconds` (the security-hardened mode, which every instance
//!   accepts), then `GET /latest/meta-data/<item>` with `X-aliyun-ecs-metadata-token`.
//!
//! reqwest (already in the agent for webhooks) with no proxy (the services are on the local
//! link; Azure says to bypass proxies), no redirects, a short connect timeout
//! ([`super::CONNECT_TIMEOUT`]) and a per-request one; every answer is read up to
//! [`MAX_BODY`]. One round asks every service at once and gives each at most
//! [`super::ROUND_LIMIT`]; nothing is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::Method;

use super::parse::{self, Ec2Answers};
use super::{CONNECT_TIMEOUT, Driver, Instance, ROUND_LIMIT};

/// The most of one answer that is read.
pub const MAX_BODY: usize = 256 * 1024;

/// The lifetime asked for session tokens (EC2, Alibaba): one round or refresh needs seconds.
const TOKEN_TTL_SECS: &str = "60";

/// Where the services are (`http://host[:port]`, no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// EC2, Google, Azure, DigitalOcean and OpenStack share the link-local address.
    pub link_local: String,
    /// Scaleway's.
    pub scaleway: String,
    /// Alibaba Cloud's.
    pub alibaba: String,
}

impl Default for Endpoints {
    fn default() -> Self {
        Endpoints {
            link_local: "http://169.254.169.254".into(),
            scaleway: "http://169.254.42.42".into(),
            alibaba: "http://100.100.100.200".into(),
        }
    }
}

/// One answer: its status, its body (at most [`MAX_BODY`]) and its `Metadata-Flavor` header.
#[derive(Debug)]
struct Reply {
    status: u16,
    body: String,
    flavor: Option<String>,
}

/// A client for one round.
struct Client {
    http: reqwest::Client,
}

impl Client {
    fn new(request_timeout: Duration) -> Result<Client, String> {
        let timeout = request_timeout.min(ROUND_LIMIT);
        crate::ensure_tls_provider();
        let http = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            .timeout(timeout)
            .pool_max_idle_per_host(2)
            .pool_idle_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| format!("cannot make an HTTP client: {e}"))?;
        Ok(Client { http })
    }

    async fn call(
        &self,
        method: Method,
        url: String,
        headers: &[(&str, &str)],
    ) -> Result<Reply, String> {
        let url = url.as_str();
        let mut request = self.http.request(method.clone(), url);
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let mut response = request.send().await.map_err(|e| describe(&e, url))?;
        let status = response.status().as_u16();
        let flavor = response
            .headers()
            .get("metadata-flavor")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| describe(&e, url))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("{method} {url}: answer over {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
            flavor,
        })
    }

    /// GET `url`: the body on 200, None on 404, an error otherwise.
    async fn item(&self, url: String, headers: &[(&str, &str)]) -> Result<Option<String>, String> {
        let r = self.call(Method::GET, url.clone(), headers).await?;
        match r.status {
            200 => Ok(Some(r.body.trim().to_owned()).filter(|b| !b.is_empty())),
            404 => Ok(None),
            s => Err(format!("GET {url}: HTTP {s}")),
        }
    }

    /// GET `url`, which must answer 200.
    async fn required(&self, url: String, headers: &[(&str, &str)]) -> Result<String, String> {
        self.item(url.clone(), headers)
            .await?
            .ok_or_else(|| format!("GET {url}: not found (HTTP 404 or empty)"))
    }

    /// A session token: `PUT url` with the TTL header.
    async fn token(&self, url: String, ttl_header: &str) -> Result<String, String> {
        let r = self
            .call(Method::PUT, url.clone(), &[(ttl_header, TOKEN_TTL_SECS)])
            .await?;
        let token = r.body.trim();
        if r.status != 200 || token.is_empty() || token.len() > 1024 {
            return Err(format!("PUT {url}: no session token (HTTP {})", r.status));
        }
        Ok(token.to_owned())
    }
}

/// A transport error in a few words (the URL, and timeouts named as such).
fn describe(e: &reqwest::Error, url: &str) -> String {
    if e.is_timeout() {
        format!("{url}: no answer in time")
    } else if e.is_connect() {
        format!("{url}: cannot connect")
    } else {
        format!("{url}: {e}")
    }
}

/// Ask every service in `drivers` at once; each gets at most [`ROUND_LIMIT`].
pub async fn probe(
    drivers: &[Driver],
    endpoints: &Endpoints,
    request_timeout: Duration,
) -> Vec<(Driver, Result<Instance, String>)> {
    let client = match Client::new(request_timeout) {
        Ok(c) => c,
        Err(e) => return drivers.iter().map(|d| (*d, Err(e.clone()))).collect(),
    };
    let client = &client;
    let asks = drivers.iter().map(|d| async move {
        let answer = tokio::time::timeout(ROUND_LIMIT, ask(client, *d, endpoints))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no complete answer within {} ms",
                    ROUND_LIMIT.as_millis()
                ))
            });
        (*d, answer)
    });
    futures_util::future::join_all(asks).await
}

/// Ask one service again (the collectors' refresh), within [`ROUND_LIMIT`].
pub async fn fetch(
    driver: Driver,
    endpoints: &Endpoints,
    request_timeout: Duration,
) -> Result<Instance, String> {
    probe(&[driver], endpoints, request_timeout)
        .await
        .pop()
        .map_or_else(|| Err("not asked".to_owned()), |(_, r)| r)
}

async fn ask(client: &Client, driver: Driver, at: &Endpoints) -> Result<Instance, String> {
    match driver {
        Driver::Ec2 => ec2(client, &at.link_local).await,
        Driver::GoogleCloud => google_cloud(client, &at.link_local).await,
        Driver::Azure => {
            let url = format!("{}/metadata/instance?api-version=2021-02-01", at.link_local);
            parse::azure(&client.required(url, &[("Metadata", "true")]).await?)
        }
        Driver::DigitalOcean => {
            let url = format!("{}/metadata/v1.json", at.link_local);
            parse::digitalocean(&client.required(url, &[]).await?)
        }
        Driver::Scaleway => {
            let url = format!("{}/conf?format=json", at.scaleway);
            parse::scaleway(&client.required(url, &[]).await?)
        }
        Driver::Alibaba => alibaba(client, &at.alibaba).await,
        Driver::OpenStack => openstack(client, &at.link_local).await,
    }
}

async fn ec2(client: &Client, base: &str) -> Result<Instance, String> {
    let token = client
        .token(
            format!("{base}/latest/api/token"),
            "X-aws-ec2-metadata-token-ttl-seconds",
        )
        .await?;
    let auth = [("X-aws-ec2-metadata-token", token.as_str())];
    let document = client
        .required(
            format!("{base}/latest/dynamic/instance-identity/document"),
            &auth,
        )
        .await?;
    let meta = |item: &str| format!("{base}/latest/meta-data/{item}");
    let (local, public, local_host, public_host, groups, tag_keys) = tokio::join!(
        client.item(meta("local-ipv4"), &auth),
        client.item(meta("public-ipv4"), &auth),
        client.item(meta("local-hostname"), &auth),
        client.item(meta("public-hostname"), &auth),
        client.item(meta("security-groups"), &auth),
        client.item(meta("tags/instance"), &auth),
    );
    let keys: Vec<String> = tag_keys
        .ok()
        .flatten()
        .map(|k| {
            k.lines()
                .map(str::trim)
                // Keys allowed in metadata are letters, digits and `+-=.,_:@` (no `/`).
                .filter(|k| !k.is_empty() && !k.contains('/') && !k.contains(".."))
                .take(parse::MAX_TAGS)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let values = futures_util::future::join_all(
        keys.iter()
            .map(|k| client.item(meta(&format!("tags/instance/{k}")), &auth)),
    )
    .await;
    let tags = keys
        .into_iter()
        .zip(values)
        .filter_map(|(k, v)| Some((k, v.ok()?.unwrap_or_default())))
        .collect();
    parse::ec2(&Ec2Answers {
        document,
        local_ipv4: local.ok().flatten(),
        public_ipv4: public.ok().flatten(),
        local_hostname: local_host.ok().flatten(),
        public_hostname: public_host.ok().flatten(),
        security_groups: groups.ok().flatten(),
        tags,
    })
}

async fn google_cloud(client: &Client, base: &str) -> Result<Instance, String> {
    let flavor = [("Metadata-Flavor", "Google")];
    let url = format!("{base}/computeMetadata/v1/instance/?recursive=true");
    let r = client.call(Method::GET, url.clone(), &flavor).await?;
    if r.status != 200 {
        return Err(format!("GET {url}: HTTP {}", r.status));
    }
    if r.flavor.as_deref() != Some("Google") {
        return Err(format!(
            "GET {url}: the answer has no `Metadata-Flavor: Google` header"
        ));
    }
    let project = format!("{base}/computeMetadata/v1/project");
    let (id, numeric) = tokio::join!(
        client.item(format!("{project}/project-id"), &flavor),
        client.item(format!("{project}/numeric-project-id"), &flavor),
    );
    parse::google_cloud(
        &r.body,
        id.ok().flatten().as_deref(),
        numeric.ok().flatten().as_deref(),
    )
}

async fn alibaba(client: &Client, base: &str) -> Result<Instance, String> {
    let token = client
        .token(
            format!("{base}/latest/api/token"),
            "X-aliyun-ecs-metadata-token-ttl-seconds",
        )
        .await?;
    let auth = [("X-aliyun-ecs-metadata-token", token.as_str())];
    let answers = futures_util::future::join_all(parse::ALIBABA_ITEMS.iter().map(|item| {
        let url = format!("{base}/latest/meta-data/{item}");
        let auth = &auth;
        async move { (*item, client.item(url, auth).await) }
    }))
    .await;
    let mut items = BTreeMap::new();
    for (k, v) in answers {
        if let Some(v) = v? {
            items.insert(k.to_owned(), v);
        }
    }
    parse::alibaba(&items)
}

async fn openstack(client: &Client, base: &str) -> Result<Instance, String> {
    let body = client
        .required(format!("{base}/openstack/latest/meta_data.json"), &[])
        .await?;
    let answers = futures_util::future::join_all(parse::OPENSTACK_EC2_ITEMS.iter().map(|item| {
        let url = format!("{base}/latest/meta-data/{item}");
        async move { (*item, client.item(url, &[]).await) }
    }))
    .await;
    let items = answers
        .into_iter()
        .filter_map(|(k, v)| Some((k.to_owned(), v.ok()??)))
        .collect();
    parse::openstack(&body, &items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A metadata service on loopback answering like EC2's with IMDSv2 required: a GET without
    /// the token gets 401. Returns its address; serves until the test ends.
    async fn fake_imds() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                    let path = req.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let (status, body) = if req.starts_with("put /latest/api/token") {
                        ("200 OK", "TOKEN123".to_owned())
                    } else if !req.contains("x-aws-ec2-metadata-token: token123") {
                        ("401 Unauthorized", String::new())
                    } else if path == "/latest/dynamic/instance-identity/document" {
                        (
                            "200 OK",
                            r#"{"instanceId":"i-0abc","region":"eu-west-1","availabilityZone":"eu-west-1a"}"#
                                .to_owned(),
                        )
                    } else if path == "/latest/meta-data/public-ipv4" {
                        ("200 OK", "203.0.113.7".to_owned())
                    } else {
                        ("404 Not Found", String::new())
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(answer.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn ec2_token_flow_against_a_fake_service() {
        let base = fake_imds().await;
        let at = Endpoints {
            link_local: base.clone(),
            scaleway: base.clone(),
            alibaba: base,
        };
        let i = fetch(Driver::Ec2, &at, Duration::from_secs(1))
            .await
            .expect("ec2 answers");
        assert_eq!(i.instance_id, "i-0abc");
        assert_eq!(i.public_ipv4, Some("203.0.113.7".parse().expect("ip")));
        // The others do not answer as themselves (401/404 here).
        for d in [Driver::Azure, Driver::GoogleCloud, Driver::OpenStack] {
            assert!(
                fetch(d, &at, Duration::from_secs(1)).await.is_err(),
                "{d:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_service_that_is_not_there_is_an_error_naming_it() {
        // A loopback port nobody listens on: refused at once.
        let at = Endpoints {
            link_local: "http://127.0.0.1:9".into(),
            scaleway: "http://127.0.0.1:9".into(),
            alibaba: "http://127.0.0.1:9".into(),
        };
        let all = probe(&Driver::ALL, &at, Duration::from_secs(1)).await;
        assert_eq!(all.len(), 7);
        for (d, r) in &all {
            let e = r.as_ref().expect_err("nothing listens");
            assert!(e.contains("127.0.0.1:9"), "{d:?}: {e}");
        }
    }
}
