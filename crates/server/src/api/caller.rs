//! Who is calling. Every project-scoped handler takes a [`Caller`]; authentication (tokens,
//! OIDC) lands here and nowhere else. Until then the caller is the anonymous local user and
//! the server listens on loopback only (or with `--insecure-no-auth`).

use super::problem::Problem;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use runplane_domain::entity::ANONYMOUS;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
}

impl Caller {
    /// May this caller touch `project`? (Every role check goes through here.) A caller with no
    /// role in a project will get 404 for it, so that nothing leaks its existence.
    pub fn authorize(&self, _project: &str) -> Result<(), Problem> {
        Ok(())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(_parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Caller {
            name: ANONYMOUS.to_string(),
        })
    }
}
