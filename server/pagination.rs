//! Opaque page tokens for keyset pagination.
//!
//! A token is the base64 of the last row's sort key, so pages stay stable when
//! rows are added or removed between calls (no OFFSET). Search answers,
//! ranked by a score that moves, page by position instead ([`Offset`]).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::{Error, Result};

/// Page size when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: i64 = 100;
/// Largest page size accepted.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// The requested page size, checked.
pub fn page_size(value: i32) -> Result<i64> {
    match i64::from(value) {
        0 => Ok(DEFAULT_PAGE_SIZE),
        n if (1..=MAX_PAGE_SIZE).contains(&n) => Ok(n),
        _ => Err(Error::invalid(
            "page_size",
            format!("must be between 0 and {MAX_PAGE_SIZE}"),
        )),
    }
}

/// The sort key a token stands for; `None` for the first page.
pub fn decode<K: PageKey>(token: &str) -> Result<Option<K>> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad = || Error::invalid("page_token", "is not a token returned by this method");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    // A key with NUL was never issued, and PostgreSQL would refuse it.
    if text.contains('\0') {
        return Err(bad());
    }
    K::parse(&text).map(Some).ok_or_else(bad)
}

/// One page from `rows`, fetched with `LIMIT page_size + 1`: the extra row only
/// tells that another page exists.
pub fn page<T, K: PageKey>(
    mut rows: Vec<T>,
    page_size: i64,
    key: impl Fn(&T) -> K,
) -> (Vec<T>, String) {
    let size = usize::try_from(page_size).unwrap_or(usize::MAX);
    if rows.len() <= size {
        return (rows, String::new());
    }
    rows.truncate(size);
    let token = rows
        .last()
        .map(|last| encode(&key(last)))
        .unwrap_or_default();
    (rows, token)
}

/// The page token of `key`.
pub fn encode<K: PageKey>(key: &K) -> String {
    URL_SAFE_NO_PAD.encode(key.render())
}

/// A sort key that can travel in a page token.
pub trait PageKey: Sized {
    /// The key as text.
    fn render(&self) -> String;
    /// The key back from text.
    fn parse(text: &str) -> Option<Self>;
}

impl PageKey for String {
    fn render(&self) -> String {
        format!("s:{self}")
    }
    fn parse(text: &str) -> Option<Self> {
        text.strip_prefix("s:").map(str::to_owned)
    }
}

/// A position in a ranking computed at each call (search results, ranked by
/// a live score, have no stable key to resume after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offset(pub usize);

impl PageKey for Offset {
    fn render(&self) -> String {
        format!("o:{}", self.0)
    }
    fn parse(text: &str) -> Option<Self> {
        text.strip_prefix("o:")?.parse().ok().map(Offset)
    }
}

/// Sort key of rows listed by creation time, then id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeKey {
    /// Creation time.
    pub at: chrono::DateTime<chrono::Utc>,
    /// Tie-breaker.
    pub id: uuid::Uuid,
}

impl PageKey for TimeKey {
    fn render(&self) -> String {
        format!("t:{}:{}", self.at.timestamp_micros(), self.id)
    }
    fn parse(text: &str) -> Option<Self> {
        let (micros, id) = text.strip_prefix("t:")?.split_once(':')?;
        // Issued keys are creation times; a negative one is forged, and may be
        // before the earliest timestamp PostgreSQL holds (4713 BC).
        let micros = micros.parse().ok().filter(|m: &i64| *m >= 0)?;
        Some(TimeKey {
            at: chrono::DateTime::from_timestamp_micros(micros)?,
            id: uuid::Uuid::try_parse(id).ok()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_roundtrip() {
        let rows: Vec<String> = vec!["a".into(), "b".into(), "c".into()];
        let (page, token) = page(rows, 2, |r| r.clone());
        assert_eq!(page, vec!["a", "b"]);
        assert_eq!(
            decode::<String>(&token).expect("valid"),
            Some("b".to_owned())
        );
        let key = TimeKey {
            at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).expect("ts"),
            id: uuid::Uuid::new_v4(),
        };
        assert_eq!(TimeKey::parse(&key.render()), Some(key));
    }

    #[test]
    fn last_page_has_no_token_and_garbage_is_rejected() {
        let (_, token) = page(vec![1, 2], 2, |_| "x".to_owned());
        assert!(token.is_empty());
        assert!(decode::<String>("!!!").is_err());
        assert!(decode::<TimeKey>(&URL_SAFE_NO_PAD.encode("s:abc")).is_err());
        assert!(decode::<String>(&URL_SAFE_NO_PAD.encode("s:a\0")).is_err());
        let forged = format!("t:-9000000000000000000:{}", uuid::Uuid::nil());
        assert!(decode::<TimeKey>(&URL_SAFE_NO_PAD.encode(forged)).is_err());
        assert!(page_size(-1).is_err() && page_size(1001).is_err());
    }
}
