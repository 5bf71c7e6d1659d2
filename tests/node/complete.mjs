// Calls llmrpc.v1.CompletionService from Node, loading the contract straight from protos/.
// Usage: node complete.mjs <host:port>  -> prints {"unary": ..., "chunks": [...], "error": {...}} as JSON.
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const protos = path.join(here, "..", "..", "protos");
const definition = protoLoader.loadSync("llmrpc/v1/completion_service.proto", {
  includeDirs: [protos], keepCase: true, longs: String, enums: String, defaults: false, oneofs: true,
});
const llmrpc = grpc.loadPackageDefinition(definition).llmrpc.v1;
const client = new llmrpc.CompletionService(process.argv[2], grpc.credentials.createInsecure());
const request = { model: "mock/echo", messages: [{ role: "user", content: "Hello from Node" }] };

const unary = await new Promise((resolve, reject) =>
  client.Complete(request, (err, resp) => (err ? reject(err) : resolve(resp))));
const chunks = await new Promise((resolve, reject) => {
  const out = [];
  const call = client.StreamComplete({ request, stream_options: { include_usage: true } });
  call.on("data", (c) => out.push(c));
  call.on("end", () => resolve(out));
  call.on("error", reject);
});
const error = await new Promise((resolve) =>
  client.Complete({ ...request, messages: [] }, (err) => resolve({ code: err.code, details: err.details })));
console.log(JSON.stringify({ unary, chunks, error }));
client.close();
