//! API keys, roles and the tenant scope of a caller.
//!
//! A key looks like `agk_<key id>_<secret>`. Only SHA-256 of the whole key is
//! stored; the key id finds the row, and the hash is compared in constant time.
//! Keys that authenticated once are cached, so the routing hot path does not
//! read the database per call. Revocation still takes effect at once: the
//! revoking replica forgets the key before it answers, and the others hear of
//! it on the change feed (`api_keys` trigger) within milliseconds; a feed that
//! lost its connection empties the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tonic::Request;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::feed::{Follower, Snapshot, Update};
use crate::pb::Role;
use crate::request::Traced;

const KEY_PREFIX: &str = "agk_";

/// Who is calling, as established from the API key.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's id (safe to log).
    pub key_id: Uuid,
    /// The key's role.
    pub role: Role,
    /// The key's tenant; `None` for admin keys.
    pub tenant_id: Option<Uuid>,
}

/// Which tenants a statement may touch: one, or all of them (admins only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Exactly this tenant.
    Tenant(Uuid),
    /// Any tenant (admin keys without a `tenant_id`).
    All,
}

impl Scope {
    /// The tenant filter for SQL: `NULL` means "any tenant".
    pub fn filter(self) -> Option<Uuid> {
        match self {
            Scope::Tenant(id) => Some(id),
            Scope::All => None,
        }
    }
}

impl Caller {
    /// Fails with `PERMISSION_DENIED` unless the caller has one of `roles`.
    pub fn require(&self, roles: &[Role]) -> Result<()> {
        if roles.contains(&self.role) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "a {} key may not call this method",
                self.role.db_name().unwrap_or("unknown")
            )))
        }
    }

    /// The scope of a read or change of existing tenant data. `requested` is the
    /// request's optional `tenant_id`, honoured only for admin keys.
    pub fn scope(&self, requested: &str) -> Result<Scope> {
        match (self.tenant_id, requested.is_empty()) {
            (Some(own), true) => Ok(Scope::Tenant(own)),
            (Some(_), false) => Err(Error::PermissionDenied(
                "only admin keys may name a tenant_id".into(),
            )),
            (None, true) => Ok(Scope::All),
            (None, false) => Ok(Scope::Tenant(crate::validate::uuid(
                "tenant_id",
                requested,
            )?)),
        }
    }

    /// The single tenant that new data is created for.
    pub fn owning_tenant(&self, requested: &str) -> Result<Uuid> {
        match self.scope(requested)? {
            Scope::Tenant(id) => Ok(id),
            Scope::All => Err(Error::invalid("tenant_id", "required with an admin key")),
        }
    }
}

/// Key id → SHA-256 of the key and the caller it authenticates.
#[derive(Debug, Default)]
struct KeyCache {
    keys: HashMap<Uuid, ([u8; 32], Caller)>,
    /// Bumped by every forget, so that a lookup which raced with a
    /// revocation does not put the revoked key back.
    generation: u64,
}

/// Authenticates requests against the `api_keys` table.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pool: PgPool,
    /// Keys that authenticated: their hash and who they are.
    cache: Arc<Mutex<KeyCache>>,
}

impl Authenticator {
    /// An authenticator reading keys from `pool`.
    pub fn new(pool: PgPool) -> Self {
        Authenticator {
            pool,
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets key `id` (revoked or deleted).
    pub fn forget(&self, id: Uuid) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.keys.remove(&id);
    }

    /// Forgets every key (the change feed may have missed revocations).
    pub fn forget_all(&self) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.keys.clear();
    }

    /// The opening of every handler: authorizes `request` for `roles`, then
    /// converts its message into the domain request `D`.
    pub async fn accept<P, D>(&self, request: Request<P>, roles: &[Role]) -> Result<(Caller, D)>
    where
        D: TryFrom<P, Error = Error> + Traced,
    {
        let caller = self.authorize(&request, roles).await?;
        let domain = D::try_from(request.into_inner())?;
        domain.trace(&tracing::Span::current());
        Ok((caller, domain))
    }

    /// The caller of `request`, if its key is valid and has one of `roles`.
    /// Records the role and tenant on the current RPC span, refusals included.
    pub async fn authorize<T>(&self, request: &Request<T>, roles: &[Role]) -> Result<Caller> {
        let caller = self.authenticate(request).await?;
        let span = tracing::Span::current();
        span.record("role", caller.role.db_name().unwrap_or_default());
        if let Some(tenant) = caller.tenant_id {
            span.record("tenant", tracing::field::display(tenant));
        }
        caller.require(roles)?;
        Ok(caller)
    }

    /// The caller of `request`, if its bearer key is valid and not revoked.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller> {
        const MISSING: Error =
            Error::Unauthenticated("missing or malformed authorization: Bearer <api key>");
        const INVALID: Error = Error::Unauthenticated("invalid or revoked API key");
        let header = request.metadata().get("authorization").ok_or(MISSING)?;
        let key = header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .ok_or(MISSING)?
            .trim();
        let key_id = parse_key_id(key).ok_or(INVALID)?;
        let presented = hash(key);
        let generation = {
            let cache = self.cache();
            if let Some((stored, caller)) = cache.keys.get(&key_id) {
                return if bool::from(presented.as_slice().ct_eq(stored)) {
                    Ok(caller.clone())
                } else {
                    Err(INVALID)
                };
            }
            cache.generation
        };
        let row: Option<(String, Option<Uuid>, Vec<u8>)> = sqlx::query_as(
            "SELECT role, tenant_id, secret_hash FROM api_keys WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        let (role, tenant_id, stored) = row.ok_or(INVALID)?;
        if !bool::from(presented.as_slice().ct_eq(&stored)) {
            return Err(INVALID);
        }
        let caller = Caller {
            key_id,
            role: Role::from_db_name(&role),
            tenant_id,
        };
        let mut cache = self.cache();
        // A forget since our read may have been this key's revocation.
        if cache.generation == generation {
            cache.keys.insert(key_id, (presented, caller.clone()));
        }
        Ok(caller)
    }
}

/// Revocations reach the key cache of every replica through the feed; a
/// feed that reconnects may have missed some, so it forgets everything.
impl Follower for Authenticator {
    fn reset(&self, _snapshot: &Snapshot) {
        self.forget_all();
    }

    fn apply(&self, updates: &[Update]) {
        for update in updates {
            if let Update::ApiKey { id } = update {
                self.forget(*id);
            }
        }
    }
}

/// A newly minted key: its id, the secret to hand out once, and the hash to store.
pub struct NewKey {
    /// The key's id.
    pub id: Uuid,
    /// The full key, shown to its owner once.
    pub secret: String,
    /// SHA-256 of `secret`.
    pub hash: Vec<u8>,
}

/// Mints a key with 256 bits of randomness.
pub fn mint_key() -> Result<NewKey> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    let id = Uuid::new_v4();
    let secret = format!(
        "{KEY_PREFIX}{}_{}",
        id.simple(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    );
    let hash = hash(&secret).to_vec();
    Ok(NewKey { id, secret, hash })
}

fn hash(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn parse_key_id(key: &str) -> Option<Uuid> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, _secret) = rest.split_once('_')?;
    Uuid::try_parse(id).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_keys_parse_back_to_their_id() {
        let key = mint_key().expect("mint");
        assert_eq!(parse_key_id(&key.secret), Some(key.id));
        assert_eq!(hash(&key.secret).to_vec(), key.hash);
        assert_ne!(mint_key().expect("mint").secret, key.secret);
    }

    #[test]
    fn malformed_keys_have_no_id() {
        for key in [
            "",
            "agk_",
            "agk_nothex_x",
            "xyz_0123",
            "agk_0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(parse_key_id(key), None, "{key}");
        }
    }
}
