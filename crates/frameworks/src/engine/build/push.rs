//! Pushing a built image to its registry, and the digest the registry now serves it by.

use super::{context, Runner};
use crate::engine::message;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::PushImageOptions;
use bollard::Docker;
use futures::StreamExt;

impl Runner {
    /// Pushes the tag to its registry; the pushed manifest's `repo@sha256:...`.
    pub(super) async fn push(&mut self) -> Result<String, String> {
        let image = self.build.image.clone();
        let (repo, tag) = context::split_reference(&image);
        self.log.system(&format!("pushing {image}"))?;
        self.report_log().await;
        let pusher = pusher(&self.docker, &image);
        let options = PushImageOptions {
            tag: Some(tag.to_string()),
            platform: None,
        };
        let mut stream = pusher.push_image(repo, Some(options), None);
        let mut digest = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(status) = info.status {
                        digest = digest.or_else(|| pushed_digest(&status));
                        self.log.system(&status)?;
                        self.report_log().await;
                    }
                }
                Err(DockerError::DockerStreamError { error }) => {
                    return Err(format!("pushing {image}: {}", error.trim_end()))
                }
                Err(e) => return Err(format!("pushing {image}: {}", message(&e))),
            }
        }
        let digest = match digest {
            Some(digest) => digest,
            None => self.repo_digest(repo).await?,
        };
        Ok(format!("{repo}@{digest}"))
    }

    /// The digest the engine recorded for `repo`, when the push output did not say it.
    async fn repo_digest(&self, repo: &str) -> Result<String, String> {
        let inspected = self
            .docker
            .inspect_image(&self.build.image)
            .await
            .map_err(|e| format!("cannot inspect {}: {}", self.build.image, message(&e)))?;
        inspected
            .repo_digests
            .unwrap_or_default()
            .iter()
            .find_map(|found| {
                found
                    .strip_prefix(repo)?
                    .strip_prefix('@')
                    .map(String::from)
            })
            .ok_or_else(|| format!("the push of {} reported no digest", self.build.image))
    }
}

/// `<tag>: digest: sha256:... size: N`, the engine's last push status.
fn pushed_digest(status: &str) -> Option<String> {
    let (_, rest) = status.split_once(": digest: ")?;
    let digest = rest.split_whitespace().next()?;
    digest.starts_with("sha256:").then(|| digest.to_string())
}

/// The client pushes go through. Podman refuses plain HTTP unless told otherwise; a loopback
/// registry (the only kind that can be trusted without TLS) gets `tlsVerify=false`.
fn pusher(docker: &Docker, image: &str) -> Docker {
    let loopback = context::registry_host(image).is_some_and(|host| {
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if !loopback {
        return docker.clone();
    }
    docker.clone().with_request_modifier(|mut request| {
        let uri = request.uri().to_string();
        if request.uri().path().ends_with("/push") {
            let separator = if uri.contains('?') { '&' } else { '?' };
            if let Ok(with_flag) = format!("{uri}{separator}tlsVerify=false").parse() {
                *request.uri_mut() = with_flag;
            }
        }
        request
    })
}

#[cfg(test)]
mod tests {
    use super::pushed_digest;

    #[test]
    fn the_digest_is_read_from_the_push_status() {
        assert_eq!(
            pushed_digest("one: digest: sha256:6151b9 size: 735").as_deref(),
            Some("sha256:6151b9")
        );
        assert_eq!(pushed_digest("The push refers to repository [x]"), None);
    }
}
