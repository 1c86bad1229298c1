"""The network service: a gRPC coordinator and clients, TLS, identities, the round ledger."""
