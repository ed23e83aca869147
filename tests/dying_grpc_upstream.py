"""Test helper: a gRPC server that dies in the middle of its first ModelInfer response.

It sends the response headers and a response message, then the process exits before the grpc-status trailer:
what a proxy sees from a replica killed while it sends a (large) video back.
Run as ``python dying_grpc_upstream.py PORT``; it prints "listening" once it is ready."""
import os
import sys
import time
from concurrent import futures

import grpc


def model_infer(request: bytes, context):
    context.send_initial_metadata(())
    yield b"\x0a\x07wan_t2v"  # the first bytes of a ModelInferResponse (field 1, model_name); no grpc-status follows
    time.sleep(0.2)           # let the headers and these bytes reach the proxy
    os._exit(9)


class Handler(grpc.GenericRpcHandler):
    def service(self, details):
        if details.method == "/inference.GRPCInferenceService/ModelInfer":
            # A streaming handler so that headers and data go out before the (never sent) end of the call.
            return grpc.unary_stream_rpc_method_handler(model_infer)
        return None


if __name__ == "__main__":
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((Handler(),))
    server.add_insecure_port(f"127.0.0.1:{int(sys.argv[1])}")
    server.start()
    print("listening", flush=True)
    server.wait_for_termination()
