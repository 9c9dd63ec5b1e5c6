"""Operating it: the CLI, the admin gRPC API, the HTTP server, logging and the operator commands."""
