//! The interceptor that puts the API key on every request, and keeps it out
//! of `Debug` output and error messages.

use std::fmt;

use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::{Error, Result};

/// Adds `authorization: Bearer <key>` to every request.
#[derive(Clone)]
pub(crate) struct Auth {
    header: Option<AsciiMetadataValue>,
}

impl Auth {
    /// The interceptor for `key`; `None` sends no `authorization` header.
    pub(super) fn new(key: Option<&str>) -> Result<Auth> {
        let header = match key {
            None => None,
            Some(key) => {
                let mut value = MetadataValue::try_from(format!("Bearer {}", key.trim()))
                    // Never echo the key itself.
                    .map_err(|_| {
                        Error::InvalidConfig(
                            "the API key contains characters not allowed in a header".into(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Auth { header })
    }
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.header.is_some() {
            "Bearer <redacted>"
        } else {
            "none"
        })
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> std::result::Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Stands in for a secret in `Debug` output.
pub(super) struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_key() {
        let auth = Auth::new(Some("agk_id_secret")).expect("auth");
        assert_eq!(format!("{auth:?}"), "Bearer <redacted>");
    }

    #[test]
    fn auth_adds_the_bearer_header() {
        let mut auth = Auth::new(Some(" agk_x ")).expect("auth");
        let request = auth.call(Request::new(())).expect("intercept");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer agk_x"))
        );
        let mut none = Auth::new(None).expect("auth");
        assert!(
            none.call(Request::new(()))
                .expect("intercept")
                .metadata()
                .get("authorization")
                .is_none()
        );
    }
}
