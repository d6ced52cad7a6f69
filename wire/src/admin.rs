//! Typed calls for the control plane: status, directories, staging and activation. Kept apart
//! from the request path's calls ([`crate::client`]) and available on every [`NodeClient`].

use crate::client::{NodeClient, RpcError, RpcFuture};
use crate::message::{NodeStatus, ReadPartition, Request, Response, StagePartition, Staged};
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

    fn stage_partition(&self, bytes: Vec<u8>) -> RpcFuture<Staged> {
        expect(
            self,
            Request::StagePartition(StagePartition { bytes }),
            |r| match r {
                Response::Staged(s) => Ok(s),
                other => Err(other),
            },
        )
    }

    fn read_partition(&self, version: ModelVersion, partition: PartitionId) -> RpcFuture<Vec<u8>> {
        expect(
            self,
            Request::ReadPartition(ReadPartition { version, partition }),
            |r| match r {
                Response::PartitionFile(file) => Ok(file.bytes),
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
