//! Typed calls for the control plane: status, directories, staging and activation. Kept apart
//! from the request path's calls ([`crate::client`]) and available on every [`NodeClient`].

use crate::client::{NodeClient, RpcError, RpcFuture};
use crate::message::{
    FILE_CHUNK_BYTES_MAX, Inventory, NodeStatus, PartitionFile, ReadPartition, Request, Response,
    StageChunk, Staged,
};
use scoregrid_shard::{Directory, ModelVersion, PartitionId};

fn expect<T: Send + 'static>(
    client: &(impl NodeClient + ?Sized),
    request: Request,
    pick: fn(Response) -> Result<T, Response>,
) -> RpcFuture<T> {
    let (node, call) = (client.node(), client.call(request));
    Box::pin(async move {
        match pick(call.await?) {
            Ok(value) => Ok(value),
            Err(Response::Error(error)) => Err(RpcError::Remote { node, error }),
            Err(_) => Err(RpcError::UnexpectedResponse(node)),
        }
    })
}

pub trait AdminCalls: NodeClient {
    fn status(&self) -> RpcFuture<NodeStatus> {
        expect(self, Request::Status, |r| match r {
            Response::Status(s) => Ok(s),
            other => Err(other),
        })
    }

    fn fetch_directory(&self, version: ModelVersion) -> RpcFuture<Directory> {
        expect(self, Request::FetchDirectory(version), |r| match r {
            Response::Directory(d) => Ok(*d),
            other => Err(other),
        })
    }

    fn stage_directory(&self, directory: Directory) -> RpcFuture<()> {
        expect(
            self,
            Request::StageDirectory(Box::new(directory)),
            |r| match r {
                Response::Done => Ok(()),
                other => Err(other),
            },
        )
    }

    /// One piece of a partition file: `Ok(None)` while the file is incomplete, the node's
    /// verdict once the last piece is in.
    fn stage_chunk(&self, chunk: StageChunk) -> RpcFuture<Option<Staged>> {
        expect(self, Request::StageChunk(chunk), |r| match r {
            Response::StageProgress { .. } => Ok(None),
            Response::Staged(s) => Ok(Some(s)),
            other => Err(other),
        })
    }

    fn staged_inventory(&self, version: ModelVersion) -> RpcFuture<Inventory> {
        expect(self, Request::StagedInventory(version), |r| match r {
            Response::Inventory(i) => Ok(i),
            other => Err(other),
        })
    }

    fn read_partition_range(
        &self,
        version: ModelVersion,
        partition: PartitionId,
        offset: u64,
    ) -> RpcFuture<PartitionFile> {
        expect(
            self,
            Request::ReadPartition(ReadPartition {
                version,
                partition,
                offset,
                length: FILE_CHUNK_BYTES_MAX,
            }),
            |r| match r {
                Response::PartitionFile(file) => Ok(file),
                other => Err(other),
            },
        )
    }

    fn activate(&self, version: ModelVersion) -> RpcFuture<()> {
        expect(self, Request::Activate(version), |r| match r {
            Response::Done => Ok(()),
            other => Err(other),
        })
    }
}

impl<T: NodeClient + ?Sized> AdminCalls for T {}
