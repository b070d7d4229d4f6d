//! The supervision tree: one supervisor actor, one consumer actor per (stream, group, consumer).
//! Not public: users see [`Supervisor`](crate::Supervisor) and never need a ractor type.

pub(crate) mod consumer_actor;
pub(crate) mod supervisor_actor;
