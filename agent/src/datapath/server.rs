//! The secondary side: accepts workers' connections on the data endpoint, checks who
//! they are and what they may write, and applies their operations under this node's
//! brick of the session's secondary volume.
//!
//! A stream is accepted only when the session exists, this node hosts a brick of its
//! secondary volume, and the peer (by its certificate) hosts a brick of its primary
//! volume. Everything else about safety (no `..`, no symlinks on the way, hashes) is
//! the applier's.

use std::path::PathBuf;
use std::sync::Arc;

use georep_datapath::proto::{Request, Response};
use georep_datapath::{Applier, FileData, proto};
use georep_mesh::NodeIdentity;
use tokio_util::sync::CancellationToken;

use super::{read_msg, transport_config, write_msg};
use crate::agent::Agent;

/// Binds the data endpoint on `addr`.
pub fn bind(
    identity: &NodeIdentity,
    addr: std::net::SocketAddr,
) -> anyhow::Result<quinn::Endpoint> {
    use anyhow::Context;
    let crypto = identity
        .server_config_for(proto::ALPN)
        .context("data path TLS configuration")?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(crypto)
        .context("data path TLS configuration unusable for QUIC")?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(transport_config());
    quinn::Endpoint::server(config, addr).with_context(|| format!("cannot listen on {addr}"))
}

/// Serves workers until `shutdown`.
pub async fn serve(endpoint: quinn::Endpoint, agent: Arc<Agent>, shutdown: CancellationToken) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let agent = agent.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::debug!(%error, "data path handshake failed");
                    return;
                }
            };
            let peer = match georep_mesh::peer_node_id(&conn) {
                Ok(peer) => peer,
                Err(error) => {
                    tracing::warn!(%error, "data path peer without a node id refused");
                    return;
                }
            };
            loop {
                let (send, recv) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    stream = conn.accept_bi() => match stream {
                        Ok(stream) => stream,
                        Err(_) => return,
                    },
                };
                tokio::spawn(serve_stream(agent.clone(), peer.clone(), send, recv));
            }
        });
    }
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
}

/// What a stream is allowed to touch, once its Hello is accepted.
struct Grant {
    applier: Arc<Applier>,
    index_file: PathBuf,
}

async fn serve_stream(
    agent: Arc<Agent>,
    peer: String,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let mut grant: Option<Grant> = None;
    loop {
        let request: Request = match read_msg(&mut recv).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(error) => {
                tracing::warn!(%peer, %error, "data path stream dropped");
                return;
            }
        };
        let response = match (&grant, request) {
            (
                _,
                Request::Hello {
                    session,
                    replica_set,
                },
            ) => match authorize(&agent, &peer, &session, replica_set).await {
                Ok(granted) => {
                    let index = std::fs::read(&granted.index_file).ok();
                    grant = Some(granted);
                    Response::Ready { index }
                }
                Err(reason) => {
                    tracing::warn!(%peer, %session, %reason, "data path refused");
                    let _ = write_msg(&mut send, &Response::Refused(reason)).await;
                    let _ = send.finish();
                    return;
                }
            },
            (None, _) => {
                let _ = write_msg(&mut send, &Response::Refused("Hello first".into())).await;
                let _ = send.finish();
                return;
            }
            (Some(granted), Request::Missing { path, chunks }) => {
                let applier = granted.applier.clone();
                let refs: Vec<georep_datapath::ChunkRef> = chunks
                    .iter()
                    .map(|hash| georep_datapath::ChunkRef {
                        offset: 0,
                        len: 0,
                        hash: *hash,
                    })
                    .collect();
                let missing =
                    tokio::task::spawn_blocking(move || applier.missing_chunks(&path, &refs))
                        .await
                        .unwrap_or_default();
                Response::Missing(missing)
            }
            (Some(granted), Request::Batch(items)) => {
                let applier = granted.applier.clone();
                let peer = peer.clone();
                let results =
                    tokio::task::spawn_blocking(move || apply_batch(&applier, &peer, items))
                        .await
                        .unwrap_or_default();
                Response::Applied(results)
            }
            (Some(granted), Request::SaveIndex(bytes)) => {
                match georep_store::write_atomic(&granted.index_file, &bytes) {
                    Ok(()) => Response::Saved,
                    Err(error) => Response::Refused(format!("cannot save the index: {error}")),
                }
            }
        };
        if let Err(error) = write_msg(&mut send, &response).await {
            tracing::debug!(%peer, %error, "data path response not sent");
            return;
        }
    }
}

fn apply_batch(
    applier: &Applier,
    peer: &str,
    items: Vec<georep_datapath::proto::BatchItem>,
) -> Vec<Option<String>> {
    items
        .into_iter()
        .map(|(op, data)| {
            let data: FileData = data.into_iter().collect();
            match applier.apply(&op, &data) {
                Ok(()) => None,
                Err(error) => {
                    tracing::warn!(%peer, %error, "data path operation refused");
                    Some(error.to_string())
                }
            }
        })
        .collect()
}

async fn authorize(
    agent: &Agent,
    peer: &str,
    session: &str,
    replica_set: u32,
) -> Result<Grant, String> {
    let replica = agent.mesh().replica();
    let view = replica
        .sessions
        .values()
        .map(|record| record.view())
        .find(|view| view.exists && view.id.dir_name() == session)
        .ok_or_else(|| format!("no session {session}"))?;
    let brick = agent
        .config()
        .bricks
        .iter()
        .find(|b| b.volume == view.id.secondary_volume)
        .ok_or_else(|| format!("this node hosts no brick of {}", view.id.secondary_volume))?;
    let membership = agent.mesh().membership().await;
    let primary = membership
        .members
        .values()
        .any(|m| m.node_id == peer && m.hosts(&view.id.primary_volume));
    if !primary {
        return Err(format!(
            "{peer} hosts no brick of the primary volume {}",
            view.id.primary_volume
        ));
    }
    let applier = Applier::open(&brick.path)
        .map_err(|e| format!("cannot open {}: {e}", brick.path.display()))?;
    let dir = agent.config().data_dir.join("datapath").join(session);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(Grant {
        applier: Arc::new(applier),
        index_file: dir.join(format!("replica-set-{replica_set}.index")),
    })
}
