// Decode the google.rpc.Status the gateway sends in the `grpc-status-details-bin` trailer: exactly one
// ErrorInfo (domain "llmrpc.dev", reason = the llmrpc.v1.ErrorReason name without "ERROR_REASON_"), plus
// BadRequest / RetryInfo / QuotaFailure / ResourceInfo where they apply. Uses the vendored
// protos/google/rpc/*.proto with protobufjs (what proto-loader itself runs on).
import protobuf from "protobufjs";
import path from "node:path";

export function statusDecoder(protosDir) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => path.join(protosDir, target);
  root.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
  const Status = root.lookupType("google.rpc.Status");
  const toObject = { longs: String, enums: String, defaults: true };

  /** {code, message, details: {"google.rpc.ErrorInfo": {...}, ...}} from a grpc-js ServiceError. */
  return function decode(err) {
    const [bin] = err.metadata?.get("grpc-status-details-bin") ?? [];
    if (!bin) return { code: err.code, message: err.details, details: {} };
    const status = Status.decode(bin);
    const details = {};
    for (const any of status.details) {
      const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
      details[name] = root.lookupType(name).toObject(root.lookupType(name).decode(any.value), toObject);
    }
    return { code: status.code, message: status.message, details };
  };
}
