"""Generated protobuf and gRPC code for quotaplane.v1 (scripts/gen_protos.py)."""
