//! Redis Cluster topology, without I/O policy: which slot a key hashes to ([`key_slot`]), which
//! master serves a slot ([`SlotMap`], from `CLUSTER SHARDS` or `CLUSTER SLOTS`) and a stream
//! ([`resolve_owner`]), what a reply says about the topology ([`ClusterReply`] and its
//! [`Action`]: follow the owner, ask once, retry later, or a fatal configuration error) and
//! whether two keys can be used together in one script ([`Colocation`], [`hash_tag_hint`]).
//!
//! This is what consumers stand on to follow their stream's owner across failovers and slot
//! migrations (`connection::Backend::node_for`, the consumer's session loop). Control commands go
//! through redis-rs's
//! `cluster_async::ClusterConnection`, which follows `MOVED` and `ASK` by itself; a consumer's
//! blocking read does not (it has its own socket to one master), so it resolves the owner here.

// The consumers use the slot lookup, `resolve_owner` and `Colocation`; `ClusterReply` and `Action`
// (and parts of the slot map) are so far exercised by the tests only: a consumer classifies a
// topology reply through `Error::is_topology_change` and the transient class.
#![allow(dead_code, unused_imports)]

mod colocation;
mod reply;
mod slot;
mod slot_map;

#[cfg(test)]
mod tests;

pub(crate) use colocation::{hash_tag_hint, Colocation};
pub(crate) use reply::{Action, ClusterReply};
pub(crate) use slot::{key_slot, SLOT_COUNT};
pub(crate) use slot_map::{fetch_slot_map, resolve_owner, NodeAddress, SlotMap, SlotRange};
