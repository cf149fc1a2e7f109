//! The HTTP client of the CLI: `$RUNPLANE_URL`, problem+json turned into readable errors with
//! the right exit code.

use crate::exit::CliError;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Duration;

pub const DEFAULT_URL: &str = "http://127.0.0.1:7420";

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    pub project: String,
}

impl Client {
    pub fn new(base: &str, project: &str) -> Result<Client, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|error| {
                CliError::unavailable(format!("cannot build an HTTP client: {error}"))
            })?;
        Ok(Client {
            http,
            base: base.trim_end_matches('/').to_string(),
            project: project.to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `/api/v1/projects/{project}` + `path`.
    pub fn project_url(&self, path: &str) -> String {
        format!("{}/api/v1/projects/{}{path}", self.base, self.project)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn request(&self, method: Method, url: &str) -> RequestBuilder {
        self.http.request(method, url)
    }

    /// Sends and checks the status: a problem+json answer becomes a [`CliError`].
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request
            .send()
            .await
            .map_err(|error| self.transport_error(error))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(problem_error(response).await)
    }

    pub async fn send_json<T: DeserializeOwned>(
        &self,
        request: RequestBuilder,
    ) -> Result<T, CliError> {
        let response = self.send(request).await?;
        response.json::<T>().await.map_err(|error| {
            CliError::unavailable(format!("the server answered something unreadable: {error}"))
        })
    }

    pub async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, CliError> {
        self.send_json(self.request(Method::GET, url)).await
    }

    pub fn transport_error(&self, error: reqwest::Error) -> CliError {
        if error.is_connect() || error.is_timeout() {
            CliError::unavailable(format!(
                "cannot reach the runplane server at {} ({error}); start one with `runplane server`, or set RUNPLANE_URL",
                self.base
            ))
        } else {
            CliError::unavailable(format!("request to {} failed: {error}", self.base))
        }
    }
}

/// Turns an error answer into a readable message: the problem's detail and every field.
pub async fn problem_error(response: Response) -> CliError {
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    let message = match serde_json::from_str::<Value>(&body) {
        Ok(problem) => {
            let mut text = problem["detail"].as_str().unwrap_or(&body).to_string();
            if let Some(errors) = problem["errors"].as_array() {
                if errors.len() > 1 || !text.contains(':') {
                    text = String::from("invalid request:");
                    for error in errors {
                        let field = error["field"].as_str().unwrap_or("");
                        let problem = error["problem"].as_str().unwrap_or("");
                        text.push_str(&format!("\n  {field}: {problem}"));
                    }
                }
            }
            text
        }
        Err(_) => body,
    };
    if status.is_client_error() {
        let prefix = match status {
            StatusCode::NOT_FOUND => "not found: ",
            StatusCode::CONFLICT => "conflict: ",
            _ => "",
        };
        CliError::invalid(format!("{prefix}{message}"))
    } else {
        CliError::unavailable(format!("server error ({status}): {message}"))
    }
}
