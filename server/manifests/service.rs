//! `agentry.v1.ManifestService`.

use tonic::{Request, Response, Status};
use tracing::instrument;

use super::store::{self, ManifestFields, ManifestFilter, ManifestKey};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::pagination;
use crate::pb::manifest_service_server::ManifestService;
use crate::pb::{self, Role};
use crate::validate;

const ANY_ROLE: &[Role] = &[Role::Admin, Role::Tenant, Role::Agent];
const ADMIN: &[Role] = &[Role::Admin];

/// Serves manifests: anyone may read them, only admins change them.
#[derive(Debug, Clone)]
pub struct ManifestApi {
    ctx: Context,
}

impl ManifestApi {
    /// The service over `ctx`.
    pub fn new(ctx: Context) -> Self {
        ManifestApi { ctx }
    }
}

/// Validates the writable fields of a manifest; `prefix` names the message in errors.
fn fields(m: pb::Manifest, prefix: &str) -> Result<ManifestFields> {
    let f = |name: &str| format!("{prefix}.{name}");
    validate::slug(&f("agent_id"), &m.agent_id, 64)?;
    validate::slug(&f("agent_type"), &m.agent_type, 64)?;
    validate::name(&f("name"), &m.name, validate::MAX_NAME_CHARS)?;
    validate::text(&f("description"), &m.description, validate::MAX_TEXT_CHARS)?;
    validate::semver(&f("version"), &m.version)?;
    validate::capabilities(&f("capabilities"), &m.capabilities)?;
    validate::text(
        &f("requirements"),
        &m.requirements,
        validate::MAX_TEXT_CHARS,
    )?;
    let status =
        validate::enum_value(&f("status"), m.status)?.unwrap_or(pb::ManifestStatus::Active);
    Ok(ManifestFields {
        metadata: validate::json(&f("metadata"), m.metadata)?,
        agent_id: m.agent_id,
        agent_type: m.agent_type,
        name: m.name,
        description: m.description,
        version: m.version,
        capabilities: m.capabilities,
        requirements: m.requirements,
        status,
    })
}

/// Copies the fields named in `paths` from `src` onto `dst`.
fn apply_mask(dst: &mut pb::Manifest, src: pb::Manifest, paths: &[String]) -> Result<()> {
    if paths.is_empty() {
        return Err(Error::invalid(
            "update_mask",
            "is required: name the fields to change",
        ));
    }
    let mut src = src;
    for path in paths {
        match path.as_str() {
            "agent_type" => dst.agent_type = std::mem::take(&mut src.agent_type),
            "name" => dst.name = std::mem::take(&mut src.name),
            "description" => dst.description = std::mem::take(&mut src.description),
            "version" => dst.version = std::mem::take(&mut src.version),
            "capabilities" => dst.capabilities = std::mem::take(&mut src.capabilities),
            "requirements" => dst.requirements = std::mem::take(&mut src.requirements),
            "metadata" => dst.metadata = src.metadata.take(),
            "status" => dst.status = src.status,
            other => {
                return Err(Error::invalid(
                    "update_mask",
                    format!("unknown or immutable field {other:?}"),
                ));
            }
        }
    }
    Ok(())
}

#[tonic::async_trait]
impl ManifestService for ManifestApi {
    #[instrument(name = "manifest.create", skip_all, fields(role, tenant, agent_id))]
    async fn create_manifest(
        &self,
        request: Request<pb::CreateManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let manifest = validate::required("manifest", request.into_inner().manifest)?;
        let fields = fields(manifest, "manifest")?;
        tracing::Span::current().record("agent_id", fields.agent_id.as_str());
        let row = store::insert(&self.ctx.pool, &fields).await?;
        tracing::info!(id = %row.id, "manifest created");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "manifest.get", skip_all, fields(role, tenant))]
    async fn get_manifest(
        &self,
        request: Request<pb::GetManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        self.ctx.caller(&request, ANY_ROLE).await?;
        let key = match request.into_inner().key {
            Some(pb::get_manifest_request::Key::Id(id)) => {
                ManifestKey::Id(validate::uuid("id", &id)?)
            }
            Some(pb::get_manifest_request::Key::AgentId(agent_id)) => {
                validate::slug("agent_id", &agent_id, 64)?;
                ManifestKey::AgentId(agent_id)
            }
            None => return Err(Error::invalid("key", "set id or agent_id").into()),
        };
        Ok(Response::new(
            store::get(&self.ctx.pool, &key, false).await?.into(),
        ))
    }

    #[instrument(name = "manifest.list", skip_all, fields(role, tenant))]
    async fn list_manifests(
        &self,
        request: Request<pb::ListManifestsRequest>,
    ) -> Result<Response<pb::ListManifestsResponse>, Status> {
        self.ctx.caller(&request, ANY_ROLE).await?;
        let r = request.into_inner();
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = ManifestFilter {
            status: validate::enum_value("status", r.status)?,
            agent_type: non_empty(r.agent_type),
            capability: non_empty(r.capability),
            after: pagination::decode::<String>(&r.page_token)?,
            limit: pagination::page_size(r.page_size)?,
        };
        let rows = store::list(&self.ctx.pool, &filter).await?;
        let (rows, next_page_token) = pagination::page(rows, filter.limit, |m| m.agent_id.clone());
        Ok(Response::new(pb::ListManifestsResponse {
            manifests: rows.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }

    #[instrument(name = "manifest.update", skip_all, fields(role, tenant, id))]
    async fn update_manifest(
        &self,
        request: Request<pb::UpdateManifestRequest>,
    ) -> Result<Response<pb::Manifest>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let r = request.into_inner();
        let patch = validate::required("manifest", r.manifest)?;
        let id = validate::uuid("manifest.id", &patch.id)?;
        tracing::Span::current().record("id", tracing::field::display(id));
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let mut tx = self.ctx.pool.begin().await.map_err(Error::from)?;
        let mut current: pb::Manifest = store::get(&mut *tx, &ManifestKey::Id(id), true)
            .await?
            .into();
        apply_mask(&mut current, patch, &paths)?;
        let fields = fields(current, "manifest")?;
        let row = store::update(&mut *tx, id, &fields).await?;
        tx.commit().await.map_err(Error::from)?;
        tracing::info!(fields = ?paths, "manifest updated");
        Ok(Response::new(row.into()))
    }

    #[instrument(name = "manifest.delete", skip_all, fields(role, tenant, id))]
    async fn delete_manifest(
        &self,
        request: Request<pb::DeleteManifestRequest>,
    ) -> Result<Response<pb::DeleteManifestResponse>, Status> {
        self.ctx.caller(&request, ADMIN).await?;
        let id = validate::uuid("id", &request.get_ref().id)?;
        tracing::Span::current().record("id", tracing::field::display(id));
        store::delete(&self.ctx.pool, id).await?;
        tracing::info!("manifest deleted");
        Ok(Response::new(pb::DeleteManifestResponse {}))
    }
}
