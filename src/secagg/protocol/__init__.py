"""Sans-I/O protocol core: neighbour graph, messages, client and server state machines."""
