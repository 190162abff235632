//! `nurture-floor`: the least a gRPC server can do for a ModelInfer call
//! with tonic, as nurture-server runs it (one runtime worker thread on two
//! cores, TCP_NODELAY, the same global allocator): decode the
//! ModelInferRequest, answer a fixed two-class probability row. No routing,
//! batching, model, log or metrics.
//! `benches/floor/run.sh` compares nurture-server's CPU per request with
//! this one's.
//!
//! ```text
//! nurture-floor [--listen 127.0.0.1:0] [--io-threads 1]
//! ```

use clap::Parser;
use nurture_proto::inference as kserve;
use nurture_proto::inference::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use tonic::{Request, Response, Status};

/// nurture-server's allocator, so the ratio is not an allocator's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "nurture-floor")]
struct Cli {
    /// Listen address; the bound one is printed as `grpc=ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Runtime worker threads (nurture-server's default on two cores is 1).
    #[arg(long, default_value_t = 1)]
    io_threads: usize,
}

/// Answers ModelInfer with a fixed row; everything else is unimplemented.
struct Floor;

#[tonic::async_trait]
impl GrpcInferenceService for Floor {
    async fn server_live(
        &self,
        _: Request<kserve::ServerLiveRequest>,
    ) -> Result<Response<kserve::ServerLiveResponse>, Status> {
        Ok(Response::new(kserve::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<kserve::ServerReadyRequest>,
    ) -> Result<Response<kserve::ServerReadyResponse>, Status> {
        Ok(Response::new(kserve::ServerReadyResponse { ready: true }))
    }

    async fn model_ready(
        &self,
        _: Request<kserve::ModelReadyRequest>,
    ) -> Result<Response<kserve::ModelReadyResponse>, Status> {
        Ok(Response::new(kserve::ModelReadyResponse { ready: true }))
    }

    async fn server_metadata(
        &self,
        _: Request<kserve::ServerMetadataRequest>,
    ) -> Result<Response<kserve::ServerMetadataResponse>, Status> {
        Err(Status::unimplemented("the floor answers ModelInfer only"))
    }

    async fn model_metadata(
        &self,
        _: Request<kserve::ModelMetadataRequest>,
    ) -> Result<Response<kserve::ModelMetadataResponse>, Status> {
        Err(Status::unimplemented("the floor answers ModelInfer only"))
    }

    async fn model_infer(
        &self,
        request: Request<kserve::ModelInferRequest>,
    ) -> Result<Response<kserve::ModelInferResponse>, Status> {
        let request = request.into_inner();
        let rows = request
            .inputs
            .first()
            .and_then(|input| input.shape.first())
            .copied()
            .unwrap_or(1)
            .max(1);
        let row: [f32; 2] = [0.5, 0.5];
        let raw: Vec<u8> = (0..rows)
            .flat_map(|_| row.iter().flat_map(|p| p.to_le_bytes()))
            .collect();
        Ok(Response::new(kserve::ModelInferResponse {
            model_name: request.model_name,
            model_version: "1".to_owned(),
            id: request.id,
            outputs: vec![kserve::model_infer_response::InferOutputTensor {
                name: "probabilities".to_owned(),
                datatype: "FP32".to_owned(),
                shape: vec![rows, 2],
                ..Default::default()
            }],
            raw_output_contents: vec![raw],
            ..Default::default()
        }))
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.io_threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(cli.listen).await?;
        println!("nurture-floor listening: grpc={}", listener.local_addr()?);
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        tonic::transport::Server::builder()
            .add_service(GrpcInferenceServiceServer::new(Floor))
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
