//! API keys, roles and the tenant scope of a caller.
//!
//! A key looks like `agk_<key id>_<secret>`. Only SHA-256 of the whole key is
//! stored; the key id finds the row, and the hash is compared in constant time.
//! Keys that authenticated once are cached, so the routing hot path does not
//! read the database per call. Revocation still takes effect at once: the
//! revoking replica forgets the key before it answers, and the others hear of
//! it on the change feed (`api_keys` trigger) within milliseconds; a feed that
//! lost its connection empties the cache.
//!
//! Revocation also ends what a key keeps open: health streams and watches
//! hold a [`Revocation`] of their key, which fires when the key is forgotten
//! (on every replica, through the feed). After a feed reset the open keys
//! are checked against the database, since the feed may have missed one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use subtle::ConstantTimeEq;
use tokio::sync::watch;
use tonic::Request;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::feed::{Follower, Snapshot, Update};
use crate::limits::{Limits, Permit};
use crate::pb::Role;
use crate::request::Traced;
use crate::telemetry::access::{CallerInfo, CallerSlot};
use crate::telemetry::metrics::AUTH_FAILURES;

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
    /// The tenant's budget of concurrent calls, taken for this call and
    /// given back when the call's caller drops (none for admin keys).
    call: Option<Arc<Permit>>,
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
            let role = self.role.db_name().unwrap_or("unknown");
            let article = if role.starts_with(['a', 'e', 'i', 'o', 'u']) {
                "an"
            } else {
                "a"
            };
            Err(Error::PermissionDenied(format!(
                "{article} {role} key may not call this method"
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

    /// Who this caller is in the audit log.
    pub fn actor(&self) -> crate::audit::Actor {
        crate::audit::Actor::key(self.key_id, self.role, self.tenant_id)
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
    /// Keys with open streams or watches: set to true when revoked. Under
    /// the same lock as `keys`, so a subscription cannot slip between a
    /// revocation and its forget.
    open: HashMap<Uuid, watch::Sender<bool>>,
    /// Prune `open` of keys nobody holds any more when it grows past this.
    prune_at: usize,
}

impl KeyCache {
    fn revoke(&mut self, id: Uuid) {
        if let Some(revoked) = self.open.remove(&id) {
            revoked.send_replace(true);
        }
    }
}

/// Fires when the key it was taken for is revoked or deleted.
#[derive(Debug)]
pub struct Revocation(watch::Receiver<bool>);

impl Revocation {
    /// Resolves once the key is revoked; never, while it is not.
    pub async fn revoked(&mut self) {
        if self.0.wait_for(|revoked| *revoked).await.is_err() {
            // The sender went away unrevoked (pruned with nobody left to tell).
            std::future::pending::<()>().await;
        }
    }

    /// The status that ends a call of a revoked key.
    pub fn status() -> tonic::Status {
        Error::Unauthenticated("the API key was revoked").into()
    }
}

/// Authenticates requests against the `api_keys` table.
#[derive(Debug, Clone)]
pub struct Authenticator {
    pool: PgPool,
    /// Keys that authenticated: their hash and who they are.
    cache: Arc<Mutex<KeyCache>>,
    limits: Arc<Limits>,
}

/// What an open call (health stream, watch) holds of its caller: the
/// revocation that ends it, and a unit of its tenant's stream budget.
#[derive(Debug)]
pub struct Held {
    /// Fires when the caller's key is revoked.
    pub revocation: Revocation,
    _stream: Permit,
}

impl Authenticator {
    /// An authenticator reading keys from `pool`, within `limits`.
    pub fn new(pool: PgPool, limits: Arc<Limits>) -> Self {
        Authenticator {
            pool,
            cache: Arc::default(),
            limits,
        }
    }

    /// The limits this authenticator applies.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What an open call of `caller` holds until it ends; refused when the
    /// tenant has all the streams it may open.
    fn hold(&self, caller: &Caller) -> Result<Held> {
        let stream = match caller.tenant_id {
            Some(tenant) => self.limits.stream(tenant)?,
            None => Permit::none(),
        };
        Ok(Held {
            revocation: self.subscribe(caller),
            _stream: stream,
        })
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, KeyCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets key `id` (revoked or deleted), ending its open calls.
    pub fn forget(&self, id: Uuid) {
        let mut cache = self.cache();
        cache.generation += 1;
        cache.keys.remove(&id);
        cache.revoke(id);
    }

    /// Forgets every key (the change feed may have missed revocations), and
    /// checks the keys of open calls against the database.
    pub fn forget_all(&self) {
        let open: Vec<Uuid> = {
            let mut cache = self.cache();
            cache.generation += 1;
            cache.keys.clear();
            cache.open.keys().copied().collect()
        };
        if !open.is_empty() {
            tokio::spawn(self.clone().revoke_unless_valid(open));
        }
    }

    /// Ends the open calls of those of `keys` that are no longer valid.
    async fn revoke_unless_valid(self, keys: Vec<Uuid>) {
        let mut delay = std::time::Duration::from_millis(100);
        let valid: Vec<Uuid> = loop {
            match sqlx::query_scalar(
                "SELECT id FROM api_keys WHERE id = ANY($1) AND revoked_at IS NULL",
            )
            .bind(&keys)
            .fetch_all(&self.pool)
            .await
            {
                Ok(valid) => break valid,
                Err(e) => {
                    tracing::warn!(error = %e, "could not check the keys of open calls; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        };
        let mut cache = self.cache();
        for key in keys.into_iter().filter(|k| !valid.contains(k)) {
            tracing::info!(key_id = %key, "ending the open calls of a revoked key");
            cache.revoke(key);
        }
    }

    /// A revocation of `caller`'s key, for a call that stays open.
    pub fn subscribe(&self, caller: &Caller) -> Revocation {
        let mut cache = self.cache();
        if cache.open.len() >= cache.prune_at {
            cache.open.retain(|_, revoked| revoked.receiver_count() > 0);
            cache.prune_at = (cache.open.len() * 2).max(64);
        }
        let revocation = Revocation(
            cache
                .open
                .entry(caller.key_id)
                .or_insert_with(|| watch::channel(false).0)
                .subscribe(),
        );
        // Not cached: it was forgotten since it authenticated, maybe revoked.
        if !cache.keys.contains_key(&caller.key_id) {
            tokio::spawn(self.clone().revoke_unless_valid(vec![caller.key_id]));
        }
        revocation
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
    /// Then counts the request against the key's rate and takes a unit of
    /// its tenant's concurrent calls.
    pub async fn authorize<T>(&self, request: &Request<T>, roles: &[Role]) -> Result<Caller> {
        let mut caller = self.admit(request, roles).await?;
        if let Some(tenant) = caller.tenant_id {
            caller.call = Some(Arc::new(self.limits.call(tenant)?));
        }
        Ok(caller)
    }

    /// [`Authenticator::authorize`] for a call that stays open (a health
    /// stream, a watch): it takes a unit of the tenant's streams instead of
    /// its concurrent calls, so a fleet connecting at once is bounded by the
    /// streams it may hold, not by how many wait for their `Hello` together.
    pub async fn authorize_stream<T>(
        &self,
        request: &Request<T>,
        roles: &[Role],
    ) -> Result<(Caller, Held)> {
        let caller = self.admit(request, roles).await?;
        let held = self.hold(&caller)?;
        Ok((caller, held))
    }

    /// Authenticates, records the caller on the span, checks the role and
    /// counts the request against the key's rate.
    async fn admit<T>(&self, request: &Request<T>, roles: &[Role]) -> Result<Caller> {
        let peer = request.remote_addr().map(|a| a.ip());
        self.limits.before_authentication(peer)?;
        let caller = match self.authenticate(request).await {
            Err(e @ Error::Unauthenticated(_)) => {
                metrics::counter!(AUTH_FAILURES).increment(1);
                self.limits.authentication_failed(peer);
                return Err(e);
            }
            other => other?,
        };
        let role = caller.role.db_name().unwrap_or_default();
        let span = tracing::Span::current();
        span.record("role", role);
        span.record("key_id", tracing::field::display(caller.key_id));
        if let Some(tenant) = caller.tenant_id {
            span.record("tenant", tracing::field::display(tenant));
        }
        CallerSlot::fill(request.extensions(), || CallerInfo {
            key_id: caller.key_id,
            role,
            tenant: caller.tenant_id,
        });
        caller.require(roles)?;
        self.limits.request(caller.key_id)?;
        Ok(caller)
    }

    /// The caller of `request`, if its bearer key is valid and not revoked.
    pub async fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller> {
        const INVALID: Error = Error::Unauthenticated("invalid or revoked API key");
        let key = bearer(request.metadata())?;
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
            call: None,
        };
        let mut cache = self.cache();
        // A forget since our read may have been this key's revocation.
        if cache.generation == generation {
            cache.keys.insert(key_id, (presented, caller.clone()));
        }
        Ok(caller)
    }
}

/// The key of the one `authorization: Bearer <key>` header. The scheme is
/// case-insensitive (RFC 7235, section 2.1). Two headers are refused rather
/// than one picked: a proxy and a caller that each add one would otherwise
/// disagree on who is calling.
fn bearer(metadata: &tonic::metadata::MetadataMap) -> Result<&str> {
    const MISSING: Error =
        Error::Unauthenticated("missing or malformed authorization: Bearer <api key>");
    let mut headers = metadata.get_all("authorization").iter();
    let header = headers.next().ok_or(MISSING)?;
    if headers.next().is_some() {
        return Err(Error::Unauthenticated("more than one authorization header"));
    }
    let (scheme, key) = header
        .to_str()
        .ok()
        .and_then(|h| h.trim_start().split_once(' '))
        .ok_or(MISSING)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(MISSING);
    }
    Ok(key.trim())
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

    fn metadata(values: &[&str]) -> tonic::metadata::MetadataMap {
        let mut map = tonic::metadata::MetadataMap::new();
        for v in values {
            map.append("authorization", v.parse().expect("ascii"));
        }
        map
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer k", "bearer k", "BEARER k", "bEaReR  k "] {
            assert_eq!(bearer(&metadata(&[header])).ok(), Some("k"), "{header}");
        }
        for header in ["Basic k", "Bearerk", "k", ""] {
            assert!(bearer(&metadata(&[header])).is_err(), "{header}");
        }
        assert!(bearer(&metadata(&[])).is_err());
        let two = bearer(&metadata(&["Bearer a", "Bearer b"])).unwrap_err();
        assert_eq!(two.to_string(), "more than one authorization header");
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
