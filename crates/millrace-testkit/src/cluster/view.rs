//! What one node says about the cluster: its `CLUSTER NODES` reply, parsed.

/// One line of `CLUSTER NODES`: a node as seen by the node that answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeLine {
    /// The 40-character node id.
    pub(crate) id: String,
    /// The client port (`127.0.0.1:PORT@BUS`).
    pub(crate) port: u16,
    /// The line describes the node that answered.
    pub(crate) myself: bool,
    /// The node is a master (else a replica).
    pub(crate) master: bool,
    /// Flagged `fail` or `fail?`.
    pub(crate) failing: bool,
    /// Flagged `handshake` or `noaddr`: not (yet) a full member.
    pub(crate) joining: bool,
    /// The master a replica follows.
    pub(crate) master_id: Option<String>,
    /// The cluster-bus link to the node is up (always true for `myself`).
    pub(crate) connected: bool,
    /// Slot ranges the node serves, inclusive.
    pub(crate) slots: Vec<(u16, u16)>,
    /// A slot of this node is being imported or migrated (`[slot->-id]`, `[slot-<-id]`).
    pub(crate) open_slots: bool,
}

impl NodeLine {
    pub(crate) fn serves(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(lo, hi)| lo <= slot && slot <= hi)
    }
}

/// Parses a `CLUSTER NODES` reply; lines that do not parse are skipped.
pub(crate) fn parse_nodes(text: &str) -> Vec<NodeLine> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<NodeLine> {
    let mut fields = line.split_whitespace();
    let id = fields.next()?.to_owned();
    let address = fields.next()?;
    let flags = fields.next()?;
    let master_id = fields.next()?;
    let _ping_sent = fields.next()?;
    let _pong_received = fields.next()?;
    let _config_epoch = fields.next()?;
    let link = fields.next()?;
    // `ip:port@cport[,hostname]`
    let host_port = address.split('@').next()?;
    let port = host_port.rsplit(':').next()?.parse().ok()?;
    let has = |flag: &str| flags.split(',').any(|f| f == flag);
    let mut slots = Vec::new();
    let mut open_slots = false;
    for field in fields {
        if field.starts_with('[') {
            open_slots = true;
        } else if let Some((lo, hi)) = field.split_once('-') {
            slots.push((lo.parse().ok()?, hi.parse().ok()?));
        } else {
            let slot = field.parse().ok()?;
            slots.push((slot, slot));
        }
    }
    Some(NodeLine {
        id,
        port,
        myself: has("myself"),
        master: has("master"),
        failing: has("fail") || has("fail?"),
        joining: has("handshake") || has("noaddr"),
        master_id: (master_id != "-").then(|| master_id.to_owned()),
        connected: link == "connected",
        slots,
        open_slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
85c473a508bf8067d3eae786fd77303e1c3c45f4 127.0.0.1:21105@21205 slave 65df41f815c2d4ec2ed8bfe3a8e52543f9e0ea1a 0 1795614012168 2 connected
65df41f815c2d4ec2ed8bfe3a8e52543f9e0ea1a 127.0.0.1:21101@21201,host master - 0 1795614012000 2 connected 5461-10922 [5462->-051819a742d0d80c9738c911eddc7101b1929565]
051819a742d0d80c9738c911eddc7101b1929565 127.0.0.1:21100@21200 myself,master - 0 1795614012000 1 connected 0-5460 16000
795dcc467a4c555d58ccbc078544eaf526e7aa25 127.0.0.1:21102@21202 master,fail? - 0 1795614012168 3 disconnected
";

    #[test]
    fn cluster_nodes_lines_parse() {
        let lines = parse_nodes(NODES);
        assert_eq!(lines.len(), 4);
        assert!(!lines[0].master);
        assert_eq!(
            lines[0].master_id.as_deref(),
            Some("65df41f815c2d4ec2ed8bfe3a8e52543f9e0ea1a")
        );
        assert_eq!(lines[1].port, 21101);
        assert_eq!(lines[1].slots, vec![(5461, 10922)]);
        assert!(lines[1].open_slots);
        assert!(lines[2].myself && lines[2].master && lines[2].master_id.is_none());
        assert!(lines[2].serves(16000) && lines[2].serves(0) && !lines[2].serves(5461));
        assert!(lines[3].failing && !lines[3].connected);
    }
}
