"""LMDB storage: the ledger, the peer book and the persisted mempool of one node."""
