//! Self-healing: lost connections, a Redis restart, a vanished group, and poison entries.
