"""Generated gRPC code for the coordinator service (see proto/); do not edit."""
