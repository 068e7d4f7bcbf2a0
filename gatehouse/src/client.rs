//! The CLI's HTTP client for the admin API.

use anyhow::{Context, anyhow, bail};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::Global;

pub struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    /// Token from `GATEHOUSE_TOKEN`, else `<data-dir>/admin.token`.
    pub fn new(global: &Global) -> anyhow::Result<Self> {
        let token = match std::env::var("GATEHOUSE_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => {
                let path = global.data_dir.join("admin.token");
                std::fs::read_to_string(&path).map(|s| s.trim().to_string()).map_err(|_| {
                    anyhow!("no admin token: set GATEHOUSE_TOKEN or run from where {} is readable", path.display())
                })?
            }
        };
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { http, base: global.url.trim_end_matches('/').to_string(), token })
    }

    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp =
            req.send().await.map_err(|e| anyhow!("cannot reach Gatehouse at {}: {}", self.base, root_cause(&e)))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| text.lines().next().unwrap_or("").to_string());
        if status == StatusCode::UNAUTHORIZED {
            bail!("unauthorized: the admin token was refused");
        }
        bail!("{msg}")
    }

    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        Ok(self.send(Method::GET, path, None).await?.json().await?)
    }

    pub async fn get_bytes(&self, path: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self.send(Method::GET, path, None).await?.bytes().await?.to_vec())
    }

    pub async fn post(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        Ok(self.send(Method::POST, path, Some(body)).await?.json().await?)
    }
}

fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// Percent-encode one query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
