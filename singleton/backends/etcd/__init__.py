"""The etcd backend: the call path and KV/lease operations (client.py), the watch stream (watch.py)
and the translation of etcd's errors (errors.py)."""
from singleton.backends.etcd.client import EtcdBackend

__all__ = ["EtcdBackend"]
