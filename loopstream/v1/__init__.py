"""Generated gRPC/protobuf stubs of proto/loopstream/v1 (run scripts/gen-proto)."""
