//! Redis Cluster topology, without I/O policy: which slot a key hashes to ([`key_slot`]), which
//! master serves a slot (`SlotMap`, from `CLUSTER SHARDS` or `CLUSTER SLOTS`) and a stream
//! ([`resolve_owner`]), what a reply says about the topology (`ClusterReply` and its
//! [`Action`], which `Error::cluster_action` asks of every error a consumer meets on a cluster: follow the owner, ask once, retry later, or a fatal configuration error) and
//! whether two keys can be used together in one script ([`Colocation`], [`hash_tag_hint`]).
//!
//! This is what consumers stand on to follow their stream's owner across failovers and slot
//! migrations (`connection::Backend::node_for`, the consumer's session loop). Control commands go
//! through redis-rs's
//! `cluster_async::ClusterConnection`, which follows `MOVED` and `ASK` by itself; a consumer's
//! blocking read does not (it has its own socket to one master), so it resolves the owner here.

mod classify;
mod colocation;
mod slot;
mod slot_map;

#[cfg(test)]
mod tests;

#[cfg(test)]
pub(crate) use classify::ClusterReply;
pub(crate) use classify::{moved_owner, Action};
pub(crate) use colocation::{hash_tag_hint, Colocation};
pub(crate) use slot::key_slot;
#[cfg(test)]
pub(crate) use slot_map::SlotMap;
pub(crate) use slot_map::{fetch_slot_map, resolve_owner, NodeAddress};
