"""Coordination backends: the interface, the in-memory implementation and the etcd one."""
