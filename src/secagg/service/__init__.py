"""The network service: a gRPC coordinator and clients, TLS and identities (the round ledger it
writes is ``secagg.ledger``)."""
