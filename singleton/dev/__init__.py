"""Local tools for trying and testing singleton: an embedded etcd, a local replica set, the tick ledger, the demo."""
