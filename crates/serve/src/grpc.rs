//! The gRPC side of the protocol (tonic): `inference.GRPCInferenceService` with the model
//! repository calls. Inputs come as `raw_input_contents` (what Triton's clients send) or as
//! typed contents; outputs always go back as `raw_output_contents`.

use std::sync::Arc;

use bytes::Bytes;
use tonic::{Code, Request, Response, Status};

use crate::generated::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use crate::generated::model_infer_response::InferOutputTensor;
use crate::generated::*;
use crate::http::EXTENSIONS;
use crate::repository::Version;
use crate::tensor::{datatype_name, decode_input, Elements};
use crate::{ErrorKind, InferRequest, ServeError, Server};

pub struct Service {
    server: Arc<Server>,
}

/// The service, its message sizes bounded by the server's request limit.
pub fn service(server: Arc<Server>) -> GrpcInferenceServiceServer<Service> {
    let limit = server.limits.max_request_bytes;
    GrpcInferenceServiceServer::new(Service { server })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

impl From<ServeError> for Status {
    fn from(e: ServeError) -> Status {
        let code = match e.kind {
            ErrorKind::BadRequest => Code::InvalidArgument,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::TooLarge => Code::ResourceExhausted,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        };
        Status::new(code, e.message)
    }
}

fn version_of(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(&self, _: Request<ServerLiveRequest>) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<ServerReadyRequest>) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse { ready: self.server.ready() }))
    }

    async fn model_ready(&self, r: Request<ModelReadyRequest>) -> Result<Response<ModelReadyResponse>, Status> {
        let r = r.into_inner();
        let ready = self.server.repository.get(&r.name, version_of(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: "kiln".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = r.into_inner();
        let v = self.server.repository.get(&r.name, version_of(&r.version))?;
        let tensors = |ts: &[kiln_runtime::abi::manifest::TensorSpec]| {
            ts.iter()
                .map(|t| {
                    let (name, datatype, shape) = Version::tensor_metadata(t);
                    model_metadata_response::TensorMetadata { name, datatype: datatype.into(), shape }
                })
                .collect()
        };
        Ok(Response::new(ModelMetadataResponse {
            name: v.name.clone(),
            versions: self.server.repository.versions(&r.name).iter().map(u64::to_string).collect(),
            platform: "kiln".into(),
            inputs: tensors(v.session.inputs()),
            outputs: tensors(v.session.outputs()),
        }))
    }

    async fn model_infer(&self, r: Request<ModelInferRequest>) -> Result<Response<ModelInferResponse>, Status> {
        let r = r.into_inner();
        let raw = &r.raw_input_contents;
        if !raw.is_empty() && raw.len() != r.inputs.len() {
            return Err(ServeError::bad_request(format!(
                "{} raw_input_contents for {} inputs",
                raw.len(),
                r.inputs.len()
            ))
            .into());
        }
        let max_elements = self.server.limits.max_tensor_elements;
        let empty = InferTensorContents::default();
        let mut inputs = Vec::with_capacity(r.inputs.len());
        for (k, i) in r.inputs.iter().enumerate() {
            let elements = match raw.get(k) {
                Some(b) => Elements::Raw(Bytes::clone(b)),
                None => Elements::Typed(i.contents.as_ref().unwrap_or(&empty)),
            };
            inputs.push(decode_input(&i.name, &i.datatype, &i.shape, elements, max_elements)?);
        }
        let outputs = (!r.outputs.is_empty()).then(|| r.outputs.iter().map(|o| o.name.clone()).collect());
        let request = InferRequest {
            model: r.model_name.clone(),
            version: version_of(&r.model_version).map(str::to_string),
            inputs,
            outputs,
        };
        let (v, tensors) = self.server.infer(request, "grpc").await?;
        let mut response = ModelInferResponse {
            model_name: v.name.clone(),
            model_version: v.version.to_string(),
            id: r.id,
            ..Default::default()
        };
        for t in tensors {
            response.outputs.push(InferOutputTensor {
                name: t.name,
                datatype: datatype_name(t.dtype).unwrap_or("").into(),
                shape: t.shape.iter().map(|&d| d as i64).collect(),
                ..Default::default()
            });
            response.raw_output_contents.push(Bytes::from(t.data));
        }
        Ok(Response::new(response))
    }

    async fn repository_index(
        &self,
        r: Request<RepositoryIndexRequest>,
    ) -> Result<Response<RepositoryIndexResponse>, Status> {
        let models = self
            .server
            .repository
            .index(r.into_inner().ready)
            .into_iter()
            .map(|row| repository_index_response::ModelIndex {
                name: row.name,
                version: row.version,
                state: row.state.into(),
                reason: row.reason,
            })
            .collect();
        Ok(Response::new(RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<RepositoryModelLoadRequest>,
    ) -> Result<Response<RepositoryModelLoadResponse>, Status> {
        self.server.load(r.into_inner().model_name).await?;
        Ok(Response::new(RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<RepositoryModelUnloadRequest>,
    ) -> Result<Response<RepositoryModelUnloadResponse>, Status> {
        self.server.repository.unload(&r.into_inner().model_name)?;
        Ok(Response::new(RepositoryModelUnloadResponse {}))
    }
}
