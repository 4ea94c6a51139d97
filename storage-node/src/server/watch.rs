//! etcd's Watch service. Not served yet: it answers `Unimplemented` (the engine keeps the
//! event history a watch needs; streaming it comes later).

use tonic::{Request, Response, Status, Streaming};

use super::Api;
use crate::pb::etcdserverpb::{WatchRequest, WatchResponse, watch_server::Watch};

#[tonic::async_trait]
impl Watch for Api {
    type WatchStream = tonic::codegen::tokio_stream::Empty<Result<WatchResponse, Status>>;

    async fn watch(
        &self,
        _: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("watch is not supported by Mend yet"))
    }
}
